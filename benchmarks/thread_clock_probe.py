"""Does a thread's CPU time (CLOCK_THREAD_CPUTIME_ID) ever exceed the wall time (CLOCK_MONOTONIC) around it?

servescope's optional thread readings (the `thread` recording part) take the thread's CPU time at a
region's start and end, both inside the region's host interval, so CPU time <= wall time should hold.
On the H100 it did not (worker regions, 2026-11: CPU time above wall time by > 20 us in 64% of `draft` and
97% of `forward` regions). This probe asks the machine's kernel the same question with no engine, no
CUDA and no servescope code: it reads monotonic, then the thread's CPU time (after a getrusage call, as
servescope does), spins for a given time, reads the thread's CPU time (after getrusage), then monotonic,
and reports how far CPU time exceeded wall time. A positive excess is the kernel's clocks, not the code.

    python benchmarks/thread_clock_probe.py --out OUT.json [--reads 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPINS_US = (0, 5, 50, 500, 5000)


def spin(us: float) -> None:
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


def reading() -> int:
    resource.getrusage(resource.RUSAGE_THREAD)  # what servescope's reading does before the CPU time
    return time.thread_time_ns()


def probe(reads: int, spin_us: float) -> dict:
    excess = []
    for _ in range(reads):
        w0 = time.monotonic_ns()
        c0 = reading()
        spin(spin_us)
        c1 = reading()
        w1 = time.monotonic_ns()
        excess.append((c1 - c0) - (w1 - w0))
    excess.sort()
    n = len(excess)
    return {"spin_us": spin_us, "reads": n, "excess_ns_p50": excess[n // 2], "excess_ns_p99": excess[int(n * 0.99)],
            "excess_ns_max": excess[-1], "share_above_0": sum(e > 0 for e in excess) / n,
            "share_above_20us": sum(e > 20_000 for e in excess) / n}


def clocksource() -> str | None:
    try:
        return Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reads", type=int, default=20000)
    args = ap.parse_args()
    from servescope.run.machine import machine_facts

    results = [probe(args.reads if us < 500 else max(200, args.reads // 50), us) for us in SPINS_US]
    doc = {"machine": machine_facts(), "clocksource": clocksource(), "kernel": Path("/proc/version").read_text().strip()
           if Path("/proc/version").exists() else None, "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for r in results:
        print(f"spin {r['spin_us']:>5} us: excess p50 {r['excess_ns_p50'] / 1e3:8.2f} us, p99 "
              f"{r['excess_ns_p99'] / 1e3:8.2f} us, max {r['excess_ns_max'] / 1e3:8.2f} us, "
              f"> 0: {100 * r['share_above_0']:.1f}%, > 20 us: {100 * r['share_above_20us']:.2f}%")


if __name__ == "__main__":
    main()
