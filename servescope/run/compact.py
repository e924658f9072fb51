"""Compaction: a finished process's spool becomes Parquet table parts, outside the engine.

``compact_run(RUN)`` decodes the spool of every process that has ended (its spool closed, or the
process gone) into one part per table, ``tables/<table>/<role>-<pid>.parquet``, brings its
process record up to date with how the process ended and what it recorded or lost, and only then
deletes the spool. Until the spool is deleted it stays the source of truth: a reader that finds
both a spool and parts of the same name reads the spool (so a compaction interrupted half-way is
neither lost nor counted twice, and running it again completes it).

Who compacts: ``servescope run`` when the command has ended, ``servescope.uninstrument()`` for the
processes already ended, the benchmark at the end of a run. Readers never need to: they decode
spools that are still there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from servescope.run.directory import read_json, rows_to_table, table_dir, write_json
from servescope.run.spool import ProcessSpool, decode_process, group_segments, segments

ROWS_PER_PART = 4_000_000


@dataclass
class CompactionResult:
    """What one compaction did."""

    compacted: list[str] = field(default_factory=list)  # spool names turned into parts
    left_running: list[str] = field(default_factory=list)  # spools of processes still running
    rows: int = 0


def process_alive(pid: int) -> bool:
    """Return True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compact_run(run_dir: str | os.PathLike, *, include_running: bool = False) -> CompactionResult:
    """Turn the spools of ended processes into Parquet parts and delete them; return what was done."""
    run_dir = Path(run_dir)
    result = CompactionResult()
    for (role, pid), paths in group_segments(segments(run_dir)).items():
        spool = decode_process(role, pid, paths)
        ended = spool.closed_cleanly or not process_alive(pid)
        if not ended and not include_running:
            result.left_running.append(spool.name)
            continue
        result.rows += write_spool_parts(run_dir, spool)
        update_process_record(run_dir, spool, ended=ended)
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        result.compacted.append(spool.name)
    return result


def write_spool_parts(run_dir: Path, spool: ProcessSpool) -> int:
    """Write one process spool's rows as Parquet parts named after it; return the rows written."""
    total = 0
    for name, rows in spool.rows.items():
        if not rows:
            continue
        for k, start in enumerate(range(0, len(rows), ROWS_PER_PART)):
            chunk = rows[start:start + ROWS_PER_PART]
            table = rows_to_table(name, chunk)
            part = spool.name if len(rows) <= ROWS_PER_PART else f"{spool.name}.p{k:03d}"
            _write_part(run_dir, name, table, part)
        total += len(rows)
    return total


def _write_part(run_dir: Path, name: str, table: pa.Table, part: str) -> None:
    import pyarrow.parquet as pq

    directory = table_dir(run_dir, name)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{part}.parquet"
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def update_process_record(run_dir: Path, spool: ProcessSpool, *, ended: bool) -> None:
    """Write what the spool says about its process into processes/<pid>.json."""
    path = run_dir / "processes" / f"{spool.pid}.json"
    try:
        record = read_json(path) if path.exists() else {"pid": spool.pid, "role": spool.role}
    except Exception:
        record = {"pid": spool.pid, "role": spool.role}
    record.update({
        "ended": ("closed" if spool.closed_cleanly else "killed or crashed (spool never closed)") if ended
        else "running",
        "closed": spool.closed_cleanly,
        "rows_recorded": {name: len(rows) for name, rows in spool.rows.items() if rows},
        "rows_dropped": spool.rows_dropped,
        "internal_errors": spool.internal_errors,
        "unreadable_records": spool.unreadable_records,
        "regions_without_gpu_time": spool.regions_without_gpu_time,
        "compacted": True,
        **({"hook_cost": {name: {"calls": calls, "ns": ns} for name, (calls, ns) in spool.hook_cost.items()}}
           if spool.hook_cost else {}),
    })
    write_json(path, record)
