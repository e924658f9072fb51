import math

import numpy as np
import pytest

from servescope.analysis.capacity_search import search_capacity


class Oracle:
    """Passes iff rate <= limit; counts its calls."""

    def __init__(self, limit):
        self.limit = limit
        self.rates = []

    def __call__(self, rate):
        self.rates.append(rate)
        return rate <= self.limit


def test_finds_capacity_of_3_7_with_the_documented_probe_sequence():
    oracle = Oracle(3.7)
    result = search_capacity(oracle, start_rate=1.0, granularity=0.05)
    # [0,2] -> 1 P, 1.5 P, 1.75 P (> 0.8*2: upper 4), 2.875 P, 3.4375 P (> 0.8*4: upper 8),
    # 5.71875 F, 4.578125 F, 4.0078125 F, 3.72265625 F, 3.580078125 P (doubling capped by the fail)
    assert oracle.rates == [1.0, 1.5, 1.75, 2.875, 3.4375, 5.71875, 4.578125, 4.0078125, 3.72265625, 3.580078125]
    assert result.num_probes == 10
    assert result.capacity == 3.580078125
    assert result.lowest_failing == 3.72265625
    assert result.capacity <= 3.7 < result.lowest_failing
    assert result.lowest_failing - result.capacity <= 0.05 * result.lowest_failing
    assert result.converged and result.stop_reason == "granularity"
    assert [p.rate for p in result.history] == oracle.rates
    assert [p.passed for p in result.history] == [r <= 3.7 for r in oracle.rates]


@pytest.mark.parametrize("limit", np.random.default_rng(3).uniform(0.3, 60.0, size=25).tolist())
@pytest.mark.parametrize("granularity", [0.1, 0.02])
def test_capacity_within_granularity_for_any_limit(limit, granularity):
    oracle = Oracle(limit)
    result = search_capacity(oracle, start_rate=2.0, granularity=granularity)
    assert result.converged
    assert result.capacity <= limit < result.lowest_failing
    assert result.lowest_failing - result.capacity <= granularity * result.lowest_failing
    assert len(set(oracle.rates)) == len(oracle.rates)  # nothing probed twice
    # expansion needs ~log2(limit/start) doublings, each followed by a few passes; then bisection
    bound = 3 * max(0.0, math.log2(limit / 2.0)) + math.log2(1 / granularity) + 6
    assert result.num_probes <= bound


def test_cache_answers_repeated_rates_without_probing():
    first = search_capacity(Oracle(3.7), start_rate=1.0, granularity=0.05)
    again = Oracle(3.7)
    second = search_capacity(again, start_rate=1.0, granularity=0.05, cache=dict(first.cache))
    assert again.rates == []
    assert second.num_probes == 0
    assert all(p.cached for p in second.history)
    assert second.capacity == first.capacity
    # a finer granularity reuses the cached rates and probes only the new ones
    finer = Oracle(3.7)
    third = search_capacity(finer, start_rate=1.0, granularity=0.01, cache=dict(first.cache))
    assert finer.rates and not set(finer.rates) & set(first.cache)
    assert third.lowest_failing - third.capacity <= 0.01 * third.lowest_failing


def test_everything_failing_stops_at_min_rate_with_zero_capacity():
    oracle = Oracle(-1.0)
    result = search_capacity(oracle, start_rate=1.0, granularity=0.05)
    assert result.capacity == 0.0
    assert result.stop_reason == "min_rate"
    assert result.upper <= 0.05
    # upper halves with each fail until it is <= min_rate (start * granularity = 0.05)
    assert oracle.rates == [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]


def test_max_probes_caps_the_search():
    oracle = Oracle(1e9)
    result = search_capacity(oracle, start_rate=1.0, max_probes=7)
    assert result.num_probes == 7
    assert result.stop_reason == "max_probes" and not result.converged
    assert result.capacity == max(oracle.rates)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        search_capacity(Oracle(1), start_rate=0.0)
    with pytest.raises(ValueError):
        search_capacity(Oracle(1), start_rate=1.0, granularity=1.5)
