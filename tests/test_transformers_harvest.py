"""transformers' last step before the engine goes idle gets its GPU time at its own update, not at a next step's
launch that may never come (on the H200 one step per served run had none: h200-engine-vs-engine-2.json).
CUDA events stand in by test_region_timer's FakeGpu, which completes them when the test says so."""

from __future__ import annotations

from test_region_timer import FakeGpu

from servescope.patches.transformers import step_hooks
from servescope.patches.transformers.state import STATE
from servescope.record import recorder as recorder_module
from servescope.record.recorder import Recorder
from servescope.record.region_timer import RegionTimer
from servescope.run.config import Config
from servescope.run.tables import read_table


def test_a_step_s_regions_are_resolved_at_its_update(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    previous, recorder_module._recorder = recorder_module._recorder, rec
    gpu = FakeGpu()
    STATE.timer = RegionTimer(lambda row: rec.append("worker_regions", row), mode="cuda", events=gpu,
                              append_pending=rec.append_region, resolve=rec.resolve_region)
    STATE.enabled = True
    try:
        STATE.timer.end(STATE.timer.start(4, "execute_model"))
        gpu.complete()  # the host has waited for the step's sampled tokens
        step_hooks.wrap_update_batch(lambda: None, None, (), {})  # the step's update; no step follows
        rows = read_table(tmp_path, "worker_regions", warnings=[]).to_pylist()
        assert [(r["step_id"], r["gpu_ns"]) for r in rows] == [(4, 1000)]
    finally:
        STATE.enabled = False
        STATE.timer = None
        recorder_module._recorder = previous
        rec.close()
