"""`servescope overhead`: the same workload with tracing off and on, alternating, measured alike.

Every arm is observed from the caller's side (one timestamp per output delivered), so both arms
are measured by the same instrument and the engine's own records play no part in the verdict.
Two methods:

- toggle: one engine in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0; on a GPU with one
  worker the front end, EngineCore and worker all live there); tracing is switched on and off
  between batches. Same engine, same memory, same CUDA graphs: the cleanest comparison.
  Offline load only. On the CPU build the worker is always its own process and stays traced.
- restart: a fresh engine process per arm (needed for served load, where the EngineCore is
  always its own process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from servescope.analysis.distributions import summarize


def arm_metrics(result: dict) -> dict:
    """Return throughput (tokens/s) and TTFT / TBT-per-chunk / E2E samples (s) of one measured arm."""
    start = result["start_ns"]
    if "requests" in result:  # served
        sent = [r["sent_ns"] for r in result["requests"]]
        outputs = [r["outputs"] for r in result["requests"]]
    else:
        sent = [start] * len(result["outputs"])
        outputs = result["outputs"]
    ttft, tbt, e2e, tokens = [], [], [], 0
    for s, outs in zip(sent, outputs):
        if not outs:
            continue
        times = np.array([t for t, _ in outs], dtype=np.int64)
        tokens += sum(n for _, n in outs)
        ttft.append((times[0] - s) / 1e9)
        e2e.append((times[-1] - s) / 1e9)
        tbt.extend((np.diff(times) / 1e9).tolist())
    wall = (result["end_ns"] - start) / 1e9
    return {"output_tokens_per_s": tokens / wall if wall > 0 else None, "wall_s": wall,
            "ttft_s": ttft, "tbt_per_chunk_s": tbt, "e2e_s": e2e}


def compare_arms(results: list[dict]) -> dict:
    """Return per-arm summaries and the on-vs-off relative change of throughput and latency percentiles."""
    rows = {"off": [], "on": []}
    for r in results:
        m = arm_metrics(r)
        rows[r["arm"]].append({
            "output_tokens_per_s": m["output_tokens_per_s"],
            **{f"{k}_{q}": summarize(m[k])[q] for k in ("ttft_s", "tbt_per_chunk_s", "e2e_s") for q in ("p50", "p99")},
        })
    keys = list(rows["off"][0]) if rows["off"] else []
    out = {"repeats": {arm: len(v) for arm, v in rows.items()}, "arms": rows, "change": {}}
    for k in keys:
        off = np.array([r[k] for r in rows["off"]], dtype=float)
        on = np.array([r[k] for r in rows["on"]], dtype=float)
        if len(off) and len(on):
            med_off, med_on = float(np.median(off)), float(np.median(on))
            out["change"][k] = {
                "off_median": med_off, "on_median": med_on,
                "relative_change": (med_on - med_off) / med_off if med_off else None,
                "off_spread": float(off.max() - off.min()) / med_off if med_off else None,
            }
    return out


def run_overhead(model: str, *, engine_args: dict, load: str = "offline", method: str = "toggle",
                 repeats: int = 3, num_requests: int = 64, prompt_len: int = 256, output_len: int = 64,
                 rate: float = 4.0, out_dir: str | os.PathLike, env: dict | None = None,
                 profile_requests: int = 0) -> dict:
    """Run the off/on comparison; write and return out_dir/overhead.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = ["off", "on"] * repeats
    base = [sys.executable, "-m", "servescope.overhead.toggle_worker", "--model", model, "--engine-args",
            json.dumps(engine_args), "--load", load, "--num-requests", str(num_requests), "--prompt-len",
            str(prompt_len), "--output-len", str(output_len), "--rate", str(rate)]
    child_env = dict(os.environ if env is None else env)
    child_env.pop("SERVESCOPE_RUN_DIR", None)
    results, profiled = [], None
    if method == "toggle":
        if load != "offline":
            raise ValueError("toggle measures offline load only; use method='restart' for served load")
        child_env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        out = out_dir / "arms.json"
        subprocess.run(base + ["--arms", ",".join(arms), "--run-dir", str(out_dir / "run-on"), "--out", str(out),
                               "--profile-requests", str(profile_requests)], env=child_env, check=True)
        data = json.loads(out.read_text())
        results, profiled = data["results"], data.get("profiled")
    else:
        for i, arm in enumerate(arms):
            out = Path(tempfile.mkstemp(suffix=".json", dir=out_dir)[1])
            cmd = base + ["--arms", arm, "--seed", "0", "--out", str(out)]
            if arm == "on":
                cmd += ["--run-dir", str(out_dir / f"run-on-{i}")]
            subprocess.run(cmd, env=child_env, check=True)
            results += json.loads(out.read_text())["results"]
    report = {"model": model, "engine_args": engine_args, "load": load, "method": method,
              "num_requests": num_requests, "prompt_len": prompt_len, "output_len": output_len,
              "rate": rate if load == "served" else None, **compare_arms(results), "profiled": profiled}
    (out_dir / "overhead.json").write_text(json.dumps(report, indent=2))
    return report
