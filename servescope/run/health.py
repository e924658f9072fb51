"""What a run says about its own recording: recorder errors, dropped rows, a command that failed to run.

These are facts the run directory records about itself (``processes/<pid>.json``, the manifest's
copy of them, ``command.json``); a reader reports them beside its result, one line each, so a run
whose recorder failed is never read as a quiet, empty run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from servescope.run.integrity import Problems


def read_process_records(run_dir: str | os.PathLike, manifest: dict, problems: Problems) -> list[dict]:
    """Return the per-process records (processes/*.json, else the manifest's copies); name unreadable ones."""
    records = []
    for path in sorted((Path(run_dir) / "processes").glob("*.json")):
        try:
            with open(path, "rb") as f:
                record = json.load(f)
        except (OSError, ValueError) as exc:
            problems.add(f"{path}: unreadable process record ({str(exc)[:80]}); its counters are not checked")
            continue
        if isinstance(record, dict):
            records.append(record)
    if not records:
        records = [p for p in manifest.get("processes") or [] if isinstance(p, dict)]
    return records


def recording_problems(run_dir: str | os.PathLike, manifest: dict, processes: list[dict], *,
                       steps_recorded: int, problems: Problems) -> None:
    """Add one message per recorder with internal errors or dropped rows, and one if the command never ran an engine."""
    for p in processes:
        who = f"{p.get('role') or 'process'} (pid {p.get('pid')})"
        errors = _count(p.get("internal_errors"))
        if errors:
            problems.add(f"{run_dir}: the recorder of {who} counted {errors} internal errors (servescope's own "
                         "faults; the engine was unaffected): its tables may lack records")
        dropped = p.get("rows_dropped")
        if isinstance(dropped, dict):  # runs recorded before servescope 0.2: per table, the buffer was full
            dropped = {t: _count(n) for t, n in dropped.items() if _count(n)}
            if dropped:
                detail = ", ".join(f"{t} {n}" for t, n in sorted(dropped.items()))
                problems.add(f"{run_dir}: the recorder of {who} dropped {sum(dropped.values())} rows "
                             f"(buffer full: {detail}): those tables are incomplete")
        elif _count(dropped):
            problems.add(f"{run_dir}: the recorder of {who} could not store {_count(dropped)} rows (no disk space "
                         "for its spool, or a record larger than a spool segment): its tables are incomplete")
        held_lost = _count(p.get("held_steps_lost"))
        if held_lost:
            problems.add(f"{run_dir}: {who} was killed with {held_lost} engine steps held, not written "
                         "(SERVESCOPE_HELD_UPDATES=1): their token_emissions, FINISHED events and steps rows are lost")
    command = manifest.get("command") if isinstance(manifest.get("command"), dict) else _command_file(run_dir)
    code = command.get("exit_code") if command else None
    if isinstance(code, int) and not isinstance(code, bool) and code != 0 and steps_recorded == 0:
        argv = " ".join(str(a) for a in command.get("argv") or [])[:120]
        problems.add(f"{run_dir}: the engine did not run: the recorded command ({argv}) exited with code {code} "
                     "and no engine step was recorded")


def rows_written_check(run_dir: str | os.PathLike, rows_read: dict[str, int], processes: list[dict],
                       problems: Problems) -> None:
    """Add one message per table with fewer rows read than its processes report writing (processes/*.json).

    This catches what a part index cannot: parts removed together with their index lines, and, in
    runs recorded before the index, missing parts.
    """
    written: dict[str, int] = {}
    for p in processes:
        counts = p.get("rows_recorded", p.get("rows_written"))  # recorded into its spools; before 0.2, written
        if isinstance(counts, dict):
            for table, n in counts.items():
                written[table] = written.get(table, 0) + _count(n)
    for table, n_read in rows_read.items():
        expected = written.get(table, 0)
        if n_read < expected:
            problems.add(f"{run_dir}: {table}: {n_read} rows read, but its processes report writing {expected} "
                         f"(processes/*.json): {expected - n_read} rows are missing")


def _command_file(run_dir: str | os.PathLike) -> dict | None:
    try:
        with open(Path(run_dir) / "command.json", "rb") as f:
            command = json.load(f)
    except (OSError, ValueError):
        return None
    return command if isinstance(command, dict) else None


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

