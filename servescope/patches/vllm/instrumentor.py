"""Turn servescope on and off for vLLM in this process (and, through the environment, its children).

``instrument(run_dir)`` is idempotent: it opens this process's recorder, exports the run
directory in ``SERVESCOPE_RUN_DIR`` so that every process vLLM starts records too (vLLM
loads the ``vllm.general_plugins`` entry point in each of them), checks the vLLM version and
applies the patches. ``uninstrument()`` removes every patch, flushes, and leaves vLLM exactly
as it was. On a vLLM outside the supported range nothing is patched, a warning says why,
and vLLM runs untouched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from servescope.patches.patch import PatchSet
from servescope.patches.versions import in_supported_range
from servescope.patches.vllm import engine_core_hooks, frontend_hooks, worker_hooks
from servescope.patches.vllm.active import set_enabled
from servescope.record.recorder import close_recorder, open_recorder
from servescope.run.directory import RUN_DIR_ENV

logger = logging.getLogger("servescope")

SUPPORTED_VERSIONS = ((0, 26), (0, 32))  # inclusive, major.minor
FORCE_ENV = "SERVESCOPE_FORCE_UNSUPPORTED_VLLM"

_patch_set: PatchSet | None = None


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


def instrument(run_dir: str | os.PathLike, *, flush_interval_s: float = 1.0,
               max_buffered_rows: int = 1_000_000) -> PatchSet | None:
    """Record vLLM into run_dir from now on; return the applied PatchSet (None if refused)."""
    global _patch_set
    run_dir = Path(run_dir).absolute()
    version = vllm_version()
    if not version_supported(version) and not os.environ.get(FORCE_ENV):
        lo, hi = SUPPORTED_VERSIONS
        logger.warning(
            "servescope: vLLM %s is outside the supported range %d.%d-%d.%d; nothing patched, vLLM runs "
            "untraced (set %s=1 to try anyway)", version, *lo, *hi, FORCE_ENV)
        return None
    os.environ[RUN_DIR_ENV] = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    open_recorder(run_dir, flush_interval_s=flush_interval_s, max_buffered_rows=max_buffered_rows)
    if _patch_set is None:
        _patch_set = PatchSet()
    for patch in (*engine_core_hooks.PATCHES, *frontend_hooks.PATCHES, *worker_hooks.PATCHES):
        _patch_set.apply(patch)
    if worker_hooks.in_worker_process():  # vLLM loads plugins inside init_worker: too late for its hook
        worker_hooks.patch_runners(_patch_set)
    set_enabled(True)
    return _patch_set


def remove_patches() -> None:
    """Remove every vLLM patch in this process and resolve the GPU regions in flight; the recorder stays open."""
    global _patch_set
    set_enabled(False)
    if worker_hooks.WORKER.timer is not None:  # resolve the GPU regions still in flight
        try:
            worker_hooks.WORKER.timer.close()
        except Exception:
            pass
        worker_hooks.WORKER.timer = None
    if worker_hooks.WORKER.nvml is not None:
        worker_hooks.WORKER.nvml.stop()
        worker_hooks.WORKER.nvml = None
    if _patch_set is not None:
        _patch_set.remove_all()
        _patch_set = None
    os.environ.pop(RUN_DIR_ENV, None)


def uninstrument() -> None:
    """Remove every patch in this process, flush and close the recorder."""
    remove_patches()
    close_recorder()
