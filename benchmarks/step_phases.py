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

from servescope.run.tables import read_table

PHASES = ("schedule", "execute", "wait", "update")


def _column(table, name) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in table.column(name).to_pylist()], dtype=np.float64)


def phases(run: str) -> dict:
    steps = read_table(run, "steps", warnings=[])
    decode = _column(steps, "num_prefill_reqs") == 0
    out: dict = {"run": run, "decode_steps": int(decode.sum())}
    for phase in PHASES:
        us = (_column(steps, f"{phase}_end_ns") - _column(steps, f"{phase}_start_ns"))[decode] / 1e3
        us = us[~np.isnan(us)]
        out[f"{phase}_us"] = {"p50": float(np.median(us)), "mean": float(us.mean())} if us.size else None
    start = np.sort(_column(steps, "schedule_start_ns")[decode])
    cycle = np.diff(start) / 1e3
    cycle = cycle[cycle < 10 * np.median(cycle)] if cycle.size else cycle  # batch boundaries left out
    out["cycle_us_p50"] = float(np.median(cycle)) if cycle.size else None
    if out["wait_us"] and out["cycle_us_p50"]:
        out["wait_share_of_cycle"] = out["wait_us"]["p50"] / out["cycle_us_p50"]
    out["decode_requests_p50"] = float(np.median(_column(steps, "num_decode_reqs")[decode])) if decode.any() else None
    regions = read_table(run, "worker_regions", warnings=[])
    by_region = {}
    names = regions.column("region").to_pylist()
    host = _column(regions, "host_end_ns") - _column(regions, "host_start_ns")
    gpu = _column(regions, "gpu_ns")
    for name in sorted(set(names)):
        mask = np.array([n == name for n in names])
        h, g = host[mask], gpu[mask]
        by_region[name] = {"count": int(mask.sum()), "host_us_p50": float(np.nanmedian(h)) / 1e3 if h.size else None,
                           "gpu_us_p50": float(np.nanmedian(g)) / 1e3 if np.isfinite(g).any() else None}
    out["regions"] = by_region
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
