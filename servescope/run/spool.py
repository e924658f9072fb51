"""The spool: where a recording process's records live from the instant they are appended.

Each recording process writes length-framed records into memory-mapped segment files,
``RUN/spool/<role>-<pid>-<instance>-<segment>.spool`` (the writer: ``servescope/record/spool_writer.py``;
the instance, eight random hex digits, tells two recorders of one process apart).
A record is in the page cache the moment the append returns, so it survives the process being
killed (SIGKILL, a crash, vLLM killing its EngineCore at shutdown): only a crash of the machine
itself can lose it. Nothing is encoded to Parquet inside the engine's processes: ``compact.py``
turns finished spools into table parts afterwards, and readers decode spools not compacted yet.

Segment layout (little-endian)::

    0      header (4096 bytes): magic, version, pid, segment index, capacity, counters, role
    4096   records: [u32 length][payload][padding to 8 bytes] ...; length 0 = nothing more yet,
           length END_OF_SEGMENT = the writer moved on to the next segment

Publication: the payload is copied first and its length last, as one aligned 4-byte store, so a
reader (or a process killed mid-append) sees either the whole record or none of it.

A payload is ``marshal.dumps`` of a tuple whose first item says its kind:

==================  ==========================================================================
kind                tuple
==================  ==========================================================================
ROW                 (ROW, table index in names.Table.ALL, row tuple in column order)
EVENTS              (EVENTS, event, time_ns, step_id, [request ids]): request_events rows
EMISSIONS           (EMISSIONS, step_id, time_ns, [request ids], [num tokens], [drafted] | None,
                    [accepted] | None): token_emissions rows (requests with 0 tokens skipped)
EMISSIONS_SAME_IDS  (EMISSIONS_SAME_IDS, step_id, time_ns, [num tokens], [drafted] | None, [accepted] | None):
                    as EMISSIONS, for the request ids of the recorder's previous EMISSIONS record (a decode
                    batch keeps its requests from step to step: their ids are written once, not per step)
REGION              (REGION, seq, worker_regions row): a region whose GPU time comes later
REGION_GPU          (REGION_GPU, seq, gpu_ns, gpu_start_ns, gpu_end_ns): that GPU time
SELF_TIMING         (SELF_TIMING, {hook: (calls, ns, first call's ns, cpu ns, first call's cpu ns)}): the
                    self-timing diagnostic's totals, wall and thread-CPU time
==================  ==========================================================================

An EMISSIONS_SAME_IDS record read without the EMISSIONS record it refers to (a segment before it is missing)
is unreadable and counted as such, like a damaged record.

A REGION never resolved (the process died with its GPU work in flight) keeps null GPU times and
is counted as a region whose GPU time was lost.
"""

from __future__ import annotations

import marshal
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from servescope.run.names import Table
from servescope.run.rows import RequestEventRow, TokenEmissionRow
from servescope.run.schema import TABLES

MAGIC = b"SVSPOOL1"
VERSION = 1
HEADER_BYTES = 4096
END_OF_SEGMENT = 0xFFFFFFFF
SUFFIX = ".spool"
SPOOL_DIR = "spool"

ROW, EVENTS, EMISSIONS, REGION, REGION_GPU, SELF_TIMING, EMISSIONS_SAME_IDS = range(7)
TABLE_INDEX = {name: i for i, name in enumerate(Table.ALL)}

# header fields: name -> (offset, struct format)
HEADER_FIELDS = {
    "magic": (0, "8s"),
    "version": (8, "<I"),
    "pid": (16, "<Q"),
    "segment": (24, "<Q"),
    "capacity": (32, "<Q"),
    "closed": (40, "<Q"),  # CLOSED_CLEANLY: the process closed its recorder; CLOSED_FULL: continued
    "rows_dropped": (48, "<Q"),  # rows not recorded (disk full, record too large): process total so far
    "internal_errors": (56, "<Q"),  # exceptions caught inside servescope in this process so far
    "records": (64, "<Q"),  # records in this segment (written when it is closed)
    "instance": (72, "8s"),  # which recorder of the process (two recorders never share a spool)
    "steps_held": (80, "<Q"),  # engine steps held, not written yet (SERVESCOPE_HELD_UPDATES): a kill loses them
    "role": (128, "64s"),
}
CLOSED_CLEANLY = 1
CLOSED_FULL = 2


def pack_header(buf, name: str, value) -> None:
    """Write one header field into a segment's buffer."""
    offset, fmt = HEADER_FIELDS[name]
    struct.pack_into(fmt, buf, offset, value)


def unpack_header(buf, name: str):
    """Return one header field of a segment's buffer."""
    offset, fmt = HEADER_FIELDS[name]
    return struct.unpack_from(fmt, buf, offset)[0]


def spool_dir(run_dir: str | os.PathLike) -> Path:
    """Return the run's spool folder."""
    return Path(run_dir) / SPOOL_DIR


def segment_path(directory: Path, role: str, pid: int, instance: str, segment: int) -> Path:
    """Return the file of one segment of a recorder's spool."""
    return directory / f"{role}-{pid}-{instance}-{segment:06d}{SUFFIX}"


class SpoolError(Exception):
    """A file in the spool folder is not a servescope spool segment."""


@dataclass
class SegmentHeader:
    """What a segment's header says."""

    path: Path
    pid: int
    role: str
    instance: str
    segment: int
    closed: int
    rows_dropped: int
    internal_errors: int
    steps_held: int


def read_header(path: Path) -> SegmentHeader:
    """Return a segment's header; raise SpoolError if the file is not a segment."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as exc:
        raise SpoolError(f"{path}: unreadable ({exc.strerror})") from exc
    if len(head) < HEADER_BYTES or head[:8] != MAGIC:
        raise SpoolError(f"{path}: not a servescope spool segment")
    return SegmentHeader(path=path, pid=unpack_header(head, "pid"),
                         role=unpack_header(head, "role").rstrip(b"\0").decode(errors="replace"),
                         instance=unpack_header(head, "instance").rstrip(b"\0").decode(errors="replace"),
                         segment=unpack_header(head, "segment"), closed=unpack_header(head, "closed"),
                         rows_dropped=unpack_header(head, "rows_dropped"),
                         internal_errors=unpack_header(head, "internal_errors"),
                         steps_held=unpack_header(head, "steps_held"))


def read_records(path: Path) -> Iterator[bytes]:
    """Yield every published record of a segment in append order (stops at the first gap)."""
    with open(path, "rb") as f:
        data = f.read()
    pos, end = HEADER_BYTES, len(data)
    while pos + 4 <= end:
        (n,) = struct.unpack_from("<I", data, pos)
        if n == 0 or n == END_OF_SEGMENT or pos + 4 + n > end:
            return
        yield data[pos + 4:pos + 4 + n]
        pos += 4 + ((n + 7) & ~7)


def segments(run_dir: str | os.PathLike) -> list[Path]:
    """Return every segment file of a run's spool, ordered by process and segment."""
    directory = spool_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*" + SUFFIX))


@dataclass
class ProcessSpool:
    """Everything one process's spool holds: table rows, counters, and how the process ended."""

    role: str
    pid: int
    instance: str
    paths: list[Path]
    rows: dict[str, list[tuple]] = field(default_factory=lambda: defaultdict(list))
    closed_cleanly: bool = False
    rows_dropped: int = 0
    internal_errors: int = 0
    unreadable_records: int = 0
    regions_without_gpu_time: int = 0  # REGION records never resolved: GPU time lost at the process's end
    steps_held: int = 0  # engine steps held, not written, as the last segment's header says (0 after a clean close)
    hook_cost: dict | None = None  # the last SELF_TIMING totals: {hook: (calls, ns, first ns, cpu ns, first cpu ns)}

    @property
    def name(self) -> str:
        """Return the spool's name, as its parts and its part index are named: <role>-<pid>-<instance>."""
        return f"{self.role}-{self.pid}-{self.instance}"


def group_segments(paths: list[Path]) -> dict[tuple[str, int, str], list[Path]]:
    """Return the segment files of each recorder (role, pid, instance), in segment order; non-segments skipped."""
    groups: dict[tuple[str, int, str], list[tuple[int, Path]]] = defaultdict(list)
    for path in paths:
        try:
            header = read_header(path)
        except SpoolError:
            continue
        groups[(header.role, header.pid, header.instance)].append((header.segment, path))
    return {key: [p for _, p in sorted(items)] for key, items in groups.items()}


def decode_process(role: str, pid: int, instance: str, paths: list[Path]) -> ProcessSpool:
    """Decode one recorder's segments into table rows (in append order) and its counters."""
    spool = ProcessSpool(role=role, pid=pid, instance=instance, paths=paths)
    regions: dict[int, list] = {}
    region_order: list[int] = []
    last_ids: list = [None]  # the request ids of the latest EMISSIONS record (EMISSIONS_SAME_IDS refers to them)
    for path in paths:
        header = read_header(path)
        spool.closed_cleanly = spool.closed_cleanly or header.closed == CLOSED_CLEANLY
        spool.rows_dropped = max(spool.rows_dropped, header.rows_dropped)
        spool.internal_errors = max(spool.internal_errors, header.internal_errors)
        spool.steps_held = header.steps_held  # the current count, not a total: the last segment's
        for payload in read_records(path):
            try:
                record = marshal.loads(payload)
                if record[0] == SELF_TIMING:
                    spool.hook_cost = record[1]
                else:
                    _decode_record(record, spool.rows, regions, region_order, last_ids)
            except Exception:
                spool.unreadable_records += 1
    resolved_rows = spool.rows[Table.WORKER_REGIONS]
    for seq in region_order:
        row, resolved = regions[seq]
        resolved_rows.append(tuple(row))
        if not resolved:
            spool.regions_without_gpu_time += 1
    return spool


_REGION_COLUMNS = TABLES[Table.WORKER_REGIONS].column_names
_GPU_FIELDS = slice(_REGION_COLUMNS.index("gpu_ns"), _REGION_COLUMNS.index("gpu_end_ns") + 1)
assert _REGION_COLUMNS[_GPU_FIELDS] == ("gpu_ns", "gpu_start_ns", "gpu_end_ns")


def _decode_record(record: tuple, rows: dict, regions: dict, region_order: list, last_ids: list) -> None:
    kind = record[0]
    if kind == ROW:
        rows[Table.ALL[record[1]]].append(record[2])
    elif kind == EMISSIONS or kind == EMISSIONS_SAME_IDS:
        if kind == EMISSIONS:
            _, step_id, time_ns, request_ids, counts, drafted, accepted = record
            last_ids[0] = request_ids
        else:
            _, step_id, time_ns, counts, drafted, accepted = record
            request_ids = last_ids[0]
            if request_ids is None or len(request_ids) != len(counts):
                raise ValueError("emissions that repeat request ids never read")
        out = rows[Table.TOKEN_EMISSIONS]
        for i, (rid, n) in enumerate(zip(request_ids, counts)):
            if n:
                out.append(TokenEmissionRow(rid, step_id, time_ns, n, drafted[i] if drafted else None,
                                            accepted[i] if accepted else None))
    elif kind == EVENTS:
        _, event, time_ns, step_id, request_ids = record
        out = rows[Table.REQUEST_EVENTS]
        for rid in request_ids:
            out.append(RequestEventRow(rid, event, time_ns, step_id))
    elif kind == REGION:
        _, seq, row = record
        regions[seq] = [list(row), False]
        region_order.append(seq)
    elif kind == REGION_GPU:
        _, seq, gpu_ns, gpu_start, gpu_end = record
        entry = regions.get(seq)
        if entry is not None:
            entry[0][_GPU_FIELDS] = [gpu_ns, gpu_start, gpu_end]
            entry[1] = True
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def read_spools(run_dir: str | os.PathLike) -> list[ProcessSpool]:
    """Return every process spool of a run (compacted spools are gone from the folder)."""
    return [decode_process(role, pid, instance, paths)
            for (role, pid, instance), paths in group_segments(segments(run_dir)).items()]


def spool_names(run_dir: str | os.PathLike) -> set[str]:
    """Return the names (<role>-<pid>-<instance>) of the spools present: parts of the same name are not read."""
    return {f"{role}-{pid}-{instance}" for role, pid, instance in group_segments(segments(run_dir))}


def part_spool_name(part_stem: str) -> str:
    """Return the spool name a compacted part was written from (its stem without a .pNNN chunk suffix)."""
    return part_stem.split(".p", 1)[0]
