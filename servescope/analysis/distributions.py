"""Distributions of a metric: percentiles, the standard summary, bootstrap intervals, CDFs.

Conventions, stated wherever a number is shown: NaN samples (metric undefined for
that request) are excluded and ``count`` is the number of samples left; percentiles
use linear interpolation between order statistics (numpy's ``'linear'`` method,
Hyndman & Fan type 7); P99.9 is reported only from 10,000 samples up.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

PERCENTILE_METHOD = "linear"
P999_MIN_COUNT = 10_000
BOOTSTRAP_BATCH_ELEMENTS = 1 << 22  # resampled values held at once by bootstrap_ci


def _finite_samples(values) -> np.ndarray:
    """Return values as a float64 array with NaNs removed (always a new array)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[~np.isnan(array)]


def percentile(values, q):
    """Return the q-th percentile(s) (q in 0..100) of the non-NaN values, linear interpolation; NaN if none."""
    samples = _finite_samples(values)
    if len(samples) == 0:
        return np.full(np.shape(q), np.nan) if np.ndim(q) else float("nan")
    result = np.percentile(samples, q, method=PERCENTILE_METHOD, overwrite_input=True)
    return float(result) if np.ndim(result) == 0 else result


def summarize(values) -> dict:
    """Return count, mean, p50, p90, p99, max (and p999 from 10,000 samples) of the non-NaN values, in their unit."""
    samples = _finite_samples(values)
    count = len(samples)
    if count == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    mean, maximum = float(samples.mean()), float(samples.max())
    qs = [50, 90, 99, 99.9] if count >= P999_MIN_COUNT else [50, 90, 99]
    # The samples are our own copy: let numpy partition it in place.
    ps = np.percentile(samples, qs, method=PERCENTILE_METHOD, overwrite_input=True)
    summary = {"count": count, "mean": mean, "p50": float(ps[0]), "p90": float(ps[1]),
               "p99": float(ps[2]), "max": maximum}
    if count >= P999_MIN_COUNT:
        summary["p999"] = float(ps[3])
    return summary


def bootstrap_ci(
    values,
    stat: Callable[..., np.ndarray] = np.mean,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Return the (lo, hi) percentile-bootstrap confidence interval of stat over the non-NaN values.

    ``stat(samples, axis=1)`` reduces each row of a 2-D array of resamples (np.mean,
    np.median, or e.g. ``functools.partial(np.percentile, q=99)``). Resamples are drawn
    in batches of rows, each batch one vectorised call. (nan, nan) when there are no samples.
    """
    samples = _finite_samples(values)
    n = len(samples)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows_per_batch = max(1, BOOTSTRAP_BATCH_ELEMENTS // n)
    estimates = np.empty(n_boot)
    for start in range(0, n_boot, rows_per_batch):
        rows = min(rows_per_batch, n_boot - start)
        resamples = samples[rng.integers(0, n, size=(rows, n))]
        estimates[start:start + rows] = stat(resamples, axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(estimates, [tail, 100.0 - tail], method=PERCENTILE_METHOD)
    return float(lo), float(hi)


def cdf(values) -> tuple[np.ndarray, np.ndarray]:
    """Return the empirical CDF of the non-NaN values: sorted values and fractions k/n (k = 1..n)."""
    x = np.sort(_finite_samples(values))
    y = np.arange(1, len(x) + 1) / len(x) if len(x) else np.empty(0)
    return x, y
