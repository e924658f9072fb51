"""Loader for the Mooncake / Kimi traces (FAST'25), JSON lines.

Each line: ``timestamp`` (ms from the trace start), ``input_length``,
``output_length`` and ``hash_ids``: the ids of the prompt's 512-token blocks, in
order. Requests that share a hash id share that block's tokens, which is what makes
the trace exercise prefix caching; ``servescope.bench.workloads.prompts`` reproduces it.
Rows with a 0-token input or output are skipped and counted in ``Workload.skipped``.
"""

from __future__ import annotations

from pathlib import Path

from servescope.bench.workloads.trace_reading import (
    block_id_lists,
    read_jsonl_columns,
    require_rows,
    require_sorted,
    seconds_column,
    token_lengths,
    zero_length_mask,
)
from servescope.bench.workloads.workload import Request, Workload

MOONCAKE_BLOCK_TOKENS = 512


def load_mooncake_trace(path: str | Path, name: str | None = None) -> Workload:
    """Returns the Mooncake JSONL trace at ``path`` as a Workload, arrivals in s, hash_ids as prefix blocks."""
    path = Path(path)
    columns = read_jsonl_columns(path, ["timestamp", "input_length", "output_length"], ["hash_ids"])
    require_rows(columns)
    arrival_s = seconds_column(columns, "timestamp", scale=1e-3)
    require_sorted(columns, arrival_s, "timestamp")
    prompt = token_lengths(columns, "input_length")
    output = token_lengths(columns, "output_length")
    blocks = block_id_lists(columns, "hash_ids")
    keep = ~zero_length_mask(prompt, output)
    skipped = int((~keep).sum())
    requests = [
        Request(t, p, o, b)
        for t, p, o, b, k in zip(arrival_s.tolist(), prompt.tolist(), output.tolist(), blocks, keep.tolist())
        if k
    ]
    source = f"Mooncake trace (JSONL) {path}" + (f"; {skipped} rows with 0 tokens skipped" if skipped else "")
    return Workload(
        name=name or path.name.split(".")[0],
        requests=requests,
        source=source,
        skipped=skipped,
        prefix_block_tokens=MOONCAKE_BLOCK_TOKENS,
    )
