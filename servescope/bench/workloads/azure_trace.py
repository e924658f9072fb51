"""Loader for the Azure LLM inference traces (2023 and 2024 share one format).

CSV columns: ``TIMESTAMP`` ('YYYY-MM-DD HH:MM:SS.fffffff', 7 fractional digits),
``ContextTokens`` (prompt length), ``GeneratedTokens`` (output length). Arrival
offsets are seconds after the first row. Rows with a 0-token prompt or output
cannot be sent; they are skipped and counted in ``Workload.skipped``. The 2023
files ship with servescope: "Azure LLM inference trace 2023, Azure Public Dataset,
CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024)".
"""

from __future__ import annotations

from pathlib import Path

from servescope.bench.workloads.trace_reading import (
    datetime_seconds_column,
    read_csv_columns,
    require_rows,
    require_sorted,
    token_lengths,
    zero_length_mask,
)
from servescope.bench.workloads.workload import Request, Workload

AZURE_COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]


def load_azure_trace(path: str | Path, name: str | None = None, source: str | None = None) -> Workload:
    """Returns the Azure trace at ``path`` (.csv or .csv.gz) as a Workload, arrivals in s from its first request."""
    path = Path(path)
    columns = read_csv_columns(path, AZURE_COLUMNS)
    require_rows(columns)
    arrival_s = datetime_seconds_column(columns, "TIMESTAMP")
    require_sorted(columns, arrival_s, "TIMESTAMP")
    prompt = token_lengths(columns, "ContextTokens")
    output = token_lengths(columns, "GeneratedTokens")
    keep = ~zero_length_mask(prompt, output)
    skipped = int((~keep).sum())
    start = arrival_s[keep][0] if keep.any() else 0.0
    requests = [
        Request(t - start, p, o)
        for t, p, o in zip(arrival_s[keep].tolist(), prompt[keep].tolist(), output[keep].tolist())
    ]
    description = source or f"Azure LLM inference trace (CSV) {path}"
    if skipped:
        description += f"; {skipped} rows with 0 tokens skipped"
    return Workload(name=name or path.name.split(".")[0], requests=requests, source=description, skipped=skipped)
