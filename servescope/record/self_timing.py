"""Self-timing (a diagnostic): how much host time each of servescope's hooks adds to the engine's threads.

With ``Config.self_timing`` (``servescope run --self-timing``) every patched method is bound through
``timed_binding``: it reads the clock on entry and exit of the replacement and around the engine's
own call, and charges the difference — the hook's work, wrapper and clock reads included — to the
hook's name. Nested hooks (the EngineCore's execute_model wrapper around the worker's, in one thread)
are not counted twice: an outer hook's charge excludes the inner call. The ledger is written to the
process's spool about once a second and when the process closes its recorder, so a killed process
keeps its account up to its last second. What it does not see: torch module hooks (the Model Runner V2
forward hooks), the NVML sampler's thread, and the cost of the two extra clock reads it adds itself
(so it is an upper bound of what the hooks cost without it).
"""

from __future__ import annotations

import time
from types import MethodType
from typing import Callable

from servescope.run.spool import SELF_TIMING

_clock = time.perf_counter_ns
SNAPSHOT_EVERY_NS = 1_000_000_000


class HookLedger:
    """Calls and host nanoseconds charged to each hook of this process."""

    def __init__(self, write: Callable[[tuple], None]) -> None:
        self._write = write  # takes the record tuple (SELF_TIMING, {name: (calls, ns, first call's ns)})
        self.totals: dict[str, list[int]] = {}
        self._last = _clock()

    def charge(self, name: str, ns: int) -> None:
        """Add one call of ns nanoseconds to name; write a snapshot when a second has passed.

        The first call of a hook is kept apart too: it pays one-time work (the engine facts, building a timer)
        that a steady-state cost per call must not average in."""
        entry = self.totals.get(name)
        if entry is None:
            self.totals[name] = [1, ns, ns]
        else:
            entry[0] += 1
            entry[1] += ns
        now = _clock()
        if now - self._last > SNAPSHOT_EVERY_NS:
            self._last = now
            self.snapshot()

    def snapshot(self) -> None:
        """Write the totals so far (the last snapshot of a process is its account)."""
        try:
            self._write((SELF_TIMING, {k: tuple(v) for k, v in self.totals.items()}))
        except Exception:
            pass


def timed_binding(wrapper, original, name: str, ledger: HookLedger) -> Callable:
    """Return a method replacement like patch.bind's that also charges the hook's own time to the ledger."""

    def patched(self, *args, **kwargs):
        t0 = _clock()
        inner = [0]
        bound = MethodType(original, self)

        def wrapped(*a, **k):
            s = _clock()
            try:
                return bound(*a, **k)
            finally:
                inner[0] += _clock() - s

        try:
            return wrapper(wrapped, self, args, kwargs)
        finally:
            ledger.charge(name, _clock() - t0 - inner[0])

    return patched
