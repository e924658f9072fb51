"""Kernel time by region and step: a profile window's kernels set inside servescope's regions.

A region's event time (CUDA events, ``gpu_ns``) is the time the stream was held: kernels plus the
gaps while the host launched the next one. A profile window (record/profile_window.py) gives the
kernels themselves. Each kernel is attributed to the innermost region instance (step, region)
whose interval holds it:

- on a GPU, the region's GPU interval ``[gpu_start_ns, gpu_end_ns]`` (globaltimer stamps mapped
  onto CLOCK_MONOTONIC, ``SERVESCOPE_GPU_STAMPS=1``) and the GPU work (kernels, copies, memsets);
- on the CPU build, the region's host interval ``[host_start_ns, host_end_ns]`` and the host
  operators of the profiled thread.

Per region instance: event time (``gpu_ns``; on the host the interval's length), busy time (the
union of the kernel intervals clipped to the region: overlapping kernels and nested operators
count once) and the gap = event - busy (launch-bound time). Per step: the same over the step's
outermost regions. A kernel that crosses a region's boundary is ``straddling`` (counted, and its
part inside counts as busy); one that touches no region is ``outside``. Only steps whose every
region lies inside the profiled span are used. Times in ns unless a key ends in ``_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from servescope.analysis.distributions import summarize
from servescope.run.names import ProfileEvent


@dataclass
class RegionIntervals:
    """Region instances of one rank: step, region name, interval (ns, CLOCK_MONOTONIC) and event time (ns)."""

    step_id: np.ndarray
    region: np.ndarray  # object array of names
    start_ns: np.ndarray
    end_ns: np.ndarray
    event_ns: np.ndarray
    source: str  # "gpu" (globaltimer intervals) or "host"

    def __len__(self) -> int:
        return int(self.step_id.size)


def region_intervals(worker_regions: pa.Table, source: str, rank: int = 0) -> RegionIntervals:
    """Return the region instances of a rank with their GPU (source 'gpu') or host ('host') intervals."""
    if source not in ("gpu", "host"):
        raise ValueError(f"source must be 'gpu' or 'host', not {source!r}")
    cols = worker_regions.to_pydict()
    start_col, end_col = ("gpu_start_ns", "gpu_end_ns") if source == "gpu" else ("host_start_ns", "host_end_ns")
    keep = [i for i in range(worker_regions.num_rows)
            if cols[start_col][i] is not None and cols[end_col][i] is not None and cols["step_id"][i] is not None
            and (cols.get("rank", [0] * worker_regions.num_rows)[i] or 0) == rank]
    start = np.array([cols[start_col][i] for i in keep], dtype=np.int64)
    end = np.array([cols[end_col][i] for i in keep], dtype=np.int64)
    if source == "gpu":
        event = np.array([cols["gpu_ns"][i] if cols["gpu_ns"][i] is not None else cols[end_col][i] - cols[start_col][i]
                          for i in keep], dtype=np.int64)
    else:
        event = end - start
    return RegionIntervals(np.array([cols["step_id"][i] for i in keep], dtype=np.int64),
                           np.array([cols["region"][i] for i in keep], dtype=object), start, end, event, source)


def union_length_ns(starts: np.ndarray, ends: np.ndarray) -> int:
    """Return the total length (ns) of the union of the intervals [starts[i], ends[i]]."""
    if starts.size == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    groups = np.flatnonzero(new)
    group_end = np.maximum.reduceat(e, groups)
    return int(np.sum(group_end - s[groups]))


def busy_ns(k_start: np.ndarray, k_end: np.ndarray, start: int, end: int) -> int:
    """Return the union length (ns) of the kernel intervals clipped to [start, end]."""
    touching = (k_start < end) & (k_end > start)
    return union_length_ns(np.maximum(k_start[touching], start), np.minimum(k_end[touching], end))


def attribute_kernels(k_start: np.ndarray, k_end: np.ndarray, regions: RegionIntervals) -> np.ndarray:
    """Return per kernel the index of the innermost region instance holding it whole, -1 when it crosses a
    region boundary without being held (straddling), -2 when it touches no region (outside)."""
    out = np.full(k_start.size, -2, dtype=np.int64)
    if len(regions) == 0 or k_start.size == 0:
        return out
    best_len = np.full(k_start.size, np.iinfo(np.int64).max)
    for i in range(len(regions)):
        s, e = regions.start_ns[i], regions.end_ns[i]
        held = (k_start >= s) & (k_end <= e)
        inner = held & (e - s < best_len)
        out[inner] = i
        best_len[inner] = e - s
        touching = (k_start < e) & (k_end > s) & (out == -2)
        out[touching] = -1
    return out


def outermost(regions: RegionIntervals) -> np.ndarray:
    """Return a mask of the region instances not nested inside another region of the same step."""
    mask = np.ones(len(regions), dtype=bool)
    for i in range(len(regions)):
        same = (regions.step_id == regions.step_id[i]) & (np.arange(len(regions)) != i)
        longer_or_first = (regions.end_ns - regions.start_ns > regions.end_ns[i] - regions.start_ns[i]) | \
                          (np.arange(len(regions)) < i)
        holds = same & (regions.start_ns <= regions.start_ns[i]) & (regions.end_ns >= regions.end_ns[i]) & longer_or_first
        mask[i] = not holds.any()
    return mask


def covered_steps(regions: RegionIntervals, steps: list[int], profiled_from_ns: int, profiled_to_ns: int) -> np.ndarray:
    """Return the step ids of the window whose every region interval lies inside the profiled span."""
    ok = []
    for step in sorted(set(steps)):
        mine = regions.step_id == step
        if mine.any() and regions.start_ns[mine].min() >= profiled_from_ns and regions.end_ns[mine].max() <= profiled_to_ns:
            ok.append(step)
    return np.array(ok, dtype=np.int64)


def kernel_attribution_summary(profile: pa.Table, worker_regions: pa.Table, facts: dict, *,
                               source: str | None = None) -> dict[str, Any]:
    """Return per region and per step event time, kernel busy time and gaps (ms, P50 / P99 / total), the
    per-step difference event - busy, and the kernels outside every region, for one profile window.

    profile: the window's rows (record/profile_window.read_profile, one file); facts: its JSON facts
    (rank, steps, profiled_from_ns, profiled_to_ns). source: 'gpu' or 'host' (default: 'gpu' when the
    profile holds GPU work, else 'host').
    """
    kinds = np.array(profile.column("kind").to_pylist(), dtype=object)
    gpu_work = np.isin(kinds, ProfileEvent.DEVICE_WORK)
    if source is None:
        source = "gpu" if gpu_work.any() else "host"
    work = gpu_work if source == "gpu" else kinds == ProfileEvent.CPU_OP
    k_start = np.asarray(profile.column("start_ns").to_numpy(zero_copy_only=False), dtype=np.int64)[work]
    k_end = np.asarray(profile.column("end_ns").to_numpy(zero_copy_only=False), dtype=np.int64)[work]
    names = np.array(profile.column("name").to_pylist(), dtype=object)[work]
    regions = region_intervals(worker_regions, source, rank=int(facts.get("rank", 0)))
    if source == "gpu" and len(regions) == 0:
        raise ValueError("no region has a GPU interval: record with SERVESCOPE_GPU_STAMPS=1 to place kernels")
    steps = covered_steps(regions, facts.get("steps", []), facts["profiled_from_ns"], facts["profiled_to_ns"])
    in_steps = np.isin(regions.step_id, steps)
    regions = RegionIntervals(regions.step_id[in_steps], regions.region[in_steps], regions.start_ns[in_steps],
                              regions.end_ns[in_steps], regions.event_ns[in_steps], source)
    owner = attribute_kernels(k_start, k_end, regions)
    busy = np.array([busy_ns(k_start, k_end, regions.start_ns[i], regions.end_ns[i]) for i in range(len(regions))],
                    dtype=np.int64)
    # kernels inside the covered steps' span only: before the first / after the last covered step is not "outside"
    if len(regions):
        span = (k_end > regions.start_ns.min()) & (k_start < regions.end_ns.max())
    else:
        span = np.zeros(k_start.size, dtype=bool)
    top = outermost(regions)
    per_region = {}
    for name in sorted(set(regions.region.tolist())):
        mine = regions.region == name
        per_region[name] = {
            "instances": int(mine.sum()),
            "event_ms": _ms(regions.event_ns[mine]), "busy_ms": _ms(busy[mine]),
            "gap_ms": _ms(regions.event_ns[mine] - busy[mine]),
            "kernels": int(np.isin(owner, np.flatnonzero(mine)).sum()),
            "top_kernels": _top_names(names[np.isin(owner, np.flatnonzero(mine))]),
        }
    step_event = np.array([regions.event_ns[(regions.step_id == s) & top].sum() for s in steps], dtype=np.int64)
    step_busy = np.array([busy[(regions.step_id == s) & top].sum() for s in steps], dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(step_event > 0, (step_event - step_busy) / step_event, np.nan)
    outside = (owner == -2) & span
    return {
        "source": source,
        "steps": steps.tolist(),
        "regions": per_region,
        "per_step": {"event_ms": _ms(step_event), "busy_ms": _ms(step_busy),
                     "difference_ms": _ms(step_event - step_busy), "relative_difference": summarize(relative),
                     "values": [{"step_id": int(s), "event_ms": float(e) / 1e6, "busy_ms": float(b) / 1e6}
                                for s, e, b in zip(steps, step_event, step_busy)]},
        "outside": {"kernels": int(outside.sum()),
                    "busy_ms": union_length_ns(k_start[outside], k_end[outside]) / 1e6,
                    "top_kernels": _top_names(names[outside])},
        "straddling": int(((owner == -1) & span).sum()),
        "kernels_in_span": int(span.sum()),
        "launch_to_start": launch_to_start_ns(profile) if source == "gpu" else None,
    }


def launch_to_start_ns(profile: pa.Table) -> dict[str, Any]:
    """Return, over kernels whose launch call is in the profile (same correlation id), the kernel's start
    minus its launch's start (ns): count, how many are negative (a clock misalignment), min and P50."""
    rows = profile.select(["kind", "start_ns", "correlation_id"]).to_pydict()
    launch = {c: s for k, s, c in zip(rows["kind"], rows["start_ns"], rows["correlation_id"])
              if k == ProfileEvent.LAUNCH}
    lead = np.array([s - launch[c] for k, s, c in zip(rows["kind"], rows["start_ns"], rows["correlation_id"])
                     if k in ProfileEvent.DEVICE_WORK and c in launch], dtype=np.int64)
    if lead.size == 0:
        return {"count": 0, "negative": 0, "min_ns": None, "p50_ns": None}
    return {"count": int(lead.size), "negative": int((lead < 0).sum()), "min_ns": int(lead.min()),
            "p50_ns": float(np.percentile(lead, 50))}


def _ms(values_ns: np.ndarray) -> dict[str, Any]:
    s = summarize(np.asarray(values_ns, dtype=np.float64) / 1e6)
    return {"count": s["count"], "p50": s["p50"], "p99": s["p99"], "total": float(np.sum(values_ns)) / 1e6}


def _top_names(names: np.ndarray, n: int = 5) -> list[list]:
    values, counts = np.unique(names.astype(str), return_counts=True) if names.size else ([], [])
    order = np.argsort(-np.asarray(counts), kind="stable")[:n]
    return [[str(values[i]), int(counts[i])] for i in order]
