"""Loader for servescope's own documented trace format, CSV or JSON lines.

CSV: a header naming at least ``arrival_s,prompt_tokens,output_tokens``, one request
per row, e.g.::

    arrival_s,prompt_tokens,output_tokens
    0.000,812,64
    0.250,1530,12

JSONL: one object per line with the same keys and, optionally, ``prefix_block_ids``
(a list of non-negative ints naming shared 512-token prompt blocks)::

    {"arrival_s": 0.0, "prompt_tokens": 812, "output_tokens": 64}

``arrival_s`` is seconds from the workload start (non-decreasing); lengths are
integer token counts >= 1. Extra columns or keys are ignored.
"""

from __future__ import annotations

from pathlib import Path

from servescope.bench.workloads.trace_reading import (
    block_id_lists,
    first_line,
    read_csv_columns,
    read_jsonl_columns,
    require_rows,
    require_sorted,
    seconds_column,
    token_lengths,
)
from servescope.bench.workloads.workload import Request, Workload, WorkloadError

GENERIC_FIELDS = ["arrival_s", "prompt_tokens", "output_tokens"]


def load_generic_trace(path: str | Path, name: str | None = None) -> Workload:
    """Returns the generic CSV or JSONL trace at ``path`` (.gz allowed) as a Workload, arrivals in s."""
    path = Path(path)
    is_jsonl = first_line(path).startswith("{")
    if is_jsonl:
        columns = read_jsonl_columns(path, GENERIC_FIELDS, ["prefix_block_ids"])
    else:
        columns = read_csv_columns(path, GENERIC_FIELDS)
    require_rows(columns)
    arrival_s = seconds_column(columns, "arrival_s")
    if arrival_s.size and arrival_s.min() < 0:
        i = int((arrival_s < 0).argmax())
        raise WorkloadError(f"{path}, line {columns.line_numbers[i]}: field 'arrival_s' is negative")
    require_sorted(columns, arrival_s, "arrival_s")
    prompt = token_lengths(columns, "prompt_tokens", minimum=1)
    output = token_lengths(columns, "output_tokens", minimum=1)
    if is_jsonl:
        blocks = block_id_lists(columns, "prefix_block_ids")
    else:
        blocks = [None] * len(columns)
    requests = [
        Request(t, p, o, b) for t, p, o, b in zip(arrival_s.tolist(), prompt.tolist(), output.tolist(), blocks)
    ]
    kind = "JSONL" if is_jsonl else "CSV"
    return Workload(name=name or path.name.split(".")[0], requests=requests, source=f"generic trace ({kind}) {path}")
