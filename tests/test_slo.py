import math
from types import SimpleNamespace

import numpy as np

from servescope.analysis.slo import (
    FluiditySLO,
    LatencySLO,
    decode_gaps_s,
    evaluate_slos,
    goodput_rps,
    per_request_gap_pass,
    percentile_value,
    within_percentile,
)

S = 1_000_000_000


def _metrics(requests):
    """requests: list of (arrival_s, [token times s]); times are exact binary fractions."""
    times, offsets, chunk_times, chunk_offsets = [], [0], [], [0]
    arrival, ttft, tpot, e2e = [], [], [], []
    for a, toks in requests:
        arrival.append(int(a * S))
        times += [int(t * S) for t in toks]
        offsets.append(len(times))
        chunk_times += sorted({int(t * S) for t in toks})
        chunk_offsets.append(len(chunk_times))
        ttft.append(toks[0] - a if toks else math.nan)
        e2e.append(toks[-1] - a if toks else math.nan)
        tpot.append((toks[-1] - toks[0]) / (len(toks) - 1) if len(toks) > 1 else math.nan)
    n = len(requests)
    return SimpleNamespace(
        request_id=np.array([f"r{i}" for i in range(n)]),
        prompt_tokens=np.full(n, 64),
        arrival_ns=np.array(arrival, dtype=np.int64),
        token_times_ns=np.array(times, dtype=np.int64),
        token_offsets=np.array(offsets, dtype=np.int64),
        chunk_times_ns=np.array(chunk_times, dtype=np.int64),
        chunk_offsets=np.array(chunk_offsets, dtype=np.int64),
        ttft_s=np.array(ttft),
        tpot_s=np.array(tpot),
        e2e_s=np.array(e2e),
    )


def test_within_percentile_is_the_inverted_cdf_percentile():
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.integers(0, 20, size=rng.integers(1, 50)).astype(float)
        p = float(rng.choice([50, 90, 99, 99.9, 100]))
        thr = float(rng.integers(0, 20))
        assert within_percentile(v, thr, p) == (np.percentile(v, p, method="inverted_cdf") <= thr)
    assert not within_percentile(np.array([1.0, math.nan]), 5.0, 99)  # NaN is a violation
    assert percentile_value(np.array([1.0, math.nan]), 99) == math.inf


def test_per_request_gap_pass_counts_each_requests_own_percentile():
    gaps = np.array([0.1, 0.1, 0.1, 0.9, 0.5, 0.5])
    offsets = np.array([0, 4, 4, 6])
    # request 0: 3 of 4 gaps <= 0.2: its P75 passes, its P90 fails; request 1 has no gaps; request 2 fails
    assert per_request_gap_pass(gaps, offsets, 0.2, 75).tolist() == [True, True, False]
    assert per_request_gap_pass(gaps, offsets, 0.2, 90).tolist() == [False, True, False]


def test_decode_gaps_skip_each_requests_first_token():
    m = _metrics([(0.0, [1.0, 1.25, 1.25, 2.0]), (0.5, []), (0.0, [3.0]), (1.0, [2.0, 2.5])])
    gaps, offsets = decode_gaps_s(m.token_times_ns, m.token_offsets)
    assert gaps.tolist() == [0.25, 0.0, 0.75, 0.5]
    assert offsets.tolist() == [0, 3, 3, 3, 4]


def test_goodput_counts_requests_meeting_every_slo_per_second():
    m = _metrics(
        [
            (0.0, [0.5, 0.625, 0.75]),  # fast: meets everything
            (0.0, [3.0, 3.125, 3.25]),  # TTFT 3 s: fails TTFT
            (1.0, [1.5, 2.5, 2.625]),  # one 1 s gap: fails per-request TBT P50? no (1 of 2 gaps); P99 yes
            (2.0, [2.25]),  # one token: no TBT, no TPOT
        ]
    )
    slos = [LatencySLO("ttft", 2.0, 99), LatencySLO("tbt", 0.5, 99)]
    report = evaluate_slos(m, slos)
    ttft_name, tbt_name = slos[0].name, slos[1].name
    assert report.per_request_pass[ttft_name].tolist() == [True, False, True, True]
    assert report.per_request_pass[tbt_name].tolist() == [True, True, False, True]
    assert report.meets_all.tolist() == [True, False, False, True]
    assert report.duration_s == 3.25  # first arrival 0 to last token 3.25 s
    assert report.goodput_rps == 2 / 3.25
    assert report.attainment[ttft_name] == 0.75
    # service level: TTFT P99 over 4 requests is the max (3 s) -> fail; TBT P99 over 5 gaps is 1 s -> fail
    assert report.service_level[ttft_name]["value"] == 3.0 and not report.service_level[ttft_name]["pass"]
    assert report.service_level[tbt_name]["value"] == 1.0 and report.service_level[tbt_name]["count"] == 6
    assert not report.service_level_pass
    relaxed = evaluate_slos(m, [LatencySLO("ttft", 3.0, 99), LatencySLO("tbt", 1.0, 99)], duration_s=10.0)
    assert relaxed.service_level_pass and relaxed.goodput_rps == 0.4


def test_tbt_per_chunk_drops_the_zero_gaps_of_bursts():
    m = _metrics([(0.0, [0.5, 0.75, 0.75, 0.75, 1.0])])  # 3-token burst at 0.75
    slo = LatencySLO("tbt", 0.2, 50)
    per_token = evaluate_slos(m, [slo])
    per_chunk = evaluate_slos(m, [slo], tbt_convention="per_chunk")
    assert per_token.service_level[slo.name]["count"] == 4  # 0.25, 0, 0, 0.25: P50 is 0
    assert per_token.service_level_pass
    assert per_chunk.service_level[slo.name]["count"] == 2  # 0.25, 0.25
    assert not per_chunk.service_level_pass


def test_tpot_slo_lets_one_token_requests_pass_and_missing_ttft_fails():
    m = _metrics([(0.0, [1.0, 1.5, 2.0]), (0.0, [1.0]), (0.0, [])])
    report = evaluate_slos(m, [LatencySLO("tpot", 0.25, 90), LatencySLO("ttft", 5.0, 50)])
    tpot, ttft = (s for s in report.slo_names)
    assert report.per_request_pass[tpot].tolist() == [False, True, True]
    assert report.service_level[tpot]["count"] == 1
    assert report.per_request_pass[ttft].tolist() == [True, True, False]
    assert report.notes


def test_fluidity_slo_pass_per_request_and_service_level():
    # request 0 steady 0.25 s gaps meet D_d = 0.25; request 1 has a 1 s stall
    m = _metrics([(0.0, [0.5, 0.75, 1.0, 1.25]), (0.0, [0.5, 0.75, 1.75, 2.0])])
    slo = FluiditySLO(tbt_deadline_s=0.25, ttft_deadline_s=1.0, min_fluidity=0.9, percentile=50)
    report = evaluate_slos(m, [slo])
    assert report.per_request_pass[slo.name].tolist() == [True, False]
    assert report.service_level[slo.name]["pass"]  # 50% of requests keep fluidity >= 0.9
    strict = FluiditySLO(tbt_deadline_s=0.25, ttft_deadline_s=1.0, min_fluidity=0.9, percentile=99)
    assert not evaluate_slos(m, [strict]).service_level_pass


def test_goodput_of_empty_duration_is_nan():
    assert math.isnan(goodput_rps(np.array([True]), 0.0))
