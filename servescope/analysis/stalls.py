"""Generation stalls: long per-token gaps, each attributed to what the engine did meanwhile.

A stall is a per-token gap ``g_i = t_i - t_{i-1}`` (i >= 1) above a threshold: an absolute one
(``threshold_s``), ``median_multiple`` x the request's median gap between emission steps, or
the larger of the two when both are given. Under the per-token convention the tokens after the
first of a burst have gap 0, so a stall always ends at the first token of an emission row: the
search runs over emission rows ("chunks").

Attribution (docs/analysis.md gives the rule with its reasons). The engine steps "in" a stall
are those of the request's EngineCore with ``s_prev < step_id <= s_cur``, where ``s_prev`` emitted
token i-1 and ``s_cur`` emitted token i: the steps that completed between the two emissions,
the emitting one included. Step ids, not times, delimit the window, because under async
scheduling step k+1 is scheduled before step k's tokens are emitted. From those steps:

* ``preemptions``: the request's ``preempted`` events with ``s_prev < step_id <= s_cur`` (by
  time, ``t_prev < time <= t_cur``, when the event has no step id);
* ``gpu_busy_s``: the sum of the steps' GPU time (``step_gpu_time_ns``, from worker_regions CUDA
  events) or, for a step without GPU times, its host wait for the model output;
* ``exposed_host_s = max(gap - gpu_busy_s, 0)``: time in the gap with the GPU idle;
* ``prefill_tokens``: prompt tokens computed by the steps (co-scheduled prefills);
* ``draft_tokens``/``accepted_tokens``: the request's speculative tokens verified and accepted
  in the emitting step.

The cause is the first that holds: ``preemption`` (preemptions > 0), ``cpu_overhead``
(exposed_host_s >= cpu_share_threshold x gap), ``prefill_interference`` (prefill_tokens >=
min_prefill_tokens), ``rejected_draft`` (draft_tokens > accepted_tokens), else ``long_forward``;
but a gap with no engine step recorded in it (a client-only run: servescope's client saw the gap
from outside) is ``unattributed`` unless the request's preemption was recorded: without steps,
zero GPU time means "not observed", not "the GPU was idle".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.run.columns import int_column
from servescope.run.names import RequestEvent

try:  # numba takes per-request medians 10x faster than one global sort; numpy is the fallback
    import numba as _numba
except Exception:  # pragma: no cover - exercised only where numba is missing
    _numba = None

# "unattributed": no engine step is recorded in the gap (a client-only run): the cause is not observable.
CAUSES = ("preemption", "cpu_overhead", "prefill_interference", "rejected_draft", "long_forward", "unattributed")


# --------------------------------------------------------------------------- GPU time per step


def step_gpu_time_ns(worker_regions: pa.Table | None, engine_of_null: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (engine_index, step_id, GPU time in ns) per engine step, sorted by (engine, step): top-level timed
    regions summed per rank, the slowest rank of each pipeline stage, the stages added up.

    Only regions with a GPU time count. A region whose host interval lies inside another region
    of the same step and rank (``forward`` inside ``execute_model``) is not added again. A row
    without engine_index belongs to engine engine_of_null, one without pp_rank to stage 0.
    """
    empty = np.zeros(0, dtype=np.int64)
    if worker_regions is None or worker_regions.num_rows == 0:
        return empty, empty, np.zeros(0)
    # regions outside a step (vLLM's warm-up, dummy batches) carry no step_id
    timed = worker_regions.filter(pc.and_(pc.is_valid(worker_regions["gpu_ns"]), pc.is_valid(worker_regions["step_id"])))
    if timed.num_rows == 0:
        return empty, empty, np.zeros(0)
    engine = int_column(timed, "engine_index", engine_of_null)
    step = timed["step_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    stage = int_column(timed, "pp_rank")
    rank = int_column(timed, "rank")
    start = int_column(timed, "host_start_ns")
    end = np.maximum(int_column(timed, "host_end_ns"), start)
    gpu = timed["gpu_ns"].to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.lexsort((-end, start, rank, stage, step, engine))  # by step, stage, rank, start; enclosing first
    engine, step, stage, rank = engine[order], step[order], stage[order], rank[order]
    start, end, gpu = start[order], end[order], gpu[order]

    def firsts(*keys: np.ndarray) -> np.ndarray:
        new = np.zeros(keys[0].size, dtype=bool)
        new[:1] = True
        for key in keys:
            new[1:] |= key[1:] != key[:-1]
        return new

    new_rank = firsts(engine, step, stage, rank)
    group = np.cumsum(new_rank) - 1
    nested = _contained_in_earlier(group, start, end)
    per_rank = np.bincount(group, weights=np.where(nested, 0.0, gpu))
    r_engine, r_step, r_stage = engine[new_rank], step[new_rank], stage[new_rank]
    new_stage = firsts(r_engine, r_step, r_stage)
    per_stage = np.maximum.reduceat(per_rank, np.flatnonzero(new_stage))
    s_engine, s_step = r_engine[new_stage], r_step[new_stage]
    new_step = firsts(s_engine, s_step)
    return s_engine[new_step], s_step[new_step], np.add.reduceat(per_stage, np.flatnonzero(new_step))


def _contained_in_earlier(group: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per row (sorted by group, start): whether an earlier row of its group ends at or after it."""
    if group.size == 0:
        return np.zeros(0, dtype=bool)
    first = np.ones(group.size, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    base = start[first][group]
    rel_end = end - base
    span = int(rel_end.max()) + 1
    if (int(group[-1]) + 1) * span < 2**62:
        key = group * span + rel_end  # one running max serves all groups: keys increase by group
        prev = np.empty_like(key)
        prev[0] = -1
        prev[1:] = np.maximum.accumulate(key)[:-1]
        return prev >= key
    nested = np.zeros(group.size, dtype=bool)  # pragma: no cover - steps spanning centuries of ns
    running = -1
    for k in range(group.size):
        running = -1 if first[k] else running
        nested[k] = running >= end[k]
        running = max(running, end[k])
    return nested


# --------------------------------------------------------------------------- steps as arrays


@dataclass(slots=True)
class StepArrays:
    """Engine steps sorted by (engine_index, step_id), with per-step host and GPU times (ns)."""

    step_id: np.ndarray
    engine_index: np.ndarray
    update_end_ns: np.ndarray
    schedule_start_ns: np.ndarray
    wait_ns: np.ndarray  # host blocked on the model output
    prefill_tokens: np.ndarray
    gpu_ns: np.ndarray  # float; NaN where no GPU time was measured
    engine_bounds: dict[int, tuple[int, int]]  # engine -> [lo, hi) rows

    @property
    def gpu_or_wait_ns(self) -> np.ndarray:
        """Return the per-step GPU busy time in ns: measured GPU time, else host wait time."""
        return np.where(np.isnan(self.gpu_ns), self.wait_ns.astype(np.float64), self.gpu_ns)


def _engine_step_keys(engine: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Return one sortable int64 per (engine, step) (engine >= 0, step < 2**40), ordered like (engine, step)."""
    return np.asarray(engine, dtype=np.int64) * (1 << 40) + np.asarray(step, dtype=np.int64)


def values_at_steps(engine: np.ndarray, step: np.ndarray, values: np.ndarray, wanted_engine: np.ndarray,
                    wanted_step: np.ndarray) -> np.ndarray:
    """Return values (one per (engine, step), any order) at each wanted (engine, step), NaN where there is none."""
    out = np.full(np.size(wanted_step), math.nan)
    if np.size(step) == 0:
        return out
    keys = _engine_step_keys(engine, step)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], np.asarray(values, dtype=np.float64)[order]
    wanted = _engine_step_keys(wanted_engine, wanted_step)
    pos = np.clip(np.searchsorted(keys, wanted), 0, keys.size - 1)
    found = keys[pos] == wanted
    out[found] = values[pos[found]]
    return out


def step_arrays(steps: pa.Table, worker_regions: pa.Table | None = None) -> StepArrays:
    """Return the steps table as sorted numpy arrays, joined with per-step GPU time from worker_regions."""
    step_id = int_column(steps, "step_id")
    engine = int_column(steps, "engine_index")
    order = np.lexsort((step_id, engine))
    step_id, engine = step_id[order], engine[order]
    wait = np.maximum(int_column(steps, "wait_end_ns") - int_column(steps, "wait_start_ns"), 0)[order]
    engines = np.unique(engine)
    # keyed by (engine, step); regions without an engine index (runs before servescope 0.2) join only a single engine
    gpu_engine, gpu_steps, gpu_ns = step_gpu_time_ns(worker_regions, int(engines[0]) if engines.size == 1 else -1)
    known = gpu_engine >= 0
    gpu = values_at_steps(gpu_engine[known], gpu_steps[known], gpu_ns[known], engine, step_id)
    bounds = {}
    for e in engines:
        lo, hi = np.searchsorted(engine, e, "left"), np.searchsorted(engine, e, "right")
        bounds[int(e)] = (int(lo), int(hi))
    return StepArrays(
        step_id=step_id,
        engine_index=engine,
        update_end_ns=int_column(steps, "update_end_ns")[order],
        schedule_start_ns=int_column(steps, "schedule_start_ns")[order],
        wait_ns=wait,
        prefill_tokens=int_column(steps, "num_prefill_tokens")[order],
        gpu_ns=gpu,
        engine_bounds=bounds,
    )


# --------------------------------------------------------------------------- detection


def _medians_python(values, offsets, out):  # pragma: no cover - compiled
    """Fill out[r] with the median of values[offsets[r]:offsets[r+1]] for non-empty segments."""
    for r in range(offsets.size - 1):
        if offsets[r + 1] > offsets[r]:
            out[r] = np.median(values[offsets[r] : offsets[r + 1]])


_medians_compiled = None
if _numba is not None:
    try:
        _medians_compiled = _numba.njit(cache=True, nogil=True)(_medians_python)
    except Exception:  # no writable cache location: compile without caching
        _medians_compiled = _numba.njit(nogil=True)(_medians_python)


def segment_medians(values: np.ndarray, offsets: np.ndarray, *, use_numba: bool | None = None) -> np.ndarray:
    """Return the median of each CSR segment of non-negative int64 values (NaN for empty segments)."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    n = offs.size - 1
    if use_numba is None:
        use_numba = _medians_compiled is not None
    if use_numba:
        out = np.full(n, math.nan)
        _medians_compiled(v.astype(np.float64), offs, out)
        return out
    counts = np.diff(offs)
    seg = np.repeat(np.arange(n, dtype=np.int64), counts)
    bits = 40
    if n < 2 ** (62 - bits):
        clipped = np.minimum(np.maximum(v, 0), 2**bits - 1)
        ordered = np.sort((seg << bits) | clipped) & (2**bits - 1)  # one sort, segments stay in place
    else:  # pragma: no cover - more than 4M requests
        ordered = v[np.lexsort((v, seg))]
    out = np.full(n, math.nan)
    has = counts > 0
    lower = offs[:-1][has] + (counts[has] - 1) // 2
    upper = offs[:-1][has] + counts[has] // 2
    out[has] = 0.5 * (ordered[lower].astype(np.float64) + ordered[upper].astype(np.float64))
    return out


def detect_stalls(
    chunk_times_ns: np.ndarray,
    chunk_offsets: np.ndarray,
    *,
    threshold_s: float | None = None,
    median_multiple: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (global emission-row indices that end a stall, the threshold in seconds each exceeded)."""
    if threshold_s is None and median_multiple is None:
        raise ValueError("give threshold_s, median_multiple or both")
    times = np.asarray(chunk_times_ns, dtype=np.int64)
    offs = np.asarray(chunk_offsets, dtype=np.int64)
    if times.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    gap_ns = np.zeros(times.size, dtype=np.int64)
    gap_ns[1:] = np.diff(times)
    is_first = np.zeros(times.size, dtype=bool)
    is_first[offs[:-1][np.diff(offs) > 0]] = True
    request = np.repeat(np.arange(offs.size - 1), np.diff(offs))
    threshold_ns = np.full(offs.size - 1, 0.0 if threshold_s is None else threshold_s * 1e9)
    if median_multiple is not None:
        gap_counts = np.maximum(np.diff(offs) - 1, 0)
        medians = segment_medians(gap_ns[~is_first], np.concatenate([[0], np.cumsum(gap_counts)]))
        threshold_ns = np.fmax(threshold_ns, median_multiple * medians)
    per_row = threshold_ns[request]
    stall = ~is_first & (gap_ns > per_row)
    idx = np.flatnonzero(stall)
    return idx, per_row[idx] / 1e9


# --------------------------------------------------------------------------- attribution


def _events_at_or_before(ev_seg, ev_val, q_seg, q_val) -> np.ndarray:
    """Per query: number of events with ev_seg == q_seg and ev_val <= q_val."""
    ev_order = np.lexsort((ev_val, ev_seg))
    ev_seg, ev_val = ev_seg[ev_order], ev_val[ev_order]
    n_ev = ev_seg.size
    seg = np.concatenate([ev_seg, q_seg])
    val = np.concatenate([ev_val, q_val])
    is_query = np.concatenate([np.zeros(n_ev, dtype=np.int8), np.ones(q_seg.size, dtype=np.int8)])
    order = np.lexsort((is_query, val, seg))  # events before a query of equal (seg, val)
    events_before = np.cumsum(is_query[order] == 0)
    counts = np.empty(q_seg.size, dtype=np.int64)
    pos = np.flatnonzero(is_query[order] == 1)
    counts[order[pos] - n_ev] = events_before[pos]
    return counts - np.searchsorted(ev_seg, q_seg, side="left")


def count_events_in_windows(ev_seg, ev_val, q_seg, q_lo, q_hi) -> np.ndarray:
    """Return per query the number of events of its segment with q_lo < value <= q_hi."""
    ev_seg, ev_val = np.asarray(ev_seg, dtype=np.int64), np.asarray(ev_val, dtype=np.int64)
    q_seg = np.asarray(q_seg, dtype=np.int64)
    if ev_seg.size == 0 or q_seg.size == 0:
        return np.zeros(q_seg.size, dtype=np.int64)
    return _events_at_or_before(ev_seg, ev_val, q_seg, np.asarray(q_hi, dtype=np.int64)) - _events_at_or_before(
        ev_seg, ev_val, q_seg, np.asarray(q_lo, dtype=np.int64)
    )


@dataclass(slots=True)
class Stalls:
    """One row per stall: where it is, how long, its cause and the evidence behind it."""

    request_index: np.ndarray
    request_id: np.ndarray
    token_index: np.ndarray  # index of the output token that arrived late (>= 1)
    start_ns: np.ndarray  # t_{i-1}
    end_ns: np.ndarray  # t_i
    gap_s: np.ndarray
    threshold_s: np.ndarray
    cause: np.ndarray  # str, one of CAUSES
    num_steps: np.ndarray  # steps in the window
    prefill_tokens: np.ndarray
    preemptions: np.ndarray
    gpu_busy_s: np.ndarray
    exposed_host_s: np.ndarray
    max_step_gpu_s: np.ndarray
    draft_tokens: np.ndarray
    accepted_tokens: np.ndarray
    gpu_time_source: np.ndarray  # "gpu_events" | "host_wait" | "mixed" | "none"

    def __len__(self) -> int:
        return int(self.gap_s.size)

    def to_table(self) -> pa.Table:
        """Return the stalls as an Arrow table with an `evidence` text column."""
        cols = {f.name: pa.array(getattr(self, f.name)) for f in fields(self)}
        table = pa.table(cols)
        return table.append_column("evidence", _evidence_text(table))

    def time_by_cause(self) -> dict[str, dict[str, float]]:
        """Return per cause: count, total stall time (s) and share of all stall time."""
        total = float(self.gap_s.sum())
        out = {}
        for cause in CAUSES:
            sel = self.cause == cause
            t = float(self.gap_s[sel].sum())
            out[cause] = {"count": int(sel.sum()), "time_s": t, "share": t / total if total > 0 else 0.0}
        return out


def _evidence_text(table: pa.Table) -> pa.Array:
    def s(name, digits=None):
        col = table[name]
        if digits is not None:
            col = pc.round(pc.multiply(col, 1000.0), digits)
        return pc.cast(col, pa.string())

    join = pc.binary_join_element_wise
    return join(
        "gap ",
        s("gap_s", 1),
        " ms over ",
        s("num_steps"),
        " steps: ",
        s("prefill_tokens"),
        " prefill tokens, ",
        s("preemptions"),
        " preemptions, GPU busy ",
        s("gpu_busy_s", 1),
        " ms, GPU idle ",
        s("exposed_host_s", 1),
        " ms (",
        table["gpu_time_source"],
        "), longest step ",
        s("max_step_gpu_s", 1),
        " ms, drafts ",
        s("accepted_tokens"),
        "/",
        s("draft_tokens"),
        " accepted",
        "",
    ).combine_chunks()


def _range_sum(prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return prefix[hi] - prefix[lo]


def range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return max(values[lo:hi]) per query (0 for an empty range), by a sparse table up to the longest range."""
    v = np.asarray(values, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.int64)
    length = np.asarray(hi, dtype=np.int64) - lo
    out = np.zeros(lo.size)
    nonempty = length > 0
    if not nonempty.any():
        return out
    level = np.zeros(lo.size, dtype=np.int64)
    level[nonempty] = np.floor(np.log2(length[nonempty])).astype(np.int64)
    table = v  # table at level k: max of values[i : i + 2**k]
    for k in range(int(level.max()) + 1):
        if k:
            half = 1 << (k - 1)
            table = np.maximum(table[:-half], table[half:])
        sel = nonempty & (level == k)
        if sel.any():
            out[sel] = np.maximum(table[lo[sel]], table[lo[sel] + length[sel] - (1 << k)])
    return out


def attribute_stalls(
    *,
    request_index: np.ndarray,
    gap_s: np.ndarray,
    prev_step: np.ndarray,
    cur_step: np.ndarray,
    prev_time_ns: np.ndarray,
    cur_time_ns: np.ndarray,
    engine: np.ndarray,
    steps: StepArrays,
    preempt_request: np.ndarray,
    preempt_step: np.ndarray,
    preempt_time_ns: np.ndarray,
    draft_tokens: np.ndarray,
    accepted_tokens: np.ndarray,
    cpu_share_threshold: float = 0.5,
    min_prefill_tokens: int = 1,
) -> dict[str, np.ndarray]:
    """Return per-stall evidence arrays and `cause` (str) from step windows (s_prev, s_cur]."""
    n = gap_s.size
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    for e, (e_lo, e_hi) in steps.engine_bounds.items():
        sel = engine == e
        ids = steps.step_id[e_lo:e_hi]
        lo[sel] = e_lo + np.searchsorted(ids, prev_step[sel], side="right")
        hi[sel] = e_lo + np.searchsorted(ids, cur_step[sel], side="right")
    hi = np.maximum(hi, lo)
    busy = steps.gpu_or_wait_ns
    measured = ~np.isnan(steps.gpu_ns)
    zero = np.zeros(1)
    num_steps = hi - lo
    prefill = _range_sum(np.concatenate([[0], np.cumsum(steps.prefill_tokens)]), lo, hi)
    gpu_busy_s = _range_sum(np.concatenate([zero, np.cumsum(busy)]), lo, hi) / 1e9
    n_measured = _range_sum(np.concatenate([[0], np.cumsum(measured)]), lo, hi)
    max_step_s = range_max(busy, lo, hi) / 1e9
    gpu_busy_s = np.minimum(gpu_busy_s, gap_s)
    exposed = np.maximum(gap_s - gpu_busy_s, 0.0)

    # preemptions of the request inside the window: by step id, or by time where the event has none
    has_step = preempt_step >= 0
    preemptions = count_events_in_windows(
        preempt_request[has_step], preempt_step[has_step], request_index, prev_step, cur_step
    ) + count_events_in_windows(
        preempt_request[~has_step], preempt_time_ns[~has_step], request_index, prev_time_ns, cur_time_ns
    )

    source = np.where(
        num_steps == 0,
        "none",
        np.where(n_measured == num_steps, "gpu_events", np.where(n_measured == 0, "host_wait", "mixed")),
    )
    cause = np.full(n, "long_forward", dtype=object)
    rejected = draft_tokens > accepted_tokens
    # assign in reverse priority so the first rule that holds wins
    cause[rejected] = "rejected_draft"
    cause[prefill >= min_prefill_tokens] = "prefill_interference"
    cause[exposed >= cpu_share_threshold * gap_s] = "cpu_overhead"
    cause[num_steps == 0] = "unattributed"  # nothing recorded in the gap: no GPU time is not an idle GPU
    cause[preemptions > 0] = "preemption"
    return {
        "cause": cause.astype(str),
        "num_steps": num_steps,
        "prefill_tokens": prefill.astype(np.int64),
        "preemptions": preemptions.astype(np.int64),
        "gpu_busy_s": gpu_busy_s,
        "exposed_host_s": exposed,
        "max_step_gpu_s": max_step_s,
        "gpu_time_source": source.astype(str),
    }


# --------------------------------------------------------------------------- over a run


def _request_positions(ids: pa.Array | pa.ChunkedArray, request_ids: np.ndarray) -> np.ndarray:
    """Return the index of each id in request_ids (-1 where absent)."""
    pos = pc.index_in(ids, value_set=pa.array(request_ids.astype(str)))
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _engine_of(chunk_step: np.ndarray, chunk_time: np.ndarray, steps: StepArrays) -> np.ndarray:
    """Return the EngineCore whose step of that id ended closest to the emission time."""
    engines = list(steps.engine_bounds)
    if len(engines) <= 1:
        return np.full(chunk_step.size, engines[0] if engines else 0, dtype=np.int64)
    best = np.full(chunk_step.size, np.inf)
    out = np.full(chunk_step.size, engines[0], dtype=np.int64)
    for e, (lo, hi) in steps.engine_bounds.items():
        ids = steps.step_id[lo:hi]
        if ids.size == 0:
            continue
        pos = np.clip(np.searchsorted(ids, chunk_step), 0, ids.size - 1)
        dist = np.where(ids[pos] == chunk_step, np.abs(steps.update_end_ns[lo:hi][pos] - chunk_time), np.inf)
        better = dist < best
        best[better] = dist[better]
        out[better] = e
    return out


def find_stalls(
    metrics: Any,
    run: Any,
    *,
    threshold_s: float | None = None,
    median_multiple: float | None = None,
    cpu_share_threshold: float = 0.5,
    min_prefill_tokens: int = 1,
) -> Stalls:
    """Return the stalls of a run (RequestMetrics + RunData tables), each with its cause and evidence."""
    chunk_times = np.asarray(metrics.chunk_times_ns, dtype=np.int64)
    chunk_offsets = np.asarray(metrics.chunk_offsets, dtype=np.int64)
    chunk_steps = np.asarray(metrics.chunk_step_ids, dtype=np.int64)
    chunk_tokens = np.asarray(metrics.chunk_num_tokens, dtype=np.int64)
    request_ids = np.asarray(metrics.request_id)
    rows, thresholds = detect_stalls(
        chunk_times, chunk_offsets, threshold_s=threshold_s, median_multiple=median_multiple
    )
    request = np.searchsorted(chunk_offsets, rows, side="right") - 1
    first_token = np.cumsum(chunk_tokens) - chunk_tokens  # global index of each row's first token
    token_index = first_token[rows] - first_token[chunk_offsets[request]]
    steps = step_arrays(run.steps, getattr(run, "worker_regions", None))
    engine = _engine_of(chunk_steps[rows], chunk_times[rows], steps)

    events = run.request_events
    preempted = events.filter(pc.equal(events["event"], RequestEvent.PREEMPTED)) if events.num_rows else events
    p_req = _request_positions(preempted["request_id"], request_ids)
    p_step = int_column(preempted, "step_id", fill=-1)
    p_time = int_column(preempted, "time_ns")

    drafts = np.zeros(rows.size, dtype=np.int64)
    accepted = np.zeros(rows.size, dtype=np.int64)
    emissions = run.token_emissions
    if rows.size and emissions.num_rows:
        stall_steps = np.unique(chunk_steps[rows])
        near = emissions.filter(pc.is_in(emissions["step_id"], value_set=pa.array(stall_steps)))
        e_req = _request_positions(near["request_id"], request_ids)
        e_step = int_column(near, "step_id")
        width = int(max(e_step.max(initial=0), chunk_steps.max(initial=0))) + 1
        e_key = e_req * width + e_step
        order = np.argsort(e_key, kind="stable")
        e_key = e_key[order]
        q_key = request * width + chunk_steps[rows]
        if e_key.size:
            pos = np.clip(np.searchsorted(e_key, q_key), 0, e_key.size - 1)
            found = e_key[pos] == q_key
            drafts[found] = int_column(near, "num_draft_tokens")[order][pos[found]]
            accepted[found] = int_column(near, "num_accepted_tokens")[order][pos[found]]

    gap_s = (chunk_times[rows] - chunk_times[rows - 1]) / 1e9
    evidence = attribute_stalls(
        request_index=request,
        gap_s=gap_s,
        prev_step=chunk_steps[rows - 1],
        cur_step=chunk_steps[rows],
        prev_time_ns=chunk_times[rows - 1],
        cur_time_ns=chunk_times[rows],
        engine=engine,
        steps=steps,
        preempt_request=p_req,
        preempt_step=p_step,
        preempt_time_ns=p_time,
        draft_tokens=drafts,
        accepted_tokens=accepted,
        cpu_share_threshold=cpu_share_threshold,
        min_prefill_tokens=min_prefill_tokens,
    )
    return Stalls(
        request_index=request,
        request_id=request_ids[request].astype(str),
        token_index=token_index,
        start_ns=chunk_times[rows - 1],
        end_ns=chunk_times[rows],
        gap_s=gap_s,
        threshold_s=thresholds,
        draft_tokens=drafts,
        accepted_tokens=accepted,
        **evidence,
    )
