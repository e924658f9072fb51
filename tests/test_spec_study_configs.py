"""The speculative-decoding study's configuration names map to the engine arguments written out here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servescope.studies.spec_study import engine_setup, parse_args


def spec_of(args: list[str]) -> dict:
    assert args[0] == "--speculative-config"
    return json.loads(args[1])


def test_eagle3_and_mtp_configurations_name_their_head_and_the_synthetic_sampler():
    args, env = engine_setup("eagle3-k4-a2.5", Path("/m"), "/heads/llama3-8b-eagle3")
    assert env == {}
    assert spec_of(args) == {"method": "eagle3", "model": "/heads/llama3-8b-eagle3", "num_speculative_tokens": 4,
                             "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2.5}
    assert spec_of(engine_setup("mtp-k1-a1.5", Path("/m"))[0]) == {
        "method": "mtp", "num_speculative_tokens": 1, "rejection_sample_method": "synthetic",
        "synthetic_acceptance_length": 1.5}
    assert spec_of(engine_setup("eagle3-k3", Path("/m"), "/h")[0]) == {  # the CPU build: vLLM's own sampler
        "method": "eagle3", "model": "/h", "num_speculative_tokens": 3}


def test_an_eagle3_configuration_without_a_head_is_refused_before_any_engine_starts(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs --head"):
        engine_setup("eagle3-k4-a2.5", tmp_path)
    with pytest.raises(SystemExit):
        parse_args(["--models-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--configs", "ar,eagle3-k4-a2.5"])
    assert "needs --head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--models-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--configs", "eagle3-k4-b2"])
    assert "unknown configuration 'eagle3-k4-b2'" in capsys.readouterr().err


def test_a_configuration_whose_engine_measured_nothing_fails_the_study_in_one_line(tmp_path):
    """The engine of each configuration runs in a child process; one that dies (here: no target model in
    --models-dir) must turn the study's exit code non-zero and name the configuration, with study.json kept."""
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "servescope.studies.spec_study", "--models-dir", str(tmp_path),
                           "--target", "missing-model", "--out", str(out), "--configs", "ar", "--rates", "2",
                           "--repeats", "1", "--warmup", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("spec_study: ") and "not measured: ar/engine (engine process: exit 1 after 0 phases)" in last
    assert json.loads((out / "study.json").read_text())["points"]["ar/engine"]["error"]


def test_a_high_replay_rate_gets_many_requests_while_the_closed_loop_keeps_its_own_count(tmp_path):
    """--rates 64 --phase-seconds 15 --num-requests 960: the replay gets 64 x 15 = 960 requests; --closed-requests
    160 gives the closed loop 160 (without it the closed loop would take --num-requests, 960, as before)."""
    from servescope.studies.spec_study import phase_plans

    common = ["--models-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--configs", "ar", "--rates", "64",
              "--phase-seconds", "15", "--num-requests", "960", "--repeats", "1", "--warmup", "0"]
    plans = {p.name: p for p in phase_plans(parse_args(common + ["--closed-requests", "160"]), vocab_size=1000)}
    assert plans["r64-rep0"].workload["requests"] == 960 and plans["c8-rep0"].workload["requests"] == 160
    assert "warmup" not in plans  # --warmup 0: none (it used to fail building a workload of 0 requests)
    plans = {p.name: p for p in phase_plans(parse_args(common), vocab_size=1000)}
    assert plans["c8-rep0"].workload["requests"] == 960
