"""Loader for the BurstGPT traces (CSV).

Columns: ``Timestamp`` (s from the trace start), ``Model``, ``Request tokens``,
``Response tokens``, ``Total tokens``, ``Log Type``. Failed requests are logged
with 0 response tokens; they are skipped and counted in ``Workload.skipped``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servescope.bench.workloads.trace_reading import (
    read_csv_columns,
    require_rows,
    require_sorted,
    seconds_column,
    token_lengths,
)
from servescope.bench.workloads.workload import Request, Workload, WorkloadError

BURSTGPT_COLUMNS = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]


def load_burstgpt_trace(
    path: str | Path, name: str | None = None, model: str | None = None, log_type: str | None = None
) -> Workload:
    """Returns the BurstGPT CSV at ``path`` as a Workload (arrivals in s), optionally one Model / Log Type, failures skipped."""
    path = Path(path)
    columns = read_csv_columns(path, BURSTGPT_COLUMNS)
    require_rows(columns)
    arrival_s = seconds_column(columns, "Timestamp")
    require_sorted(columns, arrival_s, "Timestamp")
    prompt = token_lengths(columns, "Request tokens", minimum=0)
    output = token_lengths(columns, "Response tokens", minimum=0)
    keep = np.ones(len(columns), dtype=bool)
    if model is not None:
        keep &= np.asarray(columns.values["Model"]) == model
    if log_type is not None:
        keep &= np.asarray(columns.values["Log Type"]) == log_type
    selected = int(keep.sum())
    failed = keep & (output == 0)
    empty_prompt = keep & (output > 0) & (prompt == 0)
    keep &= ~failed & ~empty_prompt
    if not keep.any():
        raise WorkloadError(f"{path}: no usable requests (model={model!r}, log_type={log_type!r})")
    start = arrival_s[keep][0]
    requests = [
        Request(t - start, p, o)
        for t, p, o in zip(arrival_s[keep].tolist(), prompt[keep].tolist(), output[keep].tolist())
    ]
    source = (
        f"BurstGPT trace (CSV) {path}; model={model or 'all'}, log type={log_type or 'all'}; "
        f"{selected} rows selected, {int(failed.sum())} failed (0 response tokens) and "
        f"{int(empty_prompt.sum())} with 0 request tokens skipped"
    )
    return Workload(
        name=name or path.name.split(".")[0],
        requests=requests,
        source=source,
        skipped=int(failed.sum() + empty_prompt.sum()),
    )
