"""Compare two runs (or two sets of repeat runs): how much faster, and why.

Every latency metric is compared at its mean and at P50 / P90 / P99 (linear interpolation),
each difference (treatment - baseline) with a bootstrap confidence interval. The end-to-end
change is split exactly into its parts, scheduling delay + prefill + decode (per request
``e2e = T_s + T_p + T_d``, so the means add up). The engine-step change is split into GPU
time, CPU overhead and idle time (``iteration_breakdown``), which tells a faster algorithm
(less GPU work) from a faster implementation (less host time with the GPU idle) from better
scheduling. With several worker ranks on a side (tensor or pipeline parallelism), the GPU time is split further
into compute and communication between ranks (``RANK_PARTS``; a one-rank run communicates nothing), so TP=1 against
TP=2 says how much of the change is GPU compute, communication and host time. Configuration differences come from
``manifest["engine"]``.

Client-only runs (``servescope bench --endpoint`` against a server servescope does not trace:
two engines behind the same API, two deployments) are compared on what the client sees: TTFT,
TBT per chunk, e2e, decode (first to last chunk), TPOT and normalized latency, with the same
intervals, and throughput over the requests that ended 'ok'. The split into scheduling delay,
prefill and decode, and of engine steps into GPU time and CPU overhead, needs engine records:
the statement says so instead of guessing. Both sides must be seen by the same observer
(``observer=``; by default the engine's record where every run has one, else the client's).

Bootstrap: two-level, so repeat runs count as repeats: each replicate draws the side's runs
with replacement, then from each drawn run as many samples as it has (at most
``max_bootstrap_samples``, which widens the interval, never narrows it), and recomputes the
statistic; the interval is the percentile interval of the replicate differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from servescope.analysis.request_metrics import MISSING_NS
from servescope.analysis.slo import decode_gaps_s, run_duration_s
from servescope.analysis.iterations import host_paced_regions, iteration_breakdown, region_times_ms
from servescope.analysis.rank_skew import step_communication_ns, step_groups
from servescope.analysis.stalls import StepArrays, step_arrays
from servescope.run.names import Observer

LATENCY_METRICS = ("ttft", "tbt", "e2e", "scheduling_delay", "prefill", "decode", "normalized_latency")
# What a client sees of each request (client_view.py): no per-token TBT, no scheduling delay or prefill.
CLIENT_LATENCY_METRICS = ("ttft", "tbt_per_chunk", "e2e", "decode", "tpot", "normalized_latency")
ITERATION_PARTS = ("iteration", "gpu", "cpu_overhead", "idle")
# With several worker ranks on a side (tensor / pipeline parallelism), GPU time splits into compute and communication
# (rank_skew.py: the collectives of the least-waiting rank; 0 on one rank, NaN where not recorded).
RANK_PARTS = ("gpu_compute", "communication")
STATS = ("mean", "p50", "p90", "p99")
PERCENTILE_METHOD = "linear"


@dataclass(slots=True)
class RunSamples:
    """One run's samples for a comparison: latencies (s) per request or token, per-step times (s)."""

    label: str
    latency_s: dict[str, np.ndarray]  # LATENCY_METRICS -> samples (tbt: per-token gaps)
    iteration_s: dict[str, np.ndarray]  # ITERATION_PARTS -> one value per engine step
    output_tokens_per_s: float
    requests_per_s: float
    gpu_time_source: str  # "gpu_events" | "host_wait" | "mixed" | "none"
    observer: str = Observer.ENGINE  # who recorded the samples (names.Observer)
    served: dict[str, Any] = field(default_factory=dict)  # the client's target: {endpoint, model} from manifest["bench"]
    engine: dict[str, Any] = field(default_factory=dict)  # manifest["engine"] without parameters
    parameters: dict[str, Any] = field(default_factory=dict)  # manifest["engine"]["parameters"]
    host_paced_regions: dict[str, dict] = field(default_factory=dict)  # iterations.host_paced_regions()
    several_ranks: bool = False  # a step ran on more than one worker rank: RANK_PARTS are compared


# --------------------------------------------------------------------------- per-step breakdown


def _gpu_source(steps: StepArrays) -> str:
    measured = ~np.isnan(steps.gpu_ns)
    if steps.gpu_ns.size == 0:
        return "none"
    return "gpu_events" if measured.all() else ("host_wait" if not measured.any() else "mixed")


def run_samples(metrics: Any, run: Any, label: str | None = None, observer: str = Observer.ENGINE) -> RunSamples:
    """Return one run's comparison samples from RequestMetrics and RunData (steps, worker_regions, manifest).

    observer 'client': metrics are the client's (client_view.py; the requests that ended 'ok'): latency
    samples are CLIENT_LATENCY_METRICS and there are no engine steps.
    """
    engine = observer == Observer.ENGINE
    if engine:
        latency = {"tbt": decode_gaps_s(metrics.token_times_ns, metrics.token_offsets)[0]}
        names = LATENCY_METRICS
    else:
        latency = {"tbt_per_chunk": metrics.all_tbt_per_chunk_s()}
        names = CLIENT_LATENCY_METRICS
    for name in names:
        if name not in latency:
            latency[name] = np.asarray(getattr(metrics, f"{name}_s"), dtype=np.float64)
    steps = step_arrays(run.steps, getattr(run, "worker_regions", None)) if engine else None
    iteration, several = (_iteration_parts(run, steps) if engine else ({}, False))
    finished_ns = getattr(metrics, "finished_ns", None)
    duration = run_duration_s(metrics.arrival_ns, metrics.token_times_ns, finished_ns)
    if finished_ns is not None:
        finished = int(np.count_nonzero(np.asarray(finished_ns) != MISSING_NS))
    else:
        finished = int(np.count_nonzero(np.isfinite(latency["e2e"])))
    manifest = getattr(run, "manifest", None) or {}
    engine_facts = dict(manifest.get("engine") or {})
    parameters = dict(engine_facts.pop("parameters", None) or {})
    bench = manifest.get("bench") or {}
    return RunSamples(
        label=label or str(manifest.get("run_id", "")),
        latency_s=latency,
        iteration_s=iteration,
        output_tokens_per_s=float(np.sum(metrics.output_tokens)) / duration if duration > 0 else math.nan,
        requests_per_s=finished / duration if duration > 0 else math.nan,
        gpu_time_source=_gpu_source(steps) if engine else "none",
        observer=observer,
        served={k: bench[k] for k in ("endpoint", "model") if bench.get(k) is not None},
        engine=engine_facts,
        parameters=parameters,
        host_paced_regions=host_paced_regions(region_times_ms(getattr(run, "worker_regions", None))) if engine else {},
        several_ranks=several,
    )


def _iteration_parts(run: Any, steps: StepArrays) -> tuple[dict[str, np.ndarray], bool]:
    """Return per-step ITERATION_PARTS and RANK_PARTS (s), and whether a step ran on several ranks."""
    parts = iteration_breakdown(steps)
    groups = step_groups(getattr(run, "worker_regions", None))
    communication = np.minimum(step_communication_ns(groups, steps.engine_index, steps.step_id) / 1e9, parts["gpu"])
    parts["communication"] = communication
    parts["gpu_compute"] = parts["gpu"] - communication
    return parts, bool((groups.ranks > 1).any())


# --------------------------------------------------------------------------- statistics


def _stats(values: np.ndarray) -> np.ndarray:
    """Return [mean, p50, p90, p99] of finite values (NaN if none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.full(len(STATS), math.nan)
    return np.concatenate([[v.mean()], np.percentile(v, [50, 90, 99], method=PERCENTILE_METHOD)])


def _finite_runs(runs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(r, dtype=np.float64)[np.isfinite(r)] for r in runs]


def _bootstrap_stats(runs: list[np.ndarray], rng: np.random.Generator, n_boot: int, max_samples: int) -> np.ndarray:
    """Return (n_boot, len(STATS)) replicate statistics: runs drawn with replacement, then samples."""
    runs = [r for r in runs if r.size]
    out = np.full((n_boot, len(STATS)), math.nan)
    if not runs:
        return out
    sizes = np.array([r.size for r in runs])
    pooled = np.concatenate(runs)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    draw = np.minimum(sizes, max_samples)
    for b in range(n_boot):
        chosen = rng.integers(0, len(runs), size=len(runs))
        run_of_draw = np.repeat(chosen, draw[chosen])
        idx = offsets[run_of_draw] + (rng.random(run_of_draw.size) * sizes[run_of_draw]).astype(np.int64)
        out[b] = _stats(pooled[idx])
    return out


def compare_samples(
    baseline: Sequence[np.ndarray],
    treatment: Sequence[np.ndarray],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    max_bootstrap_samples: int = 20_000,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """Return per statistic (mean, p50, p90, p99): both sides, diff, relative diff and CI [lo, hi], samples' unit."""
    rng = np.random.default_rng(seed)
    base_runs, treat_runs = _finite_runs(baseline), _finite_runs(treatment)
    base = _stats(np.concatenate(base_runs) if base_runs else np.zeros(0))
    treat = _stats(np.concatenate(treat_runs) if treat_runs else np.zeros(0))
    diffs = _bootstrap_stats(treat_runs, rng, n_boot, max_bootstrap_samples) - _bootstrap_stats(
        base_runs, rng, n_boot, max_bootstrap_samples
    )
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for k, stat in enumerate(STATS):
        d = diffs[:, k][np.isfinite(diffs[:, k])]
        ci = [float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))] if d.size else [math.nan, math.nan]
        diff = float(treat[k] - base[k])
        out[stat] = {
            "baseline": float(base[k]),
            "treatment": float(treat[k]),
            "diff": diff,
            "relative": diff / base[k] if base[k] not in (0.0,) and math.isfinite(base[k]) else math.nan,
            "ci": ci,
        }
    return out


def _run_level(values_a: list[float], values_b: list[float], rng, n_boot: int, confidence: float) -> dict[str, Any]:
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    out: dict[str, Any] = {
        "baseline": float(a.mean()),
        "treatment": float(b.mean()),
        "diff": float(b.mean() - a.mean()),
    }
    out["relative"] = out["diff"] / out["baseline"] if out["baseline"] else math.nan
    if a.size >= 2 and b.size >= 2:
        reps = rng.choice(b, (n_boot, b.size)).mean(axis=1) - rng.choice(a, (n_boot, a.size)).mean(axis=1)
        alpha = (1.0 - confidence) / 2.0
        out["ci"] = [float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))]
    else:
        out["ci"] = [math.nan, math.nan]
        out["note"] = "one run per side: no interval on throughput (repeat the runs)"
    return out


# --------------------------------------------------------------------------- configuration


def parameter_differences(baseline: dict[str, Any], treatment: dict[str, Any]) -> list[dict[str, Any]]:
    """Return [{name, baseline, treatment}] for every engine parameter that differs or is set on one side only."""
    missing = "not set"
    out = []
    for name in sorted(set(baseline) | set(treatment)):
        a = baseline.get(name, missing)
        b = treatment.get(name, missing)
        if a != b:
            out.append({"name": name, "baseline": a, "treatment": b})
    return out


def _side_config(side: Sequence[RunSamples]) -> tuple[dict, dict, list[str]]:
    notes = []
    first = side[0]
    for other in side[1:]:
        if other.parameters != first.parameters or other.engine != first.engine:
            notes.append(f"repeat runs of one side differ in configuration ({first.label} vs {other.label})")
    return first.engine, first.parameters, notes


# --------------------------------------------------------------------------- the comparison


def compare(
    baseline: RunSamples | Sequence[RunSamples],
    treatment: RunSamples | Sequence[RunSamples],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    max_bootstrap_samples: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the comparison of treatment against baseline (latencies in s, throughput in tokens/s and requests/s).

    Keys: latency (per metric and statistic), throughput, iteration (per-step parts), e2e_split,
    configuration, attribution (shares) and statement (plain language).
    """
    base = [baseline] if isinstance(baseline, RunSamples) else list(baseline)
    treat = [treatment] if isinstance(treatment, RunSamples) else list(treatment)
    if not base or not treat:
        raise ValueError("each side needs at least one run")
    observers = {r.observer for r in base + treat}
    if len(observers) > 1:
        shown = "; ".join(f"{r.label}: {r.observer}" for r in base + treat)
        raise ValueError(f"the runs were seen by different observers ({shown}): compare client with client, "
                         "engine with engine")
    observer = observers.pop()
    kw = dict(n_boot=n_boot, confidence=confidence, max_bootstrap_samples=max_bootstrap_samples)
    metric_names = CLIENT_LATENCY_METRICS if observer == Observer.CLIENT else LATENCY_METRICS
    latency = {
        m: compare_samples([r.latency_s[m] for r in base], [r.latency_s[m] for r in treat], seed=seed + i, **kw)
        for i, m in enumerate(metric_names)
    }
    parts = ITERATION_PARTS if observer == Observer.ENGINE else ()
    if observer == Observer.ENGINE and any(r.several_ranks for r in base + treat):
        parts += RANK_PARTS
    iteration = {
        p: compare_samples(
            [r.iteration_s[p] for r in base], [r.iteration_s[p] for r in treat], seed=seed + 100 + i, **kw
        )
        for i, p in enumerate(parts)
    }
    rng = np.random.default_rng(seed + 1000)
    throughput = {
        "output_tokens_per_s": _run_level(
            [r.output_tokens_per_s for r in base], [r.output_tokens_per_s for r in treat], rng, n_boot, confidence
        ),
        "requests_per_s": _run_level(
            [r.requests_per_s for r in base], [r.requests_per_s for r in treat], rng, n_boot, confidence
        ),
    }
    base_engine, base_params, notes = _side_config(base)
    treat_engine, treat_params, more = _side_config(treat)
    notes += more
    engines = [(e.get("name"), e.get("version")) for e in (base_engine, treat_engine)]
    configuration = {
        "baseline_engine": base_engine,
        "treatment_engine": treat_engine,
        # None: an engine not recorded (a client-only run sees no engine): whether they match is unknown
        "same_engine": None if any(None in e for e in engines) else engines[0] == engines[1],
        "parameter_differences": parameter_differences(base_params, treat_params),
        "parameters_recorded": {"baseline": bool(base_params), "treatment": bool(treat_params)},
    }
    if observer == Observer.CLIENT:
        configuration["served"] = {"baseline": base[0].served, "treatment": treat[0].served}
    result = {
        "runs": {"baseline": [r.label for r in base], "treatment": [r.label for r in treat]},
        "observer": observer,
        "percentile_method": PERCENTILE_METHOD,
        "confidence": confidence,
        "latency": latency,
        "throughput": throughput,
        "iteration": iteration,
        "configuration": configuration,
        "notes": notes,
    }
    if observer == Observer.ENGINE:
        e2e_split = {part: latency[part]["mean"]["diff"] for part in ("scheduling_delay", "prefill", "decode")}
        e2e_split["e2e"] = latency["e2e"]["mean"]["diff"]
        result.update({
            "iteration_gpu_time_source": sorted({r.gpu_time_source for r in base + treat}),
            "e2e_split": e2e_split,
            "attribution": _attribution(latency, iteration, e2e_split),
            "host_paced_regions": {"baseline": _host_paced(base), "treatment": _host_paced(treat)},
        })
        result["statement"] = _statement(result)
    else:
        result["statement"] = _client_statement(result)
    return result


def _attribution(latency, iteration, e2e_split) -> dict[str, float]:
    """Shares of the e2e change (scheduling vs execution) and of the busy step-time change (GPU vs host)."""
    d_sched = e2e_split["scheduling_delay"]
    d_exec = e2e_split["prefill"] + e2e_split["decode"]
    d_gpu = iteration["gpu"]["mean"]["diff"]
    d_cpu = iteration["cpu_overhead"]["mean"]["diff"]

    def share(part, other):
        total = part + other
        if not math.isfinite(total) or total == 0 or part * other < 0:
            return math.nan  # opposite signs: no meaningful share, the statement reports both
        return part / total

    return {
        "scheduling_share_of_e2e_change": share(d_sched, d_exec),
        "execution_share_of_e2e_change": share(d_exec, d_sched),
        "gpu_share_of_step_change": share(d_gpu, d_cpu),
        "host_share_of_step_change": share(d_cpu, d_gpu),
    }


def _ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 1e3:+.2f} ms"


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 100:+.1f}%"


def _ci_ms(ci: list[float]) -> str:
    if not all(math.isfinite(c) for c in ci):
        return "no interval"
    sig = "" if (ci[0] > 0 or ci[1] < 0) else ", not distinguishable from zero"
    return f"CI [{ci[0] * 1e3:+.2f}, {ci[1] * 1e3:+.2f}] ms{sig}"


def _shares_text(share_a: float, share_b: float, diff_a: float, diff_b: float, names: tuple[str, str]) -> str:
    if math.isfinite(share_a):
        return f" ({names[0]} {share_a * 100:.0f}%, {names[1]} {share_b * 100:.0f}%)."
    if diff_a * diff_b < 0:
        return f" ({names[0]} and {names[1]} moved in opposite directions)."
    return "."


def _host_paced(side: Sequence[RunSamples]) -> dict[str, dict]:
    """Return the regions host-paced in any run of a side, with the medians of the first run that shows them."""
    out: dict[str, dict] = {}
    for r in side:
        for name, times in r.host_paced_regions.items():
            out.setdefault(name, times)
    return out


def _on_cpu(times: dict) -> str:
    """Return ", of which X ms on the CPU" for a host-paced region whose thread CPU time was recorded."""
    cpu = times.get("host_cpu_p50_ms")
    return "" if cpu is None else f", of which {cpu:.1f} ms on the CPU"


def _statement(result: dict[str, Any]) -> str:
    """Return the plain-language reading of a comparison."""
    lat, it, split, att = result["latency"], result["iteration"], result["e2e_split"], result["attribution"]
    conf = int(round(result["confidence"] * 100))
    e2e = lat["e2e"]["mean"]
    lines = [
        f"Mean end-to-end latency changed by {_ms(e2e['diff'])} "
        f"({_pct(e2e['relative'])}; {conf}% {_ci_ms(e2e['ci'])}); "
        f"P99 by {_ms(lat['e2e']['p99']['diff'])}.",
        f"Of the mean change, scheduling delay accounts for {_ms(split['scheduling_delay'])}, prefill for "
        f"{_ms(split['prefill'])} and decode for {_ms(split['decode'])}"
        + _shares_text(
            att["scheduling_share_of_e2e_change"],
            att["execution_share_of_e2e_change"],
            split["scheduling_delay"],
            split["prefill"] + split["decode"],
            ("scheduling", "execution"),
        ),
        f"TTFT P99 changed by {_ms(lat['ttft']['p99']['diff'])}, TBT P99 by {_ms(lat['tbt']['p99']['diff'])}.",
    ]
    g, c, idle = it["gpu"]["mean"], it["cpu_overhead"]["mean"], it["idle"]["mean"]
    source = ", ".join(result["iteration_gpu_time_source"])
    step = (
        f"Per engine step, GPU time changed by {_ms(g['diff'])} ({_pct(g['relative'])}) and CPU overhead "
        f"(host time with the GPU idle) by {_ms(c['diff'])} ({_pct(c['relative'])}); idle time by {_ms(idle['diff'])} "
        f"[GPU time from: {source}]."
    )
    if math.isfinite(att["gpu_share_of_step_change"]):
        # between two engines the GPU time differs by kernels, graphs and compilation too: no algorithm label
        gpu_label = "kernels" if result["configuration"]["same_engine"] is False else "algorithm, kernels"
        step += (
            f" So {att['gpu_share_of_step_change'] * 100:.0f}% of the change in busy step time is GPU work "
            f"({gpu_label}) and {att['host_share_of_step_change'] * 100:.0f}% host overhead (implementation)."
        )
    elif g["diff"] * c["diff"] < 0:
        step += " GPU work and host overhead moved in opposite directions: neither explains the change alone."
    lines.append(step)
    if "communication" in it:
        lines.append(_communication_sentence(it, result["runs"]))
    paced = [f"{name} ({side}: GPU {t['gpu_p50_ms']:.1f} ms, host {t['host_p50_ms']:.1f} ms{_on_cpu(t)} per step)"
             for side, regions in result["host_paced_regions"].items() for name, t in regions.items()]
    if paced:
        lines.append("Host-paced regions, whose GPU event time includes waits for the host and so only bounds their "
                     "kernel time from above (part of that 'GPU work' is host launch cost): " + "; ".join(paced) + ".")
    tok = result["throughput"]["output_tokens_per_s"]
    lines.append(f"Output throughput changed by {tok['diff']:+.1f} tokens/s ({_pct(tok['relative'])}).")
    lines += _configuration_lines(result["configuration"])
    return " ".join(lines)


def _communication_sentence(it: dict[str, Any], runs: dict[str, list[str]]) -> str:
    """Return the sentence splitting the per-step GPU-time change into compute and communication (several ranks)."""
    comp, comm = it["gpu_compute"]["mean"], it["communication"]["mean"]
    unmeasured = [side for side in ("baseline", "treatment") if not math.isfinite(comm[side])]
    if unmeasured:
        return (f"Communication between ranks was not measured on the {' and '.join(unmeasured)} side (record with "
                "--parts default,collectives, outside CUDA graphs: docs/multi-gpu.md), so GPU time is not split into "
                "compute and communication.")
    return (f"Over the steps whose communication was measured, per-step GPU compute changed by {_ms(comp['diff'])} ({_ci_ms(it['gpu_compute']['mean']['ci'])})"
            f" and communication between ranks by {_ms(comm['diff'])} ({_ci_ms(it['communication']['mean']['ci'])}; "
            f"{comm['baseline'] * 1e3:.2f} -> {comm['treatment'] * 1e3:.2f} ms per step).")


def _configuration_lines(cfg: dict[str, Any]) -> list[str]:
    """Return the statement's sentences about the engines and their parameters."""
    lines = []
    if cfg["same_engine"] is False:
        b, t = cfg["baseline_engine"], cfg["treatment_engine"]
        lines.append(
            f"The sides ran different engines ({b.get('name', '?')} {b.get('version', '?')} vs "
            f"{t.get('name', '?')} {t.get('version', '?')}): their GPU time differs by kernels, CUDA graphs and "
            "compilation too, so these runs credit no part of the change to an algorithm."
        )
    elif cfg["same_engine"] is None:
        lines.append("The engine (name and version) is not recorded for a side: whether both ran the same "
                     "implementation cannot be told from these runs.")
    if cfg["parameter_differences"]:
        names = ", ".join(d["name"] for d in cfg["parameter_differences"][:8])
        more = len(cfg["parameter_differences"]) - 8
        lines.append(f"Engine parameters differ: {names}" + (f" and {more} more." if more > 0 else "."))
    return lines


def _client_statement(result: dict[str, Any]) -> str:
    """Return the plain-language reading of a comparison of what the client saw."""
    lat = result["latency"]
    conf = int(round(result["confidence"] * 100))
    e2e, ttft, tbt = lat["e2e"], lat["ttft"], lat["tbt_per_chunk"]
    lines = [
        "Seen from the client only (servescope's streaming client; requests that ended 'ok').",
        f"Mean end-to-end latency changed by {_ms(e2e['mean']['diff'])} ({_pct(e2e['mean']['relative'])}; "
        f"{conf}% {_ci_ms(e2e['mean']['ci'])}); P99 by {_ms(e2e['p99']['diff'])} ({_ci_ms(e2e['p99']['ci'])}).",
        f"TTFT P50 changed by {_ms(ttft['p50']['diff'])} ({_ci_ms(ttft['p50']['ci'])}), P99 by "
        f"{_ms(ttft['p99']['diff'])} ({_ci_ms(ttft['p99']['ci'])}); TBT per chunk P50 by {_ms(tbt['p50']['diff'])} "
        f"({_ci_ms(tbt['p50']['ci'])}), P99 by {_ms(tbt['p99']['diff'])} ({_ci_ms(tbt['p99']['ci'])}).",
    ]
    tok = result["throughput"]["output_tokens_per_s"]
    lines.append(f"Output throughput changed by {tok['diff']:+.1f} tokens/s ({_pct(tok['relative'])}).")
    lines.append("What the client cannot see: how the change splits into scheduling delay, prefill and decode, "
                 "and into GPU time and CPU overhead per engine step (that needs engine records: servescope run, "
                 "or bench --server-run).")
    served = result["configuration"].get("served") or {}
    if served.get("baseline") != served.get("treatment"):
        lines.append(f"Targets: baseline {_target(served.get('baseline'))}, "
                     f"treatment {_target(served.get('treatment'))}.")
    lines += _configuration_lines(result["configuration"])
    return " ".join(lines)


def _target(served: dict | None) -> str:
    served = served or {}
    return " at ".join(str(served[k]) for k in ("model", "endpoint") if served.get(k)) or "not recorded"


def compare_run_dirs(baseline_dirs: Sequence[str], treatment_dirs: Sequence[str], *, observer: str | None = None,
                     strict: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Return compare() of run directories, each seen by observer (None: the engine where every run has
    engine records, else the client where every run has client records; ValueError otherwise).

    The result's "run_warnings" maps each run's path to its problems (load_run's warnings); strict
    raises RunDirError at the first problem instead.
    """
    from servescope.analysis.request_view import observers_of, request_view
    from servescope.run.data import load_run

    runs = {d: load_run(d, strict=strict) for d in [*baseline_dirs, *treatment_dirs]}
    warnings = {str(d): list(run.warnings) for d, run in runs.items()}
    if observer is None:
        observer = common_observer({d: observers_of(run) for d, run in runs.items()})

    def side(dirs):
        out = []
        for d in dirs:
            view = request_view(runs[d], observer)
            out.append(run_samples(view.counted_metrics(), runs[d], label=str(d), observer=observer))
        return out

    result = compare(side(baseline_dirs), side(treatment_dirs), **kwargs)
    result["run_warnings"] = warnings
    return result


def common_observer(observers: dict[str, Sequence[str]]) -> str:
    """Return the observer every run was recorded by (the engine first), or raise ValueError naming the runs."""
    for observer in Observer.ALL:
        if all(observer in seen for seen in observers.values()):
            return observer
    shown = "; ".join(f"{d}: {', '.join(seen) or 'no request records'}" for d, seen in observers.items())
    raise ValueError(f"no observer recorded every run ({shown}): compare runs that share an observer")
