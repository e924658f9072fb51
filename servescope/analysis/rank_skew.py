"""Ranks of a multi-worker run: per engine step the slowest rank, rank skew, communication time and pipeline bubbles.

A *step group* is one engine step (engine_index, step_id) on one pipeline stage (pp_rank): the ranks of a
tensor-parallel group, which run the same step in lock step (every layer ends in an all-reduce). Per rank of a
group, its *span* is [first region start, last region end] over its regions of the step, on one clock for the
whole group: the GPU clock (globaltimer stamps mapped onto CLOCK_MONOTONIC: gpu_start_ns / gpu_end_ns) when every
rank of the group has stamped regions, else the host clock (host_start_ns / host_end_ns). Then, per group:

- ``slowest_rank``: the rank whose span ends last (the lowest rank on a tie);
- ``skew``: latest span end minus earliest span end (slowest minus fastest rank);
- ``start_skew``: latest span start minus earliest (how much later one rank began the step: the broadcast of
  the step to the workers, or a rank still busy with the previous step);
- ``communication``: per rank the summed time of its ``collective`` regions (CUDA-event time, else host time),
  and over the group its minimum: a collective ends on every rank together, so the rank that arrived last
  waited least, and its collective time is the transfer itself; ``collective_wait`` = maximum minus minimum,
  the time the first-arriving rank spent inside collectives waiting for the others. NaN where a rank of the
  group has no collective region (the part ``collectives`` was off, or the forward ran inside CUDA graphs).

Pipeline parallelism (several pp_rank values in one step): per step and stage boundary s-1 -> s,
``handoff`` = start of stage s minus end of stage s-1 (a stage's start / end: its ranks' earliest start / latest
end); positive: neither stage worked on the step in between (transfer of the activations, dispatch); negative:
stage s had entered the step before its input existed and waited inside its regions. Per stage, ``idle`` before
a step = its start minus the latest end of the stage's earlier steps (0 when they overlap): the pipeline bubble
of that stage. ``busy_share`` per stage = union of its step spans / the span of the whole run.

Rows without a step id (warm-up, dummy batches) are left out; a row without engine_index belongs to engine 0,
one without pp_rank to stage 0 (runs recorded before servescope kept tp_rank / pp_rank: a pipeline-parallel run
of that age reads as one stage). Times in ns in the arrays, s in the summaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.analysis.distributions import summarize
from servescope.analysis.stalls import step_arrays, values_at_steps
from servescope.run.columns import float_column, int_column
from servescope.run.names import Region

MISSING = np.iinfo(np.int64).min


@dataclass(slots=True)
class StepGroups:
    """One row per (engine_index, step_id, pp_rank) group with regions, sorted by that key (times in ns)."""

    engine_index: np.ndarray
    step_id: np.ndarray
    pp_rank: np.ndarray
    ranks: np.ndarray  # ranks with a span on the group's clock
    on_gpu_clock: np.ndarray  # bool: spans from globaltimer stamps (else host clock)
    start_ns: np.ndarray  # earliest span start of the group
    end_ns: np.ndarray  # latest span end
    skew_ns: np.ndarray  # float: latest minus earliest span end; NaN with one rank
    start_skew_ns: np.ndarray  # float: latest minus earliest span start; NaN with one rank
    slowest_rank: np.ndarray  # the rank whose span ends last; -1 with one rank
    communication_ns: np.ndarray  # float: min over ranks of summed collective time; NaN where not measured
    collective_wait_ns: np.ndarray  # float: max minus min over ranks of summed collective time
    collectives: np.ndarray  # collective regions of the group's busiest rank (0: none recorded)

    def __len__(self) -> int:
        return int(self.step_id.size)


def _segments(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For arrays sorted by keys: return (index of each segment's first row, segment number of every row)."""
    change = np.zeros(keys[0].size, dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    return starts, np.cumsum(change) - 1


def step_groups(worker_regions: pa.Table | None) -> StepGroups:
    """Return the step groups of a run's worker_regions: spans per rank reduced to skew, slowest rank, communication."""
    if worker_regions is None or "step_id" not in worker_regions.column_names:
        worker_regions = pa.table({"step_id": pa.array([], pa.int64())})
    rows = worker_regions.filter(pc.is_valid(worker_regions["step_id"]))
    engine, step = int_column(rows, "engine_index", 0), int_column(rows, "step_id", 0)
    pp, rank = int_column(rows, "pp_rank", 0), int_column(rows, "rank", 0)
    host_start, host_end = int_column(rows, "host_start_ns", MISSING), int_column(rows, "host_end_ns", MISSING)
    gpu_start, gpu_end = int_column(rows, "gpu_start_ns", MISSING), int_column(rows, "gpu_end_ns", MISSING)
    gpu_ns = float_column(rows, "gpu_ns")
    collective = (np.asarray(pc.equal(pc.fill_null(rows["region"], ""), Region.COLLECTIVE).to_numpy(
        zero_copy_only=False), dtype=bool) if "region" in rows.column_names else np.zeros(rows.num_rows, dtype=bool))
    order = np.lexsort((rank, pp, step, engine))
    engine, step, pp, rank = engine[order], step[order], pp[order], rank[order]
    host_start, host_end, gpu_start, gpu_end = host_start[order], host_end[order], gpu_start[order], gpu_end[order]
    gpu_ns, collective = gpu_ns[order], collective[order]

    # ---- per (group, rank): spans on both clocks, collective time
    unit_first, unit = _segments(engine, step, pp, rank)
    units = unit_first.size
    host_ok = (host_start != MISSING) & (host_end != MISSING)
    gpu_ok = (gpu_start != MISSING) & (gpu_end != MISSING)
    big = np.iinfo(np.int64).max

    def reduce(values, ok, ufunc, fill):
        out = np.full(units, fill, dtype=np.int64)
        ufunc.at(out, unit[ok], values[ok])
        return out

    u_host_start = reduce(host_start, host_ok, np.minimum, big)
    u_host_end = reduce(host_end, host_ok, np.maximum, MISSING)
    u_gpu_start = reduce(gpu_start, gpu_ok, np.minimum, big)
    u_gpu_end = reduce(gpu_end, gpu_ok, np.maximum, MISSING)
    u_has_host = np.bincount(unit[host_ok], minlength=units) > 0
    u_has_gpu = np.bincount(unit[gpu_ok], minlength=units) > 0
    duration = np.where(np.isnan(gpu_ns), np.where(host_ok, host_end - host_start, np.nan), gpu_ns)
    measured = collective & ~np.isnan(duration)
    u_comm = np.bincount(unit[measured], weights=duration[measured], minlength=units)
    u_count = np.bincount(unit[collective], minlength=units)

    # ---- per group: one clock, reductions over the group's ranks
    u_engine, u_step, u_pp, u_rank = engine[unit_first], step[unit_first], pp[unit_first], rank[unit_first]
    group_first, u_group = _segments(u_engine, u_step, u_pp)
    groups = group_first.size
    all_gpu = np.bincount(u_group, weights=~u_has_gpu, minlength=groups) == 0
    on_gpu = all_gpu[u_group]
    u_start = np.where(on_gpu, u_gpu_start, u_host_start)
    u_end = np.where(on_gpu, u_gpu_end, u_host_end)
    u_ok = np.where(on_gpu, u_has_gpu, u_has_host)
    ranks = np.bincount(u_group[u_ok], minlength=groups)

    def group_reduce(values, ufunc, fill):
        out = np.full(groups, fill, dtype=np.int64)
        ufunc.at(out, u_group[u_ok], values[u_ok])
        return out

    end_max, end_min = group_reduce(u_end, np.maximum, MISSING), group_reduce(u_end, np.minimum, big)
    start_min, start_max = group_reduce(u_start, np.minimum, big), group_reduce(u_start, np.maximum, MISSING)
    several = ranks >= 2
    skew = np.where(several, (end_max - end_min).astype(np.float64), np.nan)
    start_skew = np.where(several, (start_max - start_min).astype(np.float64), np.nan)
    # the slowest rank: the first unit (lowest rank) of its group whose end is the group's latest end
    is_last = u_ok & (u_end == end_max[u_group])
    slowest = np.full(groups, -1, dtype=np.int64)
    first_last = np.flatnonzero(is_last)
    keep = np.r_[True, u_group[first_last][1:] != u_group[first_last][:-1]] if first_last.size else first_last
    slowest[u_group[first_last[keep]]] = u_rank[first_last[keep]]
    slowest[~several] = -1
    # communication: only where every rank of the group recorded collectives
    units_per_group = np.bincount(u_group, minlength=groups)
    with_comm = np.bincount(u_group, weights=u_count > 0, minlength=groups)
    comm_min = np.full(groups, np.inf)
    comm_max = np.full(groups, -np.inf)
    np.minimum.at(comm_min, u_group, u_comm)
    np.maximum.at(comm_max, u_group, u_comm)
    complete = (with_comm == units_per_group) & (units_per_group > 0)
    collectives = np.zeros(groups, dtype=np.int64)
    np.maximum.at(collectives, u_group, u_count)
    return StepGroups(
        engine_index=u_engine[group_first], step_id=u_step[group_first], pp_rank=u_pp[group_first], ranks=ranks,
        on_gpu_clock=all_gpu, start_ns=np.where(ranks > 0, start_min, MISSING),
        end_ns=np.where(ranks > 0, end_max, MISSING), skew_ns=skew, start_skew_ns=start_skew, slowest_rank=slowest,
        communication_ns=np.where(complete, comm_min, np.nan),
        collective_wait_ns=np.where(complete & (units_per_group >= 2), comm_max - comm_min, np.nan),
        collectives=collectives)


def step_communication_ns(groups: StepGroups, engine_index: np.ndarray, step_id: np.ndarray) -> np.ndarray:
    """Return per (engine_index, step_id) given, the communication time (ns) summed over the step's pipeline
    stages: 0 for a step every stage of which ran on one rank (nothing to communicate), NaN where not measured."""
    if len(groups) == 0:
        return np.full(np.size(step_id), np.nan)
    single = groups.ranks <= 1
    per_group = np.where(single & np.isnan(groups.communication_ns), 0.0, groups.communication_ns)
    first, _ = _segments(groups.engine_index, groups.step_id)
    totals = np.add.reduceat(per_group, first)  # NaN if any stage is unmeasured
    return values_at_steps(groups.engine_index[first], groups.step_id[first], totals, engine_index, step_id)


def pipeline_summary(groups: StepGroups) -> dict[str, Any] | None:
    """Return handoffs between consecutive stages per step, each stage's idle time before its steps and its busy
    share (s; see the module's docstring), or None when no step ran on more than one pipeline stage."""
    ok = groups.ranks > 0
    stages = np.unique(groups.pp_rank[ok])
    if stages.size < 2:
        return None
    engine, step, pp = groups.engine_index[ok], groups.step_id[ok], groups.pp_rank[ok]
    start, end = groups.start_ns[ok], groups.end_ns[ok]
    # handoffs: consecutive rows of one (engine, step) are its stages in order (the groups are sorted)
    same_step = (engine[1:] == engine[:-1]) & (step[1:] == step[:-1])
    handoff_s = (start[1:] - end[:-1])[same_step] / 1e9
    boundary = pp[1:][same_step]
    handoffs = {f"{int(s) - 1}->{int(s)}": summarize(handoff_s[boundary == s]) for s in np.unique(boundary)}
    idle, busy_share = {}, {}
    span = max(int(end.max()) - int(start.min()), 1)
    for stage in stages:
        mine = np.flatnonzero(pp == stage)
        order = mine[np.lexsort((end[mine], start[mine], engine[mine]))]
        s, e, eng = start[order], end[order], engine[order]
        previous_end = np.maximum.accumulate(e)
        first_of_engine = np.r_[True, eng[1:] != eng[:-1]]
        gaps = np.where(first_of_engine[1:], np.nan, np.maximum(s[1:] - previous_end[:-1], 0) / 1e9)
        idle[str(int(stage))] = summarize(gaps)
        busy_share[str(int(stage))] = _union_ns(s, e) / span
    return {"stages": int(stages.size), "steps": int(np.unique(np.c_[engine, step], axis=0).shape[0]),
            "handoff_s": handoffs, "stage_idle_s": idle, "stage_busy_share": busy_share}


def _union_ns(start: np.ndarray, end: np.ndarray) -> int:
    """Return the length of the union of intervals [start, end) sorted by start."""
    if start.size == 0:
        return 0
    reach = np.maximum.accumulate(end)
    gaps = np.maximum(start[1:] - reach[:-1], 0)
    return int(reach[-1] - start[0] - gaps.sum())


def rank_placement(worker_regions: pa.Table | None) -> list[dict[str, int | None]]:
    """Return every (engine_index, rank) of the run with its tp_rank and pp_rank (None where not recorded)."""
    if worker_regions is None or worker_regions.num_rows == 0:
        return []
    cols = [c for c in ("engine_index", "rank", "tp_rank", "pp_rank") if c in worker_regions.column_names]
    seen: dict[tuple, dict] = {}
    for row in worker_regions.select(cols).group_by(cols).aggregate([]).to_pylist():
        key = (row.get("engine_index"), row.get("rank"))
        entry = seen.setdefault(key, {"engine_index": key[0], "rank": key[1], "tp_rank": None, "pp_rank": None})
        for name in ("tp_rank", "pp_rank"):
            if row.get(name) is not None:
                entry[name] = row[name]
    return sorted(seen.values(), key=lambda r: (r["engine_index"] if r["engine_index"] is not None else -1,
                                                r["rank"] if r["rank"] is not None else -1))


def rank_summary(run: Any) -> dict[str, Any] | None:
    """Return analyze --json's "ranks" block (times in s) for a run with more than one worker rank, else None.

    Keys: placement (engine_index, rank, tp_rank, pp_rank per rank), groups (step groups with two ranks or more),
    clock (of their spans: gpu, host or mixed), skew_s, start_skew_s, slowest_rank (rank -> steps it was slowest
    in), communication (collective time per step, its wait part, collectives per step, share of the step's GPU
    time) and, with pipeline parallelism, pipeline (pipeline_summary).
    """
    regions = getattr(run, "worker_regions", None)
    placement = rank_placement(regions)
    if len(placement) < 2:
        return None
    groups = step_groups(regions)
    several = groups.ranks >= 2
    clocks = set(np.where(groups.on_gpu_clock[several], "gpu", "host").tolist())
    ranks, counts = np.unique(groups.slowest_rank[several], return_counts=True)
    out: dict[str, Any] = {
        "placement": placement,
        "groups": int(several.sum()),
        "clock": clocks.pop() if len(clocks) == 1 else ("mixed" if clocks else None),
        "skew_s": summarize(groups.skew_ns[several] / 1e9),
        "start_skew_s": summarize(groups.start_skew_ns[several] / 1e9),
        "slowest_rank": {str(int(r)): int(c) for r, c in zip(ranks, counts)},
        "communication": _communication(run, groups, several),
    }
    pipeline = pipeline_summary(groups)
    if pipeline is not None:
        out["pipeline"] = pipeline
    return out


def _communication(run: Any, groups: StepGroups, several: np.ndarray) -> dict[str, Any]:
    measured = several & ~np.isnan(groups.communication_ns)
    out: dict[str, Any] = {"measured_groups": int(measured.sum()),
                           "communication_s": summarize(groups.communication_ns[measured] / 1e9),
                           "collective_wait_s": summarize(groups.collective_wait_ns[measured] / 1e9),
                           "collectives_per_group": summarize(groups.collectives[measured].astype(np.float64))}
    steps = getattr(run, "steps", None)
    if measured.any() and steps is not None and steps.num_rows:
        arrays = step_arrays(steps, run.worker_regions)
        comm = step_communication_ns(groups, arrays.engine_index, arrays.step_id)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(arrays.gpu_or_wait_ns > 0, comm / arrays.gpu_or_wait_ns, np.nan)
        out["share_of_step_gpu_time"] = summarize(share)
    if not measured.any():
        out["note"] = ("not measured: record with --parts default,collectives (collectives inside CUDA graphs and "
                       "torch.compile'd CPU forwards are not timed: docs/multi-gpu.md)")
    return out
