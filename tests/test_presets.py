"""Synthetic presets reproduce the published length statistics.

Published figures: "On Evaluating Performance of LLM Inference Systems", Table 1
(as copied in /work/shared/traces/README.md). Tolerance: 5% on 400k draws. The
sampling error of a quantile Q(p) is about Q(p) * dlogQ/dp * sqrt(p (1-p) / n);
the test also checks that 5% is at least 4 such standard errors for the median,
P99 and IQR, so the tolerance is not tighter than the noise it has to absorb (at
100k draws the widest case, the Mooncake decode median, would be only 3.6).
"""

from __future__ import annotations

import numpy as np
import pytest

from servescope.bench.workloads.length_distribution import QuantileLengthDistribution, fit_published, split_iqr
from servescope.bench.workloads.synthetic_presets import PRESETS, preset_names, sample_lengths, sample_preset
from servescope.bench.workloads.workload import WorkloadError, length_stats
from servescope.bench.workloads.catalog import load_workload

DRAWS = 400_000
TOLERANCE = 0.05

PUBLISHED_TABLE_1 = {
    # name: ((prefill median, IQR, P99), (decode median, IQR, P99))
    "azure-code-2024": ((1928, 2393, 7685), (8, 15, 276)),
    "azure-conv-2024": ((928, 1811, 6683), (41, 94, 694)),
    "mooncake": ((6345, 4243, 61616), (30, 343, 898)),
}


def relative_standard_error(distribution: QuantileLengthDistribution, p: float, n: int) -> float:
    step = 1e-3
    slope = (np.log(distribution.quantile(min(p + step, 1.0))) - np.log(distribution.quantile(p - step))) / (2 * step)
    return float(slope * np.sqrt(p * (1 - p) / n))


def test_presets_carry_table_1_figures():
    for name, (prompt, output) in PUBLISHED_TABLE_1.items():
        preset = PRESETS[name]
        assert (preset.prompt.median, preset.prompt.iqr, preset.prompt.p99) == prompt
        assert (preset.output.median, preset.output.iqr, preset.output.p99) == output
        assert "Table 1" in preset.provenance


@pytest.mark.parametrize("name", preset_names())
def test_sampled_median_iqr_p99_match_the_targets(name):
    preset = PRESETS[name]
    prompt, output = sample_lengths(name, DRAWS, seed=2024)
    for lengths, target, distribution in (
        (prompt, preset.prompt, preset.prompt_distribution()),
        (output, preset.output, preset.output_distribution()),
    ):
        stats = length_stats(lengths)
        assert stats.median == pytest.approx(target.median, rel=TOLERANCE)
        assert stats.iqr == pytest.approx(target.iqr, rel=TOLERANCE)
        assert stats.p99 == pytest.approx(target.p99, rel=TOLERANCE)
        assert lengths.min() >= 1 and lengths.dtype == np.int64
        for p in (0.5, 0.99):
            assert TOLERANCE >= 4 * relative_standard_error(distribution, p, DRAWS), p
        iqr_error = np.hypot(
            relative_standard_error(distribution, 0.25, DRAWS) * stats.p25,
            relative_standard_error(distribution, 0.75, DRAWS) * stats.p75,
        )
        assert TOLERANCE * target.iqr >= 4 * iqr_error


def test_fitted_quantiles_hit_the_published_knots_exactly():
    distribution = fit_published(1928, 2393, 7685)
    p25, p75 = distribution.quantile([0.25, 0.75])
    assert p75 - p25 == pytest.approx(2393)
    assert distribution.quantile(0.5) == pytest.approx(1928)
    assert distribution.quantile(0.99) == pytest.approx(7685)
    # Tails are bounded: nothing past P99 is published.
    assert 7685 < distribution.quantile(1.0) < 2 * 7685
    assert distribution.quantile(0.0) >= 1


def test_split_iqr_keeps_the_published_iqr_and_orders_quartiles():
    for median, iqr in ((8, 15), (30, 343), (6345, 4243)):
        p25, p75 = split_iqr(median, iqr)
        assert p75 - p25 == iqr and 1 <= p25 < median < p75


def test_fit_rejects_impossible_figures():
    with pytest.raises(ValueError):
        fit_published(100, 50, 110)  # P99 below the fitted P75
    with pytest.raises(ValueError):
        fit_published(0, 10, 100)


def test_sampling_is_reproducible_by_seed():
    a = sample_lengths("chat", 1000, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, sample_lengths("chat", 1000, seed=1)))
    assert not np.array_equal(a[0], sample_lengths("chat", 1000, seed=2)[0])


def test_preset_workload_has_no_arrival_times_until_given_some():
    workload = load_workload("mooncake", count=64, seed=3)
    assert len(workload) == 64 and not workload.has_arrival_times
    assert np.all(workload.arrival_s == 0)
    assert workload.requests == sample_preset("mooncake", 64, seed=3).requests
    timed = workload.with_arrivals(np.arange(64) * 0.5)
    assert timed.has_arrival_times and timed.duration_s() == 31.5
    with pytest.raises(WorkloadError):
        sample_preset("mooncake", 0)
    with pytest.raises(WorkloadError, match="unknown preset"):
        sample_preset("nope")
