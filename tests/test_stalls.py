from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from servescope.analysis import stalls as stalls_module
from servescope.analysis.stalls import (
    CAUSES,
    count_events_in_windows,
    detect_stalls,
    find_stalls,
    range_max,
    segment_medians,
    step_gpu_time_ns,
)
from servescope.run.schema import TABLES

MS = 1_000_000
T0 = 10_000 * MS


def _table(name, rows):
    schema = TABLES[name].arrow_schema
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


# Engine steps: (duration ms, prefill tokens, GPU ms, host wait ms). Each step's tokens are
# emitted at its update_end. Steps 3-5 are 300 ms long for three different reasons.
STEP_PLAN = [
    (20, 0, 18, 18),
    (20, 0, 18, 18),
    (20, 0, 18, 18),
    (300, 2048, 290, 290),  # 3: a long prompt co-scheduled
    (300, 0, 290, 290),  # 4: a long forward, no prefill
    (300, 0, 20, 20),  # 5: GPU busy 20 ms of 300: host overhead
    (20, 0, 18, 18),  # 6: A preempted while scheduling this step
    (20, 512, 18, 18),  # 7: A recomputes its prompt
    (20, 0, 18, 18),
    (20, 0, 18, 18),
]


def _steps(engine=0, plan=STEP_PLAN, t0=T0):
    rows, ends, t = [], [], t0
    for k, (dur, prefill, _gpu, wait) in enumerate(plan):
        end = t + dur * MS
        rows.append(
            dict(
                step_id=k,
                engine_index=engine,
                schedule_start_ns=t,
                schedule_end_ns=t + MS,
                execute_start_ns=t + MS,
                execute_end_ns=t + 2 * MS,
                wait_start_ns=end - (wait + 1) * MS,
                wait_end_ns=end - MS,
                update_start_ns=end - MS,
                update_end_ns=end,
                num_prefill_tokens=prefill,
            )
        )
        ends.append(end)
        t = end
    return rows, ends


def _regions(plan=STEP_PLAN):
    rows = []
    for k, (_dur, _p, gpu, _w) in enumerate(plan):
        base = T0 + k * 1000 * MS
        for rank, scale in ((0, 1.0), (1, 0.5)):
            g = gpu * MS * scale
            rows += [
                dict(
                    step_id=k,
                    rank=rank,
                    region="execute_model",
                    host_start_ns=base,
                    host_end_ns=base + 10,
                    gpu_ns=int(0.9 * g),
                ),
                dict(
                    step_id=k,
                    rank=rank,
                    region="forward",
                    host_start_ns=base + 2,
                    host_end_ns=base + 8,
                    gpu_ns=int(0.8 * g),
                ),
                dict(
                    step_id=k,
                    rank=rank,
                    region="sample_tokens",
                    host_start_ns=base + 12,
                    host_end_ns=base + 20,
                    gpu_ns=int(0.1 * g),
                ),
                dict(
                    step_id=k,
                    rank=rank,
                    region="sample",
                    host_start_ns=base + 13,
                    host_end_ns=base + 19,
                    gpu_ns=int(0.05 * g),
                ),
                dict(
                    step_id=k, rank=rank, region="bookkeep", host_start_ns=base + 21, host_end_ns=base + 22, gpu_ns=None
                ),
            ]
    return rows


def _metrics(emissions_by_request):
    """emissions_by_request: {request_id: [(step_id, time_ns, num_tokens), ...]}"""
    ids, times, tokens, steps, offsets = [], [], [], [], [0]
    for rid, rows in emissions_by_request.items():
        ids.append(rid)
        for step, t, k in rows:
            steps.append(step)
            times.append(t)
            tokens.append(k)
        offsets.append(len(times))
    return SimpleNamespace(
        request_id=np.array(ids),
        chunk_times_ns=np.array(times, dtype=np.int64),
        chunk_num_tokens=np.array(tokens, dtype=np.int64),
        chunk_step_ids=np.array(steps, dtype=np.int64),
        chunk_offsets=np.array(offsets, dtype=np.int64),
    )


def _scenario(with_regions=True):
    step_rows, ends = _steps()
    a = [(k, ends[k], 1) for k in (0, 1, 2, 3, 4, 5, 8, 9)]
    b = [(3, ends[3], 2), (4, ends[4], 2), (5, ends[5], 4)]
    metrics = _metrics({"A": a, "B": b})
    emissions = [dict(request_id="A", step_id=k, time_ns=t, num_tokens=n) for k, t, n in a]
    emissions += [
        dict(request_id="B", step_id=3, time_ns=ends[3], num_tokens=2, num_draft_tokens=2, num_accepted_tokens=1),
        dict(request_id="B", step_id=4, time_ns=ends[4], num_tokens=2, num_draft_tokens=3, num_accepted_tokens=1),
        dict(request_id="B", step_id=5, time_ns=ends[5], num_tokens=4, num_draft_tokens=3, num_accepted_tokens=3),
    ]
    events = [
        dict(request_id="A", event="arrival", time_ns=T0 - 5 * MS),
        dict(request_id="A", event="preempted", time_ns=ends[5] + MS, step_id=6),
        dict(request_id="A", event="scheduled", time_ns=ends[6] + MS, step_id=7),
        dict(request_id="B", event="preempted", time_ns=ends[9] + MS, step_id=12),  # after B finished
    ]
    run = SimpleNamespace(
        steps=_table("steps", step_rows),
        token_emissions=_table("token_emissions", emissions),
        request_events=_table("request_events", events),
        worker_regions=_table("worker_regions", _regions()) if with_regions else None,
    )
    return metrics, run


def test_step_gpu_time_counts_top_level_regions_and_the_slowest_rank():
    engines, steps, gpu = step_gpu_time_ns(_table("worker_regions", _regions()))
    assert steps.tolist() == list(range(10)) and engines.tolist() == [0] * 10
    # execute_model (0.9) + sample_tokens (0.1) of rank 0; forward/sample are nested, bookkeep untimed
    expected = [int(0.9 * g * MS) + int(0.1 * g * MS) for _d, _p, g, _w in STEP_PLAN]
    assert gpu.tolist() == expected
    assert step_gpu_time_ns(None)[0].size == 0


def test_each_cause_is_attributed_from_the_step_records():
    metrics, run = _scenario()
    stalls = find_stalls(metrics, run, threshold_s=0.05)
    rows = sorted(zip(stalls.request_id, stalls.token_index, stalls.cause, np.round(stalls.gap_s, 6)))
    assert rows == [
        ("A", 3, "prefill_interference", 0.3),
        ("A", 4, "long_forward", 0.3),
        ("A", 5, "cpu_overhead", 0.3),
        ("A", 6, "preemption", 0.06),  # steps 6-8: preempted, then recomputed (prefill too)
        ("B", 2, "rejected_draft", 0.3),
        ("B", 4, "cpu_overhead", 0.3),
    ]
    a6 = np.flatnonzero((stalls.request_id == "A") & (stalls.token_index == 6))[0]
    assert stalls.num_steps[a6] == 3 and stalls.preemptions[a6] == 1 and stalls.prefill_tokens[a6] == 512
    a3 = np.flatnonzero((stalls.request_id == "A") & (stalls.token_index == 3))[0]
    assert stalls.prefill_tokens[a3] == 2048
    assert stalls.gpu_time_source[a3] == "gpu_events"
    assert stalls.gpu_busy_s[a3] == pytest.approx(0.29, abs=1e-6)
    a5 = np.flatnonzero((stalls.request_id == "A") & (stalls.token_index == 5))[0]
    assert stalls.exposed_host_s[a5] == pytest.approx(0.28, abs=1e-6)
    b2 = np.flatnonzero((stalls.request_id == "B") & (stalls.token_index == 2))[0]
    assert (stalls.draft_tokens[b2], stalls.accepted_tokens[b2]) == (3, 1)
    assert stalls.start_ns[b2] == metrics.chunk_times_ns[0 + 8] and stalls.end_ns[b2] == metrics.chunk_times_ns[9]


def test_host_wait_is_the_gpu_estimate_without_worker_regions():
    metrics, run = _scenario(with_regions=False)
    stalls = find_stalls(metrics, run, threshold_s=0.05)
    assert set(stalls.gpu_time_source) == {"host_wait"}
    causes = dict(zip(zip(stalls.request_id, stalls.token_index), stalls.cause))
    assert causes[("A", 5)] == "cpu_overhead" and causes[("A", 4)] == "long_forward"


def test_time_by_cause_and_table():
    metrics, run = _scenario()
    stalls = find_stalls(metrics, run, threshold_s=0.05)
    by_cause = stalls.time_by_cause()
    assert set(by_cause) == set(CAUSES)
    assert by_cause["cpu_overhead"]["count"] == 2
    assert by_cause["cpu_overhead"]["time_s"] == pytest.approx(0.6)
    assert by_cause["preemption"]["time_s"] == pytest.approx(0.06)
    assert sum(v["share"] for v in by_cause.values()) == pytest.approx(1.0)
    table = stalls.to_table()
    assert table.num_rows == 6
    text = table["evidence"].to_pylist()
    assert any("2048 prefill tokens" in t for t in text)
    assert any("drafts 1/3 accepted" in t for t in text)


def test_higher_threshold_and_cpu_share_change_the_outcome():
    metrics, run = _scenario()
    assert len(find_stalls(metrics, run, threshold_s=0.5)) == 0
    strict = find_stalls(metrics, run, threshold_s=0.05, cpu_share_threshold=0.99)
    causes = dict(zip(zip(strict.request_id, strict.token_index), strict.cause))
    assert causes[("A", 5)] == "long_forward"  # 93% host time is no longer enough


def test_data_parallel_engines_do_not_share_step_windows():
    plan0 = [(20, 0, 18, 18), (300, 4096, 290, 290), (20, 0, 18, 18)]
    plan1 = [(20, 0, 18, 18), (300, 0, 290, 290), (20, 0, 18, 18)]
    rows0, ends0 = _steps(0, plan0)
    rows1, ends1 = _steps(1, plan1, t0=T0 + 3 * MS)
    metrics = _metrics({"x": [(k, ends1[k], 1) for k in range(3)], "y": [(k, ends0[k], 1) for k in range(3)]})
    run = SimpleNamespace(
        steps=_table("steps", rows0 + rows1),
        token_emissions=_table("token_emissions", []),
        request_events=_table("request_events", []),
        worker_regions=None,
    )
    stalls = find_stalls(metrics, run, threshold_s=0.1)
    causes = dict(zip(stalls.request_id, stalls.cause))
    assert causes == {"x": "long_forward", "y": "prefill_interference"}


def test_median_multiple_threshold_is_per_request():
    t = np.cumsum([0, 10, 10, 10, 50, 10]) * MS  # request 0: one 50 ms gap among 10 ms gaps
    u = np.cumsum([0, 60, 60, 60]) * MS  # request 1: steady 60 ms, never a stall relative to itself
    times = np.concatenate([t, u])
    offsets = np.array([0, t.size, t.size + u.size])
    rows, thr = detect_stalls(times, offsets, median_multiple=3.0)
    assert rows.tolist() == [4] and thr.tolist() == [0.03]
    both, _ = detect_stalls(times, offsets, threshold_s=0.055, median_multiple=3.0)
    assert both.tolist() == []  # the 50 ms gap is under the 55 ms absolute floor
    absolute, _ = detect_stalls(times, offsets, threshold_s=0.045)
    assert absolute.tolist() == [4, 7, 8, 9]
    with pytest.raises(ValueError):
        detect_stalls(times, offsets)


def test_segment_medians_match_numpy():
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 9, size=300)
    values = rng.integers(0, 10**9, size=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for use_numba in [True, False] if stalls_module._medians_compiled is not None else [False]:
        got = segment_medians(values, offsets, use_numba=use_numba)
        for r in range(300):
            seg = values[offsets[r] : offsets[r + 1]]
            if seg.size:
                assert got[r] == np.median(seg)
            else:
                assert np.isnan(got[r])


def test_count_events_in_windows_matches_brute_force():
    rng = np.random.default_rng(9)
    ev_seg = rng.integers(0, 20, size=200)
    ev_val = rng.integers(0, 50, size=200)
    q_seg = rng.integers(0, 22, size=500)
    q_lo = rng.integers(0, 50, size=500)
    q_hi = q_lo + rng.integers(0, 10, size=500)
    got = count_events_in_windows(ev_seg, ev_val, q_seg, q_lo, q_hi)
    want = [int(np.sum((ev_seg == s) & (ev_val > lo) & (ev_val <= hi))) for s, lo, hi in zip(q_seg, q_lo, q_hi)]
    assert got.tolist() == want


def test_find_stalls_on_a_written_run_directory(tmp_path):
    from runbuilder import RunBuilder

    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run

    step_rows, ends = _steps()
    builder = RunBuilder(tmp_path)
    for row in step_rows:
        builder.row("steps", **row)
    for row in _regions():
        builder.row("worker_regions", **row)
    builder.request(
        "A",
        arrival_ns=T0 - 5 * MS,
        scheduled_ns=T0,
        prompt_tokens=16,
        emissions=[(k, ends[k], 1) for k in (0, 1, 2, 3, 4, 5, 8, 9)],
        preemptions=[(ends[5] + MS, ends[6] + MS)],  # no step id: located by time
        finished_ns=ends[9],
    )
    builder.request(
        "B",
        arrival_ns=T0,
        scheduled_ns=T0 + MS,
        prompt_tokens=2048,
        emissions=[(3, ends[3], 2, 2, 1), (4, ends[4], 2, 3, 1), (5, ends[5], 4, 3, 3)],
        finished_ns=ends[5],
    )
    run = load_run(builder.write(parts=2))
    metrics = compute_request_metrics(run)
    stalls = find_stalls(metrics, run, threshold_s=0.05)
    assert sorted(zip(stalls.request_id, stalls.token_index, stalls.cause)) == [
        ("A", 3, "prefill_interference"),
        ("A", 4, "long_forward"),
        ("A", 5, "cpu_overhead"),
        ("A", 6, "preemption"),
        ("B", 2, "rejected_draft"),
        ("B", 4, "cpu_overhead"),
    ]


@pytest.mark.engine
def test_stalls_and_fluidity_on_a_real_offline_run(offline_run):
    from servescope.analysis.fluidity import fluidity_for_requests
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run

    run = load_run(offline_run.run_dir)
    metrics = compute_request_metrics(run)
    # The slowest tenth of the run's token gaps, taken as stalls. A fixed multiple of the median is no
    # threshold for this check: the slowest gap was 1.9x its request's median here and under 2x on CI's
    # machine, where 2x found nothing. What is checked is every stall's evidence, and that the run's known
    # cause shows: 16 of its 24 requests are admitted while others decode (max_num_seqs 8), so the steps
    # that carry their prefill chunks are among the slowest.
    offsets = np.asarray(metrics.chunk_offsets)
    times = np.asarray(metrics.chunk_times_ns)
    gaps_s = np.concatenate([np.diff(times[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]) / 1e9
    stalls = find_stalls(metrics, run, threshold_s=float(np.quantile(gaps_s, 0.9)))
    assert 0 < len(stalls) <= 0.1 * gaps_s.size + 1
    assert "prefill_interference" in set(stalls.cause), sorted(set(stalls.cause))
    index = {rid: i for i, rid in enumerate(metrics.request_id)}
    for rid, token, gap, thr, cause, steps in zip(
        stalls.request_id, stalls.token_index, stalls.gap_s, stalls.threshold_s, stalls.cause, stalls.num_steps
    ):
        assert 1 <= token < metrics.output_tokens[index[rid]]
        assert gap > thr > 0
        assert cause in CAUSES and steps >= 1
    assert set(stalls.gpu_time_source) <= {"host_wait", "gpu_events", "mixed"}
    fluid = fluidity_for_requests(metrics, tbt_deadline_s=0.05, ttft_deadline_s=5.0)
    assert np.all((fluid["fluidity_index"] >= 0) & (fluid["fluidity_index"] <= 1))
    assert np.all(fluid["deadlines"] >= metrics.output_tokens)


def test_range_max_matches_brute_force():
    rng = np.random.default_rng(13)
    values = rng.random(1000)
    lo = rng.integers(0, 1000, size=2000)
    hi = np.minimum(lo + rng.integers(0, 300, size=2000), 1000)
    got = range_max(values, lo, hi)
    want = [values[a:b].max() if b > a else 0.0 for a, b in zip(lo, hi)]
    assert got.tolist() == want
