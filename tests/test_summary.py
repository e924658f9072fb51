"""analyze_run's JSON contract (docs/json-contract.md) and its text rendering."""

import json
import sys
import types

import numpy as np
import pytest
from runbuilder import RunBuilder

from servescope.analysis.summary import PER_REQUEST_METRICS, analyze_run, summary_text
from servescope.run.directory import RunDirError

MS = 1_000_000
T = 5_000_000_000_000

REQUEST_FIELDS = {
    "request_id", "prompt_tokens", "output_tokens", "ttft_s", "scheduling_delay_s", "prefill_s",
    "decode_s", "e2e_s", "ttst_s", "tpot_s", "normalized_latency_s", "preemptions",
    "tbt_per_token_s", "tbt_per_chunk_s", "arrival_s", "arrival_from_queue", "finish_reason",
    "preempted_s",
}
SUMMARY_METRICS = set(PER_REQUEST_METRICS) | {"tbt_per_token_s", "tbt_per_chunk_s"}


def small_run(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("b", arrival_ns=T + 100 * MS, queued_ns=T + 101 * MS, scheduled_ns=T + 110 * MS,
              emissions=[(5, T + 150 * MS, 1), (6, T + 170 * MS, 3), (7, T + 200 * MS, 1)],
              finished_ns=T + 200 * MS, prompt_tokens=10, finish_reason="length")
    b.request("a", arrival_ns=T, queued_ns=T + MS, scheduled_ns=T + 10 * MS,
              preemptions=[(T + 20 * MS, T + 30 * MS)],
              emissions=[(1, T + 50 * MS, 1)], finished_ns=T + 50 * MS, prompt_tokens=5)
    b.request("z", arrival_ns=T + 300 * MS, queued_ns=T + 301 * MS, finished_ns=T + 400 * MS,
              finish_reason="abort")
    return b.write()


def by_id(result):
    return {r["request_id"]: r for r in result["requests"]}


def test_result_is_strict_json_with_the_contract_fields(tmp_path):
    result = analyze_run(small_run(tmp_path))
    text = json.dumps(result, allow_nan=False)  # NaN would raise: undefined is null
    assert json.loads(text) == result
    assert {"run", "conventions", "summary", "requests"} <= set(result)
    assert [r["request_id"] for r in result["requests"]] == ["a", "b", "z"]  # by arrival
    for record in result["requests"]:
        assert REQUEST_FIELDS <= set(record)
    assert set(result["summary"]) == SUMMARY_METRICS


def test_request_objects_hold_hand_computed_values(tmp_path):
    requests = by_id(analyze_run(small_run(tmp_path)))
    b = requests["b"]
    assert (b["prompt_tokens"], b["output_tokens"], b["finish_reason"]) == (10, 5, "length")
    assert b["arrival_s"] == pytest.approx(0.100, abs=1e-12)
    assert b["ttft_s"] == pytest.approx(0.050, abs=1e-12)
    assert b["scheduling_delay_s"] == pytest.approx(0.010, abs=1e-12)
    assert b["prefill_s"] == pytest.approx(0.040, abs=1e-12)
    assert b["decode_s"] == pytest.approx(0.050, abs=1e-12)
    assert b["e2e_s"] == pytest.approx(0.100, abs=1e-12)
    assert b["ttst_s"] == pytest.approx(0.020, abs=1e-12)
    assert b["tpot_s"] == pytest.approx(0.0125, abs=1e-12)
    assert b["normalized_latency_s"] == pytest.approx(0.020, abs=1e-12)
    assert b["tbt_per_token_s"] == pytest.approx([0.020, 0.0, 0.0, 0.030], abs=1e-12)
    assert b["tbt_per_chunk_s"] == pytest.approx([0.020, 0.030], abs=1e-12)
    a = requests["a"]
    assert a["arrival_s"] == 0.0 and a["preemptions"] == 1
    assert a["preempted_s"] == pytest.approx(0.010, abs=1e-12)
    assert a["ttst_s"] is None and a["tpot_s"] is None
    assert a["tbt_per_token_s"] == [] and a["tbt_per_chunk_s"] == []
    z = requests["z"]
    assert z["output_tokens"] == 0 and z["prompt_tokens"] is None
    for name in ("ttft_s", "scheduling_delay_s", "prefill_s", "decode_s", "e2e_s", "normalized_latency_s"):
        assert z[name] is None, name


def test_summary_covers_requests_and_every_token_gap(tmp_path):
    summary = analyze_run(small_run(tmp_path))["summary"]
    assert summary["ttft_s"]["count"] == 2  # z has no token
    assert summary["ttft_s"]["mean"] == pytest.approx(0.050, abs=1e-12)
    assert summary["preemptions"]["count"] == 3 and summary["preemptions"]["max"] == 1
    assert summary["tbt_per_token_s"]["count"] == 4  # over tokens, not requests
    assert summary["tbt_per_token_s"]["p50"] == pytest.approx(0.010, abs=1e-12)  # 0, 0, 20, 30 ms
    assert summary["tbt_per_chunk_s"]["count"] == 2
    assert summary["tbt_per_chunk_s"]["max"] == pytest.approx(0.030, abs=1e-12)
    assert summary["ttst_s"]["count"] == 1 and "p999" not in summary["ttst_s"]


def test_run_info_gives_duration_and_throughput(tmp_path):
    run = analyze_run(small_run(tmp_path))["run"]
    assert (run["requests"], run["finished_requests"], run["output_tokens"]) == (3, 3, 6)
    assert run["prompt_tokens"] == 15 and run["arrival_from_queue"] == 0
    assert run["start_ns"] == T
    assert run["duration_s"] == pytest.approx(0.400, abs=1e-12)  # first arrival .. z finished
    assert run["output_tokens_per_s"] == pytest.approx(15.0)
    assert run["requests_per_s"] == pytest.approx(7.5)


def test_conventions_state_tpot_percentiles_and_clock(tmp_path):
    conventions = analyze_run(small_run(tmp_path))["conventions"]
    assert "n - 1" in conventions["tpot"]
    assert "linear" in conventions["percentiles"]
    assert "CLOCK_MONOTONIC" in conventions["clock"]


def fake_fluidity(monkeypatch, calls):
    """Install a stand-in servescope.analysis.fluidity that records how it was called."""
    module = types.ModuleType("servescope.analysis.fluidity")

    def fluidity_for_requests(metrics, *, tbt_deadline_s, ttft_deadline_s=None, prefill_model=None, ttft_slack_s=0.0):
        calls.append((list(metrics.request_id), tbt_deadline_s, ttft_deadline_s))
        n = len(metrics.request_id)
        return {"fluidity_index": np.linspace(1.0, 0.5, n), "deadline_misses": np.arange(n),
                "deadlines": np.full(n, 4)}

    module.fluidity_for_requests = fluidity_for_requests
    module.service_level_miss_rate = lambda misses, deadlines: float(np.sum(misses) / np.sum(deadlines))
    monkeypatch.setitem(sys.modules, "servescope.analysis.fluidity", module)


def test_slo_adds_fluidity_per_request_and_summarised(tmp_path, monkeypatch):
    calls = []
    fake_fluidity(monkeypatch, calls)
    result = analyze_run(small_run(tmp_path), tbt_slo_s=0.05, ttft_slo_s=0.5)
    assert calls == [(["a", "b", "z"], 0.05, 0.5)]
    assert [r["fluidity_index"] for r in result["requests"]] == [1.0, 0.75, 0.5]
    assert [r["deadline_misses"] for r in result["requests"]] == [0, 1, 2]
    assert [r["deadlines"] for r in result["requests"]] == [4, 4, 4]
    assert result["summary"]["fluidity_index"]["mean"] == pytest.approx(0.75)
    assert result["summary"]["deadline_misses"]["max"] == 2
    assert result["fluidity"] == {"tbt_deadline_s": 0.05, "ttft_deadline_s": 0.5, "service_miss_rate": 0.25,
                                  "prefill_model_s": None, "ttft_slack_s": None}
    json.dumps(result, allow_nan=False)
    assert "fluidity index" in summary_text(result)


def test_without_slo_there_is_no_fluidity(tmp_path, monkeypatch):
    calls = []
    fake_fluidity(monkeypatch, calls)
    result = analyze_run(small_run(tmp_path))
    assert calls == [] and "fluidity" not in result and "fluidity_index" not in result["requests"][0]


def test_slo_with_the_real_fluidity_module(tmp_path):
    pytest.importorskip("servescope.analysis.fluidity")
    result = analyze_run(small_run(tmp_path), tbt_slo_s=0.025)
    b = by_id(result)["b"]
    # b's decode gaps 20, 0, 0, 30 ms against a 25 ms period: the 30 ms gap fits in banked slack.
    assert b["deadline_misses"] == 0 and b["fluidity_index"] == 1.0
    assert result["summary"]["fluidity_index"]["count"] >= 2
    json.dumps(result, allow_nan=False)
    # Against 10 ms: the 20 ms gap misses floor((20 - 10) / 10) + 1 = 2 periods; the
    # rest fit (slack 10 + 10 ms banked by the zero gaps covers 30 ms).
    b = by_id(analyze_run(small_run(tmp_path / "again"), tbt_slo_s=0.010))["b"]
    assert b["deadline_misses"] == 2


def test_ttft_slo_alone_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tbt_slo_s"):
        analyze_run(small_run(tmp_path), ttft_slo_s=1.0)


def test_a_missing_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        analyze_run(tmp_path / "nope")


def test_an_empty_run_still_gives_the_contract(tmp_path):
    result = analyze_run(RunBuilder(tmp_path).write())
    assert result["requests"] == [] and result["run"]["duration_s"] is None
    assert result["summary"]["ttft_s"] == {"count": 0, "mean": None, "p50": None, "p90": None,
                                           "p99": None, "max": None}
    json.dumps(result, allow_nan=False)
    assert "TTFT" in summary_text(result)


def test_summary_text_is_a_table_in_milliseconds_with_conventions(tmp_path):
    text = summary_text(analyze_run(small_run(tmp_path)))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "unit", "count", "mean", "p50", "p90", "p99", "p999", "max"]
    ttft = next(line for line in lines if line.startswith("TTFT "))
    assert ttft.split()[1:] == ["ms", "2", "50.00", "50.00", "50.00", "50.00", "-", "50.00"]
    tbt = next(line for line in lines if line.startswith("TBT per token"))
    assert tbt.split()[3:] == ["ms", "4", "12.50", "10.00", "27.00", "29.70", "-", "30.00"]
    assert "3 requests (3 finished)" in text
    assert "T_d / (n - 1)" in text and "linear" in text and "CLOCK_MONOTONIC" in text
    assert "nan" not in text.lower()


def test_requests_per_second_counts_finished_requests(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("done", arrival_ns=T, scheduled_ns=T + MS, emissions=[(1, T + 100 * MS, 1)],
              finished_ns=T + 100 * MS)
    b.request("running", arrival_ns=T + MS, scheduled_ns=T + 2 * MS,
              emissions=[(1, T + 100 * MS, 1), (2, T + 200 * MS, 1)])
    run = analyze_run(b.write())["run"]
    assert (run["requests"], run["finished_requests"]) == (2, 1)
    assert run["duration_s"] == pytest.approx(0.200, abs=1e-12)  # to the last token
    assert run["requests_per_s"] == pytest.approx(5.0)
    assert run["output_tokens_per_s"] == pytest.approx(15.0)


def test_requests_can_be_left_out_for_a_summary_only(tmp_path):
    path = small_run(tmp_path)
    full, brief = analyze_run(path), analyze_run(path, include_requests=False)
    assert "requests" not in brief
    assert brief["summary"] == full["summary"] and brief["run"] == full["run"]
    assert summary_text(brief) == summary_text(full)
