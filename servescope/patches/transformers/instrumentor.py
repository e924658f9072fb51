"""Turn servescope on and off for transformers' continuous batching in this process.

``instrument(config)`` checks the transformers version, opens this process's recorder and
patches the continuous-batching classes, now if ``transformers.generation.continuous_batching``
is imported, else the moment it is (``import_hook.after_import``). ``uninstrument()`` removes
every patch and forward hook and closes the recorder. Outside the supported range nothing is patched, a
warning says why, and transformers runs untouched.

transformers has no plugin entry point: ``servescope run`` reaches it through a sitecustomize
(``patches/autoload``) that calls ``autoload(config)`` in every Python process it starts; that
costs one string comparison per import until (and unless) continuous batching is imported.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path

from servescope.patches.import_hook import after_import, cancel
from servescope.patches.patch import Patch, PatchSet
from servescope.patches.versions import in_supported_range
from servescope.patches.transformers import request_hooks, runner_hooks, step_hooks
from servescope.patches.transformers.state import STATE
from servescope.record.recorder import close_recorder, open_recorder
from servescope.run.config import Config

logger = logging.getLogger("servescope")

SUPPORTED_VERSIONS = ((5, 17), (5, 19))  # inclusive, major.minor
FORCE_ENV = "SERVESCOPE_FORCE_UNSUPPORTED_TRANSFORMERS"
CB_PACKAGE = "transformers.generation.continuous_batching"

API = f"{CB_PACKAGE}.continuous_api"
SCHED = f"{CB_PACKAGE}.scheduler"
RUNNER = f"{CB_PACKAGE}.model_runner"
IOS = f"{CB_PACKAGE}.input_outputs"
PATCHES = (
    Patch(API, "ContinuousBatchingManager.add_request", request_hooks.wrap_add_request),
    Patch(SCHED, "Scheduler.add_waiting_request", request_hooks.wrap_add_waiting_request),
    Patch(SCHED, "Scheduler.clear_cancelled_requests", request_hooks.wrap_clear_cancelled_requests),
    Patch(API, "OutputRouter.fail_and_deliver", request_hooks.wrap_fail_and_deliver),
    Patch(f"{CB_PACKAGE}.offloading_manager", "OffloadingManager.offload_requests",
          request_hooks.wrap_offload_requests),
    Patch(API, "ContinuousBatchProcessor.prepare_next_batch", step_hooks.wrap_prepare_next_batch),
    Patch(SCHED, "FIFOScheduler.schedule_batch", step_hooks.wrap_schedule_batch),
    Patch(SCHED, "PrefillFirstScheduler.schedule_batch", step_hooks.wrap_schedule_batch),
    Patch(API, "ContinuousBatchProcessor._generation_step", step_hooks.wrap_generation_step),
    Patch(IOS, "ContinuousBatchingIOs.prepare_batch_update", step_hooks.wrap_prepare_batch_update),
    Patch(IOS, "ContinuousBatchingAsyncIOs.prepare_batch_update", step_hooks.wrap_prepare_batch_update),
    Patch(API, "ContinuousBatchProcessor.update_batch", step_hooks.wrap_update_batch),
    Patch(RUNNER, "ModelRunner.compute_batch", runner_hooks.wrap_compute_batch),
    Patch(RUNNER, "ModelRunner._sample", runner_hooks.wrap_sample),
    Patch(IOS, "ContinuousBatchingIOs.prepare_batch_tensors", runner_hooks.wrap_prepare_batch_tensors),
    Patch(IOS, "ContinuousBatchingAsyncIOs.prepare_batch_tensors", runner_hooks.wrap_prepare_batch_tensors),
)

_patch_set: PatchSet | None = None
_exit_hook_registered = False


def current_patch_set() -> PatchSet | None:
    """Return the transformers patches of this process, or None when not instrumented."""
    return _patch_set


def transformers_version() -> str | None:
    """Return the installed transformers version string (read without importing it), or None."""
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:
        return None


def version_supported(version: str | None) -> bool:
    """Return True if this transformers version is in the supported range."""
    return in_supported_range(version, SUPPORTED_VERSIONS)


def instrument(config: Config) -> PatchSet | None:
    """Record transformers' continuous batching as config says from now on; return the PatchSet (None if refused).

    The PatchSet fills when continuous batching is imported (at once if it already is)."""
    global _patch_set, _exit_hook_registered
    version = transformers_version()
    if not version_supported(version) and not (config.force_unsupported or os.environ.get(FORCE_ENV)):
        lo, hi = SUPPORTED_VERSIONS
        logger.warning("servescope: transformers %s is outside the supported range %d.%d-%d.%d; nothing patched, "
                       "continuous batching runs untraced (set %s=1 to try anyway)", version, *lo, *hi, FORCE_ENV)
        return None
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    open_recorder(config)
    if not _exit_hook_registered:  # runs before the recorder's own exit flush (atexit is last in, first out)
        atexit.register(runner_hooks.close_timers)
        _exit_hook_registered = True
    if _patch_set is None:
        _patch_set = PatchSet()
    if not STATE.enabled:
        STATE.start_session()
    STATE.enabled = True
    after_import(CB_PACKAGE, _apply_patches)
    return _patch_set


def _apply_patches(_module) -> None:
    """Apply every patch (called once continuous batching is imported)."""
    patch_set = _patch_set
    if patch_set is None:
        return
    from transformers.generation.continuous_batching.requests import RequestStatus

    STATE.finished_status = int(RequestStatus.FINISHED)
    for patch in PATCHES:
        patch_set.apply(patch)


def autoload(config: Config) -> None:
    """Instrument this process when (and only if) it imports continuous batching (servescope run's sitecustomize)."""
    after_import(CB_PACKAGE, lambda _module: instrument(config))


def remove_patches() -> None:
    """Turn the hooks off, resolve the regions in flight and remove every patch and forward hook; the recorder stays open."""
    global _patch_set
    STATE.enabled = False
    cancel(CB_PACKAGE)
    runner_hooks.close_timers()
    runner_hooks.remove_forward_hooks()
    if _patch_set is not None:
        _patch_set.remove_all()
        _patch_set = None


def uninstrument() -> None:
    """Remove every transformers patch in this process and close the recorder."""
    remove_patches()
    close_recorder()
