"""The run directory: where every process of one run writes, and how to read it back.

Layout::

    RUN/
      manifest.json            engine, versions, parameters, model, host, workload, clocks
      processes/<pid>.json     one per recording process: role, clock anchor, drop and error counts
      engine/<role>-<pid>.json what each engine process learned of its configuration
      tables/<table>/<role>-<pid>-<seq>.parquet   the records (schema.py)
      otlp/spans-<pid>.jsonl   OTLP-JSON span lines when no OTLP endpoint was set
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.schema import TABLES

RUN_DIR_ENV = "SERVESCOPE_RUN_DIR"


class RunDirError(Exception):
    """The path is not a readable servescope run directory."""


def table_dir(run_dir: str | os.PathLike, table: str) -> Path:
    return Path(run_dir) / "tables" / table


def read_table(run_dir: str | os.PathLike, table: str, *, dictionary_column: str | None = None) -> pa.Table:
    """Return all parts of one table, concatenated (an empty table if none were written).

    dictionary_column: read this string column dictionary-encoded (Parquet's dictionary pages
    become Arrow dictionaries, no string materialised per row: what keeps per-token tables small).
    """
    schema = TABLES[table].arrow_schema
    if dictionary_column is not None:
        index = schema.get_field_index(dictionary_column)
        schema = schema.set(index, pa.field(dictionary_column, pa.dictionary(pa.int32(), pa.string())))
    parts = sorted(table_dir(run_dir, table).glob("*.parquet"))
    tables = []
    for part in parts:
        try:
            if dictionary_column is None:
                data = pq.read_table(part, schema=schema)
            else:
                data = pq.ParquetFile(part, read_dictionary=[dictionary_column]).read()
                if not data.schema.equals(schema):  # an older writer: let Parquet map the schema
                    data = pq.read_table(part, schema=schema)
        except Exception as exc:  # a part cut short by a killed process
            raise RunDirError(f"{part}: unreadable Parquet part ({exc})") from exc
        tables.append(data)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


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
    """Return the per-process records (role, pid, clock anchor, counters)."""
    return [read_json(p) for p in sorted((Path(run_dir) / "processes").glob("*.json"))]


def read_engine_facts(run_dir: str | os.PathLike) -> list[dict]:
    """Return what each engine process recorded about its configuration."""
    return [read_json(p) for p in sorted((Path(run_dir) / "engine").glob("*.json"))]


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
        except (RunDirError, KeyError):
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
