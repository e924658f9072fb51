"""The speculative-decoding case study (Section 4 of Agrawal et al., 2025), reproduced with servescope.

    python -m servescope.studies.spec_study --models-dir DIR --out OUT \
        [--configs ar,ar-sync-v1,draft-k4-a2.5,ngram-k4-a2.5] [--rates 0.25,1,4,16] \
        [--concurrency 8] [--repeats 3] [--num-requests 48] [--phase-seconds 40] [--warmup 16]

One engine per configuration: vLLM's AsyncLLM in a fresh process (servescope's in-process
driver), recorded into OUT/engines/<config>/. On it run, one after another (drive_phases):
a warm-up (closed loop, other prompts, not measured), then ``--repeats`` rounds of one
replay per rate (the Azure 2023 conversation trace at its own arrival times scaled to the
rate; at most ``--phase-seconds`` of arrivals, so low rates send fewer requests) and one
closed-loop load at ``--concurrency``. Every phase has its own prompts (another seed), so no
phase hits the prefix cache of an earlier one. Afterwards each engine run is split into one
run directory per phase (OUT/runs/<config>/<phase>/), which every servescope command reads.

Configurations:
  ``ar``               autoregressive, vLLM's defaults for the target;
  ``ar-sync-v1``       autoregressive with async scheduling off and Model Runner V1: what vLLM
                       falls back to for draft_model, so the fair baseline for it;
  ``draft-k{K}-a{L}``  draft_model with K speculative tokens, vLLM's synthetic rejection sampler
                       at mean acceptance length L;
  ``ngram-k{K}``       prompt lookup; ``ngram-k{K}-a{L}`` with the synthetic sampler;
  ``eagle3-k{K}[-a{L}]`` the EAGLE-3 head given by ``--head`` (Model Runner V2 with async scheduling on a GPU);
  ``mtp-k{K}[-a{L}]``  the target's own MTP layers (a target that has them, ``--target``).

OUT/study.json holds, per phase: TTFT, TPOT, TBT per token and per chunk, e2e, scheduling
delay, fluidity at a 50 ms TBT deadline, throughput, acceptance from servescope's records next
to vLLM's own counters over the same phase, per-step GPU region times and EngineCore CPU per
step; per (configuration, load): the median and range over repeats; per configuration: the
speedup over each baseline and the crossover load where speculation stops helping.
``servescope report OUT/runs/<config>/<phase> ...`` draws the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from servescope.analysis.checklist import nested_get

TBT_DEADLINE_S = 0.05
TARGET, DRAFT, MAX_MODEL_LEN = "llama3-8b", "llama3-1b", 4096
PROMPT_CAP, OUTPUT_CAP = 2048, 256
BASELINES = ("ar", "ar-sync-v1")
# The (config, load) metrics compared across configurations: (name in a phase summary, percentile key).
COMPARED = {"e2e_p50_s": ("e2e_s", "p50"), "tpot_p50_s": ("tpot_s", "p50"), "tpot_p99_s": ("tpot_s", "p99"),
            "ttft_p50_s": ("ttft_s", "p50"), "ttft_p99_s": ("ttft_s", "p99"),
            "tbt_chunk_p99_s": ("tbt_per_chunk_s", "p99")}


def engine_setup(name: str, models_dir: Path, head: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Return (extra vLLM engine arguments, extra environment) for a configuration name (``head``: the EAGLE-3
    head's directory, for eagle3-k<K>[-a<L>])."""
    if name == "ar":
        return [], {}
    if name == "ar-sync-v1":
        return ["--no-async-scheduling"], {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    m = re.fullmatch(r"draft-k(\d+)-a([\d.]+)", name)
    if m:
        spec = {"method": "draft_model", "model": str(models_dir / DRAFT), "num_speculative_tokens": int(m[1]),
                "rejection_sample_method": "synthetic", "synthetic_acceptance_length": float(m[2])}
        return ["--speculative-config", json.dumps(spec)], {}
    m = re.fullmatch(r"ngram-k(\d+)(?:-a([\d.]+))?", name)
    if m:
        spec = {"method": "ngram", "num_speculative_tokens": int(m[1]), "prompt_lookup_min": 2,
                "prompt_lookup_max": 4}
        if m[2]:
            spec.update(rejection_sample_method="synthetic", synthetic_acceptance_length=float(m[2]))
        return ["--speculative-config", json.dumps(spec)], {}
    if re.fullmatch(r"(eagle3|mtp)-k\d+(-a[\d.]+)?", name):
        from servescope.studies.eagle3_study import speculative_config  # the one spelling of these configurations

        return ["--speculative-config", json.dumps(speculative_config(name, head))], {}
    raise ValueError(f"unknown configuration {name!r} (ar, ar-sync-v1, draft-k<K>-a<L>, ngram-k<K>[-a<L>], "
                     "eagle3-k<K>[-a<L>] with --head, mtp-k<K>[-a<L>])")


def load_names(rates: list[float], concurrency: int | None) -> list[str]:
    """Return the study's load names: 'r<rate>' per rate, 'c<concurrency>' for the closed loop."""
    return [f"r{rate:g}" for rate in rates] + ([f"c{concurrency}"] if concurrency else [])


def phase_plans(args: argparse.Namespace, vocab_size: int) -> list:
    """Return the warm-up and the measured phases of one engine, in the order they run."""
    from servescope.bench.load.driver_http import plan_load
    from servescope.bench.load.driver_inprocess import PhasePlan
    from servescope.bench.workloads.prompts import SyntheticPrompts
    from servescope.bench.workloads.catalog import load_workload

    trace = load_workload("azure-conv-2023")

    def workload(count: int):
        return trace.first(count).capped(min(PROMPT_CAP, args.max_model_len // 2), OUTPUT_CAP)

    def facts(w, **load) -> dict:
        return {"name": w.name, "requests": len(w), "caps": {"prompt_tokens": PROMPT_CAP, "output_tokens": OUTPUT_CAP},
                "temperature": args.temperature, **load}

    seed = iter(range(1000 * args.seed + 1, 1000 * args.seed + 1000))  # fresh prompts per phase
    phases = []
    if args.warmup:  # 0: no warm-up phase (a workload of 0 requests does not exist)
        w = workload(args.warmup)
        phases.append(PhasePlan("warmup", plan_load(w, SyntheticPrompts(vocab_size, seed=next(seed)), concurrency=8,
                                                    id_prefix="warmup"), facts(w, concurrency=8), measured=False,
                                temperature=args.temperature))
    for rep in range(args.repeats):
        for rate in args.rates:
            w = workload(min(args.num_requests, max(4, math.ceil(rate * args.phase_seconds))))
            span = float(w.arrival_s[-1] - w.arrival_s[0]) or 1.0
            time_scale = (len(w) - 1) / span / rate  # stretch the trace's gaps to the target rate
            name = f"r{rate:g}-rep{rep}"
            plan = plan_load(w, SyntheticPrompts(vocab_size, seed=next(seed)), time_scale=time_scale, id_prefix=name)
            phases.append(PhasePlan(name, plan, facts(w, target_rate_per_s=rate, time_scale=time_scale, repeat=rep),
                                    temperature=args.temperature))
        if args.concurrency:
            w = workload(args.closed_requests or args.num_requests)
            name = f"c{args.concurrency}-rep{rep}"
            plan = plan_load(w, SyntheticPrompts(vocab_size, seed=next(seed)), concurrency=args.concurrency,
                             id_prefix=name)
            phases.append(PhasePlan(name, plan, facts(w, concurrency=args.concurrency, repeat=rep),
                                    temperature=args.temperature))
    return phases


def run_engine(config: str, args: argparse.Namespace, run_dir: Path) -> None:
    """Record every phase of one configuration on one engine (called in its own process)."""
    from servescope.bench.load.driver_inprocess import drive_phases
    from servescope.run.compact import close_run
    from servescope.run.directory import write_json

    extra_args, _ = engine_setup(config, args.models_dir, args.head)
    engine_args = ["--model", str(args.models_dir / args.target), "--load-format", "dummy",
                   "--skip-tokenizer-init", "--max-model-len", str(args.max_model_len), *extra_args]
    vocab = json.loads((args.models_dir / args.target / "config.json").read_text())["vocab_size"]
    write_json(run_dir / "workload.json", {"name": "azure-conv-2023", "study": {"configuration": config,
                                                                                "seed": args.seed}})

    def progress(phase, results) -> None:
        print(json.dumps({"config": config, "phase": phase.name, "results": phase.extra["results"],
                          "seconds": round((phase.end_ns - phase.start_ns) / 1e9, 1)}), flush=True)

    asyncio.run(drive_phases(engine_args, phase_plans(args, vocab), run_dir, on_phase=progress))
    close_run(run_dir)


def summarize_phase(run_dir: Path, vllm_counters: dict) -> dict:
    """Return the study's numbers for one phase's run directory."""
    from servescope.analysis.iterations import region_times_ms
    from servescope.analysis.summary import analyze_run
    from servescope.run.tables import read_table

    result = analyze_run(run_dir, tbt_slo_s=TBT_DEADLINE_S, include_requests=False)
    s = result["summary"]
    out = {k: s.get(k) for k in ("ttft_s", "tpot_s", "tbt_per_token_s", "tbt_per_chunk_s", "e2e_s",
                                 "scheduling_delay_s", "fluidity_index")}
    out["fluidity"] = result.get("fluidity")
    out["run"] = result.get("run")
    spec = result.get("speculative")
    if spec:
        out["acceptance"] = {"rate": spec["acceptance_rate"], "mean_length": spec["mean_acceptance_length"],
                             "per_position": spec["acceptance_per_position"],
                             "proposal_share": proposal_share(read_table(run_dir, "token_emissions")),
                             "agrees_with_vllm": acceptance_agreement(spec, vllm_counters)}
    times = region_times_ms(read_table(run_dir, "worker_regions"))
    out["gpu_ms"], out["host_ms"], out["host_cpu_ms"] = times["gpu"], times["host"], times["host_cpu"]
    out["switches"] = {kind: times[kind] for kind in ("voluntary_switches", "involuntary_switches")}
    steps = read_table(run_dir, "steps").to_pydict()
    if steps["step_id"]:
        cpu = [(a - b) + (d - c) for a, b, c, d in zip(steps["schedule_end_ns"], steps["schedule_start_ns"],
                                                        steps["update_start_ns"], steps["update_end_ns"])]
        out["engine_cpu_ms_per_step_p50"] = float(np.median(cpu)) / 1e6
    return out


def proposal_share(token_emissions) -> float | None:
    """Return the share of decode emissions (a request's rows after its first) that verified a draft."""
    rows = token_emissions.to_pydict()
    requests = len(set(rows["request_id"]))
    decode_rows = len(rows["request_id"]) - requests
    with_drafts = sum(1 for n in rows["num_draft_tokens"] if n)
    return with_drafts / decode_rows if decode_rows > 0 else None


def acceptance_agreement(spec: dict, counters: dict) -> dict:
    """Return servescope's drafted / accepted totals beside vLLM's counters over the same phase."""
    pairs = {"drafts": "vllm:spec_decode_num_drafts", "draft_tokens": "vllm:spec_decode_num_draft_tokens",
             "accepted_tokens": "vllm:spec_decode_num_accepted_tokens",
             "accepted_per_position": "vllm:spec_decode_num_accepted_tokens_per_pos"}
    out = {key: {"servescope": spec.get(key), "vllm": counters.get(name)} for key, name in pairs.items()}
    out["equal"] = all(_as_ints(v["servescope"]) == _as_ints(v["vllm"]) for v in out.values())
    return out


def _as_ints(value):
    return [round(v) for v in value] if isinstance(value, list) else (None if value is None else round(value))


def aggregate(points: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Return config -> load -> metric -> {median, min, max, repeats} over the repeats of each load."""
    grouped: dict = {}
    for p in points.values():
        if "error" in p:
            continue
        grouped.setdefault(p["config"], {}).setdefault(p["load"], []).append(p)
    out: dict = {}
    for config, loads in grouped.items():
        for load, reps in loads.items():
            metrics = {name: [nested_get(r, *path) for r in reps] for name, path in COMPARED.items()}
            metrics["output_tokens_per_s"] = [nested_get(r, "run", "output_tokens_per_s") for r in reps]
            metrics["fluidity_miss_rate"] = [nested_get(r, "fluidity", "service_miss_rate") for r in reps]
            out.setdefault(config, {})[load] = {name: _spread(values) for name, values in metrics.items()}
    return out


def _spread(values: list) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "repeats": 0}
    return {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "repeats": len(v)}


def speedups(agg: dict, rates: list[float]) -> dict:
    """Return config -> baseline -> metric -> per-rate speedup (baseline median / config median; > 1 helps),
    whether each is resolved (the two configurations' ranges over repeats do not overlap), and the
    crossover rate: the lowest load where speculation stops helping, interpolated in log(rate).

    A configuration tagged <config>@TAG (another machine lease, spec_study_report) is compared
    with the baselines of its own tag where they were measured, else with the untagged ones.
    """
    out: dict = {}
    for config, loads in agg.items():
        name, _, tag = config.partition("@")
        if name in BASELINES:
            continue
        for plain in BASELINES:
            baseline = f"{plain}@{tag}" if tag and f"{plain}@{tag}" in agg else plain
            if baseline not in agg:
                continue
            for metric in ("e2e_p50_s", "tpot_p50_s"):
                ratio, resolved = ratios(agg[baseline], loads, metric, rates)
                out.setdefault(config, {}).setdefault(baseline, {})[metric] = {
                    "rates": rates, "speedup": ratio, "resolved": resolved,
                    "crossover_rate": crossover(rates, ratio, resolved)}
    return out


def ratios(reference: dict, loads: dict, metric: str, rates: list[float]) -> tuple[list, list]:
    """Return per rate (reference median / median of loads, whether the repeats' ranges are apart)."""
    ratio, resolved = [], []
    for rate in rates:
        ours = nested_get(loads, f"r{rate:g}", metric)
        theirs = nested_get(reference, f"r{rate:g}", metric)
        known = bool(ours and theirs and ours["median"] and theirs["median"])
        ratio.append(theirs["median"] / ours["median"] if known else None)
        resolved.append(known and (ours["max"] < theirs["min"] or theirs["max"] < ours["min"]))
    return ratio, resolved


def crossover(rates: list[float], speedup: list[float | None], resolved: list[bool] | None = None
              ) -> float | str | None:
    """Return the rate at which speedup first falls to 1 (log-linear between measured rates),
    'never helps' if it is below 1 at the lowest rate, 'beyond the highest rate' if it stays above.

    resolved (per rate, whether the difference exceeds the repeats' ranges): a crossing that
    rests on an unresolved point is returned as text, '~R (not resolved)', and with no
    resolved point at all the answer is 'no resolved difference'.
    """
    resolved = resolved if resolved is not None else [True] * len(rates)
    known = [(r, s, ok) for r, s, ok in zip(rates, speedup, resolved) if s is not None]
    if not known:
        return None
    if not any(ok for _, _, ok in known):
        return "no resolved difference"
    if known[0][1] < 1:
        return "never helps" if known[0][2] else f"~{known[0][0]:g} or lower (not resolved)"
    for (r0, s0, ok0), (r1, s1, ok1) in zip(known, known[1:]):
        if s1 < 1 <= s0:
            f = (s0 - 1) / (s0 - s1)
            rate = float(math.exp(math.log(r0) + f * (math.log(r1) - math.log(r0))))
            return rate if ok0 and ok1 else f"~{rate:.2g} (not resolved)"
    return "beyond the highest rate"


def study_one_config(config: str, args: argparse.Namespace, points: dict) -> None:
    """Run one configuration's engine in a child process, split its phases, summarise them into points."""
    from servescope.run.phases import read_phases, split_run

    run_dir = args.out / "engines" / config
    _, env = engine_setup(config, args.models_dir, args.head)
    child = [sys.executable, "-m", "servescope.studies.spec_study", *args.passthrough, "--engine", config, str(run_dir)]
    try:
        # the worker thread's CPU time per region (thread_usage.py): where the drafter's host time goes
        child_env = {**os.environ, "SERVESCOPE_THREAD_USAGE": "1", **env}
        code = subprocess.run(child, env=child_env, timeout=args.engine_timeout).returncode
    except subprocess.TimeoutExpired:  # keep the phases that finished
        code = f"killed after {args.engine_timeout} s"
    phases = {p.name: p for p in read_phases(run_dir)} if run_dir.exists() else {}
    if code != 0 or not phases:
        points[f"{config}/engine"] = {"config": config, "error": f"engine process: exit {code} "
                                                                  f"after {len(phases)} phases"}
    if not phases:
        return
    paths = split_run(run_dir, args.out / "runs" / config)
    for name, phase in phases.items():
        if not phase.measured:
            continue
        key = f"{config}/{name}"
        load = name.rsplit("-rep", 1)[0]
        try:
            points[key] = {"config": config, "load": load, "repeat": phase.workload.get("repeat"),
                           "run_dir": str(paths[name]), "vllm_counters": phase.extra.get("vllm_counters"),
                           **summarize_phase(paths[name], phase.extra.get("vllm_counters") or {})}
        except Exception as exc:  # one unreadable phase does not lose the others
            points[key] = {"config": config, "load": load, "error": repr(exc)}


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m servescope.studies.spec_study")
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default="ar,ar-sync-v1,draft-k4-a2.5,ngram-k4-a2.5")
    ap.add_argument("--rates", default="0.25,1,4,16", help="replay rates, requests/s")
    ap.add_argument("--concurrency", type=int, default=8, help="closed-loop load's concurrency (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-requests", type=int, default=48, help="requests per phase at most")
    ap.add_argument("--closed-requests", type=int, default=None,
                    help="requests of the closed-loop phase (default: --num-requests); a replay at a high rate needs "
                         "many requests for --phase-seconds of arrivals, the closed loop does not")
    ap.add_argument("--phase-seconds", type=float, default=40.0,
                    help="a replay sends at most this many seconds of arrivals")
    ap.add_argument("--warmup", type=int, default=16, help="warm-up requests before the measured phases (0: none)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default=TARGET, help="target model's directory name in --models-dir")
    ap.add_argument("--draft", default=DRAFT, help="draft model's directory name in --models-dir")
    ap.add_argument("--head", default=None, help="the EAGLE-3 head's directory (eagle3-k<K>[-a<L>] configurations)")
    ap.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    ap.add_argument("--engine-timeout", type=float, default=None,
                    help="stop a configuration's engine after this many seconds, keeping its finished phases")
    ap.add_argument("--engine", nargs=2, metavar=("CONFIG", "RUN_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.passthrough = list(argv if argv is not None else sys.argv[1:])
    args.rates = sorted(float(r) for r in args.rates.split(",") if r)
    args.configs = [c for c in args.configs.split(",") if c]
    for config in args.configs:
        try:
            engine_setup(config, args.models_dir, args.head)  # an unknown name fails before any engine starts
        except ValueError as exc:
            ap.error(str(exc))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    globals().update(DRAFT=args.draft)
    if args.engine:
        config, run_dir = args.engine
        run_engine(config, args, Path(run_dir))
        return
    points: dict = {}
    for config in args.configs:
        study_one_config(config, args, points)
        agg = aggregate(points)
        study = {"setup": {k: v for k, v in vars(args).items() if k not in ("passthrough", "engine")},
                 "points": points, "aggregate": agg, "speedup": speedups(agg, args.rates)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "study.json").write_text(json.dumps(study, indent=1, default=str))
    failed = [f"{key} ({p['error']})" for key, p in points.items() if "error" in p]
    if failed:  # a configuration or phase that measured nothing is never a silent success
        sys.exit(f"spec_study: {args.out / 'study.json'} written, but not measured: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
