"""`servescope report`: one or more runs as an HTML page with its figures (and the same figures as PNG files).

``write_report(run_dirs, out_dir)`` loads each run, computes what the figures need once
per run (request metrics, gaps, stalls, fluidity, step breakdown, checklist inputs),
draws every figure with all runs overlaid (report_figures.py), writes each as
``out_dir/figures/<name>.png`` and assembles ``out_dir/index.html`` (report_html.py),
which embeds the same PNGs so it can be mailed or archived as one file.
"""

from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from servescope import __version__
from servescope.report import html as h
from servescope.analysis.checklist import AuditedRun, audit, audited_view
from servescope.analysis.client_vs_engine import ClientBesideEngine
from servescope.analysis.iterations import iteration_breakdown
from servescope.analysis.distributions import P999_MIN_COUNT, summarize
from servescope.report.figures import (
    RUN_COLORS,
    ReportRun,
    client_engine_figure,
    fluidity_figure,
    iteration_timeline_figure,
    latency_cdf_figure,
    normalization_figure,
    rank_skew_figure,
    rank_timeline_figure,
    several_ranks,
    stall_causes_figure,
    tbt_cdf_figure,
    token_timelines_figure,
    tpot_figure,
    ttft_vs_prompt_figure,
)
from servescope.analysis.request_view import request_view
from servescope.run.data import load_run, release_unused_memory
from servescope.analysis.stalls import find_stalls, step_arrays
from servescope.analysis.summary import CLIENT_CONVENTIONS, CONVENTIONS, TEXT_ROWS, run_info
from servescope.run import directory as rundir
from servescope.run.names import Observer, StepPhase

DPI = 110
DEFAULT_STALL_MEDIAN_MULTIPLE = 3.0
PROGRESS_MIN_TASKS = 8  # a progress bar from this many runs + figures, on a terminal
WORST_STALLS_LISTED = 10
# Summary rows, in page order: metric -> where its samples come from.
SUMMARY_METRICS = ("ttft_s", "tbt_per_token_s", "tbt_per_chunk_s", "e2e_s", "tpot_s", "normalized_latency_s",
                   "scheduling_delay_s", "prefill_s", "decode_s", "ttst_s", "preemptions")
CONVENTIONS_SHOWN = ("clock", "arrival", "scheduling_delay", "prefill", "decode", "e2e", "tpot",
                     "normalized_latency", "tbt_per_token", "tbt_per_chunk", "percentiles", "throughput")


@dataclass
class PreparedRun:
    """One run, computed once for the whole report: figure inputs, manifest, numbers, checklist inputs."""

    figures: ReportRun
    path: Path
    manifest: dict
    info: dict
    summary: dict[str, dict]
    iterations: dict[str, np.ndarray]
    gpu_time_source: str
    audited: AuditedRun
    fluidity_text: str | None
    source: str | None  # whose record the numbers come from (names.Observer); None: no request recorded
    observers: tuple[str, ...]  # every observer with records in the run
    engine_only: frozenset[str]  # summary metrics the source cannot know (a client-only run's engine-only fields)

    @property
    def observed_by(self) -> str:
        """Return who recorded the run, in words: 'engine', 'engine + client', 'client only' or 'nothing'."""
        if self.source is None:
            return "nothing"
        if self.source == Observer.CLIENT:
            return "client only"
        return " + ".join(self.observers)
    warnings: list[str]  # problems reading the run (load_run's): its numbers come from the rest


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Return a short, unique name per run directory (its name, else its last two path parts, else numbered)."""
    paths = [Path(os.path.abspath(p)) for p in run_dirs]
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(Path(p.parent.name) / p.name) for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return unique


def _load_manifest(run) -> dict:
    """Return the run's manifest.json, or the one built from its process files when none was written."""
    if run.manifest:
        return run.manifest
    if not (run.path / "processes").is_dir():
        return {}
    from servescope.run.manifest import load_manifest

    try:
        return load_manifest(run.path)
    except (OSError, ValueError, rundir.RunDirError):
        return {}


def stall_rule(threshold_s: float | None, median_multiple: float | None) -> str:
    """Return the stall detection rule as text."""
    parts = []
    if threshold_s is not None:
        parts.append(f"gap > {threshold_s * 1e3:g} ms")
    if median_multiple is not None:
        parts.append(f"gap > {median_multiple:g} x the request's median gap between emissions")
    return "stall: " + " and ".join(parts)


def prepare_run(run_dir: str | os.PathLike, label: str, color: str, *, tbt_slo_s: float | None,
                ttft_slo_s: float | None, stall_threshold_s: float | None,
                stall_median_multiple: float | None, include_request_ids: bool = False,
                strict: bool = False) -> PreparedRun:
    """Return everything the report needs of one run, computed once (vectorised over requests and tokens)."""
    run = load_run(run_dir, strict=strict)
    manifest = _load_manifest(run)
    view = request_view(run)
    metrics = view.counted_metrics()  # a client-only run: the requests that ended 'ok'
    info = run_info(run, view)
    tbt_token = metrics.all_tbt_per_token_s() if view.observed("tbt_per_token_s") else np.empty(0)
    tbt_chunk = metrics.all_tbt_per_chunk_s()
    stalls = find_stalls(metrics, run, threshold_s=stall_threshold_s, median_multiple=stall_median_multiple)
    steps = step_arrays(run.steps, run.worker_regions)
    iterations = iteration_breakdown(steps)
    measured = ~np.isnan(steps.gpu_ns)
    gpu_source = ("none" if steps.gpu_ns.size == 0 else
                  "CUDA events" if measured.all() else "host wait" if not measured.any() else "mixed")
    fluidity = fluidity_text = None
    if tbt_slo_s is not None:
        from servescope.analysis.fluidity import fluidity_for_requests, miss_rate_percentile, \
            service_level_miss_rate

        fluidity = fluidity_for_requests(metrics, tbt_deadline_s=tbt_slo_s, ttft_deadline_s=ttft_slo_s)
        service = service_level_miss_rate(fluidity["deadline_misses"], fluidity["deadlines"])
        p99 = miss_rate_percentile(fluidity["deadline_misses"], fluidity["deadlines"], 99)
        fluidity_text = (f"service-level miss rate {service:.4f}; P99 request miss rate {p99:.3f} "
                         f"({'meets' if p99 <= 0.1 else 'misses'} the capacity SLO P99 miss rate <= 0.1)")
    samples = {"tbt_per_token_s": tbt_token, "tbt_per_chunk_s": tbt_chunk}
    engine_only = frozenset(name for name in SUMMARY_METRICS if not view.observed(name))
    summary = {name: summarize(() if name in engine_only else samples[name] if name in samples
                               else getattr(metrics, name))
               for name in SUMMARY_METRICS}
    beside = (ClientBesideEngine(run, view.client, view.metrics)
              if view.source == Observer.ENGINE and view.client is not None else None)
    figure_data = ReportRun(
        label=label, color=color, metrics=metrics, tbt_per_token_s=tbt_token, tbt_per_chunk_s=tbt_chunk,
        stalls=stalls, stall_rule=stall_rule(stall_threshold_s, stall_median_multiple), steps=run.steps,
        worker_regions=run.worker_regions, frontend_steps=run.frontend_steps, fluidity=fluidity,
        observer=view.source or Observer.ENGINE, beside=beside, include_request_ids=include_request_ids,
    )
    warnings = list(run.warnings)
    audited = audited_view(view, manifest, label=label)
    del run  # the per-token tables: metrics hold what is needed from here on
    release_unused_memory()
    return PreparedRun(figures=figure_data, path=Path(run_dir), manifest=manifest, info=info, summary=summary,
                       iterations=iterations, gpu_time_source=gpu_source, audited=audited,
                       fluidity_text=fluidity_text, source=view.source, observers=view.observers,
                       engine_only=engine_only, warnings=warnings)


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: where it goes, its title, how to draw it and how to read it."""

    name: str
    section: str
    title: str
    draw: Callable[[Sequence[ReportRun]], object]
    how_to_read: str


def figure_specs(tbt_slo_s: float | None, *, client_beside_engine: bool = False,
                 engine_steps: bool = True, ranks: bool = False) -> list[FigureSpec]:
    """Return the report's figures in page order: fluidity only with a TBT SLO, the client beside the engine
    only when a run has both records, the iteration timeline only when a run has engine steps, the rank
    figures only when a run has several worker ranks (ranks)."""
    specs = [
        FigureSpec("ttft-cdf", "latency", "Time to first token", lambda runs: latency_cdf_figure(runs, "ttft_s"),
                   "Left: the fraction of requests whose TTFT is at most x (markers: P50, P90, P99). Right: the "
                   "same curve as the fraction at or above x on a log scale, which makes the tail readable: "
                   "the P99 is where a curve crosses the 0.01 line. A curve to the left is faster."),
        FigureSpec("tbt-cdf", "latency", "Time between tokens, per token and per chunk", tbt_cdf_figure,
                   "Every gap between consecutive output tokens of every request. Per token: tokens emitted by "
                   "one engine step (speculative decoding) count as gaps of 0 after the first, so the curve "
                   "jumps at 0. Per chunk: one gap per engine step that emitted tokens for the request, what a "
                   "streaming client sees. Stalls are the far right of the tail panel."),
        FigureSpec("e2e-cdf", "latency", "End-to-end latency", lambda runs: latency_cdf_figure(runs, "e2e_s"),
                   "Arrival to last token, per request. It grows with the output length, so compare runs "
                   "with the same workload only."),
        FigureSpec("client-vs-engine", "latency", "The client's view beside the engine's", client_engine_figure,
                   "For runs with both records (servescope bench against a recorded server), the same requests "
                   "as servescope's client saw them (dashed: request sent to chunk received) and as the engine "
                   "recorded them (solid: front-end arrival to emission): TTFT, TBT per chunk and end-to-end "
                   "latency. The gap between a run's two curves is time outside the engine's own stamps: HTTP, "
                   "parsing and tokenization before the arrival stamp, output processing, SSE and network after "
                   "the emission. Bottom right: that difference per request (client TTFT - engine TTFT) and its "
                   "median share of the client's TTFT."),
        FigureSpec("tpot", "latency", "TPOT at P50 and P99, and what it hides", tpot_figure,
                   "TPOT is a request's mean gap, T_d / (n - 1). Left: its P50/P90/P99 over requests beside "
                   "the P50/P90/P99 of every single gap (TBT per token): a TPOT P99 well below the TBT P99 "
                   "means averaging hid stalls. Right: each request's TPOT against its own longest gap; points "
                   "far above the diagonal are requests that stalled although their TPOT looks fine."),
        FigureSpec("normalization", "latency", "Normalized latency beside the scheduling delay", normalization_figure,
                   "Normalized latency divides the whole request time by its output tokens, so a long wait in "
                   "the queue spread over many tokens looks small. The middle panel shows the raw scheduling "
                   "delay it folds in; the right panel puts both side by side per request: points high up and "
                   "to the left waited long but look cheap after normalization."),
        FigureSpec("ttft-vs-prompt", "latency", "TTFT against prompt length", ttft_vs_prompt_figure,
                   "One point per request; the line is the median per prompt-length bin. TTFT includes the "
                   "queueing before the first schedule, the prefill panel (first scheduled to first token) does "
                   "not: prefill should grow smoothly with the prompt; scatter above it is queueing, chunked "
                   "prefill waiting for token budget, or preemption."),
        FigureSpec("token-timelines", "stalls", "Token generation of the requests with the worst stalls",
                   token_timelines_figure,
                   "Output tokens emitted (y) against time since the request arrived (x) for the requests with "
                   "the longest stalls. A steady staircase is smooth decoding; the flat start is the TTFT; a "
                   "long flat step is a stall, highlighted in the color of its cause (legend below)."),
        FigureSpec("stall-causes", "stalls", "Stall time by cause", stall_causes_figure,
                   "Total stall time (sum of the stalled gaps) and its share per cause. The cause is the first "
                   "that holds for the engine steps inside the gap: the request was preempted; the GPU was "
                   "idle for at least half the gap (CPU overhead); prompt tokens were co-scheduled (prefill "
                   "interference); a speculative draft was rejected; else a long forward pass."),
        FigureSpec("iteration-timeline", "iterations", "Iteration timeline", iteration_timeline_figure,
                   "A window of engine steps around the longest stall (shaded in its cause's color), else the "
                   "longest step. EngineCore CPU phases per step: "
                   f"{', '.join(StepPhase.DISPLAY[p] for p in StepPhase.ALL)}. Below: the front end's output "
                   "processing, each worker's timed regions on the host, and their GPU time where CUDA timers "
                   "measured it. Gaps in the wait row with the GPU row empty are CPU overhead."),
    ]
    if ranks:
        specs += [
            FigureSpec("rank-timeline", "iterations", "Ranks: a few steps around the largest rank skew",
                       rank_timeline_figure,
                       "For each run whose steps ran on several worker ranks (tensor or pipeline parallelism): one "
                       "lane per rank, each bar a rank's span of one step (its first region's start to its last "
                       "region's end; on the GPU clock where every rank has globaltimer stamps, else the host "
                       "clock), the lane below a rank its collectives (recorded with --parts default,collectives, "
                       "outside CUDA graphs). The black segment above marks each step's rank skew, from the "
                       "fastest to the slowest rank's end: the step is as slow as that last rank, the others wait "
                       "in their next collective or for the next step."),
            FigureSpec("rank-skew", "iterations", "Rank skew and communication per step", rank_skew_figure,
                       "Left: the distribution over steps of the rank skew (solid: slowest minus fastest rank's "
                       "end; dashed: the same for their starts, how late a rank began the step). Middle: "
                       "communication per step (solid: the collectives of the rank that waited least, the "
                       "transfer itself) and the time the first-arriving rank waited inside collectives for the "
                       "others (dashed). Right: in how many steps each rank ended last; one rank that is always "
                       "last holds every step back (more work, a slower device, a busier host core)."),
        ]
    left_out = ({"client-vs-engine"} if not client_beside_engine else set()) | (
        {"iteration-timeline"} if not engine_steps else set())
    specs = [spec for spec in specs if spec.name not in left_out]
    if tbt_slo_s is not None:
        specs.append(FigureSpec(
            "fluidity", "fluidity", "Fluidity index at percentiles",
            lambda runs: fluidity_figure(runs, tbt_slo_s),
            "Each output token is due one TBT deadline after the previous one (the first after the TTFT "
            "deadline); early tokens bank slack, a stall misses about gap / deadline periods. Fluidity = 1 - "
            "missed / due. Left: fluidity of the worst 1%, 5%, ... of requests (the capacity SLO asks >= 0.9 "
            "at P1, i.e. for 99% of requests). Right: the distribution over requests."))
    return specs


def render_figure(fig) -> tuple[bytes, int, int]:
    """Return the figure as PNG bytes and its size in pixels."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    width, height = fig.canvas.get_width_height()
    scale = DPI / fig.dpi
    return buffer.getvalue(), int(round(width * scale)), int(round(height * scale))


# --------------------------------------------------------------------------- page sections


def _runs_section(runs: Sequence[PreparedRun]) -> h.Markup:
    rows = []
    for r in runs:
        engine = r.manifest.get("engine") or {}
        model = r.manifest.get("model") or {}
        served = r.manifest.get("bench") or {}
        info = r.info
        outside = r.source == Observer.CLIENT
        engine_text = " ".join(str(x) for x in (engine.get("name"), engine.get("version")) if x)
        model_text = model.get("architecture") or model.get("path")
        rows.append([
            h.run_name(r.figures.label, r.figures.color),
            h.tag("span", str(r.path), class_="mono"),
            r.observed_by,
            engine_text or ("not visible from the client" if outside else "not recorded"),
            model_text or (f"served as {served['model']}" if served.get("model") else "not recorded"),
            h.number(info["requests"]), h.number(info["finished_requests"]), h.number(info["output_tokens"]),
            h.number(info["duration_s"]), h.number(info["requests_per_s"]), h.number(info["output_tokens_per_s"]),
        ])
    header = ["run", "path", "recorded by", "engine", "model", "requests", "finished", "output tokens",
              "duration (s)", "requests/s", "output tokens/s"]
    parts = [h.tag("div", h.table(header, rows, class_="numbers"), class_="scroll")]
    notes = [f"{r.figures.label}: {r.info['arrival_from_queue']} requests have no front-end arrival event; their "
             "arrival is the scheduler's 'queued' event" for r in runs if r.info["arrival_from_queue"]]
    for r in runs:
        status = r.info.get("client_status") or {}
        if r.source == Observer.CLIENT:
            notes.append(f"{r.figures.label}: client-only run: every number is what servescope's client saw "
                         f"(sent, chunks received); finished = requests that ended 'ok'. Client statuses: "
                         + ", ".join(f"{n} {k}" for k, n in status.items() if n)
                         + (f"; the {r.info['excluded_requests']} not 'ok' are left out of every figure and number "
                            "(servescope analyze --json lists them with their errors)" if r.info["excluded_requests"]
                            else ""))
        elif status and any(n for k, n in status.items() if k != "ok"):
            notes.append(f"{r.figures.label}: the client's requests ended " + ", ".join(f"{n} {k}" for k, n in
                                                                                     status.items() if n))
    if notes:
        parts.append(h.bullet_list(notes))
    for r in runs:
        if r.warnings:
            parts.append(h.tag("div", h.join([
                h.tag("b", f"{r.figures.label}: {len(r.warnings)} problem(s) reading this run; its numbers come "
                           "from what could be read"),
                h.bullet_list(r.warnings)]), class_="warning"))
    intro = "Each run has one color in every figure. Times are engine-side (CLOCK_MONOTONIC of the host)"
    if any(r.source == Observer.CLIENT for r in runs):
        intro += ", except for client-only runs: there they are the client's (request sent, chunks received)"
    return h.section("runs", "Runs", parts, intro + ".")


def _summary_section(runs: Sequence[PreparedRun]) -> h.Markup:
    with_p999 = any(s["count"] >= P999_MIN_COUNT for r in runs for s in r.summary.values())
    stats = ["p50", "p90", "p99"] + (["p999"] if with_p999 else []) + ["max", "mean"]
    header = ["metric", "run", "count", *[s.upper().replace("P999", "P99.9") for s in stats]]
    rows, classes = [], []
    for name in SUMMARY_METRICS:
        label, unit, scale = TEXT_ROWS[name]
        for k, r in enumerate(runs):
            s = r.summary[name]
            first = h.tag("b", f"{label} ({unit})") if k == 0 else ""
            if name in r.engine_only:
                cells = ["engine only"] + ["—"] * (len(stats) - 1)
                rows.append([first, h.run_name(r.figures.label, r.figures.color), "—", *cells])
            else:
                cells = [h.number(s.get(stat), scale) if s.get(stat) is not None else "—" for stat in stats]
                rows.append([first, h.run_name(r.figures.label, r.figures.color), h.number(s["count"]), *cells])
            classes.append("first" if k == 0 else "")
    intro = ("Every metric is a distribution: P50, P90, P99 (P99.9 from 10,000 samples) with the number of samples "
             "behind it. Percentiles interpolate linearly between order statistics. TBT rows count gaps, the other "
             "rows count requests.")
    if any(r.source == Observer.CLIENT for r in runs):
        intro += (" A client-only run's numbers are the client's (requests that ended 'ok'); 'engine only' marks "
                  "what only the engine can know (scheduling delay, prefill, TTST, TBT per token, preemptions): "
                  "null, never estimated.")
    return h.section("summary", "Key numbers", [h.tag("div", h.table(header, rows, class_="numbers",
                                                                      row_classes=classes), class_="scroll")],
                     intro)


def _stalls_table(runs: Sequence[PreparedRun]) -> h.Markup:
    rows = []
    for r in runs:
        stalls = r.figures.stalls
        if not len(stalls):
            continue
        table = stalls.to_table()
        evidence = table["evidence"].to_pylist()
        for k in np.argsort(-stalls.gap_s, kind="stable")[:WORST_STALLS_LISTED]:
            rows.append([h.run_name(r.figures.label, r.figures.color),
                         h.tag("span", r.figures.request_name(stalls.request_index[k], width=None), class_="mono"),
                         h.number(int(stalls.token_index[k])), h.number(stalls.gap_s[k], 1e3),
                         stalls.cause[k], evidence[k]])
    if not rows:
        return h.paragraph("No stall was found with the rule above.")
    return h.tag("div", h.table(["run", "request", "token", "gap (ms)", "cause", "evidence"], rows), class_="scroll")


def _iterations_table(runs: Sequence[PreparedRun]) -> h.Markup:
    rows = []
    for r in runs:
        it = r.iterations
        total = float(np.sum(it["iteration"])) if it["iteration"].size else 0.0
        cells = [h.run_name(r.figures.label, r.figures.color), h.number(int(it["iteration"].size))]
        for part in ("iteration", "gpu", "cpu_overhead", "idle"):
            s = summarize(it[part])
            cells += [h.number(s["p50"], 1e3), h.number(s["p99"], 1e3)]
        share = float(np.sum(it["cpu_overhead"])) / total if total > 0 else math.nan
        cells += [h.number(share * 100 if math.isfinite(share) else None), r.gpu_time_source]
        rows.append(cells)
    header = ["run", "steps", "step P50 (ms)", "step P99 (ms)", "GPU P50", "GPU P99", "CPU overhead P50",
              "CPU overhead P99", "idle P50", "idle P99", "CPU overhead (% of step time)", "GPU time from"]
    return h.tag("div", h.table(header, rows, class_="numbers"), class_="scroll")


def _checklist_section(runs: Sequence[PreparedRun], tbt_slo_s: float | None,
                       ttft_slo_s: float | None) -> h.Markup:
    slos = {k: v for k, v in (("ttft_s", ttft_slo_s), ("tbt_s", tbt_slo_s)) if v is not None}
    results = audit([r.audited for r in runs], slos=slos or None)
    rows = [[h.number(c.item), c.title, h.status_badge(c.status), h.bullet_list(c.evidence)] for c in results]
    intro = ("The 8-item checklist of 'On Evaluating Performance of LLM Inference Systems', applied to these runs"
             + (" (the first run is the baseline, the second the treatment)" if len(runs) == 2 else "")
             + ". Warn means something is missing or worth a second look; fail means the comparison as it "
               "stands can mislead.")
    return h.section("checklist", "Evaluation checklist", [h.table(["#", "item", "status", "evidence"], rows)],
                     intro)


def _config_section(runs: Sequence[PreparedRun]) -> h.Markup:
    parts = []
    multi = len(runs) > 1
    header = ["", *[h.run_name(r.figures.label, r.figures.color) for r in runs]]
    for title, key in (("Engine parameters", "parameters"), ("Model", "model"), ("Host", "host")):
        values = [((r.manifest.get("engine") or {}).get("parameters") if key == "parameters"
                   else r.manifest.get(key)) or {} for r in runs]
        names = sorted({name for v in values if isinstance(v, dict) for name in v})
        if not names:
            parts += [h.tag("h3", title), h.paragraph("not recorded")]
            continue
        rows, classes = [], []
        for name in names:
            cells = [h.value_text(v.get(name)) if isinstance(v, dict) and name in v else "—" for v in values]
            rows.append([h.tag("span", name, class_="mono"), *cells])
            classes.append("diff" if multi and len(set(cells)) > 1 else "")
        parts += [h.tag("h3", title), h.tag("div", h.table(header, rows, row_classes=classes), class_="scroll")]
    versions = [[h.tag("span", "engine", class_="mono"),
                 *[" ".join(str(x) for x in ((r.manifest.get("engine") or {}).get("name"),
                                             (r.manifest.get("engine") or {}).get("version")) if x) or "—"
                   for r in runs]],
                [h.tag("span", "servescope", class_="mono"),
                 *[str((r.manifest.get("servescope") or {}).get("version", "—")) for r in runs]],
                [h.tag("span", "run id", class_="mono"), *[str(r.manifest.get("run_id", "—")) for r in runs]],
                [h.tag("span", "command", class_="mono"),
                 *[" ".join(map(str, (r.manifest.get("command") or {}).get("argv", []))) or "—" for r in runs]],
                [h.tag("span", "workload", class_="mono"),
                 *[h.value_text(r.manifest["workload"]) if "workload" in r.manifest else "—" for r in runs]]]
    parts = [h.tag("h3", "Versions and command"), h.tag("div", h.table(header, versions), class_="scroll")] + parts
    parts += [h.tag("h3", "Recording health"), _health_table(runs, header)]
    intro = "From each run's manifest." + (" Rows that differ between runs are highlighted." if multi else "")
    return h.section("configuration", "Configuration", parts, intro)


def _health_table(runs: Sequence[PreparedRun], header: list) -> h.Markup:
    fields = (("rows_dropped", "rows not recorded (counted when dropped)"),
              ("regions_without_gpu_time", "regions whose GPU time was lost (still on the GPU at a process's end)"),
              ("held_steps_lost", "engine steps held, not written, when their process was killed (held updates)"),
              ("internal_errors", "internal errors inside servescope"),
              ("processes_killed", "processes that ended without closing their recorder"),
              ("processes_running", "processes still running when the run was compacted"))
    rows, classes = [], []
    for key, label in fields:
        values = [(r.manifest.get("health") or {}).get(key) for r in runs]
        cells = ["not recorded" if v is None else "none" if v == [] else h.value_text(v) for v in values]
        rows.append([label, *cells])
        bad = any(v not in (None, 0, [], "") for v in values) and key != "processes_killed"
        classes.append("bad" if bad else "")
    note = h.paragraph(h.tag("span", "Every row a process appended is kept however the process ended (vLLM kills "
                                     "its EngineCore at shutdown): what a kill costs is listed above, exactly.",
                             class_="note"))
    return h.join([h.tag("div", h.table(header, rows, row_classes=classes), class_="scroll"), note])


def _client_engine_table(runs: Sequence[PreparedRun]) -> h.Markup | None:
    """Return the side-by-side numbers (ms) of each run with both records, None when no run has both."""
    rows = []
    for r in runs:
        beside = r.figures.beside
        if beside is None or not beside.compared.size:
            continue
        summary = beside.summary()
        for name, label in (("ttft_s", "TTFT"), ("tbt_per_chunk_s", "TBT per chunk"), ("e2e_s", "end-to-end")):
            for side in ("client", "engine", "difference"):
                stats = summary[name][side]
                rows.append([h.run_name(r.figures.label, r.figures.color), label, side,
                             *[h.number(stats.get(k), 1e3) if stats.get(k) is not None else "—"
                               for k in ("p50", "p90", "p99", "mean")]])
        share = summary["network_front_end_share_of_ttft"]
        rows.append([h.run_name(r.figures.label, r.figures.color), "outside the engine", "% of client TTFT",
                     *[h.number(share.get(k), 100) if share.get(k) is not None else "—"
                       for k in ("p50", "p90", "p99", "mean")]])
        for name, label in (("before_arrival_s", "before the arrival stamp"),
                            ("after_first_emission_s", "after the first emission")):
            stats = summary.get(name)
            if stats:
                rows.append([h.run_name(r.figures.label, r.figures.color), label, "ms",
                             *[h.number(stats.get(k), 1e3) if stats.get(k) is not None else "—"
                               for k in ("p50", "p90", "p99", "mean")]])
    if not rows:
        return None
    table = h.table(["run", "metric", "side", "P50 (ms)", "P90", "P99", "mean"], rows, class_="numbers")
    note = ("Same requests on both sides (joined on the request id, ended 'ok' for the client). Difference: per "
            "request for TTFT and end-to-end, of the two distributions for TBT per chunk. Before / after: only "
            "where client and engine share the host's clock.")
    return h.join([h.tag("h3", "Client beside engine"), h.paragraph(note),
                   h.tag("div", table, class_="scroll")])


def _conventions_section(runs: Sequence[PreparedRun] = ()) -> h.Markup:
    rows = [[h.tag("span", key, class_="mono"), CONVENTIONS[key]] for key in CONVENTIONS_SHOWN]
    if any(r.source == Observer.CLIENT for r in runs):
        rows += [[h.tag("span", f"client-only: {key}", class_="mono"), text] for key, text in CLIENT_CONVENTIONS.items()]
    return h.section("conventions", "Conventions", [h.table(["", "definition"], rows)],
                     "How every number on this page was computed (docs/metrics.md, docs/report.md).")


# --------------------------------------------------------------------------- the report


SECTIONS = (
    ("latency", "Latency distributions",
     "Full distributions, never a lone mean: CDFs with P50, P90 and P99 marked, tails on a log scale."),
    ("stalls", "Generation stalls",
     "A stall is a long gap between two output tokens of one request, attributed to what the engine did "
     "during the gap."),
    ("iterations", "Engine iterations",
     "Per engine step: iteration = previous step's emission to this step's emission = GPU + CPU overhead + "
     "idle (servescope compare's breakdown). Times in ms."),
    ("fluidity", "Fluidity", ""),
)


def write_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 tbt_slo_s: float | None = None, ttft_slo_s: float | None = None,
                 stall_threshold_s: float | None = None, stall_median_multiple: float | None = None,
                 show_progress: bool | None = None, include_request_ids: bool = False, strict: bool = False,
                 run_warnings: dict[str, list[str]] | None = None) -> Path:
    """Write index.html and figures/*.png for the runs (overlaid, one color each) into out_dir; return index.html.

    Stalls: gaps above stall_threshold_s (default: the TBT SLO) and/or stall_median_multiple x
    the request's median gap (default 3 when neither is given). Raises rundir.RunDirError,
    naming the path, for a directory that is not a readable run (with strict, also a damaged one).
    Each run's problems are shown on the page and, when run_warnings is given, stored under its
    path. Requests are named by position unless include_request_ids (ids carry the client's).
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("no run directory given")
    if ttft_slo_s is not None and tbt_slo_s is None:
        raise ValueError("ttft_slo_s is the fluidity index's prefill deadline: give tbt_slo_s too")
    for path in run_dirs:
        rundir.check_run_dir(path)
    if stall_threshold_s is None and stall_median_multiple is None:
        stall_threshold_s = tbt_slo_s
        stall_median_multiple = None if tbt_slo_s is not None else DEFAULT_STALL_MEDIAN_MULTIPLE
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    specs = figure_specs(tbt_slo_s, client_beside_engine=True, ranks=True)  # every figure that may be drawn
    labels = run_labels(run_dirs)
    with _progress(len(run_dirs) + len(specs) + 1, show_progress) as advance:
        runs = []
        for k, (path, label) in enumerate(zip(run_dirs, labels)):
            advance(f"loading {label}")
            runs.append(prepare_run(path, label, RUN_COLORS[k % len(RUN_COLORS)], tbt_slo_s=tbt_slo_s,
                                    ttft_slo_s=ttft_slo_s, stall_threshold_s=stall_threshold_s,
                                    stall_median_multiple=stall_median_multiple,
                                    include_request_ids=include_request_ids, strict=strict))
            if run_warnings is not None:
                run_warnings[str(path)] = list(runs[-1].warnings)
        figures: dict[str, list[h.EmbeddedFigure]] = {}
        drawn = figure_specs(tbt_slo_s, engine_steps=any(r.figures.steps.num_rows for r in runs),
                             ranks=any(several_ranks(r.figures) for r in runs),
                             client_beside_engine=any(r.figures.beside is not None and r.figures.beside.compared.size
                                                      for r in runs))
        for spec in specs:
            if spec.name not in {d.name for d in drawn}:
                advance(f"leaving out {spec.title} (nothing to draw for these runs)")
        for number, spec in enumerate(drawn, start=1):
            advance(f"drawing {spec.title}")
            fig = spec.draw([r.figures for r in runs])
            if not fig.get_suptitle():
                fig.suptitle(spec.title, fontsize=12, x=0.01, ha="left")
            png, width, height = render_figure(fig)
            file_name = f"figures/{number:02d}-{spec.name}.png"
            (out / file_name).write_bytes(png)
            figures.setdefault(spec.section, []).append(
                h.EmbeddedFigure(spec.name, spec.title, png, file_name, spec.how_to_read, width, height))
        advance("writing index.html")
        index = out / "index.html"
        index.write_text(_page(runs, figures, tbt_slo_s, ttft_slo_s), encoding="utf-8")
    return index


def _page(runs: Sequence[PreparedRun], figures: dict[str, list[h.EmbeddedFigure]], tbt_slo_s: float | None,
          ttft_slo_s: float | None) -> str:
    sections = [_runs_section(runs), _summary_section(runs)]
    nav = [("runs", "Runs"), ("summary", "Key numbers")]
    for anchor, title, intro in SECTIONS:
        parts = [h.figure(f) for f in figures.get(anchor, [])]
        if anchor == "stalls":
            rules = sorted({r.figures.stall_rule for r in runs})
            intro = f"{intro} Rule: {'; '.join(rules)}."
            parts += [h.tag("h3", f"The {WORST_STALLS_LISTED} longest stalls per run"), _stalls_table(runs)]
        if anchor == "latency":
            table = _client_engine_table(runs)
            parts += [table] if table is not None else []
        if anchor == "iterations":
            parts = [_iterations_table(runs)] + parts
            if not any(r.figures.steps.num_rows for r in runs):
                parts = [h.paragraph("No engine steps recorded: client-only runs see no engine iteration.")]
        if anchor == "fluidity":
            if tbt_slo_s is None:
                parts = [h.paragraph("Give a TBT SLO (servescope report --tbt-slo SECONDS) to compute the "
                                     "deadline-based fluidity index.")]
            else:
                deadline = (f"TTFT deadline {ttft_slo_s * 1e3:g} ms" if ttft_slo_s is not None
                            else "no TTFT deadline (the first token is not judged)")
                parts.append(h.bullet_list(f"{r.figures.label}: {r.fluidity_text}" for r in runs))
                intro = f"TBT deadline {tbt_slo_s * 1e3:g} ms, {deadline}."
        sections.append(h.section(anchor, title, parts, intro))
        nav.append((anchor, title))
    sections += [_checklist_section(runs, tbt_slo_s, ttft_slo_s), _config_section(runs), _conventions_section(runs)]
    nav += [("checklist", "Checklist"), ("configuration", "Configuration"), ("conventions", "Conventions")]
    title = "servescope report: " + ", ".join(r.figures.label for r in runs)
    subtitle = h.join([h.run_name(r.figures.label, r.figures.color) for r in runs], " &nbsp; ")
    subtitle = h.join([subtitle, h.Markup(" &nbsp;·&nbsp; "),
                       f"{sum(r.info['requests'] for r in runs):,} requests, "
                       f"{sum(r.info['output_tokens'] for r in runs):,} output tokens"])
    footer = (f"Generated by servescope {__version__}. Figures are also in figures/*.png. "
              "Engine-side times from the tracer, client-side times from servescope's client (marked); "
              "definitions in docs/metrics.md.")
    return h.page(title, subtitle, nav, sections, footer)


class _progress:
    """Context manager yielding advance(description): a rich progress bar on a terminal when there is much to do."""

    def __init__(self, total: int, show: bool | None):
        if show is None:
            show = total >= PROGRESS_MIN_TASKS and sys.stderr.isatty()
        self.total, self.show, self.bar, self.task, self.started = total, show, None, None, False

    def __enter__(self) -> Callable[[str], None]:
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("servescope report"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.total)
        return self._advance

    def _advance(self, description: str) -> None:
        if self.bar is None:
            return
        if self.started:
            self.bar.advance(self.task)
        self.started = True
        self.bar.update(self.task, description=description)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)
            self.bar.__exit__(*exc)
