"""The engine-vs-engine study (servescope/studies/engine_vs_engine.py) end to end on the CPU, at a tiny size: the
same command the H200 script runs (benchmarks/h200_engine_vs_engine.sh), so a change to the user scripts, the
bench or the readers that breaks the study shows here and not in a lease of the GPU machine (it once ran a
removed script: every offline stage would have failed there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from engine_fixtures import engine_env

STUDY = ["--arch", "tiny", "--device", "cpu", "--requests", "8", "--prompt", "64", "--output", "16", "--batches", "2",
         "--token-budget", "256", "--offline-max-seqs", "8", "--served-max-seqs", "64", "--rates", "2",
         "--served-requests", "8", "--served-prompt", "63", "--warmup-requests", "2", "--max-model-len", "512",
         "--num-blocks", "256", "--budget-s", "900"]


@pytest.mark.engine
def test_every_stage_of_the_study_runs_and_each_measured_run_is_whole(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "servescope.studies.engine_vs_engine", "--out", str(out), *STUDY],
                          env=engine_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stages = json.loads((out / "engine-vs-engine.json").read_text())["stages"]
    assert set(stages) == {"model", "offline-vllm", "offline-transformers", "compare-offline", "served-vllm",
                           "served-transformers", "compare-rate2"}
    for engine in ("vllm", "transformers"):
        offline = stages[f"offline-{engine}"]
        assert offline["returncode"] == 0 and len(offline["batch_times_s"]) == 2, offline
        run = offline["measured"]["run"]  # the last batch, cut into a run of its own
        assert run["requests"] == run["finished_requests"] == 8 and run["output_tokens"] == 8 * 16, run
        assert run["warnings"] == [], run["warnings"]
        served = stages[f"served-{engine}"]
        assert served["warmup"]["returncode"] == 0
        bench = served["rates"]["2"]
        assert bench["returncode"] == 0 and bench["status"] == "complete", bench
        assert bench["results"]["ok"] == 8 and bench["results"]["output_tokens"] == 8 * 16, bench["results"]
        assert bench["summary"]["run"]["observers"] == ["engine", "client"], bench["summary"]["run"]
    for pair in ("compare-offline", "compare-rate2"):
        compared = stages[pair]
        assert (out / f"report-{pair.split('-', 1)[1]}").is_dir(), compared["report"]
        differences = {d["name"] for d in compared["compare"]["configuration"]["parameter_differences"]}
        assert "attention_implementation" in differences  # the audit's implementation fairness names it
        assert compared["audit"], compared
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"runs/vllm-offline-measured/manifest.json", "runs/transformers-rate2/bench.json"} <= names
    # each server stopped through servescope run, which wrote its manifest (transformers serve needs two SIGINTs
    # after serving), and nothing of the study is left running
    assert {"runs/vllm-server/manifest.json", "runs/transformers-server/manifest.json"} <= names
    assert not [argv for argv in command_lines().values() if str(tmp_path) in argv]


def command_lines() -> dict[int, str]:
    """Return every live process's command line (from /proc)."""
    lines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines[int(entry)] = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return lines
