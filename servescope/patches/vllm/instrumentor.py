"""Turn servescope on and off for vLLM in this process (and, through the environment, its children).

``instrument(config)`` is idempotent: it opens this process's recorder, exports the configuration
(``Config.environment()``) so that every process vLLM starts records with the same options (vLLM
loads the ``vllm.general_plugins`` entry point in each of them), checks the vLLM version and
applies the patches of the recorded parts. ``uninstrument()`` removes every patch and module
hook, resolves the GPU regions in flight, closes the recorder (its spool marked closed), resets
every hook's state (a later instrument() starts again from step 0 and writes the engine facts
again) and leaves vLLM exactly as it was. On a vLLM outside the supported range nothing is
patched, a warning says why, and vLLM runs untouched.
"""

from __future__ import annotations

import logging
import os

from servescope.patches.patch import PatchSet
from servescope.patches.switch import PARTS, set_enabled
from servescope.patches.vllm import engine_core_hooks, frontend_hooks, spec_decode_hooks, worker_hooks
from servescope.record.recorder import close_recorder, open_recorder
from servescope.run.config import CONFIG_ENV, RUN_DIR_ENV, Config

logger = logging.getLogger("servescope")

SUPPORTED_VERSIONS = ((0, 26), (0, 32))  # inclusive, major.minor

_patch_set: PatchSet | None = None
_config: Config | None = None
_exported_env: dict[str, str | None] = {}


def current_config() -> Config | None:
    """Return the configuration this process records with, or None when not instrumented."""
    return _config


def current_patch_set() -> PatchSet | None:
    """Return the patches applied in this process, or None when not instrumented."""
    return _patch_set


def vllm_version() -> str | None:
    """Return the installed vLLM version string, or None if vLLM is not importable."""
    try:
        import vllm

        return vllm.__version__
    except Exception:
        return None


def version_supported(version: str | None) -> bool:
    """Return True if this vLLM version is in the supported range."""
    if version is None:
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    lo, hi = SUPPORTED_VERSIONS
    return lo <= (major, minor) <= hi


def instrument(config: Config) -> PatchSet | None:
    """Record vLLM as config says from now on; return the applied PatchSet (None if refused)."""
    global _patch_set, _config
    version = vllm_version()
    if not version_supported(version) and not config.force_unsupported:
        lo, hi = SUPPORTED_VERSIONS
        logger.warning(
            "servescope: vLLM %s is outside the supported range %d.%d-%d.%d; nothing patched, vLLM runs "
            "untraced (set SERVESCOPE_FORCE_UNSUPPORTED_VLLM=1 to try anyway)", version, *lo, *hi)
        return None
    _export(config)
    os.makedirs(config.run_dir, exist_ok=True)
    recorder = open_recorder(config)
    _config = config
    PARTS.set(config.parts)
    if _patch_set is None:
        _patch_set = PatchSet(ledger=_ledger(recorder) if config.self_timing else None)
    for patch in (*engine_core_hooks.PATCHES, *frontend_hooks.PATCHES, *worker_hooks.PATCHES):
        if patch.part is None or patch.part in config.parts:
            _patch_set.apply(patch)
    worker_hooks.WORKER.patch_runners = patch_runners
    if worker_hooks.in_worker_process():  # vLLM loads plugins inside init_worker: too late for its hook
        patch_runners()
    set_enabled(True)
    return _patch_set


def _ledger(recorder):
    from servescope.record.self_timing import HookLedger

    ledger = HookLedger(recorder.append_record)
    recorder.before_close.append(ledger.snapshot)
    return ledger


def patch_runners() -> None:
    """Apply the model-runner patches of the recorded parts in this (worker) process."""
    if _patch_set is None or _config is None:
        return
    for patch in (*worker_hooks.RUNNER_PATCHES, *spec_decode_hooks.RUNNER_PATCHES):
        if patch.part is None or patch.part in _config.parts:
            _patch_set.apply(patch)


def uninstrument() -> None:
    """Remove every patch and hook in this process, close the recorder and reset all hook state."""
    global _patch_set, _config
    set_enabled(False)
    worker_hooks.WORKER.close()
    worker_hooks.WORKER.patch_runners = None
    engine_core_hooks.STATE.reset()
    if _patch_set is not None:
        _patch_set.remove_all()
        _patch_set = None
    PARTS.set(())
    _config = None
    _restore_env()
    close_recorder()


def _export(config: Config) -> None:
    for key, value in config.environment().items():
        if key not in _exported_env:
            _exported_env[key] = os.environ.get(key)
        os.environ[key] = value


def _restore_env() -> None:
    for key in (RUN_DIR_ENV, CONFIG_ENV):
        previous = _exported_env.pop(key, None)
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
