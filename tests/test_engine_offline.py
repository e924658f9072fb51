"""servescope around a real vLLM engine (CPU build): a user's offline script under `servescope run`."""

from collections import defaultdict

import pytest

from servescope.run.manifest import load_manifest
from servescope.run.tables import read_table

pytestmark = pytest.mark.engine


def _events(run_dir):
    by_request = defaultdict(dict)
    for row in read_table(run_dir, "request_events").to_pylist():
        by_request[row["request_id"]].setdefault(row["event"], row)  # first occurrence
    return by_request


def _emissions(run_dir):
    by_request = defaultdict(list)
    for row in read_table(run_dir, "token_emissions").to_pylist():
        by_request[row["request_id"]].append(row)
    return by_request


def test_every_request_is_recorded_with_its_whole_lifecycle(offline_run):
    events = _events(offline_run.run_dir)
    assert len(events) == offline_run.num_requests
    external_ids = {e["arrival"]["detail"] for e in events.values()}
    assert external_ids == set(offline_run.outputs)
    for rid, e in events.items():
        assert set(e) == {"arrival", "queued", "scheduled", "finished"}, rid
        assert e["queued"]["prompt_tokens"] == e["arrival"]["prompt_tokens"] > 0
        assert e["arrival"]["max_tokens"] == offline_run.max_tokens
        assert e["finished"]["detail"] == "length"


def test_each_request_emitted_exactly_max_tokens_as_vllm_returned(offline_run):
    events, emissions = _events(offline_run.run_dir), _emissions(offline_run.run_dir)
    for rid, rows in emissions.items():
        n = sum(r["num_tokens"] for r in rows)
        assert n == offline_run.max_tokens
        assert n == len(offline_run.outputs[events[rid]["arrival"]["detail"]])
    assert set(emissions) == set(events)


def test_request_times_are_ordered(offline_run):
    events, emissions = _events(offline_run.run_dir), _emissions(offline_run.run_dir)
    for rid, e in events.items():
        times = sorted(r["time_ns"] for r in emissions[rid])
        assert (e["arrival"]["time_ns"] <= e["queued"]["time_ns"] <= e["scheduled"]["time_ns"]
                <= times[0] <= times[-1] <= e["finished"]["time_ns"]), rid


def test_step_records_cover_every_step_and_join_to_their_tokens(offline_run):
    steps = read_table(offline_run.run_dir, "steps").to_pylist()
    ids = sorted(s["step_id"] for s in steps)
    assert ids == list(range(len(ids))), "a step is missing"
    emitted_by_step = defaultdict(int)
    for rows in _emissions(offline_run.run_dir).values():
        for r in rows:
            emitted_by_step[r["step_id"]] += r["num_tokens"]
    assert set(emitted_by_step) <= set(ids)
    for s in steps:
        assert s["num_emitted_tokens"] == emitted_by_step.get(s["step_id"], 0)
        assert s["schedule_start_ns"] <= s["schedule_end_ns"] <= s["execute_start_ns"] <= s["execute_end_ns"]
        assert s["wait_start_ns"] <= s["wait_end_ns"] <= s["update_start_ns"] <= s["update_end_ns"]
        assert s["total_scheduled_tokens"] <= 128  # the max_num_batched_tokens the script set


def test_batch_composition_accounts_for_every_prompt_and_decode_token(offline_run):
    steps = read_table(offline_run.run_dir, "steps").to_pylist()
    events = _events(offline_run.run_dir)
    prompt_total = sum(e["arrival"]["prompt_tokens"] for e in events.values())
    assert sum(s["num_prefill_tokens"] for s in steps) == prompt_total
    # the first output token comes from the last prefill chunk; every other one from a decode step
    assert sum(s["num_decode_tokens"] for s in steps) == offline_run.num_requests * (offline_run.max_tokens - 1)
    assert any(0 < s["num_prefill_reqs"] and s["num_decode_reqs"] > 0 for s in steps), "no mixed batch"
    assert max(s["num_waiting_reqs"] for s in steps) > 0, "the workload never queued"


def test_worker_regions_join_to_steps(offline_run):
    steps = {s["step_id"]: s for s in read_table(offline_run.run_dir, "steps").to_pylist()}
    regions = read_table(offline_run.run_dir, "worker_regions").to_pylist()
    executed = {r["step_id"] for r in regions if r["region"] == "execute_model"}
    # every step that computed tokens ran on the worker (empty steps may run too)
    assert {i for i, s in steps.items() if s["total_scheduled_tokens"] > 0} <= executed <= set(steps)
    for r in regions:
        assert r["host_start_ns"] <= r["host_end_ns"]
        s = steps[r["step_id"]]
        assert s["execute_start_ns"] <= r["host_start_ns"] and r["host_end_ns"] <= s["wait_end_ns"]
    assert {"execute_model", "forward", "sample"} <= {r["region"] for r in regions}
    # the thread's CPU time per region is opt-in (SERVESCOPE_THREAD_USAGE=1; the spec study turns it on)
    assert all(r["host_cpu_ns"] is None and r["voluntary_switches"] is None for r in regions)


def test_manifest_records_the_engine_configuration_in_effect(offline_run):
    m = load_manifest(offline_run.run_dir)
    params = m["engine"]["parameters"]
    assert m["engine"]["name"] == "vllm" and m["engine"]["version"].startswith("0.")
    assert params["max_num_batched_tokens"] == 128 and params["max_num_seqs"] == 8
    assert params["model_runner"].endswith("CPUModelRunner")
    assert m["model"]["attention"] == "GQA" and m["model"]["moe"] is False and m["model"]["num_layers"] == 2
    health = m["health"]
    assert (health["rows_dropped"], health["internal_errors"], health["regions_without_gpu_time"]) == (0, 0, 0), health
    roles = {p["role"] for p in m["processes"]}
    assert {"MainProcess", "EngineCore", "VllmWorker-0"} <= roles


def test_faults_inside_servescope_leave_vllm_outputs_unchanged(offline_run, faulty_offline_run):
    assert faulty_offline_run.outputs == offline_run.outputs
    m = load_manifest(faulty_offline_run.run_dir)
    assert m["health"]["internal_errors"] > 0
    assert read_table(faulty_offline_run.run_dir, "token_emissions").num_rows == 0


def _recompute_request(events, rows):
    """Per-request metrics straight from metrics.md, with plain Python over the raw rows."""
    a = events["arrival"]["time_ns"]
    s = events["scheduled"]["time_ns"]
    token_times = [r["time_ns"] for r in sorted(rows, key=lambda r: r["time_ns"]) for _ in range(r["num_tokens"])]
    chunk_times = sorted(r["time_ns"] for r in rows)
    n = len(token_times)
    t0, tl = token_times[0], token_times[-1]
    return {
        "ttft_s": (t0 - a) / 1e9, "scheduling_delay_s": (s - a) / 1e9, "prefill_s": (t0 - s) / 1e9,
        "decode_s": (tl - t0) / 1e9, "e2e_s": (tl - a) / 1e9, "ttst_s": (token_times[1] - t0) / 1e9,
        "tpot_s": (tl - t0) / 1e9 / (n - 1), "normalized_latency_s": (tl - a) / 1e9 / n,
        "tbt_per_token_s": [(y - x) / 1e9 for x, y in zip(token_times, token_times[1:])],
        "tbt_per_chunk_s": [(y - x) / 1e9 for x, y in zip(chunk_times, chunk_times[1:])],
        "output_tokens": n, "prompt_tokens": events["arrival"]["prompt_tokens"],
    }


def test_analyze_json_equals_an_independent_recomputation(offline_run):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(offline_run.run_dir), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    events, emissions = _events(offline_run.run_dir), _emissions(offline_run.run_dir)
    assert {r["request_id"] for r in result["requests"]} == set(events)
    for req in result["requests"]:
        expected = _recompute_request(events[req["request_id"]], emissions[req["request_id"]])
        for key, value in expected.items():
            assert req[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (req["request_id"], key)
        assert req["preemptions"] == 0
    ttfts = sorted(r["ttft_s"] for r in result["requests"])
    summary = result["summary"]["ttft_s"]
    assert summary["count"] == len(ttfts) and summary["max"] == pytest.approx(ttfts[-1])
    import numpy as np

    assert summary["p50"] == pytest.approx(float(np.percentile(ttfts, 50)))
    assert summary["p99"] == pytest.approx(float(np.percentile(ttfts, 99)))
    iterations = result["iterations"]
    assert iterations["steps"] == read_table(offline_run.run_dir, "steps").num_rows
    assert sum(k["steps"] for k in iterations["by_kind"].values()) == iterations["steps"]
    assert {"prefill", "decode", "mixed"} <= set(iterations["by_kind"])
    assert "speculative" not in result
    all_tbt = [g for r in result["requests"] for g in r["tbt_per_token_s"]]
    assert result["summary"]["tbt_per_token_s"]["count"] == len(all_tbt)
    assert result["summary"]["tbt_per_token_s"]["p90"] == pytest.approx(float(np.percentile(all_tbt, 90)))


def test_analyze_prints_a_readable_summary(offline_run):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(offline_run.run_dir)],
                          capture_output=True, text=True, check=True)
    for word in ("ttft", "scheduling", "tbt", "p99"):
        assert word in proc.stdout.lower()


def test_analyze_names_a_missing_run_directory(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_servescope_run_leaves_otlp_json_spans_without_an_endpoint(offline_run):
    from otlp_receiver import otlp_json_to_request, spans_of

    lines = (offline_run.run_dir / "otlp" / "spans.jsonl").read_text().splitlines()
    spans = spans_of([otlp_json_to_request(line) for line in lines if line.strip()])
    names = [s.name for s in spans]
    assert sum(n.startswith("text_completion") for n in names) == offline_run.num_requests
    assert names.count("servescope.step") == read_table(offline_run.run_dir, "steps").num_rows
