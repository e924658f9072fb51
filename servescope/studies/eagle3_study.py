"""EAGLE-3 (and MTP) on Model Runner V2: offline batches recorded by `servescope run`, one JSON per configuration.

    servescope run --out RUN -- python -m servescope.studies.eagle3_study batch --config NAME --target DIR \
        [--head DIR] [--batches 3] [--num-requests 64] [--prompt-len 512] [--output-len 256] --out DELIVERIES.json
    python -m servescope.studies.eagle3_study result RUN --deliveries DELIVERIES.json --out CONFIG.json
    python -m servescope.studies.eagle3_study grid CONFIG.json... --out GRID.json

``batch`` is the user's script: a plain offline vLLM engine (``LLM``, dummy weights) that runs one
warm-up batch (phase ``warmup``) and ``--batches`` measured ones (phase ``measured``, run/phases.py),
stepping the engine itself so that the second acceptance observer (studies/acceptance_observer.py)
sees the tokens each engine step delivers to each request (``RequestOutputKind.DELTA``).
``result`` cuts out the measured phase and writes what a configuration gave: the analysis
summary (``analyze_run``, with the per-step split of speculative_steps.py), draft / verify /
rejection-sampling host and GPU time per step, acceptance from servescope's records, from the
caller's deliveries and from vLLM's own counters, per-batch wall times, the machine, and the
checks below. It exits 1, naming each failed check, when one fails: a region that should have
been recorded and was not, GPU times missing on CUDA, the two acceptance observers disagreeing,
or the synthetic acceptance length off what the configured schedule gives by more than 4 standard
errors.
``grid`` sets every configuration against the autoregressive baseline of the same lease.

Configuration names: ``ar`` (no speculation); ``eagle3-k<K>[-a<L>]`` (EAGLE-3 head ``--head``,
K speculative tokens; with ``-a<L>`` vLLM's synthetic rejection sampler at mean acceptance length
L); ``mtp-k<K>[-a<L>]`` (the target's own MTP layers); ``ngram-k<K>`` (prompt lookup, repetitive
prompts; the CPU build's method).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

CONFIG_NAME = re.compile(r"(?P<method>ar|eagle3|mtp|ngram)(?:-k(?P<k>\d+))?(?:-a(?P<length>\d+(?:\.\d+)?))?")
WARMUP, MEASURED = "warmup", "measured"
ACCEPTANCE_TOLERANCE_SE = 4  # synthetic acceptance: |mean length - expected| <= 4 standard errors of the schedule


def parse_config(name: str) -> dict:
    """Return {"method", "k", "length"} of a configuration name; ValueError naming the forms otherwise."""
    m = CONFIG_NAME.fullmatch(name)
    if m is None or (m["method"] == "ar") != (m["k"] is None) or (m["method"] == "ar" and m["length"]):
        raise ValueError(f"unknown configuration {name!r}: ar, eagle3-k<K>[-a<L>], mtp-k<K>[-a<L>], ngram-k<K>")
    return {"method": m["method"], "k": int(m["k"]) if m["k"] else 0,
            "length": float(m["length"]) if m["length"] else None}


def speculative_config(name: str, head: str | None) -> dict | None:
    """Return vLLM's speculative_config for a configuration name (None: no speculation)."""
    c = parse_config(name)
    if c["method"] == "ar":
        return None
    spec: dict = {"method": c["method"], "num_speculative_tokens": c["k"]}
    if c["method"] == "eagle3":
        if not head:
            raise ValueError(f"{name}: an EAGLE-3 configuration needs --head")
        spec["model"] = head
    if c["method"] == "ngram":
        spec.update(prompt_lookup_min=2, prompt_lookup_max=4)
    if c["length"] is not None:
        spec.update(rejection_sample_method="synthetic", synthetic_acceptance_length=c["length"])
    return spec


# ---- batch: the user's script, run under `servescope run` ----------------------------------------
def run_batches(args: argparse.Namespace) -> dict:
    """Run the warm-up and measured batches on one engine; return what the caller saw (deliveries, times)."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from servescope.bench.load.driver_inprocess import counter_difference, vllm_counters
    from servescope.bench.workloads.prompts import SyntheticPrompts
    from servescope.run.clock import now_ns
    from servescope.run.config import RUN_DIR_ENV
    from servescope.run.phases import Phase, record_phase
    from servescope.studies.acceptance_observer import DeliveryObserver

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise SystemExit("eagle3_study batch: run it under `servescope run --out RUN -- ...` (no SERVESCOPE_RUN_DIR)")
    spec = speculative_config(args.config, args.head)
    llm = LLM(model=args.target, load_format="dummy", skip_tokenizer_init=True, max_model_len=args.max_model_len,
              speculative_config=spec, disable_log_stats=False, seed=0)
    engine = llm.llm_engine
    config = engine.model_config.hf_config
    specials = [i for i in (config.bos_token_id, config.eos_token_id, getattr(config, "pad_token_id", None))
                if isinstance(i, int)]
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False, temperature=0.0,
                            output_kind=RequestOutputKind.DELTA)
    observer = DeliveryObserver(max_tokens={})
    out = {"config": args.config, "target": args.target, "speculative_config": spec, "batches": [],
           "vllm_counters": {}}
    for p, (phase, count) in enumerate(((WARMUP, 1), (MEASURED, args.batches))):
        # each phase its own prompts: the measured batches never hit the warm-up's prefix cache
        prompts = SyntheticPrompts(engine.model_config.get_vocab_size(), specials, seed=1000 * args.seed + p)
        start, before = now_ns(), vllm_counters()
        for b in range(count):
            t0 = time.perf_counter()
            for i in range(args.num_requests):
                rid = f"{phase}-b{b}-{i}"
                observer.max_tokens[rid] = args.output_len
                engine.add_request(rid, {"prompt_token_ids": prompt_ids(prompts, args, b * args.num_requests + i)},
                                   params)
            while engine.has_unfinished_requests():
                observer.observe(engine.step())
            out["batches"].append({"phase": phase, "batch": b, "wall_s": time.perf_counter() - t0,
                                   "requests": args.num_requests,
                                   "output_tokens": sum(observer.delivered.get(f"{phase}-b{b}-{i}", 0)
                                                        for i in range(args.num_requests))})
        counters = counter_difference(before, vllm_counters())
        out["vllm_counters"][phase] = {k: v for k, v in counters.items() if k.startswith("vllm:spec_decode")}
        record_phase(run_dir, Phase(name=phase, id_prefix=phase, start_ns=start, end_ns=now_ns(),
                                    workload=workload_facts(args), measured=phase == MEASURED))
    out["deliveries"] = {rid: [[d.num_tokens, d.call, d.capped] for d in ds] for rid, ds in observer.deliveries.items()}
    return out


def prompt_ids(prompts, args: argparse.Namespace, index: int) -> list[int]:
    """Return one prompt: random ids, or (ngram) a short motif repeated, which prompt lookup can find."""
    from servescope.bench.workloads.workload import Request

    if parse_config(args.config)["method"] != "ngram":
        return prompts.token_ids(Request(0.0, args.prompt_len, args.output_len), index)
    motif = prompts.token_ids(Request(0.0, 8, args.output_len), index)
    return (motif * (args.prompt_len // 8 + 1))[: args.prompt_len]


def workload_facts(args: argparse.Namespace) -> dict:
    """Return the batch workload as the phase's manifest records it."""
    return {"name": "offline-batch", "requests_per_batch": args.num_requests, "prompt_tokens": args.prompt_len,
            "output_tokens": args.output_len, "temperature": 0.0, "seed": args.seed}


# ---- result: one configuration's JSON ----------------------------------------------------------
def required_regions(config: str, model_runner: str | None) -> list[str]:
    """Return the regions every measured step of this configuration must have recorded (names.Region)."""
    from servescope.run.names import Region

    c = parse_config(config)
    regions = [Region.EXECUTE_MODEL, Region.FORWARD, Region.SAMPLE_TOKENS, Region.SAMPLE]
    if c["method"] != "ar":
        regions += [Region.DRAFT, Region.REJECTION_SAMPLE]
        model_runner_v2 = model_runner is not None and ".gpu.model_runner." in model_runner
        if model_runner_v2 and c["method"] in ("eagle3", "mtp") and c["k"] > 1:
            regions.append(Region.DRAFT_DECODE)
    return regions


def configuration_result(run_dir: Path, deliveries_doc: dict, tbt_slo_s: float) -> dict:
    """Return one configuration's result (analysis, step split, regions, acceptance twice over, batches, checks)."""
    from servescope.analysis.iterations import region_times_ms
    from servescope.analysis.summary import analyze_run
    from servescope.run.data import load_run
    from servescope.run.directory import read_json
    from servescope.run.machine import machine_facts
    from servescope.run.phases import split_run
    from servescope.studies.acceptance_observer import Delivery, by_engine_id, compare_deliveries

    measured = split_run(run_dir)[MEASURED]
    analysis = analyze_run(measured, include_requests=False, tbt_slo_s=tbt_slo_s)
    run = load_run(measured)
    deliveries = {rid: [Delivery(*d) for d in ds] for rid, ds in deliveries_doc["deliveries"].items()
                  if rid.startswith(MEASURED + "-")}
    second = compare_deliveries(by_engine_id(deliveries, run.request_events.to_pylist()),
                                run.token_emissions.to_pylist())
    manifest = read_json(measured / "manifest.json")
    runners = sorted({read_json(p).get("model_runner") for p in (measured / "engine").glob("*worker.json")})
    batches = [b for b in deliveries_doc["batches"] if b["phase"] == MEASURED]
    walls = np.array([b["wall_s"] for b in batches])
    result = {
        "config": deliveries_doc["config"], "speculative_config": deliveries_doc["speculative_config"],
        "model_runner": runners, "engine": manifest.get("engine"),
        "machine": machine_facts(),
        "batches": {"wall_s": walls.tolist(), "mean_wall_s": float(walls.mean()) if walls.size else None,
                    "output_tokens": [b["output_tokens"] for b in batches]},
        "analysis": analysis,
        "regions_ms": region_times_ms(run.worker_regions),
        "acceptance": {
            "servescope": {k: v for k, v in (analysis.get("speculative") or {}).items() if k != "steps"} or None,
            "second_observer": {k: v for k, v in second.items() if k != "per_request"},
            "vllm_counters": deliveries_doc["vllm_counters"].get(MEASURED),
        },
    }
    result["checks"] = checks(result, run, runners[0] if runners else None)
    return result


def checks(result: dict, run, model_runner: str | None) -> dict[str, str | None]:
    """Return check name -> None when it passed, else the reason it failed (fixed before the data)."""
    import pyarrow.compute as pc

    from servescope.run.names import Region

    config = result["config"]
    c = parse_config(config)
    out: dict[str, str | None] = {}
    regions = run.worker_regions
    stepped = regions.filter(pc.is_valid(regions["step_id"])) if regions.num_rows else regions
    names = set(stepped["region"].to_pylist()) if stepped.num_rows else set()
    for name in required_regions(config, model_runner):
        out[f"region {name} recorded"] = None if name in names else f"no {name} row in {stepped.num_rows} step regions"
    if result["machine"]["gpu"] and stepped.num_rows:
        for name in set(required_regions(config, model_runner)) & names:
            rows = stepped.filter(pc.equal(stepped["region"], name))
            timed = rows.num_rows - rows["gpu_ns"].null_count
            out[f"region {name} has GPU time"] = None if timed == rows.num_rows else \
                f"{rows.num_rows - timed} of {rows.num_rows} rows without CUDA-event time"
    if c["method"] == "ar":
        return out
    split = (result["analysis"].get("speculative") or {}).get("steps")
    if split is None:
        out["steps verified drafts"] = "no step with num_spec_tokens > 0"
        return out
    for name, count in split["missing"].items():
        out[f"no {name.replace('_', ' ')}"] = None if count == 0 else f"{count} steps"
    if Region.DRAFT_DECODE in required_regions(config, model_runner):  # every proposal runs its draft loop
        counts = {name: result["regions_ms"]["host"].get(name, {}).get("n", 0) for name in (Region.DRAFT,
                                                                                              Region.DRAFT_DECODE)}
        out["a draft_decode in every draft"] = None if counts[Region.DRAFT] == counts[Region.DRAFT_DECODE] else \
            f"{counts[Region.DRAFT]} draft rows, {counts[Region.DRAFT_DECODE]} draft_decode rows"
    second = result["acceptance"]["second_observer"]
    out["second observer agrees per step and request"] = None if second["agree"] else "; ".join(second["mismatches"][:5])
    ours, counters = result["acceptance"]["servescope"], result["acceptance"]["vllm_counters"] or {}
    theirs = counters.get("vllm:spec_decode_num_accepted_tokens")
    if theirs is not None and ours is not None:
        out["accepted tokens equal vLLM's counter"] = None if ours["accepted_tokens"] == theirs else \
            f"servescope {ours['accepted_tokens']}, vLLM {theirs}"
    if c["length"] is not None and ours is not None:
        rows = [r for r in run.token_emissions.to_pylist() if r["num_draft_tokens"]]
        out["synthetic acceptance length as configured"] = acceptance_length_check(
            np.array([r["num_draft_tokens"] for r in rows]), np.array([r["num_accepted_tokens"] for r in rows]),
            c["length"], c["k"])
    return out


def synthetic_rates(length: float, k: int) -> list[float]:
    """Return vLLM's unconditional per-position acceptance rates for mean acceptance length L and k drafts.

    The minimum-variance schedule of vLLM 0.26's ``SpeculativeConfig._acceptance_length_to_rates``:
    floor(L - 1) positions always accepted, the next one with probability frac(L - 1), none after.
    """
    drafts = length - 1
    full = int(drafts)
    return ([1.0] * full + [drafts - full] + [0.0] * (k - full - 1))[:k]


def acceptance_length_check(drafted: np.ndarray, accepted: np.ndarray, length: float, k: int) -> str | None:
    """Return None when the mean acceptance length over these drafts is within 4 standard errors of what
    the synthetic sampler's schedule gives for their draft counts, else why not.

    A draft of d tokens accepts a prefix: with unconditional rates r (r_p = P(the first p + 1 are
    accepted)), its accepted count has mean sum_{p<d} r_p and variance sum_{p<d} r_p +
    2 sum_{p<q<d} r_q - (sum_{p<d} r_p)^2. The expectation uses each draft's own d, so drafts cut short
    (a token budget) do not bias it; the tolerance comes from the schedule, not from the data.
    """
    rates = np.array(synthetic_rates(length, k))
    d = np.minimum(np.asarray(drafted, dtype=np.int64), k)
    cum = np.concatenate([[0.0], np.cumsum(rates)])  # cum[d] = sum_{p<d} r_p
    pairs = np.concatenate([[0.0], np.cumsum(rates * np.arange(k))])  # sum_{q<d} q r_q = sum_{p<q<d} r_q
    mean = cum[d]
    variance = cum[d] + 2 * pairs[d] - mean ** 2
    n = max(d.size, 1)
    expected = 1 + mean.sum() / n
    bound = max(ACCEPTANCE_TOLERANCE_SE * math.sqrt(max(variance.sum(), 0.0)) / n, 1e-9)
    observed = 1 + float(np.asarray(accepted).sum()) / n
    if abs(observed - expected) <= bound:
        return None
    return (f"mean acceptance length {observed:.4f} over {d.size} drafts, the schedule of L = {length} gives "
            f"{expected:.4f} +- {bound:.4f}")


# ---- grid: every configuration against the same lease's baseline ----------------------------------
COMPARED = {"batch_wall_s": ("batches", "mean_wall_s"), "tpot_p50_s": ("summary", "tpot_s", "p50"),
            "tpot_p99_s": ("summary", "tpot_s", "p99"), "ttft_p50_s": ("summary", "ttft_s", "p50"),
            "tbt_chunk_p99_s": ("summary", "tbt_per_chunk_s", "p99")}


def value_at(r: dict, path: tuple) -> float | None:
    """Return the value of a configuration's result at a COMPARED path (None where it is missing)."""
    node = r if path[0] == "batches" else r["analysis"]
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def grid(results: list[dict]) -> dict:
    """Return per configuration its compared values and their ratio to the autoregressive baseline ``ar``."""
    by_name = {r["config"]: r for r in results}
    base = by_name.get("ar")
    base_values = {k: value_at(base, path) for k, path in COMPARED.items()} if base is not None else {}
    rows = {}
    for name, r in by_name.items():
        values = {k: value_at(r, path) for k, path in COMPARED.items()}
        row = {"values": values, "failed_checks": sorted(k for k, v in r["checks"].items() if v)}
        if base is not None and name != "ar":
            row["ratio_to_ar"] = {k: (v / base_values[k] if v and base_values[k] else None) for k, v in values.items()}
        rows[name] = row
    return {"baseline": "ar" if base else None, "configs": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m servescope.studies.eagle3_study")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="the offline batches (run it under servescope run)")
    b.add_argument("--config", required=True)
    b.add_argument("--target", required=True)
    b.add_argument("--head", default=None, help="EAGLE-3 head directory (eagle3 configurations)")
    b.add_argument("--batches", type=int, default=3)
    b.add_argument("--num-requests", type=int, default=64)
    b.add_argument("--prompt-len", type=int, default=512)
    b.add_argument("--output-len", type=int, default=256)
    b.add_argument("--max-model-len", type=int, default=2048)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    r = sub.add_parser("result", help="one configuration's JSON from its run directory")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--deliveries", required=True, type=Path)
    r.add_argument("--tbt-slo", type=float, default=0.05, help="fluidity's TBT deadline, s")
    r.add_argument("--out", required=True, type=Path)
    g = sub.add_parser("grid", help="configurations against the baseline")
    g.add_argument("results", nargs="+", type=Path)
    g.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.command == "batch":
        try:
            parse_config(args.config)
        except ValueError as exc:
            ap.error(f"--config: {exc}")
        Path(args.out).write_text(json.dumps(run_batches(args)))
        return
    if args.command == "grid":
        doc = grid([json.loads(p.read_text()) for p in args.results])
        args.out.write_text(json.dumps(doc, indent=1))
        print(json.dumps(doc["configs"]))
        return
    result = configuration_result(args.run_dir, json.loads(args.deliveries.read_text()), args.tbt_slo)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    failed = {k: v for k, v in result["checks"].items() if v}
    for name, why in failed.items():
        print(f"EAGLE3-CHECK-FAILED {result['config']}: {name}: {why}", file=sys.stderr)
    split = ((result["analysis"].get("speculative") or {}).get("steps") or {}).get("verify_steps_only", {})
    print(json.dumps({"config": result["config"], "checks_failed": len(failed),
                      "batch_wall_s": result["batches"]["wall_s"],
                      "gpu_ms_p50": {k: v["p50"] for k, v in split.get("gpu_ms", {}).items()}}))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
