"""Is an engine host-bound or GPU-bound? The EngineCore thread's phases per decode step, from a recorded run.

    python benchmarks/step_phases.py RUN [RUN ...] --out RESULT.json

Per run, over the steps that scheduled no prefill: the median and mean of each phase of the EngineCore
thread (schedule, execute = input preparation and launch, wait = blocked on the GPU's result, update),
the median cycle (from one step's schedule start to the next's), and the share of the cycle spent
waiting: near zero means the host is the bottleneck and every microsecond added on the engine's thread
lengthens the step; large means the GPU is, and host work is hidden behind it. Also each worker region's
median host and GPU time. Reads the run's own tables (servescope's records, not an independent check).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from servescope.analysis.iterations import region_times_ms
from servescope.run.columns import float_column
from servescope.run.names import StepPhase
from servescope.run.tables import read_table

PHASES = StepPhase.ALL  # schedule, execute, wait, update


def phases(run: str) -> dict:
    steps = read_table(run, "steps", warnings=[])
    decode = float_column(steps, "num_prefill_reqs") == 0
    out: dict = {"run": run, "decode_steps": int(decode.sum())}
    for phase in PHASES:
        start, end = StepPhase.columns(phase)
        us = (float_column(steps, end) - float_column(steps, start))[decode] / 1e3
        us = us[~np.isnan(us)]
        out[f"{phase}_us"] = {"p50": float(np.median(us)), "mean": float(us.mean())} if us.size else None
    start = np.sort(float_column(steps, "schedule_start_ns")[decode])
    cycle = np.diff(start) / 1e3
    cycle = cycle[cycle < 10 * np.median(cycle)] if cycle.size else cycle  # batch boundaries left out
    out["cycle_us_p50"] = float(np.median(cycle)) if cycle.size else None
    if out["wait_us"] and out["cycle_us_p50"]:
        out["wait_share_of_cycle"] = out["wait_us"]["p50"] / out["cycle_us_p50"]
    out["decode_requests_p50"] = float(np.median(float_column(steps, "num_decode_reqs")[decode])) if decode.any() else None
    regions = read_table(run, "worker_regions", warnings=[])
    times = region_times_ms(regions)  # per region: P50 of its host and GPU times over the rows that have them
    names = regions.column("region").to_pylist()

    def p50_us(kind: str, name: str) -> float | None:
        entry = times[kind].get(name)
        return None if entry is None else entry["p50"] * 1e3

    out["regions"] = {name: {"count": names.count(name), "host_us_p50": p50_us("host", name),
                             "gpu_us_p50": p50_us("gpu", name)} for name in sorted(set(names))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out")
    args = ap.parse_args()
    results = [phases(run) for run in args.runs]
    for r in results:
        line = " ".join(f"{p} {r[f'{p}_us']['p50']:.0f}" for p in PHASES if r[f"{p}_us"])
        print(f"{r['run']}: decode steps {r['decode_steps']} (batch p50 {r['decode_requests_p50']}), us p50: {line}, "
              f"cycle {r['cycle_us_p50']:.0f}, wait share {r.get('wait_share_of_cycle', float('nan')):.2f}")
        for name, reg in r["regions"].items():
            print(f"    {name}: {reg['count']} host p50 {reg['host_us_p50']} us, gpu p50 {reg['gpu_us_p50']} us")
    if args.out:
        from servescope.run.machine import machine_facts

        with open(args.out, "w") as f:
            json.dump({"results": results, "machine": machine_facts(["python", "benchmarks/step_phases.py",
                                                                     *sys.argv[1:]])}, f, indent=1)


if __name__ == "__main__":
    main()
