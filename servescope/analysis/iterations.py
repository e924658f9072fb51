"""Engine iterations: where each step's time went (GPU, CPU overhead, idle), by kind of step.

Kinds: ``prefill`` (only prompt work), ``decode`` (only decode work), ``mixed`` (both in one
batch: chunked prefill beside decodes), ``empty`` (nothing scheduled).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servescope.analysis.distributions import summarize
from servescope.analysis.stalls import StepArrays, step_arrays
from servescope.run.names import StepPhase

KINDS = ("prefill", "decode", "mixed", "empty")
# host CPU phases of a step in the EngineCore: key (schedule_s, execute_s, wait_s, update_s) -> the
# (start, end) columns of the steps table
PHASES = {f"{phase}_s": StepPhase.columns(phase) for phase in StepPhase.ALL}


def iteration_breakdown(steps: StepArrays) -> dict[str, np.ndarray]:
    """Return per-step seconds: iteration (emission to emission) = gpu + cpu_overhead + idle.

    iteration: this step's update_end minus the previous step's (same EngineCore); the first
    step of an engine counts from its schedule_start. idle: time before the step's schedule
    began with no step in flight. gpu: the step's GPU time (CUDA events) or, without them, its
    host wait for the model output, at most the non-idle time. cpu_overhead: the rest, host
    time during which the GPU had no work of this step.
    """
    n = steps.step_id.size
    first = np.ones(n, dtype=bool)
    first[1:] = steps.engine_index[1:] != steps.engine_index[:-1]
    prev_end = np.empty(n, dtype=np.int64)
    if n:
        prev_end[1:] = steps.update_end_ns[:-1]
        prev_end[first] = steps.schedule_start_ns[first]
    iteration = np.maximum(steps.update_end_ns - prev_end, 0) / 1e9
    idle = np.where(first, 0, np.maximum(steps.schedule_start_ns - prev_end, 0)) / 1e9
    idle = np.minimum(idle, iteration)
    gpu = np.minimum(steps.gpu_or_wait_ns / 1e9, iteration - idle)
    return {"iteration": iteration, "gpu": gpu, "cpu_overhead": iteration - idle - gpu, "idle": idle}


def gpu_bubbles_s(worker_regions, step_ids: np.ndarray, engine_index: np.ndarray | None = None) -> np.ndarray:
    """Return per step (in step_ids order; engine_index: each step's engine, default 0) the GPU idle gap before
    it, in s: its first GPU start minus the same engine's previous step's last GPU end on the host clock
    (globaltimer stamps, over all ranks); NaN where not measured."""
    out = np.full(step_ids.size, np.nan)
    if worker_regions is None or worker_regions.num_rows == 0:
        return out
    import pyarrow.compute as pc

    stamped = worker_regions.filter(pc.and_(pc.is_valid(worker_regions["gpu_start_ns"]),
                                            pc.is_valid(worker_regions["step_id"])))
    if stamped.num_rows == 0:
        return out
    engine = (pc.fill_null(stamped["engine_index"], 0).to_numpy(zero_copy_only=False).astype(np.int64)
              if "engine_index" in stamped.column_names else np.zeros(stamped.num_rows, dtype=np.int64))
    step = stamped["step_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    start = stamped["gpu_start_ns"].to_numpy(zero_copy_only=False).astype(np.int64)
    end = stamped["gpu_end_ns"].to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((step, engine))
    engine, step, start, end = engine[order], step[order], start[order], end[order]
    first = np.r_[True, (step[1:] != step[:-1]) | (engine[1:] != engine[:-1])]
    groups = np.flatnonzero(first)
    ids, engines = step[groups], engine[groups]
    first_start = np.minimum.reduceat(start, groups)
    last_end = np.maximum.reduceat(end, groups)
    bubble = np.full(ids.size, np.nan)
    consecutive = (ids[1:] == ids[:-1] + 1) & (engines[1:] == engines[:-1])
    bubble[1:][consecutive] = np.maximum(first_start[1:][consecutive] - last_end[:-1][consecutive], 0) / 1e9
    keys = engines * (1 << 40) + ids
    wanted = (np.zeros(step_ids.size, dtype=np.int64) if engine_index is None
              else np.asarray(engine_index, dtype=np.int64)) * (1 << 40) + np.asarray(step_ids, dtype=np.int64)
    where = np.searchsorted(keys, wanted)
    found = (where < keys.size) & (keys[np.minimum(where, keys.size - 1)] == wanted)
    out[found] = bubble[where[found]]
    return out


def step_kinds(prefill_reqs: np.ndarray, decode_reqs: np.ndarray) -> np.ndarray:
    """Return each step's kind (prefill, decode, mixed, empty) as an array of strings."""
    kind = np.full(prefill_reqs.shape, "empty", dtype=object)
    kind[(prefill_reqs > 0) & (decode_reqs == 0)] = "prefill"
    kind[(prefill_reqs == 0) & (decode_reqs > 0)] = "decode"
    kind[(prefill_reqs > 0) & (decode_reqs > 0)] = "mixed"
    return kind


def iteration_summary(run: Any) -> dict:
    """Return distributions over steps (s) of iteration time, GPU time, CPU overhead, idle and the host
    phases, for all steps and per kind, plus the GPU-time source and the CPU-overhead share."""
    table = run.steps
    if table.num_rows == 0:
        return {"steps": 0}
    steps = step_arrays(table, getattr(run, "worker_regions", None))
    parts = iteration_breakdown(steps)
    order = np.lexsort((table.column("step_id").to_numpy(zero_copy_only=False),
                        table.column("engine_index").to_numpy(zero_copy_only=False)))

    def column(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64)[order]

    kind = step_kinds(column("num_prefill_reqs"), column("num_decode_reqs"))
    series = {f"{k}_s": v for k, v in parts.items()}
    series.update({name: (column(b) - column(a)) / 1e9 for name, (a, b) in PHASES.items()})
    bubbles = gpu_bubbles_s(getattr(run, "worker_regions", None), steps.step_id, steps.engine_index)
    if not np.isnan(bubbles).all():  # only with GPU stamps (SERVESCOPE_GPU_STAMPS=1)
        series["gpu_bubble_s"] = bubbles
    with np.errstate(invalid="ignore", divide="ignore"):
        series["cpu_overhead_share"] = np.where(parts["iteration"] > 0, parts["cpu_overhead"] / parts["iteration"],
                                                np.nan)
    measured = ~np.isnan(steps.gpu_ns)
    out = {"steps": int(kind.size), "gpu_time_source": "cuda_events" if measured.all() else
           ("host_wait" if not measured.any() else "mixed"),
           "all": {name: summarize(v) for name, v in series.items()}, "by_kind": {}}
    for k in KINDS:
        pick = kind == k
        if pick.any():
            out["by_kind"][k] = {"steps": int(pick.sum()),
                                 **{name: summarize(v[pick]) for name, v in series.items()}}
    return out


def speculative_summary(run: Any) -> dict | None:
    """Return drafted / accepted totals, acceptance rate, mean acceptance length (bonus included) and
    per-position acceptance from token_emissions; None when the run did not speculate."""
    emissions = run.token_emissions
    if emissions.num_rows == 0:
        return None
    drafted = np.nan_to_num(np.asarray(emissions.column("num_draft_tokens").to_numpy(zero_copy_only=False),
                                       dtype=np.float64)).astype(np.int64)
    accepted = np.nan_to_num(np.asarray(emissions.column("num_accepted_tokens").to_numpy(zero_copy_only=False),
                                        dtype=np.float64)).astype(np.int64)
    rows = drafted > 0
    if not rows.any():
        return None
    k = int(drafted.max())
    positions = np.arange(k)
    accepted_at = (accepted[rows][:, None] > positions[None, :]).sum(axis=0)
    drafted_at = (drafted[rows][:, None] > positions[None, :]).sum(axis=0)
    return {"drafts": int(rows.sum()), "draft_tokens": int(drafted.sum()), "accepted_tokens": int(accepted.sum()),
            "acceptance_rate": float(accepted.sum() / drafted.sum()),
            "mean_acceptance_length": float((accepted[rows] + 1).mean()),
            "accepted_per_position": accepted_at.tolist(), "drafted_per_position": drafted_at.tolist(),
            "acceptance_per_position": (accepted_at / np.maximum(drafted_at, 1)).tolist()}


REGION_TIME_KINDS = ("gpu", "host", "host_cpu", "voluntary_switches", "involuntary_switches")


def region_times_ms(worker_regions) -> dict[str, dict[str, dict]]:
    """Return per worker region the P50 / P99 / count of its GPU time, host time and the thread's CPU time in it (ms).

    Keys: "gpu" (CUDA-event time), "host" (host wall time), "host_cpu" (the worker thread's CPU
    time inside the region; the rest of "host" it was blocked or preempted), and
    "voluntary_switches" / "involuntary_switches" (counts per region, not ms). Runs recorded
    without the thread's readings (SERVESCOPE_THREAD_USAGE) have no "host_cpu" or switch entries.
    """
    out: dict[str, dict[str, dict]] = {k: {} for k in REGION_TIME_KINDS}
    if worker_regions is None or worker_regions.num_rows == 0:
        return out

    def column(name: str) -> np.ndarray:
        if name not in worker_regions.column_names:
            return np.full(worker_regions.num_rows, np.nan)
        return np.asarray(worker_regions.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    region = np.asarray(worker_regions.column("region").to_pylist(), dtype=object)
    values_by_kind = {"gpu": column("gpu_ns") / 1e6, "host": (column("host_end_ns") - column("host_start_ns")) / 1e6,
                      "host_cpu": column("host_cpu_ns") / 1e6, "voluntary_switches": column("voluntary_switches"),
                      "involuntary_switches": column("involuntary_switches")}
    for name in sorted(set(region)):
        pick = region == name
        for kind, values in values_by_kind.items():
            values = values[pick]
            values = values[~np.isnan(values)]
            if values.size:
                out[kind][name] = {"p50": float(np.median(values)), "p99": float(np.percentile(values, 99)),
                                   "n": int(values.size)}
    return out


HOST_PACED_MIN_GPU_MS = 1.0  # regions shorter than this on the GPU are not worth the warning


def host_paced_regions(times: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Return the regions whose median host time is at least their median GPU event time (and >= 1 ms GPU).

    A CUDA-event interval is the time the stream is held between two events: kernels plus any
    gap in which the stream waits for the host to enqueue the next one. When the host spends
    as long in a region as the GPU interval lasts, the interval is paced by the host (kernel
    launches, host work between launches), and the region's "GPU time" is an upper bound of its
    kernel time, not a measure of it (gpu-validation.md: a launch-bound drafter). times is
    region_times_ms(); returns region -> {"gpu_p50_ms", "host_p50_ms"[, "host_cpu_p50_ms"]}: the
    thread's CPU time says whether the host was busy launching (close to host_p50_ms) or waiting
    off the CPU (blocked on the GIL or a lock, or preempted).
    """
    out = {}
    for name, gpu in times["gpu"].items():
        host = times["host"].get(name)
        if host and gpu["p50"] >= HOST_PACED_MIN_GPU_MS and host["p50"] >= gpu["p50"]:
            out[name] = {"gpu_p50_ms": gpu["p50"], "host_p50_ms": host["p50"]}
            cpu = times.get("host_cpu", {}).get(name)
            if cpu:
                out[name]["host_cpu_p50_ms"] = cpu["p50"]
    return out
