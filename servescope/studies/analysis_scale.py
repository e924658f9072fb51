"""Scale benchmark of the analysis core: synthesise a large run directory, time load + metrics.

    python -m servescope.studies.analysis_scale --requests 1000000 --tokens 100000000

writes a synthetic run directory (Parquet parts with the schema of tracer/schema.py,
shaped like a continuous-batching engine's output: token emissions in step order,
requests interleaved), then, in a fresh process so that its peak RSS is its own,
times ``load_run``, ``compute_request_metrics`` and the distribution summaries
(every per-request metric, TBT over all tokens and over all chunks), and prints the
times and the peak resident set size (``resource.getrusage``). docs/analysis-scale.md
holds measured numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from servescope.run.directory import write_json
from servescope.run.parts import write_part
from servescope.run.schema import TABLES

STEP_NS = 20_000_000  # mean engine step: 20 ms
ROWS_PER_PART = 8_000_000  # emission rows per Parquet part, as a writer flushes


def synthesize_run(
    run_dir: Path,
    n_requests: int,
    n_tokens: int,
    *,
    concurrency: int = 256,
    tokens_per_chunk: float = 1.0,
    preempted_fraction: float = 0.005,
    zero_output_fraction: float = 0.001,
    seed: int = 0,
) -> dict:
    """Write a synthetic run directory; return its size (requests, tokens, emission rows, steps)."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    output_tokens = _output_lengths(rng, n_requests, n_tokens, zero_output_fraction)
    # Tokens per emission row: one per step without speculation; per request, a fixed
    # burst size c >= 1 (the last row carries the remainder) to mimic speculation.
    burst = np.ones(n_requests, np.int64)
    if tokens_per_chunk > 1:
        burst += rng.poisson(tokens_per_chunk - 1, n_requests)
    rows = -(-output_tokens // burst)  # ceil; 0 rows for 0 tokens
    # Continuous batching: request i's prefill runs in step first_step[i]; with `concurrency`
    # requests decoding at once, a new one starts every mean(rows)/concurrency steps.
    first_step = (np.arange(n_requests) * (rows.mean() / concurrency)).astype(np.int64)
    # A few requests are preempted once, after row pause_after, for pause_steps steps.
    preempted = (rng.random(n_requests) < preempted_fraction) & (rows >= 2)
    pause_after = np.where(preempted, rng.integers(0, np.maximum(rows - 1, 1)), np.iinfo(np.int64).max)
    pause_steps = np.where(preempted, rng.integers(5, 50, n_requests), 0)
    last_step = first_step + np.maximum(rows - 1, 0) + pause_steps
    n_steps = int(last_step.max()) + 1

    schedule_start = 1_000_000_000_000 + np.cumsum(
        rng.integers(STEP_NS * 3 // 4, STEP_NS * 5 // 4, n_steps)
    )
    schedule_end = schedule_start + 300_000
    update_end = schedule_start + STEP_NS * 3 // 4  # emission time of the step's tokens

    ids = pa.array([f"cmpl-{a:016x}{b:016x}-0-{c:08x}" for a, b, c in
                    rng.integers(0, 2**63, (n_requests, 3)).tolist()])
    _write_request_events(run_dir, rng, ids, output_tokens, rows, first_step, last_step,
                          preempted, pause_after, pause_steps, schedule_start, schedule_end,
                          update_end)
    n_rows = _write_token_emissions(run_dir, ids, output_tokens, burst, rows, first_step,
                                    last_step, pause_after, pause_steps, update_end)
    _write_steps(run_dir, schedule_start, schedule_end, update_end)
    write_json(run_dir / "manifest.json", {
        "synthetic": True, "generator": "servescope.studies.analysis_scale",
        "requests": n_requests, "output_tokens": int(output_tokens.sum()), "seed": seed,
    })
    return {"requests": n_requests, "output_tokens": int(output_tokens.sum()),
            "emission_rows": n_rows, "steps": n_steps}


def _output_lengths(rng, n_requests: int, n_tokens: int, zero_fraction: float) -> np.ndarray:
    """Return output lengths (lognormal, a few zeros) summing exactly to n_tokens."""
    zero = rng.random(n_requests) < zero_fraction
    n_live = int((~zero).sum())
    raw = rng.lognormal(0.0, 0.8, n_live)
    lengths = np.maximum(1, np.round(raw * (n_tokens / raw.sum()))).astype(np.int64)
    diff = n_tokens - int(lengths.sum())
    if diff > 0:
        lengths += np.bincount(rng.integers(0, n_live, diff), minlength=n_live)
    elif diff < 0:
        can_shrink = np.flatnonzero(lengths > 1)
        lengths[rng.choice(can_shrink, -diff, replace=False)] -= 1
    out = np.zeros(n_requests, np.int64)
    out[~zero] = lengths
    return out


def _write_request_events(run_dir, rng, ids, output_tokens, rows, first_step, last_step,
                          preempted, pause_after, pause_steps, schedule_start, schedule_end,
                          update_end) -> None:
    n = len(output_tokens)
    live = rows > 0
    # Arrival a few ms before the prefill step's schedule; zero-output requests are
    # aborted while waiting (arrival, queued, finished; never scheduled).
    arrival = schedule_start[first_step] - rng.integers(400_000, 30_000_000, n)
    queued = arrival + 200_000
    events = [
        ("arrival", np.arange(n), arrival, None),
        ("queued", np.arange(n), queued, None),
    ]
    sched = np.flatnonzero(live)
    events.append(("scheduled", sched, schedule_end[first_step[sched]], first_step[sched]))
    pre = np.flatnonzero(preempted)
    pre_step = first_step[pre] + pause_after[pre] + 1
    events.append(("preempted", pre, schedule_end[pre_step], pre_step))
    resume_step = pre_step + pause_steps[pre]
    events.append(("scheduled", pre, schedule_end[resume_step], resume_step))
    events.append(("finished", sched, update_end[last_step[sched]], last_step[sched]))
    aborted = np.flatnonzero(~live)
    events.append(("finished", aborted, queued[aborted] + 5_000_000, None))

    req = np.concatenate([e[1] for e in events])
    kind = np.concatenate([np.full(len(e[1]), e[0]) for e in events])
    t = np.concatenate([e[2] for e in events])
    step = np.concatenate([e[3] if e[3] is not None else np.full(len(e[1]), -1) for e in events])
    order = np.argsort(t, kind="stable")  # written in time order, as recorded
    req, kind, t, step = req[order], kind[order], t[order], step[order]
    has_prompt = np.isin(kind, ["arrival", "queued"])
    is_finished = kind == "finished"
    prompt = rng.integers(16, 4096, n)
    table = pa.table({
        "request_id": ids.take(pa.array(req)),
        "event": pa.array(kind, pa.string()),
        "time_ns": pa.array(t, pa.int64()),
        "step_id": pa.array(step, pa.int64(), mask=step < 0),
        "prompt_tokens": pa.array(prompt[req], pa.int32(), mask=~has_prompt),
        "max_tokens": pa.array(np.full(len(req), 4096), pa.int32(), mask=~has_prompt),
        "output_tokens": pa.array(output_tokens[req], pa.int32(), mask=~is_finished),
        "detail": pa.array(np.where(output_tokens[req] > 0, "length", "abort"), pa.string(),
                           mask=~is_finished),
    }, schema=TABLES["request_events"].arrow_schema)
    _write_part(run_dir, "request_events", "enginecore", 0, table)


def _write_token_emissions(run_dir, ids, output_tokens, burst, rows, first_step, last_step,
                           pause_after, pause_steps, update_end) -> int:
    """Write emission rows step by step (requests interleaved); return the row count."""
    n_steps = len(update_end)
    span = int((last_step - first_step).max()) + 1
    steps_per_part = max(1, int(ROWS_PER_PART / max(rows.sum() / n_steps, 1)))
    written = 0
    for part, k0 in enumerate(range(0, n_steps, steps_per_part)):
        k1 = min(k0 + steps_per_part, n_steps)
        # Requests that can emit in steps [k0, k1): first_step is non-decreasing.
        lo = np.searchsorted(first_step, k0 - span, side="left")
        hi = np.searchsorted(first_step, k1, side="left")
        req = np.repeat(np.arange(lo, hi), rows[lo:hi])
        row_start = np.cumsum(rows[lo:hi]) - rows[lo:hi]
        j = np.arange(len(req)) - np.repeat(row_start, rows[lo:hi])
        step = first_step[req] + j + np.where(j > pause_after[req], pause_steps[req], 0)
        keep = (step >= k0) & (step < k1)
        req, j, step = req[keep], j[keep], step[keep]
        order = np.argsort(step * len(rows) + req)  # step order, then request
        req, j, step = req[order], j[order], step[order]
        ntok = np.where(j == rows[req] - 1, output_tokens[req] - burst[req] * j, burst[req])
        table = pa.table({
            "request_id": ids.take(pa.array(req)),
            "step_id": pa.array(step, pa.int64()),
            "time_ns": pa.array(update_end[step], pa.int64()),
            "num_tokens": pa.array(ntok, pa.int32()),
            "num_draft_tokens": pa.nulls(len(req), pa.int32()),
            "num_accepted_tokens": pa.nulls(len(req), pa.int32()),
        }, schema=TABLES["token_emissions"].arrow_schema)
        _write_part(run_dir, "token_emissions", "enginecore", part, table)
        written += len(req)
    return written


def _write_steps(run_dir, schedule_start, schedule_end, update_end) -> None:
    n = len(schedule_start)
    columns = {c.name: pa.nulls(n, c.type) for c in TABLES["steps"].columns}
    columns.update({
        "step_id": pa.array(np.arange(n), pa.int64()),
        "engine_index": pa.array(np.zeros(n, np.int32)),
        "schedule_start_ns": pa.array(schedule_start),
        "schedule_end_ns": pa.array(schedule_end),
        "update_end_ns": pa.array(update_end),
    })
    _write_part(run_dir, "steps", "enginecore", 0,
                pa.table(columns, schema=TABLES["steps"].arrow_schema))


def _write_part(run_dir: Path, table: str, role: str, seq: int, data: pa.Table) -> None:
    write_part(run_dir, table, data, writer=f"{role}-1", name=f"{role}-1-{seq:06d}")


def measure(run_dir: Path) -> dict:
    """Return seconds spent loading, computing metrics and summarising, and peak RSS in bytes."""
    from servescope.analysis.distributions import summarize
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run, release_unused_memory
    from servescope.analysis.summary import PER_REQUEST_METRICS

    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    run = load_run(run_dir)
    t1 = time.perf_counter()
    metrics = compute_request_metrics(run)
    t2 = time.perf_counter()
    del run  # the tables are not needed once metrics exist (analyze_run drops them too)
    release_unused_memory()
    summaries = {name: summarize(getattr(metrics, name)) for name in PER_REQUEST_METRICS}
    summaries["tbt_per_token_s"] = summarize(metrics.all_tbt_per_token_s())
    summaries["tbt_per_chunk_s"] = summarize(metrics.all_tbt_per_chunk_s())
    t3 = time.perf_counter()
    return {
        "requests": len(metrics),
        "output_tokens": int(metrics.output_tokens.sum()),
        "emission_rows": int(len(metrics.chunk_times_ns)),
        "load_s": round(t1 - t0, 2),
        "metrics_s": round(t2 - t1, 2),
        "summaries_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_s": round(_cpu_s() - cpu0, 2),  # this process's CPU time (user + system): less skewed by other work
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews times
        "tbt_per_token_p99_ms": summaries["tbt_per_token_s"]["p99"] * 1e3,
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Synthesise a run, measure load + metrics in a fresh process, print the numbers; return 0."""
    p = argparse.ArgumentParser(prog="python -m servescope.studies.analysis_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--tokens", type=int, default=100_000_000, help="output tokens in all")
    p.add_argument("--tokens-per-chunk", type=float, default=1.0,
                   help="mean tokens per speculative step, 1 + Poisson(k - 1) per request "
                        "(default 1: no speculation, one row per token, the worst case)")
    p.add_argument("--concurrency", type=int, default=256, help="requests decoding at once")
    p.add_argument("--dir", type=Path, help="run directory to write (default: a temporary one, removed after)")
    p.add_argument("--reuse", action="store_true", help="measure --dir as it is, do not synthesise")
    p.add_argument("--out", type=Path, help="also write the result, with the machine and command, to this JSON file")
    p.add_argument("--measure-only", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.measure_only:  # the child process: nothing but load + compute in it
        print(json.dumps(measure(args.measure_only)))
        return 0
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="servescope-bench-")) / "run"
    try:
        if not args.reuse:
            t = time.perf_counter()
            size = synthesize_run(run_dir, args.requests, args.tokens, concurrency=args.concurrency,
                                  tokens_per_chunk=args.tokens_per_chunk)
            size["synthesis_s"] = round(time.perf_counter() - t, 1)
            print("synthesised", run_dir, json.dumps(size), flush=True)
        child = subprocess.run(
            [sys.executable, "-m", "servescope.studies.analysis_scale", "--measure-only", str(run_dir)],
            check=True, capture_output=True, text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"requests {result['requests']:,}  output tokens {result['output_tokens']:,}  "
              f"emission rows {result['emission_rows']:,}")
        print(f"load {result['load_s']} s  metrics {result['metrics_s']} s  "
              f"summaries {result['summaries_s']} s  total {result['total_s']} s  "
              f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB  CPU time {result['cpu_s']} s  "
              f"(load average {result['load_average_1min']} on {result['cpus']} CPUs)")
        print(json.dumps(result))
        if args.out:
            from servescope.run.machine import machine_facts

            setup = {"requests": args.requests, "tokens": args.tokens, "tokens_per_chunk": args.tokens_per_chunk,
                     "concurrency": args.concurrency, "reuse": args.reuse}
            command = ["python", "-m", "servescope.studies.analysis_scale",
                       *(argv if argv is not None else sys.argv[1:])]
            args.out.write_text(json.dumps({"setup": setup, "synthesis": None if args.reuse else size,
                                            "result": result, "machine": machine_facts(command)}, indent=1))
    finally:
        if args.dir is None:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
