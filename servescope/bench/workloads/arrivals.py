"""Arrival processes: when requests are sent, as offsets in seconds from the start.

Open loop (the client sends at these times whatever the server does):

* ``poisson_arrivals``: exponential gaps at a fixed rate.
* ``gamma_arrivals``: gamma gaps with a given coefficient of variation (CV);
  CV > 1 is burstier than Poisson, CV < 1 more regular, CV = 1 is Poisson (the
  very same draws as ``poisson_arrivals`` with the same seed).
* ``ramp_arrivals``: a Poisson process whose rate is piecewise linear in time,
  drawn by thinning (Lewis-Shedler).
* ``replay_arrivals``: a trace's own timestamps, windowed and time-scaled.

Closed loop: ``ClosedLoop(concurrency)`` is a marker, not times; the driver keeps
that many requests in flight and sends the next one when one finishes.

Every generator takes a ``seed`` and returns the same offsets for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClosedLoop:
    """Marker for closed-loop load: the driver keeps ``concurrency`` requests in flight."""

    concurrency: int

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")


def closed_loop(concurrency: int) -> ClosedLoop:
    """Returns a closed-loop marker of ``concurrency`` requests in flight (no arrival times)."""
    return ClosedLoop(concurrency)


def poisson_arrivals(
    rate_per_s: float, count: int | None = None, duration_s: float | None = None, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Returns Poisson arrival offsets in seconds: ``count`` of them, or all before ``duration_s``."""
    return gamma_arrivals(rate_per_s, 1.0, count=count, duration_s=duration_s, seed=seed)


def gamma_arrivals(
    rate_per_s: float, cv: float, count: int | None = None, duration_s: float | None = None, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Returns arrival offsets in seconds with gamma gaps of mean 1/rate and coefficient of variation ``cv``."""
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if not cv > 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    rng = np.random.default_rng(seed)
    mean_gap = 1.0 / rate_per_s

    def gaps(n: int) -> np.ndarray:
        if cv == 1.0:
            return rng.exponential(mean_gap, n)
        shape = 1.0 / cv**2
        return rng.gamma(shape, mean_gap / shape, n)

    return _accumulate(gaps, rate_per_s, count, duration_s)


def _accumulate(gaps, rate_per_s: float, count: int | None, duration_s: float | None) -> np.ndarray:
    if (count is None) == (duration_s is None):
        raise ValueError("give exactly one of count or duration_s")
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return np.cumsum(gaps(count))
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    expected = rate_per_s * duration_s
    chunk = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(gaps(chunk))
    while times[-1] < duration_s:
        times = np.concatenate([times, times[-1] + np.cumsum(gaps(chunk))])
    return times[times < duration_s]


def ramp_arrivals(times_s: list[float], rates_per_s: list[float], seed: int | np.random.Generator = 0) -> np.ndarray:
    """Returns Poisson arrival offsets in seconds over [times_s[0], times_s[-1]) whose rate (req/s) is linear between the given points."""
    times = np.asarray(times_s, dtype=np.float64)
    rates = np.asarray(rates_per_s, dtype=np.float64)
    if times.shape != rates.shape or times.size < 2:
        raise ValueError("need matching times_s and rates_per_s with at least two points")
    if times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError("times_s must start at >= 0 and increase strictly")
    if np.any(rates < 0) or rates.max() <= 0:
        raise ValueError("rates_per_s must be >= 0 with at least one > 0")
    peak = float(rates.max())
    rng = np.random.default_rng(seed)
    candidates = times[0] + poisson_arrivals(peak, duration_s=float(times[-1] - times[0]), seed=rng)
    keep = rng.random(candidates.size) * peak < np.interp(candidates, times, rates)
    return candidates[keep]


def expected_ramp_count(times_s: list[float], rates_per_s: list[float], start_s: float, end_s: float) -> float:
    """Returns the expected number of ramp arrivals in [start_s, end_s): the integral of the rate (requests)."""
    times = np.asarray(times_s, dtype=np.float64)
    low, high = max(start_s, times[0]), min(end_s, times[-1])
    if high <= low:
        return 0.0
    grid = np.union1d(np.clip(times, low, high), [low, high])
    return float(np.trapezoid(np.interp(grid, times, rates_per_s), grid))


def replay_window_mask(trace_arrival_s: np.ndarray, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Returns a bool mask of the trace arrivals (s) that fall in [start_s, end_s)."""
    arrivals = np.asarray(trace_arrival_s, dtype=np.float64)
    mask = arrivals >= start_s
    if end_s is not None:
        mask &= arrivals < end_s
    return mask


def replay_arrivals(
    trace_arrival_s: np.ndarray, time_scale: float = 1.0, start_s: float = 0.0, end_s: float | None = None
) -> np.ndarray:
    """Returns the trace arrivals in [start_s, end_s), as (t - start_s) * time_scale seconds; time_scale 0.5 replays twice as fast."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"empty window [{start_s}, {end_s})")
    arrivals = np.asarray(trace_arrival_s, dtype=np.float64)
    return (arrivals[replay_window_mask(arrivals, start_s, end_s)] - start_s) * time_scale
