"""Compaction: a finished recorder's spool becomes Parquet table parts, outside the engine.

``compact_run(RUN)`` decodes the spool of every recorder whose process has ended (its spool
closed, or the process gone) into one part per table, ``tables/<table>/<spool>.parquet`` (chunks of
``ROWS_PER_PART`` rows as ``<spool>.pNNN``), each written once and indexed by ``parts.write_part``
under the spool's name; it brings the process record up to date with how the process ended and what
the spool held or lost, and only then deletes the spool.

Until the spool is deleted it stays the source of truth: a reader that finds both a spool and parts
of the same name reads the spool (integrity.py). A compaction cut short is completed by the next:
parts already written and indexed are kept as they are (the spool decodes to the same rows), a part
written but not yet indexed is indexed, the missing ones are written. So nothing is lost and nothing
is counted twice, whenever it stops.

Who compacts: ``servescope run`` when the command has ended, ``servescope.uninstrument()``, and
whatever ends a run with ``close_run`` (the benchmark, the studies). Readers never need to: they decode spools that are
still there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from servescope.run.directory import read_json, rows_to_table, table_dir, write_json
from servescope.run.parts import index_existing_part, read_part_index, write_part
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
    """Turn the spools of ended processes into indexed Parquet parts and delete them; return what was done."""
    run_dir = Path(run_dir)
    result = CompactionResult()
    for (role, pid, instance), paths in group_segments(segments(run_dir)).items():
        spool = decode_process(role, pid, instance, paths)
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


def close_run(run_dir: str | os.PathLike) -> dict:
    """Compact the spools of the run's ended processes, then write manifest.json; return the manifest."""
    from servescope.run.manifest import write_manifest

    compact_run(run_dir)
    return write_manifest(run_dir)


def write_spool_parts(run_dir: Path, spool: ProcessSpool) -> int:
    """Write (or complete) one spool's parts, each indexed under the spool's name; return the rows they hold."""
    indexed = {e.file for e in read_part_index(run_dir)[0] if e.writer == spool.name}
    total = 0
    for name, rows in spool.rows.items():
        if not rows:
            continue
        chunks = range(0, len(rows), ROWS_PER_PART)
        for k, start in enumerate(chunks):
            part = spool.name if len(chunks) == 1 else f"{spool.name}.p{k:03d}"
            path = table_dir(run_dir, name) / f"{part}.parquet"
            file = path.relative_to(run_dir).as_posix()
            if file in indexed:
                continue  # written and indexed by a compaction cut short after it
            if path.exists():  # written, not indexed: its content is what the spool decodes to
                index_existing_part(run_dir, name, path, writer=spool.name)
                continue
            write_part(run_dir, name, rows_to_table(name, rows[start:start + ROWS_PER_PART]), writer=spool.name,
                       name=part)
        total += len(rows)
    return total


def update_process_record(run_dir: Path, spool: ProcessSpool, *, ended: bool) -> None:
    """Write what the spool says about its process into processes/<pid>.json (one entry per recorder)."""
    path = run_dir / "processes" / f"{spool.pid}.json"
    try:
        record = read_json(path) if path.exists() else {}
    except Exception:
        record = {}
    if not isinstance(record, dict):
        record = {}
    record.setdefault("pid", spool.pid)
    record.setdefault("role", spool.role)
    spools = record.get("spools") if isinstance(record.get("spools"), dict) else {}
    spools[spool.name] = {
        "ended": ("closed" if spool.closed_cleanly else "killed or crashed (spool never closed)") if ended
        else "running",
        "closed": spool.closed_cleanly,
        "rows_recorded": {name: len(rows) for name, rows in spool.rows.items() if rows},
        "rows_dropped": spool.rows_dropped,
        "internal_errors": spool.internal_errors,
        "unreadable_records": spool.unreadable_records,
        "regions_without_gpu_time": spool.regions_without_gpu_time,
        "held_steps_lost": spool.steps_held if ended and not spool.closed_cleanly else 0,
        **({"hook_cost": {name: _hook_cost(v) for name, v in spool.hook_cost.items()}} if spool.hook_cost else {}),
    }
    record["spools"] = spools
    record.update(_process_totals(spools))
    write_json(path, record)


# the self-timing totals of one hook, in the order of the spool's SELF_TIMING record
HOOK_COST_KEYS = ("calls", "ns", "first_ns", "cpu_ns", "first_cpu_ns")


def _hook_cost(totals) -> dict:
    """Return one hook's self-timing totals by name (records before the thread CPU time was kept lack it: None)."""
    return {key: totals[i] if len(totals) > i else None for i, key in enumerate(HOOK_COST_KEYS)}


def _process_totals(spools: dict) -> dict:
    """Return a process's totals over its recorders' spools (most processes have one)."""
    entries = list(spools.values())  # an entry only its recorder wrote (not compacted yet) lacks the counts
    rows: dict[str, int] = {}
    for e in entries:
        for table, n in (e.get("rows_recorded") or {}).items():
            rows[table] = rows.get(table, 0) + n
    ends = [e.get("ended", "running") for e in entries]
    hook_cost: dict[str, dict] = {}
    for e in entries:
        for name, cost in (e.get("hook_cost") or {}).items():
            mine = hook_cost.setdefault(name, dict.fromkeys(HOOK_COST_KEYS, 0))
            for key in HOOK_COST_KEYS:
                if mine[key] is not None:  # a total missing from one spool (an older record) is missing from the sum
                    mine[key] = None if cost.get(key) is None else mine[key] + cost[key]
    return {
        "ended": next((x for x in ends if x != "closed"), "closed"),
        "closed": all(e.get("closed") for e in entries),
        "rows_recorded": rows,
        "rows_dropped": sum(e.get("rows_dropped", 0) for e in entries),
        "internal_errors": sum(e.get("internal_errors", 0) for e in entries),
        "unreadable_records": sum(e.get("unreadable_records", 0) for e in entries),
        "regions_without_gpu_time": sum(e.get("regions_without_gpu_time", 0) for e in entries),
        "held_steps_lost": sum(e.get("held_steps_lost", 0) for e in entries),
        "compacted": all("rows_recorded" in e for e in entries),
        **({"hook_cost": hook_cost} if hook_cost else {}),
    }

