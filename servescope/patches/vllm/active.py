"""The one switch every hook reads first: the recorder of this process, or None when off."""

from __future__ import annotations

from servescope.record import recorder as _recorder_module

_enabled = False


def active_recorder():
    """Return this process's recorder while instrumentation is on, else None (one check)."""
    return _recorder_module._recorder if _enabled else None


def set_enabled(enabled: bool) -> None:
    """Turn every hook of this process on or off."""
    global _enabled
    _enabled = enabled
