"""Iteration summary by kind of step, and the speculative summary, on hand-built runs."""

import pytest
from runbuilder import RunBuilder

from servescope.analysis.iterations import iteration_summary, speculative_summary, step_kinds
from servescope.run.data import load_run

MS = 1_000_000


def _step(b, step_id, t0_ms, prefill, decode, *, wait_ms=(1, 4)):
    b.row("steps", step_id=step_id, engine_index=0, schedule_start_ns=t0_ms * MS, schedule_end_ns=(t0_ms + 1) * MS,
          execute_start_ns=(t0_ms + 1) * MS, execute_end_ns=(t0_ms + 1) * MS + 500_000,
          wait_start_ns=(t0_ms + wait_ms[0]) * MS, wait_end_ns=(t0_ms + wait_ms[1]) * MS,
          update_start_ns=(t0_ms + 4) * MS, update_end_ns=(t0_ms + 5) * MS,
          num_prefill_reqs=prefill, num_decode_reqs=decode)


def test_kinds():
    import numpy as np

    assert step_kinds(np.array([1, 0, 2, 0]), np.array([0, 3, 1, 0])).tolist() == ["prefill", "decode", "mixed",
                                                                                    "empty"]


def test_iteration_summary_splits_steps_by_kind_and_adds_up(tmp_path):
    b = RunBuilder(tmp_path)
    _step(b, 0, 0, 1, 0)  # prefill, 5 ms
    _step(b, 1, 5, 0, 1)  # decode, back to back
    _step(b, 2, 10, 1, 1)  # mixed
    _step(b, 3, 25, 0, 1)  # decode after 10 ms idle
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, emissions=[(0, 5 * MS, 1), (1, 10 * MS, 1)],
              finished_ns=10 * MS, prompt_tokens=8)
    s = iteration_summary(load_run(b.write()))
    assert s["steps"] == 4 and s["gpu_time_source"] == "host_wait"
    assert {k: v["steps"] for k, v in s["by_kind"].items()} == {"prefill": 1, "decode": 2, "mixed": 1}
    assert s["by_kind"]["decode"]["idle_s"]["max"] == pytest.approx(0.010)
    assert s["all"]["schedule_s"]["p50"] == pytest.approx(0.001)
    assert s["all"]["wait_s"]["p50"] == pytest.approx(0.003)
    # by hand: iterations 5, 5, 5, 15 ms (update_end to update_end; step 0 from its schedule_start);
    # idle 0, 0, 0, 10 ms (step 3 starts 10 ms after step 2's update); GPU = host wait 3 ms each
    # (no worker regions, and 3 ms fits in every non-idle part); CPU overhead = the rest, 2 ms each
    total = s["all"]
    assert total["iteration_s"]["mean"] == pytest.approx(0.0075)
    assert total["iteration_s"]["max"] == pytest.approx(0.015)
    assert total["idle_s"]["mean"] == pytest.approx(0.0025)
    assert total["gpu_s"]["mean"] == pytest.approx(0.003) and total["gpu_s"]["max"] == pytest.approx(0.003)
    assert total["cpu_overhead_s"]["mean"] == pytest.approx(0.002) and total["cpu_overhead_s"]["max"] == pytest.approx(0.002)


def test_speculative_summary_counts_prefix_acceptance(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0,
              emissions=[(0, 1 * MS, 1), (1, 2 * MS, 3, 3, 2), (2, 3 * MS, 1, 3, 0), (3, 4 * MS, 4, 3, 3)],
              finished_ns=4 * MS, prompt_tokens=4)
    spec = speculative_summary(load_run(b.write()))
    assert spec["drafts"] == 3 and spec["draft_tokens"] == 9 and spec["accepted_tokens"] == 5
    assert spec["accepted_per_position"] == [2, 2, 1]
    assert spec["mean_acceptance_length"] == pytest.approx((3 + 1 + 4) / 3)


def test_no_speculation_gives_none(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, emissions=[(0, MS, 1)], finished_ns=MS, prompt_tokens=4)
    assert speculative_summary(load_run(b.write())) is None


def test_gpu_bubbles_from_stamped_regions(tmp_path):
    import numpy as np

    from servescope.analysis.iterations import gpu_bubbles_s

    b = RunBuilder(tmp_path)
    for step, (g0, g1) in enumerate([(100, 200), (230, 300), (300, 420)]):  # GPU times, us
        b.row("worker_regions", step_id=step, rank=0, region="execute_model", host_start_ns=step * 1000,
              host_end_ns=step * 1000 + 10, gpu_ns=(g1 - g0) * 1000, gpu_start_ns=g0 * 1000, gpu_end_ns=g1 * 1000)
    b.row("worker_regions", step_id=1, rank=0, region="sample", host_start_ns=1001, host_end_ns=1002,
          gpu_ns=5000, gpu_start_ns=310_000, gpu_end_ns=315_000)  # ends after... still inside step 1's span
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, emissions=[(0, 1, 1)], finished_ns=1, prompt_tokens=1)
    run = load_run(b.write())
    bubbles = gpu_bubbles_s(run.worker_regions, np.array([0, 1, 2, 7]))
    assert np.isnan(bubbles[0]) and np.isnan(bubbles[3])
    assert bubbles[1] == pytest.approx(30e-6)
    assert bubbles[2] == pytest.approx(0.0)  # step 1's last GPU end (315 us) is after step 2's start: no gap
