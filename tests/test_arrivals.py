"""Arrival processes: rates and burstiness within tolerances derived from the sample size.

For n gaps of mean 1/rate and coefficient of variation c, the sample mean gap has
standard error c / (rate sqrt(n)), and the sample CV (gamma gaps) has standard error
sqrt(c^2 (1 + c^2) / (2 n)) (delta method: gamma skewness 2c, excess kurtosis 6c^2).
Counts of a Poisson process in an interval have standard deviation sqrt(mean).
Every check allows 5 standard errors, so a correct generator fails with probability
below 1e-6 for any seed, while a wrong rate or CV of a few percent is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from servescope.bench.workloads.arrivals import (
    ClosedLoop,
    closed_loop,
    expected_ramp_count,
    gamma_arrivals,
    poisson_arrivals,
    ramp_arrivals,
    replay_arrivals,
    replay_window_mask,
)

SIGMAS = 5.0


def gap_cv(arrivals: np.ndarray) -> float:
    gaps = np.diff(np.concatenate([[0.0], arrivals]))
    return float(gaps.std(ddof=1) / gaps.mean())


def cv_standard_error(cv: float, n: int) -> float:
    return float(np.sqrt(cv**2 * (1 + cv**2) / (2 * n)))


@pytest.mark.parametrize("rate", [0.5, 4.0, 250.0])
def test_poisson_mean_rate_and_unit_cv(rate):
    n = 200_000
    arrivals = poisson_arrivals(rate, count=n, seed=11)
    assert arrivals.shape == (n,)
    assert np.all(np.diff(arrivals) >= 0) and arrivals[0] > 0
    mean_gap = arrivals[-1] / n
    assert abs(mean_gap - 1 / rate) < SIGMAS * (1 / rate) / np.sqrt(n)
    assert abs(gap_cv(arrivals) - 1.0) < SIGMAS * cv_standard_error(1.0, n)


@pytest.mark.parametrize("cv", [0.25, 0.5, 2.0, 4.0])
def test_gamma_mean_rate_and_cv(cv):
    n, rate = 200_000, 10.0
    arrivals = gamma_arrivals(rate, cv, count=n, seed=5)
    mean_gap = arrivals[-1] / n
    assert abs(mean_gap - 1 / rate) < SIGMAS * cv * (1 / rate) / np.sqrt(n)
    assert abs(gap_cv(arrivals) - cv) < SIGMAS * cv_standard_error(cv, n)


def test_gamma_with_cv_one_is_exactly_poisson():
    assert np.array_equal(gamma_arrivals(3.0, 1.0, count=1000, seed=9), poisson_arrivals(3.0, count=1000, seed=9))


def test_same_seed_same_arrivals_other_seed_other_arrivals():
    assert np.array_equal(gamma_arrivals(2.0, 3.0, count=500, seed=1), gamma_arrivals(2.0, 3.0, count=500, seed=1))
    assert not np.array_equal(gamma_arrivals(2.0, 3.0, count=500, seed=1), gamma_arrivals(2.0, 3.0, count=500, seed=2))


def test_duration_mode_covers_the_window_with_the_expected_count():
    rate, duration = 20.0, 5_000.0
    arrivals = poisson_arrivals(rate, duration_s=duration, seed=4)
    expected = rate * duration
    assert arrivals.max() < duration
    assert abs(arrivals.size - expected) < SIGMAS * np.sqrt(expected)
    # The last arrival is close to the end: no truncated tail from chunking.
    assert duration - arrivals.max() < 20 / rate


def test_count_and_duration_are_exclusive_and_checked():
    with pytest.raises(ValueError):
        poisson_arrivals(1.0)
    with pytest.raises(ValueError):
        poisson_arrivals(1.0, count=3, duration_s=3.0)
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, count=3)
    with pytest.raises(ValueError):
        gamma_arrivals(1.0, 0.0, count=3)
    assert poisson_arrivals(1.0, count=0).size == 0
    assert poisson_arrivals(1.0, duration_s=0.0).size == 0


def test_ramp_counts_follow_the_piecewise_linear_rate():
    times, rates = [0.0, 100.0, 200.0, 300.0], [0.0, 50.0, 50.0, 10.0]
    arrivals = ramp_arrivals(times, rates, seed=2)
    assert np.all(np.diff(arrivals) >= 0)
    assert arrivals.min() >= 0 and arrivals.max() < 300
    edges = np.arange(0.0, 301.0, 25.0)
    counts, _ = np.histogram(arrivals, edges)
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        expected = expected_ramp_count(times, rates, low, high)
        assert abs(count - expected) < SIGMAS * np.sqrt(expected) + 1, (low, high, count, expected)


def test_expected_ramp_count_integrates_the_rate():
    assert expected_ramp_count([0, 10], [0, 10], 0, 10) == pytest.approx(50.0)
    assert expected_ramp_count([0, 10], [0, 10], 5, 20) == pytest.approx(37.5)
    assert expected_ramp_count([0, 10], [0, 10], 20, 30) == 0.0


def test_ramp_is_reproducible_and_validated():
    assert np.array_equal(ramp_arrivals([0, 10], [1, 5], seed=3), ramp_arrivals([0, 10], [1, 5], seed=3))
    with pytest.raises(ValueError):
        ramp_arrivals([0, 0], [1, 1])
    with pytest.raises(ValueError):
        ramp_arrivals([0, 1], [0, 0])


def test_replay_windows_rebases_and_scales():
    trace = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    assert replay_window_mask(trace, 1.0, 4.0).tolist() == [False, True, True, True, False, False]
    assert replay_arrivals(trace, time_scale=0.5, start_s=1.0, end_s=4.0).tolist() == [0.0, 0.5, 1.0]
    assert replay_arrivals(trace, time_scale=2.0).tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 20.0]
    with pytest.raises(ValueError):
        replay_arrivals(trace, time_scale=0)
    with pytest.raises(ValueError):
        replay_arrivals(trace, start_s=3, end_s=3)


def test_closed_loop_marker_holds_a_positive_concurrency():
    assert closed_loop(8) == ClosedLoop(8)
    assert closed_loop(8).concurrency == 8
    with pytest.raises(ValueError):
        closed_loop(0)
