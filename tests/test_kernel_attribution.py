"""Kernel attribution (analysis/kernel_attribution.py) on constructed intervals with known answers."""

import numpy as np
import pyarrow as pa
import pytest

from servescope.analysis.kernel_attribution import (
    attribute_kernels,
    kernel_attribution_summary,
    launch_to_start_ns,
    region_intervals,
    union_length_ns,
)
from servescope.record.profile_window import PROFILE_SCHEMA
from servescope.run.schema import TABLES

US = 1000


def regions_table(rows):
    schema = TABLES["worker_regions"].arrow_schema
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def gpu_region(step, name, start_us, end_us, event_us):
    return {"step_id": step, "rank": 0, "region": name, "host_start_ns": 0, "host_end_ns": 1,
            "gpu_ns": event_us * US, "gpu_start_ns": start_us * US, "gpu_end_ns": end_us * US}


def profile_table(kernels, kind="kernel"):
    rows = [{"kind": kind, "name": name, "device_index": 0, "lane": 7, "start_ns": a * US, "end_ns": b * US,
             "correlation_id": i + 1, "profiler_start_ns": a * US} for i, (name, a, b) in enumerate(kernels)]
    return pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA)


# Two steps on a GPU (us). Step 1: execute_model [0, 100] holds forward [10, 60] and sample [70, 90];
# step 2: execute_model [120, 220] holds forward [130, 200]. Event times (CUDA events) given apart.
REGIONS = regions_table([
    gpu_region(1, "execute_model", 0, 100, 100), gpu_region(1, "forward", 10, 60, 50), gpu_region(1, "sample", 70, 90, 20),
    gpu_region(2, "execute_model", 120, 220, 100), gpu_region(2, "forward", 130, 200, 70),
])
KERNELS = [
    ("gemm", 12, 20), ("gemm", 20, 30), ("attn", 40, 55),  # forward of step 1: union 18 + 15 = 33
    ("sampler", 72, 80),  # sample: 8
    ("prepare", 62, 66),  # execute_model only: 4
    ("copy_out", 95, 105),  # crosses execute_model's end: straddling, 5 us of it inside
    ("between", 106, 116),  # between the steps: outside every region
    ("gemm", 130, 190), ("attn", 150, 170),  # forward of step 2, overlapping: union 60
    ("tail", 195, 210),  # crosses forward's end inside execute_model: held by execute_model
]
FACTS = {"rank": 0, "steps": [1, 2], "profiled_from_ns": 0, "profiled_to_ns": 300 * US}


def test_union_of_intervals():
    assert union_length_ns(np.array([0, 5, 20]), np.array([10, 15, 30])) == 25
    assert union_length_ns(np.array([0, 10]), np.array([100, 20])) == 100  # nested operators count once
    assert union_length_ns(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0


def test_each_kernel_goes_to_the_innermost_region_holding_it():
    regions = region_intervals(REGIONS, "gpu")
    start = np.array([a for _, a, _ in KERNELS]) * US
    end = np.array([b for _, _, b in KERNELS]) * US
    owner = attribute_kernels(start, end, regions)
    names = [None if o < 0 else (int(regions.step_id[o]), regions.region[o]) for o in owner]
    assert names == [(1, "forward"), (1, "forward"), (1, "forward"), (1, "sample"), (1, "execute_model"), None,
                     None, (2, "forward"), (2, "forward"), (2, "execute_model")]
    assert owner[5] == -1 and owner[6] == -2  # straddling, outside


def test_summary_gives_event_busy_and_gap_per_region_and_step():
    s = kernel_attribution_summary(profile_table(KERNELS), REGIONS, FACTS)
    assert s["source"] == "gpu" and s["steps"] == [1, 2]
    fwd = s["regions"]["forward"]
    assert fwd["instances"] == 2 and fwd["kernels"] == 5
    # step 2: gemm/attn union 60, and the 5 us of tail before forward's end at 200: 65
    assert fwd["busy_ms"]["total"] == pytest.approx((33 + 65) / 1e3)
    assert fwd["gap_ms"]["total"] == pytest.approx((50 - 33 + 70 - 65) / 1e3)
    assert s["regions"]["sample"]["busy_ms"]["total"] == pytest.approx(8 / 1e3)
    # execute_model of step 1: 33 + 8 + 4 + the 5 us of copy_out inside = 50 of its 100 us
    values = {v["step_id"]: v for v in s["per_step"]["values"]}
    assert values[1]["event_ms"] == pytest.approx(0.100) and values[1]["busy_ms"] == pytest.approx(0.050)
    # step 2: gemm/attn union [130, 190] = 60, tail [195, 210] = 15: 75 of 100
    assert values[2]["busy_ms"] == pytest.approx(0.075)
    assert s["per_step"]["difference_ms"]["p50"] == pytest.approx((0.050 + 0.025) / 2)
    assert s["outside"]["kernels"] == 1 and s["outside"]["busy_ms"] == pytest.approx(0.010)
    assert s["straddling"] == 1 and s["regions"]["forward"]["top_kernels"][0] == ["gemm", 3]


def test_steps_not_wholly_inside_the_profiled_span_are_left_out():
    facts = {**FACTS, "profiled_to_ns": 210 * US}  # step 2's execute_model ends at 220: not covered
    s = kernel_attribution_summary(profile_table(KERNELS), REGIONS, facts)
    assert s["steps"] == [1] and s["regions"]["forward"]["instances"] == 1


def test_a_window_that_covers_no_whole_step_reports_nothing_rather_than_failing():
    s = kernel_attribution_summary(profile_table(KERNELS), REGIONS, {**FACTS, "profiled_to_ns": 50 * US})
    assert s["steps"] == [] and s["regions"] == {} and s["outside"]["kernels"] == 0
    assert s["per_step"]["difference_ms"]["count"] == 0


def test_host_operators_are_placed_in_host_intervals():
    rows = [{"step_id": 3, "rank": 0, "region": "execute_model", "host_start_ns": 0, "host_end_ns": 50 * US},
            {"step_id": 3, "rank": 0, "region": "forward", "host_start_ns": 5 * US, "host_end_ns": 40 * US}]
    ops = profile_table([("aten::linear", 6, 20), ("aten::mm", 7, 19), ("aten::cat", 41, 45)], kind="cpu_op")
    s = kernel_attribution_summary(ops, regions_table(rows), {"rank": 0, "steps": [3], "profiled_from_ns": 0,
                                                              "profiled_to_ns": 60 * US})
    assert s["source"] == "host" and s["regions"]["forward"]["kernels"] == 2
    assert s["regions"]["forward"]["busy_ms"]["total"] == pytest.approx(0.014)  # mm nested in linear
    assert s["regions"]["forward"]["event_ms"]["total"] == pytest.approx(0.035)
    assert s["regions"]["execute_model"]["kernels"] == 1  # aten::cat, after the forward


def test_gpu_kernels_need_stamped_regions():
    rows = [{"step_id": 1, "rank": 0, "region": "forward", "host_start_ns": 0, "host_end_ns": 10, "gpu_ns": 5}]
    with pytest.raises(ValueError, match="SERVESCOPE_GPU_STAMPS"):
        kernel_attribution_summary(profile_table(KERNELS), regions_table(rows), FACTS)


def test_launch_to_start_finds_a_kernel_before_its_launch():
    rows = [("launch", 10, 5), ("kernel", 25, 5), ("launch", 30, 6), ("kernel", 29, 6), ("kernel", 40, 9)]
    table = pa.Table.from_pylist([{"kind": k, "name": "x", "device_index": 0, "lane": 1, "start_ns": t,
                                   "end_ns": t + 1, "correlation_id": c, "profiler_start_ns": t}
                                  for k, t, c in rows], schema=PROFILE_SCHEMA)
    assert launch_to_start_ns(table) == {"count": 2, "negative": 1, "min_ns": -1, "p50_ns": 7.0}
