"""Phases: several loads on one engine, split into one run directory each.

The engine test runs the speculative-decoding study's driver (ngram speculation on the CPU
build: one engine, a warm-up, two replay rates and a closed loop, two repeats) and checks the
split against the engine-wide records and vLLM's own counters over each phase.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import ENGINE_TIMEOUT_S, engine_env
from runbuilder import RunBuilder
from servescope.studies.spec_study import crossover, speedups
from servescope.studies.spec_study_report import lease_to_lease
from servescope.run.phases import Phase, read_phases, record_phase, split_run
from servescope.run.directory import RunDirError
from servescope.run.tables import read_table


def _two_phase_run(tmp_path: Path) -> Path:
    b = RunBuilder(tmp_path, manifest={"engine": {"name": "vllm"}, "workload": {"name": "whole"}})
    b.request("warm-0", arrival_ns=100, queued_ns=101, scheduled_ns=102, emissions=[(1, 110, 1), (2, 120, 1)],
              finished_ns=120, prompt_tokens=4)
    b.request("load-0", arrival_ns=1000, queued_ns=1001, scheduled_ns=1002, emissions=[(3, 1010, 1), (4, 1020, 2)],
              finished_ns=1020, prompt_tokens=4)
    b.request("load-1-a1b2", arrival_ns=1003, queued_ns=1004, scheduled_ns=1005, emissions=[(4, 1020, 1)],
              finished_ns=1020, prompt_tokens=4)
    for step, t in ((1, 105), (2, 115), (3, 1005), (4, 1015)):
        b.row("steps", step_id=step, schedule_start_ns=t)
        b.row("worker_regions", step_id=step, region="forward", host_start_ns=t + 1, host_end_ns=t + 2)
    b.row("worker_regions", step_id=None, region="load_model", host_start_ns=1001, host_end_ns=1002)
    b.row("worker_regions", step_id=None, region="load_model", host_start_ns=10, host_end_ns=20)
    b.row("gpu_samples", time_ns=1010)
    b.row("client_requests", client_request_id="load-1", send_ns=1003, end_ns=1021)
    run = b.write()
    record_phase(run, Phase("warmup", "warm", 100, 130, measured=False))
    record_phase(run, Phase("load", "load", 990, 1030, workload={"name": "trace", "rate": 2.0}))
    return run


def test_split_assigns_requests_by_prefix_and_steps_by_window(tmp_path):
    paths = split_run(_two_phase_run(tmp_path))
    load = paths["load"]
    assert sorted(set(read_table(load, "request_events")["request_id"].to_pylist())) == ["load-0", "load-1-a1b2"]
    assert sorted(read_table(load, "steps")["step_id"].to_pylist()) == [3, 4]
    regions = read_table(load, "worker_regions").to_pylist()
    assert sorted((r["step_id"], r["region"]) for r in regions if r["step_id"]) == [(3, "forward"), (4, "forward")]
    assert [r["host_start_ns"] for r in regions if r["step_id"] is None] == [1001]  # step-less: by window
    assert read_table(load, "gpu_samples").num_rows == 1
    assert read_table(load, "client_requests")["client_request_id"].to_pylist() == ["load-1"]
    manifest = json.loads((load / "manifest.json").read_text())
    assert manifest["workload"] == {"name": "trace", "rate": 2.0} and manifest["engine"] == {"name": "vllm"}
    assert manifest["phase"]["name"] == "load" and manifest["phase"]["parent_run_dir"].endswith("run")
    warm = paths["warmup"]
    assert set(read_table(warm, "token_emissions")["request_id"].to_pylist()) == {"warm-0"}
    assert read_table(warm, "gpu_samples").num_rows == 0
    assert load.parent == tmp_path / "run" / "phases"


def test_phases_that_repeat_or_overlap_are_refused_and_nothing_is_lost(tmp_path):
    run = _two_phase_run(tmp_path)
    with pytest.raises(ValueError, match="repeats phase"):
        record_phase(run, Phase("load", "other", 2000, 3000))
    with pytest.raises(ValueError, match="overlaps"):
        record_phase(run, Phase("late", "late", 1020, 3000))
    with pytest.raises(ValueError, match="directory name"):
        Phase("a/b", "x", 0, 1)
    assert [p.name for p in read_phases(run)] == ["warmup", "load"]


def test_a_run_without_phases_says_so(tmp_path):
    run = RunBuilder(tmp_path).request("a", arrival_ns=0, queued_ns=1, scheduled_ns=2, emissions=[(1, 5, 1)],
                                       finished_ns=5, prompt_tokens=1).write()
    with pytest.raises(RunDirError, match="no phases recorded"):
        split_run(run)
    proc = subprocess.run([sys.executable, "-m", "servescope", "split", str(run)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no phases recorded" in proc.stderr


def test_crossover_interpolates_in_log_rate():
    assert crossover([1.0, 4.0], [1.5, 0.5]) == pytest.approx(2.0)
    assert crossover([1.0, 4.0], [0.9, 0.5]) == "never helps"
    assert crossover([1.0, 4.0], [1.2, 1.1]) == "beyond the highest rate"
    assert crossover([1.0, 4.0, 16.0], [None, 1.5, 0.5]) == pytest.approx(8.0)
    assert crossover([1.0, 4.0], [1.5, 0.5], [True, False]) == "~2 (not resolved)"
    assert crossover([1.0, 4.0], [1.02, 0.98], [False, False]) == "no resolved difference"


def _medians(**by_rate) -> dict:
    return {f"r{rate}": {"e2e_p50_s": {"median": m, "min": lo, "max": hi}, "tpot_p50_s": {"median": m, "min": lo,
                                                                                         "max": hi}}
            for rate, (m, lo, hi) in zip(("1", "4"), by_rate["values"])}


def test_a_tagged_configuration_is_compared_with_its_own_leases_baseline():
    agg = {"ar": _medians(values=[(1.0, 0.9, 1.1), (2.0, 1.9, 2.1)]),
           "ar@l2": _medians(values=[(2.0, 1.9, 2.1), (4.0, 3.9, 4.1)]),
           "draft@l2": _medians(values=[(1.0, 0.95, 1.05), (4.0, 3.8, 4.2)]),
           "draft@l3": _medians(values=[(0.5, 0.45, 0.55), (1.0, 0.95, 1.05)])}
    out = speedups(agg, [1.0, 4.0])
    assert set(out) == {"draft@l2", "draft@l3"}  # ar@l2 is a baseline, not a treatment
    same_lease = out["draft@l2"]["ar@l2"]["e2e_p50_s"]
    assert same_lease["speedup"] == [2.0, 1.0] and same_lease["resolved"] == [True, False]
    assert set(out["draft@l3"]) == {"ar"}  # no baseline on its lease: the untagged one
    assert out["draft@l3"]["ar"]["e2e_p50_s"]["speedup"] == [2.0, 2.0]
    lease = lease_to_lease(agg, [1.0, 4.0])
    assert set(lease) == {"ar@l2"}  # draft has no untagged run to compare with
    assert lease["ar@l2"]["ratio"] == [0.5, 0.5] and lease["ar@l2"]["resolved"] == [True, True]


@pytest.fixture(scope="module")
def ngram_study(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("spec-study")
    proc = subprocess.run(
        [sys.executable, "-m", "servescope.studies.spec_study", "--models-dir", str(tiny_model_dir.parent), "--target",
         tiny_model_dir.name, "--out", str(out), "--configs", "ar,ngram-k3", "--rates", "2,8", "--concurrency", "2",
         "--repeats", "2", "--num-requests", "6", "--phase-seconds", "2", "--warmup", "4", "--max-model-len", "1024"],
        env=engine_env(), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "study.json").read_text())


@pytest.mark.engine
def test_study_phases_partition_the_engine_run(ngram_study):
    out, study = ngram_study
    engine = out / "engines" / "ngram-k3"
    phases = read_phases(engine)
    assert [p.name for p in phases] == ["warmup", "r2-rep0", "r8-rep0", "c2-rep0", "r2-rep1", "r8-rep1", "c2-rep1"]
    all_steps = read_table(engine, "steps")["step_id"].to_pylist()
    seen_steps, seen_requests = set(), set()
    for phase in phases:
        run = out / "runs" / "ngram-k3" / phase.name
        requests = set(read_table(run, "request_events")["request_id"].to_pylist())
        assert requests and all(r.startswith(phase.id_prefix + "-") for r in requests)
        assert len(requests) == phase.workload["requests"] == sum(phase.extra["results"].values())
        steps = set(read_table(run, "steps")["step_id"].to_pylist())
        emitted_in = set(read_table(run, "token_emissions")["step_id"].to_pylist())
        assert emitted_in <= steps, f"{phase.name}: tokens emitted by steps outside its window"
        assert not steps & seen_steps and not requests & seen_requests
        seen_steps |= steps
        seen_requests |= requests
    engine_requests = set(read_table(engine, "request_events")["request_id"].to_pylist())
    assert seen_requests == engine_requests
    emitting = set(read_table(engine, "token_emissions")["step_id"].to_pylist())
    assert emitting <= seen_steps <= set(all_steps)


@pytest.mark.engine
def test_study_acceptance_per_phase_equals_vllms_counters(ngram_study):
    _, study = ngram_study
    points = {k: p for k, p in study["points"].items() if p["config"] == "ngram-k3"}
    assert len(study["points"]) == 12 and not any("error" in p for p in study["points"].values())
    assert not any("acceptance" in p for k, p in study["points"].items() if p["config"] == "ar")
    for name, point in points.items():
        check = point["acceptance"]["agrees_with_vllm"]
        assert check["drafts"]["servescope"] > 0, f"{name}: ngram proposed nothing"
        assert check["equal"], f"{name}: {check}"
    for load in ("r2", "r8", "c2"):
        assert study["aggregate"]["ngram-k3"][load]["tpot_p50_s"]["repeats"] == 2


@pytest.mark.engine
def test_a_phase_is_a_run_every_command_reads(ngram_study):
    out, _ = ngram_study
    run = out / "runs" / "ngram-k3" / "r8-rep1"
    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(run), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["run"]["requests"] == 6
    assert json.loads((run / "manifest.json").read_text())["workload"]["target_rate_per_s"] == 8.0


@pytest.mark.engine
def test_study_report_merges_studies_and_draws_its_figures(ngram_study, tmp_path):
    out, study = ngram_study
    speedup = study["speedup"]["ngram-k3"]["ar"]["e2e_p50_s"]
    assert len(speedup["speedup"]) == 2 and all(s > 0 for s in speedup["speedup"])
    assert speedup["crossover_rate"] is not None
    report = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "servescope.studies.spec_study_report", str(out), f"{out}@again",
                    "--out", str(report), "--step-load", "r2"], check=True, capture_output=True, timeout=300)
    # what merging computes is checked with known answers in test_spec_study_report.py; here: the real
    # study's directories are read, the tag keeps the copy apart, and the figures are drawn
    merged = json.loads((report / "study.json").read_text())
    assert set(merged["aggregate"]) == {"ar", "ngram-k3", "ar@again", "ngram-k3@again"}
    assert set(merged["speedup"]["ngram-k3@again"]) == {"ar@again"}
    tables = (report / "tables.md").read_text()
    assert "| ngram-k3 | 6 | yes |" in tables and "| ngram-k3@again | 6 | yes |" in tables
    for name in ("latency-vs-load", "speedup", "step-times", "tpot-p50-p99"):
        assert (report / f"{name}.png").stat().st_size > 10_000
    clash = subprocess.run([sys.executable, "-m", "servescope.studies.spec_study_report", str(out), str(out),
                            "--out", str(tmp_path / "clash")], capture_output=True, text=True, timeout=300)
    assert clash.returncode != 0 and "DIR@TAG" in clash.stderr


@pytest.mark.engine
def test_study_records_the_worker_threads_cpu_time_per_region(ngram_study):
    """The study turns on SERVESCOPE_THREAD_USAGE: every host-timed region of the engine has the
    worker thread's CPU time, no more than its wall time (read inside it; 20 us for two clocks)."""
    out, study = ngram_study
    regions = read_table(out / "engines" / "ngram-k3", "worker_regions").to_pydict()
    timed = [i for i, h in enumerate(regions["host_start_ns"]) if h is not None]
    assert timed
    for i in timed:
        wall = regions["host_end_ns"][i] - regions["host_start_ns"][i]
        cpu = regions["host_cpu_ns"][i]
        assert cpu is not None and 0 <= cpu <= wall + 20_000, (regions["region"][i], cpu, wall)
        assert regions["voluntary_switches"][i] >= 0 and regions["involuntary_switches"][i] >= 0
    point = study["points"]["ngram-k3/r2-rep0"]
    assert point["host_cpu_ms"]["draft"]["p50"] <= point["host_ms"]["draft"]["p50"] + 0.02
