"""The H100 validation behind docs/gpu-validation.md: overhead and accuracy of servescope on vLLM.

    python -m servescope.studies.gpu_validation --models-dir DIR --out OUT [--only NAME ...]

Cases (each one engine, each result a JSON file in OUT):
  graphs:  llama3-8b, Model Runner V2, CUDA graphs, async scheduling; tracing toggled off/on on one
           engine, 3 repeats each, then one batch under torch.profiler to compare GPU times.
  eager:   the same with enforce_eager.
  moe:     olmoe-1b-7b (Model Runner V1), toggled off/on.
  spec:    llama3-8b + draft_model llama3-1b (k=4, synthetic acceptance 2.5), toggled off/on, then one
           batch under torch.profiler: draft + verify + rejection-sampling GPU times vs the profiler's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from servescope.overhead.toggle import run_overhead

CASES = {
    "graphs": dict(model="llama3-8b", engine_args={"max_model_len": 2048}, profile=64),
    "eager": dict(model="llama3-8b", engine_args={"max_model_len": 2048, "enforce_eager": True}, profile=32),
    "moe": dict(model="olmoe-1b-7b", engine_args={"max_model_len": 2048}, profile=0),
    "spec": dict(model="llama3-8b", profile=16, engine_args={"max_model_len": 2048, "speculative_config": {
        "method": "draft_model", "model": "{models}/llama3-1b", "num_speculative_tokens": 4,
        "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2.5}}),
}


def run_case(name: str, models_dir: Path, out: Path, repeats: int, num_requests: int) -> dict:
    case = CASES[name]
    t0 = time.time()
    engine_args = json.loads(json.dumps(case["engine_args"]).replace("{models}", str(models_dir)))
    report = run_overhead(str(models_dir / case["model"]), engine_args=engine_args, load="offline",
                          method="toggle", repeats=repeats, num_requests=num_requests, prompt_len=512,
                          output_len=128, out_dir=out / name, profile_requests=case["profile"])
    report["case"] = name
    report["seconds"] = time.time() - t0
    return report


def main(argv=None) -> None:
    from servescope.run.machine import machine_facts

    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-requests", type=int, default=256)
    args = ap.parse_args(argv)
    for name in args.only:
        try:
            report = run_case(name, args.models_dir, args.out, args.repeats, args.num_requests)
        except Exception as exc:  # keep the other cases
            report = {"case": name, "error": repr(exc)}
        report["machine"] = machine_facts(["python", "-m", "servescope.studies.gpu_validation",
                                           *(argv if argv is not None else sys.argv[1:])])
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
        brief = {k: report.get(k) for k in ("case", "seconds", "error")}
        for k, v in report.get("change", {}).items():
            brief[k] = f"{v['off_median']:.4g} -> {v['on_median']:.4g} ({100 * (v['relative_change'] or 0):+.2f}%)"
        if report.get("profiled"):
            brief["profiled"] = report["profiled"]
        print(json.dumps(brief, indent=1), flush=True)


if __name__ == "__main__":
    main()
