"""A plain vLLM offline script, as a user writes one: no servescope import anywhere.

`servescope overhead` runs this file by path, untraced and under `servescope run`, one fresh process
per arm. It builds vllm.LLM in vLLM's default process layout (the EngineCore in its own process),
runs warm-up batches, then measured batches of the same shape, and drives each batch as
LLM.generate does (LLMEngine.step until done). By default every batch sends the same prompts
(``--prompts repeated``, as a user script that builds its prompts once does): after the warm-up vLLM's
prefix cache serves their prefill and the measured batches are decode-bound, where the host's share of
a step, and so a tracer's cost, is largest; ``--prompts fresh`` draws new prompts per batch (each batch
then prefills 256 x 512 tokens and the GPU's prefill hides host work). By default each request's output comes once, when it
finishes (LLM.generate's FINAL_ONLY): the caller sees the batch time and each request's end-to-end
latency; ``--outputs delta`` delivers every step's new tokens (TTFT and TBT too, but vLLM's front end
then builds a RequestOutput per request per step, which makes it the bottleneck of the batch). Writes one JSON document to OUT: per measured batch its wall time,
output tokens, and per request the arrival times of its outputs (ns from the batch start).

usage: offline.py MODEL OUT [--batches 6] [--warmup-batches 1] [--num-requests 256]
                  [--prompt-len 512] [--output-len 128] [--engine-args JSON] [--seed 0]
                  [--prompts repeated|fresh] [--outputs final|delta]
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
    ap.add_argument("--outputs", choices=("final", "delta"), default="final",
                    help="final: as LLM.generate (each request's output once, when it finishes: batch time and e2e); "
                         "delta: every step's new tokens (TTFT and TBT too, at the price of a busier front end)")
    ap.add_argument("--prompts", choices=("repeated", "fresh"), default="repeated",
                    help="repeated: the same prompts every batch (prefix-cached prefill: decode-bound batches); "
                         "fresh: new prompts per batch (prefill-bound)")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine_args = {"load_format": "dummy", "skip_tokenizer_init": True, **json.loads(args.engine_args)}
    started = time.perf_counter()
    llm = LLM(model=args.model, **engine_args)
    start_s = time.perf_counter() - started
    engine = llm.llm_engine
    vocab = min(engine.model_config.get_vocab_size(), 30000)
    kind = RequestOutputKind.FINAL_ONLY if args.outputs == "final" else RequestOutputKind.DELTA
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False, output_kind=kind)
    rng = random.Random(args.seed)

    def draw() -> list[list[int]]:
        return [[rng.randrange(10, vocab - 1) for _ in range(args.prompt_len)] for _ in range(args.num_requests)]

    repeated = draw() if args.prompts == "repeated" else None  # fresh: batch k gets the (k+1)th draw

    def batch(index: int) -> dict:
        prompts = repeated if args.prompts == "repeated" else draw()
        ids = [f"b{index}-{i}" for i in range(args.num_requests)]
        times = {rid: [] for rid in ids}
        t0 = time.monotonic_ns()
        for rid, prompt in zip(ids, prompts):
            engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                n = len(out.outputs[0].token_ids)
                if n:  # final: one output per request, at its end (no first-token time: TTFT / TBT are not seen)
                    times[out.request_id].append((time.monotonic_ns() - t0, n))
        wall_ns = time.monotonic_ns() - t0
        return {"wall_ns": wall_ns, "output_tokens": sum(n for ts in times.values() for _, n in ts),
                "requests": [[t for t, _ in ts] for ts in times.values()],
                "tokens_per_chunk": [[n for _, n in ts] for ts in times.values()]}

    for w in range(args.warmup_batches):
        batch(-1 - w)
    measured = [batch(i) for i in range(args.batches)]
    expected = args.num_requests * args.output_len
    bad = [i for i, b in enumerate(measured) if b["output_tokens"] != expected]
    if bad:
        sys.exit(f"offline.py: batches {bad} did not produce {expected} output tokens")
    with open(args.out, "w") as f:
        json.dump({"load": "offline", "outputs": args.outputs, "prompts": args.prompts, "engine_start_s": start_s, "batches": measured,
                   "servescope_in_this_process": any(m.split(".")[0] == "servescope" for m in sys.modules)}, f)


if __name__ == "__main__":
    main()
