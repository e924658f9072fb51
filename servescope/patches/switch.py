"""The one switch every hook reads first: this process's recorder while recording is on, else None.

``pause()`` / ``resume()`` turn every hook of this process off and on without removing patches (the
toggle diagnostic of ``servescope overhead`` uses them); ``servescope.instrument`` /
``uninstrument`` add and remove the patches themselves.
"""

from __future__ import annotations

from servescope.record import recorder as _recorder_module

_enabled = False
BEFORE_STOP: list = []  # callables run as recording stops in this process (engine_core_hooks writes its held steps)


def active_recorder():
    """Return this process's recorder while recording is on, else None (one check)."""
    return _recorder_module._recorder if _enabled else None


def set_enabled(enabled: bool) -> None:
    """Turn every hook of this process on or off (turning off runs BEFORE_STOP first; never raises)."""
    global _enabled
    if _enabled and not enabled:
        for hook in BEFORE_STOP:
            try:
                hook()
            except Exception:
                pass
    _enabled = enabled


def pause() -> None:
    """Stop recording in this process (patches stay; each hook costs one check)."""
    set_enabled(False)


def resume() -> None:
    """Record again in this process after pause()."""
    set_enabled(_recorder_module._recorder is not None)


class Parts:
    """Which recording parts this process records (run.config.PARTS), as attributes for the hot path."""

    def __init__(self) -> None:
        self.set(())

    def set(self, parts) -> None:
        """Record exactly these parts from now on."""
        parts = set(parts)
        self.frontend = "frontend" in parts
        self.scheduler = "scheduler" in parts
        self.tokens = "tokens" in parts
        self.regions = "regions" in parts
        self.gpu_events = "gpu_events" in parts
        self.nvml = "nvml" in parts
        self.thread = "thread" in parts
        self.gpu_stamps = "gpu_stamps" in parts
        self.collectives = "collectives" in parts
        self.steps = self.scheduler or self.tokens or self.regions  # step ids are needed by all three


PARTS = Parts()
