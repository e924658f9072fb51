"""The report's figures: one function per figure, each returns a matplotlib Figure (Agg canvas).

Every function takes the runs to overlay (``ReportRun``: one run's prepared arrays, its
name and its color) and draws each run in its own color with a legend by run name.
Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through
pyplot, so no global backend or figure registry is touched. Data preparation here is
vectorised; large samples are thinned for drawing only (CDFs densest near the maximum,
timelines keep both ends of every stall), never for the numbers quoted in labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from servescope.analysis.client_vs_engine import ClientBesideEngine
from servescope.analysis.distributions import cdf, percentile
from servescope.analysis.rank_skew import step_groups
from servescope.analysis.request_metrics import MISSING_NS, NS_PER_S, RequestMetrics
from servescope.analysis.stalls import CAUSES, Stalls
from servescope.run.columns import int_column
from servescope.run.names import Observer, Region, StepPhase

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
CAUSE_COLORS = {
    "preemption": "#AA3377",
    "cpu_overhead": "#EE7733",
    "prefill_interference": "#CC3311",
    "rejected_draft": "#0077BB",
    "long_forward": "#888888",
    "unattributed": "#BBBBBB",
}
PHASE_COLORS = {StepPhase.SCHEDULE: "#4477AA", StepPhase.EXECUTE: "#66CCEE", StepPhase.WAIT: "#CCCCCC",
                StepPhase.UPDATE: "#228833"}
REGION_COLORS = ("#882255", "#CC6677", "#DDCC77", "#AA4499", "#999933", "#44AA99", "#EE8866")
FRONTEND_COLOR = "#332288"
PERCENTILE_MARKERS = {50: "o", 90: "s", 99: "^"}
CDF_POINTS = 3000  # points drawn per CDF: half spread evenly, half geometrically closer to the maximum
TIMELINE_POINTS = 2500  # emission rows drawn per token timeline
SCATTER_POINTS = 20000  # requests drawn per scatter (a fixed-seed sample beyond that)
TIMELINE_REQUESTS = 5  # requests per run in the token timelines
TIMELINE_MAX_STEPS = 100  # engine steps shown at most in the iteration timeline
WIDTH = 11.0  # inches; at the report's 110 dpi a figure fills a 1200-pixel column


@dataclass
class ReportRun:
    """What the figures read of one run: its name, color, request metrics, gaps, stalls and step tables."""

    label: str
    color: str
    metrics: RequestMetrics
    tbt_per_token_s: np.ndarray  # every per-token gap, request order (metrics.tbt_per_token_offsets())
    tbt_per_chunk_s: np.ndarray  # every per-chunk gap, request order (metrics.tbt_per_chunk_offsets())
    stalls: Stalls
    stall_rule: str  # how stalls were detected, e.g. "gap > 5 x the request's median gap"
    steps: pa.Table
    worker_regions: pa.Table
    frontend_steps: pa.Table
    fluidity: dict | None = None  # fluidity.fluidity_for_requests() when a TBT SLO was given
    observer: str = Observer.ENGINE  # who recorded metrics (a client-only run: Observer.CLIENT)
    beside: ClientBesideEngine | None = None  # the client's record beside the engine's, when the run has both

    def decode_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (every gap, per-request offsets) that TPOT averages: per token, per chunk for a client's record."""
        if self.observer == Observer.CLIENT:
            return self.tbt_per_chunk_s, self.metrics.tbt_per_chunk_offsets()
        return self.tbt_per_token_s, self.metrics.tbt_per_token_offsets()
    include_request_ids: bool = False  # False: requests are named by position (request ids carry the client's)

    def request_name(self, index: int, width: int | None = 18) -> str:
        """Return how the report names request `index` of metrics: its id (if asked for; cut to width), else 'request <n>'."""
        if self.include_request_ids:
            text = str(self.metrics.request_id[index])
            return text if width is None else _short_id(text, width)
        return f"request {int(index)}"


# --------------------------------------------------------------------------- shared helpers


def new_figure(height: float, width: float = WIDTH) -> Figure:
    """Return an empty Figure with an Agg canvas and constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain(text: str) -> str:
    """Return text safe for matplotlib: '$' would start mathtext, so it is escaped."""
    return str(text).replace("$", r"\$")


def style_axes(ax, xlabel: str = "", ylabel: str = "", title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


ENGINE_ONLY_MESSAGE = "engine only: not seen by servescope's client\n(the runs are client-only)"


def _missing(runs: Sequence[ReportRun]) -> str:
    """Return the empty-panel message for an engine-only quantity: why it is missing when every run is client-only."""
    return ENGINE_ONLY_MESSAGE if runs and all(r.observer == Observer.CLIENT for r in runs) else "no samples"


def _no_data(ax, message: str = "no samples") -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="#888888")
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def time_unit(samples: Sequence[np.ndarray]) -> tuple[float, str]:
    """Return (scale, unit) for seconds: ms unless the largest P99 of the samples reaches 2 s."""
    p99 = [percentile(s, 99) for s in samples if np.size(s)]
    worst = max((p for p in p99 if math.isfinite(p)), default=0.0)
    return (1.0, "s") if worst >= 2.0 else (1e3, "ms")


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    digits = 0 if abs(value) >= 100 else (1 if abs(value) >= 10 else 2)
    return f"{value:.{digits}f} {unit}"


def thinned_cdf(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (x, cdf, ccdf = fraction >= x) at about CDF_POINTS points of the empirical CDF, densest in the tail."""
    x, y = cdf(values)
    n = len(x)
    if n == 0:
        return x, y, y
    if n > CDF_POINTS:
        half = CDF_POINTS // 2
        even = np.linspace(0, n - 1, half).astype(np.int64)
        tail = n - np.unique(np.geomspace(1, n, half).astype(np.int64))  # dense near the maximum
        keep = np.unique(np.concatenate([even, tail, [n - 1]]))
        x, y, rank = x[keep], y[keep], keep
    else:
        rank = np.arange(n)
    return x, y, 1.0 - rank / n


def _cdf_panels(ax_cdf, ax_tail, runs: Sequence[ReportRun], samples: Sequence[np.ndarray],
                scale: float, unit: str, what: str, missing: str = "no samples") -> None:
    """Draw one CDF per run (linear) and its tail (fraction >= x, log scale), P50/P90/P99 marked."""
    drawn = False
    for run, values in zip(runs, samples):
        values = _finite(values)
        if values.size == 0:
            continue
        drawn = True
        x, y, tail = thinned_cdf(values)
        ps = {q: percentile(values, q) for q in PERCENTILE_MARKERS}
        label = (f"{plain(run.label)}: P50 {_fmt(ps[50] * scale, unit)}, P99 {_fmt(ps[99] * scale, unit)} "
                 f"(n={values.size:,})")
        ax_cdf.plot(x * scale, y, drawstyle="steps-post", color=run.color, linewidth=1.8, label=label)
        ax_tail.plot(x * scale, tail, drawstyle="steps-post", color=run.color, linewidth=1.8)
        for q, marker in PERCENTILE_MARKERS.items():
            ax_cdf.plot([ps[q] * scale], [q / 100], marker=marker, color=run.color, markersize=6,
                        markeredgecolor="white", linestyle="none")
    if not drawn:
        _no_data(ax_cdf, missing)
        _no_data(ax_tail, missing)
        return
    style_axes(ax_cdf, f"{what} ({unit})", "fraction of samples <= x", "CDF")
    style_axes(ax_tail, f"{what} ({unit})", "fraction of samples >= x", "tail (log scale)")
    ax_cdf.set_ylim(0, 1.02)
    ax_tail.set_yscale("log")
    for q in PERCENTILE_MARKERS:
        ax_tail.axhline(1 - q / 100, color="#bbbbbb", linewidth=0.8, linestyle="--")
        ax_tail.text(1.0, 1 - q / 100, f" P{q}", transform=ax_tail.get_yaxis_transform(), va="center",
                     fontsize=8, color="#777777")
    markers = [Line2D([], [], color="#555555", marker=m, linestyle="none", label=f"P{q}")
               for q, m in PERCENTILE_MARKERS.items()]
    legend = ax_cdf.legend(loc="lower right", fontsize=8, frameon=True)
    ax_cdf.add_artist(legend)
    ax_cdf.legend(handles=markers, loc="center right", fontsize=8, frameon=False)


def _per_request_max(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return the maximum of each CSR segment (NaN for an empty one)."""
    counts = np.diff(offsets)
    out = np.full(counts.size, np.nan)
    has = counts > 0
    if has.any():
        out[has] = np.maximum.reduceat(np.asarray(values, dtype=np.float64), offsets[:-1][has])
    return out


def _sample_rows(n: int, limit: int = SCATTER_POINTS) -> np.ndarray:
    """Return all row indices, or a fixed-seed sample of `limit` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


# --------------------------------------------------------------------------- latency distributions


def latency_cdf_figure(runs: Sequence[ReportRun], metric: str) -> Figure:
    """Return the CDF and tail of one per-request latency ('ttft_s' or 'e2e_s'), runs overlaid."""
    what = {"ttft_s": "TTFT", "e2e_s": "end-to-end latency (TTLT)"}[metric]
    samples = [getattr(run.metrics, metric) for run in runs]
    scale, unit = time_unit(samples)
    fig = new_figure(4.2)
    ax_cdf, ax_tail = fig.subplots(1, 2)
    _cdf_panels(ax_cdf, ax_tail, runs, samples, scale, unit, what)
    fig.suptitle(f"{what}: distribution over requests", fontsize=12, x=0.01, ha="left")
    return fig


def tbt_cdf_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return TBT CDFs and tails per token (top) and per chunk (bottom), runs overlaid."""
    per_token = [run.tbt_per_token_s for run in runs]
    per_chunk = [run.tbt_per_chunk_s for run in runs]
    scale, unit = time_unit(per_token + per_chunk)
    fig = new_figure(8.0)
    axes = fig.subplots(2, 2)
    _cdf_panels(axes[0, 0], axes[0, 1], runs, per_token, scale, unit, "TBT per token", _missing(runs))
    _cdf_panels(axes[1, 0], axes[1, 1], runs, per_chunk, scale, unit, "TBT per chunk")
    axes[0, 0].set_title("per token: every output token's gap (0 inside a multi-token step)", fontsize=10,
                         loc="left")
    axes[1, 0].set_title("per chunk: one gap per emission step (what a streaming client sees)", fontsize=10,
                         loc="left")
    fig.suptitle("Time between tokens: distribution over all gaps of all requests", fontsize=12, x=0.01,
                 ha="left")
    return fig


def tpot_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return TPOT at P50/P90/P99 beside per-token TBT percentiles, and per request TPOT vs its worst gap."""
    fig = new_figure(4.6)
    ax_bars, ax_scatter = fig.subplots(1, 2, width_ratios=[1.1, 1])
    stats = [("TPOT", 50), ("TPOT", 90), ("TPOT", 99), ("TBT", 50), ("TBT", 90), ("TBT", 99)]
    samples = [run.metrics.tpot_s for run in runs] + [run.decode_gaps()[0] for run in runs]
    scale, unit = time_unit(samples)
    width = 0.8 / max(len(runs), 1)
    positions = np.arange(len(stats))
    for k, run in enumerate(runs):
        values = [percentile(run.metrics.tpot_s if name == "TPOT" else run.decode_gaps()[0], q) * scale
                  for name, q in stats]
        bars = ax_bars.bar(positions + (k - (len(runs) - 1) / 2) * width, np.nan_to_num(values), width,
                           color=run.color, label=plain(run.label))
        ax_bars.bar_label(bars, labels=[_fmt(v, "").strip() for v in values], fontsize=7, padding=2)
    ax_bars.set_xticks(positions, [f"{name}\nP{q}" for name, q in stats])
    ax_bars.axvline(2.5, color="#999999", linewidth=0.8)
    style_axes(ax_bars, "", unit, "TPOT (per request mean gap) vs TBT (every gap)")
    ax_bars.legend(fontsize=8, loc="upper left")

    drawn = False
    for run in runs:
        m = run.metrics
        worst = _per_request_max(*run.decode_gaps())
        ok = np.flatnonzero(np.isfinite(m.tpot_s) & np.isfinite(worst))
        ok = ok[_sample_rows(ok.size)]
        if ok.size:
            drawn = True
            ax_scatter.scatter(m.tpot_s[ok] * scale, worst[ok] * scale, s=12, alpha=0.6, color=run.color,
                               edgecolors="none", label=plain(run.label))
    if drawn:
        lo, hi = ax_scatter.get_xlim()[0], max(ax_scatter.get_xlim()[1], ax_scatter.get_ylim()[1])
        ax_scatter.plot([lo, hi], [lo, hi], color="#999999", linewidth=0.8, linestyle="--")
        ax_scatter.text(0.98, 0.04, "on the diagonal: steady decode", transform=ax_scatter.transAxes,
                        ha="right", fontsize=8, color="#777777")
        style_axes(ax_scatter, f"request TPOT ({unit})", f"request's longest gap ({unit})",
                   "what TPOT hides: each request's worst stall")
        ax_scatter.legend(fontsize=8, loc="best")
    else:
        _no_data(ax_scatter, "no request with 2+ tokens")
    return fig


def normalization_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return normalized latency (CDF) beside the raw scheduling delay (CDF) and per request, the two together."""
    fig = new_figure(4.4)
    ax_norm, ax_delay, ax_scatter = fig.subplots(1, 3)
    normalized = [run.metrics.normalized_latency_s for run in runs]
    delay = [run.metrics.scheduling_delay_s for run in runs]
    n_scale, n_unit = time_unit(normalized)
    d_scale, d_unit = time_unit(delay)
    for ax, samples, scale, unit, title, missing in (
        (ax_norm, normalized, n_scale, f"{n_unit}/token", "normalized latency (e2e / tokens)", "no samples"),
        (ax_delay, delay, d_scale, d_unit, "raw scheduling delay T_s", _missing(runs)),
    ):
        drawn = False
        for run, values in zip(runs, samples):
            values = _finite(values)
            if values.size:
                drawn = True
                x, y, _ = thinned_cdf(values)
                ax.plot(x * scale, y, drawstyle="steps-post", color=run.color, linewidth=1.8,
                        label=f"{plain(run.label)} (P99 {_fmt(percentile(values, 99) * scale, unit)})")
        if drawn:
            style_axes(ax, unit, "fraction of requests <= x", title)
            ax.legend(fontsize=8, loc="lower right")
        else:
            _no_data(ax, missing)
    drawn = False
    for run in runs:
        m = run.metrics
        ok = np.flatnonzero(np.isfinite(m.normalized_latency_s) & np.isfinite(m.scheduling_delay_s))
        ok = ok[_sample_rows(ok.size)]
        if ok.size:
            drawn = True
            ax_scatter.scatter(m.normalized_latency_s[ok] * n_scale, m.scheduling_delay_s[ok] * d_scale, s=12,
                               alpha=0.6, color=run.color, edgecolors="none", label=plain(run.label))
    if drawn:
        style_axes(ax_scatter, f"normalized latency ({n_unit}/token)", f"scheduling delay ({d_unit})",
                   "per request: waits it folds in")
        ax_scatter.legend(fontsize=8, loc="best")
    else:
        _no_data(ax_scatter, _missing(runs))
    return fig


def ttft_vs_prompt_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return TTFT and prefill time T_p against prompt length, one point per request, binned medians drawn."""
    fig = new_figure(4.4)
    ax_ttft, ax_prefill = fig.subplots(1, 2, sharex=True)
    for ax, metric, title in ((ax_ttft, "ttft_s", "TTFT (queueing + prefill)"),
                              (ax_prefill, "prefill_s", "prefill T_p = first token - first scheduled")):
        samples = [getattr(run.metrics, metric) for run in runs]
        scale, unit = time_unit(samples)
        drawn = False
        for run in runs:
            m = run.metrics
            y = getattr(m, metric)
            ok = np.flatnonzero((m.prompt_tokens >= 0) & np.isfinite(y))
            if ok.size == 0:
                continue
            drawn = True
            shown = ok[_sample_rows(ok.size)]
            ax.scatter(m.prompt_tokens[shown], y[shown] * scale, s=12, alpha=0.5, color=run.color,
                       edgecolors="none", label=plain(run.label))
            centers, medians = _binned_medians(m.prompt_tokens[ok].astype(np.float64), y[ok] * scale)
            ax.plot(centers, medians, color=run.color, linewidth=2.0)
        if drawn:
            style_axes(ax, "prompt length (tokens)", unit, title)
            ax.legend(fontsize=8, loc="best")
        elif metric == "prefill_s" and _missing(runs) == ENGINE_ONLY_MESSAGE:
            _no_data(ax, ENGINE_ONLY_MESSAGE)
        else:
            _no_data(ax, "no request with a recorded prompt length and first token")
    return fig


def _binned_medians(x: np.ndarray, y: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Return (bin centers, median y) of x split into equal-width bins; empty bins dropped."""
    if x.size == 0 or x.min() == x.max():
        return np.array([x.mean()]) if x.size else x, np.array([np.median(y)]) if y.size else y
    edges = np.linspace(x.min(), x.max(), bins + 1)
    which = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    order = np.lexsort((y, which))
    counts = np.bincount(which, minlength=bins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    ys = y[order]
    lower = ys[starts[has] + (counts[has] - 1) // 2]
    upper = ys[starts[has] + counts[has] // 2]
    return ((edges[:-1] + edges[1:]) / 2)[has], (lower + upper) / 2


# --------------------------------------------------------------------------- stalls and fluidity


def worst_stalled_requests(run: ReportRun, count: int = TIMELINE_REQUESTS) -> np.ndarray:
    """Return the indices of the requests with the longest stall (by longest gap when no stall was found)."""
    m = run.metrics
    if len(run.stalls):
        worst = np.full(len(m), -np.inf)
        np.maximum.at(worst, run.stalls.request_index, run.stalls.gap_s)
    else:
        worst = np.nan_to_num(_per_request_max(run.tbt_per_chunk_s, m.tbt_per_chunk_offsets()), nan=-np.inf)
    ranked = np.argsort(-worst, kind="stable")
    return ranked[np.isfinite(worst[ranked])][:count]


def token_timelines_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return tokens emitted vs time since arrival for each run's worst-stalled requests, stalls coloured by cause."""
    columns = min(len(runs), 2)
    rows = math.ceil(len(runs) / columns)
    fig = new_figure(4.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    causes_seen: set[str] = set()
    for ax, run in zip(axes, runs):
        chosen = worst_stalled_requests(run)
        if chosen.size == 0:
            _no_data(ax, "no request with 2+ emissions")
            ax.set_title(plain(run.label), color=run.color, loc="left", fontsize=11)
            continue
        scale, unit = time_unit([run.metrics.e2e_s[chosen]])
        shades = _shades(run.color, chosen.size)
        for shade, request in zip(shades, chosen):
            causes_seen |= _draw_token_timeline(ax, run, int(request), scale, shade)
        style_axes(ax, f"time since arrival ({unit})", "output tokens emitted", "")
        what = "worst stalls" if len(run.stalls) else "longest gaps (no stall)"
        ax.set_title(f"{plain(run.label)}: {what}", color=run.color, loc="left", fontsize=11)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    if causes_seen:
        handles = [Line2D([], [], color=CAUSE_COLORS[c], linewidth=6, alpha=0.45, label=f"stall: {c}")
                   for c in CAUSES if c in causes_seen]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def _draw_token_timeline(ax, run: ReportRun, request: int, scale: float, color) -> set[str]:
    """Draw one request's cumulative tokens (step plot from arrival) and its stalls; return the causes drawn."""
    m = run.metrics
    lo, hi = int(m.chunk_offsets[request]), int(m.chunk_offsets[request + 1])
    times = m.chunk_times_ns[lo:hi]
    tokens = np.cumsum(m.chunk_num_tokens[lo:hi], dtype=np.int64)
    arrival = m.arrival_ns[request] if m.arrival_ns[request] != MISSING_NS else times[0]
    mine = np.flatnonzero(run.stalls.request_index == request)
    keep = np.arange(times.size)
    if times.size > TIMELINE_POINTS:  # thin for drawing; keep both ends of every stall
        stall_rows = np.searchsorted(times, run.stalls.end_ns[mine])
        keep = np.unique(np.concatenate([np.linspace(0, times.size - 1, TIMELINE_POINTS).astype(np.int64),
                                         stall_rows, np.maximum(stall_rows - 1, 0)]))
    x = np.concatenate([[0.0], (times[keep] - arrival) / NS_PER_S * scale])
    y = np.concatenate([[0], tokens[keep]])
    longest = run.stalls.gap_s[mine].max() if mine.size else np.nanmax(np.diff(times), initial=0) / NS_PER_S
    label = f"{plain(run.request_name(request))}: longest gap {_fmt(longest * 1e3, 'ms')}"
    ax.plot(x, y, drawstyle="steps-post", color=color, linewidth=1.6, label=label)
    causes = set()
    for k in mine:
        start = (run.stalls.start_ns[k] - arrival) / NS_PER_S * scale
        end = (run.stalls.end_ns[k] - arrival) / NS_PER_S * scale
        level = run.stalls.token_index[k]  # tokens emitted before the late one
        cause = str(run.stalls.cause[k])
        ax.plot([start, end], [level, level], color=CAUSE_COLORS.get(cause, "#888888"), linewidth=6,
                alpha=0.45, solid_capstyle="butt")
        causes.add(cause)
    return causes


def _short_id(request_id, width: int = 18) -> str:
    text = str(request_id)
    return text if len(text) <= width else text[:width - 1] + "…"


def _shades(color: str, count: int) -> list:
    """Return `count` variants of color, from the full color to a lighter tint."""
    from matplotlib.colors import to_rgb

    base = np.array(to_rgb(color))
    return [tuple(base + (1 - base) * t) for t in np.linspace(0.0, 0.6, count)]


def stall_causes_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return stall time and stall count per cause, runs side by side."""
    fig = new_figure(4.2)
    ax_time, ax_share = fig.subplots(1, 2)
    positions = np.arange(len(CAUSES))
    width = 0.8 / max(len(runs), 1)
    any_stall = False
    for k, run in enumerate(runs):
        by_cause = run.stalls.time_by_cause()
        times = np.array([by_cause[c]["time_s"] for c in CAUSES])
        shares = np.array([by_cause[c]["share"] for c in CAUSES]) * 100
        counts = [by_cause[c]["count"] for c in CAUSES]
        any_stall |= bool(sum(counts))
        offset = (k - (len(runs) - 1) / 2) * width
        label = f"{plain(run.label)} ({len(run.stalls)} stalls, {times.sum():.2f} s)"
        bars = ax_time.bar(positions + offset, times, width, color=run.color, label=label)
        ax_time.bar_label(bars, labels=[f"n={c}" if c else "" for c in counts], fontsize=7, padding=2)
        ax_share.bar(positions + offset, shares, width, color=run.color)
    names = [c.replace("_", "\n") for c in CAUSES]
    ax_time.set_xticks(positions, names, fontsize=9)
    ax_share.set_xticks(positions, names, fontsize=9)
    style_axes(ax_time, "", "stall time (s, sum of gaps)", "stall time by cause")
    style_axes(ax_share, "", "% of the run's stall time", "share of stall time")
    ax_share.set_ylim(0, 105)
    ax_time.legend(fontsize=8, loc="upper right")
    if not any_stall:
        ax_time.set_ylim(0, 1)
        ax_time.text(0.5, 0.5, "no stalls found", transform=ax_time.transAxes, ha="center", color="#888888")
    rules = sorted({run.stall_rule for run in runs})
    fig.suptitle("Generation stalls (" + plain("; ".join(rules)) + ")", fontsize=12, x=0.01, ha="left")
    return fig


FLUIDITY_PERCENTILES = (1, 5, 10, 25, 50)


def fluidity_figure(runs: Sequence[ReportRun], tbt_slo_s: float, min_fluidity: float = 0.9) -> Figure:
    """Return the fluidity index at low percentiles over requests (worst requests) and its CDF, per run."""
    fig = new_figure(4.3)
    ax_bars, ax_cdf = fig.subplots(1, 2)
    positions = np.arange(len(FLUIDITY_PERCENTILES))
    width = 0.8 / max(len(runs), 1)
    for k, run in enumerate(runs):
        if run.fluidity is None:
            continue
        values = np.asarray(run.fluidity["fluidity_index"], dtype=np.float64)
        counted = values[np.asarray(run.fluidity["deadlines"]) > 0]
        at = [percentile(counted, q) for q in FLUIDITY_PERCENTILES]
        bars = ax_bars.bar(positions + (k - (len(runs) - 1) / 2) * width, np.nan_to_num(at), width,
                           color=run.color, label=plain(run.label))
        ax_bars.bar_label(bars, labels=[f"{v:.2f}" if math.isfinite(v) else "n/a" for v in at], fontsize=7,
                          padding=2)
        if counted.size:
            x, y, _ = thinned_cdf(counted)
            ax_cdf.plot(x, y, drawstyle="steps-post", color=run.color, linewidth=1.8,
                        label=f"{plain(run.label)} (n={counted.size:,})")
    for ax in (ax_bars,):
        ax.axhline(min_fluidity, color="#CC3311", linestyle="--", linewidth=1)
    ax_cdf.axvline(min_fluidity, color="#CC3311", linestyle="--", linewidth=1)
    ax_cdf.axhline(0.01, color="#bbbbbb", linestyle=":", linewidth=1)
    ax_bars.set_xticks(positions, [f"P{q}" for q in FLUIDITY_PERCENTILES])
    ax_bars.set_ylim(0, 1.12)
    style_axes(ax_bars, "percentile over requests (P1 = the worst 1%)", "fluidity index",
               f"fluidity at percentiles (target >= {min_fluidity:g} at P1)")
    style_axes(ax_cdf, "fluidity index", "fraction of requests <= x", "fluidity over requests")
    ax_bars.legend(fontsize=8, loc="lower right")
    if ax_cdf.lines:
        ax_cdf.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Deadline-based fluidity index, TBT deadline D_d = {tbt_slo_s * 1e3:g} ms", fontsize=12,
                 x=0.01, ha="left")
    return fig


# --------------------------------------------------------------------------- client beside engine

CLIENT_LINESTYLE = (0, (4, 2))  # dashed: the client's record; solid: the engine's


def client_engine_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return client-side beside engine-side CDFs of TTFT, TBT per chunk and e2e, and the per-request TTFT difference."""
    fig = new_figure(8.0)
    axes = fig.subplots(2, 2).ravel()
    both = [run for run in runs if run.beside is not None and run.beside.compared.size]
    panels = (
        ("TTFT", lambda b: (b.ttft_client_s, b.ttft_engine_s)),
        ("TBT per chunk", lambda b: (b.chunk_gaps_s("client"), b.chunk_gaps_s("engine"))),
        ("end-to-end latency", lambda b: (b.e2e_client_s, b.e2e_engine_s)),
    )
    for ax, (what, samples_of) in zip(axes, panels):
        pairs = [samples_of(run.beside) for run in both]
        scale, unit = time_unit([v for pair in pairs for v in pair])
        for run, (client, engine) in zip(both, pairs):
            for values, side, style in ((engine, "engine", "-"), (client, "client", CLIENT_LINESTYLE)):
                values = _finite(values)
                if values.size == 0:
                    continue
                x, y, _ = thinned_cdf(values)
                ax.plot(x * scale, y, drawstyle="steps-post", color=run.color, linewidth=1.8, linestyle=style,
                        label=f"{plain(run.label)} {side}: P50 {_fmt(percentile(values, 50) * scale, unit)}, "
                              f"P99 {_fmt(percentile(values, 99) * scale, unit)}")
        if ax.lines:
            style_axes(ax, f"{what} ({unit})", "fraction of samples <= x", what)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, loc="lower right")
        else:
            _no_data(ax, "no run with both client and engine records")
    ax = axes[3]
    differences = [run.beside.ttft_difference_s for run in both]
    scale, unit = time_unit(differences)
    for run, values in zip(both, differences):
        values = _finite(values)
        if values.size:
            x, y, _ = thinned_cdf(values)
            share = percentile(run.beside.network_front_end_share, 50)
            ax.plot(x * scale, y, drawstyle="steps-post", color=run.color, linewidth=1.8,
                    label=f"{plain(run.label)}: P50 {_fmt(percentile(values, 50) * scale, unit)} "
                          f"({share * 100:.0f}% of the client's TTFT at P50)")
    if ax.lines:
        style_axes(ax, f"client TTFT - engine TTFT ({unit})", "fraction of requests <= x",
                   "outside the engine: network and front end, per request")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    else:
        _no_data(ax, "no run with both client and engine records")
    fig.suptitle("The client's view (dashed) beside the engine's (solid), same requests", fontsize=12, x=0.01,
                 ha="left")
    return fig


# --------------------------------------------------------------------------- iterations


def _ns(table: pa.Table, name: str) -> np.ndarray:
    """Return an int64 ns column with MISSING_NS for nulls (a missing column is all MISSING_NS)."""
    return int_column(table, name, MISSING_NS)


def timeline_window(run: ReportRun) -> tuple[int, int] | None:
    """Return the [start, end] ns window of the iteration timeline: around the worst stall, else the longest step."""
    if run.steps.num_rows == 0:
        return None
    start, end = _ns(run.steps, "schedule_start_ns"), _ns(run.steps, "update_end_ns")
    ok = (start != MISSING_NS) & (end != MISSING_NS)
    if not ok.any():
        return None
    start, end = start[ok], end[ok]
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    if len(run.stalls):
        k = int(np.argmax(run.stalls.gap_s))
        lo_ns, hi_ns = int(run.stalls.start_ns[k]), int(run.stalls.end_ns[k])
        first = int(np.searchsorted(end, lo_ns, side="left"))
        last = int(np.searchsorted(start, hi_ns, side="right")) - 1
    else:  # the longest step, the first one (warm-up, compilation) aside when there are others
        skip = 1 if start.size > 10 else 0
        first = last = skip + int(np.argmax((end - start)[skip:]))
    first, last = max(first - 3, 0), min(max(last, first) + 3, start.size - 1)
    last = min(last, first + TIMELINE_MAX_STEPS - 1)  # a very long stall: its start, where it began
    return int(start[first]), int(end[last])


def iteration_timeline_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return, per run, a window of engine steps: CPU phases, front-end work, worker regions and GPU regions."""
    lanes = [_timeline_lanes(run) for run in runs]
    heights = [max(len(lane), 1) * 0.42 + 1.2 for lane in lanes]
    fig = new_figure(sum(heights) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(runs), 1, squeeze=False, height_ratios=heights)).ravel()
    legend_items: dict[str, str] = {}
    for ax, run, run_lanes in zip(axes, runs, lanes):
        window = timeline_window(run)
        if window is None or not run_lanes:
            _no_data(ax, "no engine steps recorded")
            ax.set_title(plain(run.label), color=run.color, loc="left", fontsize=11)
            continue
        lo, hi = window
        names = list(run_lanes)
        for row, name in enumerate(names):
            for start_ns, end_ns, color, label, height in run_lanes[name]:
                inside = (end_ns >= lo) & (start_ns <= hi)
                if not inside.any():
                    continue
                s = (np.maximum(start_ns[inside], lo) - lo) / 1e6
                d = (np.minimum(end_ns[inside], hi) - lo) / 1e6 - s
                ax.broken_barh(list(zip(s, np.maximum(d, 0))), (row - height / 2, height), facecolors=color,
                               edgecolor="white", linewidth=0.3)
                legend_items.setdefault(label, color)
        _mark_stall(ax, run, lo, len(names))
        if "engine step" in names:
            _label_steps(ax, run, lo, hi, names.index("engine step"))
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.01 * (hi - lo) / 1e6, 1.01 * (hi - lo) / 1e6)
        ax.set_ylim(len(names) - 0.4, -0.8)
        style_axes(ax, "time in window (ms)", "", "")
        ax.grid(True, axis="x", color="#e5e5e5")
        ax.grid(False, axis="y")
        ax.set_title(f"{plain(run.label)}: {(hi - lo) / 1e6:.1f} ms around "
                     f"{'the longest stall' if len(run.stalls) else 'the longest step'}",
                     color=run.color, loc="left", fontsize=11)
    handles = [Patch(facecolor=color, label=plain(label)) for label, color in legend_items.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8,
                   frameon=False)
    return fig


def _mark_stall(ax, run: ReportRun, lo: int, rows: int) -> None:
    """Shade the longest stall's gap (previous token to late token) across all lanes."""
    if not len(run.stalls):
        return
    k = int(np.argmax(run.stalls.gap_s))
    start = (run.stalls.start_ns[k] - lo) / 1e6
    end = (run.stalls.end_ns[k] - lo) / 1e6
    color = CAUSE_COLORS.get(str(run.stalls.cause[k]), "#888888")
    ax.axvspan(start, end, color=color, alpha=0.10, linewidth=0)
    ax.text(max(start, 0.0), -0.75, f" stall of {run.request_name(run.stalls.request_index[k])}: "
            f"{run.stalls.gap_s[k] * 1e3:.1f} ms, {run.stalls.cause[k]}", fontsize=8, color=color, va="top")


def _timeline_lanes(run: ReportRun) -> dict[str, list]:
    """Return lane name -> [(start_ns, end_ns, color, legend label, bar height)] of one run's intervals."""
    lanes: dict[str, list] = {}
    steps = run.steps
    if steps.num_rows:
        bars = []
        for phase in StepPhase.ALL:
            start_col, end_col = StepPhase.columns(phase)
            start, end = _ns(steps, start_col), _ns(steps, end_col)
            ok = (start != MISSING_NS) & (end != MISSING_NS)
            bars.append((start[ok], end[ok], PHASE_COLORS[phase], f"EngineCore {StepPhase.DISPLAY[phase]}", 0.7))
        start, end = _ns(steps, "schedule_start_ns"), _ns(steps, "update_end_ns")
        ok = (start != MISSING_NS) & (end != MISSING_NS)
        lanes["engine step"] = [(start[ok], end[ok], "#E4E4E4", "engine step (schedule -> update), step id", 0.7)]
        lanes["EngineCore CPU"] = bars
    regions = run.worker_regions
    if regions.num_rows:
        ranks = pc.fill_null(regions["rank"], 0).to_numpy(zero_copy_only=False)
        vocabulary, region = region_codes(regions)
        host_start, host_end = _ns(regions, "host_start_ns"), _ns(regions, "host_end_ns")
        codes = _regions_in_step_order(regions, region, host_start, host_end)
        color = {code: REGION_COLORS[i % len(REGION_COLORS)] for i, code in enumerate(codes)}
        gpu_start, gpu_end = _ns(regions, "gpu_start_ns"), _ns(regions, "gpu_end_ns")
        host_ok = (host_start != MISSING_NS) & (host_end != MISSING_NS)
        gpu_ok = (gpu_start != MISSING_NS) & (gpu_end != MISSING_NS)
        gpu_time = np.where(gpu_ok, gpu_end - gpu_start, 0)
        for rank in np.unique(ranks):
            mine = ranks == rank
            for code in codes:
                sel = mine & (region == code) & host_ok
                if sel.any():
                    lanes[f"worker {rank}: {vocabulary[code]}"] = [
                        (host_start[sel], host_end[sel], color[code], f"worker region {vocabulary[code]}", 0.7)]
            gpu_bars = []
            total = np.bincount(region[mine], weights=gpu_time[mine], minlength=len(vocabulary))
            for code in sorted(codes, key=lambda c: -total[c]):  # enclosing regions first: nested ones on top
                sel = mine & (region == code) & gpu_ok
                if sel.any():
                    gpu_bars.append((gpu_start[sel], gpu_end[sel], color[code], f"worker region {vocabulary[code]}",
                                     max(0.75 - 0.15 * len(gpu_bars), 0.2)))
            if gpu_bars:
                lanes[f"GPU {rank}"] = gpu_bars
    front = run.frontend_steps
    if front.num_rows:
        start, end = _ns(front, "process_start_ns"), _ns(front, "process_end_ns")
        ok = (start != MISSING_NS) & (end != MISSING_NS)
        lanes["front end output"] = [(start[ok], end[ok], FRONTEND_COLOR, "front end: output processing", 0.7)]
    return lanes


def region_codes(regions: pa.Table) -> tuple[list[str], np.ndarray]:
    """Return (region names, per row the index of its name), without one Python string per row."""
    encoded = pc.dictionary_encode(pc.fill_null(regions["region"], "region")).combine_chunks()
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _regions_in_step_order(regions: pa.Table, region: np.ndarray, host_start: np.ndarray,
                           host_end: np.ndarray) -> list[int]:
    """Return region codes ordered by their typical start within a step (enclosing region first on ties)."""
    step = pc.fill_null(regions["step_id"], -1).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = (host_start != MISSING_NS) & (host_end != MISSING_NS)
    step, region, start, end = step[ok], region[ok], host_start[ok], host_end[ok]
    if step.size == 0:
        return sorted(set(region.tolist()))
    order = np.argsort(step, kind="stable")
    step, region, start, end = step[order], region[order], start[order], end[order]
    first = np.flatnonzero(np.concatenate([[True], step[1:] != step[:-1]]))
    step_start = np.repeat(np.minimum.reduceat(start, first), np.diff(np.append(first, step.size)))
    offset, duration = start - step_start, end - start
    keys = {int(code): (float(np.median(offset[region == code])), -float(np.median(duration[region == code])))
            for code in np.unique(region)}
    return sorted(keys, key=lambda code: (keys[code], code))


def _label_steps(ax, run: ReportRun, lo: int, hi: int, row: int) -> None:
    """Write each step's id on its bar in the 'engine step' lane where the bar is wide enough."""
    steps = run.steps
    start, end = _ns(steps, "schedule_start_ns"), _ns(steps, "update_end_ns")
    step_id = pc.fill_null(steps["step_id"], -1).to_numpy(zero_copy_only=False)
    inside = np.flatnonzero((start != MISSING_NS) & (end != MISSING_NS) & (end >= lo) & (start <= hi))
    span = max(hi - lo, 1)
    for k in inside:
        s, e = max(start[k], lo), min(end[k], hi)
        if (e - s) / span >= 0.035:
            ax.text((s + e - 2 * lo) / 2e6, row, f"{step_id[k]}", ha="center", va="center", fontsize=7,
                    color="#444444")


# --------------------------------------------------------------------------- ranks (tensor / pipeline parallelism)

RANK_WINDOW_STEPS = 3  # steps shown on each side of the step with the largest skew
COLLECTIVE_COLOR = "#CC3311"
SKEW_COLOR = "#000000"
STEP_SHADES = ("#88CCEE", "#44AA99")


def several_ranks(run: ReportRun) -> bool:
    """Return True when some engine step of the run ran on more than one worker rank."""
    return bool((step_groups(run.worker_regions).ranks > 1).any())


def rank_timeline_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return, per run with several ranks, each rank's span of a few steps around the largest rank skew, its
    collectives, and each step's skew (fastest to slowest rank end)."""
    shown = [run for run in runs if several_ranks(run)]
    lanes = [_rank_lanes(run) for run in shown]
    heights = [max(len(lane[0]), 1) * 0.5 + 1.3 for lane in lanes] or [1.5]
    fig = new_figure(sum(heights) + 0.5)
    axes = np.atleast_1d(fig.subplots(max(len(shown), 1), 1, squeeze=False, height_ratios=heights)).ravel()
    if not shown:
        _no_data(axes[0], "no run has more than one worker rank")
        return fig
    for ax, run, (names, bars, skews, title) in zip(axes, shown, lanes):
        for row, (start, end, color) in enumerate(bars):
            ax.broken_barh(list(zip(start, np.maximum(end - start, 0))), (row - 0.3, 0.6), facecolors=color,
                           edgecolor="white", linewidth=0.3)
        for first_end, last_end in skews:
            ax.plot([first_end, last_end], [-0.6, -0.6], color=SKEW_COLOR, linewidth=2.5, solid_capstyle="butt")
            ax.axvline(last_end, color=SKEW_COLOR, linewidth=0.6, linestyle=":")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(len(names) - 0.4, -1.0)
        style_axes(ax, "time in window (ms)", "", "")
        ax.grid(False, axis="y")
        ax.set_title(plain(f"{run.label}: {title}"), color=run.color, loc="left", fontsize=11)
    handles = [Patch(facecolor=STEP_SHADES[0], label="a rank's span of a step (shades alternate by step)"),
               Patch(facecolor=COLLECTIVE_COLOR, label="collective (all-reduce, all-gather, reduce-scatter)"),
               Line2D([], [], color=SKEW_COLOR, linewidth=2.5, label="rank skew: fastest to slowest rank's end")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


class RankLanes(NamedTuple):
    """One run's lanes of the rank timeline: times in ms from the window's start."""

    names: list[str]  # one per lane, top to bottom
    bars: list[tuple[np.ndarray, np.ndarray, object]]  # per lane (starts, ends, colour or colours)
    skews: list[tuple[float, float]]  # per step group with several ranks: (fastest rank's end, slowest rank's end)
    title: str


def _rank_lanes(run: ReportRun) -> RankLanes:
    """Return the lanes of one run's rank timeline: RANK_WINDOW_STEPS steps either side of its largest rank skew,
    each rank's span per step and its collectives, on the clock step_groups chose for each step group."""
    groups = step_groups(run.worker_regions)
    several = np.flatnonzero(groups.ranks > 1)
    worst = several[np.argmax(groups.skew_ns[several])]
    engine = int(groups.engine_index[worst])
    pick = ((groups.engine_index == engine) & (np.abs(groups.step_id - groups.step_id[worst]) <= RANK_WINDOW_STEPS)
            & (groups.ranks > 0))
    lo = int(groups.start_ns[pick].min())
    steps = groups.step_id[pick]
    regions = run.worker_regions.filter(pc.is_in(run.worker_regions["step_id"], value_set=pa.array(np.unique(steps))))
    regions = regions.filter(pa.array(int_column(regions, "engine_index") == engine))
    step, rank, stage = int_column(regions, "step_id"), int_column(regions, "rank"), int_column(regions, "pp_rank")
    tp, pp = int_column(regions, "tp_rank", -1), int_column(regions, "pp_rank", -1)
    collective = np.asarray(pc.fill_null(pc.equal(regions["region"], Region.COLLECTIVE), False).to_numpy(
        zero_copy_only=False), dtype=bool)
    gpu_groups = {(int(k), int(p)) for k, p, g in zip(steps, groups.pp_rank[pick], groups.on_gpu_clock[pick]) if g}
    on_gpu = np.array([(k, p) in gpu_groups for k, p in zip(step.tolist(), stage.tolist())], dtype=bool)
    start = np.where(on_gpu, _ns(regions, "gpu_start_ns"), _ns(regions, "host_start_ns"))
    end = np.where(on_gpu, _ns(regions, "gpu_end_ns"), _ns(regions, "host_end_ns"))
    timed = (start != MISSING_NS) & (end != MISSING_NS)
    names, bars = [], []
    for r in np.unique(rank[timed]).tolist():
        mine = timed & (rank == r)
        first = np.flatnonzero(mine)[0]
        names.append(f"rank {r}" + (f" (TP {tp[first]}, PP {pp[first]})" if tp[first] >= 0 else ""))
        span_steps = np.unique(step[mine])
        span_start = np.array([start[mine & (step == k)].min() for k in span_steps])
        span_end = np.array([end[mine & (step == k)].max() for k in span_steps])
        bars.append(((span_start - lo) / 1e6, (span_end - lo) / 1e6, [STEP_SHADES[k % 2] for k in span_steps]))
        if (mine & collective).any():
            names.append(f"  collectives of rank {r}")
            bars.append(((start[mine & collective] - lo) / 1e6, (end[mine & collective] - lo) / 1e6,
                         COLLECTIVE_COLOR))
    skews = [((groups.end_ns[g] - groups.skew_ns[g] - lo) / 1e6, (groups.end_ns[g] - lo) / 1e6)
             for g in np.flatnonzero(pick & (groups.ranks > 1))]
    clock = "GPU" if groups.on_gpu_clock[worst] else "host"
    title = (f"steps {steps.min()}-{steps.max()} (engine {engine}), largest rank skew "
             f"{groups.skew_ns[worst] / 1e6:.2f} ms at step {groups.step_id[worst]}, slowest rank "
             f"{groups.slowest_rank[worst]} ({clock} clock)")
    return RankLanes(names, bars, skews, title)


def rank_skew_figure(runs: Sequence[ReportRun]) -> Figure:
    """Return per run the distributions over steps of rank skew and start skew, of communication and collective
    wait, and the steps in which each rank was the slowest."""
    fig = new_figure(4.3)
    ax_skew, ax_comm, ax_slowest = fig.subplots(1, 3)
    shown = [(run, step_groups(run.worker_regions)) for run in runs]
    shown = [(run, g) for run, g in shown if (g.ranks > 1).any()]
    drawn = {"skew": False, "comm": False}
    for run, g in shown:
        several = g.ranks > 1
        for ax, key, pairs in ((ax_skew, "skew", ((g.skew_ns, "-", "end"), (g.start_skew_ns, "--", "start"))),
                               (ax_comm, "comm", ((g.communication_ns, "-", "communication"),
                                                  (g.collective_wait_ns, "--", "wait in collectives")))):
            for values, style, what in pairs:
                v = _finite(values[several] / 1e6)
                if v.size == 0:
                    continue
                drawn[key] = True
                x, y, _ = thinned_cdf(v)
                ax.plot(x, y, drawstyle="steps-post", color=run.color, linestyle=style, linewidth=1.6,
                        label=f"{plain(run.label)} {what}: P50 {_fmt(percentile(v, 50), 'ms')}, "
                              f"P99 {_fmt(percentile(v, 99), 'ms')}")
        ranks, counts = np.unique(g.slowest_rank[several], return_counts=True)
        ax_slowest.bar([f"{plain(run.label)}\nrank {r}" for r in ranks], counts, color=run.color)
    for ax, key, what, title in ((ax_skew, "skew", "rank skew per step (ms)", "slowest minus fastest rank"),
                                 (ax_comm, "comm", "per step (ms)", "communication between ranks")):
        if drawn[key]:
            style_axes(ax, what, "fraction of steps <= x", title)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, loc="lower right")
        else:
            _no_data(ax, "not measured" if shown else "no run has more than one worker rank")
    if shown:
        style_axes(ax_slowest, "", "steps in which the rank ended last", "slowest rank")
        ax_slowest.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _no_data(ax_slowest, "no run has more than one worker rank")
    return fig
