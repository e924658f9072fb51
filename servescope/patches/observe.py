"""The common wrapper shapes for hooks that only observe a call (the call itself is never touched).

``observe_before(where, record)`` runs ``record(rec, instance, args, kwargs)`` before the call,
``observe_after(where, record)`` runs ``record(rec, instance, result, args, kwargs)`` after it. Both
record only while ``active()`` returns a recorder (default: vLLM's switch, ``patches.switch``; each
engine may pass its own); an exception in ``record`` is counted with ``rec.error(where, ...)``, never
raised into the engine.
"""

from __future__ import annotations

from typing import Callable

from servescope.patches.switch import active_recorder


def observe_before(where: str, record: Callable, active: Callable = active_recorder) -> Callable:
    """Return a wrapper that records before the call."""

    def wrapper(wrapped, instance, args, kwargs):
        rec = active()
        if rec is not None:
            try:
                record(rec, instance, args, kwargs)
            except Exception as exc:
                rec.error(where, exc)
        return wrapped(*args, **kwargs)

    return wrapper


def observe_after(where: str, record: Callable, active: Callable = active_recorder) -> Callable:
    """Return a wrapper that records after the call returned."""

    def wrapper(wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        rec = active()
        if rec is not None:
            try:
                record(rec, instance, result, args, kwargs)
            except Exception as exc:
                rec.error(where, exc)
        return result

    return wrapper
