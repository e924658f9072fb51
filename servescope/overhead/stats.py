"""The statistics of `servescope overhead`: the change tracing makes, its 95% interval, and a verdict.

The unit of replication is the arm (one fresh process: engine start, warm-up, measured load), so
the interval is taken over arms, never over the batches or requests inside one arm (those share
the arm's engine, memory layout and machine state, and would make the interval far too narrow).

For a metric with one value per arm (throughput, or a latency percentile of the arm), the change
is the ratio of the geometric means of the traced and untraced arms, and its interval is Welch's
t interval on the logarithms (unequal variances, Welch-Satterthwaite degrees of freedom),
exponentiated: ``change = exp(mean(log on) - mean(log off)) - 1``. Logarithms make the interval a
ratio's (a 2% slowdown and a 2% speed-up are symmetric) and keep it valid for strictly positive
metrics. With n arms a side the interval uses t with about 2(n-1) degrees of freedom: wide with 3
or 4 arms, as it should be.

The verdict is read from the interval alone, against the goal (a cost the project accepts):
"a cost of X% (95% CI a..b)" when the interval lies wholly on the worse side of zero, "faster
with tracing ..." when wholly on the better side, and otherwise "cost below U% with 95%
confidence" (U: the interval's worse end) when U is within the goal, else "not resolved".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

CONFIDENCE = 0.95


def t_quantile(p: float, df: float) -> float:
    """Return the p-quantile of Student's t distribution with df degrees of freedom (df > 0)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    target = p if p > 0.5 else 1.0 - p
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < target:
        hi *= 2.0
    for _ in range(200):  # bisection: the CDF is monotone
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x if p > 0.5 else -x


def _t_cdf(x: float, df: float) -> float:
    """Return P(T <= x) for x >= 0."""
    return 1.0 - 0.5 * _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + x * x))


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """Return I_x(a, b) by its continued fraction (Numerical Recipes' betacf), accurate to ~1e-14."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


@dataclass(frozen=True)
class Change:
    """The change of one metric with tracing on: on/off - 1, with its 95% interval and verdict."""

    metric: str
    higher_is_better: bool
    off: tuple[float, ...]  # one value per untraced arm
    on: tuple[float, ...]  # one value per traced arm
    change: float  # geometric mean of on / geometric mean of off - 1
    ci_low: float
    ci_high: float
    df: float
    cost: float  # the change seen as a cost: +x means x worse with tracing
    cost_ci: tuple[float, float]  # (best, worst) end of the interval, as a cost
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def relative_change(metric: str, off: Sequence[float], on: Sequence[float], *, higher_is_better: bool,
                    goal: float = 0.01, confidence: float = CONFIDENCE) -> Change:
    """Return the change of a metric between untraced (off) and traced (on) arms, interval and verdict.

    goal: the largest cost (a fraction, 0.01 = 1%) a "cost below" verdict may state."""
    off, on = [float(v) for v in off], [float(v) for v in on]
    if len(off) < 2 or len(on) < 2:
        raise ValueError(f"{metric}: need at least 2 arms a side for an interval, got {len(off)} off and {len(on)} on")
    if min(off + on) <= 0 or not all(math.isfinite(v) for v in off + on):
        raise ValueError(f"{metric}: every arm value must be a positive finite number")
    lo_ = [math.log(v) for v in off]
    ln_ = [math.log(v) for v in on]
    m_off, m_on = sum(lo_) / len(lo_), sum(ln_) / len(ln_)
    v_off = sum((x - m_off) ** 2 for x in lo_) / (len(lo_) - 1)
    v_on = sum((x - m_on) ** 2 for x in ln_) / (len(ln_) - 1)
    se2_off, se2_on = v_off / len(lo_), v_on / len(ln_)
    se = math.sqrt(se2_off + se2_on)
    diff = m_on - m_off
    if se == 0.0:
        df = float(len(lo_) + len(ln_) - 2)
        half = 0.0
    else:
        df = (se2_off + se2_on) ** 2 / (se2_off ** 2 / (len(lo_) - 1) + se2_on ** 2 / (len(ln_) - 1))
        half = t_quantile(0.5 + confidence / 2.0, df) * se
    change = math.exp(diff) - 1.0
    low, high = math.exp(diff - half) - 1.0, math.exp(diff + half) - 1.0
    if higher_is_better:  # a throughput: less is worse; cost = how much less
        cost, best, worst = -change, -high, -low
    else:  # a time: more is worse
        cost, best, worst = change, low, high
    return Change(metric=metric, higher_is_better=higher_is_better, off=tuple(off), on=tuple(on), change=change,
                  ci_low=low, ci_high=high, df=df, cost=cost, cost_ci=(best, worst),
                  verdict=verdict(cost, best, worst, goal))


def verdict(cost: float, best: float, worst: float, goal: float) -> str:
    """Return the verdict an interval (best..worst end, as costs) allows about a cost."""
    if best > 0:
        return f"a cost of {100 * cost:.2f}% (95% CI {100 * best:.2f}% .. {100 * worst:.2f}%)"
    if worst < 0:
        return (f"faster with tracing by {100 * -cost:.2f}% (95% CI {100 * -worst:.2f}% .. {100 * -best:.2f}%): "
                "not an effect tracing can have; look for order or machine effects")
    if worst <= goal:
        return f"cost below {_round_up(100 * worst):.2f}% with 95% confidence (point estimate {100 * cost:+.2f}%)"
    return (f"not resolved: the interval {100 * best:+.2f}% .. {100 * worst:+.2f}% includes no cost and costs "
            f"above the {100 * goal:g}% goal")


def _round_up(percent: float) -> float:
    return math.ceil(percent * 100.0 - 1e-9) / 100.0


def arm_order(n_arms: int, order: str, seed: int = 0, kinds: tuple[str, ...] = ("off", "on")) -> list[str]:
    """Return the order of n_arms arms of each kind: 'balanced' or 'random' (seeded).

    Two kinds, balanced: ABBA (off on on off ...). More kinds, balanced: block i is the kinds rotated by i // 2,
    reversed in odd blocks (three kinds: off on subset, subset on off, on subset off, off subset on, ...), so that
    over 2 x len(kinds) blocks every kind runs in every position equally often and a drift in time favours none."""
    if n_arms < 1:
        raise ValueError(f"arms must be at least 1, got {n_arms}")
    if len(kinds) < 2 or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be at least two distinct names, got {kinds}")
    if order == "balanced":
        pattern = []
        for i in range(n_arms):
            if len(kinds) == 2:
                block = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            else:
                shift = (i // 2) % len(kinds)
                block = list(kinds[shift:] + kinds[:shift])
                if i % 2:
                    block.reverse()
            pattern += block
        return pattern
    if order == "random":
        import random

        arms = [kind for kind in kinds for _ in range(n_arms)]
        random.Random(seed).shuffle(arms)
        return arms
    raise ValueError(f"order is 'balanced' or 'random', not {order!r}")
