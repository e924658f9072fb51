"""What the calling thread did on the host: its CPU time and context switches.

A region's wall time on the host (host_end_ns - host_start_ns) is split by this into time on a
CPU (``host_cpu_ns``: user + system time of the thread) and time off it. Time off the CPU comes
with context switches: *voluntary* ones (the thread blocked: the GIL held by another thread, a
lock, a blocking CUDA call, I/O) or *involuntary* ones (the scheduler gave its core to another
thread).

Sources: the CPU time is ``CLOCK_THREAD_CPUTIME_ID`` (``time.thread_time_ns``), the scheduler's
own nanosecond account of the thread. ``getrusage(RUSAGE_THREAD)`` gives the switch counts; its
CPU times are not used because on some kernels they advance in scheduler ticks (4 ms on the
H100 machine: docs/case-studies/speculative-decoding.md), too coarse for one region.

Opt-in: the recording part ``thread`` (``servescope run --parts default,thread``, or
``SERVESCOPE_THREAD_USAGE=1``) makes the region timer read it (the speculative-decoding study
does); without it, or where RUSAGE_THREAD does not exist (not Linux), the columns stay null. Cost: about 3 us per region (two readings) on a 2-core EPYC
(benchmarks/hook_cost.py); on the H100 two tracing on/off runs with it on did not resolve its
cost from the machine's noise (docs/overhead.md), hence off by default.
"""

from __future__ import annotations

import resource
import time

_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)
AVAILABLE = _RUSAGE_THREAD is not None


def thread_usage() -> tuple[int, int, int] | None:
    """Return (cpu_ns, voluntary_switches, involuntary_switches) of the calling thread so far, or None."""
    if not AVAILABLE:
        return None
    usage = resource.getrusage(_RUSAGE_THREAD)
    return (time.thread_time_ns(), usage.ru_nvcsw, usage.ru_nivcsw)


NO_USAGE = (None, None, None)


def usage_between(before, after) -> tuple:
    """Return (host_cpu_ns, voluntary_switches, involuntary_switches) between two thread_usage() readings."""
    if before is None or after is None:
        return NO_USAGE
    return (after[0] - before[0], after[1] - before[1], after[2] - before[2])
