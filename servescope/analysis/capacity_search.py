"""Capacity: the highest request rate whose run meets the SLO, by a bracketing search.

docs/metrics.md ("Capacity and goodput"), as in Etalon/Metron's capacity search: the bracket
starts as ``[0, 2 * start_rate]``; each round probes its midpoint. On a pass the lower bound
moves up to it, and when the probe was above ``expand_fraction`` (80%) of the upper bound the
upper bound doubles, but never past the lowest rate that has failed. On a fail the upper bound
moves down to it. The search stops when ``upper - lower <= granularity * upper`` (relative
granularity), when the upper bound falls to ``min_rate`` or below (capacity below the range
worth measuring), or after ``max_probes`` probes. Each probed rate is cached: a rate asked for
twice is answered from the cache, and a cache from an earlier search can be passed in.

The search is a pure function of ``probe(rate) -> bool`` (run the workload at that rate and
judge the SLO, e.g. ``evaluate_slos(...).service_level_pass``); it runs nothing itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True, slots=True)
class Probe:
    """One probed rate (requests/s), its verdict, and whether it came from the cache."""

    rate: float
    passed: bool
    cached: bool


@dataclass(slots=True)
class CapacityResult:
    """The capacity found (requests/s; 0.0 when no probed rate passed) and how it was found."""

    capacity: float  # highest passing rate probed
    lowest_failing: float  # lowest failing rate probed (inf if none failed)
    lower: float  # final bracket
    upper: float
    converged: bool  # stopped on the granularity criterion
    stop_reason: str  # "granularity" | "min_rate" | "max_probes"
    history: list[Probe] = field(default_factory=list)  # every round, in order
    cache: dict[float, bool] = field(default_factory=dict)

    @property
    def num_probes(self) -> int:
        """Return how many times the probe callback actually ran."""
        return sum(1 for p in self.history if not p.cached)


def _cache_key(rate: float) -> float:
    return float(f"{rate:.12g}")  # merges rates that differ only by float noise


def search_capacity(
    probe: Callable[[float], bool],
    *,
    start_rate: float,
    granularity: float = 0.05,
    expand_fraction: float = 0.8,
    max_probes: int = 50,
    min_rate: float | None = None,
    cache: dict[float, bool] | None = None,
) -> CapacityResult:
    """Return the highest rate (requests/s) for which probe(rate) passes, within relative granularity."""
    if not start_rate > 0:
        raise ValueError("start_rate must be > 0")
    if not 0 < granularity < 1:
        raise ValueError("granularity must be in (0, 1)")
    floor_rate = start_rate * granularity if min_rate is None else float(min_rate)
    known = {} if cache is None else cache
    history: list[Probe] = []
    lower, upper = 0.0, 2.0 * start_rate
    best_pass, lowest_fail = 0.0, math.inf
    stop_reason = "max_probes"
    calls = 0
    max_rounds = max_probes + len(known)  # cache hits are free but finite
    while len(history) < max_rounds:
        if upper - lower <= granularity * upper:
            stop_reason = "granularity"
            break
        if upper <= floor_rate:
            stop_reason = "min_rate"
            break
        if calls >= max_probes:
            break
        rate = _cache_key(0.5 * (lower + upper))
        if rate in known:
            ok = known[rate]
            history.append(Probe(rate, ok, True))
        else:
            ok = bool(probe(rate))
            calls += 1
            known[rate] = ok
            history.append(Probe(rate, ok, False))
        if ok:
            best_pass = max(best_pass, rate)
            if rate > expand_fraction * upper:
                upper = min(upper * 2.0, lowest_fail)
            lower = rate
        else:
            lowest_fail = min(lowest_fail, rate)
            upper = rate
    return CapacityResult(
        capacity=best_pass,
        lowest_failing=lowest_fail,
        lower=lower,
        upper=upper,
        converged=stop_reason == "granularity",
        stop_reason=stop_reason,
        history=history,
        cache=known,
    )
