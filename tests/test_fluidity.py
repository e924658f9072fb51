import math
from types import SimpleNamespace

import numpy as np
import pytest

from servescope.analysis import fluidity as fl
from servescope.analysis.fluidity import (
    fit_prefill_model,
    fluid_token_generation_rate,
    fluidity_batch,
    fluidity_for_requests,
    fluidity_index,
    min_tbt_deadline,
    min_tbt_deadlines,
    miss_rate_percentile,
    request_gaps_s,
    service_level_miss_rate,
)

# Deadlines and gaps below are binary fractions (exact in float64), so hand results are exact.
DP, DD = 1.0, 0.25


def reference(gaps, d_p, d_d):
    """docs/metrics.md's recurrence, transcribed line by line (independent of the module), counting
    missed periods with Python's float floor division as Etalon's reference code does (docs/analysis.md)."""
    slack = 0
    misses = 0
    deadlines = 0
    for i, g in enumerate(gaps):
        if i == 0 and d_p != d_p:
            continue
        D = d_p if i == 0 else d_d
        if g <= D + slack:
            slack += D - g
            deadlines += 1
        else:
            m = int(1 + (g - slack - D) // d_d) if i == 0 else int((g - slack) // d_d)
            misses += m
            deadlines += m
            slack = 0
    miss_rate = misses / deadlines if deadlines else 0
    return 1 - miss_rate, misses, deadlines


# --------------------------------------------------------------------------- hand-built cases


def test_empty_request_has_no_deadlines_and_full_fluidity():
    assert fluidity_index([], DP, DD) == (1.0, 0, 0)


def test_one_token_output_met_and_missed():
    assert fluidity_index([0.5], DP, DD) == (1.0, 0, 1)
    # TTFT 2.5 s against D_p = 1 s: floor((2.5 - 0 - 1) / 0.25) + 1 = 7 missed periods
    assert fluidity_index([2.5], DP, DD) == (0.0, 7, 7)


def test_burst_of_zero_gaps_banks_slack_that_absorbs_a_later_long_gap():
    # zeros bank 0.25 each: slack 0.5 before the 0.75 gap, which then just fits
    assert fluidity_index([1.0, 0.25, 0.0, 0.0, 0.75], DP, DD) == (1.0, 0, 5)
    # without the burst the same gap misses floor((0.75 - 0.25) / 0.25) + 1 = 3 periods
    assert fluidity_index([1.0, 0.25, 0.75], DP, DD) == (1.0 - 3 / 5, 3, 5)


def test_stall_early_costs_more_than_the_same_stall_late():
    early = fluidity_index([1.0, 1.0, 0.0, 0.0, 0.0], DP, DD)
    late = fluidity_index([1.0, 0.0, 0.0, 0.0, 1.0], DP, DD)
    # early: no slack yet, floor((1 - 0.25) / 0.25) + 1 = 4 misses; then 3 met zeros
    assert early == (1.0 - 4 / 8, 4, 8)
    # late: three zeros banked 0.75 s, so 1.0 <= 0.25 + 0.75 is met
    assert late == (1.0, 0, 5)


def test_miss_resets_slack():
    # zeros bank 0.5; the 1.0 gap misses floor((1 - 0.5 - 0.25)/0.25) + 1 = 2 and resets slack,
    # so the following 0.5 gap misses floor((0.5 - 0 - 0.25)/0.25) + 1 = 2 instead of fitting
    assert fluidity_index([1.0, 0.0, 0.0, 1.0, 0.5], DP, DD) == (1.0 - 4 / 7, 4, 7)


def test_slack_is_banked_without_cap():
    gaps = [1.0] + [0.0] * 100 + [25.0]
    assert fluidity_index(gaps, DP, DD) == (1.0, 0, 102)


def test_ttft_slack_carries_into_decode_and_ttft_miss_counts_decode_periods():
    assert fluidity_index([0.5, 0.75], DP, DD) == (1.0, 0, 2)
    # floor((3 - 1) / 0.25) + 1 = 9 periods of D_d missed by the first token
    assert fluidity_index([3.0, 0.25], DP, DD) == (1.0 - 9 / 10, 9, 10)


def test_nan_ttft_deadline_ignores_the_first_gap():
    assert fluidity_index([100.0, 0.25, 0.25], math.nan, DD) == (1.0, 0, 2)
    assert fluidity_index([100.0], None, DD) == (1.0, 0, 0)


def test_batch_matches_hand_cases_including_empty_requests():
    cases = [[], [1.0, 1.0, 0.0, 0.0, 0.0], [2.5], [], [1.0, 0.0, 0.0, 1.0, 0.5]]
    gaps = np.concatenate([np.asarray(c, dtype=float) for c in cases])
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cases])])
    for use_numba in _paths():
        fluid, misses, deadlines = fluidity_batch(gaps, offsets, DP, DD, use_numba=use_numba)
        assert misses.tolist() == [0, 4, 7, 0, 4]
        assert deadlines.tolist() == [0, 8, 7, 0, 7]
        assert fluid.tolist() == [1.0, 0.5, 0.0, 1.0, 1.0 - 4 / 7]


# --------------------------------------------------------------------------- randomized


def _paths():
    return [True, False] if fl._counts_compiled is not None else [False]


def _random_requests(rng, n):
    lengths = rng.integers(0, 60, size=n)
    lengths[:5] = [0, 1, 2, 0, 1]
    total = int(lengths.sum())
    kind = rng.random(total)
    gaps = np.where(
        kind < 0.3,
        0.0,  # burst zeros
        np.where(
            kind < 0.6,
            rng.integers(0, 12, size=total) * 0.01,  # ties with deadlines and slack sums
            np.where(kind < 0.97, rng.exponential(0.04, size=total), rng.exponential(0.8, size=total)),
        ),
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return gaps, offsets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_equals_reference_on_random_sequences(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    gaps, offsets = _random_requests(rng, n)
    d_p = rng.choice([0.05, 0.1, 0.3, math.nan], size=n)
    d_d = rng.choice([0.01, 0.05, 0.1], size=n)
    expected = [reference(gaps[offsets[r] : offsets[r + 1]].tolist(), d_p[r], d_d[r]) for r in range(n)]
    via_module = [fluidity_index(gaps[offsets[r] : offsets[r + 1]], d_p[r], d_d[r]) for r in range(n)]
    assert via_module == expected
    for use_numba in _paths():
        fluid, misses, deadlines = fluidity_batch(gaps, offsets, d_p, d_d, use_numba=use_numba)
        assert misses.tolist() == [e[1] for e in expected]
        assert deadlines.tolist() == [e[2] for e in expected]
        assert fluid.tolist() == [e[0] for e in expected]
    assert sum(e[1] for e in expected) > 0  # the sample does exercise misses


def test_batch_scalar_deadlines_broadcast():
    rng = np.random.default_rng(7)
    gaps, offsets = _random_requests(rng, 500)
    for use_numba in _paths():
        a = fluidity_batch(gaps, offsets, 0.2, 0.05, use_numba=use_numba)
        b = fluidity_batch(gaps, offsets, np.full(500, 0.2), np.full(500, 0.05), use_numba=use_numba)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_batch_rejects_bad_offsets_and_nonpositive_deadline():
    with pytest.raises(ValueError):
        fluidity_batch(np.zeros(3), np.array([0, 2]), 1.0, 0.1)
    with pytest.raises(ValueError):
        fluidity_batch(np.zeros(3), np.array([0, 3]), 1.0, 0.0)
    with pytest.raises(ValueError):
        fluidity_batch(np.array([0.1, np.nan]), np.array([0, 2]), 1.0, 0.1)


# --------------------------------------------------------------------------- aggregates


def test_service_level_and_percentile_miss_rate():
    misses = np.array([0, 1, 9, 0])
    deadlines = np.array([10, 10, 10, 0])
    assert service_level_miss_rate(misses, deadlines) == 10 / 30
    assert service_level_miss_rate(np.array([0]), np.array([0])) == 0.0
    # per-request rates 0, 0.1, 0.9, 0 -> P50 (inverted CDF) = 0, P99 = 0.9
    assert miss_rate_percentile(misses, deadlines, 50) == 0.0
    assert miss_rate_percentile(misses, deadlines, 99) == 0.9


def test_min_tbt_deadline_of_steady_gaps_is_the_gap_within_a_tenth_of_a_millisecond():
    d = min_tbt_deadline([5.0, 0.1, 0.1, 0.1], 0.1)
    assert 0.1 <= d <= 0.1 + 1e-4
    # the precision is absolute: a request with one 30 s stall is still resolved to 0.1 ms, not to 30 ms
    gaps = [0.5] + [0.02] * 99 + [30.0]  # 100 decode gaps; one miss of many periods is allowed at 10%
    d = min_tbt_deadline(gaps, 0.1)
    assert fluidity_index(gaps, math.nan, d)[1] / fluidity_index(gaps, math.nan, d)[2] <= 0.1
    assert 1 - fluidity_index(gaps, math.nan, d - 1e-4)[0] > 0.1


def test_min_tbt_deadline_edge_requests():
    assert math.isnan(min_tbt_deadline([3.0]))
    assert math.isnan(min_tbt_deadline([]))
    assert min_tbt_deadline([3.0, 0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        min_tbt_deadline([1.0, 0.5], precision_s=0.0)


@pytest.mark.parametrize("target", [0.0, 0.1, 0.3])
def test_min_tbt_deadlines_are_minimal_within_the_fixed_precision(target):
    rng = np.random.default_rng(11)
    gaps, offsets = _random_requests(rng, 400)
    precision = 1e-4
    result = min_tbt_deadlines(gaps, offsets, target)
    for r in range(400):
        g = gaps[offsets[r] : offsets[r + 1]]
        if g.size < 2:
            assert math.isnan(result[r])
            continue
        if g[1:].max() == 0:
            assert result[r] == 0.0
            continue
        fluid, _, _ = reference(g.tolist(), math.nan, result[r])
        assert 1 - fluid <= target
        below = result[r] - precision
        if below > 0:
            fluid_below, _, _ = reference(g.tolist(), math.nan, below)
            assert 1 - fluid_below > target


# --------------------------------------------------------------------------- exact period boundaries


def test_a_gap_of_whole_periods_counts_like_etalon_at_the_boundary():
    """1.0 s against D_d = 0.1 s: the double 0.1 is 0.1000000000000000055..., so 1.0 holds 9.99...
    of its periods and Etalon's floor division counts 9 missed deadlines; the rounded quotient
    (floor((1.0 - 0.1) / 0.1) + 1) would count 10."""
    assert math.floor((1.0 - 0.1) / 0.1) + 1 == 10  # what the rounded-quotient formula gives
    assert fluidity_index([0.0, 1.0], math.nan, 0.1) == (0.0, 9, 9)
    # binary fractions are exact: 0.75 against 0.25 is 3 periods, and a gap equal to D + slack is met
    assert fluidity_index([0.0, 0.75], math.nan, 0.25) == (0.0, 3, 3)
    assert fluidity_index([0.0, 0.0, 0.5], math.nan, 0.25) == (1.0, 0, 2)
    # the first token: 1 + (g - D_p) // D_d; TTFT 1.1 s against D_p = D_d = 0.1 s: 1.1 - 0.1 is the
    # double 1.0, 1.0 // 0.1 == 9.0, so 10 missed deadlines (the rounded quotient would give 11)
    assert fluidity_index([1.1], 0.1, 0.1) == (0.0, 10, 10)
    for use_numba in _paths():
        gaps = np.array([0.0, 1.0, 1.1, 0.0, 0.75])
        offsets = np.array([0, 2, 3, 5])
        _, misses, deadlines = fluidity_batch(gaps, offsets, np.array([math.nan, 0.1, math.nan]),
                                              np.array([0.1, 0.1, 0.25]), use_numba=use_numba)
        assert misses.tolist() == [9, 10, 3] and deadlines.tolist() == [9, 10, 3]


def test_fluid_token_generation_rate_stops_at_first_failure():
    loads = [5, 1, 3, 2, 4]
    rates = [0.05, 0.01, 0.09, 0.05, 0.2]  # load 4 fails; the pass at 5 is not counted
    assert fluid_token_generation_rate(loads, rates) == 3.0
    assert fluid_token_generation_rate([1, 2], [0.01, 0.02]) == 2.0
    assert math.isnan(fluid_token_generation_rate([1, 2], [0.5, 0.01]))
    assert fluid_token_generation_rate([1, 2, 3], [0.01, math.nan, 0.0]) == 1.0


# --------------------------------------------------------------------------- prefill model and run adapter


def test_fit_prefill_model_recovers_quadratic_and_stays_non_negative():
    lengths = np.arange(64, 8192, 64)
    truth = 0.004 + 2e-5 * lengths + 3e-9 * lengths**2
    model = fit_prefill_model(lengths, truth)
    np.testing.assert_allclose(model.coefficients_s, (0.004, 2e-5, 3e-9), rtol=1e-6)
    np.testing.assert_allclose(model.predict(lengths), truth, rtol=1e-6)
    # decreasing data: unconstrained least squares would give a negative slope
    falling = fit_prefill_model([100, 200, 300, 400], [0.4, 0.3, 0.2, 0.1])
    assert all(c >= 0 for c in falling.coefficients_s)
    pred = falling.predict([0, 100, 1000, 10000])
    assert np.all(pred >= 0) and np.all(np.diff(pred) >= 0)
    with pytest.raises(ValueError):
        fit_prefill_model([], [])


def _metrics(gaps_per_request, ttft_s, arrival_ns=1_000_000_000):
    times, offsets = [], [0]
    for ttft, gaps in zip(ttft_s, gaps_per_request):
        if gaps is None:
            offsets.append(offsets[-1])
            continue
        t = arrival_ns + int(ttft * 1e9)
        times.append(t)
        for g in gaps:
            t += int(round(g * 1e9))
            times.append(t)
        offsets.append(len(times))
    n = len(ttft_s)
    return SimpleNamespace(
        request_id=np.array([f"r{i}" for i in range(n)]),
        prompt_tokens=np.array([100 * (i + 1) for i in range(n)]),
        token_times_ns=np.array(times, dtype=np.int64),
        token_offsets=np.array(offsets, dtype=np.int64),
        ttft_s=np.array(ttft_s, dtype=float),
    )


def test_request_gaps_put_ttft_first_and_per_token_gaps_after():
    m = _metrics([[0.25, 0.0, 0.5], None, []], [0.5, math.nan, 2.0])
    gaps = request_gaps_s(m.token_times_ns, m.token_offsets, m.ttft_s)
    assert gaps.tolist() == [0.5, 0.25, 0.0, 0.5, 2.0]


def test_fluidity_for_requests_fixed_and_predicted_ttft_deadlines():
    m = _metrics([[0.25, 0.0, 1.0], None, [], [0.5, 0.5]], [0.5, math.nan, 2.0, 1.0])
    fixed = fluidity_for_requests(m, tbt_deadline_s=0.25, ttft_deadline_s=1.0)
    expect = [fluidity_index(g, 1.0, 0.25) for g in ([0.5, 0.25, 0.0, 1.0], [], [2.0], [1.0, 0.5, 0.5])]
    assert fixed["fluidity_index"].tolist() == [e[0] for e in expect]
    assert fixed["deadline_misses"].tolist() == [e[1] for e in expect]
    assert fixed["deadlines"].tolist() == [e[2] for e in expect]
    model = fl.PrefillModel((0.0, 0.005, 0.0))  # 0.5 s per 100 prompt tokens
    pred = fluidity_for_requests(m, tbt_deadline_s=0.25, prefill_model=model, ttft_slack_s=0.5)
    np.testing.assert_allclose(pred["ttft_deadline_s"], [1.0, math.nan, 2.0, 2.5])  # no TTFT: no deadline
    assert pred["deadline_misses"].tolist()[2:] == [0, 0]  # TTFT 2.0 <= 2.0 met; slack 1.5 absorbs the 0.5 gaps
    ignored = fluidity_for_requests(m, tbt_deadline_s=0.25)  # no TTFT deadline: g_0 not judged
    expect = [fluidity_index(g, math.nan, 0.25) for g in ([0.5, 0.25, 0.0, 1.0], [], [2.0], [1.0, 0.5, 0.5])]
    assert ignored["deadline_misses"].tolist() == [e[1] for e in expect] == [3, 0, 0, 4]
    assert np.isnan(ignored["ttft_deadline_s"]).all()


def test_unknown_ttft_or_prompt_length_leaves_the_first_gap_unjudged():
    m = _metrics([[0.25, 0.25], [0.25]], [0.5, 0.5])
    m.ttft_s[0] = math.nan  # e.g. no arrival event recorded
    m.prompt_tokens[1] = -1  # not recorded
    out = fluidity_for_requests(m, tbt_deadline_s=0.25, prefill_model=fl.PrefillModel((0.0, 0.0, 0.0)))
    assert np.isnan(out["ttft_deadline_s"]).all()
    assert out["deadlines"].tolist() == [2, 1] and out["deadline_misses"].tolist() == [0, 0]
