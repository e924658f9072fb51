"""Ranks of a multi-worker run (analysis/rank_skew.py, the (engine, step) GPU-time join of stalls.py) on runs built
from rows.py rows: known spans, collectives and stages in, the skew, slowest rank, communication, pipeline handoffs
and stage idle the analysis must report out (each expected number written out by hand below)."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runbuilder import RunBuilder

from servescope.analysis.rank_skew import (pipeline_summary, rank_summary, step_communication_ns, step_groups)
from servescope.analysis.stalls import step_arrays, step_gpu_time_ns
from servescope.analysis.summary import analyze_run, summary_text
from servescope.run.data import load_run
from servescope.run.directory import rows_to_table
from servescope.run.names import Region, Table
from servescope.run.parts import META_RUN_ID, META_TABLE, index_existing_part
from servescope.run.rows import StepRow, WorkerRegionRow
from servescope.run.schema import TABLES

US = 1_000
MS = 1_000_000


def region(step, rank, name, start_us, end_us, *, engine=0, tp=None, pp=0, gpu_us=None, gpu_start_us=None,
           gpu_end_us=None) -> dict:
    """One worker_regions row (times in microseconds); tp defaults to the rank."""
    return WorkerRegionRow(
        step_id=step, rank=rank, region=name, host_start_ns=start_us * US, host_end_ns=end_us * US,
        gpu_ns=None if gpu_us is None else gpu_us * US,
        gpu_start_ns=None if gpu_start_us is None else gpu_start_us * US,
        gpu_end_ns=None if gpu_end_us is None else gpu_end_us * US,
        engine_index=engine, tp_rank=rank if tp is None else tp, pp_rank=pp)._asdict()


def step_row(step, engine=0, start_us=0, end_us=1000, wait_us=(100, 900)) -> dict:
    return StepRow(step_id=step, engine_index=engine, schedule_start_ns=start_us * US, schedule_end_ns=start_us * US + 1,
                   execute_start_ns=None, execute_end_ns=None, wait_start_ns=wait_us[0] * US,
                   wait_end_ns=wait_us[1] * US, update_start_ns=None, update_end_ns=end_us * US,
                   engine_timestamp_ns=None, total_scheduled_tokens=8, num_prefill_reqs=0, num_prefill_tokens=0,
                   num_decode_reqs=8, num_decode_tokens=8, num_spec_tokens=0, num_running_reqs=8,
                   num_waiting_reqs=0, kv_cache_usage=0.1, num_preempted_reqs=0, num_emitted_tokens=8,
                   num_finished_reqs=0)._asdict()


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[Table.WORKER_REGIONS].arrow_schema)


# Tensor parallelism, 2 ranks, host clock. Per step and rank: (first start, last end) in us, collectives' host us.
TP_STEPS = {
    # step: {rank: ((start, end), [collective durations])}
    0: {0: ((0, 500), [40, 60]), 1: ((30, 520), [10, 20])},  # rank 1 ends last: skew 20, start skew 30
    1: {0: ((1000, 1700), [100, 100]), 1: ((1010, 1600), [150, 250])},  # rank 0 ends last: skew 100
    2: {0: ((2000, 2300), [5]), 1: ((2000, 2300), [])},  # a tie (slowest: rank 0); rank 1 lost its collectives
}


def tp_rows() -> list[dict]:
    rows = []
    for step, ranks in TP_STEPS.items():
        for rank, ((start, end), collectives) in ranks.items():
            rows.append(region(step, rank, Region.EXECUTE_MODEL, start, end - 100))
            rows.append(region(step, rank, Region.SAMPLE_TOKENS, end - 50, end))
            t = start + 10
            for duration in collectives:
                rows.append(region(step, rank, Region.COLLECTIVE, t, t + duration))
                t += duration + 1
    rows.append(region(None, 0, Region.COLLECTIVE, 0, 99_999))  # warm-up: no step, left out
    return rows


def tp2_run(tmp_path, name="tp2"):
    """A run directory: TP_STEPS as three engine steps with one request (the steps' host wait: start + 10 us to
    end - 10 us; no CUDA events)."""
    b = RunBuilder(tmp_path, name)
    for step, (start, end) in ((0, (0, 600)), (1, (1000, 1800)), (2, (2000, 2400))):
        b.row(Table.STEPS, **step_row(step, start_us=start, end_us=end, wait_us=(start + 10, end - 10)))
    for row in tp_rows():
        b.row(Table.WORKER_REGIONS, **row)
    b.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, prompt_tokens=4,
              emissions=[(0, 600 * US, 1), (1, 1800 * US, 1), (2, 2400 * US, 1)], finished_ns=2400 * US)
    return b.write()


def test_skew_slowest_rank_and_communication_per_step_on_the_host_clock():
    groups = step_groups(table(tp_rows()))
    assert groups.step_id.tolist() == [0, 1, 2] and groups.ranks.tolist() == [2, 2, 2]
    assert not groups.on_gpu_clock.any()
    assert (groups.skew_ns / US).tolist() == [20, 100, 0]
    assert (groups.start_skew_ns / US).tolist() == [30, 10, 0]
    assert groups.slowest_rank.tolist() == [1, 0, 0]
    # communication: the least-waiting rank's summed collective time; wait: most minus least
    assert (groups.communication_ns[:2] / US).tolist() == [30, 200]
    assert (groups.collective_wait_ns[:2] / US).tolist() == [70, 200]
    assert math.isnan(groups.communication_ns[2]) and math.isnan(groups.collective_wait_ns[2])
    assert groups.collectives.tolist() == [2, 2, 1]


def test_the_gpu_clock_is_used_where_every_rank_has_stamps():
    rows = [
        # step 0: both ranks stamped; on the host rank 0 ends last, on the GPU rank 1 does (by 7 us)
        region(0, 0, Region.FORWARD, 0, 900, gpu_us=500, gpu_start_us=100, gpu_end_us=600),
        region(0, 1, Region.FORWARD, 0, 800, gpu_us=507, gpu_start_us=100, gpu_end_us=607),
        # step 1: only rank 0 stamped: host clock, where rank 1 ends 40 us later
        region(1, 0, Region.FORWARD, 1000, 1900, gpu_us=500, gpu_start_us=1100, gpu_end_us=1600),
        region(1, 1, Region.FORWARD, 1000, 1940),
        # step 2: a forward_gpu row (stamps only, no host times) beside host-timed regions on both ranks
        region(2, 0, Region.EXECUTE_MODEL, 2000, 2100, gpu_start_us=2050, gpu_end_us=2400),
        region(2, 1, Region.EXECUTE_MODEL, 2000, 2100, gpu_start_us=2050, gpu_end_us=2450),
    ]
    rows[4]["host_start_ns"] = rows[4]["host_end_ns"] = None  # rank 0's step 2 is known on the GPU clock only
    groups = step_groups(table(rows))
    assert groups.on_gpu_clock.tolist() == [True, False, True]
    assert (groups.skew_ns / US).tolist() == [7, 40, 50]
    assert groups.slowest_rank.tolist() == [1, 1, 1]


def test_engines_are_never_mixed_and_the_gpu_time_join_is_keyed_by_engine(tmp_path):
    """Data parallelism: two EngineCores number their steps from 0 each; worker_regions carry engine_index."""
    b = RunBuilder(tmp_path)
    gpu_us = {(0, 0): (300, 280), (0, 1): (310, 305), (1, 0): (900, 950), (1, 1): (100, 90)}
    for (engine, step), per_rank in gpu_us.items():
        b.row(Table.STEPS, **step_row(step, engine, start_us=step * 1000, end_us=step * 1000 + 1000))
        for rank, g in enumerate(per_rank):
            start = step * 1000 + 10 * engine
            b.row(Table.WORKER_REGIONS, **region(step, rank, Region.EXECUTE_MODEL, start, start + 500 + 7 * rank,
                                                 engine=engine, gpu_us=g))
    run = load_run(b.write())
    engines, steps, gpu = step_gpu_time_ns(run.worker_regions)
    assert list(zip(engines.tolist(), steps.tolist(), (gpu / US).tolist())) == [
        (0, 0, 300), (0, 1, 310), (1, 0, 950), (1, 1, 100)]  # the slowest rank of each engine's step
    arrays = step_arrays(run.steps, run.worker_regions)
    assert list(zip(arrays.engine_index.tolist(), arrays.step_id.tolist(), (arrays.gpu_ns / US).tolist())) == [
        (0, 0, 300), (0, 1, 310), (1, 0, 950), (1, 1, 100)]
    groups = step_groups(run.worker_regions)
    assert groups.engine_index.tolist() == [0, 0, 1, 1] and (groups.skew_ns / US).tolist() == [7] * 4
    summary = rank_summary(run)
    assert [(p["engine_index"], p["rank"]) for p in summary["placement"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_pipeline_stages_add_up_and_each_stage_takes_its_slowest_rank():
    rows = [region(0, r, Region.FORWARD, 0, 100, tp=r % 2, pp=r // 2, gpu_us=g)
            for r, g in enumerate((40, 50, 70, 60))]  # stage 0: ranks 0, 1; stage 1: ranks 2, 3
    engines, steps, gpu = step_gpu_time_ns(table(rows))
    assert (gpu / US).tolist() == [50 + 70]


# Pipeline parallelism, 2 stages x 1 rank. step: ((stage 0 span), (stage 1 span)) in us.
PP_STEPS = {0: ((0, 100), (130, 300)), 1: ((110, 200), (300, 420)), 2: ((260, 350), (330, 500))}


def test_pipeline_handoffs_stage_idle_and_busy_share():
    rows = []
    for step, spans in PP_STEPS.items():
        for stage, (start, end) in enumerate(spans):
            rows.append(region(step, stage, Region.EXECUTE_MODEL, start, end, tp=0, pp=stage))
    groups = step_groups(table(rows))
    assert groups.pp_rank.tolist() == [0, 1, 0, 1, 0, 1]
    assert np.isnan(groups.skew_ns).all()  # one rank per stage: no skew
    pipe = pipeline_summary(groups)
    assert pipe["stages"] == 2 and pipe["steps"] == 3
    # handoff = stage 1 start - stage 0 end: 30, 100, -20 (stage 1 entered step 2 before its input existed)
    handoff = pipe["handoff_s"]["0->1"]
    assert handoff["count"] == 3 and handoff["max"] == pytest.approx(100e-6) and handoff["mean"] == pytest.approx(
        (30 + 100 - 20) / 3 * 1e-6)
    # stage 0 idle before steps 1, 2: 110 - 100 = 10, 260 - 200 = 60; stage 1: 300 - 300 = 0, 330 - 420 -> 0
    assert pipe["stage_idle_s"]["0"]["mean"] == pytest.approx(35e-6)
    assert pipe["stage_idle_s"]["1"]["max"] == 0.0
    # busy: stage 0 = 100 + 90 + 90 = 280 of the run's 500 us; stage 1 = 130..500 = 370
    assert pipe["stage_busy_share"] == {"0": pytest.approx(280 / 500), "1": pytest.approx(370 / 500)}


def test_step_communication_is_zero_on_one_rank_and_nan_where_not_measured():
    rows = [region(0, 0, Region.FORWARD, 0, 100), region(1, 0, Region.FORWARD, 100, 200)]  # one rank
    rows += [region(0, 0, Region.FORWARD, 0, 100, engine=1), region(0, 1, Region.FORWARD, 0, 100, engine=1)]
    groups = step_groups(table(rows))
    comm = step_communication_ns(groups, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 5]))
    assert comm[:2].tolist() == [0.0, 0.0] and math.isnan(comm[2]) and math.isnan(comm[3])
    tp = step_groups(table(tp_rows()))
    assert (step_communication_ns(tp, np.zeros(2, dtype=np.int64), np.array([1, 0])) / US).tolist() == [200, 30]


def test_analyze_json_gets_a_ranks_block_only_with_several_ranks(tmp_path):
    result = analyze_run(tp2_run(tmp_path))
    ranks = json.loads(json.dumps(result["ranks"]))  # JSON-able as it is
    assert [(p["rank"], p["tp_rank"], p["pp_rank"]) for p in ranks["placement"]] == [(0, 0, 0), (1, 1, 0)]
    assert ranks["groups"] == 3 and ranks["clock"] == "host" and ranks["slowest_rank"] == {"0": 2, "1": 1}
    assert ranks["skew_s"]["max"] == pytest.approx(100e-6) and ranks["skew_s"]["p50"] == pytest.approx(20e-6)
    comm = ranks["communication"]
    assert comm["measured_groups"] == 2 and comm["communication_s"]["mean"] == pytest.approx(115e-6)
    # the steps' GPU time is their host wait (no CUDA events): 580 and 780 us; step 2 is not measured
    share = comm["share_of_step_gpu_time"]
    assert share["count"] == 2 and share["max"] == pytest.approx(200 / 780) and share["mean"] == pytest.approx(
        (30 / 580 + 200 / 780) / 2)
    assert "pipeline" not in ranks
    assert "rank skew" in summary_text(result)
    single = RunBuilder(tmp_path, "one")
    single.row(Table.STEPS, **step_row(0))
    single.row(Table.WORKER_REGIONS, **region(0, 0, Region.FORWARD, 0, 100))
    single.request("a", arrival_ns=0, queued_ns=0, scheduled_ns=0, prompt_tokens=4, emissions=[(0, 1000 * US, 1)],
                   finished_ns=1000 * US)
    assert "ranks" not in analyze_run(single.write())


def test_rows_and_parts_recorded_before_tp_and_pp_rank_read_as_null_without_a_warning(tmp_path):
    old = WorkerRegionRow(step_id=1, rank=0, region="forward", host_start_ns=1, host_end_ns=2)[:-2]
    assert rows_to_table(Table.WORKER_REGIONS, [old]).to_pylist()[0]["tp_rank"] is None  # an older spool's row
    b = RunBuilder(tmp_path)
    b.row(Table.STEPS, **step_row(0))
    run_dir = b.write()
    directory = run_dir / "tables" / Table.WORKER_REGIONS
    directory.mkdir(parents=True, exist_ok=True)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    columns = [c for c in TABLES[Table.WORKER_REGIONS].column_names if c not in ("tp_rank", "pp_rank")]
    data = table([region(0, 0, Region.FORWARD, 0, 100)]).select(columns).replace_schema_metadata(
        {META_RUN_ID: run_id.encode(), META_TABLE: Table.WORKER_REGIONS.encode()})
    pq.write_table(data, directory / "old-1.parquet")
    index_existing_part(run_dir, Table.WORKER_REGIONS, directory / "old-1.parquet", writer="old-1")
    run = load_run(run_dir)
    assert run.warnings == [] and run.worker_regions.column("tp_rank").to_pylist() == [None]
    # the contrast: a column that was always there, missing from a part
    pq.write_table(data.drop_columns(["rank"]), directory / "older-1.parquet")
    index_existing_part(run_dir, Table.WORKER_REGIONS, directory / "older-1.parquet", writer="older-1")
    assert any("rank" in w for w in load_run(run_dir).warnings)
