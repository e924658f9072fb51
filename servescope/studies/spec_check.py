"""Speculative decoding traced on one engine: servescope's per-request acceptance vs vLLM's counters.

    python -m servescope.studies.spec_check --target DIR --draft DIR --out OUT.json
        [--k 4] [--acceptance-length 2.5] [--num-requests 64]

Runs vLLM's draft_model speculation with the synthetic rejection sampler (controlled acceptance,
dummy weights; or ngram prompt lookup) in one process, traced, then compares the drafted /
accepted token totals in servescope's token_emissions table with vLLM's own spec-decode counters
for the same run, and reports acceptance rate, mean acceptance length and per-position acceptance
from servescope's records, and the draft / sample (rejection sampling) GPU times per step.

Both of those read the scheduler's ``make_spec_decoding_stats`` call. A second observer does not:
the script reads ``LLMEngine.step()``'s outputs as the caller gets them (``RequestOutputKind.DELTA``,
n tokens delivered by one step = n - 1 accepted) and sets them against token_emissions per step and
per request (``second_observer`` in the result; studies/acceptance_observer.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

import numpy as np


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
    from servescope.bench.load.driver_inprocess import vllm_counters
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.llm_engine import LLMEngine

    from servescope.studies.acceptance_observer import DeliveryObserver, by_engine_id, compare_deliveries

    servescope.instrument(args.run_dir, engines=["vllm"])
    if args.method == "draft_model":
        spec = {"method": "draft_model", "model": args.draft, "num_speculative_tokens": args.k,
                "rejection_sample_method": "synthetic", "synthetic_acceptance_length": args.acceptance_length}
    else:  # prompt lookup: repetitive prompts give it something to find
        spec = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2,
                "prompt_lookup_max": 4}
    engine = LLMEngine.from_engine_args(EngineArgs(
        model=args.target, load_format="dummy", skip_tokenizer_init=True, max_model_len=args.max_model_len,
        disable_log_stats=False, speculative_config=spec))
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False,
                            temperature=0.0, output_kind=RequestOutputKind.DELTA)  # each step's new tokens: the second observer
    vocab = engine.model_config.get_vocab_size()
    rng = np.random.default_rng(0)
    observer = DeliveryObserver(max_tokens={})
    for i in range(args.num_requests):
        motif = rng.integers(10, vocab - 1, 8).tolist()
        prompt = (motif * (args.prompt_len // 8 + 1))[: args.prompt_len] if args.method == "ngram" else \
            rng.integers(10, vocab - 1, args.prompt_len).tolist()
        request_id = f"{uuid.uuid4().hex[:6]}-{i}"
        observer.max_tokens[request_id] = args.output_len
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        observer.observe(engine.step())
    counters = {k: v for k, v in vllm_counters().items() if k.startswith("vllm:spec_decode")}
    servescope.uninstrument()
    from servescope.analysis.iterations import region_times_ms, speculative_summary
    from servescope.run.data import load_run

    from servescope.run.machine import machine_facts

    run = load_run(args.run_dir)
    deliveries = by_engine_id(observer.deliveries, run.request_events.to_pylist())
    second = compare_deliveries(deliveries, run.token_emissions.to_pylist())
    result = {"servescope": speculative_summary(run), "vllm_counters": counters,
              "second_observer": {k: v for k, v in second.items() if k != "per_request"},
              "second_observer_per_request": second["per_request"],
              "gpu_ms_per_step": region_times_ms(run.worker_regions)["gpu"],
              "machine": machine_facts(["python", "-m", "servescope.studies.spec_check", *(argv or sys.argv[1:])])}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
