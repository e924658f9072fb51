"""A run directory loaded into memory: its manifest and the tables the analysis reads.

``load_run(RUN)`` reads every Parquet part of each table (``tracer/rundir.py``) and
keeps them as pyarrow tables with the columns of ``tracer/schema.py``, with one
exception made for size: the request-id column of the two per-token tables
(``token_emissions.request_id``, ``client_chunks.client_request_id``) is kept
dictionary-encoded (``dictionary<int32, string>``), as Parquet stores it. A run of
100 million tokens would otherwise hold 100 million copies of ~50-character ids
(about 5 GB). Compute functions accept dictionary arrays; ``.cast(pa.string())``
gives plain strings where one is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from servescope.run import directory as rundir

# Table name -> the id column read dictionary-encoded (one row per token or chunk).
DICTIONARY_ID_COLUMNS = {
    "token_emissions": "request_id",
    "client_chunks": "client_request_id",
}


@dataclass
class RunData:
    """One run directory in memory: manifest.json and the recorded tables."""

    path: Path
    manifest: dict
    request_events: pa.Table
    token_emissions: pa.Table
    steps: pa.Table
    frontend_steps: pa.Table
    worker_regions: pa.Table
    client_requests: pa.Table
    client_chunks: pa.Table


LOADED_TABLES = (
    "request_events",
    "token_emissions",
    "steps",
    "frontend_steps",
    "worker_regions",
    "client_requests",
    "client_chunks",
)


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Return the run directory's manifest and tables; raise rundir.RunDirError if unreadable."""
    path = rundir.check_run_dir(run_dir)
    tables = rundir.read_tables(path, {name: DICTIONARY_ID_COLUMNS.get(name) for name in LOADED_TABLES})
    return RunData(path=path, manifest=_read_manifest(path), **tables)


def release_unused_memory() -> None:
    """Return memory that Arrow freed (tables dropped) to the OS; returns None.

    Arrow's allocator keeps freed pages for reuse by Arrow, but the analysis allocates
    with numpy: once a RunData's tables are dropped, handing them back keeps a large
    run's peak resident memory to what is actually in use.
    """
    pa.default_memory_pool().release_unused()


def _read_manifest(path: Path) -> dict:
    """Return manifest.json as a dict, {} when the run has none."""
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        return {}
    try:
        manifest = rundir.read_json(manifest_path)
    except (OSError, json.JSONDecodeError) as exc:
        raise rundir.RunDirError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise rundir.RunDirError(f"{manifest_path}: manifest is not a JSON object")
    return manifest


