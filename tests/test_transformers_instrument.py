"""The transformers patches in this process: applied on import, idempotent, version-gated, fully removed;
and servescope run's sitecustomize, which reaches engines without a plugin entry point."""

import importlib
import os
from operator import attrgetter
import subprocess
import sys
from pathlib import Path

import pytest

import servescope
from servescope.patches import import_hook
from servescope.patches.patch import is_patched
from servescope.patches.transformers import instrumentor
from servescope.patches.transformers.state import STATE, active_recorder
from servescope.record.launcher import AUTOLOAD_DIR, child_environment
from servescope.run.config import CONFIG_ENV, RUN_DIR_ENV, Config

pytest.importorskip("transformers.generation.continuous_batching")

TARGETS = instrumentor.PATCHES


def _resolve(patch):
    """Return (class, attribute name) of a patch's target."""
    owner_path, _, attr = patch.target.rpartition(".")
    return attrgetter(owner_path)(importlib.import_module(patch.module)), attr


def _tiny_generate(model_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="sdpa")
    out = model.generate_batch([[5, 6, 7, 8], [9, 10, 11]],
                               generation_config=GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=-1),
                               continuous_batching_config=ContinuousBatchingConfig(num_blocks=8, max_batch_tokens=64))
    return model, {k: v.generated_tokens for k, v in out.items()}


def test_uninstrument_restores_every_original_and_removes_the_forward_hooks(tmp_path, tiny_model_dir):
    originals = {p.name: vars(_resolve(p)[0]).get(_resolve(p)[1]) for p in TARGETS}
    patch_set = servescope.instrument(tmp_path / "run", engines=["transformers"])["transformers"]
    try:
        assert os.environ[RUN_DIR_ENV] == str((tmp_path / "run").absolute())
        assert active_recorder() is not None
        for p in TARGETS:
            owner, attr = _resolve(p)
            assert is_patched(getattr(owner, attr)), p.name
        assert not patch_set.refused and len(patch_set.applied) == len(TARGETS)
        assert servescope.instrument(tmp_path / "run", engines=["transformers"])["transformers"] is patch_set
        model, traced = _tiny_generate(tiny_model_dir)
        assert model._forward_pre_hooks and model._forward_hooks
    finally:
        servescope.uninstrument()
    for p in TARGETS:
        owner, attr = _resolve(p)
        assert vars(owner).get(attr) is originals[p.name], p.name
        assert not is_patched(getattr(owner, attr))
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert active_recorder() is None and STATE.timer is None
    assert RUN_DIR_ENV not in os.environ
    assert instrumentor.CB_PACKAGE not in import_hook.waiting_for()
    assert _tiny_generate(tiny_model_dir)[1] == traced  # and it still generates the same, untraced


def test_unsupported_transformers_version_patches_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(instrumentor, "transformers_version", lambda: "5.16.2")
    assert servescope.instrument(tmp_path / "run", engines=["transformers"]) == {"transformers": None}
    assert "transformers 5.16.2 is outside the supported range 5.17-5.19" in caplog.text
    for p in TARGETS:
        owner, attr = _resolve(p)
        assert not is_patched(getattr(owner, attr)), p.name
    assert active_recorder() is None and not (tmp_path / "run").exists()


@pytest.mark.parametrize("version, supported", [("5.17.0", True), ("5.19.3", True), ("5.18.0.dev0", True),
                                                ("5.20.0", False), ("4.57.1", False), ("garbage", False), (None, False)])
def test_supported_range(version, supported):
    assert instrumentor.version_supported(version) is supported


def test_an_unknown_engine_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'sglang'"):
        servescope.instrument(tmp_path / "run", engines=["sglang"])


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_instrument_before_import_patches_when_continuous_batching_is_imported(tmp_path):
    code = (
        "import sys, servescope\n"
        "from servescope.patches.patch import is_patched\n"
        f"servescope.instrument({str(tmp_path / 'run')!r}, engines=['transformers'])\n"
        "assert 'transformers.generation.continuous_batching' not in sys.modules\n"
        "from transformers.generation.continuous_batching.continuous_api import ContinuousBatchProcessor as P\n"
        "print('patched', is_patched(P.prepare_next_batch))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    proc = _python(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "patched True" in proc.stdout


def _site_env(tmp_path: Path, run_dir: Path | None) -> dict:
    """servescope run's environment, with another sitecustomize later on the path (it writes a marker file)."""
    other = tmp_path / "other-site"
    other.mkdir(exist_ok=True)
    (other / "sitecustomize.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').write('ran')\n")
    base = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    base["PYTHONPATH"] = os.pathsep.join([str(other), *[p for p in sys.path if p]])
    env = child_environment(Config.from_options(str(run_dir or tmp_path / "unused"), environ={}), base)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(AUTOLOAD_DIR)
    if run_dir is None:
        env.pop(RUN_DIR_ENV)
        env.pop(CONFIG_ENV)
    return env


PROBE = ("import sys\n"
         "from servescope.patches import import_hook\n"
         "print('waiting', import_hook.waiting_for())\n"
         "print('recorder', sys.modules['servescope.record.recorder']._recorder is not None "
         "if 'servescope.record.recorder' in sys.modules else False)\n")


def test_sitecustomize_arms_transformers_lazily_and_runs_the_site_s_own(tmp_path):
    run_dir = tmp_path / "run"
    proc = _python(PROBE, _site_env(tmp_path, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "waiting ['transformers.generation.continuous_batching']" in proc.stdout
    assert "recorder False" in proc.stdout  # nothing opened, nothing written until continuous batching is imported
    assert not run_dir.exists()
    assert (tmp_path / "marker").read_text() == "ran"


def test_sitecustomize_does_nothing_without_a_run_directory(tmp_path):
    proc = _python(PROBE, _site_env(tmp_path, None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "waiting []" in proc.stdout
    assert (tmp_path / "marker").read_text() == "ran"


def test_sitecustomize_patches_on_import(tmp_path):
    code = ("from transformers.generation.continuous_batching.scheduler import FIFOScheduler\n"
            "from servescope.patches.patch import is_patched\n"
            "from servescope.record.recorder import get_recorder\n"
            "print('patched', is_patched(FIFOScheduler.schedule_batch), get_recorder() is not None)\n")
    proc = _python(code, _site_env(tmp_path, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "patched True True" in proc.stdout
