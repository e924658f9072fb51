"""The client cross-check's verdicts (studies/client_crosscheck.py) on constructed samples: the
tolerance is fixed before the data, so the spread of the rounds cannot widen it."""

import numpy as np

from servescope.studies.client_crosscheck import CrossCheckLoad, compare_samples

LOAD = CrossCheckLoad(rounds=4, requests=48, concurrency=4, prompt_len=64, output_len=32)


def test_the_tolerance_does_not_widen_with_the_instruments_noise():
    """Constructed samples: the same 3 ms offset of decode time passes with quiet rounds and with rounds whose
    values jump by 100 ms; a 15 ms offset fails with both (a noisy client cannot widen its own tolerance)."""
    rng = np.random.default_rng(3)

    def rounds(offset_ms, jitter_ms):
        decode = [rng.normal(150 + jitter_ms * r, 1.0, 48) for r in range(4)]
        itl = [rng.normal(3.0, 0.2, 480) for _ in range(4)]
        ttft = [rng.normal(20, 1.0, 48) for _ in range(4)]
        return {"servescope": {"ttft": ttft, "itl": itl, "decode": [d + offset_ms for d in decode]},
                "vllm": {"ttft": ttft, "itl": itl, "decode": decode}}

    for jitter in (0.0, 100.0):
        close = compare_samples(rounds(3.0, jitter), LOAD)
        far = compare_samples(rounds(15.0, jitter), LOAD)
        assert not close["failures"] and close["comparison"]["decode_streamed_p50_ms"]["tolerance"] == 10.0
        assert [f.split(":")[0] for f in far["failures"]] == ["decode_streamed P50"], far["failures"]
    quiet = compare_samples(rounds(3.0, 0.0), LOAD)["comparison"]["decode_streamed_p50_ms"]
    assert quiet["equivalent"] and quiet["difference_ci95"][0] < 3.0 < quiet["difference_ci95"][1]


def test_bursts_are_counted_and_left_out_of_the_streamed_percentiles():
    """Constructed: both clients stamp alike, but 30 of vLLM's 48 requests per round arrive in one burst (decode
    ~0, TTFT = their end) against 5 of servescope's. TTFT and decode P50 over all requests differ by far more than
    10 ms (both reported only); over the streamed requests they agree. A real 15 ms offset of the streamed decode
    time fails; with almost every request a burst no round is compared and the check fails."""
    rng = np.random.default_rng(5)

    def client(bursts: int, decode_ms: float = 150.0):
        ttft, decode = [], []
        for _ in range(4):
            t = rng.normal(20.0, 1.0, 48)
            d = rng.normal(decode_ms, 5.0, 48)
            t[:bursts], d[:bursts] = t[:bursts] + 150, 0.2  # the whole stream at its end
            ttft.append(t)
            decode.append(d)
        return {"ttft": ttft, "itl": [rng.normal(3.0, 0.2, 480) for _ in range(4)], "decode": decode}

    report = compare_samples({"servescope": client(5), "vllm": client(30)}, LOAD)
    assert report["bursts"] == {"servescope": [5] * 4, "vllm": [30] * 4}
    for metric in ("ttft_p50_ms", "decode_p50_ms"):
        assert abs(report["comparison"][metric]["difference"]) > 100 and report["comparison"][metric]["tolerance"] is None
    assert abs(report["comparison"]["ttft_streamed_p50_ms"]["difference"]) < 2
    assert abs(report["comparison"]["decode_streamed_p50_ms"]["difference"]) < 5 and not report["failures"]
    shifted = compare_samples({"servescope": client(5, 165.0), "vllm": client(30)}, LOAD)
    assert [f.split(":")[0] for f in shifted["failures"]] == ["decode_streamed P50"]
    collapsed = compare_samples({"servescope": client(40), "vllm": client(30)}, LOAD)  # 8 streamed a round
    assert [f.split(":")[0] for f in collapsed["failures"]] == ["decode_streamed P50"]
    assert "fewer than 2 rounds" in collapsed["failures"][0]
    assert collapsed["comparison"]["ttft_p50_ms"]["rounds_compared"] == [0, 1, 2, 3]  # all requests: reported


def test_rounds_are_compared_within_themselves():
    """Constructed: the machine's pace moves between rounds (decode 100 to 175 ms) and bursts leave the clients
    unequal shares of each round. The clients agree within every round, so the check passes, while percentiles
    pooled over the rounds would differ by tens of ms (each client's pool weighs the rounds differently)."""
    rng = np.random.default_rng(9)
    levels = (100.0, 150.0, 125.0, 175.0)

    def client(streamed_per_round):
        decode = [np.r_[rng.normal(level, 2.0, n), np.full(48 - n, 0.2)] for level, n in zip(levels, streamed_per_round)]
        ttft = [rng.normal(20.0, 1.0, 48) for _ in levels]
        return {"ttft": ttft, "itl": [rng.normal(3.0, 0.2, 480) for _ in levels], "decode": decode}

    samples = {"servescope": client((44, 14, 44, 14)), "vllm": client((14, 44, 14, 44))}
    report = compare_samples(samples, LOAD)
    entry = report["comparison"]["decode_streamed_p50_ms"]
    assert not report["failures"] and entry["rounds_compared"] == [0, 1, 2, 3] and abs(entry["difference"]) < 3
    pooled = {c: np.percentile(np.concatenate([d[d >= 5] for d in samples[c]["decode"]]), 50) for c in samples}
    assert abs(pooled["servescope"] - pooled["vllm"]) > 20  # what the pooled comparison would have judged
