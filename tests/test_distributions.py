"""Percentiles, summaries, bootstrap intervals and CDFs: conventions and hand-checked values."""

import functools
import math

import numpy as np
import pytest

from servescope.analysis.distributions import bootstrap_ci, cdf, percentile, summarize


def test_percentile_interpolates_linearly_between_order_statistics():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 0.9 * 3 = 2.7: 3 + 0.7 * (4 - 3)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert list(percentile(values, [25, 75])) == pytest.approx([1.75, 3.25])


def test_percentile_excludes_nan_and_is_nan_without_samples():
    assert percentile([1.0, math.nan, 3.0], 50) == 2.0
    assert math.isnan(percentile([], 50))
    assert math.isnan(percentile([math.nan], 99))
    assert np.isnan(percentile([], [50, 90])).all()


def test_summarize_gives_the_standard_keys_and_values():
    summary = summarize(np.arange(1, 101, dtype=float))
    assert set(summary) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert summary["count"] == 100 and summary["mean"] == 50.5 and summary["max"] == 100.0
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)


def test_summarize_counts_only_defined_samples():
    summary = summarize([1.0, math.nan, math.nan, 3.0])
    assert summary["count"] == 2 and summary["mean"] == 2.0 and summary["max"] == 3.0


def test_summarize_reports_p999_only_from_ten_thousand_samples():
    assert "p999" not in summarize(np.arange(9_999, dtype=float))
    summary = summarize(np.arange(10_000, dtype=float))
    assert summary["p999"] == pytest.approx(9989.001)  # rank 0.999 * 9999
    with_nans = np.concatenate([np.arange(9_999, dtype=float), [math.nan] * 5])
    assert "p999" not in summarize(with_nans)


def test_summarize_without_samples_gives_count_zero_and_none():
    for empty in ([], [math.nan, math.nan]):
        assert summarize(empty) == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None,
                                    "max": None}


def test_summarize_leaves_its_input_unchanged():
    values = np.array([5.0, 1.0, math.nan, 3.0, 2.0])
    summarize(values)
    np.testing.assert_array_equal(values, [5.0, 1.0, math.nan, 3.0, 2.0])


def test_summaries_are_plain_python_numbers():
    summary = summarize(np.array([1, 2, 3], dtype=np.int64))
    assert all(type(v) in (int, float) for v in summary.values())


def test_bootstrap_ci_of_the_mean_brackets_it_with_the_expected_width():
    values = np.random.default_rng(1).normal(10.0, 1.0, 2_000)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    # Standard error 1 / sqrt(2000): a 95% interval about 2 * 1.96 * 0.0224 = 0.088 wide.
    assert 0.07 < hi - lo < 0.11


def test_bootstrap_ci_is_reproducible_and_depends_on_seed():
    values = np.random.default_rng(2).exponential(1.0, 500)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_takes_any_axis_statistic_and_a_level():
    values = np.random.default_rng(5).exponential(1.0, 1_000)
    p99 = functools.partial(np.percentile, q=99)
    lo, hi = bootstrap_ci(values, stat=p99, n_boot=300)
    assert lo <= np.percentile(values, 99) <= hi
    narrow, wide = bootstrap_ci(values, level=0.5), bootstrap_ci(values, level=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_ci_of_constant_values_is_a_point_and_of_nothing_is_nan():
    assert bootstrap_ci([2.5] * 50 + [math.nan]) == (2.5, 2.5)
    lo, hi = bootstrap_ci([math.nan])
    assert math.isnan(lo) and math.isnan(hi)


def test_cdf_sorts_and_steps_to_one_without_nan():
    x, y = cdf([3.0, math.nan, 1.0, 2.0])
    assert list(x) == [1.0, 2.0, 3.0]
    assert list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])
    x, y = cdf([])
    assert len(x) == 0 and len(y) == 0
