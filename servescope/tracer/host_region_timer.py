"""Host-clock region timer: the stand-in for GPU timers where there is no CUDA (the CPU build)."""

from __future__ import annotations

from typing import Callable

from servescope.tracer.clock import now_ns


class HostRegionTimer:
    """Times regions on the host clock; rows go out in worker_regions column order."""

    def __init__(self, append_row: Callable[[tuple], None], rank: int = 0) -> None:
        self._append = append_row
        self.rank = rank
        self.dropped = 0
        self.errors = 0

    def start(self, step_id: int | None, region: str) -> tuple:
        """Return a token for the region that starts now."""
        return (step_id, region, now_ns())

    def end(self, token: tuple) -> None:
        """Close the region of token and record it."""
        step_id, region, t0 = token
        self._append((step_id, self.rank, region, t0, now_ns(), None, None, None))

    def harvest(self) -> None:
        """Nothing to resolve on the host."""

    def close(self) -> None:
        """Nothing to release on the host."""
