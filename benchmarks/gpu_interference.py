"""Does tracing's side work slow a GPU-bound step loop? A probe of the mechanisms, without vLLM.

    python benchmarks/gpu_interference.py --out RESULT.json [--rounds 8] [--block-s 1.2]

An engine-shaped loop: each step does host work in Python (--host-ms, as schedule + input preparation
do), launches a CUDA graph of matmuls (--gpu-ms of GPU work, as the model's decode graph) and a small
"sampling" kernel, records a completion event, then waits for the previous step's event (two steps
in flight, as vLLM's async scheduling keeps them). The GPU stays busy as long as the host work is
shorter than the GPU work (regime "gpu_bound"); "host_bound" reverses the two.

Conditions, each run in blocks interleaved in a fresh random order every round (seeded):
  bare           the loop alone
  regions        servescope's RegionTimer in CUDA mode as in the worker (pooled events, host rows and GPU
                 resolutions appended to a real spool): execute_model > forward, sample_tokens > sample,
                 harvest at the start of every step
  nvml           servescope's NvmlSampler thread at its default interval (0.1 s), rows to the same spool
  nvml_fast      the sampler at 0.01 s: does sampling NVML disturb the GPU or the launches at all?
  regions_nvml   both, as a traced worker runs them by default
Per block: the mean step time. Per condition: its change against bare in the same round, and a 95%
bootstrap interval over rounds of those paired changes. Writes the blocks, the summary and the
machine facts (servescope.run.machine) to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time

CONDITIONS = ("bare", "regions", "nvml", "nvml_fast", "regions_nvml")


def busy_python(ms: float) -> None:
    """Hold the GIL doing Python work for ms milliseconds (an engine's scheduling and bookkeeping)."""
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        for i in range(50):
            x += i


class StepLoop:
    """Two steps in flight; step time = wall time per step over a block."""

    def __init__(self, torch, gpu_ms: float, host_ms: float) -> None:
        self.torch = torch
        self.host_ms = host_ms
        n = 4096
        self.a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        self.b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        self.c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        self.logits = torch.randn(256, 32000, device="cuda")
        self.mm_ms = self._time_one_matmul()
        self.count = max(1, round(gpu_ms / self.mm_ms))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._forward()
        torch.cuda.synchronize()
        self.done = [torch.cuda.Event() for _ in range(2)]

    def _forward(self) -> None:
        for _ in range(self.count if hasattr(self, "count") else 1):
            self.torch.mm(self.a, self.b, out=self.c)

    def _time_one_matmul(self) -> float:
        torch = self.torch
        for _ in range(5):
            torch.mm(self.a, self.b, out=self.c)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(50):
            torch.mm(self.a, self.b, out=self.c)
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 50

    def run_block(self, seconds: float, timer=None) -> tuple[int, float]:
        """Run steps for about `seconds`; return (steps, mean step seconds)."""
        torch = self.torch
        torch.cuda.synchronize()
        steps = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline or steps < 4:
            i = steps % 2
            if timer is not None:
                timer.harvest()
            busy_python(self.host_ms)
            if timer is None:
                self.graph.replay()
                torch.argmax(self.logits, dim=-1)
            else:
                outer = timer.start(steps, "execute_model")
                inner = timer.start(steps, "forward")
                self.graph.replay()
                timer.end(inner)
                timer.end(outer)
                outer = timer.start(steps, "sample_tokens")
                inner = timer.start(steps, "sample")
                torch.argmax(self.logits, dim=-1)
                timer.end(inner)
                timer.end(outer)
            self.done[i].record()
            self.done[1 - i].synchronize()  # the previous step's output, as the engine waits for it
            steps += 1
        torch.cuda.synchronize()
        return steps, (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block-s", type=float, default=1.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from servescope.analysis.distributions import bootstrap_ci
    from servescope.record.nvml_sampler import NvmlSampler
    from servescope.record.recorder import Recorder
    from servescope.record.timers import make_region_timer
    from servescope.run.machine import machine_facts

    rec = Recorder(tempfile.mkdtemp(prefix="interference-"))
    timer = make_region_timer(lambda row: rec.append("worker_regions", row), gpu_events=True,
                              append_pending=rec.append_region, resolve=rec.resolve_region)
    if timer.mode != "cuda":
        sys.exit(f"needs CUDA: the region timer runs in {timer.mode} mode ({timer.reason})")
    regimes = {"gpu_bound": (14.0, 4.0), "host_bound": (3.0, 4.0)}
    rng = random.Random(args.seed)
    blocks, summary = [], {}
    for regime, (gpu_ms, host_ms) in regimes.items():
        loop = StepLoop(torch, gpu_ms, host_ms)
        loop.run_block(0.5)  # warm-up
        by_round: dict[int, dict[str, float]] = {}
        for r in range(args.rounds):
            order = list(CONDITIONS)
            rng.shuffle(order)
            for cond in order:
                sampler = None
                if "nvml" in cond:
                    sampler = NvmlSampler(lambda row: rec.append("gpu_samples", row),
                                          interval_s=0.01 if cond == "nvml_fast" else 0.1)
                    if not sampler.start():
                        sys.exit(f"NVML sampler did not start: {sampler.reason}")
                steps, step_s = loop.run_block(args.block_s, timer if "regions" in cond else None)
                if sampler is not None:
                    sampler.stop()
                timer.harvest()
                blocks.append({"regime": regime, "round": r, "condition": cond, "steps": steps, "step_s": step_s})
                by_round.setdefault(r, {})[cond] = step_s
        rows = {}
        for cond in CONDITIONS[1:]:
            changes = [by_round[r][cond] / by_round[r]["bare"] - 1 for r in by_round]
            lo, hi = bootstrap_ci(changes, n_boot=10000, seed=args.seed)  # percentile bootstrap of the mean
            rows[cond] = {"mean_change": statistics.fmean(changes), "ci95": [lo, hi], "rounds": len(changes)}
        summary[regime] = {"gpu_ms": gpu_ms, "host_ms": host_ms, "matmuls_per_graph": loop.count,
                           "matmul_ms": loop.mm_ms,
                           "bare_step_ms_median": 1e3 * statistics.median(by_round[r]["bare"] for r in by_round),
                           "changes_vs_bare": rows}
        print(f"{regime}: graph {loop.count} x {loop.mm_ms:.3f} ms, host {host_ms} ms, bare step "
              f"{summary[regime]['bare_step_ms_median']:.3f} ms")
        for cond, row in rows.items():
            print(f"  {cond:13s} {100 * row['mean_change']:+.3f}%  (95% CI {100 * row['ci95'][0]:+.3f} .. "
                  f"{100 * row['ci95'][1]:+.3f}%)")
    timer.close()
    rec.close()
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "blocks": blocks, "timer": timer.stats(),
                   "machine": machine_facts(["python", "benchmarks/gpu_interference.py", *sys.argv[1:]])}, f, indent=1)


if __name__ == "__main__":
    main()
