"""Host cost of servescope's per-step work, hook by hook, on this machine's CPU.

    python benchmarks/hook_cost.py [--batch 32] [--steps 20000] [--cuda] [--out RESULT.json]

Calls the EngineCore hooks' bodies (what runs after vLLM's own Scheduler.schedule and
update_from_output return) and the worker region timer on stand-ins shaped like vLLM's
SchedulerOutput / EngineCoreOutputs for a decode batch of --batch requests, with a real
Recorder appending into its spool (a memory-mapped file in a temporary directory), and prints
microseconds per step. With --cuda (a GPU machine), also the CUDA-evented regions as the worker
runs them (events recorded on the current stream around a small matmul, host rows appended at once,
GPU times resolved by the next step's harvest), each piece of a region timed apart, and every step
figure again while a second Python thread competes for the GIL (as the EngineCore's output thread
does): the hooks' own cost and what a busy neighbour thread adds to any code of the engine's thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

from servescope.patches.switch import PARTS
from servescope.patches.vllm import engine_core_hooks as ech
from servescope.record.recorder import Recorder
from servescope.record.timers import make_region_timer
from servescope.run.config import DEFAULT_PARTS


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--cuda", action="store_true", help="also time CUDA-evented regions (needs a GPU)")
    ap.add_argument("--out", help="also write the numbers, the machine and the command to this JSON file")
    args = ap.parse_args()
    rec = Recorder(tempfile.mkdtemp())
    PARTS.set(DEFAULT_PARTS)
    ids = [f"{i}-abcdef12" for i in range(args.batch)]
    cached = SimpleNamespace(req_ids=ids, resumed_req_ids=set(), num_output_tokens=[5] * args.batch)
    out = SimpleNamespace(num_scheduled_tokens={r: 1 for r in ids}, scheduled_new_reqs=[], scheduled_cached_reqs=cached,
                          total_num_scheduled_tokens=args.batch, scheduled_spec_decode_tokens={})
    scheduler = SimpleNamespace(kv_cache_manager=SimpleNamespace(usage=0.1), running=ids, waiting=[],
                                vllm_config=None)
    ech.STATE.facts_written = True
    outputs = {0: SimpleNamespace(timestamp=time.monotonic(), outputs=[
        SimpleNamespace(request_id=r, new_token_ids=[7], finish_reason=None) for r in ids])}

    def schedule_then_update():
        ech._on_schedule(rec, scheduler, out, 1, 2)
        ech._on_update(rec, ech.step_id_of(out), outputs, {}, 3, 4)

    def five_regions(timer):
        for name in ("execute_model", "forward", "sample_tokens", "sample", "bookkeep"):
            timer.end(timer.start(1, name))

    def regions_with(read_thread_usage: bool):
        timer = make_region_timer(lambda row: rec.append("worker_regions", row), gpu_events=False,
                                  read_thread_usage=read_thread_usage)
        return lambda: five_regions(timer)

    step_us = per_call_us(schedule_then_update, args.steps)
    bare_region_us = per_call_us(regions_with(False), args.steps)  # the default (no `thread` part)
    region_us = per_call_us(regions_with(True), args.steps)
    print(f"batch {args.batch}: EngineCore hooks (schedule + update bodies) {step_us:.1f} us/step; "
          f"5 host-timed worker regions {bare_region_us:.1f} us/step ({region_us:.1f} us with the thread's "
          f"CPU time and switches, the `thread` part); "
          f"per emitted token {step_us / args.batch:.2f} us")
    result = {"batch": args.batch, "steps": args.steps, "engine_core_hooks_us_per_step": step_us,
              "five_regions_us_per_step": bare_region_us, "five_regions_thread_usage_us_per_step": region_us}
    if args.cuda:
        result["cuda"] = cuda_costs(rec, args.steps, schedule_then_update)
        for name, value in result["cuda"].items():
            print(f"  cuda {name}: {value:.2f} us")
    if args.out:
        from servescope.run.machine import machine_facts

        with open(args.out, "w") as f:
            json.dump({**result, "load_average_1min": os.getloadavg()[0],
                       "machine": machine_facts(["python", "benchmarks/hook_cost.py", *sys.argv[1:]])}, f, indent=1)


REGIONS = ("execute_model", "run_fullgraph", "sample_tokens", "sample", "bookkeep")


def cuda_costs(rec, steps: int, engine_core_step) -> dict:
    """Microseconds of host time: each piece of a CUDA-evented region, and whole steps with and without a
    thread competing for the GIL (a step: harvest, then 5 regions each around one small matmul)."""
    import threading

    import torch

    from servescope.run.clock import now_ns

    timer = make_region_timer(lambda row: rec.append("worker_regions", row), gpu_events=True,
                              append_pending=rec.append_region, resolve=rec.resolve_region)
    if timer.mode != "cuda":
        raise SystemExit(f"--cuda: the region timer runs in {timer.mode} mode ({timer.reason})")
    a = torch.randn(256, 256, device="cuda")
    done = torch.cuda.Event(enable_timing=True)
    done.record()
    torch.cuda.synchronize()
    other = torch.cuda.Event(enable_timing=True)
    other.record()
    torch.cuda.synchronize()

    def traced_step():
        timer.harvest()
        for name in REGIONS:
            token = timer.start(1, name)
            torch.mm(a, a)
            timer.end(token)

    def bare_step():
        for _ in REGIONS:
            torch.mm(a, a)

    def steps_us(n: int) -> dict:
        bare = min(per_call_us(bare_step, n) for _ in range(3))
        traced = min(per_call_us(traced_step, n) for _ in range(3))
        torch.cuda.synchronize()
        return {"bare_step_5_matmuls": bare, "traced_step_5_matmuls": traced,
                "regions_per_step": traced - bare, "engine_core_hooks_per_step": per_call_us(engine_core_step, n)}

    n = steps
    seq = iter(range(10**9))
    costs = {
        "now_ns": per_call_us(now_ns, n),
        "is_current_stream_capturing": per_call_us(torch.cuda.is_current_stream_capturing, n),
        "current_stream": per_call_us(torch.cuda.current_stream, n),
        "event_record": per_call_us(done.record, n),
        "event_query_completed": per_call_us(other.query, n),
        "event_elapsed_time": per_call_us(lambda: other.elapsed_time(other), n),
        "spool_append_region": per_call_us(lambda: rec.append_region(next(seq), (1, 0, "sample", 1, 2, None, None,
                                                                                 None, None, None, None, 0)), n),
        "spool_resolve_region": per_call_us(lambda: rec.resolve_region(next(seq), 1000, None, None), n),
    }
    # within the pool's 1024 event pairs: past them a region is host-only (and cheap), which is not what is timed here
    costs["region_start_end_no_gpu_work"] = per_call_us(lambda: timer.end(timer.start(1, "sample")), 1000)
    torch.cuda.synchronize()
    timer.harvest()  # every pair back in the pool
    costs["harvest_after_one_region"] = per_call_us(lambda: (timer.end(timer.start(1, "sample")), torch.cuda.synchronize(),
                                                             timer.harvest()), n // 10)
    costs["harvest_after_one_region"] -= per_call_us(lambda: (timer.end(timer.start(1, "sample")),
                                                             torch.cuda.synchronize()), n // 10)
    timer.harvest()
    torch.cuda.synchronize()
    timer.harvest()
    costs.update({f"quiet_{k}": v for k, v in steps_us(max(steps // 4, 500)).items()})
    stop = threading.Event()

    def neighbour():  # pure Python work holding the GIL, like an output thread serialising a batch
        while not stop.is_set():
            sum(range(2000))

    thread = threading.Thread(target=neighbour, daemon=True)
    thread.start()
    try:
        # few steps: each wait for the GIL can last the switch interval (5 ms), so a step takes milliseconds
        costs.update({f"gil_contended_{k}": v for k, v in steps_us(50).items()})
    finally:
        stop.set()
        thread.join()
    timer.close()
    return costs


if __name__ == "__main__":
    main()
