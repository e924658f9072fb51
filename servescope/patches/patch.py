"""Reversible method patches in the instrumentation style: ``wrapper(wrapped, instance, args, kwargs)``.

A ``Patch`` names a target (``module``, ``"Class.method"``) and a wrapper. Applied, the method
becomes a thin function that calls ``wrapper(original, self, args, kwargs)``; the wrapper calls
``wrapped(*args, **kwargs)`` itself and never copies the engine's parameter list, so an argument
renamed or added inside the supported range reaches the engine untouched (read an argument with
``arg(args, kwargs, index, name)``). A ``PatchSet`` applies patches, refuses (and says why) when a
target is missing, never patches twice, and ``remove_all()`` puts every original back exactly.

Wrappers follow three rules (see observe.py for the common shapes): check the switch first and
call straight through when recording is off; do all recording work after (or before) the call
inside ``try``, counting an exception with ``rec.error`` instead of raising it into the engine;
never change the call's arguments or result.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from types import MethodType
from typing import Any, Callable

logger = logging.getLogger("servescope")

ORIGINAL_ATTR = "__servescope_original__"

Wrapper = Callable[[Callable, Any, tuple, dict], Any]


@dataclass(frozen=True)
class Patch:
    module: str  # e.g. "vllm.v1.core.sched.scheduler"
    target: str  # e.g. "Scheduler.schedule"
    wrapper: Wrapper  # wrapper(wrapped, instance, args, kwargs) -> the call's result
    optional: bool = False  # absent in some supported versions: skip quietly
    part: str | None = None  # the recording part this patch serves (run.config.PARTS); None: always

    @property
    def name(self) -> str:
        return f"{self.module}.{self.target}"


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Return a call's argument by position (args[index]) or keyword (kwargs[name])."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def bind(wrapper: Wrapper, original: Callable) -> Callable:
    """Return the function that replaces a method: it hands the call to wrapper(original, self, args, kwargs)."""

    @functools.wraps(original)
    def patched(self, *args, **kwargs):
        return wrapper(MethodType(original, self), self, args, kwargs)

    return patched


class PatchSet:
    """The patches applied in this process, with what they replaced."""

    def __init__(self, ledger=None) -> None:
        self._applied: dict[str, tuple[Any, str, Any, bool]] = {}
        self.refused: dict[str, str] = {}
        self.ledger = ledger  # record.self_timing.HookLedger: charge each hook's own host time (a diagnostic)

    @property
    def applied(self) -> list[str]:
        return list(self._applied)

    def apply(self, patch: Patch) -> bool:
        """Apply one patch; return True if it is in place (now or already)."""
        if patch.name in self._applied:
            return True
        try:
            owner = importlib.import_module(patch.module)
            *path, attr = patch.target.split(".")
            for part in path:
                owner = getattr(owner, part)
        except Exception as exc:
            return self._refuse(patch, f"cannot import target: {exc!r}")
        own = attr in vars(owner)
        if own:
            original = vars(owner)[attr]
        elif hasattr(owner, attr):
            original = getattr(owner, attr)
        else:
            return self._refuse(patch, "attribute not found in this engine version")
        if getattr(original, ORIGINAL_ATTR, None) is not None:
            return True  # another PatchSet (or an earlier import) already wrapped it
        if isinstance(original, (staticmethod, classmethod)) or not callable(original):
            return self._refuse(patch, "target is not a plain method")
        if self.ledger is not None:
            from servescope.record.self_timing import timed_binding

            replacement = timed_binding(patch.wrapper, original, patch.target, self.ledger)
        else:
            replacement = bind(patch.wrapper, original)
        setattr(replacement, ORIGINAL_ATTR, original)
        setattr(owner, attr, replacement)
        self._applied[patch.name] = (owner, attr, original, own)
        return True

    def remove_all(self) -> None:
        """Put every original attribute back, in reverse order of patching."""
        for name in reversed(list(self._applied)):
            owner, attr, original, own = self._applied.pop(name)
            if own:
                setattr(owner, attr, original)
            else:
                try:
                    delattr(owner, attr)
                except AttributeError:
                    pass

    def _refuse(self, patch: Patch, why: str) -> bool:
        if not patch.optional:
            self.refused[patch.name] = why
            logger.warning("servescope: not patching %s: %s", patch.name, why)
        return False


def is_patched(func: Any) -> bool:
    """Return True if func is a servescope wrapper."""
    func = getattr(func, "__func__", func)
    return getattr(func, ORIGINAL_ATTR, None) is not None
