"""Reversible method patches: one `Patch` per target, applied and removed by a `PatchSet`.

A patch replaces ``module.Class.method`` with ``make_wrapper(original)`` on the class that
the target names. It refuses (and says why) when the module or attribute is missing, never
patches twice, and ``PatchSet.remove_all()`` puts every original back exactly.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger("servescope")

ORIGINAL_ATTR = "__servescope_original__"


@dataclass(frozen=True)
class Patch:
    module: str  # e.g. "vllm.v1.core.sched.scheduler"
    target: str  # e.g. "Scheduler.schedule"
    make_wrapper: Callable[[Callable], Callable]
    optional: bool = False  # absent in some supported versions: skip quietly

    @property
    def name(self) -> str:
        return f"{self.module}.{self.target}"


class PatchSet:
    """The patches applied in this process, with what they replaced."""

    def __init__(self) -> None:
        self._applied: dict[str, tuple[Any, str, Any, bool]] = {}
        self.refused: dict[str, str] = {}

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
            return self._refuse(patch, "attribute not found in this vLLM version")
        if getattr(original, ORIGINAL_ATTR, None) is not None:
            return True  # another PatchSet (or an earlier import) already wrapped it
        func = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
        wrapper = patch.make_wrapper(func)
        setattr(wrapper, ORIGINAL_ATTR, original)
        if isinstance(original, staticmethod):
            wrapper = staticmethod(wrapper)
        elif isinstance(original, classmethod):
            wrapper = classmethod(wrapper)
        setattr(owner, attr, wrapper)
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
