"""Table parts and the part index: how every writer puts rows into a run, so that a reader can verify them.

A *part* is one Parquet file, ``RUN/tables/<table>/<name>.parquet``, written once and never
changed. ``write_part`` writes it atomically (a temporary file, fsync'd, then linked into place:
an existing part is never overwritten), stamps the run id, table and part name into its Parquet
key-value metadata, and appends one line to its writer's index ``RUN/parts/<writer>.jsonl``::

    {"table": "steps", "file": "tables/steps/EngineCore-715-000003.parquet", "rows": 812,
     "sha256": "…", "bytes": 40123, "writer": "EngineCore-715", "run_id": "…"}

Each writer (one recording process, one bench client, one phase split) has its own index file,
so concurrent writers never share one; lines are appended with one ``write`` and fsync'd. The
manifest copies every entry (``manifest["parts"]``). ``servescope.run.integrity`` reads a run
back against this index: a missing, changed, duplicated, foreign or unlisted part is named.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.directory import RunDirError, ensure_run_id, table_dir
from servescope.run.schema import TABLES

PARTS_DIR = "parts"
INDEX_SUFFIX = ".jsonl"
# Parquet key-value metadata of every part.
META_RUN_ID = b"servescope.run_id"
META_TABLE = b"servescope.table"
META_PART = b"servescope.part"
META_WRITER = b"servescope.writer"
ENTRY_FIELDS = {"table": str, "file": str, "rows": int, "sha256": str, "bytes": int, "writer": str, "run_id": str}
_SAFE_NAME = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]*$")  # one file name: no separator, no leading dot
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class PartEntry:
    """One line of a part index: the part's table, file (relative to RUN), rows, sha256, bytes, writer and run id."""

    table: str
    file: str
    rows: int
    sha256: str
    bytes: int
    writer: str
    run_id: str

    def to_dict(self) -> dict:
        """Return the entry as the JSON object of its index line."""
        return asdict(self)


def write_part(run_dir: str | os.PathLike, table: str, arrow_table: pa.Table, *, writer: str, name: str,
               run_id: str | None = None) -> dict:
    """Write arrow_table as part ``name`` of table in run_dir and index it; return the index entry (a dict).

    writer: who writes (``<role>-<pid>`` for a recording process); its index is RUN/parts/<writer>.jsonl.
    run_id: the run's id (read from, or created in, RUN/run.json when not given). Raises RunDirError
    when a part of that name exists: nothing recorded is overwritten.
    """
    for label, value in (("writer", writer), ("part name", name)):
        if not _SAFE_NAME.match(value or ""):
            raise ValueError(f"{label} {value!r} is not usable as a file name (no '/', no leading '.')")
    run_dir = Path(run_dir)
    run_id = run_id or ensure_run_id(run_dir)
    schema = TABLES[table].arrow_schema
    data = arrow_table if arrow_table.schema.equals(schema) else arrow_table.cast(schema)
    data = data.replace_schema_metadata({META_RUN_ID: run_id.encode(), META_TABLE: table.encode(),
                                         META_PART: name.encode(), META_WRITER: writer.encode()})
    directory = table_dir(run_dir, table)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.parquet"
    tmp = directory / f".{name}.parquet.{os.getpid()}.tmp"
    try:
        pq.write_table(data, tmp)
        _fsync_file(tmp)
        digest, size = file_sha256(tmp)
        _link_without_replacing(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_directory(directory)
    entry = PartEntry(table=table, file=path.relative_to(run_dir).as_posix(), rows=data.num_rows,
                      sha256=digest, bytes=size, writer=writer, run_id=run_id).to_dict()
    _append_line(run_dir / PARTS_DIR / f"{writer}{INDEX_SUFFIX}", json.dumps(entry, sort_keys=True))
    return entry


def index_existing_part(run_dir: str | os.PathLike, table: str, path: Path, *, writer: str) -> dict:
    """Index a part that was written (write_part's link) but never indexed (its writer stopped between the
    two); return the entry. Its rows, checksum and run id are read from the file itself."""
    run_dir = Path(run_dir)
    with pq.ParquetFile(path) as parquet:
        rows = parquet.metadata.num_rows
        meta = part_metadata(parquet.schema_arrow)
    digest, size = file_sha256(path)
    entry = PartEntry(table=table, file=path.relative_to(run_dir).as_posix(), rows=rows, sha256=digest, bytes=size,
                      writer=writer, run_id=meta.get("run_id") or ensure_run_id(run_dir)).to_dict()
    _append_line(run_dir / PARTS_DIR / f"{writer}{INDEX_SUFFIX}", json.dumps(entry, sort_keys=True))
    return entry


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """Return (hex sha256, size in bytes) of a file's content."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def part_metadata(schema: pa.Schema) -> dict[str, str]:
    """Return the servescope key-value metadata of a part's Arrow schema (run_id, table, part, writer; {} if none)."""
    meta = schema.metadata or {}
    keys = {META_RUN_ID: "run_id", META_TABLE: "table", META_PART: "part", META_WRITER: "writer"}
    return {label: meta[key].decode("utf-8", "replace") for key, label in keys.items() if key in meta}


def index_files(run_dir: str | os.PathLike) -> list[Path]:
    """Return the run's part index files, RUN/parts/*.jsonl, sorted by name."""
    return sorted((Path(run_dir) / PARTS_DIR).glob(f"*{INDEX_SUFFIX}"))


def read_part_index(run_dir: str | os.PathLike) -> tuple[list[PartEntry], list[str]]:
    """Return every entry of RUN/parts/*.jsonl in file and line order, and one message per unreadable line."""
    entries: list[PartEntry] = []
    problems: list[str] = []
    for path in index_files(run_dir):
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError as exc:
            problems.append(f"{path}: unreadable part index ({exc.strerror or exc})")
            continue
        bad = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            entry, reason = parse_entry(raw)
            if entry is None:
                bad.append((number, reason))
            else:
                entries.append(entry)
        if bad:
            number, reason = bad[0]
            more = f" (and {len(bad) - 1} more unreadable lines)" if len(bad) > 1 else ""
            problems.append(f"{path}, line {number}: unreadable index entry ({reason}){more}; "
                            "the parts it lists count as unlisted")
    return entries, problems


def parse_entry(raw: bytes | str | dict) -> tuple[PartEntry | None, str]:
    """Return (the entry, "") of one index line or manifest item, or (None, why it is not one)."""
    try:
        obj = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"not JSON: {str(exc)[:80]}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    for key, kind in ENTRY_FIELDS.items():
        value = obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None, f"field '{key}' missing or not {kind.__name__}"
    if obj["table"] not in TABLES:
        return None, f"unknown table {obj['table']!r}"
    if not obj["file"].startswith(f"tables/{obj['table']}/") or "/../" in obj["file"] or obj["rows"] < 0:
        return None, f"file {obj['file']!r} is not a part of table {obj['table']}"
    return PartEntry(**{key: obj[key] for key in ENTRY_FIELDS}), ""


def manifest_part_entries(run_dir: str | os.PathLike) -> list[dict]:
    """Return every index entry of the run as dicts, for manifest.json's "parts" (unreadable lines left out)."""
    entries, _ = read_part_index(run_dir)
    return [e.to_dict() for e in entries]


# ---- durable, atomic file operations --------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _link_without_replacing(tmp: Path, path: Path) -> None:
    """Give tmp the name path unless path exists (then RunDirError); atomic where hard links exist."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise RunDirError(f"{path}: a part of that name exists; nothing recorded is overwritten") from None
    except OSError:  # no hard links on this filesystem: check, then rename
        pass
    if path.exists():
        raise RunDirError(f"{path}: a part of that name exists; nothing recorded is overwritten")
    os.replace(tmp, path)


def _append_line(path: Path, line: str) -> None:
    """Append one line to path with a single write, then fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
