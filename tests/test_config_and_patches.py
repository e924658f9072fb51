"""The run configuration (one document for every process) and the patch framework's promises:
wrappers never copy the target's parameters, post-call faults stay inside, everything is undone."""

import logging
import time

import pytest

from servescope.patches.observe import observe_after
from servescope.patches.patch import Patch, PatchSet, arg, is_patched
from servescope.patches.switch import PARTS, set_enabled
from servescope.record import recorder as recorder_module
from servescope.record.self_timing import HookLedger
from servescope.run.config import DEFAULT_PARTS, Config, ConfigError, parse_parts


def test_a_config_reaches_a_child_process_unchanged():
    config = Config.from_options("/tmp/run", parts="default,thread,-nvml", segment_bytes=1 << 20,
                                 nvml_interval_s=0.5, profile_steps=(3, 2), self_timing=True)
    again = Config.from_environment(config.environment())
    assert again == config
    assert again.parts == (DEFAULT_PARTS | {"thread"}) - {"nvml"}


def test_the_single_variables_are_read_in_one_place():
    env = {"SERVESCOPE_THREAD_USAGE": "1", "SERVESCOPE_NVML_INTERVAL_S": "0", "SERVESCOPE_PROFILE_STEPS": "10:5"}
    config = Config.from_options("/tmp/run", environ=env)
    assert "thread" in config.parts and "nvml" not in config.parts and config.profile_steps == (10, 5)
    assert Config.from_environment({}) is None


@pytest.mark.parametrize("spec,message", [("default,bogus", "bogus"), ("-nope", "nope")])
def test_unknown_parts_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_parts(spec)


def test_parts_lists():
    assert parse_parts("none") == frozenset()
    assert parse_parts("all") >= DEFAULT_PARTS | {"thread", "gpu_stamps"}
    assert parse_parts("-tokens") == DEFAULT_PARTS - {"tokens"}
    assert parse_parts("scheduler,tokens") == {"scheduler", "tokens"}


class Target:
    """Stands for an engine class whose method signature changes between versions."""

    def step(self, batch, *, new_keyword=None):
        return ("stepped", batch, new_keyword)


def _recorded(rec, instance, result, args, kwargs):
    rec.append("request_events", ("r", "arrival", 1, None, None, None, None, None))
    if arg(args, kwargs, 0, "batch") == "boom":
        raise ValueError("a fault inside servescope after the call")


@pytest.fixture
def recording(tmp_path):
    rec = recorder_module.open_recorder(Config.from_options(str(tmp_path)))
    PARTS.set(DEFAULT_PARTS)
    set_enabled(True)
    yield rec
    set_enabled(False)
    PARTS.set(())
    recorder_module.close_recorder()


def test_a_wrapper_passes_arguments_it_does_not_know_and_keeps_faults_inside(recording, caplog):
    patches = PatchSet()
    assert patches.apply(Patch(__name__, "Target.step", observe_after("Target.step", _recorded)))
    try:
        assert is_patched(Target.step)
        assert Target().step(1, new_keyword="kept") == ("stepped", 1, "kept")
        with caplog.at_level(logging.WARNING, logger="servescope"):
            assert Target().step("boom") == ("stepped", "boom", None)  # the fault never reaches the caller
        assert recording.internal_errors == 1 and "Target.step" in caplog.text
    finally:
        patches.remove_all()
    assert not is_patched(Target.step) and Target().step(2) == ("stepped", 2, None)


def test_a_missing_target_is_refused_with_the_reason():
    patches = PatchSet()
    assert not patches.apply(Patch(__name__, "Target.gone", observe_after("x", _recorded)))
    assert "not found" in patches.refused[f"{__name__}.Target.gone"]


def _self_timed(hook_work, engine_work, calls: int) -> list:
    """Patch an engine method whose body is engine_work() with a hook that runs hook_work() first, call it `calls`
    times under self-timing, and return the ledger's totals for it: calls, ns, first ns, cpu ns, first cpu ns."""
    ledger = HookLedger(lambda record: None)

    def hook(wrapped, instance, args, kwargs):
        hook_work()
        return wrapped(*args, **kwargs)

    class Engine:
        def run(self):
            engine_work()
            return 1

    patches = PatchSet(ledger=ledger)
    try:
        globals()["Engine"] = Engine
        assert patches.apply(Patch(__name__, "Engine.run", hook))
        for _ in range(calls):
            assert Engine().run() == 1
        return ledger.totals["Engine.run"]
    finally:
        patches.remove_all()
        globals().pop("Engine", None)


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_self_timing_charges_the_hook_but_not_the_engine(recording):
    calls, ns, first_ns, cpu_ns, first_cpu_ns = _self_timed(lambda: time.sleep(0.002), lambda: time.sleep(0.02), 5)
    assert calls == 5
    assert 0.002 * 5 <= ns / 1e9 < 0.02 * 5  # the hook's 2 ms a call, not the engine's 20 ms
    assert 0.002 <= first_ns / 1e9 < 0.02  # the first call kept apart, charged the same way
    assert cpu_ns < ns / 4 and first_cpu_ns <= cpu_ns  # a sleep is waiting, not the hook's code running


def test_self_timing_tells_the_hooks_cpu_time_from_its_waiting(recording):
    """A hook that computes for 3 ms and sleeps for 3 ms around an engine call that computes for 10 ms: the wall
    time charged is about 6 ms a call, the thread CPU time about 3 ms (the sleep is waiting), and neither holds
    the engine's 10 ms."""
    calls, ns, _, cpu_ns, _ = _self_timed(lambda: (_spin(0.003), time.sleep(0.003)), lambda: _spin(0.010), 4)
    assert calls == 4
    assert 0.006 * 4 <= ns / 1e9 < 0.010 * 4
    assert 0.003 * 4 <= cpu_ns / 1e9 < 0.0055 * 4
