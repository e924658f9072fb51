"""The views of a multi-rank run: Perfetto's one track per rank (named with its TP / PP rank), the report's rank
figures (drawn only when a run has several ranks) and compare's split of GPU time into compute and communication
(TP=1 against TP=2: a one-rank run communicates nothing). Runs built from rows.py rows with known times."""

import json

import pytest
from runbuilder import RunBuilder
from test_rank_skew import US, region, step_row, tp2_run

from servescope.analysis.compare import RANK_PARTS, compare_run_dirs
from servescope.export.perfetto import write_perfetto_trace
from servescope.report.build import write_report
from servescope.run.names import Region, Table


def tp1_run(tmp_path, name="tp1"):
    """The same three steps on one rank: no collectives."""
    b = RunBuilder(tmp_path, name)
    for step, (start, end) in ((0, (0, 700)), (1, (1000, 1900)), (2, (2000, 2500))):
        b.row(Table.STEPS, **step_row(step, start_us=start, end_us=end, wait_us=(start + 10, end - 10)))
        b.row(Table.WORKER_REGIONS, **region(step, 0, Region.EXECUTE_MODEL, start, end - 50))
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, prompt_tokens=4,
              emissions=[(0, 700 * US, 1), (1, 1900 * US, 1), (2, 2500 * US, 1)], finished_ns=2500 * US)
    return b.write()


def test_perfetto_has_one_track_per_rank_named_with_its_tensor_and_pipeline_rank(tmp_path):
    write_perfetto_trace(tp2_run(tmp_path), tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"rank 0, TP 0, PP 0", "rank 1, TP 1, PP 0"} <= threads
    collectives = [e for e in events if e.get("ph") == "X" and e["name"] == Region.COLLECTIVE]
    # 4 + 4 + 1 in the steps, and the warm-up's (no step): every recorded collective is on the timeline
    assert len(collectives) == 10 and {e["args"]["tp_rank"] for e in collectives} == {0, 1}


def test_the_report_draws_the_rank_figures_only_for_runs_with_several_ranks(tmp_path):
    one = write_report([tp1_run(tmp_path)], tmp_path / "one", show_progress=False)
    assert "rank-skew" not in one.read_text()
    both = write_report([tp1_run(tmp_path, "tp1b"), tp2_run(tmp_path)], tmp_path / "both", show_progress=False)
    figures = sorted(p.name for p in (tmp_path / "both" / "figures").iterdir())
    assert any(name.endswith("-rank-timeline.png") for name in figures)
    assert any(name.endswith("-rank-skew.png") for name in figures)
    assert "Ranks: a few steps around the largest rank skew" in both.read_text()


def test_compare_splits_gpu_time_into_compute_and_communication(tmp_path):
    result = compare_run_dirs([str(tp1_run(tmp_path))], [str(tp2_run(tmp_path))], n_boot=50)
    it = result["iteration"]
    assert set(RANK_PARTS) <= set(it)
    # the one-rank baseline communicates nothing; the TP=2 run 30 and 200 us in the steps where it was measured
    assert it["communication"]["mean"]["baseline"] == 0.0
    assert it["communication"]["mean"]["treatment"] == pytest.approx(115e-6)
    # GPU time is the host wait without CUDA events: 680, 880, 480 us (TP=1); 580, 780 (TP=2, measured steps)
    assert it["gpu_compute"]["mean"]["baseline"] == pytest.approx((680 + 880 + 480) / 3 * 1e-6)
    assert it["gpu_compute"]["mean"]["treatment"] == pytest.approx((580 - 30 + 780 - 200) / 2 * 1e-6)
    assert "communication between ranks by" in result["statement"]
    single = compare_run_dirs([str(tp1_run(tmp_path, "a"))], [str(tp1_run(tmp_path, "b"))], n_boot=10)
    assert not set(RANK_PARTS) & set(single["iteration"])  # one rank on both sides: nothing to split
