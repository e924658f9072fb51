"""The EAGLE-3 study's pure parts with known answers: configuration names, vLLM's speculative_config, the
regions each configuration must record, the synthetic acceptance check and the grid against ar."""

import numpy as np
import pytest

from servescope.studies.eagle3_study import (acceptance_length_check, grid, parse_config, required_regions,
                                             speculative_config, synthetic_rates)

MRV2 = "vllm.v1.worker.gpu.model_runner.GPUModelRunner"
MRV1 = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"


def test_configuration_names():
    assert parse_config("ar") == {"method": "ar", "k": 0, "length": None}
    assert parse_config("eagle3-k4-a2.5") == {"method": "eagle3", "k": 4, "length": 2.5}
    assert parse_config("ngram-k3") == {"method": "ngram", "k": 3, "length": None}
    for bad in ("eagle3", "ar-k2", "ar-a2.5", "draft-k4", "eagle3-k4-a"):
        with pytest.raises(ValueError, match="unknown configuration"):
            parse_config(bad)


def test_speculative_config_follows_the_name():
    assert speculative_config("ar", None) is None
    assert speculative_config("eagle3-k2-a1.5", "/h") == {
        "method": "eagle3", "num_speculative_tokens": 2, "model": "/h",
        "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 1.5}
    assert speculative_config("mtp-k1-a1.5", None)["method"] == "mtp"
    assert "rejection_sample_method" not in speculative_config("eagle3-k3", "/h")  # the CPU build's sampler
    with pytest.raises(ValueError, match="needs --head"):
        speculative_config("eagle3-k4-a2.5", None)


def test_draft_decode_is_required_only_of_a_drafting_loop_on_model_runner_v2():
    assert "draft_decode" in required_regions("eagle3-k4-a2.5", MRV2)
    assert "draft_decode" not in required_regions("eagle3-k1-a1.5", MRV2)  # k = 1: no later drafts
    assert "draft_decode" not in required_regions("eagle3-k4-a2.5", MRV1)
    assert {"draft", "rejection_sample"} <= set(required_regions("ngram-k3", MRV1))
    assert "draft" not in required_regions("ar", MRV2)


def test_the_schedule_is_vllms_minimum_variance_one():
    assert synthetic_rates(2.5, 4) == [1.0, 0.5, 0.0, 0.0]
    assert synthetic_rates(3.5, 4) == [1.0, 1.0, 0.5, 0.0]
    assert synthetic_rates(1.5, 2) == [0.5, 0.0]
    assert synthetic_rates(3.0, 2) == [1.0, 1.0]


def test_the_acceptance_check_uses_each_drafts_own_length_and_the_schedules_error():
    drafted = np.full(400, 4)
    half = np.array([1, 2] * 200)  # L = 2.5 exactly: 1 or 2 accepted, half each
    assert acceptance_length_check(drafted, half, 2.5, 4) is None
    # standard error of the mean: sqrt(0.25 / 400) = 0.025; 4 of them: 0.1
    assert acceptance_length_check(drafted, np.array([1] * 230 + [2] * 170), 2.5, 4) is None  # 2.425: 3 SE off
    assert "2.3900" in acceptance_length_check(drafted, np.array([1] * 244 + [2] * 156), 2.5, 4)  # 4.4 SE off
    # drafts cut to one token by a token budget: at L = 3.5 they accept exactly 1, which is what they should
    short = np.array([1] * 100 + [4] * 100)
    accepted = np.array([1] * 100 + [2, 3] * 50)
    assert acceptance_length_check(short, accepted, 3.5, 4) is None
    assert acceptance_length_check(np.full(10, 2), np.full(10, 2), 3.0, 2) is None  # no variance: exact
    assert acceptance_length_check(np.full(10, 2), np.array([2] * 9 + [1]), 3.0, 2) is not None


def test_the_grid_sets_each_configuration_against_ar():
    def result(name, wall, tpot, failed=()):
        summary = {"tpot_s": {"p50": tpot, "p99": 2 * tpot}, "ttft_s": {"p50": 0.1}, "tbt_per_chunk_s": {"p99": 0.05}}
        return {"config": name, "batches": {"mean_wall_s": wall}, "analysis": {"summary": summary},
                "checks": {"a": None, **{f: "why" for f in failed}}}

    doc = grid([result("ar", 4.0, 0.02), result("eagle3-k4-a2.5", 2.0, 0.01, failed=("region draft recorded",))])
    row = doc["configs"]["eagle3-k4-a2.5"]
    assert doc["baseline"] == "ar" and row["ratio_to_ar"]["batch_wall_s"] == pytest.approx(0.5)
    assert row["ratio_to_ar"]["tpot_p99_s"] == pytest.approx(0.5) and row["ratio_to_ar"]["ttft_p50_s"] == 1.0
    assert row["failed_checks"] == ["region draft recorded"] and "ratio_to_ar" not in doc["configs"]["ar"]
    assert grid([result("eagle3-k2-a1.5", 2.0, 0.01)])["baseline"] is None
