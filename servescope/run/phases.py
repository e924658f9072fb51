"""Phases: several loads recorded by one engine, cut apart afterwards into one run directory each.

An engine start costs a minute on the H100 (weights, graph capture), and the first requests
after it pay one-time costs (kernel compilation, allocator growth) that belong to no load.
A driver can therefore run a warm-up and several measured loads on one engine, one *phase*
each: every request of a phase carries the phase's id prefix (``<prefix>-<n>``) and the
phase's wall-clock window is written to ``RUN/phases.json`` when it ends. Phases do not
overlap (a driver starts one only after the previous one drained), so a step belongs to
the phase whose window holds it.

``split_run(RUN)`` writes ``RUN/phases/<name>/``, a complete run directory per phase that
every servescope command reads as it reads any run:

- request_events, token_emissions, client_requests, client_chunks: the phase's requests
  (request id ``<prefix>-...``; vLLM may append its own suffix);
- steps and frontend_steps: those that began inside the window; worker_regions: those of
  the kept steps, and step-less regions inside the window; gpu_samples: inside the window;
- manifest.json: the engine's manifest with ``workload`` replaced by the phase's and a
  ``phase`` entry (name, prefix, window, parent run); processes/ and engine/ copied
  (their drop counters are the whole engine run's).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from servescope.run.directory import RunDirError, check_run_dir, read_json, write_json
from servescope.run.tables import read_table
from servescope.run.parts import manifest_part_entries, write_part
from servescope.run.schema import TABLES

PHASES_FILE = "phases.json"
PHASES_DIR = "phases"

# Table -> how its rows are assigned to a phase: ("request", id column) or ("window", time column).
PHASE_MEMBERSHIP = {
    "request_events": ("request", "request_id"),
    "token_emissions": ("request", "request_id"),
    "client_requests": ("request", "client_request_id"),
    "client_chunks": ("request", "client_request_id"),
    "steps": ("window", "schedule_start_ns"),
    "frontend_steps": ("window", "process_start_ns"),
    "gpu_samples": ("window", "time_ns"),
    "worker_regions": ("steps", "host_start_ns"),
}


@dataclass
class Phase:
    """One load run on a shared engine: its requests' id prefix and its monotonic-clock window."""

    name: str
    id_prefix: str
    start_ns: int
    end_ns: int
    workload: dict[str, Any] = field(default_factory=dict)  # what was sent (becomes the slice's manifest workload)
    measured: bool = True  # False for warm-up phases
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. engine counters over the phase

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"phase name {self.name!r} is not usable as a directory name")
        if self.end_ns < self.start_ns:
            raise ValueError(f"phase {self.name!r} ends before it starts")


def record_phase(run_dir: str | os.PathLike, phase: Phase) -> None:
    """Append a finished phase to RUN/phases.json; a name or prefix used before raises ValueError."""
    phases = read_phases(run_dir)
    for other in phases:
        if other.name == phase.name or other.id_prefix == phase.id_prefix:
            raise ValueError(f"phase {phase.name!r} (prefix {phase.id_prefix!r}) repeats phase {other.name!r}")
        if phase.start_ns < other.end_ns and other.start_ns < phase.end_ns:
            raise ValueError(f"phase {phase.name!r} overlaps phase {other.name!r} in time")
    write_json(Path(run_dir) / PHASES_FILE, [asdict(p) for p in phases + [phase]])


def read_phases(run_dir: str | os.PathLike) -> list[Phase]:
    """Return the phases recorded in RUN/phases.json ([] if it has none)."""
    path = Path(run_dir) / PHASES_FILE
    if not path.exists():
        return []
    try:
        return [Phase(**p) for p in read_json(path)]
    except (ValueError, TypeError) as exc:
        raise RunDirError(f"{path}: unreadable phase list ({exc})") from exc


def split_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write one run directory per recorded phase (default RUN/phases/<name>); return name -> path."""
    source = check_run_dir(run_dir)
    phases = read_phases(source)
    if not phases:
        raise RunDirError(f"{source}: no phases recorded ({PHASES_FILE} missing): nothing to split")
    out = Path(out_dir) if out_dir is not None else source / PHASES_DIR
    tables = {name: read_table(source, name) for name in PHASE_MEMBERSHIP}
    return {phase.name: slice_run(source, tables, phase, out / phase.name) for phase in phases}


def slice_run(source: Path, tables: dict[str, pa.Table], phase: Phase, dest: Path) -> Path:
    """Write the rows of one phase of the source run's tables as a run directory at dest; return dest."""
    run_id = begin_slice(source, dest)
    kept_steps = None
    for name in ("steps", *[t for t in PHASE_MEMBERSHIP if t != "steps"]):  # steps first: regions join them
        table = tables[name]
        rule, column = PHASE_MEMBERSHIP[name]
        if rule == "request":
            mask = pc.starts_with(table[column].cast(pa.string()), phase.id_prefix + "-")
        else:
            mask = window_mask(table, column, phase.start_ns, phase.end_ns)
            if rule == "steps":
                in_steps = pc.is_in(table["step_id"], value_set=kept_steps.combine_chunks())
                mask = pc.if_else(pc.is_null(table["step_id"]), mask, in_steps)
        selected = table.filter(pc.fill_null(mask, False))
        if name == "steps":
            kept_steps = selected["step_id"]
        write_table_part(dest, name, selected, f"phase-{phase.name}")
    finish_slice(source, dest, run_id, workload=phase.workload,
                 phase={**asdict(phase), "parent_run_dir": str(source.absolute())})
    return dest


def begin_slice(source: Path, dest: Path) -> str:
    """Start dest afresh as a run cut from source: its own run.json (before any part is written); return its run id."""
    if dest.exists():
        shutil.rmtree(dest)
    run_id = uuid.uuid4().hex
    write_json(dest / "run.json", {"run_id": run_id, "parent_run_dir": str(source.absolute())})
    return run_id


def finish_slice(source: Path, dest: Path, run_id: str, **facts: Any) -> dict[str, Any]:
    """Copy source's process and engine records into the slice dest and write its manifest: source's, with the
    slice's run id and parts, parent_run_id (which tells readers the process records count the whole parent run)
    and facts (what the slice is: phase, window); return it."""
    for folder in ("processes", "engine"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, dest / folder)
    manifest = read_json(source / "manifest.json") if (source / "manifest.json").exists() else {}
    manifest["parent_run_id"] = manifest.get("run_id")
    manifest["run_id"] = run_id
    manifest["parts"] = manifest_part_entries(dest)  # the slice's own parts, not the parent run's
    manifest.update(facts)
    write_json(dest / "manifest.json", manifest)
    return manifest


def window_mask(table: pa.Table, column: str, start_ns: int, end_ns: int) -> pa.ChunkedArray:
    """Return which rows have column inside [start_ns, end_ns] (null where the time is null)."""
    times = table[column]
    return pc.and_(pc.greater_equal(times, start_ns), pc.less_equal(times, end_ns))


def write_table_part(run_dir: Path, name: str, table: pa.Table, part_name: str, *, writer: str | None = None) -> int:
    """Write table as one indexed Parquet part of run_dir's table name (parts.write_part; nothing if empty); return its rows.

    writer: the part index to append to (RUN/parts/<writer>.jsonl); default part_name.
    """
    if len(table) == 0:
        return 0
    write_part(run_dir, name, table, writer=writer or part_name, name=part_name)
    return len(table)


assert set(PHASE_MEMBERSHIP) == set(TABLES), "every table needs a phase membership rule"
