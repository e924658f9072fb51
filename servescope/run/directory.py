"""The run directory: where every process of one run writes, and how to read it back.

Layout::

    RUN/
      manifest.json            engine, versions, parameters, model, host, workload, clocks
      processes/<pid>.json     one per recording process: role, clock anchor, drop and error counts
      engine/<role>-<pid>.json what each engine process learned of its configuration
      spool/<role>-<pid>-<instance>-<segment>.spool  what each recorder appended, until compacted (spool.py)
      tables/<table>/<role>-<pid>-<instance>.parquet the records (schema.py), compacted from a spool, written
                               once each (parts.py)
      parts/<writer>.jsonl     the part index: every part's table, rows, sha256 and run id (parts.py)
      otlp/spans-<pid>.jsonl   OTLP-JSON span lines when no OTLP endpoint was set
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from servescope.run.config import RUN_DIR_ENV  # noqa: F401  (where the run directory is named to a process)
from servescope.run.schema import TABLES



class RunDirError(Exception):
    """The path is not a readable servescope run directory."""


def table_dir(run_dir: str | os.PathLike, table: str) -> Path:
    return Path(run_dir) / "tables" / table


def rows_to_table(table: str, rows: list[tuple]) -> pa.Table:
    """Return rows (tuples in column order) as an Arrow table of the table's schema; a row shorter than the
    schema (written before columns were appended, e.g. a spool of an older servescope) has nulls for the rest."""
    spec = TABLES[table]
    width = len(spec.columns)
    if rows and min(map(len, rows)) < width:
        rows = [tuple(row) + (None,) * (width - len(row)) for row in rows]
    columns = list(zip(*rows))
    return pa.Table.from_arrays([pa.array(col, type=c.type) for col, c in zip(columns, spec.columns)],
                                schema=spec.arrow_schema)


def read_json(path: Path) -> Any:
    """Return a JSON file's content; raise RunDirError naming the file (and line) when it is not UTF-8 JSON."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc


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
    if not any((path / name).exists() for name in ("tables", "spool", "manifest.json")):
        raise RunDirError(f"{path}: not a servescope run directory (no tables/, spool/ or manifest.json)")
    return path
