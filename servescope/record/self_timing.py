"""Self-timing (a diagnostic): how much host time each of servescope's hooks adds to the engine's threads.

With ``Config.self_timing`` (``servescope run --self-timing``) every patched method is bound through
``timed_binding``: it reads the clock on entry and exit of the replacement and around the engine's
own call, and charges the difference — the hook's work, wrapper and clock reads included — to the
hook's name, twice: on the wall clock and on the thread's CPU clock (``time.thread_time_ns``). Together they
split the wall time: CPU time is the hook's code running; the rest is the thread waiting inside the hook
(for the GIL another thread holds, or for a CPU the OS gave to another thread), which the hook's presence
exposes but its code does not spend. Nested hooks (the EngineCore's execute_model wrapper around the worker's, in one thread)
are not counted twice: an outer hook's charge excludes the inner call. The ledger is written to the
process's spool about once a second and when the process closes its recorder, so a killed process
keeps its account up to its last second. What it does not see: torch module hooks (the Model Runner V2
forward hooks), the NVML sampler's thread, and the cost of the two extra clock reads it adds itself
and the four thread-clock reads (a system call each, about 0.1-0.5 us) that the CPU time costs, so it is an
upper bound of what the hooks cost without it).
"""

from __future__ import annotations

import time
from types import MethodType
from typing import Callable

from servescope.run.spool import SELF_TIMING

_clock = time.perf_counter_ns
_cpu_clock = time.thread_time_ns
SNAPSHOT_EVERY_NS = 1_000_000_000


class HookLedger:
    """Calls, wall and thread-CPU nanoseconds charged to each hook of this process."""

    def __init__(self, write: Callable[[tuple], None]) -> None:
        # takes the record tuple (SELF_TIMING, {name: (calls, ns, first call's ns, cpu ns, first call's cpu ns)})
        self._write = write
        self.totals: dict[str, list[int]] = {}
        self._last = _clock()

    def charge(self, name: str, ns: int, cpu_ns: int) -> None:
        """Add one call of ns wall and cpu_ns thread-CPU nanoseconds to name; write a snapshot when a second has passed.

        The first call of a hook is kept apart too: it pays one-time work (the engine facts, building a timer)
        that a steady-state cost per call must not average in."""
        entry = self.totals.get(name)
        if entry is None:
            self.totals[name] = [1, ns, ns, cpu_ns, cpu_ns]
        else:
            entry[0] += 1
            entry[1] += ns
            entry[3] += cpu_ns
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
        c0 = _cpu_clock()
        t0 = _clock()
        inner = [0, 0]  # the engine's own call: wall ns, thread-CPU ns
        bound = MethodType(original, self)

        def wrapped(*a, **k):
            c = _cpu_clock()
            s = _clock()
            try:
                return bound(*a, **k)
            finally:
                inner[0] += _clock() - s
                inner[1] += _cpu_clock() - c

        try:
            return wrapper(wrapped, self, args, kwargs)
        finally:
            ledger.charge(name, _clock() - t0 - inner[0], _cpu_clock() - c0 - inner[1])

    return patched
