"""A plain transformers continuous-batching offline script, as a user writes one: no servescope import anywhere.

`servescope overhead --engine transformers` runs this file by path, untraced and under `servescope run`
(which reaches transformers through its sitecustomize), one fresh process per arm: the model built
from MODEL's config (random weights, seed 0; its own weights when the directory has safetensors),
warm-up batches, then measured batches of the same shape through ``model.generate_batch`` with a
persistent manager, the same prompts every batch by default (``--prompts``: as offline.py, whose
prompts these are for the same seed and lengths). generate_batch returns when the whole batch is done, so only batch times are
seen by the caller (no per-token times: the harness reports throughput only). Writes one JSON
document to OUT like offline.py's.

usage: transformers_offline.py MODEL OUT [--batches 6] [--warmup-batches 1] [--num-requests 256]
       [--prompt-len 512] [--output-len 128] [--engine-args JSON] [--seed 0] [--prompts repeated|fresh]
--engine-args: attn_implementation (default sdpa), num_blocks, max_batch_tokens, max_requests_per_batch
(ContinuousBatchingConfig; on the CPU num_blocks defaults to 512, as transformers would otherwise size
the cache from the host's free memory).
"""

import argparse
import json
import random
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--warmup-batches", type=int, default=1)
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--engine-args", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", choices=("repeated", "fresh"), default="repeated",
                    help="repeated: the same prompts every batch; fresh: new prompts per batch (as offline.py)")
    args = ap.parse_args()
    engine_args = json.loads(args.engine_args)

    import os

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attn = engine_args.get("attn_implementation", "sdpa")
    if any(name.endswith(".safetensors") for name in os.listdir(args.model)):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto", attn_implementation=attn,
                                                     device_map=device)
    else:
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.model)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=config.dtype, attn_implementation=attn)
    start_s = time.perf_counter() - started
    vocab = min(30000, model.config.vocab_size)
    rng = random.Random(args.seed)
    generation = GenerationConfig(max_new_tokens=args.output_len, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, eos_token_id=-1)
    batching = ContinuousBatchingConfig(
        num_blocks=engine_args.get("num_blocks", None if device == "cuda" else 512),
        max_batch_tokens=engine_args.get("max_batch_tokens"),
        max_requests_per_batch=engine_args.get("max_requests_per_batch"))

    def draw() -> list[list[int]]:
        return [[rng.randrange(10, vocab - 1) for _ in range(args.prompt_len)] for _ in range(args.num_requests)]

    repeated = draw() if args.prompts == "repeated" else None  # fresh: batch k gets the (k+1)th draw

    def batch() -> dict:
        prompts = repeated if args.prompts == "repeated" else draw()
        t0 = time.monotonic_ns()
        outs = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching,
                                    persistent_manager=True)
        wall_ns = time.monotonic_ns() - t0
        return {"wall_ns": wall_ns, "output_tokens": sum(len(o.generated_tokens) for o in outs.values()),
                "requests": [], "tokens_per_chunk": []}

    for _ in range(args.warmup_batches):
        batch()
    measured = [batch() for _ in range(args.batches)]
    model.destroy_cached_continuous_batching_manager()
    expected = args.num_requests * args.output_len
    bad = [i for i, b in enumerate(measured) if b["output_tokens"] != expected]
    if bad:
        sys.exit(f"transformers_offline.py: batches {bad} did not produce {expected} output tokens")
    with open(args.out, "w") as f:
        json.dump({"load": "offline", "engine": "transformers", "prompts": args.prompts, "engine_start_s": start_s,
                   "batches": measured,
                   "servescope_in_this_process": any(m.split(".")[0] == "servescope" for m in sys.modules)}, f)


if __name__ == "__main__":
    main()
