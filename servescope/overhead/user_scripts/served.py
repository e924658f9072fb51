"""A plain vLLM serving load, as a user's service runs one: AsyncLLM (the engine `vllm serve` runs,
in its default layout: the EngineCore in its own process), no servescope import anywhere.

`servescope overhead --load served` runs this file by path, untraced and under `servescope run`,
one fresh process per arm: a warm-up, then NUM_REQUESTS requests with Poisson arrivals at RATE
requests/s, each streamed (DELTA outputs). Writes one JSON document to OUT: per request its send
time and the arrival times of its outputs (ns from the load's start).

usage: served.py MODEL OUT [--num-requests 500] [--rate 16] [--warmup-requests 64]
                 [--prompt-len 512] [--output-len 128] [--engine-args JSON] [--seed 0]
"""

import argparse
import asyncio
import json
import random
import sys
import time


async def run(args) -> dict:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = {"load_format": "dummy", "skip_tokenizer_init": True, **json.loads(args.engine_args)}
    started = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=args.model, **engine_args))
    start_s = time.perf_counter() - started
    vocab = min(engine.model_config.get_vocab_size(), 30000)
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.DELTA)
    rng = random.Random(args.seed)

    async def load(n: int, rate: float, tag: str) -> list[dict]:
        prompts = [[rng.randrange(10, vocab - 1) for _ in range(args.prompt_len)] for _ in range(n)]
        gaps = [rng.expovariate(rate) for _ in range(n)]
        t0 = time.monotonic_ns()
        results: list[dict] = [{} for _ in range(n)]

        async def one(i: int, at_ns: int) -> None:
            delay = (t0 + at_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.monotonic_ns() - t0
            times, counts = [], []
            async for out in engine.generate({"prompt_token_ids": prompts[i]}, params, f"{tag}-{i}"):
                k = len(out.outputs[0].token_ids)
                if k:
                    times.append(time.monotonic_ns() - t0)
                    counts.append(k)
            results[i] = {"sent_ns": sent, "chunks": times, "tokens_per_chunk": counts}

        at, schedule = 0.0, []
        for g in gaps:
            schedule.append(int(at * 1e9))
            at += g
        await asyncio.gather(*(one(i, s) for i, s in enumerate(schedule)))
        return results

    await load(args.warmup_requests, args.rate, "warmup")
    t0 = time.monotonic_ns()
    requests = await load(args.num_requests, args.rate, "load")
    wall_ns = time.monotonic_ns() - t0
    engine.shutdown()
    return {"load": "served", "engine_start_s": start_s, "rate": args.rate, "wall_ns": wall_ns,
            "requests": requests}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--num-requests", type=int, default=500)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--warmup-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--engine-args", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    expected = args.output_len
    short = [i for i, r in enumerate(result["requests"]) if sum(r["tokens_per_chunk"]) != expected]
    if short:
        sys.exit(f"served.py: {len(short)} requests did not produce {expected} output tokens")
    result["servescope_in_this_process"] = any(m.split(".")[0] == "servescope" for m in sys.modules)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
