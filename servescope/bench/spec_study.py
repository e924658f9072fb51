"""The speculative-decoding case study (Section 4 of Agrawal et al., 2025), reproduced with servescope.

    python -m servescope.bench.spec_study --models-dir DIR --out OUT \
        [--configs ar,draft-k4-a2.5,...] [--rates 1,4] [--num-requests 64] [--repeats 1]

Each (configuration, rate, repeat) is one recorded run: vLLM's AsyncLLM in a fresh process
(servescope's in-process driver), the Azure 2023 conversation trace replayed at its own arrival
times scaled to the rate, prompts and outputs capped to fit the model. Configurations:
``ar`` (autoregressive), ``draft-k{K}-a{L}`` (draft_model with K speculative tokens and
vLLM's synthetic rejection sampler at mean acceptance length L), ``ngram-k{K}``.
Afterwards every run is analysed (TBT per token and per chunk, TPOT P50 vs P99, TTFT,
fluidity at a 50 ms TBT deadline, acceptance, per-step GPU times) into OUT/study.json;
`servescope report OUT/runs/*` draws the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

TBT_DEADLINE_S = 0.05


TARGET, DRAFT, MAX_MODEL_LEN = "llama3-8b", "llama3-1b", 4096


def speculative_config(name: str, models_dir: Path) -> dict | None:
    """Return vLLM's speculative_config for a configuration name (None for autoregressive)."""
    if name == "ar":
        return None
    m = re.fullmatch(r"draft-k(\d+)-a([\d.]+)", name)
    if m:
        return {"method": "draft_model", "model": str(models_dir / DRAFT), "num_speculative_tokens": int(m[1]),
                "rejection_sample_method": "synthetic", "synthetic_acceptance_length": float(m[2])}
    m = re.fullmatch(r"ngram-k(\d+)", name)
    if m:
        return {"method": "ngram", "num_speculative_tokens": int(m[1]), "prompt_lookup_min": 2,
                "prompt_lookup_max": 4}
    raise ValueError(f"unknown configuration {name!r}")


def run_one(config: str, rate: float, models_dir: Path, run_dir: Path, num_requests: int, seed: int) -> None:
    """Record one run (called in its own process)."""
    from servescope.bench.driver_http import plan_load
    from servescope.bench.driver_inprocess import drive_inprocess
    from servescope.bench.prompts import SyntheticPrompts
    from servescope.bench.workloads import load_workload
    from servescope.tracer.manifest import write_manifest
    from servescope.tracer.rundir import write_json

    workload = load_workload("azure-conv-2023").first(num_requests).capped(min(2048, MAX_MODEL_LEN // 2), 256)
    span = float(workload.arrival_s[-1] - workload.arrival_s[0]) or 1.0
    time_scale = span and (len(workload) - 1) / span / rate  # stretch the trace's gaps to the target rate
    vocab = json.loads((models_dir / TARGET / "config.json").read_text())["vocab_size"]
    plan = plan_load(workload, SyntheticPrompts(vocab_size=vocab, seed=seed), time_scale=time_scale, seed=seed)
    args = ["--model", str(models_dir / TARGET), "--load-format", "dummy", "--skip-tokenizer-init",
            "--max-model-len", str(MAX_MODEL_LEN)]
    spec = speculative_config(config, models_dir)
    if spec is not None:
        args += ["--speculative-config", json.dumps(spec)]
    write_json(run_dir / "workload.json", {"name": workload.name, "requests": len(workload), "target_rate_per_s": rate,
                                           "time_scale": time_scale,
                                           "caps": {"prompt_tokens": 2048, "output_tokens": 256},
                                           "study": {"configuration": config, "seed": seed}})
    asyncio.run(drive_inprocess(args, plan, run_dir))
    write_manifest(run_dir)


def summarize_run(run_dir: Path) -> dict:
    """Return the study's numbers for one run."""
    from servescope.analysis.iterations import region_times_ms
    from servescope.analysis.summary import analyze_run
    from servescope.tracer.rundir import read_table

    result = analyze_run(run_dir, tbt_slo_s=TBT_DEADLINE_S, include_requests=False)
    s = result["summary"]
    out = {k: s.get(k) for k in ("ttft_s", "tpot_s", "tbt_per_token_s", "tbt_per_chunk_s", "e2e_s",
                                 "scheduling_delay_s", "fluidity_index")}
    out["fluidity"] = result.get("fluidity")
    out["run"] = result.get("run")
    spec = result.get("speculative")
    if spec:
        out["acceptance"] = {"rate": spec["acceptance_rate"], "mean_length": spec["mean_acceptance_length"],
                             "per_position": spec["acceptance_per_position"]}
    times = region_times_ms(read_table(run_dir, "worker_regions"))
    out["gpu_ms"], out["host_ms"] = times["gpu"], times["host"]
    steps = read_table(run_dir, "steps").to_pydict()
    if steps["step_id"]:
        cpu = [(a - b) + (d - c) for a, b, c, d in zip(steps["schedule_end_ns"], steps["schedule_start_ns"],
                                                        steps["update_start_ns"], steps["update_end_ns"])]
        out["engine_cpu_ms_per_step_p50"] = float(np.median(cpu)) / 1e6
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default="ar,draft-k4-a2.5")
    ap.add_argument("--rates", default="1,4")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", nargs=3, metavar=("CONFIG", "RATE", "RUN_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default=TARGET, help="target model's directory name in --models-dir")
    ap.add_argument("--draft", default=DRAFT, help="draft model's directory name in --models-dir")
    ap.add_argument("--max-model-len", type=int, default=4096)
    args = ap.parse_args(argv)
    globals().update(TARGET=args.target, DRAFT=args.draft, MAX_MODEL_LEN=args.max_model_len)
    if args.one:
        config, rate, run_dir = args.one
        run_one(config, float(rate), args.models_dir, Path(run_dir), args.num_requests, args.seed)
        return
    study = {}
    for config in args.configs.split(","):
        for rate in args.rates.split(","):
            for rep in range(args.repeats):
                name = f"{config}-r{rate}-{rep}"
                run_dir = args.out / "runs" / name
                proc = subprocess.run([sys.executable, "-m", "servescope.bench.spec_study", "--models-dir",
                                       str(args.models_dir), "--out", str(args.out), "--num-requests",
                                       str(args.num_requests), "--seed", str(rep), "--target", args.target,
                                       "--draft", args.draft, "--max-model-len", str(args.max_model_len),
                                       "--one", config, rate, str(run_dir)])
                try:
                    study[name] = {"config": config, "rate": float(rate), "repeat": rep, "exit": proc.returncode,
                                   **summarize_run(run_dir)}
                except Exception as exc:
                    study[name] = {"config": config, "rate": float(rate), "repeat": rep, "error": repr(exc)}
                print(json.dumps({name: {k: study[name].get(k) for k in ("exit", "error", "acceptance")}}), flush=True)
                (args.out / "study.json").write_text(json.dumps(study, indent=1, default=str))


if __name__ == "__main__":
    main()
