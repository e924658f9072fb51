"""The run directory: where every process of one run writes, and how to read it back.

Layout::

    RUN/
      manifest.json            engine, versions, parameters, model, host, workload, clocks
      processes/<pid>.json     one per recording process: role, clock anchor, drop and error counts
      engine/<role>-<pid>.json what each engine process learned of its configuration
      tables/<table>/<role>-<pid>-<seq>.parquet   the records (schema.py), written once each (parts.py)
      parts/<writer>.jsonl     the part index: every part's table, rows, sha256 and run id (parts.py)
      otlp/spans-<pid>.jsonl   OTLP-JSON span lines when no OTLP endpoint was set
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

logger = logging.getLogger("servescope")

RUN_DIR_ENV = "SERVESCOPE_RUN_DIR"


class RunDirError(Exception):
    """The path is not a readable servescope run directory."""


def table_dir(run_dir: str | os.PathLike, table: str) -> Path:
    return Path(run_dir) / "tables" / table


def read_table(run_dir: str | os.PathLike, table: str, *, dictionary_column: str | None = None,
               strict: bool = False, warnings: list[str] | None = None) -> pa.Table:
    """Return every part of one table that passes its checks, concatenated (an empty table if none).

    Each part is checked against the run's part index (run/integrity.py); a problem is one line
    appended to warnings (logged on the "servescope" logger when warnings is None), or, with
    strict, a RunDirError. dictionary_column: read this string column dictionary-encoded
    (Parquet's dictionary pages become Arrow dictionaries, no string materialised per row: what
    keeps per-token tables small).
    """
    from servescope.run.integrity import Problems, RunParts

    problems = Problems(strict, warnings)
    try:
        from servescope.run.manifest import read_manifest

        manifest = read_manifest(run_dir)
    except RunDirError as exc:
        problems.add(str(exc))
        manifest = {}
    data = RunParts(run_dir, manifest=manifest, problems=problems).read(table, dictionary_column=dictionary_column).data
    if warnings is None:
        report_warnings(problems.messages, None)
    return data


def report_warnings(messages: list[str], into: list[str] | None) -> None:
    """Append a read's warnings to into, or, when into is None, log each on the "servescope" logger; returns None."""
    if into is not None:
        into.extend(m for m in messages if m not in into)
        return
    for message in messages:
        logger.warning("servescope: warning: %s", message)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (write a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def read_processes(run_dir: str | os.PathLike) -> list[dict]:
    """Return the per-process records (role, pid, clock anchor, counters); unreadable ones are left out."""
    return _json_objects(sorted((Path(run_dir) / "processes").glob("*.json")))


def read_engine_facts(run_dir: str | os.PathLike) -> list[dict]:
    """Return what each engine process recorded about its configuration; unreadable files are left out."""
    return _json_objects(sorted((Path(run_dir) / "engine").glob("*.json")))


def _json_objects(paths: list[Path]) -> list[dict]:
    """Return the JSON objects in these files, skipping any that is unreadable or not an object (load_run names them)."""
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                obj = json.load(f)
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def ensure_run_id(run_dir: str | os.PathLike) -> str:
    """Return the run's id, creating RUN/run.json with a fresh one if no process did yet."""
    import uuid

    path = Path(run_dir) / "run.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump({"run_id": uuid.uuid4().hex}, f)
        except FileExistsError:
            pass
    for _ in range(100):  # another process may be writing it right now
        try:
            return read_json(path)["run_id"]
        except (json.JSONDecodeError, KeyError):
            import time

            time.sleep(0.01)
    raise RunDirError(f"{path}: unreadable run id")


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Return the run directory as a Path, or raise RunDirError naming what is wrong."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    if not (path / "tables").is_dir() and not (path / "manifest.json").exists():
        raise RunDirError(f"{path}: not a servescope run directory (no tables/ and no manifest.json)")
    return path
