"""The one host clock every record uses, and the anchor that maps it to wall time."""

from __future__ import annotations

import time

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: one clock for every process of a host


def clock_anchor() -> dict[str, int]:
    """Return a (wall, monotonic) pair in ns, read back to back; wall = monotonic + offset."""
    m0 = time.monotonic_ns()
    w = time.time_ns()
    m1 = time.monotonic_ns()
    return {"wall_ns": w, "monotonic_ns": (m0 + m1) // 2, "anchor_uncertainty_ns": m1 - m0}


def wall_seconds_to_monotonic_ns(wall_s: float) -> int:
    """Return the monotonic ns of a wall-clock time (time.time() seconds) taken recently in this process."""
    return time.monotonic_ns() - int((time.time() - wall_s) * 1e9)
