"""A run directory loaded into memory: its manifest, the tables the analysis reads, and what is wrong with them.

``load_run(RUN)`` reads every Parquet part of each table, checked against the run's part index
(``run/integrity.py``), and keeps them as pyarrow tables with the columns of ``run/schema.py``.
Every problem found (a missing, changed, duplicated, foreign or unlisted part, recorder errors,
an engine that never ran) is one line in ``RunData.warnings``; the tables hold the rest. With
``strict=True`` the first problem raises RunDirError instead.

One exception to schema.py's types is made for size: the request-id column of the two
per-token tables (``token_emissions.request_id``, ``client_chunks.client_request_id``) is kept
dictionary-encoded (``dictionary<int32, string>``), as Parquet stores it. A run of
100 million tokens would otherwise hold 100 million copies of ~50-character ids
(about 5 GB). Compute functions accept dictionary arrays; ``.cast(pa.string())``
gives plain strings where one is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from servescope.run import directory as rundir
from servescope.run.health import read_process_records, recording_problems, rows_written_check
from servescope.run.integrity import PartSpan, Problems, RunParts
from servescope.run.manifest import read_manifest

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
    warnings: list[str] = field(default_factory=list)  # one line per problem found reading the run
    parts: dict[str, list[PartSpan]] = field(default_factory=dict)  # table -> the parts read, in row order

    def rows_by_part(self, table: str) -> list[tuple[PartSpan, pa.Table]]:
        """Return each part that was read of a loaded table with its rows (zero-copy slices), in row order."""
        data: pa.Table = getattr(self, table)
        out, offset = [], 0
        for span in self.parts.get(table, []):
            out.append((span, data.slice(offset, span.rows)))
            offset += span.rows
        return out


LOADED_TABLES = (
    "request_events",
    "token_emissions",
    "steps",
    "frontend_steps",
    "worker_regions",
    "client_requests",
    "client_chunks",
)


def load_run(run_dir: str | os.PathLike, *, strict: bool = False) -> RunData:
    """Return the run directory's manifest, checked tables and warnings; raise rundir.RunDirError if unreadable.

    strict: raise RunDirError at the first problem instead of listing it in RunData.warnings.
    """
    path = rundir.check_run_dir(run_dir)
    manifest = read_manifest(path)
    problems = Problems(strict)
    parts = RunParts(path, manifest=manifest, problems=problems)
    reads = {name: parts.read(name, dictionary_column=DICTIONARY_ID_COLUMNS.get(name)) for name in LOADED_TABLES}
    processes = read_process_records(path, manifest, problems)
    # a slice's (a phase's, a window's) process records count its parent run; phases sliced before
    # servescope wrote parent_run_id say "phase" only
    if "parent_run_id" not in manifest and "phase" not in manifest:
        rows_written_check(path, {name: r.data.num_rows for name, r in reads.items()}, processes, problems)
    recording_problems(path, manifest, processes, steps_recorded=reads["steps"].data.num_rows, problems=problems)
    return RunData(path=path, manifest=manifest, **{name: r.data for name, r in reads.items()},
                   warnings=problems.messages, parts={name: r.parts for name, r in reads.items()})


def release_unused_memory() -> None:
    """Return memory that Arrow freed (tables dropped) to the OS; returns None.

    Arrow's allocator keeps freed pages for reuse by Arrow, but the analysis allocates
    with numpy: once a RunData's tables are dropped, handing them back keeps a large
    run's peak resident memory to what is actually in use.
    """
    pa.default_memory_pool().release_unused()
