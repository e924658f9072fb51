"""The statistics of `servescope overhead` against known answers (t tables, hand-computed intervals,
coverage by simulation) — never against the code's own output."""

import math
import random

import pytest

from servescope.overhead.stats import arm_order, relative_change, t_quantile

# Student t, 97.5th percentile, from printed tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df,expected", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_t_quantile_tends_to_the_normal_quantile():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_identical_arms_give_the_exact_ratio_and_a_cost_verdict():
    c = relative_change("batch_s", [2.0, 2.0, 2.0], [2.03, 2.03, 2.03], higher_is_better=False)
    assert c.change == pytest.approx(0.015) and c.ci_low == pytest.approx(0.015) and c.ci_high == pytest.approx(0.015)
    assert c.verdict.startswith("a cost of 1.50%")


def test_throughput_loss_is_a_cost():
    c = relative_change("tokens_per_s", [100.0, 100.0], [99.0, 99.0], higher_is_better=True)
    assert c.change == pytest.approx(-0.01) and c.cost == pytest.approx(0.01)
    assert c.verdict.startswith("a cost of 1.00%")


def test_welch_interval_by_hand():
    # logs off = 0, .02, .04 and on = .01, .03, .05: mean difference .01, each sample variance .0004,
    # standard error sqrt(2 * .0004 / 3), Welch df = 4 exactly, t(.975, 4) = 2.776 (table)
    off = [math.exp(x) for x in (0.0, 0.02, 0.04)]
    on = [math.exp(x) for x in (0.01, 0.03, 0.05)]
    c = relative_change("e2e_p50_s", off, on, higher_is_better=False)
    se = math.sqrt(2 * 0.0004 / 3)
    assert c.df == pytest.approx(4.0)
    assert c.change == pytest.approx(math.exp(0.01) - 1)
    assert c.ci_low == pytest.approx(math.exp(0.01 - 2.776 * se) - 1, abs=2e-4)
    assert c.ci_high == pytest.approx(math.exp(0.01 + 2.776 * se) - 1, abs=2e-4)
    assert c.verdict.startswith("not resolved")  # the interval reaches +5.7%, above the 1% goal


def test_cost_below_verdict_needs_the_whole_interval_under_the_goal():
    off = [1.000, 1.001, 0.999, 1.000]
    on = [1.001, 1.002, 1.000, 1.001]
    c = relative_change("batch_s", off, on, higher_is_better=False, goal=0.01)
    assert c.cost_ci[0] < 0 < c.cost_ci[1] <= 0.01
    assert c.verdict.startswith("cost below")


def test_interval_covers_a_zero_effect_about_95_percent_of_the_time():
    rng = random.Random(12345)
    covered = 0
    trials = 2000
    for _ in range(trials):
        off = [math.exp(rng.gauss(0, 0.01)) for _ in range(4)]
        on = [math.exp(rng.gauss(0, 0.01)) for _ in range(4)]
        c = relative_change("x", off, on, higher_is_better=False)
        covered += c.ci_low <= 0.0 <= c.ci_high
    assert 0.93 <= covered / trials <= 0.97


def test_interval_catches_a_true_one_percent_cost_most_of_the_time_with_small_noise():
    rng = random.Random(7)
    hits = 0
    for _ in range(500):
        off = [math.exp(rng.gauss(0, 0.002)) for _ in range(4)]
        on = [1.01 * math.exp(rng.gauss(0, 0.002)) for _ in range(4)]
        hits += relative_change("x", off, on, higher_is_better=False).cost_ci[0] > 0
    assert hits / 500 > 0.95


def test_bad_inputs_are_refused_with_the_metric_named():
    with pytest.raises(ValueError, match="ttft"):
        relative_change("ttft", [1.0], [1.0, 2.0], higher_is_better=False)
    with pytest.raises(ValueError, match="ttft"):
        relative_change("ttft", [1.0, 0.0], [1.0, 2.0], higher_is_better=False)


def test_arm_orders():
    assert arm_order(4, "balanced") == ["off", "on", "on", "off", "off", "on", "on", "off"]
    rnd = arm_order(5, "random", seed=3)
    assert sorted(rnd) == ["off"] * 5 + ["on"] * 5 and rnd == arm_order(5, "random", seed=3)
    with pytest.raises(ValueError):
        arm_order(2, "alternating")


def test_three_kinds_of_arm_take_every_position_equally_often_over_six_blocks():
    """off / on / subset: blocks worked out by hand from the rule (rotate by i // 2, reverse odd blocks)."""
    kinds = ("off", "on", "subset")
    order = arm_order(6, "balanced", kinds=kinds)
    blocks = [order[i:i + 3] for i in range(0, 18, 3)]
    assert blocks == [["off", "on", "subset"], ["subset", "on", "off"], ["on", "subset", "off"],
                      ["off", "subset", "on"], ["subset", "off", "on"], ["on", "off", "subset"]]
    for position in range(3):
        assert sorted(block[position] for block in blocks) == ["off", "off", "on", "on", "subset", "subset"]
    rnd = arm_order(4, "random", seed=1, kinds=kinds)
    assert sorted(rnd) == ["off"] * 4 + ["on"] * 4 + ["subset"] * 4 and rnd == arm_order(4, "random", seed=1, kinds=kinds)
    with pytest.raises(ValueError, match="distinct"):
        arm_order(2, "balanced", kinds=("off", "off"))


def test_subset_arms_give_the_left_out_parts_their_own_share_against_the_same_untraced_arms():
    """Throughput 1000 untraced, 980 with the subset of parts, 950 with all: the subset costs 2% (980 / 1000), the
    parts it leaves out 3.06% more (950 / 980), the whole 5%; the whole trace's change ignores the subset arms."""
    from servescope.overhead.user_pays import compare_arms

    def arms(kind, value):
        return [{"arm": kind, "output_tokens_per_s": value}, {"arm": kind, "output_tokens_per_s": value * 1.0001}]

    result = compare_arms(arms("off", 1000.0) + arms("subset", 980.0) + arms("on", 950.0), goal=0.01)
    assert result["changes"]["output_tokens_per_s"]["change"] == pytest.approx(-0.05, abs=1e-9)
    subset = result["subset_changes"]
    assert subset["subset_vs_off"]["output_tokens_per_s"]["change"] == pytest.approx(-0.02, abs=1e-9)
    assert subset["on_vs_subset"]["output_tokens_per_s"]["change"] == pytest.approx(950 / 980 - 1, abs=1e-9)
    assert subset["on_vs_subset"]["output_tokens_per_s"]["off"] == (980.0, 980.0 * 1.0001)  # the subset is the base
    assert "subset_changes" not in compare_arms(arms("off", 1000.0) + arms("on", 950.0), goal=0.01)


def test_a_served_arm_keeps_its_latency_distribution_with_known_quantiles():
    """One request whose 100 gaps between chunks are 1, 2, ..., 100 ms: by linear interpolation (the rule of
    numpy's default, Hyndman & Fan type 7) quantile q of 1..100 is 1 + 99 q ms, worked by hand, not by numpy."""
    from servescope.overhead.user_pays import DISTRIBUTION_QUANTILES, served_metrics

    ms = 1_000_000
    chunks, t = [], 5 * ms  # the first token 5 ms after the send
    for gap in [0] + list(range(1, 101)):
        t += gap * ms
        chunks.append(t)
    result = {"rate": 1.0, "wall_ns": 2_000 * ms,
              "requests": [{"sent_ns": 0, "chunks": chunks, "tokens_per_chunk": [1] * len(chunks)}]}
    tbt = served_metrics(result)["distributions"]["tbt_per_chunk"]
    assert tbt["count"] == 100 and tbt["quantiles"] == list(DISTRIBUTION_QUANTILES)
    for q, value in zip(tbt["quantiles"], tbt["values_s"]):
        assert value == pytest.approx((1 + 99 * q) / 1e3)
    ttft = served_metrics(result)["distributions"]["ttft"]
    assert ttft["count"] == 1 and ttft["values_s"] == pytest.approx([0.005] * len(DISTRIBUTION_QUANTILES))
