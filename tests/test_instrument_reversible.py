"""instrument() / uninstrument() in this process: patches applied, idempotent, and fully removed."""

import importlib
import os

import pytest

import servescope
from servescope.patches.patch import is_patched
from servescope.patches.switch import active_recorder
from servescope.patches.vllm import engine_core_hooks, frontend_hooks, instrumentor, worker_hooks
from servescope.run.config import CONFIG_ENV, RUN_DIR_ENV

pytest.importorskip("vllm")

TARGETS = [p for p in (*engine_core_hooks.PATCHES, *frontend_hooks.PATCHES, *worker_hooks.PATCHES,
                       *worker_hooks.RUNNER_PATCHES) if not p.optional]


def _resolve(patch):
    owner = importlib.import_module(patch.module)
    *path, attr = patch.target.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def test_uninstrument_restores_every_original(tmp_path):
    originals = {p.name: vars(_resolve(p)[0]).get(_resolve(p)[1]) for p in TARGETS}
    patch_set = servescope.instrument(tmp_path / "run", engines=["vllm"])["vllm"]
    instrumentor.patch_runners()  # what a worker process does at start-up
    try:
        assert os.environ[RUN_DIR_ENV] == str((tmp_path / "run").absolute())
        assert active_recorder() is not None
        for p in TARGETS:
            owner, attr = _resolve(p)
            assert is_patched(getattr(owner, attr)), p.name
        assert not patch_set.refused
        again = servescope.instrument(tmp_path / "run", engines=["vllm"])["vllm"]  # idempotent
        assert again is patch_set
        owner, attr = _resolve(TARGETS[0])
        assert getattr(owner, attr).__servescope_original__ is originals[TARGETS[0].name]
    finally:
        servescope.uninstrument()
    for p in TARGETS:
        owner, attr = _resolve(p)
        assert vars(owner).get(attr) is originals[p.name], p.name
        assert not is_patched(getattr(owner, attr))
    assert active_recorder() is None
    assert RUN_DIR_ENV not in os.environ and CONFIG_ENV not in os.environ


def test_unsupported_vllm_version_patches_nothing(tmp_path, monkeypatch, caplog):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    assert servescope.instrument(tmp_path / "run", engines=["vllm"]) == {"vllm": None}
    assert "outside the supported range" in caplog.text
    for p in TARGETS[:3]:
        owner, attr = _resolve(p)
        assert not is_patched(getattr(owner, attr))


@pytest.mark.engine
def test_a_second_instrument_starts_a_fresh_recording(tmp_path, tiny_model_dir):
    """The EngineCore's step ids and engine facts belong to one recording: instrumenting again into another
    run directory starts from step 0 and writes the facts again; the first run is closed and complete."""
    import json
    import subprocess
    import sys

    from engine_fixtures import TESTS, engine_env
    from servescope.run.directory import read_json
    from servescope.run.tables import read_table

    run1, run2, out = tmp_path / "one", tmp_path / "two", tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(TESTS / "engine_scripts" / "instrument_twice.py"), str(tiny_model_dir),
                           str(run1), str(run2), str(out)], env=engine_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second, untraced = json.loads(out.read_text())["outputs"]
    assert first == second == untraced  # tracing never changes what vLLM computes
    for run in (run1, run2):
        steps = read_table(run, "steps").column("step_id").to_pylist()
        assert steps and min(steps) == 0, run
        tokens = sum(read_table(run, "token_emissions").column("num_tokens").to_pylist())
        assert tokens == 4 * 4, run  # this run's own four requests of four tokens, nothing of the other
        assert list((run / "engine").glob("*.json")), f"{run}: no engine facts"
    main = [read_json(p) for p in (run1 / "processes").glob("*.json") if read_json(p)["role"] == "MainProcess"]
    assert [(m["ended"], m.get("compacted")) for m in main] == [("closed", True)]  # closed by uninstrument
