"""Build small run directories by hand for tests: known timelines in, Parquet parts out.

    run_dir = (
        RunBuilder(tmp_path)
        .request("a", arrival_ns=0, queued_ns=10, scheduled_ns=20,
                 emissions=[(1, 100, 1), (2, 150, 3)], finished_ns=150, prompt_tokens=8)
        .row("steps", step_id=1, schedule_start_ns=15)
        .write(parts=2)
    )

``request`` adds one request's lifecycle events and token emissions; ``row`` adds any
row to any table of run/schema.py (columns not given are null). ``write`` writes
every table that has rows as Parquet parts through ``parts.write_part``, indexed like the
recorder's (``indexed=False``: bare Parquet files, as servescope wrote before it kept an index).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.directory import table_dir, write_json
from servescope.run.parts import write_part
from servescope.run.schema import TABLES

BUILDER_WRITER = "builder-1"  # <role>-<pid>, as a recording process names its parts


class RunBuilder:
    """Collects rows for a run directory under root/name and writes them as Parquet parts."""

    def __init__(self, root: str | Path, name: str = "run", manifest: dict | None = None):
        self.path = Path(root) / name
        self.manifest = {} if manifest is None else manifest
        self.rows: dict[str, list[dict]] = {table: [] for table in TABLES}

    def row(self, table: str, **values) -> RunBuilder:
        """Add one row to a table; returns self. Unknown tables or columns raise KeyError."""
        unknown = set(values) - set(TABLES[table].column_names)
        if unknown:
            raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
        self.rows[table].append(values)
        return self

    def event(self, request_id: str, event: str, time_ns: int, **values) -> RunBuilder:
        """Add one lifecycle event (request_events row); returns self."""
        return self.row("request_events", request_id=request_id, event=event, time_ns=time_ns, **values)

    def request(
        self,
        request_id: str,
        *,
        arrival_ns: int | None = None,
        queued_ns: int | None = None,
        scheduled_ns: int | None = None,
        emissions=(),
        finished_ns: int | None = None,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        finish_reason: str = "stop",
        preemptions=(),
    ) -> RunBuilder:
        """Add a request: its events (None = not recorded) and emissions; returns self.

        emissions: (step_id, time_ns, num_tokens) or (step_id, time_ns, num_tokens,
        num_draft_tokens, num_accepted_tokens) per engine step that emitted tokens.
        preemptions: (preempted_ns, rescheduled_ns or None) per preemption.
        """
        prompt = {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens}
        if arrival_ns is not None:
            self.event(request_id, "arrival", arrival_ns, **prompt)
        if queued_ns is not None:
            self.event(request_id, "queued", queued_ns, **prompt)
        if scheduled_ns is not None:
            self.event(request_id, "scheduled", scheduled_ns)
        for preempted_ns, rescheduled_ns in preemptions:
            self.event(request_id, "preempted", preempted_ns)
            if rescheduled_ns is not None:
                self.event(request_id, "scheduled", rescheduled_ns)
        total = 0
        for emission in emissions:
            step_id, time_ns, num_tokens, *spec = emission
            total += num_tokens
            draft, accepted = spec if spec else (None, None)
            self.row("token_emissions", request_id=request_id, step_id=step_id, time_ns=time_ns,
                     num_tokens=num_tokens, num_draft_tokens=draft, num_accepted_tokens=accepted)
        if finished_ns is not None:
            self.event(request_id, "finished", finished_ns, output_tokens=total, detail=finish_reason)
        return self

    def write(self, parts: int = 1, sort_by_time: bool = True, writers: dict[str, str] | None = None,
              indexed: bool = True) -> Path:
        """Write manifest.json and each non-empty table as `parts` Parquet parts; return the run directory.

        sort_by_time orders each table's rows by its first ``*_ns`` column, as a recorder
        appends them (requests interleaved); False keeps the order rows were added in.
        writers: table -> the writer (``<role>-<pid>``) of its parts, default builder-1; parts are
        named ``<writer>-<k>``. indexed: write through parts.write_part (run id: the manifest's, else a
        fresh one, in run.json); False writes bare Parquet files and no run.json, as before the index.
        """
        write_json(self.path / "manifest.json", self.manifest)
        (self.path / "tables").mkdir(parents=True, exist_ok=True)
        run_id = None
        if indexed:
            run_id = self.manifest.get("run_id") or uuid.uuid4().hex
            write_json(self.path / "run.json", {"run_id": run_id})
        for name, rows in self.rows.items():
            if not rows:
                continue
            table = pa.Table.from_pylist(rows, schema=TABLES[name].arrow_schema)
            time_column = next((c for c in TABLES[name].column_names if c.endswith("_ns")), None)
            if sort_by_time and time_column is not None:
                table = table.take(np.argsort(table.column(time_column).to_numpy(), kind="stable"))
            writer = (writers or {}).get(name, BUILDER_WRITER)
            directory = table_dir(self.path, name)
            directory.mkdir(parents=True, exist_ok=True)
            for k, part_rows in enumerate(np.array_split(np.arange(len(table)), parts)):
                if indexed:
                    write_part(self.path, name, table.take(part_rows), writer=writer, name=f"{writer}-{k:03d}",
                               run_id=run_id)
                else:
                    pq.write_table(table.take(part_rows), directory / f"{writer}-{k:03d}.parquet")
        return self.path
