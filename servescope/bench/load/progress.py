"""Live progress of a benchmark: sent, completed, failed, in flight, running client TTFT / TBT percentiles.

``LiveStats`` is fed by a driver (``on_sent`` when a request leaves, ``on_result`` when it
ends) and is cheap to update; ``live_progress(stats)`` redraws it with rich a few times a
second on stderr, and says nothing when stderr is not a terminal unless asked.
Percentiles are of what the client saw so far (TTFT of finished requests, gaps between
token-carrying chunks), numpy 'linear'.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from servescope.bench.load.client import RequestResult

REFRESH_PER_S = 4


@dataclass
class LiveStats:
    """Counters and client-side latency samples of a run in progress (times in seconds)."""

    planned: int | None = None  # requests the run may send (None: bounded by duration only)
    duration_s: float | None = None
    sent: int = 0
    completed: int = 0
    failed: int = 0
    output_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    tbt_s: list[float] = field(default_factory=list)
    started_ns: int = field(default_factory=time.monotonic_ns)

    @property
    def in_flight(self) -> int:
        """Return requests sent and not yet ended."""
        return self.sent - self.completed - self.failed

    def on_sent(self) -> None:
        """Count one request sent."""
        self.sent += 1

    def on_result(self, result: RequestResult) -> None:
        """Count one ended request and keep its TTFT and chunk gaps (s)."""
        if result.status == "ok":
            self.completed += 1
        else:
            self.failed += 1
        self.output_tokens += result.output_tokens
        if result.chunk_times_ns:
            self.ttft_s.append(result.ttft_s)
            self.tbt_s.extend(result.chunk_gaps_s())

    def elapsed_s(self) -> float:
        """Return seconds since the stats were created."""
        return (time.monotonic_ns() - self.started_ns) / 1e9

    def percentiles_ms(self, samples: list[float], qs=(50, 90, 99)) -> list[float | None]:
        """Return the qs-th percentiles of samples (s) in milliseconds, None when there are none."""
        if not samples:
            return [None] * len(qs)
        return [float(v) * 1e3 for v in np.percentile(np.asarray(samples), qs)]

    def table(self) -> Table:
        """Return the rich table drawn by the live display."""
        elapsed = self.elapsed_s()
        of = f"/{self.planned}" if self.planned is not None else ""
        until = f"/{self.duration_s:g}" if self.duration_s is not None else ""
        grid = Table(title=f"servescope bench  {elapsed:.1f}{until} s", title_justify="left", box=None)
        for column in ("sent", "completed", "failed", "in flight", "tok/s"):
            grid.add_column(column, justify="right")
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        grid.add_row(f"{self.sent}{of}", str(self.completed), str(self.failed), str(self.in_flight), f"{rate:.1f}")
        latency = Table(box=None)
        latency.add_column("client ms")
        for column in ("p50", "p90", "p99", "count"):
            latency.add_column(column, justify="right")
        for label, samples in (("TTFT", self.ttft_s), ("TBT/chunk", self.tbt_s)):
            cells = ["-" if v is None else f"{v:.1f}" for v in self.percentiles_ms(samples)]
            latency.add_row(label, *cells, str(len(samples)))
        outer = Table.grid()
        outer.add_row(grid)
        outer.add_row(latency)
        return outer


@contextlib.contextmanager
def live_progress(stats: LiveStats, *, enabled: bool | None = None) -> Iterator[LiveStats]:
    """Redraw stats on stderr while the block runs (enabled: default when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield stats
        return
    console = Console(stderr=True)

    class _Renderable:
        def __rich__(self):
            return stats.table()

    with Live(_Renderable(), console=console, refresh_per_second=REFRESH_PER_S, transient=False):
        yield stats
