"""Token-length distributions fitted to published quantiles.

Papers publish a length column as median, IQR and P99, not as raw data. A
``QuantileLengthDistribution`` is a quantile function that is piecewise linear in
log(length) through knots (probability, tokens); sampling is inverse-transform
(u ~ U(0,1), length = round(Q(u)), clipped to >= 1), so the sample's quantiles
land on the knots.

``fit_published(median, iqr, p99)`` builds the knots:

* P25 and P75 are not published separately, only their difference. They are split
  the way a lognormal with that median and IQR would split them (P25 = m e^-zs,
  P75 = m e^zs, z = 0.6745), rounded so P75 - P25 equals the IQR exactly.
* Between the published quantiles (P25, P50, P75, P99) log(length) is linear in the
  normal score z = Phi^-1(p), i.e. each stretch is a piece of a lognormal; the
  outer pieces extend the same way down to P1. Knots are laid every 0.01 in p, so
  sampling is a single np.interp while the shape has no sharp kink at a published
  quantile (a kink would make the sample quantile there noisy).
* From P1 to p = 0 and from P99 to p = 1 the last knot step's log slope continues.
  Nothing is published beyond P99, so the longest draw is bounded (1.1-1.6x P99;
  each preset's figure is in docs/workloads.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_Z75 = 0.6744897501960817  # standard-normal 75th percentile


@dataclass(frozen=True)
class QuantileLengthDistribution:
    """Quantile function piecewise linear in log(tokens) through (probability, tokens) knots."""

    probabilities: tuple[float, ...]
    tokens: tuple[float, ...]

    def __post_init__(self) -> None:
        p = np.asarray(self.probabilities)
        v = np.asarray(self.tokens)
        if p.shape != v.shape or p.size < 2 or p[0] != 0.0 or p[-1] != 1.0:
            raise ValueError("knots need matching probabilities and tokens, from p=0 to p=1")
        if np.any(np.diff(p) <= 0) or np.any(np.diff(v) < 0) or v[0] < 1:
            raise ValueError("knot probabilities must increase and token values must be >= 1 and non-decreasing")

    def quantile(self, probability: np.ndarray | float) -> np.ndarray:
        """Returns the continuous length at each probability in [0, 1], in tokens."""
        return np.exp(np.interp(probability, self.probabilities, np.log(self.tokens)))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Returns ``count`` integer lengths >= 1 drawn by inverse transform, in tokens (int64)."""
        return np.maximum(np.rint(self.quantile(rng.random(count))), 1).astype(np.int64)


def split_iqr(median: float, iqr: float) -> tuple[int, int]:
    """Returns (P25, P75) in integer tokens, split around the median as a lognormal would, with P75 - P25 = IQR."""
    if median <= 0 or iqr <= 0:
        raise ValueError("median and IQR must be positive")
    sigma = math.asinh(iqr / (2 * median)) / _Z75
    p25 = max(1, round(median * math.exp(-_Z75 * sigma)))
    p75 = p25 + round(iqr)
    if not p25 < median < p75:
        raise ValueError(f"cannot split IQR {iqr} around median {median}")
    return p25, p75


def fit_published(median: float, iqr: float, p99: float) -> QuantileLengthDistribution:
    """Returns a length distribution whose median, IQR and P99 (tokens) match the published figures."""
    p25, p75 = split_iqr(median, iqr)
    if not p75 < p99:
        raise ValueError(f"P99 {p99} must exceed the fitted P75 {p75}")
    normal = NormalDist()
    anchor_z = np.array([normal.inv_cdf(p) for p in (0.25, 0.5, 0.75, 0.99)])
    anchor_log = np.log([p25, median, p75, p99])
    inner_p = np.round(np.arange(1, 100) / 100, 2)
    inner_z = np.array([normal.inv_cdf(p) for p in inner_p])
    inner_log = np.interp(inner_z, anchor_z, anchor_log)
    below = inner_z < anchor_z[0]
    low_slope = (anchor_log[1] - anchor_log[0]) / (anchor_z[1] - anchor_z[0])
    inner_log[below] = anchor_log[0] + low_slope * (inner_z[below] - anchor_z[0])
    first_log = inner_log[0] - (inner_log[1] - inner_log[0])
    last_log = inner_log[-1] + (inner_log[-1] - inner_log[-2])
    tokens = np.maximum(np.exp(np.concatenate([[first_log], inner_log, [last_log]])), 1.0)
    tokens = np.maximum.accumulate(tokens)
    return QuantileLengthDistribution(
        probabilities=tuple([0.0, *inner_p.tolist(), 1.0]),
        tokens=tuple(tokens.tolist()),
    )
