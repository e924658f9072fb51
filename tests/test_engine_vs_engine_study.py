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


# --------------------------------------------------------------------------- the stages, without engines


@pytest.fixture
def stubbed_study(monkeypatch):
    """The study with every engine call replaced: returns the list of what ran (stage work, bench calls)."""
    from servescope.studies import engine_vs_engine as study

    ran = []

    class Server:
        def __init__(self, engine, model_dir, run_dir, env, args):
            self.url, self.run_dir = "http://127.0.0.1:1", run_dir

        def wait_healthy(self, timeout_s):
            pass

        def stop(self):
            pass

    def bench(engine, url, model_dir, server_run, out, trace, *, rate, count, seed, env, timeout_s):
        ran.append(("bench", out.name, seed))
        return {"returncode": 1}  # no run to summarize

    monkeypatch.setattr(study, "prepare_model", lambda arch, model_dir, device: model_dir)
    monkeypatch.setattr(study, "RecordedEngineServer", Server)
    monkeypatch.setattr(study, "run_bench", bench)
    monkeypatch.setattr(study.Study, "offline", lambda self, engine: ran.append(f"offline-{engine}") or {})
    monkeypatch.setattr(study.Study, "compare", lambda self, name, *runs: ran.append(f"compare-{name}") or {})
    return study, ran


def test_skip_offline_runs_the_served_half_only(stubbed_study, tmp_path):
    """The next lease after a run whose served half was cut by its time budget runs only that half."""
    study, ran = stubbed_study
    out = tmp_path / "study"
    result = study.Study(study.parse_args(["--out", str(out), "--skip-offline", "--rates", "4,16"])).run()
    assert [r for r in ran if isinstance(r, str)] == ["compare-rate4", "compare-rate16"]
    assert [r[1] for r in ran if isinstance(r, tuple)] == ["vllm-warmup", "vllm-rate4", "vllm-rate16",
                                                           "transformers-warmup", "transformers-rate4",
                                                           "transformers-rate16"]
    stages = json.loads((out / "engine-vs-engine.json").read_text())["stages"]
    assert stages == result["stages"]
    assert set(stages) == {"model", "compare-offline", "served-vllm", "served-transformers", "compare-rate4",
                           "compare-rate16"}
    assert stages["compare-offline"] == {"skipped": "--skip-offline: no offline runs"}
    assert result["settings"]["skip_offline"] is True


def test_skip_served_runs_the_offline_half_only(stubbed_study, tmp_path):
    study, ran = stubbed_study
    result = study.Study(study.parse_args(["--out", str(tmp_path / "study"), "--skip-served"])).run()
    assert ran == ["offline-vllm", "offline-transformers", "compare-offline"]
    assert set(result["stages"]) == {"model", "offline-vllm", "offline-transformers", "compare-offline"}


def test_each_bench_call_of_a_server_draws_its_own_prompts_and_both_engines_the_same(stubbed_study, tmp_path):
    """One seed for the warm-up and every rate sent the same prompts again: vLLM's prefix cache served them
    (H200, 2026-12-02: benchmarks/results/h200-engine-vs-engine-1/runs.tar.gz, runs/vllm-server.log)."""
    study, ran = stubbed_study
    study.Study(study.parse_args(["--out", str(tmp_path / "study"), "--skip-offline", "--rates", "4,16"])).run()
    seeds = {name: seed for _, name, seed in (r for r in ran if isinstance(r, tuple))}
    for engine in ("vllm", "transformers"):
        calls = [seeds[f"{engine}-{call}"] for call in ("warmup", "rate4", "rate16")]
        assert len(set(calls)) == 3, calls
        assert calls == [seeds[f"vllm-{call}"] for call in ("warmup", "rate4", "rate16")]
