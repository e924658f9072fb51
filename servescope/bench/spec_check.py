"""Speculative decoding traced on one engine: servescope's per-request acceptance vs vLLM's counters.

    python -m servescope.bench.spec_check --target DIR --draft DIR --out OUT.json
        [--k 4] [--acceptance-length 2.5] [--num-requests 64]

Runs vLLM's draft_model speculation with the synthetic rejection sampler (controlled acceptance,
dummy weights) in one process, traced, then compares the drafted / accepted token totals in
servescope's token_emissions table with vLLM's own spec-decode counters for the same run, and
reports acceptance rate, mean acceptance length and per-position acceptance from servescope's
records, and the draft / sample (rejection sampling) GPU times per step.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid

import numpy as np


def vllm_spec_counters(engine) -> dict[str, float]:
    """Return vLLM's own spec-decode counters (Prometheus metrics snapshot)."""
    metrics = engine.get_metrics() if hasattr(engine, "get_metrics") else []
    out = {}
    for m in metrics:
        if m.name.startswith("vllm:spec_decode") and hasattr(m, "value"):
            out[m.name] = out.get(m.name, 0) + float(m.value)
        elif m.name.startswith("vllm:spec_decode") and hasattr(m, "values"):
            out[m.name] = [float(v) for v in m.values]
    return out


def acceptance_from_records(run_dir: str, k: int) -> dict:
    """Return acceptance statistics computed from servescope's token_emissions table."""
    from servescope.tracer.rundir import read_table

    t = read_table(run_dir, "token_emissions").to_pydict()
    drafted = np.array([d if d is not None else 0 for d in t["num_draft_tokens"]])
    accepted = np.array([a if a is not None else 0 for a in t["num_accepted_tokens"]])
    spec_rows = drafted > 0
    per_position = [float(np.mean(accepted[spec_rows] > i)) for i in range(k)] if spec_rows.any() else []
    return {"drafts": int(spec_rows.sum()), "draft_tokens": int(drafted.sum()),
            "accepted_tokens": int(accepted.sum()),
            "acceptance_rate": float(accepted.sum() / drafted.sum()) if drafted.sum() else None,
            "mean_acceptance_length": float((accepted[spec_rows] + 1).mean()) if spec_rows.any() else None,
            "per_position_acceptance": per_position}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--method", choices=["draft_model", "ngram"], default="draft_model")
    ap.add_argument("--draft", default=None, help="draft model directory (draft_model)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--acceptance-length", type=float, default=2.5)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--run-dir", default="/tmp/spec-run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    import servescope
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    servescope.instrument(args.run_dir)
    if args.method == "draft_model":
        spec = {"method": "draft_model", "model": args.draft, "num_speculative_tokens": args.k,
                "rejection_sample_method": "synthetic", "synthetic_acceptance_length": args.acceptance_length}
    else:  # prompt lookup: repetitive prompts give it something to find
        spec = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2,
                "prompt_lookup_max": 4}
    engine = LLMEngine.from_engine_args(EngineArgs(
        model=args.target, load_format="dummy", skip_tokenizer_init=True, max_model_len=args.max_model_len,
        disable_log_stats=False, speculative_config=spec))
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False, temperature=0.0)
    vocab = engine.model_config.get_vocab_size()
    rng = np.random.default_rng(0)
    for i in range(args.num_requests):
        motif = rng.integers(10, vocab - 1, 8).tolist()
        prompt = (motif * (args.prompt_len // 8 + 1))[: args.prompt_len] if args.method == "ngram" else \
            rng.integers(10, vocab - 1, args.prompt_len).tolist()
        engine.add_request(f"{uuid.uuid4().hex[:6]}-{i}", {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        engine.step()
    counters = vllm_spec_counters(engine)
    servescope.uninstrument()
    from servescope.tracer.rundir import read_table

    regions = read_table(args.run_dir, "worker_regions").to_pydict()
    gpu = {}
    for name, g in zip(regions["region"], regions["gpu_ns"]):
        if g is not None:
            gpu.setdefault(name, []).append(g / 1e6)
    result = {"servescope": acceptance_from_records(args.run_dir, args.k), "vllm_counters": counters,
              "gpu_ms_per_step": {k: {"p50": float(np.median(v)), "p99": float(np.percentile(v, 99)), "n": len(v)}
                                  for k, v in gpu.items()}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
