"""Merging speculative-decoding studies (studies/spec_study_report.py) on hand-built study
directories whose medians, ranges, speedups and lease-to-lease ratios are known in advance."""

import json
from pathlib import Path

import pytest

from servescope.studies.spec_study_report import merge, tables_markdown

RATES = [1.0, 4.0]


def point(config: str, load: str, repeat: int, e2e_s: float, tpot_s: float) -> dict:
    """One phase's summary as spec_study writes it (only what merging reads)."""
    return {"config": config, "load": load, "repeat": repeat,
            "e2e_s": {"p50": e2e_s}, "tpot_s": {"p50": tpot_s, "p99": 2 * tpot_s},
            "ttft_s": {"p50": 0.02, "p99": 0.04}, "tbt_per_chunk_s": {"p99": tpot_s},
            "run": {"output_tokens_per_s": 100.0}, "fluidity": {"service_miss_rate": 0.0}}


def write_study(directory: Path, e2e_by_config: dict[str, dict[str, list[float]]]) -> Path:
    """Write directory/study.json: per configuration and load, the e2e P50 of each repeat (s)."""
    points = {}
    for config, loads in e2e_by_config.items():
        for load, values in loads.items():
            for rep, value in enumerate(values):
                points[f"{config}/{load}-rep{rep}"] = point(config, load, rep, value, value / 100)
    directory.mkdir(parents=True)
    (directory / "study.json").write_text(json.dumps({"setup": {"rates": RATES}, "points": points}))
    return directory


@pytest.fixture
def two_leases(tmp_path):
    # lease 1: the default baseline and a drafter; lease 2 (tagged): the same drafter and its own baseline
    first = write_study(tmp_path / "lease1", {
        "ar": {"r1": [1.0, 1.2, 1.1], "r4": [2.0, 2.2, 2.1]},
        "draft-k4": {"r1": [0.5, 0.6, 0.4], "r4": [2.4, 2.5, 2.6]},
    })
    second = write_study(tmp_path / "lease2", {
        "ar": {"r1": [1.2, 1.3, 1.4], "r4": [2.2, 2.3, 2.4]},
        "draft-k4": {"r1": [0.8, 0.7, 0.9], "r4": [2.0, 2.1, 2.2]},
    })
    return first, second


def test_merge_keeps_each_lease_apart_with_known_medians_and_ranges(two_leases):
    first, second = two_leases
    study = merge([str(first), f"{second}@lease2"])
    agg = study["aggregate"]
    assert set(agg) == {"ar", "draft-k4", "ar@lease2", "draft-k4@lease2"}
    assert agg["draft-k4"]["r1"]["e2e_p50_s"] == {"median": 0.5, "min": 0.4, "max": 0.6, "repeats": 3}
    assert agg["draft-k4@lease2"]["r1"]["e2e_p50_s"] == {"median": 0.8, "min": 0.7, "max": 0.9, "repeats": 3}
    assert agg["ar@lease2"]["r4"]["e2e_p50_s"]["median"] == pytest.approx(2.3)
    assert agg["ar"]["r4"]["tpot_p99_s"]["median"] == pytest.approx(2 * 2.1 / 100)
    assert len(study["points"]) == 24 and study["rates"] == RATES


def test_speedups_use_the_same_leases_baseline_and_say_what_is_resolved(two_leases):
    first, second = two_leases
    study = merge([str(first), f"{second}@lease2"])
    own = study["speedup"]["draft-k4"]["ar"]["e2e_p50_s"]
    # r1: 1.1 / 0.5 = 2.2, ranges [1.0, 1.2] and [0.4, 0.6] apart; r4: 2.1 / 2.5 = 0.84, [2.0, 2.2] vs [2.4, 2.6] apart
    assert own["speedup"] == pytest.approx([2.2, 0.84]) and own["resolved"] == [True, True]
    # 1 is crossed between 1 and 4 req/s at f = (2.2 - 1) / (2.2 - 0.84) of the way in log(rate)
    f = (2.2 - 1) / (2.2 - 0.84)
    assert own["crossover_rate"] == pytest.approx(4.0 ** f)
    tagged = study["speedup"]["draft-k4@lease2"]
    assert set(tagged) == {"ar@lease2"}  # its own lease's baseline, not lease 1's
    lease2 = tagged["ar@lease2"]["e2e_p50_s"]
    # r1: 1.3 / 0.8 = 1.625 resolved; r4: 2.3 / 2.1, ranges [2.2, 2.4] and [2.0, 2.2] touch: not resolved
    assert lease2["speedup"] == pytest.approx([1.625, 2.3 / 2.1]) and lease2["resolved"] == [True, False]
    assert lease2["crossover_rate"] == "beyond the highest rate"


def test_lease_to_lease_ratio_is_the_untagged_median_over_the_tagged_one(two_leases):
    first, second = two_leases
    ratios = merge([str(first), f"{second}@lease2"])["lease_to_lease"]
    assert set(ratios) == {"ar@lease2", "draft-k4@lease2"}
    drafter = ratios["draft-k4@lease2"]
    assert drafter["reference"] == "draft-k4"
    assert drafter["ratio"] == pytest.approx([0.5 / 0.8, 2.5 / 2.1])
    assert drafter["resolved"] == [True, True]  # [0.4, 0.6] vs [0.7, 0.9]; [2.4, 2.6] vs [2.0, 2.2]
    assert ratios["ar@lease2"]["ratio"] == pytest.approx([1.1 / 1.3, 2.1 / 2.3])
    # the baselines' ranges touch ([1.0, 1.2] and [1.2, 1.4]; [2.0, 2.2] and [2.2, 2.4]): not apart
    assert ratios["ar@lease2"]["resolved"] == [False, False]


def test_tables_show_the_merged_values(two_leases):
    first, second = two_leases
    text = tables_markdown(merge([str(first), f"{second}@lease2"]))
    assert "| draft-k4 | 500.0 [400.0, 600.0] | 2500.0 [2400.0, 2600.0] |" in text  # e2e P50, ms
    assert "| draft-k4 | ar | e2e_p50 | 2.20 | 0.84 |" in text
    assert "| draft-k4@lease2 | ar@lease2 | e2e_p50 | 1.62 | 1.10~ | beyond the highest rate |" in text


def test_a_point_in_two_directories_is_refused_unless_tagged(two_leases):
    first, _ = two_leases
    with pytest.raises(ValueError, match="DIR@TAG"):
        merge([str(first), str(first)])
