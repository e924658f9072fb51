"""Kernel time by region and step for every profile window of a run, as a raw result file.

    python -m servescope.studies.kernel_time RUN --out OUT.json

RUN was recorded with a profile window (``SERVESCOPE_PROFILE_STEPS=FIRST:COUNT``; on a GPU also
``SERVESCOPE_GPU_STAMPS=1``, which gives every region its GPU interval on the host clock). For
each window (one per profiled worker) the file holds analysis.kernel_attribution's summary: per
region and per step, event time, kernel busy time and the gap between them (P50 / P99 / total,
ms), the kernels outside every region, and on a GPU the launch-to-start check of the clocks; plus
the window's clock mapping and the machine (run.machine.machine_facts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.compute as pc

from servescope.analysis.kernel_attribution import kernel_attribution_summary
from servescope.record.profile_window import read_profile
from servescope.run.data import load_run
from servescope.run.directory import RunDirError
from servescope.run.machine import machine_facts


def kernel_time(run_dir: str | Path) -> dict:
    """Return {run, windows: [{file, facts, summary}]} for every profile window of the run (ms inside)."""
    profile, windows = read_profile(run_dir)
    if not windows:
        raise RunDirError(f"{run_dir}: no profile window (record with SERVESCOPE_PROFILE_STEPS=FIRST:COUNT)")
    run = load_run(run_dir)
    out = []
    for facts in windows:
        rows = profile.filter(pc.equal(profile.column("file"), facts["file"]))
        out.append({"file": facts["file"], "facts": facts,
                    "summary": kernel_attribution_summary(rows, run.worker_regions, facts)})
    return {"run": str(run_dir), "windows": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m servescope.studies.kernel_time")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        result = kernel_time(args.run_dir)
    except (RunDirError, ValueError) as exc:
        print(f"servescope.studies.kernel_time: {exc}", file=sys.stderr)
        raise SystemExit(2)
    result["machine"] = machine_facts(["python", "-m", "servescope.studies.kernel_time", *(argv or sys.argv[1:])])
    args.out.write_text(json.dumps(result, indent=1))
    for w in result["windows"]:
        s = w["summary"]
        print(f"{w['file']}: {s['source']} intervals, steps {s['steps'][0]}..{s['steps'][-1]}; per step "
              f"event - busy P50 {s['per_step']['difference_ms']['p50']:.3f} ms, "
              f"P99 {s['per_step']['difference_ms']['p99']:.3f} ms; outside {s['outside']['kernels']} kernels")


if __name__ == "__main__":
    main()
