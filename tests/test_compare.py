from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from servescope.analysis.compare import (
    ITERATION_PARTS,
    LATENCY_METRICS,
    RunSamples,
    compare,
    compare_samples,
    iteration_breakdown,
    parameter_differences,
    run_samples,
)
from servescope.analysis.stalls import step_arrays
from servescope.run.schema import TABLES

MS = 1_000_000


def synthetic(
    label,
    *,
    sched=0.05,
    prefill=0.1,
    decode=1.0,
    gpu=0.010,
    cpu=0.005,
    idle=0.001,
    n=2000,
    steps=5000,
    seed=0,
    engine=("vllm", "0.26.0"),
    params=None,
    tok_s=1000.0,
):
    rng = np.random.default_rng(seed)
    s = rng.exponential(sched, n)
    p = rng.exponential(prefill, n)
    d = rng.exponential(decode, n)
    lat = {
        "scheduling_delay": s,
        "prefill": p,
        "decode": d,
        "e2e": s + p + d,
        "ttft": s + p,
        "tbt": rng.exponential(decode / 50, n * 50),
        "normalized_latency": (s + p + d) / 50,
    }
    g = rng.normal(gpu, gpu * 0.05, steps)
    c = rng.normal(cpu, max(cpu, 1e-4) * 0.05, steps)
    i = np.full(steps, idle)
    return RunSamples(
        label=label,
        latency_s=lat,
        iteration_s={"gpu": g, "cpu_overhead": c, "idle": i, "iteration": g + c + i},
        output_tokens_per_s=tok_s + rng.normal(0, 5),
        requests_per_s=tok_s / 50,
        gpu_time_source="gpu_events",
        engine={"name": engine[0], "version": engine[1]},
        parameters=dict(params or {"max_num_seqs": 256}),
    )


def test_iteration_breakdown_adds_up_and_finds_idle_and_host_time():
    rows = []
    t = 0
    plan = [  # (gap before schedule ms, step length ms, wait ms)
        (0, 10, 8),
        (0, 10, 8),
        (50, 10, 2),  # engine idle 50 ms, then a host-heavy step
        (-3, 10, 9),  # async: scheduled before the previous step's update ended
    ]
    for k, (gap, length, wait) in enumerate(plan):
        start = t + gap * MS
        end = start + length * MS
        rows.append(
            dict(
                step_id=k,
                engine_index=0,
                schedule_start_ns=start,
                wait_start_ns=end - wait * MS - MS,
                wait_end_ns=end - MS,
                update_end_ns=end,
            )
        )
        t = end
    schema = TABLES["steps"].arrow_schema
    steps = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
    parts = iteration_breakdown(step_arrays(steps))
    np.testing.assert_allclose(parts["iteration"], [0.010, 0.010, 0.060, 0.007])
    np.testing.assert_allclose(parts["idle"], [0, 0, 0.050, 0])
    np.testing.assert_allclose(parts["gpu"], [0.008, 0.008, 0.002, 0.007])  # wait capped by the 7 ms iteration
    np.testing.assert_allclose(parts["cpu_overhead"], [0.002, 0.002, 0.008, 0.0], atol=1e-12)


def test_compare_samples_ci_covers_a_shift_and_zero_when_equal():
    rng = np.random.default_rng(1)
    a = rng.exponential(1.0, 5000)
    b = a + 0.5
    res = compare_samples([a], [b], n_boot=300)
    assert res["mean"]["diff"] == pytest.approx(0.5)
    lo, hi = res["mean"]["ci"]
    assert lo < 0.5 < hi and lo > 0.3
    same = compare_samples([rng.exponential(1.0, 5000)], [rng.exponential(1.0, 5000)], n_boot=300)
    for stat in ("mean", "p50", "p90"):
        lo, hi = same[stat]["ci"]
        assert lo < 0 < hi


def test_repeat_runs_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    base = [rng.normal(1.0, 0.01, 2000), rng.normal(2.0, 0.01, 2000)]
    treat = [rng.normal(1.0, 0.01, 2000), rng.normal(2.0, 0.01, 2000)]
    spread = compare_samples(base, treat, n_boot=300)["mean"]["ci"]
    pooled = compare_samples([np.concatenate(base)], [np.concatenate(treat)], n_boot=300)["mean"]["ci"]
    assert spread[1] - spread[0] > 10 * (pooled[1] - pooled[0])


def test_host_overhead_gain_is_attributed_to_implementation():
    base = synthetic("A", gpu=0.010, cpu=0.005, seed=1)
    treat = synthetic("B", gpu=0.010, cpu=0.002, seed=2, tok_s=1200.0)
    res = compare(base, treat, n_boot=100)
    assert res["iteration"]["cpu_overhead"]["mean"]["diff"] == pytest.approx(-0.003, abs=2e-4)
    assert abs(res["iteration"]["gpu"]["mean"]["diff"]) < 2e-4
    host = res["attribution"]["host_share_of_step_change"]
    assert host > 0.9
    assert "CPU overhead (host time with the GPU idle) by -3.0" in res["statement"]
    assert res["throughput"]["output_tokens_per_s"]["diff"] == pytest.approx(200, abs=30)
    assert set(res["latency"]) == set(LATENCY_METRICS) and set(res["iteration"]) == set(ITERATION_PARTS)


def test_gpu_gain_and_scheduling_split():
    base = synthetic("A", gpu=0.020, cpu=0.002, sched=0.5, seed=3)
    treat = synthetic("B", gpu=0.010, cpu=0.002, sched=0.1, seed=4)
    res = compare(base, treat, n_boot=100)
    assert res["attribution"]["gpu_share_of_step_change"] > 0.95
    split = res["e2e_split"]
    # recomputed from the samples, not from compare()'s own parts
    for part in ("e2e", "scheduling_delay", "prefill", "decode"):
        expected = np.mean(treat.latency_s[part]) - np.mean(base.latency_s[part])
        assert split[part] == pytest.approx(expected, rel=1e-9), part
    assert split["scheduling_delay"] == pytest.approx(-0.4, abs=0.05)  # exponential means 0.5 s -> 0.1 s
    assert "GPU work (algorithm, kernels)" in res["statement"]


def test_between_two_engines_the_gpu_share_is_not_called_algorithm():
    base = synthetic("A", gpu=0.020, cpu=0.002, seed=3)
    treat = synthetic("B", engine=("transformers", "5.19.0"), gpu=0.010, cpu=0.001, seed=4)
    res = compare(base, treat, n_boot=50)
    assert res["attribution"]["gpu_share_of_step_change"] > 0.8  # the share sentence is there
    assert "is GPU work (kernels) and" in res["statement"]
    assert "algorithm, kernels" not in res["statement"]  # kernels, graphs and compilation differ too


def test_configuration_differences_and_engine_mismatch_in_statement():
    base = synthetic("A", params={"max_num_seqs": 256, "max_num_batched_tokens": 2048}, seed=5)
    treat = synthetic(
        "B", engine=("sglang", "0.4.1"), params={"max_num_seqs": 512, "enable_chunked_prefill": True}, seed=6
    )
    res = compare(base, treat, n_boot=50)
    assert res["configuration"]["parameter_differences"] == [
        {"name": "enable_chunked_prefill", "baseline": "not set", "treatment": True},
        {"name": "max_num_batched_tokens", "baseline": 2048, "treatment": "not set"},
        {"name": "max_num_seqs", "baseline": 256, "treatment": 512},
    ]
    assert not res["configuration"]["same_engine"]
    assert "different engines (vllm 0.26.0 vs sglang 0.4.1)" in res["statement"]
    assert "credit no part of the change to an algorithm" in res["statement"]
    assert "Engine parameters differ: enable_chunked_prefill, max_num_batched_tokens, max_num_seqs." in res["statement"]
    assert res["throughput"]["output_tokens_per_s"]["note"].startswith("one run per side")


def test_repeat_runs_give_a_throughput_interval_and_config_drift_note():
    base = [synthetic("A1", seed=7), synthetic("A2", seed=8, params={"max_num_seqs": 128})]
    treat = [synthetic("B1", seed=9, tok_s=1500), synthetic("B2", seed=10, tok_s=1500)]
    res = compare(base, treat, n_boot=100)
    lo, hi = res["throughput"]["output_tokens_per_s"]["ci"]
    assert lo < 500 < hi
    assert any("repeat runs of one side differ" in n for n in res["notes"])


def test_parameter_differences_empty_when_equal():
    assert parameter_differences({"a": 1}, {"a": 1}) == []


def test_run_samples_from_metrics_and_tables():
    schema = TABLES["steps"].arrow_schema
    rows = [
        dict(
            step_id=k,
            engine_index=0,
            schedule_start_ns=k * 10 * MS,
            wait_start_ns=k * 10 * MS + MS,
            wait_end_ns=k * 10 * MS + 9 * MS,
            update_end_ns=(k + 1) * 10 * MS,
        )
        for k in range(4)
    ]
    steps = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
    metrics = SimpleNamespace(
        token_times_ns=np.array([10, 20, 30, 40, 30, 40], dtype=np.int64) * MS,
        token_offsets=np.array([0, 4, 6]),
        arrival_ns=np.array([0, 5 * MS], dtype=np.int64),
        output_tokens=np.array([4, 2]),
        ttft_s=np.array([0.01, 0.025]),
        e2e_s=np.array([0.04, 0.035]),
        scheduling_delay_s=np.array([0.0, 0.005]),
        prefill_s=np.array([0.01, 0.02]),
        decode_s=np.array([0.03, 0.01]),
        normalized_latency_s=np.array([0.01, 0.0175]),
    )
    run = SimpleNamespace(
        steps=steps,
        worker_regions=None,
        manifest={"engine": {"name": "vllm", "version": "0.26.0", "parameters": {"max_num_seqs": 8}}},
    )
    rs = run_samples(metrics, run, label="r")
    np.testing.assert_allclose(rs.latency_s["tbt"], [0.01, 0.01, 0.01, 0.01])
    assert rs.output_tokens_per_s == pytest.approx(6 / 0.04)
    assert rs.requests_per_s == pytest.approx(2 / 0.04)
    assert rs.parameters == {"max_num_seqs": 8} and rs.engine == {"name": "vllm", "version": "0.26.0"}
    assert rs.gpu_time_source == "host_wait"
    np.testing.assert_allclose(rs.iteration_s["gpu"], [0.008] * 4)


def _builder_run(root, name, step_ms, host_ms, engine_version="0.26.0", params=None, draft_ms=None):
    """Two requests decoding on one engine: each step waits step_ms for the model and spends host_ms on the host."""
    from runbuilder import RunBuilder

    manifest = {"engine": {"name": "vllm", "version": engine_version, "parameters": params or {"max_num_seqs": 8}}}
    b = RunBuilder(root, name, manifest)
    t = 0
    ends = []
    for k in range(20):
        start = t
        wait_start = start + host_ms * MS
        end = wait_start + step_ms * MS
        b.row(
            "steps",
            step_id=k,
            engine_index=0,
            schedule_start_ns=start,
            wait_start_ns=wait_start,
            wait_end_ns=end,
            update_end_ns=end,
        )
        if draft_ms is not None:  # a drafter region: (host, GPU event) ms
            b.row("worker_regions", step_id=k, region="draft", host_start_ns=start,
                  host_end_ns=start + int(draft_ms[0] * MS), gpu_ns=int(draft_ms[1] * MS))
            b.row("worker_regions", step_id=k, region="forward", host_start_ns=start,
                  host_end_ns=start + int(0.1 * MS), gpu_ns=int(step_ms * MS))
        ends.append(end)
        t = end
    for rid, first in (("a", 0), ("b", 2)):
        b.request(
            rid,
            arrival_ns=0,
            scheduled_ns=MS,
            prompt_tokens=32,
            emissions=[(k, ends[k], 1) for k in range(first, 20)],
            finished_ns=ends[-1],
        )
    return b.write()


def test_compare_run_dirs_splits_a_host_overhead_gain(tmp_path):
    from servescope.analysis.compare import compare_run_dirs

    base = _builder_run(tmp_path, "base", step_ms=10, host_ms=6)
    treat = _builder_run(tmp_path, "treat", step_ms=10, host_ms=2, params={"max_num_seqs": 8, "async_scheduling": True})
    res = compare_run_dirs([base], [treat], n_boot=50)
    assert res["iteration"]["cpu_overhead"]["mean"]["diff"] == pytest.approx(-0.004)
    assert res["iteration"]["gpu"]["mean"]["diff"] == pytest.approx(0.0)
    assert res["attribution"]["host_share_of_step_change"] == pytest.approx(1.0)
    assert res["latency"]["tbt"]["p50"]["diff"] == pytest.approx(-0.004)
    assert res["configuration"]["parameter_differences"] == [
        {"name": "async_scheduling", "baseline": "not set", "treatment": True}
    ]
    assert res["iteration_gpu_time_source"] == ["host_wait"]


def test_host_paced_regions_are_named_in_the_comparison(tmp_path):
    from servescope.analysis.compare import compare_run_dirs

    base = _builder_run(tmp_path, "base", step_ms=10, host_ms=2)
    treat = _builder_run(tmp_path, "treat", step_ms=10, host_ms=2, draft_ms=(12.0, 8.0))
    res = compare_run_dirs([base], [treat], n_boot=20)
    assert res["host_paced_regions"] == {"baseline": {},
                                         "treatment": {"draft": {"gpu_p50_ms": 8.0, "host_p50_ms": 12.0}}}
    assert "Host-paced regions" in res["statement"] and "draft (treatment: GPU 8.0 ms, host 12.0 ms" in res["statement"]
    kernel_bound = _builder_run(tmp_path, "kernel", step_ms=10, host_ms=2, draft_ms=(3.0, 8.0))
    assert compare_run_dirs([base], [kernel_bound], n_boot=20)["host_paced_regions"]["treatment"] == {}


@pytest.mark.engine
def test_iteration_breakdown_of_a_real_run_equals_the_raw_rows_and_the_token_gaps(offline_run):
    """Each part recomputed in plain Python from the steps rows (the definitions of docs/analysis.md),
    and the iterations set against the per-chunk token gaps, which come from another table."""
    import vllm

    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run
    from servescope.run.tables import read_table

    run = load_run(offline_run.run_dir)
    metrics = compute_request_metrics(run)
    samples = run_samples(metrics, run, label="real")
    parts = samples.iteration_s
    steps = sorted(read_table(offline_run.run_dir, "steps").to_pylist(), key=lambda s: s["step_id"])
    assert parts["iteration"].size == len(steps) and samples.gpu_time_source == "host_wait"  # CPU build
    previous_end = steps[0]["schedule_start_ns"]
    for k, s in enumerate(steps):
        iteration = s["update_end_ns"] - previous_end
        idle = 0 if k == 0 else max(s["schedule_start_ns"] - previous_end, 0)
        wait = min(s["wait_end_ns"] - s["wait_start_ns"], iteration - idle)
        assert parts["iteration"][k] == pytest.approx(iteration / 1e9, abs=1e-12)
        assert parts["idle"][k] == pytest.approx(idle / 1e9, abs=1e-12)
        assert parts["gpu"][k] == pytest.approx(wait / 1e9, abs=1e-12)
        assert parts["cpu_overhead"][k] == pytest.approx((iteration - idle - wait) / 1e9, abs=1e-12)
        previous_end = s["update_end_ns"]
    # a request's per-chunk gap between two emitting steps spans exactly the iterations of the steps
    # after the first up to the second (token_emissions' times against the steps table)
    emitted_at = {}
    for r in read_table(offline_run.run_dir, "token_emissions").to_pylist():
        emitted_at.setdefault(r["request_id"], []).append((r["step_id"], r["time_ns"]))
    index = {s["step_id"]: k for k, s in enumerate(steps)}
    checked = 0
    for rows in emitted_at.values():
        rows.sort()
        for (s0, t0), (s1, t1) in zip(rows, rows[1:]):
            assert (t1 - t0) / 1e9 == pytest.approx(parts["iteration"][index[s0] + 1: index[s1] + 1].sum(), abs=1e-9)
            checked += 1
    assert checked == offline_run.num_requests * (offline_run.max_tokens - 1)
    # the configuration comes from the engine that ran, as the fixture started it
    assert (samples.engine["name"], samples.engine["version"]) == ("vllm", vllm.__version__)
    assert samples.parameters["max_num_batched_tokens"] == 128


@pytest.mark.engine
def test_two_real_configurations_are_compared_and_audited(offline_run, large_budget_offline_run):
    """Chunked-prefill token budget 128 vs 512 on the CPU engine: the comparison names the
    parameter that differs, its parts add up, and the audit flags the untuned side."""
    from servescope.analysis.checklist import audit_run_dirs
    from servescope.analysis.compare import compare_run_dirs

    result = compare_run_dirs([str(offline_run.run_dir)], [str(large_budget_offline_run.run_dir)])
    diffs = {d["name"]: (d["baseline"], d["treatment"]) for d in result["configuration"]["parameter_differences"]}
    assert diffs["max_num_batched_tokens"] == (128, 512)
    assert result["configuration"]["same_engine"]
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run

    base, treat = (compute_request_metrics(load_run(r.run_dir)) for r in (offline_run, large_budget_offline_run))
    split = result["e2e_split"]
    for part, column in (("e2e", "e2e_s"), ("scheduling_delay", "scheduling_delay_s"), ("prefill", "prefill_s"),
                         ("decode", "decode_s")):  # recomputed from each run's own per-request metrics
        expected = np.nanmean(getattr(treat, column)) - np.nanmean(getattr(base, column))
        assert split[part] == pytest.approx(expected, abs=1e-9), part
    assert result["statement"]
    verdicts = {r.item: r for r in audit_run_dirs([str(offline_run.run_dir)], [str(large_budget_offline_run.run_dir)])}
    tuning = verdicts[2]
    assert str(getattr(tuning.status, "value", tuning.status)) in ("warn", "fail")
    assert any("max_num_batched_tokens" in e for e in tuning.evidence)
