"""Wrapper factories for hooks that only observe a call: the call itself is never touched.

``observe_before(where, record, active)`` runs ``record(rec, self, *args, **kwargs)`` before the
original, ``observe_after(where, record, active)`` runs ``record(rec, self, result, *args, **kwargs)``
after it; both only while ``active()`` returns a recorder (each engine has its own switch), and an
exception in ``record`` is counted, never raised.
"""

from __future__ import annotations

import functools
from typing import Callable


def observe_before(where: str, record: Callable, active: Callable) -> Callable[[Callable], Callable]:
    """Return a patch wrapper factory that records before the original runs."""

    def make_wrapper(original):
        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            rec = active()
            if rec is not None:
                try:
                    record(rec, self, *args, **kwargs)
                except Exception as exc:
                    rec.error(where, exc)
            return original(self, *args, **kwargs)

        return wrapper

    return make_wrapper


def observe_after(where: str, record: Callable, active: Callable) -> Callable[[Callable], Callable]:
    """Return a patch wrapper factory that records after the original returned."""

    def make_wrapper(original):
        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            rec = active()
            if rec is not None:
                try:
                    record(rec, self, result, *args, **kwargs)
                except Exception as exc:
                    rec.error(where, exc)
            return result

        return wrapper

    return make_wrapper
