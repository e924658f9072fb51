"""The analysis of one run as JSON (docs/json-contract.md), and as text for ``servescope analyze RUN``.

``analyze_run`` loads the run directory, computes every request's metrics
(request_metrics.py) and their distributions (distributions.py), and returns a
JSON-ready dict: ``run`` (size, duration, throughput), ``conventions`` (how each
number was computed), ``summary`` (a distribution per metric) and ``requests``
(one object per request, by arrival). Undefined values are ``None`` (JSON null),
never NaN. ``summary_text`` renders it as a compact table.
"""

from __future__ import annotations

import math
import os

import numpy as np

from servescope.analysis.client_vs_engine import ClientBesideEngine, client_vs_engine_text
from servescope.analysis.distributions import P999_MIN_COUNT, summarize
from servescope.analysis.request_metrics import MISSING_NS, NS_PER_S
from servescope.analysis.request_view import ENGINE_ONLY_FIELDS, RequestView, request_view
from servescope.analysis.slo import run_duration_s
from servescope.run.data import RunData, load_run, release_unused_memory
from servescope.run.names import Observer

# Per-request metrics summarised over requests, in report order.
PER_REQUEST_METRICS = (
    "ttft_s",
    "scheduling_delay_s",
    "prefill_s",
    "decode_s",
    "e2e_s",
    "ttst_s",
    "tpot_s",
    "normalized_latency_s",
    "preemptions",
)
# Summarised over every token gap (per token) and every chunk gap (per chunk).
TBT_METRICS = ("tbt_per_token_s", "tbt_per_chunk_s")
# Per-request arrays of fluidity.fluidity_for_requests that are summarised (all are listed per request).
FLUIDITY_METRICS = ("fluidity_index", "deadline_misses", "deadlines")

CONVENTIONS = {
    "clock": "engine host CLOCK_MONOTONIC (time.monotonic_ns), one clock for every process; "
             "engine-side times: front-end arrival, EngineCore scheduling and token emission",
    "time_unit": "seconds (*_s); in the text table, milliseconds",
    "arrival": "a = the front end's 'arrival' event; where it was not recorded, the scheduler's "
               "'queued' event (counted in run.arrival_from_queue)",
    "scheduling_delay": "T_s = s - a, s = first 'scheduled' event",
    "prefill": "T_p = t_0 - s (includes chunked-prefill iterations and preemptions before t_0)",
    "decode": "T_d = t_{n-1} - t_0",
    "e2e": "t_{n-1} - a (TTLT)",
    "ttst": "t_1 - t_0; null when fewer than 2 output tokens",
    "tpot": "T_d / (n - 1), vLLM's convention (the paper writes T_d / N_d); null when n < 2",
    "normalized_latency": "(T_s + T_p + T_d) / N_d = e2e / N_d; shown beside T_s and TBT, which it hides",
    "tbt_per_token": "g_i = t_i - t_{i-1}, one per output token after the first; tokens emitted by "
                     "the same engine step get 0 after the first; summary over all tokens of all requests",
    "tbt_per_chunk": "one gap per emission step that carried >= 1 token for the request (a streaming "
                     "client's inter-token latency); summary over all chunks of all requests",
    "preempted_s": "from each 'preempted' event to the request's next 'scheduled' (else 'finished'); "
                   "null when a preemption was still open at the end of the recording",
    "percentiles": "linear interpolation between order statistics (numpy 'linear', Hyndman-Fan type 7); "
                   f"undefined (null) values excluded, count = samples used; p999 only when count >= {P999_MIN_COUNT}",
    "throughput": "duration_s = first arrival to last token or 'finished' event; output_tokens_per_s = "
                  "output tokens / duration_s; requests_per_s = finished requests / duration_s",
    "missing": "null where a metric is undefined for a request (no output token, fewer than 2 "
               "tokens, event not recorded)",
}


# What changes when the client is the observer (a client-only run): the same keys, re-stated, and three more.
CLIENT_CONVENTIONS = {
    "clock": "client host CLOCK_MONOTONIC (time.monotonic_ns) of servescope's streaming client; every number "
             "comes from the client (source 'client'): nothing inside the server was recorded",
    "arrival": "a = the client sent the request (client_requests.send_ns)",
    "scheduling_delay": "null: the scheduler's first 'scheduled' is inside the engine",
    "prefill": "null: needs the first 'scheduled' (inside the engine)",
    "decode": "T_d = last token-carrying chunk received - first one",
    "e2e": "last token-carrying chunk received - a (the stream's closing events not counted)",
    "ttst": "null: token 1 may sit inside the first chunk, and the time of a token inside a chunk is the engine's",
    "tpot": "T_d / (n - 1), n = tokens received (the chunks' token_ids, else one per non-empty text chunk); "
            "null when n < 2",
    "normalized_latency": "e2e / N_d (T_s, which it would hide, is not visible from the client)",
    "tbt_per_token": "null: a chunk can carry tokens of several engine steps, merged when the client or the "
                     "server lags; only the engine knows when each was emitted",
    "tbt_per_chunk": "one gap per token-carrying chunk after the first, as received (what vllm bench serve "
                     "reports as ITL); summary over all chunks of the requests that ended 'ok'",
    "preempted_s": "null: preemptions are scheduler events inside the engine",
    "throughput": "over the requests that ended 'ok': duration_s = first send to the last token or end; "
                  "output_tokens_per_s = their output tokens / duration_s; requests_per_s = their count / duration_s",
    "client_status": "requests that did not end 'ok' (error, timeout, cancelled) are listed in requests[] with "
                     "status and error and left out of every summary, fluidity aggregate and throughput; "
                     "run.client_status counts each status, run.excluded_requests the requests left out",
    "engine_only": "null from the client, never estimated: " + ", ".join(ENGINE_ONLY_FIELDS),
    "fluidity": "gaps from the client: TTFT, then per token with a chunk's tokens arriving together "
                "(gap 0 after the first), as a reader of the stream sees them",
}


def analyze_run(run_dir: str | os.PathLike, *, tbt_slo_s: float | None = None,
                ttft_slo_s: float | None = None, include_requests: bool = True,
                prefill_model=None, ttft_slack_s: float = 0.0, observer: str | None = None,
                strict: bool = False) -> dict:
    """Return the run's JSON contract (run, conventions, sources, summary, requests); times in seconds.

    The requests are the engine's record when the run has one, else the client's (a client-only
    run); observer ('engine' or 'client') asks for one (request_view.py). A run with both records
    also gets "client_vs_engine" (client_vs_engine.py) and each request its client's view.
    With tbt_slo_s (the decode deadline D_d), every request also gets its fluidity
    index, deadline misses and deadlines (fluidity.py); ttft_slo_s is the first
    token's deadline (None: the TTFT gap is not judged, fluidity.py's convention).
    prefill_model (fluidity.PrefillModel) makes each request's first-token deadline its predicted
    isolated prefill time plus ttft_slack_s, as metrics.md defines D_p (ttft_slo_s, when given, wins).
    include_requests=False leaves out "requests" (one Python float per token: what
    costs time and memory on a large run) when only the summary is wanted.
    run.warnings lists every problem found reading the run (load_run's); strict raises
    RunDirError at the first instead.
    """
    if (ttft_slo_s is not None or prefill_model is not None) and tbt_slo_s is None:
        raise ValueError("a TTFT deadline or prefill model is part of the fluidity index: give tbt_slo_s too")
    from servescope.analysis.iterations import iteration_summary, speculative_summary
    from servescope.analysis.rank_skew import rank_summary
    from servescope.analysis.speculative_steps import speculative_step_summary

    run = load_run(run_dir, strict=strict)
    view = request_view(run, observer)
    metrics = view.metrics
    info = run_info(run, view)
    iterations, speculative, ranks = iteration_summary(run), speculative_summary(run), rank_summary(run)
    beside = (ClientBesideEngine(run, view.client, metrics)
              if view.source == Observer.ENGINE and view.client is not None else None)
    if speculative is not None:
        speculative["steps"] = speculative_step_summary(run)
    del run  # the tables: metrics hold everything needed from here on
    release_unused_memory()
    fluidity = None
    if tbt_slo_s is not None:
        from servescope.analysis.fluidity import fluidity_for_requests, service_level_miss_rate

        fluidity = fluidity_for_requests(metrics, tbt_deadline_s=tbt_slo_s, ttft_deadline_s=ttft_slo_s,
                                         prefill_model=prefill_model, ttft_slack_s=ttft_slack_s)
    tbt = {"tbt_per_token_s": metrics.all_tbt_per_token_s(),
           "tbt_per_chunk_s": metrics.all_tbt_per_chunk_s()}
    counted = view.counted_metrics()
    counted_tbt = tbt if counted is metrics else {"tbt_per_token_s": counted.all_tbt_per_token_s(),
                                                  "tbt_per_chunk_s": counted.all_tbt_per_chunk_s()}

    def summarized(name: str, values) -> dict:
        return summarize(values if view.observed(name) else ())

    summary = {name: summarized(name, getattr(counted, name)) for name in PER_REQUEST_METRICS}
    summary.update({name: summarized(name, gaps) for name, gaps in counted_tbt.items()})
    result = {
        "run": info,
        "conventions": conventions(view),
        "sources": {name: view.source if view.observed(name) else None
                    for name in (*PER_REQUEST_METRICS, *TBT_METRICS, *(FLUIDITY_METRICS if fluidity else ()))},
        "summary": summary,
        "iterations": iterations,
    }
    if speculative is not None:
        result["speculative"] = speculative
    if ranks is not None:
        result["ranks"] = ranks
    if fluidity is not None:
        rows = np.flatnonzero(view.counted)
        summary.update({name: summarize(fluidity[name][rows]) for name in FLUIDITY_METRICS})
        result["fluidity"] = {
            "tbt_deadline_s": tbt_slo_s,
            "ttft_deadline_s": ttft_slo_s,
            "prefill_model_s": list(prefill_model.coefficients_s) if prefill_model is not None else None,
            "ttft_slack_s": ttft_slack_s if prefill_model is not None else None,
            "service_miss_rate": service_level_miss_rate(fluidity["deadline_misses"][rows],
                                                         fluidity["deadlines"][rows]),
        }
    if beside is not None:
        result["client_vs_engine"] = beside.summary()
    if include_requests:
        result["requests"] = request_records(view, tbt, fluidity, info["start_ns"], beside)
    return result


def conventions(view: RequestView) -> dict[str, str]:
    """Return how every number of the view was computed (the client's wording for a client view)."""
    out = dict(CONVENTIONS)
    if view.source == Observer.CLIENT:
        out.update(CLIENT_CONVENTIONS)
    return out


def run_info(run: RunData, view: RequestView) -> dict:
    """Return the run's size, start (ns, monotonic), duration (s), throughput (per s), observers and reading warnings.

    Only counted requests (all the engine's; the client's that ended 'ok') make the duration,
    the output tokens and the finished requests.
    """
    metrics, counted = view.metrics, view.counted
    arrivals = metrics.arrival_ns[metrics.arrival_ns != MISSING_NS]
    duration = run_duration_s(metrics.arrival_ns[counted], metrics.last_token_ns[counted], metrics.finished_ns[counted])
    duration = duration if duration > 0 else None  # NaN: nothing recorded
    finished = int(((metrics.finished_ns != MISSING_NS) & counted).sum())
    output_tokens = int(metrics.output_tokens[counted].sum())
    return {
        "path": str(run.path),
        "source": view.source,
        "observers": list(view.observers),
        "requests": len(metrics),
        "excluded_requests": int(len(metrics) - np.count_nonzero(counted)),
        "client_status": view.status_counts(),
        "finished_requests": finished,
        "arrival_from_queue": int(metrics.arrival_from_queue.sum()) if view.observed("arrival_from_queue") else 0,
        "prompt_tokens": int(metrics.prompt_tokens[(metrics.prompt_tokens >= 0) & counted].sum()),
        "output_tokens": output_tokens,
        "start_ns": int(arrivals.min()) if len(arrivals) else None,
        "duration_s": duration,
        "output_tokens_per_s": output_tokens / duration if duration else None,
        "requests_per_s": finished / duration if duration else None,
        "warnings": list(getattr(run, "warnings", [])),  # problems reading the run: the numbers are from the rest
    }


def request_records(view: RequestView, tbt: dict[str, np.ndarray], fluidity: dict | None, start_ns: int | None,
                    beside: ClientBesideEngine | None = None) -> list[dict]:
    """Return one JSON-ready dict per request (by arrival): metrics in s, TBT lists in s, null for undefined.

    Each names its source (the observer); status and error are the client's (null without one);
    "client" is the client's view of an engine request (client_vs_engine.py), else null.
    """
    metrics = view.metrics
    n = len(metrics)
    arrival_s = np.full(n, np.nan)
    if start_ns is not None:
        known = metrics.arrival_ns != MISSING_NS
        arrival_s[known] = (metrics.arrival_ns[known] - start_ns) / NS_PER_S
    nothing = [None] * n

    def observed(name: str, values: list) -> list:
        return values if view.observed(name) else nothing

    client_views = beside.per_engine_request() if beside is not None else nothing
    if view.source == Observer.CLIENT:
        status, error = view.client.status.tolist(), view.client.error.tolist()
    else:
        status = [c["status"] if c else None for c in client_views]
        error = [c["error"] if c else None for c in client_views]
    columns = {
        "request_id": metrics.request_id.tolist(),
        "source": [view.source] * n,
        "status": status,
        "error": error,
        "prompt_tokens": [c if c >= 0 else None for c in metrics.prompt_tokens.tolist()],
        "output_tokens": metrics.output_tokens.tolist(),
        "arrival_s": _json_floats(arrival_s),
        "arrival_from_queue": observed("arrival_from_queue", metrics.arrival_from_queue.tolist()),
        "finish_reason": observed("finish_reason", metrics.finish_reason.tolist()),
        **{name: observed(name, _json_floats(getattr(metrics, name))) for name in PER_REQUEST_METRICS},
        "preempted_s": observed("preempted_s", _json_floats(metrics.preempted_s)),
    }
    if fluidity is not None:
        columns.update({name: _json_floats(values) for name, values in fluidity.items()})
    columns["client"] = client_views
    ragged = {
        "tbt_per_token_s": (tbt["tbt_per_token_s"].tolist(), metrics.tbt_per_token_offsets().tolist()),
        "tbt_per_chunk_s": (tbt["tbt_per_chunk_s"].tolist(), metrics.tbt_per_chunk_offsets().tolist()),
    }
    records = []
    for i in range(n):
        record = {name: values[i] for name, values in columns.items()}
        for name, (values, offsets) in ragged.items():
            record[name] = values[offsets[i]:offsets[i + 1]] if view.observed(name) else None
        records.append(record)
    return records


def _json_floats(values: np.ndarray) -> list:
    """Return the values as Python numbers, None for NaN."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values).tolist()]


# Text table: metric -> (label, unit, scale from the JSON unit to the shown one).
TEXT_ROWS = {
    "ttft_s": ("TTFT", "ms", 1e3),
    "scheduling_delay_s": ("scheduling delay T_s", "ms", 1e3),
    "prefill_s": ("prefill T_p", "ms", 1e3),
    "decode_s": ("decode T_d", "ms", 1e3),
    "e2e_s": ("end-to-end (TTLT)", "ms", 1e3),
    "ttst_s": ("TTST", "ms", 1e3),
    "tpot_s": ("TPOT = T_d/(n-1)", "ms", 1e3),
    "normalized_latency_s": ("normalized latency", "ms/tok", 1e3),
    "tbt_per_token_s": ("TBT per token", "ms", 1e3),
    "tbt_per_chunk_s": ("TBT per chunk", "ms", 1e3),
    "preemptions": ("preemptions / request", "count", 1.0),
    "fluidity_index": ("fluidity index", "0..1", 1.0),
    "deadline_misses": ("deadline misses / request", "count", 1.0),
    "deadlines": ("deadlines / request", "count", 1.0),
}
TEXT_STATS = ("count", "mean", "p50", "p90", "p99", "p999", "max")


def summary_text(result: dict) -> str:
    """Return analyze_run's result as a compact text table (times in ms) with its conventions."""
    run = result["run"]
    sources = result.get("sources", {})
    lines = [f"servescope analysis of {run['path']}", _run_line(run), *_observer_lines(run), ""]
    if run.get("warnings"):
        lines[-1:-1] = [f"{len(run['warnings'])} problem(s) reading this run (listed on stderr and in run.warnings): "
                        "the numbers below come from what could be read"]
    rows = [("metric", "unit", *TEXT_STATS)]
    for name, summary in result["summary"].items():
        label, unit, scale = TEXT_ROWS.get(name, (name, "", 1.0))
        if run.get("source") == Observer.CLIENT and sources.get(name) is None:
            rows.append((label, unit))  # engine-only: not a number the client has
            continue
        rows.append((label, unit, str(summary["count"]),
                     *(_number(summary.get(stat), scale) for stat in TEXT_STATS[1:])))
    widths = [max(len(row[c]) for row in rows if c < len(row)) for c in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        if len(row) == 2:
            cells.append("null: engine only, not seen from the client")
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    if "fluidity" in result:
        f = result["fluidity"]
        lines += ["", f"fluidity: TBT deadline {_number(f['tbt_deadline_s'], 1e3)} ms, TTFT deadline "
                      f"{_number(f['ttft_deadline_s'], 1e3)} ms, service-level miss rate "
                      f"{_number(f['service_miss_rate'], 1.0, '.4f')}"]
    if "client_vs_engine" in result:
        lines += ["", client_vs_engine_text(result["client_vs_engine"])]
    lines += _iteration_lines(result.get("iterations") or {})
    spec = result.get("speculative")
    if spec:
        lines += ["", f"speculative decoding: {spec['drafts']} drafts, {spec['draft_tokens']} draft tokens, "
                      f"{spec['accepted_tokens']} accepted (rate {spec['acceptance_rate']:.3f}, mean acceptance "
                      f"length {spec['mean_acceptance_length']:.2f} incl. bonus); per position "
                      + ", ".join(f"{p:.2f}" for p in spec["acceptance_per_position"])]
        lines += _speculative_step_lines(spec.get("steps"))
    lines += _rank_lines(result.get("ranks"))
    conventions = result["conventions"]
    lines += [
        "",
        "Conventions: " + conventions["clock"] + ".",
        "  TPOT = " + conventions["tpot"] + ".",
        "  TBT per token = " + conventions["tbt_per_token"] + ".",
        "  TBT per chunk = " + conventions["tbt_per_chunk"] + ".",
        "  Percentiles: " + conventions["percentiles"] + ".",
    ]
    if "client_status" in conventions and run.get("source") == Observer.CLIENT:
        lines.append("  Requests: " + conventions["client_status"] + ".")
    if run["arrival_from_queue"]:
        lines.append(f"  {run['arrival_from_queue']} requests have no front-end arrival: "
                     "their arrival is the scheduler's 'queued' event.")
    return "\n".join(lines)


def _observer_lines(run: dict) -> list[str]:
    """Return the lines naming who recorded the numbers and how the client's requests ended."""
    source = run.get("source")
    if source is None:
        return ["no request records in this run (neither engine nor client)"]
    lines = []
    if source == Observer.CLIENT:
        lines.append("observer: client only (servescope's streaming client); nothing inside the server was recorded")
    elif Observer.CLIENT in run.get("observers", ()):
        lines.append("observer: engine (the client's record is set beside it below)")
    status = run.get("client_status")
    if status:
        counts = ", ".join(f"{count} {name}" for name, count in status.items() if count)
        lines.append(f"client requests: {counts}")
    if run.get("excluded_requests"):
        lines.append(f"{run['excluded_requests']} requests did not end 'ok': listed with their status and error "
                     "(--json requests[]), left out of every distribution and of the throughput")
    return lines


def _speculative_step_lines(steps: dict | None) -> list[str]:
    """Return one line per part of a decode-only verify step: P50 host and GPU ms (speculative_steps.py)."""
    if not steps:
        return []
    parts = steps["verify_steps_only"]
    lines = [f"  per verify step ({steps['steps']['verify']} steps), P50 ms host / GPU:"]
    for part in ("verify_forward", "rejection_sample", "draft", "draft_prefill", "draft_decode"):
        host, gpu = parts["host_ms"][part], parts["gpu_ms"][part]
        if host["count"]:
            lines.append(f"    {part:<16} {_number(host['p50'], 1.0):>8} / {_number(gpu['p50'], 1.0)}")
    return lines


def _rank_lines(ranks: dict | None) -> list[str]:
    """Return the ranks block as lines: placement, rank skew, slowest rank, communication, pipeline (ms)."""
    if not ranks:
        return []
    placement = ", ".join(f"{p['rank']} (engine {p['engine_index']}, TP {p['tp_rank']}, PP {p['pp_rank']})"
                          for p in ranks["placement"])
    skew, start = ranks["skew_s"], ranks["start_skew_s"]
    slowest = ", ".join(f"rank {rank} in {count}" for rank, count in ranks["slowest_rank"].items())
    lines = ["", f"ranks: {placement}",
             f"  rank skew (slowest minus fastest rank's end, {ranks['clock']} clock; {ranks['groups']} step groups): "
             f"P50 {_number(skew['p50'], 1e3)} ms, P99 {_number(skew['p99'], 1e3)} ms; start skew P50 "
             f"{_number(start['p50'], 1e3)} ms; slowest: {slowest or '-'}"]
    comm = ranks["communication"]
    if comm["measured_groups"]:
        share = comm.get("share_of_step_gpu_time", {})
        lines.append(f"  communication per step (collectives of the least-waiting rank, {comm['measured_groups']} "
                     f"step groups): P50 {_number(comm['communication_s']['p50'], 1e3)} ms, wait in collectives "
                     f"P50 {_number(comm['collective_wait_s']['p50'], 1e3)} ms, share of the step's GPU time P50 "
                     f"{_number(share.get('p50'), 1.0, '.3f')}")
    else:
        lines.append(f"  communication: {comm.get('note', 'not measured')}")
    pipe = ranks.get("pipeline")
    if pipe:
        handoffs = ", ".join(f"{b} P50 {_number(h['p50'], 1e3)} ms" for b, h in pipe["handoff_s"].items())
        idle = ", ".join(f"stage {s} P50 {_number(i['p50'], 1e3)} ms (busy {pipe['stage_busy_share'][s]:.2f})"
                         for s, i in pipe["stage_idle_s"].items())
        lines.append(f"  pipeline ({pipe['stages']} stages): handoff {handoffs}; idle before a step: {idle}")
    return lines


def _iteration_lines(iterations: dict) -> list[str]:
    """Return the per-kind iteration table: steps, P50 of iteration / GPU / CPU overhead / idle (ms)."""
    if not iterations.get("by_kind"):
        return []
    lines = ["", f"engine iterations ({iterations['steps']} steps; GPU time from {iterations['gpu_time_source']}), "
                 "P50 ms:", f"{'kind':<9}{'steps':>7}{'iteration':>11}{'gpu':>9}{'cpu overhead':>14}{'idle':>8}"
                 f"{'schedule':>10}{'update':>8}"]
    for kind, k in iterations["by_kind"].items():
        p50 = {name: _number(k[name]["p50"], 1e3) for name in
               ("iteration_s", "gpu_s", "cpu_overhead_s", "idle_s", "schedule_s", "update_s")}
        lines.append(f"{kind:<9}{k['steps']:>7}{p50['iteration_s']:>11}{p50['gpu_s']:>9}{p50['cpu_overhead_s']:>14}"
                     f"{p50['idle_s']:>8}{p50['schedule_s']:>10}{p50['update_s']:>8}")
    return lines


def _run_line(run: dict) -> str:
    parts = [f"{run['requests']} requests ({run['finished_requests']} finished)",
             f"{run['output_tokens']} output tokens"]
    if run["duration_s"]:
        parts += [f"duration {run['duration_s']:.3f} s",
                  f"{run['output_tokens_per_s']:.1f} output tok/s",
                  f"{run['requests_per_s']:.2f} finished req/s"]
    return ", ".join(parts)


def _number(value, scale: float, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value * scale:{spec}}"
