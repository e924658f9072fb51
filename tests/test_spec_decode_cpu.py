"""Speculative decoding (ngram, the CPU build): servescope's per-request, per-step accounting
against vLLM's own spec-decode counters for the same run, and against a second observer that does
not read the scheduler's stats: the tokens each step delivered to the caller (n = accepted + 1)."""

import json
import subprocess
import sys

import pytest

from engine_fixtures import engine_env
from servescope.run.tables import read_table

pytestmark = pytest.mark.engine


def test_ngram_acceptance_matches_vllm_counters(tmp_path, tiny_model_dir):
    out, run_dir = tmp_path / "spec.json", tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "servescope.studies.spec_check", "--method", "ngram", "--target", str(tiny_model_dir),
         "--out", str(out), "--run-dir", str(run_dir), "--num-requests", "8", "--prompt-len", "64",
         "--output-len", "32", "--max-model-len", "1024", "--k", "3"],
        env=engine_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"), check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    ours, theirs = result["servescope"], result["vllm_counters"]
    assert ours["drafts"] > 0, "the repetitive prompts gave ngram nothing to propose"
    assert ours["drafts"] == theirs["vllm:spec_decode_num_drafts"]
    assert ours["draft_tokens"] == theirs["vllm:spec_decode_num_draft_tokens"]
    assert ours["accepted_tokens"] == theirs["vllm:spec_decode_num_accepted_tokens"]
    rows = read_table(run_dir, "token_emissions").to_pylist()
    spec_rows = [r for r in rows if r["num_draft_tokens"]]
    per_position = [sum(1 for r in spec_rows if r["num_accepted_tokens"] > i) for i in range(3)]
    assert per_position == theirs["vllm:spec_decode_num_accepted_tokens_per_pos"]
    for r in spec_rows:  # a step emits its accepted drafts plus one bonus token
        assert r["num_tokens"] <= r["num_accepted_tokens"] + 1
    steps = {s["step_id"]: s for s in read_table(run_dir, "steps").to_pylist()}
    for step_id in {r["step_id"] for r in spec_rows}:
        verified = sum(r["num_draft_tokens"] for r in spec_rows if r["step_id"] == step_id)
        assert steps[step_id]["num_spec_tokens"] >= verified

    # the second observer: LLMEngine.step()'s DELTA outputs, per step and per request
    second = result["second_observer"]
    assert second["agree"], second["mismatches"]
    assert second["requests"] == second["requests_agreeing"] == 8
    assert second["steps_compared"] == len(rows) and second["step_totals_equal"]
    assert second["steps_exact"] + second["steps_cut_at_max_tokens"] == second["steps_compared"]
    assert second["accepted_seen_by_caller"] > 0
    # what the caller received plus what was cut at max_tokens is what vLLM's counter counted
    assert (second["accepted_seen_by_caller"] + second["accepted_not_delivered"]
            == theirs["vllm:spec_decode_num_accepted_tokens"])
    for rid, r in result["second_observer_per_request"].items():
        assert r["agree"] and r["accepted_seen_by_caller"] + r["accepted_not_delivered"] == r["accepted_recorded"], rid

    from servescope.analysis.summary import analyze_run

    summary = analyze_run(run_dir, include_requests=False)["speculative"]
    assert summary["accepted_per_position"] == theirs["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert summary["draft_tokens"] == theirs["vllm:spec_decode_num_draft_tokens"]
