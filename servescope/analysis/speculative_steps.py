"""Where a speculative step's time goes: verify forward, rejection sampling and draft, per engine step.

A step *verifies* when it computes drafted tokens (``steps.num_spec_tokens > 0``); its target
``forward`` is then the verify forward, and its ``rejection_sample`` region is the rejection
sampler. A step that verifies nothing runs a plain forward. The ``draft`` region of step k is the
proposer drafting the tokens that step k + 1 verifies; ``draft_decode`` (Model Runner V2) is its
drafts after the first, and ``draft`` minus ``draft_decode`` the first draft forward over the
step's tokens (``draft_prefill``). Times are per step: a region's rows of one step are summed,
on the lowest rank (tensor-parallel ranks run the same regions).

GPU times are CUDA-event intervals: the stream time between a region's start and end events,
kernels plus any wait of the stream for the host inside the region (iterations.host_paced_regions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.analysis.distributions import summarize
from servescope.run.names import Region

# the per-step parts, in the order reports show them: name -> the region it is read from
PARTS = ("verify_forward", "plain_forward", "sample", "rejection_sample", "draft", "draft_prefill", "draft_decode")
TIMED_REGIONS = (Region.FORWARD, Region.SAMPLE, Region.REJECTION_SAMPLE, Region.DRAFT, Region.DRAFT_DECODE)


def region_ms_by_step(worker_regions: pa.Table | None, step_keys: np.ndarray, engine_of_null: int
                      ) -> dict[str, dict[str, np.ndarray]]:
    """Return {"host": {region: ms per step}, "gpu": {...}} aligned to step_keys (NaN where a step has no such row).

    step_keys: engine_index * 2**32 + step_id per step. Rows of each region are summed per step on
    the lowest rank; a row without engine_index belongs to engine engine_of_null.
    """
    out: dict[str, dict[str, np.ndarray]] = {"host": {}, "gpu": {}}
    for kind in out:
        for name in TIMED_REGIONS:
            out[kind][name] = np.full(step_keys.size, np.nan)
    if worker_regions is None or worker_regions.num_rows == 0 or step_keys.size == 0:
        return out
    rows = worker_regions.filter(pc.is_valid(worker_regions["step_id"]))
    if rows.num_rows == 0:
        return out
    rank = pc.fill_null(rows["rank"], 0).to_numpy(zero_copy_only=False)
    rows = rows.filter(pa.array(rank == rank.min()))
    engine = (pc.fill_null(rows["engine_index"], engine_of_null).to_numpy(zero_copy_only=False).astype(np.int64)
              if "engine_index" in rows.column_names else np.full(rows.num_rows, engine_of_null, dtype=np.int64))
    keys = engine * 2**32 + rows["step_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    region = np.asarray(rows["region"].to_pylist(), dtype=object)
    host = (_floats(rows["host_end_ns"]) - _floats(rows["host_start_ns"])) / 1e6
    gpu = _floats(rows["gpu_ns"]) / 1e6
    pos = np.clip(np.searchsorted(step_keys, keys), 0, step_keys.size - 1)
    known = step_keys[pos] == keys
    for name in TIMED_REGIONS:
        pick = known & (region == name)
        for kind, values in (("host", host), ("gpu", gpu)):
            measured = pick & ~np.isnan(values)
            if measured.any():
                sums = np.bincount(pos[measured], weights=values[measured], minlength=step_keys.size)
                seen = np.bincount(pos[measured], minlength=step_keys.size) > 0
                out[kind][name] = np.where(seen, sums, np.nan)
    return out


def _floats(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def step_split(steps: pa.Table, worker_regions: pa.Table | None) -> dict[str, Any]:
    """Return per step (sorted by engine, step): verify / plain flags and each part's host and GPU ms (NaN: absent).

    Keys: "step_id", "engine_index", "verify" (bool), "prefill" (bool: the step also computed prompt
    tokens), "host" and "gpu" (part -> ms per step, parts as in PARTS).
    """
    step_id = steps["step_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    engine = pc.fill_null(steps["engine_index"], 0).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((step_id, engine))
    step_id, engine = step_id[order], engine[order]
    spec = pc.fill_null(steps["num_spec_tokens"], 0).to_numpy(zero_copy_only=False)[order]
    prefill = pc.fill_null(steps["num_prefill_tokens"], 0).to_numpy(zero_copy_only=False)[order]
    verify = spec > 0
    engines = np.unique(engine)
    times = region_ms_by_step(worker_regions, engine * 2**32 + step_id, int(engines[0]) if engines.size else 0)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for kind, by_region in times.items():
        forward = by_region[Region.FORWARD]
        draft, decode = by_region[Region.DRAFT], by_region[Region.DRAFT_DECODE]
        parts[kind] = {
            "verify_forward": np.where(verify, forward, np.nan),
            "plain_forward": np.where(verify, np.nan, forward),
            "sample": by_region[Region.SAMPLE],
            "rejection_sample": by_region[Region.REJECTION_SAMPLE],
            "draft": draft,
            "draft_prefill": draft - decode,  # NaN where either is absent (k = 1: no draft_decode)
            "draft_decode": decode,
        }
    return {"step_id": step_id, "engine_index": engine, "verify": verify, "prefill": prefill > 0, **parts}


def speculative_step_summary(run: Any) -> dict | None:
    """Return distributions over steps (ms) of each part of a speculative step, host and GPU, with
    the draft's share of the step's GPU time and counts of steps missing a part; None without drafts.

    run: a RunData (steps, worker_regions). Steps are counted as "verify" (drafted tokens,
    decode only), "verify_with_prefill" (drafted tokens beside prompt tokens) and "plain"; "missing"
    counts verify steps without a forward or rejection_sample row and draft_decode rows without draft.
    """
    if run.steps.num_rows == 0:
        return None
    split = step_split(run.steps, getattr(run, "worker_regions", None))
    verify, prefill = split["verify"], split["prefill"]
    if not verify.any():
        return None
    host, gpu = split["host"], split["gpu"]
    pure = verify & ~prefill
    out: dict[str, Any] = {
        "steps": {"verify": int(pure.sum()), "verify_with_prefill": int((verify & prefill).sum()),
                  "plain": int((~verify).sum()), "with_draft": int((~np.isnan(host["draft"])).sum()),
                  # Model Runner V1 of vLLM 0.32 runs the rejection sampler over zero drafts too
                  "plain_with_rejection_sample": int((~verify & ~np.isnan(host["rejection_sample"])).sum())},
        "host_ms": {part: summarize(host[part]) for part in PARTS},
        "gpu_ms": {part: summarize(gpu[part]) for part in PARTS},
        "verify_steps_only": {  # decode-only verify steps: the steady state of a speculative decode
            kind: {part: summarize(values[part][pure]) for part in PARTS} for kind, values in
            (("host_ms", host), ("gpu_ms", gpu))},
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        step_gpu = gpu["verify_forward"] + gpu["sample"] + gpu["draft"]
        out["draft_share_of_step_gpu"] = summarize(np.where(pure, gpu["draft"] / step_gpu, np.nan))
    out["missing"] = {
        "verify_steps_without_forward": int((verify & np.isnan(host["verify_forward"])).sum()),
        "verify_steps_without_rejection_sample": int((verify & np.isnan(host["rejection_sample"])).sum()),
        "draft_decode_without_draft": int((np.isnan(host["draft"]) & ~np.isnan(host["draft_decode"])).sum()),
    }
    return out
