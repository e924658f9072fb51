"""Host cost of servescope's per-step work, hook by hook, on this machine's CPU.

    python benchmarks/hook_cost.py [--batch 32] [--steps 20000] [--out RESULT.json]

Calls the EngineCore hooks' bodies (what runs after vLLM's own Scheduler.schedule and
update_from_output return) and the worker region timer on stand-ins shaped like vLLM's
SchedulerOutput / EngineCoreOutputs for a decode batch of --batch requests, with a real
Recorder appending into its spool (a memory-mapped file in a temporary directory), and prints
microseconds per step.
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
        ech._on_update(rec, out, outputs, 3, 4)

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
    if args.out:
        from servescope.run.machine import machine_facts

        with open(args.out, "w") as f:
            json.dump({"batch": args.batch, "steps": args.steps, "engine_core_hooks_us_per_step": step_us,
                       "five_regions_us_per_step": bare_region_us, "five_regions_thread_usage_us_per_step": region_us,
                       "load_average_1min": os.getloadavg()[0],
                       "machine": machine_facts(["python", "benchmarks/hook_cost.py", *sys.argv[1:]])}, f, indent=1)


if __name__ == "__main__":
    main()
