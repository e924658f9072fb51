"""The client cross-check's verdicts (studies/client_crosscheck.py) on constructed samples: the
tolerance is fixed before the data, so the spread of the rounds cannot widen it."""

import numpy as np

from servescope.studies.client_crosscheck import CrossCheckLoad, compare_samples

LOAD = CrossCheckLoad(rounds=4, requests=48, concurrency=4, prompt_len=64, output_len=32)


def test_the_tolerance_does_not_widen_with_the_instruments_noise():
    """Constructed samples: the same 3 ms TTFT offset passes with quiet rounds and with rounds whose
    values jump by 100 ms; a 15 ms offset fails with both (a noisy client cannot widen its own tolerance)."""
    rng = np.random.default_rng(3)

    def rounds(offset_ms, jitter_ms):
        base = [rng.normal(20 + jitter_ms * r, 1.0, 48) for r in range(4)]
        itl = [rng.normal(3.0, 0.2, 480) for _ in range(4)]
        decode = [rng.normal(150, 5.0, 48) for _ in range(4)]
        return {"servescope": {"ttft": [b + offset_ms for b in base], "itl": itl, "decode": decode},
                "vllm": {"ttft": base, "itl": itl, "decode": decode}}

    for jitter in (0.0, 100.0):
        close = compare_samples(rounds(3.0, jitter), LOAD)
        far = compare_samples(rounds(15.0, jitter), LOAD)
        assert not close["failures"] and close["comparison"]["ttft_p50_ms"]["tolerance"] == 10.0
        assert [f.split(":")[0] for f in far["failures"]] == ["ttft P50"], far["failures"]
    quiet = compare_samples(rounds(3.0, 0.0), LOAD)["comparison"]["ttft_p50_ms"]
    assert quiet["equivalent"] and quiet["difference_ci95"][0] < 3.0 < quiet["difference_ci95"][1]
