"""The profile window (record/profile_window.py) with the real torch.profiler on the CPU: it opens and
closes at the steps asked for, maps the profiler's clock onto CLOCK_MONOTONIC (the operators land
inside the host intervals this test timed itself), and the attribution finds them there."""

import time

import pyarrow as pa
import pytest

from servescope.analysis.kernel_attribution import kernel_attribution_summary
from servescope.record.profile_window import (ProfileWindow, kind_from_device_and_name, profile_window_for,
                                              read_profile)
from servescope.run.config import Config, ConfigError, parse_profile_steps
from servescope.run.schema import TABLES

torch = pytest.importorskip("torch")
PAD_S = 0.0002  # each timed region holds its operator 200 us from either end


def test_the_environment_variable_is_parsed_once_with_a_clear_message(tmp_path):
    assert parse_profile_steps("100:8") == (100, 8)
    for bad in ("100", "a:3", "5:0", "-1:2", "1:2:3"):
        with pytest.raises(ConfigError, match="SERVESCOPE_PROFILE_STEPS="):
            parse_profile_steps(bad)
    assert profile_window_for(Config.from_options(str(tmp_path), environ={})) is None
    window = profile_window_for(Config.from_options(str(tmp_path), environ={"SERVESCOPE_PROFILE_STEPS": "3:4"}))
    assert (window.first_step, window.num_steps, window.out_dir) == (3, 4, tmp_path / "profile")


def run_steps(window, steps=10):
    """Steps of host work: per step a timed 'forward' region around one matmul, then untimed work."""
    x = torch.randn(64, 64)
    rows = []
    for step in range(steps):
        window.on_step(step)
        start = time.monotonic_ns()
        time.sleep(PAD_S)
        x @ x
        time.sleep(PAD_S)
        rows.append({"step_id": step, "rank": 0, "region": "forward", "host_start_ns": start,
                     "host_end_ns": time.monotonic_ns()})
        torch.ones(8)  # outside every region
    window.close()
    schema = TABLES["worker_regions"].arrow_schema
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def test_a_window_of_four_steps_lands_inside_the_host_regions(tmp_path):
    window = ProfileWindow(tmp_path / "profile", first_step=3, num_steps=4)
    regions = run_steps(window)
    assert window.done and window.error is None and window.path.exists()
    profile, facts = read_profile(tmp_path)
    (f,) = facts
    assert f["steps"] == [3, 4, 5, 6]
    clock = f["clock"]
    # marker brackets are ~3 us wide (an empty operator between two clock reads): their intersection
    # knows the offset to within 20 us; the two calibrations of one window agree as closely
    assert clock["start"]["uncertainty_ns"] < 20_000 and clock["end"]["uncertainty_ns"] < 20_000
    assert abs(clock["start"]["offset_ns"] - clock["end"]["offset_ns"]) < 40_000
    summary = kernel_attribution_summary(profile, regions, f)
    assert summary["source"] == "host" and summary["steps"] == [3, 4, 5, 6]
    forward = summary["regions"]["forward"]
    assert ["aten::matmul", 4] in forward["top_kernels"]  # one per profiled step, each inside its own region
    assert summary["straddling"] == 0
    outside = dict(map(tuple, summary["outside"]["top_kernels"]))
    assert outside.get("aten::ones") == 3  # the untimed work between the regions of steps 3..6
    assert "aten::matmul" not in outside
    busy = forward["busy_ms"]
    assert 0 < busy["p50"] < forward["event_ms"]["p50"] - 2 * PAD_S * 1e3 + 0.05


def test_a_window_still_open_at_the_end_is_closed_with_the_steps_it_saw(tmp_path):
    window = ProfileWindow(tmp_path / "profile", first_step=8, num_steps=5)
    run_steps(window)  # steps 0..9: the window saw 8 and 9 when close() ended it
    _, (facts,) = read_profile(tmp_path)
    assert facts["steps"] == [8, 9] and facts["num_steps"] == 5


def test_a_window_is_asked_for_also_when_the_timer_was_built_before_the_first_step(tmp_path):
    """With the gpu_stamps part, load_model builds the worker's timer before any step (to stamp inside CUDA graphs);
    the window must still open at its step (on the H200 it never did: `no profile window`)."""
    from servescope.patches.vllm import worker_hooks
    from servescope.record.recorder import Recorder
    from servescope.record.timers import make_region_timer

    rec = Recorder(Config.from_options(str(tmp_path), profile_steps=(0, 1)))
    try:
        worker_hooks.WORKER.timer = make_region_timer(lambda row: None, gpu_events=False)  # as load_model leaves it
        assert worker_hooks._timer(rec) is worker_hooks.WORKER.timer
        window = worker_hooks._profile_window(rec)  # what a step's start asks for
        assert window is not None and window.first_step == 0 and worker_hooks.WORKER.profile is window
    finally:
        worker_hooks.WORKER.reset()
        rec.close()


def test_a_timer_built_at_the_first_step_stamps_when_the_part_asks(tmp_path, monkeypatch):
    """Model Runner V1 has no load_model hook: its timer is built at the first step, and must stamp too (on the H200
    a draft_model run with gpu_stamps had no region with a GPU interval, so its kernels could not be placed)."""
    from servescope.patches.switch import PARTS
    from servescope.patches.vllm import worker_hooks
    from servescope.record import timers
    from servescope.record.recorder import Recorder
    from servescope.run.config import DEFAULT_PARTS

    asked = []
    real = timers.make_region_timer
    monkeypatch.setattr(timers, "make_region_timer", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    rec = Recorder(Config.from_options(str(tmp_path)))
    try:
        for parts, stamps in ((DEFAULT_PARTS | {"gpu_stamps"}, True), (DEFAULT_PARTS, False)):
            PARTS.set(parts)
            worker_hooks._timer(rec)
            assert asked.pop()["gpu_stamps"] is stamps
            worker_hooks.WORKER.reset()
    finally:
        PARTS.set(DEFAULT_PARTS)
        worker_hooks.WORKER.reset()
        rec.close()


def test_without_activity_type_every_host_event_gets_the_kind_torch_names():
    """torch 2.11 (the GPU machine's) has no activity_type(); the kind read from device, name and annotation flag
    must agree with the one torch 2.13 names, on every event of a real profile (annotations, clock marks,
    operators). GPU activities (kernels, copies, launches) exist only on a GPU: checked there by the kernel-time
    study (benchmarks/h200_evidence.sh)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.randn(32, 32)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        with record_function("servescope.clock_marks"):
            torch.empty(0)
        (x @ x).sum().item()
    events = p.profiler.kineto_results.events()
    named = {str(e.activity_type()) for e in events}
    assert {"cpu_op", "user_annotation"} <= named
    for e in events:
        torch_names = {"cpu_op": "cpu_op", "user_annotation": None}[str(e.activity_type())]
        assert kind_from_device_and_name(e) == torch_names, e.name()


class GpuEvent:
    """A CUDA-device Kineto event as torch 2.11 gives it (no activity_type()), for the kinds only a GPU makes."""

    def __init__(self, name: str, annotation: bool = False):
        self._name, self._annotation = name, annotation

    def name(self):
        return self._name

    def is_user_annotation(self):
        return self._annotation

    def device_type(self):
        return "DeviceType.CUDA"


def test_gpu_events_without_activity_type_by_name():
    host_annotations = frozenset({"execute_model"})
    kinds = {name: kind_from_device_and_name(GpuEvent(name), host_annotations)
             for name in ("ampere_bf16_gemm", "Memcpy HtoD (Pageable -> Device)", "Memset (Device)", "Stream Sync",
                          "execute_model")}
    assert kinds == {"ampere_bf16_gemm": "kernel", "Memcpy HtoD (Pageable -> Device)": "memcpy",
                     "Memset (Device)": "memset", "Stream Sync": None,
                     "execute_model": None}  # a host annotation's projection onto the GPU is no kernel
    assert kind_from_device_and_name(GpuEvent("execute_model", annotation=True)) is None
