"""The worker's facts (model runner, placement, attention backends) are read at the first real step.

Model Runner V2 (vLLM 0.26 on the H200) runs ``execute_model(..., dummy_run=True)`` during its memory profile,
before the KV cache and its attention groups exist: facts written then named no attention backend, and the
engine-vs-engine audit showed vLLM's as "not recorded" (benchmarks/results/h200-engine-vs-engine-2.json)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from servescope.patches import switch
from servescope.patches.switch import PARTS
from servescope.patches.vllm import worker_hooks
from servescope.record import recorder as recorder_module
from servescope.record.recorder import Recorder
from servescope.run.config import DEFAULT_PARTS, Config
from servescope.run.names import Region


class Backend:
    @staticmethod
    def get_name() -> str:
        return "FLASH_ATTN"


class Runner:
    """What the hook reads of a model runner: attn_groups appear once the KV cache is initialised."""

    vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_rank=0))

    def execute_model(self, scheduler_output, dummy_run=False):
        return None


def test_facts_are_written_at_the_first_real_step_not_at_the_profile_run(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    previous = recorder_module._recorder
    recorder_module._recorder = rec
    switch.set_enabled(True)
    PARTS.set(DEFAULT_PARTS)
    timed = worker_hooks.region(Region.EXECUTE_MODEL, starts_step=True)
    runner = Runner()
    try:
        timed(runner.execute_model, runner, (SimpleNamespace(),), {"dummy_run": True})  # the memory profile
        assert not list((tmp_path / "engine").glob("*-worker.json"))
        runner.attn_groups = [[SimpleNamespace(backend=Backend)]]  # the KV cache is built
        timed(runner.execute_model, runner, (SimpleNamespace(),), {})
        (facts,) = (json.loads(p.read_text()) for p in (tmp_path / "engine").glob("*-worker.json"))
        assert facts["attention_implementation"] == "FLASH_ATTN"
        assert facts["model_runner"].endswith("Runner")
    finally:
        switch.set_enabled(False)
        recorder_module._recorder = previous
        worker_hooks.WORKER.reset()
        rec.close()
