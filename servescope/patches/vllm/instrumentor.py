"""Turn servescope on and off for vLLM in this process (and, through the environment, its children).

``instrument(config)`` is idempotent: it checks the vLLM version, opens this process's recorder and
applies the patches of the recorded parts. The configuration reaches every process vLLM starts
through the environment (``servescope.patches.engines.instrument`` exports it; vLLM loads the
``vllm.general_plugins`` entry point in each process, which calls ``instrument`` there).
``remove_patches()`` removes every patch and module hook, resolves the GPU regions in flight and
resets every hook's state (a later instrument() starts again from step 0 and writes the engine
facts again); ``uninstrument()`` also closes the recorder (its spool marked closed), leaving vLLM
exactly as it was. On a vLLM outside the supported range nothing is patched, a warning says why,
and vLLM runs untouched.
"""

from __future__ import annotations

import logging
import os

from servescope.patches.patch import PatchSet
from servescope.patches.switch import PARTS, set_enabled
from servescope.patches.versions import in_supported_range
from servescope.patches.vllm import collective_hooks, engine_core_hooks, frontend_hooks, spec_decode_hooks, worker_hooks
from servescope.record.recorder import close_recorder, open_recorder
from servescope.run.config import Config

logger = logging.getLogger("servescope")

SUPPORTED_VERSIONS = ((0, 26), (0, 32))  # inclusive, major.minor

_patch_set: PatchSet | None = None
_config: Config | None = None


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
    return in_supported_range(version, SUPPORTED_VERSIONS)


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
    os.makedirs(config.run_dir, exist_ok=True)
    recorder = open_recorder(config)
    _config = config
    PARTS.set(config.parts)
    engine_core_hooks.hold_updates_if_asked(recorder)
    if _patch_set is None:
        _patch_set = PatchSet(ledger=_ledger(recorder) if config.self_timing else None)
    for patch in (*engine_core_hooks.PATCHES, *frontend_hooks.PATCHES, *worker_hooks.PATCHES):
        if patch.part is None or patch.part in config.parts:
            _patch_set.apply(patch)
    worker_hooks.WORKER.patch_runners = patch_runners
    collective_hooks.STATE.apply = patch_collectives
    if worker_hooks.in_worker_process():  # vLLM loads plugins inside init_worker: too late for its hook
        patch_runners()
    set_enabled(True)
    return _patch_set


def _ledger(recorder):
    from servescope.record.self_timing import HookLedger

    ledger = HookLedger(recorder.append_record)
    recorder.before_close.append(ledger.snapshot)
    recorder.when_idle.append(ledger.snapshot)  # vLLM may kill its EngineCore at shutdown: write the account first
    return ledger


def patch_runners() -> None:
    """Apply the model-runner patches of the recorded parts in this (worker) process."""
    if _patch_set is None or _config is None:
        return
    for patch in (*worker_hooks.RUNNER_PATCHES, *spec_decode_hooks.RUNNER_PATCHES, *collective_hooks.RUNNER_PATCHES):
        if patch.part is None or patch.part in _config.parts:
            _patch_set.apply(patch)


def patch_collectives() -> None:
    """Apply the collective patches of a worker whose collectives torch.compile cannot see (collective_hooks)."""
    if _patch_set is None or _config is None:
        return
    for patch in collective_hooks.COLLECTIVE_PATCHES:
        if patch.part is None or patch.part in _config.parts:
            _patch_set.apply(patch)


def remove_patches() -> None:
    """Remove every vLLM patch and module hook in this process, resolve the GPU regions in flight and reset all
    hook state; the recorder stays open (other engines of the process may share it)."""
    global _patch_set, _config
    set_enabled(False)
    worker_hooks.WORKER.close()
    worker_hooks.WORKER.patch_runners = None
    collective_hooks.STATE.apply = None
    engine_core_hooks.STATE.reset()
    if _patch_set is not None:
        _patch_set.remove_all()
        _patch_set = None
    PARTS.set(())
    _config = None


def uninstrument() -> None:
    """Remove every vLLM patch and hook in this process and close the recorder."""
    remove_patches()
    close_recorder()
