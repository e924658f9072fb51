"""Where the host cost of tracing goes: each hook's own time per engine step and per emitted token.

Reads runs recorded with `servescope run --self-timing` (processes' hook_cost in the manifest: calls and
nanoseconds charged to each patched method, on the wall clock and on the thread's CPU clock, see
servescope/record/self_timing.py) and divides by the run's engine steps and emitted tokens. The wall time
less the CPU time is time the thread waited inside a hook (for the GIL, or for a CPU). Writes one JSON with the machine facts and prints a table.

    python benchmarks/hook_breakdown.py RUN [RUN ...] --labels batch256,batch16 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servescope.run.tables import read_table  # noqa: E402
from servescope.run.machine import machine_facts  # noqa: E402
from servescope.run.manifest import load_manifest  # noqa: E402

# the hot-path budget of docs/overhead.md, on the EngineCore and front end together
BUDGET_US_PER_STEP, BUDGET_US_PER_TOKEN = 10.0, 0.2


def breakdown(run_dir: str) -> dict:
    """Return per-hook calls and steady-state microseconds per call and per step (first call apart), by process role."""
    manifest = load_manifest(run_dir)
    steps = read_table(run_dir, "steps").num_rows
    tokens = sum(read_table(run_dir, "token_emissions").column("num_tokens").to_pylist())
    hooks = []
    for process in manifest.get("processes", []):
        for name, cost in (process.get("hook_cost") or {}).items():
            calls, ns, first = cost["calls"], cost["ns"], cost.get("first_ns") or 0
            steady_us = (ns - first) / 1e3  # without the first call's one-time work (engine facts, a timer)
            hook = {"role": process["role"], "hook": name, "calls": calls, "total_us": ns / 1e3,
                    "first_call_us": first / 1e3,
                    "us_per_call": steady_us / max(calls - 1, 1),
                    "us_per_step": steady_us / max(steps, 1)}
            if cost.get("cpu_ns") is not None:  # runs recorded before the thread CPU time was kept lack it
                steady_cpu_us = (cost["cpu_ns"] - (cost.get("first_cpu_ns") or 0)) / 1e3
                hook.update(cpu_us_per_call=steady_cpu_us / max(calls - 1, 1), cpu_us_per_step=steady_cpu_us / max(steps, 1))
            hooks.append(hook)
    hooks.sort(key=lambda h: -h["us_per_step"])
    engine_side = [h for h in hooks if h["role"].startswith(("EngineCore", "MainProcess"))]
    total = sum(h["us_per_step"] for h in engine_side)
    cpu = ({"engine_and_front_end_cpu_us_per_step": sum(h["cpu_us_per_step"] for h in engine_side)}
           if all("cpu_us_per_step" in h for h in engine_side) else {})
    return {"run": str(run_dir), "steps": steps, "emitted_tokens": tokens, "hooks": hooks,
            "engine_and_front_end_us_per_step": total, **cpu,  # steady state: first calls left out
            "budget_us_for_this_run_per_step": BUDGET_US_PER_STEP + BUDGET_US_PER_TOKEN * tokens / max(steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", default=None, help="comma list, one per run")
    ap.add_argument("--command", default=None, help="the command that recorded the runs, for the record")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [Path(r).name for r in args.runs]
    results = {label: breakdown(run) for label, run in zip(labels, args.runs)}
    doc = {"machine": machine_facts(), "recorded_with": args.command, "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for label, r in results.items():
        cpu = r.get("engine_and_front_end_cpu_us_per_step")
        print(f"{label}: {r['steps']} steps, {r['emitted_tokens']} tokens; EngineCore + front end "
              f"{r['engine_and_front_end_us_per_step']:.1f} us/step" + (f", {cpu:.1f} of it on the CPU" if cpu else "")
              + f" (budget {r['budget_us_for_this_run_per_step']:.1f})")
        for h in r["hooks"][:12]:
            cpu = f" ({h['cpu_us_per_step']:.2f} CPU)" if "cpu_us_per_step" in h else ""
            print(f"   {h['role']:<14} {h['hook']:<42} {h['calls']:>8} calls {h['us_per_call']:8.2f} us/call "
                  f"{h['us_per_step']:8.2f} us/step{cpu}")


if __name__ == "__main__":
    main()
