"""The per-step split of a speculative step (analysis/speculative_steps.py) on a run built from rows.py rows:
known region times in, the verify / rejection / draft parts the analysis must report out."""

import math

import pytest
from runbuilder import RunBuilder

from servescope.analysis.speculative_steps import speculative_step_summary, step_split
from servescope.analysis.summary import analyze_run, summary_text
from servescope.run.data import load_run
from servescope.run.names import Region, Table
from servescope.run.rows import StepRow, WorkerRegionRow

MS = 1_000_000

# step -> (drafted tokens verified, prompt tokens) and its regions: region -> (host ms, GPU ms or None)
STEPS = {
    0: ((0, 64), {Region.FORWARD: (10, 8), Region.SAMPLE: (1, 0.5), Region.DRAFT: (3, 2.5),
                  Region.DRAFT_DECODE: (2, 1.8)}),  # prefill; the draft after it
    1: ((8, 0), {Region.FORWARD: (5, 4), Region.SAMPLE: (1.5, 1.2), Region.REJECTION_SAMPLE: (0.6, 0.4),
                 Region.DRAFT: (3, 2), Region.DRAFT_DECODE: (2, 1.5)}),
    2: ((8, 0), {Region.FORWARD: (6, 5), Region.SAMPLE: (1.4, 1.0), Region.REJECTION_SAMPLE: (0.5, 0.3),
                 Region.DRAFT: (3.2, 2.2), Region.DRAFT_DECODE: (2.1, 1.6)}),
    3: ((4, 32), {Region.FORWARD: (12, 10), Region.SAMPLE: (2, 1.5), Region.REJECTION_SAMPLE: (0.7, 0.5),
                  Region.DRAFT: (4, 3), Region.DRAFT_DECODE: (2.5, 2)}),  # verify beside a prompt chunk
    4: ((0, 0), {Region.FORWARD: (4, 3), Region.SAMPLE: (1, 0.7)}),  # a plain decode step
    5: ((8, 0), {Region.FORWARD: (5.5, None), Region.SAMPLE: (1.2, 0.9)}),  # verify, rejection region lost
}


def build(tmp_path):
    b = RunBuilder(tmp_path)
    t = 0
    for step_id, ((spec, prompt), regions) in STEPS.items():
        b.row(Table.STEPS, **StepRow(
            step_id=step_id, engine_index=0, schedule_start_ns=t, schedule_end_ns=t + MS, execute_start_ns=t + MS,
            execute_end_ns=t + 2 * MS, wait_start_ns=t + 2 * MS, wait_end_ns=t + 20 * MS, update_start_ns=t + 20 * MS,
            update_end_ns=t + 21 * MS, engine_timestamp_ns=None, total_scheduled_tokens=spec + prompt + 4,
            num_prefill_reqs=1 if prompt else 0, num_prefill_tokens=prompt, num_decode_reqs=2,
            num_decode_tokens=spec + 4, num_spec_tokens=spec, num_running_reqs=3, num_waiting_reqs=0,
            kv_cache_usage=0.1, num_preempted_reqs=0, num_emitted_tokens=4, num_finished_reqs=0)._asdict())
        for name, (host_ms, gpu_ms) in regions.items():
            region_row(b, step_id, name, t + 2 * MS, host_ms, gpu_ms)
        t += 25 * MS
    region_row(b, 1, Region.DRAFT, 0, 90, 90, rank=1)  # a second tensor-parallel rank: not added
    region_row(b, None, Region.DRAFT, 0, 70, 70)  # a dummy proposal outside any step
    region_row(b, 99, Region.DRAFT, 0, 70, 70)  # a step the steps table does not hold
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, prompt_tokens=64,
              emissions=[(0, 21 * MS, 1), (1, 46 * MS, 3, 4, 2), (2, 71 * MS, 5, 4, 4), (3, 96 * MS, 1, 4, 0)],
              finished_ns=96 * MS)
    return b.write()


def region_row(b, step_id, name, start_ns, host_ms, gpu_ms, rank=0):
    b.row(Table.WORKER_REGIONS, **WorkerRegionRow(
        step_id=step_id, rank=rank, region=name, host_start_ns=start_ns, host_end_ns=start_ns + round(host_ms * MS),
        gpu_ns=None if gpu_ms is None else round(gpu_ms * MS), engine_index=0)._asdict())


def test_each_step_gets_its_verify_forward_rejection_and_draft_parts(tmp_path):
    run = load_run(build(tmp_path))
    split = step_split(run.steps, run.worker_regions)
    assert split["step_id"].tolist() == [0, 1, 2, 3, 4, 5]
    assert split["verify"].tolist() == [False, True, True, True, False, True]
    gpu, host = split["gpu"], split["host"]
    assert [round(v, 6) if not math.isnan(v) else None for v in gpu["verify_forward"]] == [None, 4, 5, 10, None, None]
    assert [round(v, 6) if not math.isnan(v) else None for v in gpu["plain_forward"]] == [8, None, None, None, 3, None]
    assert host["verify_forward"][5] == pytest.approx(5.5)  # host time without a GPU time
    assert gpu["draft"][1] == pytest.approx(2)  # rank 1's 90 ms is not added
    assert gpu["draft_prefill"].tolist()[:4] == pytest.approx([0.7, 0.5, 0.6, 1.0])  # draft - draft_decode
    assert math.isnan(gpu["rejection_sample"][5]) and math.isnan(gpu["draft"][4])


def test_the_summary_counts_steps_and_flags_the_missing_rejection_region(tmp_path):
    s = speculative_step_summary(load_run(build(tmp_path)))
    assert s["steps"] == {"verify": 3, "verify_with_prefill": 1, "plain": 2, "with_draft": 4,
                          "plain_with_rejection_sample": 0}
    assert s["missing"] == {"verify_steps_without_forward": 0, "verify_steps_without_rejection_sample": 1,
                            "draft_decode_without_draft": 0}
    assert s["gpu_ms"]["rejection_sample"]["count"] == 3
    assert s["gpu_ms"]["rejection_sample"]["mean"] == pytest.approx((0.4 + 0.3 + 0.5) / 3)
    assert s["gpu_ms"]["draft_prefill"]["mean"] == pytest.approx((0.7 + 0.5 + 0.6 + 1.0) / 4)
    only = s["verify_steps_only"]["gpu_ms"]  # steps 1, 2, 5 (step 5 has no GPU forward time)
    assert only["verify_forward"]["count"] == 2 and only["verify_forward"]["mean"] == pytest.approx(4.5)
    assert s["verify_steps_only"]["host_ms"]["verify_forward"]["max"] == pytest.approx(6)
    # the draft's share of the GPU time of steps 1 and 2 (step 5 has no draft)
    share = s["draft_share_of_step_gpu"]
    assert share["count"] == 2
    assert share["mean"] == pytest.approx((2 / (4 + 1.2 + 2) + 2.2 / (5 + 1.0 + 2.2)) / 2)


def test_a_run_without_drafted_tokens_has_no_split(tmp_path):
    b = RunBuilder(tmp_path)
    b.row(Table.STEPS, step_id=0, engine_index=0, schedule_start_ns=0, schedule_end_ns=1, update_start_ns=2,
          update_end_ns=3, num_spec_tokens=0, num_prefill_tokens=8)
    region_row(b, 0, Region.FORWARD, 0, 5, 4)
    assert speculative_step_summary(load_run(b.write())) is None


def test_analyze_puts_the_split_under_speculative_steps(tmp_path):
    result = analyze_run(build(tmp_path), include_requests=False)
    steps = result["speculative"]["steps"]
    assert steps["steps"]["verify"] == 3 and steps["missing"]["verify_steps_without_rejection_sample"] == 1
    text = summary_text(result)
    assert "per verify step (3 steps)" in text
    assert "rejection_sample" in text and "draft_prefill" in text
