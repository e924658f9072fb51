"""The fluidity index: output tokens as periodic tasks with deadlines (Etalon/Metron).

Each request's gaps are ``g_0 = TTFT`` and ``g_i = t_i - t_{i-1}`` (per-token
convention: a k-token burst is one real gap followed by k-1 zeros). The first
token is due ``D_p`` after arrival (the predicted isolated prefill time of the
prompt plus a TTFT slack), every later one ``D_d`` after the previous one (the
TBT SLO). docs/metrics.md gives the recurrence; ``fluidity_index`` is its literal
transcription and ``fluidity_batch`` the same arithmetic for many requests at
once (compiled with numba when it imports, else a numpy loop over token
positions, all requests in lockstep). Both do the same float64 operations in the
same order, so they agree exactly.

Conventions (docs/analysis.md): a request with no gaps has 0 deadlines, miss
rate 0 and fluidity 1; a NaN first-token deadline means "ignore the TTFT entry"
(no deadline for ``g_0``), which is how ``min_tbt_deadline`` ignores TTFT.

Missed periods are counted with the same floor division as the authors' reference code
(Etalon's ``get_request_level_deadline_miss_rate``): ``(g - slack) // D_d`` for a decode gap and
``1 + (g - slack - D_p) // D_d`` for the first token, where ``//`` is Python's float floor
division (the exact floor of the exact quotient of the two doubles; numpy's ``floor_divide`` and
numba's ``//`` compute the same). metrics.md writes ``floor((g - slack - D) / D_d) + 1``, equal
in real arithmetic; in doubles the two differ at exact period boundaries (a 1.0 s gap against
D_d = 0.1 s: 9 here and in Etalon, 10 by the rounded quotient, because the double 0.1 is
slightly more than 1/10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

try:  # numba compiles the sequential recurrence; without it a numpy lockstep loop runs
    import numba as _numba
except Exception:  # pragma: no cover - exercised only where numba is missing
    _numba = None


# --------------------------------------------------------------------------- one request


def fluidity_index(gaps_s: Sequence[float], ttft_deadline_s: float, tbt_deadline_s: float) -> tuple[float, int, int]:
    """Return (fluidity index in [0, 1], missed deadlines, deadlines) of one request's gaps (seconds)."""
    slack = 0.0
    misses = 0
    deadlines = 0
    d_decode = float(tbt_deadline_s)
    d_first = float(ttft_deadline_s) if ttft_deadline_s is not None else math.nan
    for i, g in enumerate(gaps_s):
        g = float(g)
        if i == 0:
            if math.isnan(d_first):
                continue  # TTFT ignored
            d = d_first
        else:
            d = d_decode
        if g <= d + slack:
            slack += d - g
            deadlines += 1
        else:
            m = int(missed_periods(g, slack, d, d_decode, i == 0))
            misses += m
            deadlines += m
            slack = 0.0
    miss_rate = misses / deadlines if deadlines else 0.0
    return 1.0 - miss_rate, misses, deadlines


def missed_periods(gap_s: float, slack_s: float, deadline_s: float, tbt_deadline_s: float, first: bool) -> float:
    """Return the deadlines (a whole number, as float) a late token missed: Etalon's floor division."""
    if first:
        return 1.0 + (gap_s - slack_s - deadline_s) // tbt_deadline_s
    return (gap_s - slack_s) // tbt_deadline_s


# --------------------------------------------------------------------------- many requests


def _counts_python(gaps, offsets, d_first, d_decode, misses_out, deadlines_out):  # pragma: no cover - compiled
    """Fill misses_out/deadlines_out per request: the recurrence, one request after another."""
    n = offsets.shape[0] - 1
    for r in range(n):
        start = offsets[r]
        end = offsets[r + 1]
        dd = d_decode[r]
        dp = d_first[r]
        slack = 0.0
        misses = 0
        deadlines = 0
        for k in range(start, end):
            if k == start:
                if dp != dp:  # NaN: TTFT ignored
                    continue
                d = dp
            else:
                d = dd
            g = gaps[k]
            if g <= d + slack:
                slack += d - g
                deadlines += 1
            elif k == start:
                m = np.int64(1.0 + (g - slack - d) // dd)
                misses += m
                deadlines += m
                slack = 0.0
            else:
                m = np.int64((g - slack) // dd)
                misses += m
                deadlines += m
                slack = 0.0
        misses_out[r] = misses
        deadlines_out[r] = deadlines


_counts_compiled = None
if _numba is not None:
    try:
        _counts_compiled = _numba.njit(cache=True, nogil=True)(_counts_python)
    except Exception:  # no writable cache location: compile without caching
        _counts_compiled = _numba.njit(nogil=True)(_counts_python)


def _counts_lockstep(gaps, offsets, d_first, d_decode):
    """Return (misses, deadlines) per request with numpy: one vector step per token position."""
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    misses = np.zeros(n, dtype=np.int64)
    deadlines = np.zeros(n, dtype=np.int64)
    slack = np.zeros(n, dtype=np.float64)
    order = np.argsort(-lengths, kind="stable")  # longest first: active requests are a prefix
    sorted_lengths = lengths[order]
    max_len = int(sorted_lengths[0]) if n else 0
    for pos in range(max_len):
        k = int(np.searchsorted(-sorted_lengths, -pos, side="left"))  # requests with length > pos
        active = order[:k]
        g = gaps[offsets[active] + pos]
        if pos == 0:
            d = d_first[active]
            counted = ~np.isnan(d)
            active, g, d = active[counted], g[counted], d[counted]
        else:
            d = d_decode[active]
        s = slack[active]
        hit = g <= d + s
        s_hit = s + (d - g)
        if pos == 0:
            m = (1.0 + np.floor_divide(g - s - d, d_decode[active])).astype(np.int64)
        else:
            m = np.floor_divide(g - s, d_decode[active]).astype(np.int64)
        misses[active] += np.where(hit, 0, m)
        deadlines[active] += np.where(hit, 1, m)
        slack[active] = np.where(hit, s_hit, 0.0)
    return misses, deadlines


def _as_per_request(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or {n} values, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def fluidity_counts(
    gaps_flat_s: np.ndarray,
    offsets: np.ndarray,
    ttft_deadlines_s: Any,
    tbt_deadline_s: Any,
    *,
    use_numba: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (missed deadlines, deadlines) per request, int64 counts; gaps in seconds, CSR offsets."""
    gaps = np.ascontiguousarray(gaps_flat_s, dtype=np.float64)
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    if offs.ndim != 1 or offs.size < 1 or offs[0] != 0 or offs[-1] != gaps.size or np.any(np.diff(offs) < 0):
        raise ValueError("offsets must be non-decreasing, start at 0 and end at len(gaps_flat_s)")
    n = offs.size - 1
    d_first = _as_per_request(ttft_deadlines_s, n, "ttft_deadlines_s")
    d_decode = _as_per_request(tbt_deadline_s, n, "tbt_deadline_s")
    if not np.all(d_decode > 0):  # also rejects NaN: a missed TTFT is counted in periods of D_d too
        raise ValueError("tbt_deadline_s must be > 0 for every request")
    if not np.all(np.isfinite(gaps)):
        raise ValueError("gaps_flat_s must be finite")
    if use_numba is None:
        use_numba = _counts_compiled is not None
    if use_numba:
        if _counts_compiled is None:
            raise RuntimeError("numba is not available")
        misses = np.zeros(n, dtype=np.int64)
        deadlines = np.zeros(n, dtype=np.int64)
        _counts_compiled(gaps, offs, d_first, d_decode, misses, deadlines)
        return misses, deadlines
    return _counts_lockstep(gaps, offs, d_first, d_decode)


def fluidity_batch(
    gaps_flat_s: np.ndarray,
    offsets: np.ndarray,
    ttft_deadlines_s: Any,
    tbt_deadline_s: Any,
    *,
    use_numba: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (fluidity index, missed deadlines, deadlines) arrays per request of CSR gaps in seconds."""
    misses, deadlines = fluidity_counts(gaps_flat_s, offsets, ttft_deadlines_s, tbt_deadline_s, use_numba=use_numba)
    return _fluidity_from_counts(misses, deadlines), misses, deadlines


def _fluidity_from_counts(misses: np.ndarray, deadlines: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        miss_rate = np.where(deadlines > 0, misses / np.maximum(deadlines, 1), 0.0)
    return 1.0 - miss_rate


# --------------------------------------------------------------------------- gaps of a run


def request_gaps_s(token_times_ns: np.ndarray, token_offsets: np.ndarray, ttft_s: np.ndarray) -> np.ndarray:
    """Return per-token gaps in seconds, CSR like token_offsets: TTFT at each request's first token."""
    times = np.asarray(token_times_ns, dtype=np.int64)
    offs = np.asarray(token_offsets, dtype=np.int64)
    gaps = np.empty(times.size, dtype=np.float64)
    if times.size:
        gaps[0] = 0.0
        gaps[1:] = np.diff(times).astype(np.float64) / 1e9
        firsts = offs[:-1][np.diff(offs) > 0]
        gaps[firsts] = np.asarray(ttft_s, dtype=np.float64)[np.diff(offs) > 0]
    return gaps


# --------------------------------------------------------------------------- prefill model


@dataclass(frozen=True, slots=True)
class PrefillModel:
    """Predicted isolated prefill time ``c0 + c1*L + c2*L**2`` seconds for a prompt of L tokens."""

    coefficients_s: tuple[float, float, float]  # c0 (s), c1 (s/token), c2 (s/token^2), all >= 0
    num_samples: int = 0
    rms_residual_s: float = math.nan

    def predict(self, prompt_tokens: Any) -> np.ndarray:
        """Return predicted isolated prefill times in seconds (never negative, non-decreasing in L)."""
        length = np.asarray(prompt_tokens, dtype=np.float64)
        c0, c1, c2 = self.coefficients_s
        return c0 + length * (c1 + length * c2)


def fit_prefill_model(prompt_tokens: Any, prefill_s: Any) -> PrefillModel:
    """Return the non-negative quadratic (in prompt length) least-squares fit of isolated prefill times (s)."""
    length = np.asarray(prompt_tokens, dtype=np.float64).ravel()
    y = np.asarray(prefill_s, dtype=np.float64).ravel()
    if length.shape != y.shape:
        raise ValueError("prompt_tokens and prefill_s must have the same length")
    keep = np.isfinite(length) & np.isfinite(y)
    length, y = length[keep], y[keep]
    if y.size == 0:
        raise ValueError("no finite (prompt_tokens, prefill_s) samples to fit")
    design = np.stack([np.ones_like(length), length, length * length], axis=1)
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    scaled = design / scale
    # Exact non-negative least squares for 3 unknowns: the optimum is the unconstrained
    # least-squares solution on its support, so try every support and keep the best feasible one.
    best = (float(np.sum(y * y)), np.zeros(3))
    for mask in range(1, 8):
        cols = [j for j in range(3) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(scaled[:, cols], y, rcond=None)
        if np.any(sol < 0):
            continue
        coef = np.zeros(3)
        coef[cols] = sol
        sse = float(np.sum((scaled @ coef - y) ** 2))
        if sse < best[0] - 1e-15 * max(best[0], 1e-300):
            best = (sse, coef)
    coef = best[1] / scale
    return PrefillModel(
        coefficients_s=(float(coef[0]), float(coef[1]), float(coef[2])),
        num_samples=int(y.size),
        rms_residual_s=math.sqrt(best[0] / y.size),
    )


# --------------------------------------------------------------------------- over a run's requests


def fluidity_for_requests(
    metrics: Any,
    *,
    tbt_deadline_s: float,
    ttft_deadline_s: float | None = None,
    prefill_model: PrefillModel | None = None,
    ttft_slack_s: float = 0.0,
) -> dict[str, np.ndarray]:
    """Return per-request fluidity_index, deadline_misses, deadlines and ttft_deadline_s (seconds) of RequestMetrics.

    The first token's deadline is ttft_deadline_s when given, else prefill_model's prediction
    for the prompt plus ttft_slack_s; with neither, or where a request's TTFT or prompt length
    is unknown, it is NaN: the TTFT gap is not judged and slack starts at the first decode gap.
    """
    n = len(metrics.request_id)
    if ttft_deadline_s is not None:
        ttft_deadlines = np.full(n, float(ttft_deadline_s))
    elif prefill_model is not None:
        prompt = np.asarray(metrics.prompt_tokens, dtype=np.float64)
        prompt[prompt < 0] = math.nan  # not recorded
        ttft_deadlines = prefill_model.predict(prompt) + float(ttft_slack_s)
    else:
        ttft_deadlines = np.full(n, math.nan)
    ttft_s = np.asarray(metrics.ttft_s, dtype=np.float64)
    ttft_deadlines = np.where(np.isnan(ttft_s), math.nan, ttft_deadlines)
    gaps = request_gaps_s(metrics.token_times_ns, metrics.token_offsets, np.nan_to_num(ttft_s))
    fluidity, misses, deadlines = fluidity_batch(gaps, metrics.token_offsets, ttft_deadlines, tbt_deadline_s)
    return {
        "fluidity_index": fluidity,
        "deadline_misses": misses,
        "deadlines": deadlines,
        "ttft_deadline_s": ttft_deadlines,
    }


# --------------------------------------------------------------------------- aggregates


def service_level_miss_rate(misses: np.ndarray, deadlines: np.ndarray) -> float:
    """Return sum(misses) / sum(deadlines) over requests (a fraction; 0 when there are no deadlines)."""
    total = int(np.sum(deadlines))
    return int(np.sum(misses)) / total if total else 0.0


def miss_rate_percentile(misses: np.ndarray, deadlines: np.ndarray, percentile: float = 99.0) -> float:
    """Return the P-th percentile over requests of the per-request miss rate (fraction; inverted-CDF percentile)."""
    rates = 1.0 - _fluidity_from_counts(np.asarray(misses), np.asarray(deadlines))
    if rates.size == 0:
        return math.nan
    return float(np.percentile(rates, percentile, method="inverted_cdf"))


MIN_TBT_DEADLINE_PRECISION_S = 1e-4  # 0.1 ms, Etalon's search granularity; fixed, not relative to the gaps


def min_tbt_deadlines(
    gaps_flat_s: np.ndarray,
    offsets: np.ndarray,
    target_miss_rate: float = 0.1,
    *,
    precision_s: float = MIN_TBT_DEADLINE_PRECISION_S,
    use_numba: bool | None = None,
) -> np.ndarray:
    """Return per request the smallest decode deadline D_d (s) with miss rate <= target, TTFT ignored.

    Binary search, all requests at once, on [0, the request's largest decode gap], until the
    bracket is at most precision_s wide (0.1 ms by default): the result meets the target and is
    at most precision_s above the true minimum (the miss rate is non-increasing in D_d).
    NaN for requests with fewer than two gaps (no decode gap), 0 when every decode gap is 0.
    """
    if not precision_s > 0:
        raise ValueError("precision_s must be > 0")
    gaps = np.asarray(gaps_flat_s, dtype=np.float64)
    offs = np.asarray(offsets, dtype=np.int64)
    n = offs.size - 1
    lengths = np.diff(offs)
    has_decode = lengths > 1
    decode_gaps = gaps.copy()
    if gaps.size:
        decode_gaps[offs[:-1][lengths > 0]] = -np.inf  # exclude g_0 from the maximum
    hi = np.zeros(n)
    nonempty = lengths > 0
    if np.any(nonempty):
        hi[nonempty] = np.maximum.reduceat(decode_gaps, offs[:-1][nonempty])
    hi = np.where(has_decode, np.maximum(hi, 0.0), 0.0)
    lo = np.zeros(n)
    ignore_ttft = np.full(n, math.nan)
    searching = hi - lo > precision_s
    while np.any(searching):
        mid = np.where(searching, 0.5 * (lo + hi), 1.0)
        misses, deadlines = fluidity_counts(gaps, offs, ignore_ttft, mid, use_numba=use_numba)
        rate = 1.0 - _fluidity_from_counts(misses, deadlines)
        ok = rate <= target_miss_rate
        hi = np.where(searching & ok, mid, hi)
        lo = np.where(searching & ~ok, mid, lo)
        searching = hi - lo > precision_s
    return np.where(has_decode, hi, math.nan)


def min_tbt_deadline(gaps_s: Sequence[float], target_miss_rate: float = 0.1, *,
                     precision_s: float = MIN_TBT_DEADLINE_PRECISION_S) -> float:
    """Return one request's smallest decode deadline (s) with miss rate <= target, within precision_s; gaps_s[0] (TTFT) ignored."""
    gaps = np.asarray(gaps_s, dtype=np.float64)
    return float(min_tbt_deadlines(gaps, np.array([0, gaps.size]), target_miss_rate, precision_s=precision_s)[0])


def deadline_based_token_rate(min_tbt_deadlines_s: np.ndarray, percentile: float = 99.0) -> float:
    """Return 1 / P-th percentile of per-request min TBT deadlines: tokens/s one request can count on."""
    values = np.asarray(min_tbt_deadlines_s, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    p = float(np.percentile(values, percentile, method="inverted_cdf"))
    return math.inf if p == 0 else 1.0 / p


def fluid_token_generation_rate(
    loads: Sequence[float],
    p99_miss_rates: Sequence[float],
    *,
    max_miss_rate: float = 0.1,
) -> float:
    """Return the highest load (caller's unit) at which the P99 request miss rate <= max_miss_rate.

    Loads are sorted; the answer is the last load before the first failing one, so a lucky
    pass above a failure is not counted. NaN when the lowest load already fails.
    """
    load = np.asarray(loads, dtype=np.float64)
    rate = np.asarray(p99_miss_rates, dtype=np.float64)
    if load.shape != rate.shape:
        raise ValueError("loads and p99_miss_rates must have the same length")
    order = np.argsort(load, kind="stable")
    passed = rate[order] <= max_miss_rate  # NaN fails
    failing = np.flatnonzero(~passed)
    last_pass = (failing[0] if failing.size else load.size) - 1
    return float(load[order][last_pass]) if last_pass >= 0 else math.nan
