"""One engine, several measured arms: the subprocess behind `servescope overhead`.

Observes the engine the same way in every arm — from the caller's side, one timestamp per
output delivered to it — so the traced and untraced arms are measured by one instrument.

offline: vLLM's LLMEngine driven step by step (all requests submitted at once, like
``LLM.generate``). With ``--arms off,on,off,on,...`` in one process and
VLLM_ENABLE_V1_MULTIPROCESSING=0 (front end, EngineCore and, on a GPU, the worker in this
process), tracing is switched on and off between arms on the same engine.
served: vLLM's AsyncLLM with Poisson arrivals (one arm per process: tracing is fixed at start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import numpy as np


def _prompts(n: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(10, min(vocab, 30000) - 1, size=(n, prompt_len)).tolist()


def _offline_arm(engine, prompts, params) -> dict:
    """Return per-request output times (ns) for one batch driven through LLMEngine.step()."""
    from vllm.sampling_params import RequestOutputKind

    params = params.clone()
    params.output_kind = RequestOutputKind.DELTA
    ids = [f"{uuid.uuid4().hex[:8]}-{i}" for i in range(len(prompts))]
    times: dict[str, list[tuple[int, int]]] = {rid: [] for rid in ids}
    t0 = time.monotonic_ns()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            n = len(out.outputs[0].token_ids)
            if n:
                times[out.request_id].append((time.monotonic_ns(), n))
    return {"start_ns": t0, "end_ns": time.monotonic_ns(), "outputs": list(times.values())}


async def _served_arm(engine, prompts, params, rate: float, seed: int) -> dict:
    from vllm.sampling_params import RequestOutputKind

    params = params.clone()
    params.output_kind = RequestOutputKind.DELTA
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(prompts))
    send_at = np.cumsum(gaps) - gaps[0]
    results: list[dict] = []

    async def one(i: int, prompt: list[int]) -> None:
        await asyncio.sleep(max(0.0, t0_s + send_at[i] - time.monotonic()))
        sent = time.monotonic_ns()
        outs = []
        async for out in engine.generate({"prompt_token_ids": prompt}, params, f"r{i}-{uuid.uuid4().hex[:6]}"):
            n = len(out.outputs[0].token_ids)
            if n:
                outs.append((time.monotonic_ns(), n))
        results.append({"sent_ns": sent, "outputs": outs})

    t0_s = time.monotonic()
    start = time.monotonic_ns()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return {"start_ns": start, "end_ns": time.monotonic_ns(), "requests": results}


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for s0, s1 in sorted(intervals):
        if end is None or s0 > end:
            total += s1 - s0
            end = s1
        elif s1 > end:
            total += s1 - end
            end = s1
    return total


def _profiled_batch(engine, prompts, params, run_dir) -> dict:
    """Run one traced batch under torch.profiler; return the profiler's GPU busy time and servescope's
    region GPU times for the same steps (ns)."""
    import torch
    from torch.autograd import DeviceType

    from servescope.patches.vllm.engine_core_hooks import STATE
    from servescope.run.tables import read_table

    first_step = STATE.next_step_id
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        _offline_arm(engine, prompts, params)
        torch.cuda.synchronize()
    last_step = STATE.next_step_id - 1
    spans = [(int(e.time_range.start * 1000), int(e.time_range.end * 1000)) for e in prof.events()
             if e.device_type == DeviceType.CUDA]
    from servescope.patches.vllm.worker_hooks import WORKER

    if WORKER.timer is not None:
        WORKER.timer.harvest()
    regions = read_table(run_dir, "worker_regions").to_pylist()
    in_window = [r for r in regions if r["step_id"] is not None and first_step <= r["step_id"] <= last_step]
    by_region: dict[str, list[int]] = {}
    for r in in_window:
        if r["gpu_ns"] is not None:
            by_region.setdefault(r["region"], []).append(r["gpu_ns"])
    return {"steps": [first_step, last_step], "profiler_gpu_busy_ns": _union_ns(spans),
            "profiler_gpu_kernel_sum_ns": sum(b - a for a, b in spans), "profiler_gpu_events": len(spans),
            "servescope_gpu_ns_by_region": {k: sum(v) for k, v in by_region.items()},
            "servescope_regions_with_gpu_time": {k: len(v) for k, v in by_region.items()},
            "servescope_regions_in_window": len(in_window)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine-args", default="{}", help="JSON dict of vLLM engine arguments")
    ap.add_argument("--load", choices=["offline", "served"], default="offline")
    ap.add_argument("--arms", default="off", help="comma list of on/off, measured in order")
    ap.add_argument("--warmup-batches", type=int, default=1)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default=None, help="record into this run dir when an arm is 'on'")
    ap.add_argument("--profile-requests", type=int, default=0,
                    help="then run one traced batch of this many requests under torch.profiler and compare")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    arms = args.arms.split(",")
    if "on" in arms:
        import servescope

        servescope.instrument(args.run_dir, engines=["vllm"])
        if arms[0] != "on":
            servescope.pause()
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    engine_kwargs = dict(model=args.model, load_format="dummy", skip_tokenizer_init=True, **json.loads(args.engine_args))
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, detokenize=False, temperature=1.0)
    results = []
    if args.load == "offline":
        from vllm.v1.engine.llm_engine import LLMEngine

        engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs))
        vocab = engine.model_config.get_vocab_size()
        for w in range(args.warmup_batches):
            _offline_arm(engine, _prompts(args.num_requests, args.prompt_len, vocab, 1000 + w), params)
        for i, arm in enumerate(arms):
            if "on" in arms:
                servescope.resume() if arm == "on" else servescope.pause()
            r = _offline_arm(engine, _prompts(args.num_requests, args.prompt_len, vocab, args.seed + i), params)
            results.append({"arm": arm, **r})
        if "on" in arms:
            servescope.resume()
        if args.profile_requests and "on" in arms:
            profiled = _profiled_batch(engine, _prompts(args.profile_requests, args.prompt_len, vocab, 77), params,
                                       args.run_dir)
    else:
        from vllm.v1.engine.async_llm import AsyncLLM

        async def run() -> None:
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs))
            vocab = engine.model_config.get_vocab_size()
            await _served_arm(engine, _prompts(max(8, args.num_requests // 4), args.prompt_len, vocab, 999),
                              params, args.rate * 4, 1)
            for i, arm in enumerate(arms):
                r = await _served_arm(engine, _prompts(args.num_requests, args.prompt_len, vocab, args.seed + i),
                                      params, args.rate, args.seed + i)
                results.append({"arm": arm, **r})
            engine.shutdown()

        asyncio.run(run())
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results,
                   "profiled": profiled if args.profile_requests else None}, f)


if __name__ == "__main__":
    main()
