"""instrument() / uninstrument() in this process: patches applied, idempotent, and fully removed."""

import importlib
import os

import pytest

import servescope
from servescope.patches.patch import is_patched
from servescope.patches.vllm import engine_core_hooks, frontend_hooks, worker_hooks
from servescope.patches.vllm.active import active_recorder
from servescope.run.directory import RUN_DIR_ENV

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
    worker_hooks.patch_runners(patch_set)  # what a worker process does at start-up
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
    assert RUN_DIR_ENV not in os.environ


def test_unsupported_vllm_version_patches_nothing(tmp_path, monkeypatch, caplog):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    assert servescope.instrument(tmp_path / "run", engines=["vllm"]) == {"vllm": None}
    assert "outside the supported range" in caplog.text
    for p in TARGETS[:3]:
        owner, attr = _resolve(p)
        assert not is_patched(getattr(owner, attr))
