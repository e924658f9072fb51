"""servescope around real transformers continuous batching (CPU, tiny random Llama): user scripts under `servescope run`."""

import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from hf_fixtures import record_hf_run
from servescope.run.tables import read_table
from servescope.run.manifest import load_manifest
from servescope.run.names import FinishReason, Region, RequestEvent, StepPhase, Table
from test_engine_offline import _recompute_request

pytest.importorskip("transformers.generation.continuous_batching")
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_model_dir):
    """generate_batch: 24 requests x 16 tokens, 128-token budget (chunked prefill, mixed batches, a queue)."""
    return record_hf_run(tmp_path_factory.mktemp("hf"), tiny_model_dir)


@pytest.fixture(scope="module")
def hf_untraced(tmp_path_factory, tiny_model_dir):
    return record_hf_run(tmp_path_factory.mktemp("hf-plain"), tiny_model_dir, traced=False)


@pytest.fixture(scope="module")
def hf_faulty(tmp_path_factory, tiny_model_dir):
    """The same run with every recorder append raising inside servescope."""
    return record_hf_run(tmp_path_factory.mktemp("hf-faulty"), tiny_model_dir, SERVESCOPE_INJECT_FAULTS="1")


@pytest.fixture(scope="module")
def hf_preempting_run(tmp_path_factory, tiny_model_dir):
    """ContinuousBatchingManager, streamed, with a KV cache too small for the batch: requests are preempted
    (prefix sharing off, so that a soft reset recomputes exactly the prompt and the tokens generated so far)."""
    return record_hf_run(tmp_path_factory.mktemp("hf-preempt"), tiny_model_dir, mode="manager", num_requests=16,
                         max_tokens=48, num_blocks=24, page_size=16, prefix_sharing=False)


def _events(run_dir):
    by_request = defaultdict(lambda: defaultdict(list))
    for row in read_table(run_dir, Table.REQUEST_EVENTS).to_pylist():
        by_request[row["request_id"]][row["event"]].append(row)
    return by_request


def _emissions(run_dir):
    by_request = defaultdict(list)
    for row in read_table(run_dir, Table.TOKEN_EMISSIONS).to_pylist():
        by_request[row["request_id"]].append(row)
    return by_request


def _steps(run_dir):
    return read_table(run_dir, Table.STEPS).to_pylist()


@pytest.mark.parametrize("which", ["hf_run", "hf_preempting_run"])
def test_every_request_and_token_transformers_returned_is_recorded(which, request):
    run = request.getfixturevalue(which)
    events, emissions = _events(run.run_dir), _emissions(run.run_dir)
    assert set(events) == set(run.outputs) == set(emissions)
    for rid, output in run.outputs.items():
        assert len(output) == run.max_tokens
        assert sum(r["num_tokens"] for r in emissions[rid]) == len(output), rid
        e = events[rid]
        assert len(e[RequestEvent.ARRIVAL]) == len(e[RequestEvent.QUEUED]) == len(e[RequestEvent.FINISHED]) == 1
        assert e[RequestEvent.ARRIVAL][0]["detail"] == rid
        assert e[RequestEvent.ARRIVAL][0]["prompt_tokens"] == e[RequestEvent.QUEUED][0]["prompt_tokens"] \
            == run.prompt_tokens[rid]
        assert e[RequestEvent.QUEUED][0]["max_tokens"] == run.max_tokens
        finished = e[RequestEvent.FINISHED][0]
        assert (finished["detail"], finished["output_tokens"]) == (FinishReason.LENGTH, run.max_tokens)
        # one 'scheduled' for the first scheduling and one per resume after a preemption
        assert len(e[RequestEvent.SCHEDULED]) == 1 + len(e[RequestEvent.PREEMPTED])


def test_request_times_are_ordered(hf_run):
    events, emissions = _events(hf_run.run_dir), _emissions(hf_run.run_dir)
    for rid, e in events.items():
        times = sorted(r["time_ns"] for r in emissions[rid])
        assert (e["arrival"][0]["time_ns"] <= e["queued"][0]["time_ns"] <= e["scheduled"][0]["time_ns"]
                <= times[0] <= times[-1] <= e["finished"][0]["time_ns"]), rid


def test_steps_cover_every_step_and_join_to_their_tokens(hf_run):
    steps = _steps(hf_run.run_dir)
    ids = sorted(s["step_id"] for s in steps)
    assert ids == list(range(len(ids))), "a step is missing"
    emitted_by_step = defaultdict(int)
    for rows in _emissions(hf_run.run_dir).values():
        for r in rows:
            emitted_by_step[r["step_id"]] += r["num_tokens"]
    assert set(emitted_by_step) <= set(ids)
    columns = [c for phase in StepPhase.ALL for c in StepPhase.columns(phase)]
    for s in steps:
        assert s["num_emitted_tokens"] == emitted_by_step.get(s["step_id"], 0)
        assert s["num_prefill_tokens"] + s["num_decode_tokens"] == s["total_scheduled_tokens"] <= 128
        assert s["num_prefill_reqs"] + s["num_decode_reqs"] >= 1
        times = [s[c] for c in columns]
        assert times == sorted(times), s["step_id"]  # schedule <= execute <= wait <= update, no overlap
        assert 0 < s["kv_cache_usage"] <= 1


def test_batch_composition_accounts_for_every_prompt_and_decode_token(hf_run):
    steps = _steps(hf_run.run_dir)
    assert sum(s["num_prefill_tokens"] for s in steps) == sum(hf_run.prompt_tokens.values())
    # the first output token comes from the last prefill chunk; every other one from a decode step
    assert sum(s["num_decode_tokens"] for s in steps) == len(hf_run.outputs) * (hf_run.max_tokens - 1)
    assert sum(s["num_finished_reqs"] for s in steps) == len(hf_run.outputs)
    assert any(s["num_prefill_reqs"] > 0 and s["num_decode_reqs"] > 0 for s in steps), "no mixed batch"
    assert max(s["num_waiting_reqs"] for s in steps) > 0, "the workload never queued"
    assert all(s["num_preempted_reqs"] == 0 for s in steps)


def test_preemptions_are_recorded_and_recomputed_prompts_count_as_prefill(hf_preempting_run):
    steps = _steps(hf_preempting_run.run_dir)
    events = _events(hf_preempting_run.run_dir)
    preempted = [row for e in events.values() for row in e[RequestEvent.PREEMPTED]]
    assert preempted, "the small cache preempted nothing"
    assert sum(s["num_preempted_reqs"] for s in steps) == len(preempted)
    by_step = {s["step_id"]: s for s in steps}
    for row in preempted:
        assert by_step[row["step_id"]]["num_preempted_reqs"] >= 1
        assert 0 <= row["output_tokens"] < hf_preempting_run.max_tokens
    assert max(s["kv_cache_usage"] for s in steps) > 0.9
    # A soft reset recomputes the prompt and the tokens generated so far as prefill, and the token after that
    # recompute comes from a prefill step: every other output token comes from a decode step. A request
    # preempted again before its recompute ended (no new token since) had computed only part of it.
    prompts = hf_preempting_run.prompt_tokens
    after_prefill, mid_prefill = [], []
    for rid, e in events.items():
        generated_before = 0
        for row in sorted(e[RequestEvent.PREEMPTED], key=lambda r: r["time_ns"]):
            (after_prefill if row["output_tokens"] > generated_before else mid_prefill).append(row)
            generated_before = row["output_tokens"]
    recompute = {id(r): prompts[r["request_id"]] + r["output_tokens"] for r in preempted}
    lower = sum(prompts.values()) + sum(recompute[id(r)] for r in after_prefill)
    upper = lower + sum(recompute[id(r)] for r in mid_prefill)
    assert lower <= sum(s["num_prefill_tokens"] for s in steps) <= upper
    outputs = sum(map(len, hf_preempting_run.outputs.values()))
    assert sum(s["num_decode_tokens"] for s in steps) == outputs - len(prompts) - len(after_prefill)


def test_worker_regions_join_to_steps(hf_run):
    steps = {s["step_id"]: s for s in _steps(hf_run.run_dir)}
    regions = read_table(hf_run.run_dir, Table.WORKER_REGIONS).to_pylist()
    by_region = defaultdict(set)
    for r in regions:
        by_region[r["region"]].add(r["step_id"])
        s = steps[r["step_id"]]
        assert r["host_start_ns"] <= r["host_end_ns"]
        if r["region"] == Region.PREPARE_INPUTS:  # built while scheduling
            assert s["schedule_start_ns"] <= r["host_start_ns"] and r["host_end_ns"] <= s["schedule_end_ns"]
        else:  # computed between the launch and the output on the host
            assert s["execute_start_ns"] <= r["host_start_ns"] and r["host_end_ns"] <= s["wait_end_ns"]
        assert r["gpu_ns"] is None  # CPU: host timers
    for name in (Region.EXECUTE_MODEL, Region.FORWARD, Region.SAMPLE, Region.PREPARE_INPUTS):
        assert by_region[name] == set(steps), name


def test_manifest_records_the_engine_configuration_in_effect(hf_run):
    m = load_manifest(hf_run.run_dir)
    import transformers

    assert m["engine"]["name"] == "transformers" and m["engine"]["version"] == transformers.__version__
    params = m["engine"]["parameters"]
    assert (params["max_num_batched_tokens"], params["max_num_seqs"], params["num_gpu_blocks"]) == (128, 8, 64)
    # the implementation in effect: 5.17 runs sdpa as 'paged|sdpa', 5.18+ as 'sdpa'
    assert params["attention_implementation"] in ("sdpa", "paged|sdpa") and params["cuda_graphs"] == "off"
    assert params["scheduling_policy"] == "fifo" and params["async_scheduling"] is False
    assert params["dtype"] == "torch.float32" and params["device"] == "cpu"
    assert params["model_runner"].endswith("ModelRunner")
    assert m["model"]["attention"] == "GQA" and m["model"]["num_layers"] == 2
    health = m["health"]
    assert (health["rows_dropped"], health["internal_errors"], health["regions_without_gpu_time"]) == (0, 0, 0), health
    assert health["processes_killed"] == [] and health["processes_running"] == [], health


def test_outputs_are_identical_with_and_without_tracing(hf_run, hf_untraced):
    assert hf_run.outputs == hf_untraced.outputs


def test_faults_inside_servescope_leave_outputs_unchanged(hf_untraced, hf_faulty):
    assert hf_faulty.outputs == hf_untraced.outputs
    assert load_manifest(hf_faulty.run_dir)["health"]["internal_errors"] > 0
    assert read_table(hf_faulty.run_dir, Table.TOKEN_EMISSIONS).num_rows == 0


def _analyze(run_dir):
    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(run_dir), "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_analyze_json_equals_an_independent_recomputation(hf_run):
    result = _analyze(hf_run.run_dir)
    events, emissions = _events(hf_run.run_dir), _emissions(hf_run.run_dir)
    first = {rid: {name: rows[0] for name, rows in e.items()} for rid, e in events.items()}
    assert {r["request_id"] for r in result["requests"]} == set(events)
    for req in result["requests"]:
        expected = _recompute_request(first[req["request_id"]], emissions[req["request_id"]])
        for key, value in expected.items():
            assert req[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (req["request_id"], key)
    iterations = result["iterations"]
    steps = _steps(hf_run.run_dir)
    assert iterations["steps"] == len(steps)
    waits = sorted((s["wait_end_ns"] - s["wait_start_ns"]) / 1e9 for s in steps)
    assert iterations["gpu_time_source"] == "host_wait"
    assert iterations["all"]["wait_s"]["p50"] == pytest.approx(float(np.percentile(waits, 50)))


def test_exports_and_report_read_a_transformers_run(hf_run, tmp_path):
    from otlp_receiver import otlp_json_to_request, spans_of

    lines = (hf_run.run_dir / "otlp" / "spans.jsonl").read_text().splitlines()
    spans = spans_of([otlp_json_to_request(line) for line in lines if line.strip()])
    names = [s.name for s in spans]
    assert sum(n.startswith("text_completion") for n in names) == len(hf_run.outputs)
    assert names.count("servescope.step") == len(_steps(hf_run.run_dir))
    trace = tmp_path / "trace.json"
    subprocess.run([sys.executable, "-m", "servescope", "export", str(hf_run.run_dir), "--perfetto", str(trace)],
                   capture_output=True, text=True, check=True)
    slices = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    assert sum(e["name"].startswith("step") for e in slices) >= len(_steps(hf_run.run_dir))
    proc = subprocess.run([sys.executable, "-m", "servescope", "report", str(hf_run.run_dir), "--out",
                           str(tmp_path / "report")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transformers" in (tmp_path / "report" / "index.html").read_text()


def test_compare_and_audit_of_vllm_against_transformers_split_the_gap_and_name_what_differs(offline_run, hf_run):
    """The same tiny model config and workload on both engines (tests/engine_scripts: the same prompts)."""
    proc = subprocess.run([sys.executable, "-m", "servescope", "compare", str(offline_run.run_dir),
                           str(hf_run.run_dir), "--json"], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    config = result["configuration"]
    assert config["same_engine"] is False
    assert (config["baseline_engine"]["name"], config["treatment_engine"]["name"]) == ("vllm", "transformers")
    split = result["iteration"]
    for part in ("gpu", "cpu_overhead", "idle"):
        assert len(split[part]["mean"]["ci"]) == 2
    statement = result["statement"]
    assert "different engines (vllm" in statement and "GPU time changed by" in statement
    assert "idle time by" in statement
    proc = subprocess.run([sys.executable, "-m", "servescope", "audit", str(offline_run.run_dir), "--treat",
                           str(hf_run.run_dir), "--json"], capture_output=True, text=True)
    verdicts = {item["item"]: item for item in json.loads(proc.stdout)["items"]}
    fairness = " ".join(verdicts[1]["evidence"])
    assert "implementation differences" in fairness
    for name in ("model_runner", "scheduler_class", "scheduling_policy", "enforce_eager"):
        assert name in fairness
    assert "scheduler_class: 'not recorded'" not in fairness  # vLLM's is recorded beside its parameters
    tuning = " ".join(verdicts[2]["evidence"])
    # both engines name their attention: vLLM's workers the backend their layers use (the CPU build's CPU_ATTN)
    assert "attention_implementation: 'CPU_ATTN' vs" in fairness
    assert "attention_implementation: baseline 'CPU_ATTN'" in tuning
    assert "ran with default" not in tuning  # a setting one engine lacks is not a default the other kept
