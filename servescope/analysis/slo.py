"""SLO attainment and goodput: which requests meet every latency objective, and how many per second.

An SLO is either a latency percentile bound (TTFT, TBT, TPOT or end-to-end: "P99 <= 2 s")
or a fluidity bound ("fluidity >= 0.9 for 99% of requests", docs/metrics.md). Each SLO is
judged two ways:

* per request (for goodput): TTFT / TPOT / e2e: the request's value <= the threshold; TBT:
  the request's own P-th percentile gap <= the threshold; fluidity: the request's fluidity
  index >= the minimum. Goodput = requests meeting every SLO / run duration.
* service level (for capacity search): the P-th percentile over requests (TTFT, TPOT, e2e)
  or over all tokens' gaps (TBT) <= the threshold; fluidity: at least P% of requests keep
  fluidity >= the minimum (P-th percentile miss rate <= 1 - minimum).

Percentiles use the inverted-CDF definition (numpy ``method="inverted_cdf"``): the P-th
percentile is <= x exactly when at least P% of the samples are <= x, which lets per-request
TBT checks run as one vectorised count instead of a sort per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from servescope.analysis.fluidity import PrefillModel, fluidity_for_requests
from servescope.analysis.request_metrics import MISSING_NS, ragged_gap_offsets, ragged_gaps_s

LatencyMetric = Literal["ttft", "tbt", "tpot", "e2e"]
TbtConvention = Literal["per_token", "per_chunk"]


@dataclass(frozen=True, slots=True)
class LatencySLO:
    """P-th percentile of a latency metric must be <= threshold_s seconds."""

    metric: LatencyMetric
    threshold_s: float
    percentile: float = 99.0

    @property
    def name(self) -> str:
        return f"{self.metric}_p{self.percentile:g}<={self.threshold_s:g}s"


@dataclass(frozen=True, slots=True)
class FluiditySLO:
    """At least `percentile`% of requests keep fluidity index >= min_fluidity under these deadlines."""

    tbt_deadline_s: float
    min_fluidity: float = 0.9
    percentile: float = 99.0
    ttft_deadline_s: float | None = None
    prefill_model: PrefillModel | None = None
    ttft_slack_s: float = 0.0

    @property
    def name(self) -> str:
        return f"fluidity>={self.min_fluidity:g}@p{self.percentile:g},D_d={self.tbt_deadline_s:g}s"


SLO = LatencySLO | FluiditySLO


@dataclass(slots=True)
class SLOReport:
    """Per-request pass/fail for each SLO, service-level verdicts and goodput."""

    slo_names: list[str]
    per_request_pass: dict[str, np.ndarray]  # name -> bool per request
    meets_all: np.ndarray  # bool per request: every SLO met
    attainment: dict[str, float]  # name -> fraction of requests meeting it
    service_level: dict[str, dict[str, Any]]  # name -> {value, threshold, pass, count}
    service_level_pass: bool  # every SLO met at service level (the capacity criterion)
    goodput_rps: float  # requests meeting every SLO per second
    duration_s: float
    tbt_convention: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- array-level checks


def _needed(percentile: float, count: Any) -> Any:
    """Samples that must be within the bound for the inverted-CDF P-th percentile to be."""
    return np.ceil(percentile / 100.0 * np.asarray(count) - 1e-9)


def within_percentile(values: np.ndarray, threshold: float, percentile: float) -> bool:
    """Return True when the inverted-CDF P-th percentile of values (NaN counts as +inf) is <= threshold."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return True
    met = np.count_nonzero(v <= threshold)  # NaN compares False: a violation
    return bool(met >= _needed(percentile, v.size))


def percentile_value(values: np.ndarray, percentile: float) -> float:
    """Return the inverted-CDF P-th percentile of values in their unit, NaN counted as +inf (NaN if empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan
    v = np.where(np.isnan(v), np.inf, v)
    return float(np.percentile(v, percentile, method="inverted_cdf"))


def per_request_gap_pass(
    gaps_flat_s: np.ndarray, offsets: np.ndarray, threshold_s: float, percentile: float
) -> np.ndarray:
    """Return per request whether its own P-th percentile gap is <= threshold_s (True when it has no gaps)."""
    gaps = np.asarray(gaps_flat_s, dtype=np.float64)
    offs = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offs)
    met_cum = np.concatenate([[0], np.cumsum(gaps <= threshold_s)])
    met = met_cum[offs[1:]] - met_cum[offs[:-1]]
    return met >= _needed(percentile, counts)


def decode_gaps_s(token_times_ns: np.ndarray, token_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (per-token gaps t_i - t_{i-1} in seconds for i >= 1, CSR offsets per request)."""
    times = np.asarray(token_times_ns, dtype=np.int64)
    offs = np.asarray(token_offsets, dtype=np.int64)
    return ragged_gaps_s(times, offs), ragged_gap_offsets(offs)


def chunk_gaps_s(chunk_times_ns: np.ndarray, chunk_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (gaps between a request's consecutive emission steps in seconds, CSR offsets per request)."""
    return decode_gaps_s(chunk_times_ns, chunk_offsets)


def goodput_rps(meets_all: np.ndarray, duration_s: float) -> float:
    """Return requests meeting every SLO per second of the run."""
    if not duration_s or duration_s <= 0 or not math.isfinite(duration_s):
        return math.nan
    return float(np.count_nonzero(meets_all)) / duration_s


def run_duration_s(arrival_ns: np.ndarray, token_times_ns: np.ndarray, finished_ns: np.ndarray | None = None) -> float:
    """Return seconds from the first arrival to the last token emission or finish (MISSING_NS ignored)."""
    arrivals = np.asarray(arrival_ns, dtype=np.int64)
    arrivals = arrivals[arrivals != MISSING_NS]
    ends = [np.asarray(token_times_ns, dtype=np.int64)]
    if finished_ns is not None:
        ends.append(np.asarray(finished_ns, dtype=np.int64))
    ends = np.concatenate(ends)
    ends = ends[ends != MISSING_NS]
    if arrivals.size == 0 or ends.size == 0:
        return math.nan
    return float(ends.max() - arrivals.min()) / 1e9


# --------------------------------------------------------------------------- over a run


def evaluate_slos(
    metrics: Any,
    slos: Sequence[SLO],
    *,
    duration_s: float | None = None,
    tbt_convention: TbtConvention = "per_token",
) -> SLOReport:
    """Return per-request and service-level SLO verdicts and goodput (requests/s) of RequestMetrics."""
    n = len(metrics.request_id)
    notes: list[str] = []
    gaps = None
    per_request: dict[str, np.ndarray] = {}
    service: dict[str, dict[str, Any]] = {}
    for slo in slos:
        name = slo.name
        if isinstance(slo, FluiditySLO):
            fl = fluidity_for_requests(
                metrics,
                tbt_deadline_s=slo.tbt_deadline_s,
                ttft_deadline_s=slo.ttft_deadline_s,
                prefill_model=slo.prefill_model,
                ttft_slack_s=slo.ttft_slack_s,
            )
            ok = fl["fluidity_index"] >= slo.min_fluidity
            miss_rates = 1.0 - fl["fluidity_index"]
            service[name] = {
                "metric": "deadline_miss_rate",
                "percentile": slo.percentile,
                "value": percentile_value(miss_rates, slo.percentile),
                "threshold": 1.0 - slo.min_fluidity,
                "pass": bool(np.count_nonzero(ok) >= _needed(slo.percentile, n)),
                "count": n,
            }
        elif slo.metric == "tbt":
            if gaps is None:
                if tbt_convention == "per_chunk":
                    gaps = chunk_gaps_s(metrics.chunk_times_ns, metrics.chunk_offsets)
                else:
                    gaps = decode_gaps_s(metrics.token_times_ns, metrics.token_offsets)
            ok = per_request_gap_pass(gaps[0], gaps[1], slo.threshold_s, slo.percentile)
            service[name] = {
                "metric": f"tbt ({tbt_convention})",
                "percentile": slo.percentile,
                "value": percentile_value(gaps[0], slo.percentile),
                "threshold": slo.threshold_s,
                "pass": within_percentile(gaps[0], slo.threshold_s, slo.percentile),
                "count": int(gaps[0].size),
            }
        else:
            values = np.asarray(getattr(metrics, f"{slo.metric}_s"), dtype=np.float64)
            if slo.metric == "tpot":
                # one-token requests have no TPOT: they pass per request and are left out of the percentile
                defined = ~np.isnan(values)
                ok = ~defined | (values <= slo.threshold_s)
                if np.any(~defined):
                    notes.append(
                        f"{int(np.count_nonzero(~defined))} requests without TPOT (one output token) pass {name}"
                    )
                values = values[defined]
            else:
                ok = values <= slo.threshold_s  # a request that never produced a token fails
            service[name] = {
                "metric": slo.metric,
                "percentile": slo.percentile,
                "value": percentile_value(values, slo.percentile),
                "threshold": slo.threshold_s,
                "pass": within_percentile(values, slo.threshold_s, slo.percentile),
                "count": int(values.size),
            }
        per_request[name] = np.asarray(ok, dtype=bool)
    meets_all = np.ones(n, dtype=bool)
    for ok in per_request.values():
        meets_all &= ok
    if duration_s is None:
        duration_s = run_duration_s(metrics.arrival_ns, metrics.token_times_ns, getattr(metrics, "finished_ns", None))
    return SLOReport(
        slo_names=[s.name for s in slos],
        per_request_pass=per_request,
        meets_all=meets_all,
        attainment={k: float(np.mean(v)) if n else math.nan for k, v in per_request.items()},
        service_level=service,
        service_level_pass=all(v["pass"] for v in service.values()),
        goodput_rps=goodput_rps(meets_all, duration_s),
        duration_s=float(duration_s),
        tbt_convention=tbt_convention,
        notes=notes,
    )


SLO_TYPES = {  # SLO type -> the thresholds it needs (seconds)
    "fluidity": ("tbt",),
    "tbt-ttft": ("tbt", "ttft"),
    "ttft-tpot": ("ttft", "tpot"),
}


def build_slos(slo_type: str, *, tbt_s: float | None = None, ttft_s: float | None = None,
               tpot_s: float | None = None, percentile: float = 99.0, min_fluidity: float = 0.9) -> list[SLO]:
    """Return the SLOs of one SLO type (fluidity, tbt-ttft, ttft-tpot); thresholds in seconds, > 0 where needed."""
    if slo_type not in SLO_TYPES:
        raise ValueError(f"the SLO type is one of {list(SLO_TYPES)}, not {slo_type!r}")
    given = {"tbt": tbt_s, "ttft": ttft_s, "tpot": tpot_s}
    for name in SLO_TYPES[slo_type]:
        if given[name] is None or not given[name] > 0:
            raise ValueError(f"the {slo_type} SLO needs a {name.upper()} bound > 0 s (--{name})")
    if slo_type == "fluidity":
        return [FluiditySLO(tbt_s, min_fluidity=min_fluidity, percentile=percentile, ttft_deadline_s=ttft_s)]
    first, second = SLO_TYPES[slo_type]
    return [LatencySLO(first, given[first], percentile), LatencySLO(second, given[second], percentile)]
