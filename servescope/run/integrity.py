"""Reading a run's tables back against its part index: every part checked, every problem named.

``RunParts(RUN)`` loads the part index (``RUN/parts/*.jsonl``, written by ``parts.write_part``;
else the copy in ``manifest.json``) once; ``read(table)`` then checks each part of the table and
concatenates those that pass. A part is left out, with one message naming it and the rows it held,
when it is:

* **missing**: listed, but the file is gone;
* **changed**: its size or sha256 differs from the index (truncated, rewritten, a column dropped);
* **unreadable**: not Parquet (a cut footer, garbage bytes);
* **duplicated**: the same bytes as a part already read (a copy under another name);
* **foreign**: written for another run (the run id in its metadata or index entry);
* **unlisted**: in the table's folder but in no index (a run that has an index);
* **mis-shaped**: a column missing (while other parts have it) or of another type, or a row count
  that differs from the index.

Rows still in a spool (``run/spool.py``: a process still running, or not compacted yet) are read
from the spool, after the parts; a part written from a spool that is still there (a compaction
cut short) is not read at all, so nothing is counted twice.

A column absent from *every* part of a table is read as nulls, with one message (none for the
columns schema.py gained later, ``ADDED_COLUMNS`` in a run older than the index, ``ADDED_SINCE_INDEX`` in any run). A run recorded before servescope kept a part index is read with the
checks that need no index (duplicates, unreadable parts, columns) and one message saying it cannot
be verified. With ``strict=True`` the first message raises RunDirError instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.directory import RunDirError, rows_to_table, table_dir
from servescope.run.parts import (PARTS_DIR, PartEntry, file_sha256, index_files, parse_entry, part_metadata,
                                  read_part_index)
from servescope.run.schema import TABLES
from servescope.run.spool import SPOOL_DIR, part_spool_name, read_spools

# Columns added to schema.py after runs were first recorded: absent from every part of older runs, read as null
# there without a message (the run's note already says it predates the index).
ADDED_COLUMNS = {
    "steps": {"engine_timestamp_ns"},
    "worker_regions": {"engine_index", "host_cpu_ns", "voluntary_switches", "involuntary_switches"},
}
# Columns added after servescope began keeping the part index: absent from every part of an indexed run recorded
# before them, read as null there without a message too (a part always holds every column its writer knew).
ADDED_SINCE_INDEX = {
    "worker_regions": {"tp_rank", "pp_rank"},
}
LEGACY_NOTE = ("recorded before servescope kept a part index (RUN/parts/): its parts cannot be verified "
               "(a missing or foreign part would go unnoticed)")


class Problems:
    """The messages of one read: appended one per problem, or raised as RunDirError at the first when strict."""

    def __init__(self, strict: bool = False, messages: list[str] | None = None) -> None:
        self.strict = strict
        self.messages: list[str] = [] if messages is None else messages

    def add(self, message: str) -> None:
        """Record one problem (a one-line message naming the file); raise RunDirError(message) when strict."""
        if self.strict:
            raise RunDirError(message)
        if message not in self.messages:
            self.messages.append(message)


@dataclass(frozen=True)
class PartSpan:
    """A part that was read: its file (relative to RUN), its writer (None if unknown) and its row count."""

    file: str
    writer: str | None
    rows: int


@dataclass
class TableRead:
    """One table read back: the rows of every part that passed, and those parts in concatenation order."""

    data: pa.Table
    parts: list[PartSpan] = field(default_factory=list)


@dataclass
class _Candidate:
    path: Path
    file: str
    entry: PartEntry | None
    sha256: str
    rows: int
    schema: pa.Schema


def read_run_id(run_dir: str | os.PathLike, manifest: dict | None = None) -> str | None:
    """Return the run's id from RUN/run.json, else manifest.json's run_id, else None (never creates one)."""
    try:
        with open(Path(run_dir) / "run.json", "rb") as f:
            value = json.load(f).get("run_id")
        if isinstance(value, str) and value:
            return value
    except (OSError, ValueError, AttributeError):
        pass
    value = (manifest or {}).get("run_id")
    return value if isinstance(value, str) and value else None


class RunParts:
    """A run directory's part index, loaded once and checked against the files table by table."""

    def __init__(self, run_dir: str | os.PathLike, *, manifest: dict | None = None,
                 problems: Problems | None = None, spools: list | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.problems = problems if problems is not None else Problems()
        # the spools not compacted yet (run/spool.py): their rows are read from them, and parts of the same
        # name (a compaction cut short) are not read at all
        self.spools = read_spools(self.run_dir) if spools is None else spools
        self._live = {spool.name for spool in self.spools}
        self.run_id = read_run_id(self.run_dir, manifest)
        entries, unreadable = read_part_index(self.run_dir)
        for message in unreadable:
            self.problems.add(message)
        self.indexed = bool(index_files(self.run_dir))
        listed_in_manifest = (manifest or {}).get("parts")
        if isinstance(listed_in_manifest, list):
            entries += self._manifest_entries(listed_in_manifest, known={e.file for e in entries})
            self.indexed = True
        self.by_table: dict[str, list[PartEntry]] = {}
        self._by_file: dict[str, PartEntry] = {}
        for entry in entries:
            self._add_entry(entry)
        if not self.indexed and not self.spools:
            self._note_unindexed()

    # ---- the index ----------------------------------------------------------------------------
    def _manifest_entries(self, items: list, known: set[str]) -> list[PartEntry]:
        out = []
        for number, item in enumerate(items, start=1):
            entry, reason = parse_entry(item)
            if entry is None:
                self.problems.add(f"{self.run_dir / 'manifest.json'}: parts[{number - 1}] unreadable ({reason})")
            elif entry.file not in known:
                out.append(entry)
        return out

    def _add_entry(self, entry: PartEntry) -> None:
        same = self._by_file.get(entry.file)
        if same is None:
            self._by_file[entry.file] = entry
            self.by_table.setdefault(entry.table, []).append(entry)
        elif same.sha256 != entry.sha256:
            self.problems.add(f"{self.run_dir / entry.file}: listed twice with different checksums "
                              f"(writers {same.writer}, {entry.writer}); the first listing is used")

    def _note_unindexed(self) -> None:
        first = next(iter(sorted((self.run_dir / "tables").glob("*/*.parquet"))), None)
        if first is None:
            return
        try:
            stamped = "run_id" in part_metadata(pq.read_schema(first))
        except Exception:
            stamped = False
        if stamped:
            self.problems.add(f"{self.run_dir / PARTS_DIR}: part index missing (removed?) although the parts were "
                              "written with one: missing, foreign or duplicated parts cannot be ruled out")
        else:
            self.problems.add(f"{self.run_dir}: {LEGACY_NOTE}")

    # ---- one table ----------------------------------------------------------------------------
    def read(self, table: str, *, dictionary_column: str | None = None) -> TableRead:
        """Return the table's rows from every part that passes its checks (an empty table if none)."""
        schema = TABLES[table].arrow_schema
        if dictionary_column is not None:
            index = schema.get_field_index(dictionary_column)
            schema = schema.set(index, pa.field(dictionary_column, pa.dictionary(pa.int32(), pa.string())))
        found = _PartProblems(self.problems, table_dir(self.run_dir, table))
        candidates = self._candidates(table, found)
        absent = self._columns_absent_everywhere(table, candidates)
        tables, spans = [], []
        for c in sorted(candidates, key=lambda c: c.file):
            data = self._read_candidate(table, c, schema, dictionary_column, absent, found)
            if data is not None:
                tables.append(data)
                writer = c.entry.writer if c.entry is not None else part_metadata(c.schema).get("writer")
                spans.append(PartSpan(c.file, writer, data.num_rows))
        for spool in self.spools:
            rows = spool.rows.get(table)
            if rows:
                tables.append(rows_to_table(table, rows).cast(schema))
                spans.append(PartSpan(f"{SPOOL_DIR}/{spool.name}", spool.name, len(rows)))
        found.report()
        if not tables:
            return TableRead(schema.empty_table(), [])
        return TableRead(pa.concat_tables(tables), spans)

    def _candidates(self, table: str, found: _PartProblems) -> list[_Candidate]:
        """Return the table's parts that pass the file checks (present, unchanged, readable, not duplicate or foreign)."""
        directory = table_dir(self.run_dir, table)
        on_disk = {p.relative_to(self.run_dir).as_posix(): p for p in sorted(directory.glob("*.parquet"))
                   if p.is_file() and part_spool_name(p.stem) not in self._live}
        listed = [e for e in self.by_table.get(table, []) if part_spool_name(Path(e.file).stem) not in self._live]
        accepted: list[_Candidate] = []
        by_sha: dict[str, str] = {}
        for entry in listed:
            path = self.run_dir / entry.file
            if entry.file not in on_disk:
                found.add("missing", f"{path}: missing (listed by writer {entry.writer} with {entry.rows} rows); "
                                     f"{table} is read without them", entry.rows)
                continue
            if self.run_id is not None and entry.run_id != self.run_id:
                found.add("foreign", f"{path}: indexed for another run ({entry.run_id}; this run is "
                                     f"{self.run_id}); not read ({entry.rows} rows)", entry.rows)
                continue
            sha, size = self._checksum(path, found)
            if sha is None:
                continue
            if sha != entry.sha256 or size != entry.bytes:
                found.add("changed", f"{path}: changed since it was written ({size} bytes, {entry.bytes} indexed; "
                                     f"checksum differs: truncated or rewritten); not read ({entry.rows} rows)",
                          entry.rows)
                continue
            candidate = self._open(table, path, entry, sha, by_sha, found)
            if candidate is not None:
                accepted.append(candidate)
                by_sha[sha] = entry.file
        listed_files = {e.file for e in listed}
        listed_sha = {e.sha256: e.file for e in listed}
        for file, path in on_disk.items():
            if file in listed_files:
                continue
            sha, _ = self._checksum(path, found)
            if sha is None:
                continue
            if self.indexed and sha in listed_sha:
                found.add("duplicate", f"{path}: a copy of {self.run_dir / listed_sha[sha]}; not read", None)
                continue
            candidate = self._open(table, path, None, sha, by_sha, found)
            if candidate is None:
                continue
            if self.indexed:
                found.add("unlisted", f"{path}: not in the part index; not read ({candidate.rows} rows)",
                          candidate.rows)
                continue
            accepted.append(candidate)
            by_sha[sha] = file
        return accepted

    def _checksum(self, path: Path, found: _PartProblems) -> tuple[str | None, int]:
        try:
            return file_sha256(path)
        except OSError as exc:
            found.add("unreadable", f"{path}: unreadable ({exc.strerror or exc}); not read", None)
            return None, 0

    def _open(self, table: str, path: Path, entry: PartEntry | None, sha: str, by_sha: dict[str, str],
              found: _PartProblems) -> _Candidate | None:
        if sha in by_sha:
            found.add("duplicate", f"{path}: duplicate of {self.run_dir / by_sha[sha]} (same bytes); not read", None)
            return None
        try:
            with pq.ParquetFile(path) as parquet:
                schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        except Exception as exc:  # a cut footer, garbage bytes
            found.add("unreadable", f"{path}: unreadable Parquet part ({_short(exc)}); not read", None)
            return None
        meta = part_metadata(schema)
        if self.run_id is not None and meta.get("run_id", self.run_id) != self.run_id:
            found.add("foreign", f"{path}: written for another run ({meta['run_id']}; this run is {self.run_id}); "
                                 f"not read ({rows} rows)", rows)
            return None
        if meta.get("table", table) != table:
            found.add("foreign", f"{path}: a part of table {meta['table']}, found in {table}; not read ({rows} rows)",
                      rows)
            return None
        return _Candidate(path, path.relative_to(self.run_dir).as_posix(), entry, sha, rows, schema)

    def _columns_absent_everywhere(self, table: str, candidates: list[_Candidate]) -> set[str]:
        if not candidates:
            return set()
        present = {name for c in candidates for name in c.schema.names}
        absent = {name for name in TABLES[table].column_names if name not in present}
        expected = (ADDED_COLUMNS.get(table, set()) if not self.indexed else set()) | ADDED_SINCE_INDEX.get(table, set())
        if absent - expected:
            self.problems.add(f"{table_dir(self.run_dir, table)}: column(s) {', '.join(sorted(absent))} absent from "
                              "every part (recorded by an older servescope?); read as null")
        return absent

    def _read_candidate(self, table: str, c: _Candidate, schema: pa.Schema, dictionary_column: str | None,
                        absent: set[str], found: _PartProblems) -> pa.Table | None:
        mismatch = _schema_mismatch(table, c.schema, absent)
        if mismatch:
            found.add("mis-shaped", f"{c.path}: {mismatch}; not read ({c.rows} rows)", c.rows)
            return None
        if c.entry is not None and c.rows != c.entry.rows:
            found.add("mis-shaped", f"{c.path}: {c.rows} rows, the index lists {c.entry.rows}; not read", c.rows)
            return None
        try:
            if dictionary_column is None:
                return pq.read_table(c.path, schema=schema)
            with pq.ParquetFile(c.path, read_dictionary=[dictionary_column]) as parquet:
                data = parquet.read()
            if not data.schema.equals(schema, check_metadata=False):  # an older writer: let Parquet map the schema
                data = pq.read_table(c.path, schema=schema)
            return data
        except Exception as exc:
            found.add("unreadable", f"{c.path}: unreadable Parquet part ({_short(exc)}); not read ({c.rows} rows)",
                      c.rows)
            return None


class _PartProblems:
    """One table's part problems: one line each, or, past PARTS_LISTED of a kind, the first ones and a sum."""

    PARTS_LISTED = 3
    KIND_TEXT = {"missing": "missing", "foreign": "of another run or table", "changed": "changed since written",
                 "duplicate": "duplicates of parts already read", "unreadable": "unreadable",
                 "unlisted": "not in the part index", "mis-shaped": "with other columns or row counts"}

    def __init__(self, problems: Problems, directory: Path) -> None:
        self.problems = problems
        self.directory = directory
        self.found: dict[str, list[tuple[str, int | None]]] = {}

    def add(self, kind: str, message: str, rows: int | None) -> None:
        """Note one part left out (rows: what it held, None if unknown); strict raises RunDirError at once."""
        if self.problems.strict:
            self.problems.add(message)
        self.found.setdefault(kind, []).append((message, rows))

    def report(self) -> None:
        """Hand the notes to the run's Problems, summing up kinds with many parts."""
        for kind, items in self.found.items():
            shown = items if len(items) <= self.PARTS_LISTED else items[:self.PARTS_LISTED - 1]
            for message, _ in shown:
                self.problems.add(message)
            rest = items[len(shown):]
            if rest:
                rows = [r for _, r in rest]
                held = f" ({sum(rows)} rows)" if all(r is not None for r in rows) else ""
                self.problems.add(f"{self.directory}: {len(rest)} more parts {self.KIND_TEXT[kind]}{held}; not read")


def _schema_mismatch(table: str, schema: pa.Schema, absent: set[str]) -> str:
    """Return what is wrong with a part's columns against schema.py ("" if nothing)."""
    for column in TABLES[table].columns:
        if column.name in absent:
            continue
        index = schema.get_field_index(column.name)
        if index < 0:
            return f"column '{column.name}' missing"
        found = schema.field(index).type
        if pa.types.is_dictionary(found):
            found = found.value_type
        if pa.types.is_large_string(found):
            found = pa.string()
        if not found.equals(column.type):
            return f"column '{column.name}' is {found}, expected {column.type}"
    return ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
