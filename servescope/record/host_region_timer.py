"""Host-clock region timer: the stand-in for GPU timers where there is no CUDA (the CPU build)."""

from __future__ import annotations

from typing import Callable

from servescope.run.clock import now_ns
from servescope.record.thread_usage import thread_usage, usage_between


class HostRegionTimer:
    """Times regions on the host clock; rows go out in worker_regions column order."""

    def __init__(self, append_row: Callable[[tuple], None], rank: int = 0) -> None:
        self._append = append_row
        self.rank = rank
        self.engine_index: int | None = None  # set by the patch once the engine is known
        self.dropped = 0
        self.errors = 0

    def start(self, step_id: int | None, region: str) -> tuple:
        """Return a token for the region that starts now."""
        return (step_id, region, now_ns(), thread_usage())

    def end(self, token: tuple) -> None:
        """Close the region of token and record it."""
        usage = thread_usage()  # read inside [host_start_ns, host_end_ns]: host_cpu_ns <= the wall time
        t1 = now_ns()
        step_id, region, t0, usage0 = token
        self._append((step_id, self.rank, region, t0, t1, None, None, None, *usage_between(usage0, usage), self.engine_index))

    def harvest(self) -> None:
        """Nothing to resolve on the host."""

    def close(self) -> None:
        """Nothing to release on the host."""
