"""Audit an evaluation against the 8-item checklist of "On Evaluating Performance of LLM Inference Systems".

Each item gets ``pass``, ``warn`` or ``fail`` and evidence strings naming what was found.
The audit reads the runs' manifests (``engine`` {name, version, parameters}, ``model``
{architecture, attention, moe, num_parameters}, ``workload`` {name, ...}) and, where given,
their per-request samples. A field that is absent is reported as "not recorded" (warn),
never guessed. Runs carry a side (``baseline`` / ``treatment``); with exactly two runs and
no sides, the first is the baseline. docs/analysis.md lists each item's rule.

A run seen only by servescope's client (``observer == "client"``: ``servescope bench --endpoint``
against a server servescope does not trace) is audited on what a client sees (TTFT, TBT per chunk,
e2e, TPOT, lengths, workload, failed requests); each item says what it cannot see from outside
(the engine and its version, its parameters, the model's architecture, the scheduling delay)
instead of reporting it as merely "not recorded".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from servescope.run.names import Observer

Status = Literal["pass", "warn", "fail"]

TITLES = {
    1: "Implementation fairness",
    2: "Parameter tuning",
    3: "Model selection",
    4: "Workload diversity",
    5: "Practical latency bounds",
    6: "Metric selection",
    7: "Performance distribution",
    8: "No obscuring normalization",
}

# vLLM engine parameters that move latency or throughput (EngineArgs names).
PERFORMANCE_CRITICAL_PARAMETERS = (
    "max_num_batched_tokens",
    "max_num_seqs",
    "enable_chunked_prefill",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "gpu_memory_utilization",
    "block_size",
    "enable_prefix_caching",
    "max_model_len",
    "kv_cache_dtype",
    "dtype",
    "quantization",
    "enforce_eager",
    "async_scheduling",
    "speculative_config",
    "long_prefill_token_threshold",
    "scheduling_policy",
)

# Parameters that say how an engine implements the same algorithms (vLLM's and transformers' names):
# when two sides ran different engines, item 1 lists those that differ.
IMPLEMENTATION_PARAMETERS = (
    "model_runner",
    "scheduler_class",
    "scheduling_policy",
    "async_scheduling",
    "attention_implementation",
    "cudagraph_mode",
    "cuda_graphs",
    "compilation_mode",
    "torch_compile",
    "enforce_eager",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "block_size",
    "max_num_batched_tokens",
    "max_num_seqs",
    "dtype",
    "kv_cache_dtype",
)

# One switch under two engines' names (vLLM's, transformers'): set side by side, not as settings "only" one has.
SAME_SWITCH = {"cudagraph_mode": "cuda_graphs", "compilation_mode": "torch_compile"}
SAME_SWITCH.update({b: a for a, b in list(SAME_SWITCH.items())})


def _one_key_per_switch(pa: dict, pb: dict) -> tuple[dict, dict, dict[str, str]]:
    """Return copies of two engines' parameters in which a switch each side names its own way (SAME_SWITCH) has
    one key on both, 'A_NAME / B_NAME (one switch)', and the renames made (each engine's name -> that key)."""
    pa, pb, renamed = dict(pa), dict(pb), {}
    for a_name, b_name in SAME_SWITCH.items():
        if a_name in pa and a_name not in pb and b_name in pb and b_name not in pa:
            key = f"{a_name} / {b_name} (one switch)"
            pa[key], pb[key] = pa.pop(a_name), pb.pop(b_name)
            renamed[a_name] = renamed[b_name] = key
    return pa, pb, renamed

MIN_REQUESTS_FOR_P99 = 100


@dataclass(slots=True)
class AuditedRun:
    """One run as the audit sees it: its manifest, its side, and optional per-request samples (s, tokens)."""

    label: str
    manifest: dict[str, Any]
    side: Literal["baseline", "treatment"] | None = None
    observer: str = Observer.ENGINE  # who recorded the samples (names.Observer)
    excluded_requests: int = 0  # requests left out of the samples (client: did not end 'ok')
    ttft_s: np.ndarray | None = None
    tbt_s: np.ndarray | None = None  # per-token gaps (engine); per-chunk gaps (client: no per-token times)
    e2e_s: np.ndarray | None = None
    tpot_s: np.ndarray | None = None
    scheduling_delay_s: np.ndarray | None = None
    normalized_latency_s: np.ndarray | None = None
    prompt_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None


@dataclass(slots=True)
class CheckResult:
    """One checklist item's verdict and the evidence behind it."""

    item: int
    title: str
    status: Status
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.evidence = list(dict.fromkeys(self.evidence))  # repeat runs repeat findings: keep each once

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return {"item": self.item, "title": self.title, "status": self.status, "evidence": list(self.evidence)}


def _worst(statuses: Sequence[Status]) -> Status:
    return "fail" if "fail" in statuses else ("warn" if "warn" in statuses else "pass")


def nested_get(d: Any, *keys: str) -> Any:
    """Return d[k1][k2]..., or None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _sides(runs: Sequence[AuditedRun]) -> tuple[list[AuditedRun], list[AuditedRun]]:
    if any(r.side for r in runs):
        return [r for r in runs if r.side == "baseline"], [r for r in runs if r.side == "treatment"]
    if len(runs) == 2:
        return [runs[0]], [runs[1]]
    return [], []


def _pooled(runs: Sequence[AuditedRun], attr: str) -> np.ndarray | None:
    parts = [getattr(r, attr) for r in runs]
    if not parts or any(p is None for p in parts):
        return None
    v = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    return v[np.isfinite(v)]


def _p(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


def _grouped(per_run: Sequence[tuple[str, str]], shown: int = 3) -> list[str]:
    """Return 'label: text' lines, runs with the same text on one line ('N runs (a, b, c, ...): text')."""
    labels_by_text: dict[str, list[str]] = {}
    for label, text in per_run:
        labels_by_text.setdefault(text, []).append(label)
    lines = []
    for text, labels in labels_by_text.items():
        if len(labels) == 1:
            lines.append(f"{labels[0]}: {text}")
        else:
            names = ", ".join(labels[:shown]) + (", ..." if len(labels) > shown else "")
            lines.append(f"{len(labels)} runs ({names}): {text}")
    return lines


def _fmt_count(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return str(x)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{suffix}"
    return f"{x:g}"


def _fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x * 1e3:.1f} ms" if abs(x) < 1 else f"{x:.2f} s"


def _from_outside(run: AuditedRun) -> bool:
    return run.observer == Observer.CLIENT


def _served(run: AuditedRun) -> str:
    """Return 'model M at URL' as the client's bench recorded it, for evidence about a client-only run."""
    bench = nested_get(run.manifest, "bench") or {}
    model, endpoint = bench.get("model"), bench.get("endpoint")
    parts = ([f"model {model!r}"] if model else []) + ([f"at {endpoint}"] if endpoint else [])
    return " ".join(parts) or "an endpoint"


def _tbt_label(runs: Sequence[AuditedRun]) -> str:
    return "TBT per chunk (client)" if any(_from_outside(r) for r in runs) else "TBT"


# --------------------------------------------------------------------------- items


def check_implementation_fairness(runs: Sequence[AuditedRun], *, split_reported: bool = False) -> CheckResult:
    """Return item 1: same engine and version on both sides (else the gain must be split before credit)."""
    evidence, statuses = [], []
    engines = {}
    for r in runs:
        name, version = nested_get(r.manifest, "engine", "name"), nested_get(r.manifest, "engine", "version")
        if (name is None or version is None) and _from_outside(r):
            evidence.append(f"{r.label}: client-only run ({_served(r)}): the engine behind the endpoint and its "
                            "version cannot be seen from outside, nor can a difference be split into GPU kernel "
                            "time, CPU overhead and scheduling delay (that needs engine records); state the "
                            "engines and versions compared yourself")
            statuses.append("warn")
        elif name is None or version is None:
            evidence.append(f"{r.label}: engine name/version not recorded")
            statuses.append("warn")
        engines[r.label] = (name, version)
    base, treat = _sides(runs)
    groups = [base, treat] if base and treat else [list(runs)]
    distinct = {engines[r.label] for g in groups for r in g if None not in engines[r.label]}
    if len(distinct) > 1:
        shown = "; ".join(f"{r.label}: {engines[r.label][0]} {engines[r.label][1]}" for g in groups for r in g)
        if split_reported:
            evidence.append(
                f"different engines ({shown}); the difference is split into GPU time, CPU overhead and scheduling delay"
            )
            statuses.append("warn")
        else:
            evidence.append(
                f"different engines ({shown}): split the difference into GPU kernel time, CPU overhead and "
                "scheduling delay (servescope compare) before crediting an algorithm"
            )
            statuses.append("fail")
        evidence.extend(_implementation_differences(groups))
    elif distinct:
        name, version = next(iter(distinct))
        evidence.append(f"all runs on {name} {version}")
        statuses.append("pass")
    return CheckResult(1, TITLES[1], _worst(statuses), evidence)


def _implementation_differences(groups: list[list[AuditedRun]]) -> list[str]:
    """Return one line naming the implementation parameters that differ between the first runs of two groups."""
    if len(groups) < 2 or not groups[0] or not groups[1]:
        return []
    a, b = groups[0][0], groups[1][0]
    pa = nested_get(a.manifest, "engine", "parameters") or {}
    pb = nested_get(b.manifest, "engine", "parameters") or {}
    pa, pb, renamed = _one_key_per_switch(pa, pb)
    differ = []
    for name in dict.fromkeys(renamed.get(n, n) for n in IMPLEMENTATION_PARAMETERS):
        if name not in pa and name not in pb:
            continue
        va, vb = pa.get(name, "not recorded"), pb.get(name, "not recorded")
        if va != vb:
            differ.append(f"{name}: {va!r} vs {vb!r}")
    if not differ:
        return []
    return [f"implementation differences ({a.label} vs {b.label}): " + "; ".join(differ)]


def check_parameter_tuning(runs: Sequence[AuditedRun], *, studied: Sequence[str] = ()) -> CheckResult:
    """Return item 2: critical engine parameters recorded per side, differences listed, baseline not defaulted.

    studied: the parameters the comparison is about (a name, or a prefix of names, e.g.
    'speculative'); their differences are listed as the studied change, not held against it.
    """
    evidence, statuses = [], []
    params = {}
    recorded = []
    for r in runs:
        p = nested_get(r.manifest, "engine", "parameters")
        if (not isinstance(p, dict) or not p) and _from_outside(r):
            evidence.append(f"{r.label}: client-only run: the engine's parameters cannot be seen from outside; "
                            "record them with the deployment and compare them by hand")
            statuses.append("warn")
            p = None
        elif not isinstance(p, dict) or not p:
            evidence.append(f"{r.label}: engine parameters not recorded")
            statuses.append("warn")
            p = None
        else:
            missing = [k for k in PERFORMANCE_CRITICAL_PARAMETERS if k not in p]
            if len(missing) == len(PERFORMANCE_CRITICAL_PARAMETERS):
                evidence.append(f"{r.label}: none of the performance-critical parameters recorded")
                statuses.append("warn")
            else:
                count = len(PERFORMANCE_CRITICAL_PARAMETERS) - len(missing)
                recorded.append((r.label, f"{count} of {len(PERFORMANCE_CRITICAL_PARAMETERS)} performance-critical "
                                          "parameters recorded"
                                 + (f" (not recorded: {', '.join(missing)})" if missing else "")))
        params[r.label] = p
    evidence.extend(_grouped(recorded))
    base, treat = _sides(runs)
    compared = differing = 0
    differences: dict[str, Status] = {}  # message -> status, each difference once however many pairs show it
    for b in base:
        for t in treat:
            pb, pt = params[b.label], params[t.label]
            if pb is None or pt is None:
                continue
            compared += 1
            engines = (nested_get(b.manifest, "engine", "name"), nested_get(t.manifest, "engine", "name"))
            if engines[0] != engines[1]:
                pb, pt, _ = _one_key_per_switch(pb, pt)
            for name in sorted(set(pb) | set(pt)):
                vb, vt = pb.get(name), pt.get(name)
                if vb == vt:
                    continue
                differing += 1
                if engines[0] != engines[1] and (name not in pb or name not in pt):
                    # a setting one engine does not have: not a default the other side kept
                    engine = engines[0] if name in pb else engines[1]
                    value = vb if name in pb else vt
                    differences[f"only {engine} has {name} ({value!r})"] = "warn"
                    continue
                critical = name in PERFORMANCE_CRITICAL_PARAMETERS
                if any(name == x or name.startswith(x) for x in studied):
                    differences[f"studied: {name}: baseline {vb!r}, treatment {vt!r}"] = "pass"
                elif vb is None:
                    differences[f"baseline ran with default {name} while treatment set it ({vt!r})"] = (
                        "fail" if critical else "warn")
                elif vt is None:
                    differences[f"treatment ran with default {name} while baseline set it ({vb!r})"] = "warn"
                else:
                    differences[f"{name}: baseline {vb!r}, treatment {vt!r}"] = "warn"
    evidence.extend(differences)
    statuses.extend(differences.values())
    if compared and not differing:
        evidence.append("engine parameters identical on both sides")
    statuses.append("pass")
    return CheckResult(2, TITLES[2], _worst(statuses), evidence)


def check_model_selection(runs: Sequence[AuditedRun]) -> CheckResult:
    """Return item 3: the runs cover more than one attention type and both dense and MoE models."""
    evidence, statuses = [], []
    attention, moe, sizes, archs = set(), set(), set(), set()
    for r in runs:
        model = nested_get(r.manifest, "model")
        if not model and _from_outside(r):
            evidence.append(f"{r.label}: client-only run ({_served(r)}): the model's architecture, attention type, "
                            "dense or MoE and size cannot be seen from outside")
            statuses.append("warn")
            continue
        if not isinstance(model, dict):
            evidence.append(f"{r.label}: model not recorded")
            statuses.append("warn")
            continue
        for key, bucket in (("attention", attention), ("moe", moe), ("num_parameters", sizes), ("architecture", archs)):
            if model.get(key) is None:
                evidence.append(f"{r.label}: model {key} not recorded")
                statuses.append("warn")
            else:
                value = model[key]
                bucket.add(value if isinstance(value, (str, int, float, bool)) else repr(value))
    if attention:
        kinds = ", ".join(sorted(map(str, attention)))
        if len(attention) == 1:
            evidence.append(f"only one attention type ({kinds})")
            statuses.append("warn")
        else:
            evidence.append(f"attention types: {kinds}")
    if moe:
        if moe == {True}:
            evidence.append("MoE models only")
            statuses.append("warn")
        elif moe == {False}:
            evidence.append("dense models only")
            statuses.append("warn")
        else:
            evidence.append("dense and MoE models")
    if sizes:
        numeric = sorted(v for v in sizes if isinstance(v, (int, float)))
        shown = ", ".join([_fmt_count(v) for v in numeric] + sorted(str(v) for v in sizes if v not in numeric))
        evidence.append(f"model sizes: {shown}")
    if archs:
        evidence.append(f"architectures: {', '.join(sorted(map(str, archs)))}")
    statuses.append("pass")
    return CheckResult(3, TITLES[3], _worst(statuses), evidence)


def check_workload_diversity(runs: Sequence[AuditedRun]) -> CheckResult:
    """Return item 4: more than one workload; prompt and output length distributions stated."""
    evidence, statuses = [], []
    names = set()
    for r in runs:
        name = nested_get(r.manifest, "workload", "name")
        if name is None:
            evidence.append(f"{r.label}: workload not recorded")
            statuses.append("warn")
        else:
            names.add(str(name))
    if len(names) == 1:
        evidence.append(f"one workload only ({next(iter(names))})")
        statuses.append("warn")
    elif names:
        evidence.append(f"workloads: {', '.join(sorted(names))}")
    per_run = []
    for r in runs:
        for attr, what in (("prompt_tokens", "prompt"), ("output_tokens", "output")):
            v = getattr(r, attr)
            if v is not None and np.size(v):
                v = np.asarray(v, dtype=np.float64)
                per_run.append((r.label, f"{what} tokens P50 {_p(v, 50):.0f}, P90 {_p(v, 90):.0f}, "
                                         f"P99 {_p(v, 99):.0f} (n={v.size}); compare with production traces"))
    evidence.extend(_grouped(per_run))
    statuses.append("pass")
    return CheckResult(4, TITLES[4], _worst(statuses), evidence)


def check_latency_bounds(
    runs: Sequence[AuditedRun], *, slos: dict[str, float] | None = None, percentile: float = 99.0
) -> CheckResult:
    """Return item 5: absolute TTFT and TBT percentiles judged against SLOs (slos: {"ttft_s", "tbt_s"} seconds)."""
    if not slos:
        return CheckResult(5, TITLES[5], "warn", ["no SLO given: latency judged only relative to the baseline"])
    evidence, statuses = [], []
    for key, attr, label in (("ttft_s", "ttft_s", "TTFT"), ("tbt_s", "tbt_s", _tbt_label(runs))):
        bound = slos.get(key)
        if bound is None:
            evidence.append(f"no {label} SLO given")
            statuses.append("warn")
            continue
        for r in runs:
            v = getattr(r, attr)
            if v is None:
                evidence.append(f"{r.label}: {label} not measured")
                statuses.append("warn")
                continue
            v = np.asarray(v, dtype=np.float64)
            value = _p(v[np.isfinite(v)], percentile)
            ok = value <= bound
            evidence.append(
                f"{r.label}: {label} P{percentile:g} {_fmt_s(value)} {'meets' if ok else 'exceeds'} SLO {_fmt_s(bound)}"
            )
            statuses.append("pass" if ok else "warn")
    return CheckResult(5, TITLES[5], _worst(statuses), evidence)


def check_metric_selection(runs: Sequence[AuditedRun]) -> CheckResult:
    """Return item 6: standard metrics (TTFT, TBT, e2e) measurable in every run, each with its definition."""
    evidence, statuses = [], []
    for r in runs:
        if r.ttft_s is None or r.e2e_s is None or r.tbt_s is None:
            evidence.append(f"{r.label}: request metrics not computed")
            statuses.append("warn")
            continue
        out = np.asarray(r.output_tokens if r.output_tokens is not None else [], dtype=np.float64)
        if _from_outside(r):
            evidence.append(f"{r.label}: client-only run: TTFT, TBT per chunk, e2e, TPOT and normalized latency "
                            "measured by the client; TBT per token, TTST, scheduling delay, prefill and "
                            "preemptions are engine-only (null, not estimated)")
        if np.size(r.tbt_s) == 0 and np.any(out > 1):
            evidence.append(f"{r.label}: no per-token emission times: TBT cannot be measured"
                            if not _from_outside(r) else f"{r.label}: no chunk arrival times: TBT cannot be measured")
            statuses.append("fail")
    tbt = "TBT per chunk" if all(_from_outside(r) for r in runs) else "TBT (per token and per chunk)"
    evidence.append(f"TTFT, {tbt}, TPOT = T_d / (n - 1), e2e and normalized latency as defined in docs/metrics.md")
    statuses.append("pass")
    return CheckResult(6, TITLES[6], _worst(statuses), evidence)


def check_performance_distribution(runs: Sequence[AuditedRun]) -> CheckResult:
    """Return item 7: enough requests for tail percentiles; flags comparisons whose order flips between P50 and P99."""
    evidence, statuses, few = [], [], []
    for r in runs:
        if r.e2e_s is None:
            evidence.append(f"{r.label}: request metrics not computed")
            statuses.append("warn")
            continue
        n = int(np.size(r.e2e_s))
        if n < MIN_REQUESTS_FOR_P99:
            few.append((r.label, f"only {n} requests: its P99 is nearly its maximum"))
            statuses.append("warn")
        if r.excluded_requests:
            evidence.append(f"{r.label}: {r.excluded_requests} requests did not end 'ok' (error, timeout, "
                            "cancelled) and are left out of the percentiles, which then understate the tail: "
                            "report them beside the distribution")
            statuses.append("warn")
    evidence.extend(_grouped(few))
    base, treat = _sides(runs)
    if base and treat:
        for attr, label in (("ttft_s", "TTFT"), ("tbt_s", _tbt_label(runs)), ("e2e_s", "e2e latency")):
            a, b = _pooled(base, attr), _pooled(treat, attr)
            if a is None or b is None or not a.size or not b.size:
                continue
            signs = {q: np.sign(_p(b, q) - _p(a, q)) for q in (50, 90, 99)}
            if len({s for s in signs.values() if s != 0}) > 1:
                shown = ", ".join(f"P{q} {'treatment' if s < 0 else 'baseline'} lower" for q, s in signs.items() if s)
                evidence.append(f"{label}: the order flips across percentiles ({shown}): show the whole CDF")
                statuses.append("warn")
    evidence.append("P50 / P90 / P99 with counts and full CDFs are reported for every metric")
    statuses.append("pass")
    return CheckResult(7, TITLES[7], _worst(statuses), evidence)


def check_normalization(runs: Sequence[AuditedRun], *, hidden_factor: float = 2.0) -> CheckResult:
    """Return item 8: normalized latency / TPOT rankings checked against raw P99 scheduling delay / TBT."""
    base, treat = _sides(runs)
    outside = any(_from_outside(r) for r in runs)
    hidden = ("client-only: the scheduling delay that normalized latency folds in cannot be seen from outside; "
              "normalized latency is checked only against what the client sees")
    if not (base and treat):
        evidence = ["single side: normalized latency and TPOT are shown beside their raw parts"]
        return CheckResult(8, TITLES[8], "warn" if outside else "pass", evidence + ([hidden] if outside else []))
    evidence, statuses = [], []
    pairs = (
        ("normalized_latency_s", "normalized latency", "scheduling_delay_s", "P99 scheduling delay"),
        ("tpot_s", "TPOT", "tbt_s", f"P99 {_tbt_label(runs)}"),
    )
    if outside:
        evidence.append(hidden)
        statuses.append("warn")
        pairs = pairs[1:]
    for norm_attr, norm_label, raw_attr, raw_label in pairs:
        na, nb = _pooled(base, norm_attr), _pooled(treat, norm_attr)
        ra, rb = _pooled(base, raw_attr), _pooled(treat, raw_attr)
        if any(v is None or not v.size for v in (na, nb, ra, rb)):
            evidence.append(f"{norm_label} or {raw_label} not recorded for both sides")
            statuses.append("warn")
            continue
        mean_a, mean_b = float(na.mean()), float(nb.mean())
        raw_a, raw_b = _p(ra, 99), _p(rb, 99)
        if mean_a == mean_b:
            continue
        first, first_raw, other, other_raw = (
            ("treatment", raw_b, "baseline", raw_a) if mean_b < mean_a else ("baseline", raw_a, "treatment", raw_b)
        )
        if other_raw > 0 and first_raw >= hidden_factor * other_raw:
            evidence.append(
                f"{norm_label} ranks {first} first but {first}'s {raw_label} is {first_raw / other_raw:.1f}x {other}'s "
                f"({_fmt_s(first_raw)} vs {_fmt_s(other_raw)})"
            )
            statuses.append("warn")
        else:
            evidence.append(f"{norm_label} ranks {first} first, consistent with {raw_label}")
    statuses.append("pass")
    return CheckResult(8, TITLES[8], _worst(statuses), evidence)


# --------------------------------------------------------------------------- the audit


def audit(
    runs: Sequence[AuditedRun],
    *,
    slos: dict[str, float] | None = None,
    split_reported: bool = False,
    hidden_factor: float = 2.0,
    studied: Sequence[str] = (),
) -> list[CheckResult]:
    """Return the 8 checklist items, in order, for this set of runs (studied: see check_parameter_tuning)."""
    if not runs:
        raise ValueError("no runs to audit")
    return [
        check_implementation_fairness(runs, split_reported=split_reported),
        check_parameter_tuning(runs, studied=studied),
        check_model_selection(runs),
        check_workload_diversity(runs),
        check_latency_bounds(runs, slos=slos),
        check_metric_selection(runs),
        check_performance_distribution(runs),
        check_normalization(runs, hidden_factor=hidden_factor),
    ]


def audited_run(metrics: Any, manifest: dict[str, Any], *, label: str, side: str | None = None,
                observer: str = Observer.ENGINE, excluded_requests: int = 0) -> AuditedRun:
    """Return an AuditedRun from RequestMetrics and a manifest (client observer: TBT = per-chunk gaps)."""
    from servescope.analysis.slo import decode_gaps_s

    if observer == Observer.CLIENT:
        tbt = metrics.all_tbt_per_chunk_s()
    else:
        tbt, _ = decode_gaps_s(metrics.token_times_ns, metrics.token_offsets)
    return AuditedRun(
        label=label,
        manifest=manifest or {},
        side=side,  # type: ignore[arg-type]
        observer=observer,
        excluded_requests=excluded_requests,
        ttft_s=np.asarray(metrics.ttft_s),
        tbt_s=tbt,
        e2e_s=np.asarray(metrics.e2e_s),
        tpot_s=np.asarray(metrics.tpot_s),
        scheduling_delay_s=np.asarray(metrics.scheduling_delay_s),
        normalized_latency_s=np.asarray(metrics.normalized_latency_s),
        prompt_tokens=np.asarray(metrics.prompt_tokens),
        output_tokens=np.asarray(metrics.output_tokens),
    )


def audited_view(view: Any, manifest: dict[str, Any], *, label: str, side: str | None = None) -> AuditedRun:
    """Return an AuditedRun of a request_view.RequestView: its counted requests, its observer."""
    return audited_run(view.counted_metrics(), manifest, label=label, side=side,
                       observer=view.source or Observer.ENGINE,
                       excluded_requests=int(len(view.metrics) - np.count_nonzero(view.counted)))


def audit_run_dirs(
    baseline_dirs: Sequence[str], treatment_dirs: Sequence[str] = (), *, strict: bool = False,
    run_warnings: dict[str, list[str]] | None = None, **kwargs: Any
) -> list[CheckResult]:
    """Return audit() of run directories: each run's engine record, else its client's (request_view).

    run_warnings (when given) receives each run's problems (load_run's warnings) under its path;
    strict raises RunDirError at the first problem instead.
    """
    from servescope.analysis.request_view import request_view
    from servescope.run.data import load_run

    runs = []
    for side, dirs in (("baseline", baseline_dirs), ("treatment", treatment_dirs)):
        for d in dirs:
            run = load_run(d, strict=strict)
            if run_warnings is not None:
                run_warnings[str(d)] = list(run.warnings)
            runs.append(audited_view(request_view(run), run.manifest, label=str(d),
                                     side=side if treatment_dirs else None))
    return audit(runs, **kwargs)
