"""A soak of the recorder: a recorded vLLM server (CPU build) kept saturated for 30 minutes or more.

    python benchmarks/soak.py --minutes 30 --out benchmarks/results/cpu-soak-30min.json

``servescope run`` (default recording parts) around ``python -m vllm.entrypoints.openai.api_server``
of the tiny dummy-weight Llama (``servescope model init --arch tiny``, ``--load-format dummy``,
127.0.0.1), driven by ``servescope bench`` in a closed loop that keeps more requests in flight than
the engine may run (``--concurrency`` > ``--max-num-seqs``): the waiting queue stays non-empty, and
bounded. An open loop would not do: below the engine's capacity it does not saturate it, above it
the queue (and the server's memory) grows without end, which is no test of the recorder.

Every ``--interval-s`` seconds, for each process of the run (every process with a spool: the API
server, EngineCore, worker, and the bench client; and ``servescope run`` itself): resident memory
(``/proc``: VmRSS, and the part that is the spool's mapped segment), open file descriptors, the
spool's segments and bytes on disk, and the rows dropped so far (the spool headers). At the end:
``servescope run`` is stopped (SIGINT) and compacts; the raw file gets the compaction time, the
manifest's health, the bench's counts, whether every token the client received is in the engine's
token_emissions (``analysis.client_vs_engine.engine_token_check``), the saturation measured from
the steps table, the machine's load average, and the verdicts:

- memory bounded, per server process: the trend of resident memory outside the spool mapping over
  the last ``--trend-minutes`` of the load (slope per hour, 95% moving-block bootstrap interval)
  against a growth limit fixed here before any run (MEMORY_LIMIT_MIB_PER_H), and the spool mapping
  never above one segment;
- file descriptors bounded: the same trend against FD_LIMIT_PER_H;
- every drop counted: the manifest's rows_dropped equals the spool headers' last counts, and the
  client tokens missing from the engine's records are no more than the drops can explain.

The control, ``--untraced``: the same server, model, engine arguments and load, with nothing of
servescope in the server: plain ``python -m vllm.entrypoints.openai.api_server`` (no ``servescope
run``; servescope's vLLM plugin left out through VLLM_PLUGINS; the import sentinel of ``servescope
overhead``, ``servescope/overhead/sentinel``, on the server's PYTHONPATH notes any process that
imports a servescope module, and the run is refused if any server process did, or if any server
process wrote a spool). The server's processes are found in ``/proc`` (the server pid and its
descendants that vLLM named with setproctitle: ``VLLM::EngineCore``, ``VLLM::Worker...``) and sampled
the same way; the client still records its own requests (its own run directory). With no engine
records, the saturation is vLLM's own gauge ``vllm:num_requests_waiting`` (``/metrics``) at each
sample, and the token and drop checks do not apply.

It stops by itself: the bench sends nothing after ``--minutes`` and at most ``--max-requests``
requests, each bounded by ``--request-timeout-s``; every later stage has its own timeout, after which
the processes are killed. Writes the raw JSON (with ``machine_facts()``) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

from servescope.bench.load.server import answers_health, free_port
from servescope.bench.model_kit import init_model_dir
from servescope.run.config import DEFAULT_SEGMENT_BYTES
from servescope.run.directory import read_json
from servescope.run.machine import machine_facts
from servescope.run.names import Table
from servescope.overhead.user_pays import arm_environment, servescope_imports
from servescope.studies.soak import (BOUNDED, bounded_verdict, linear_trend, load_average_1min, sample_process,
                                     sample_spools, saturation, server_processes)

# Growth limits, fixed before any run. Memory: 2 MiB an hour is 48 MiB a day, under a tenth of a vLLM
# process's resident memory on this build (about 600 MiB); a leak of one small object per request
# (tens of requests a second) is above it. File descriptors: one an hour.
MEMORY_LIMIT_MIB_PER_H = 2.0
FD_LIMIT_PER_H = 1.0
# The server's HTTP keep-alive (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default): with the CPU starved, its
# timer can close a connection the client has just reused for its next request, which then ends in
# "ServerDisconnectedError" (9 of 2,490 requests in a 3-minute trial at a load average of 9 on 2 cores).
HTTP_KEEP_ALIVE_S = 600
MIB = float(1 << 20)
HOST = "127.0.0.1"
SERVER, CLIENT, LAUNCHER = "server", "bench client", "servescope run"


def engine_env() -> dict[str, str]:
    """Return the environment of the recorded server: the CPU build's KV cache size, no hub, quiet tokenizers, the
    HTTP keep-alive."""
    env = dict(os.environ)
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(HTTP_KEEP_ALIVE_S)})
    env.pop("SERVESCOPE_RUN_DIR", None)
    return env


def write_trace(path: Path, count: int, prompt_tokens: int, output_tokens: int) -> Path:
    """Write a trace of count identical requests (the closed loop ignores the arrival times)."""
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + f"0,{prompt_tokens},{output_tokens}\n" * count)
    return path


def start_server(args, model_dir: Path, run_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """Start `servescope run --out RUN -- python -m vllm.entrypoints.openai.api_server ...` in a session of its own."""
    command = [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", "--",
               sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--load-format", "dummy", "--max-model-len", str(args.max_model_len), "--max-num-seqs",
               str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
               "--disable-uvicorn-access-log", "--host", HOST, "--port", str(port)]
    return subprocess.Popen(command, env=engine_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_untraced_server(args, model_dir: Path, sentinel_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """Start plain `python -m vllm.entrypoints.openai.api_server ...` (the same arguments as start_server's) in a
    session of its own, servescope's vLLM plugin left out and the import sentinel on its PYTHONPATH."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--load-format", "dummy", "--max-model-len", str(args.max_model_len), "--max-num-seqs",
               str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
               "--disable-uvicorn-access-log", "--host", HOST, "--port", str(port)]
    return subprocess.Popen(command, env=arm_environment("off", sentinel_dir, engine_env()), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def waiting_requests(url: str) -> float | None:
    """Return vLLM's gauge vllm:num_requests_waiting (summed over its label sets) from /metrics; None if unanswered."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            return parse_waiting(r.read().decode(errors="replace"))
    except OSError:
        return None


def parse_waiting(text: str) -> float | None:
    """Return the sum of vllm:num_requests_waiting's samples in a Prometheus text (that metric only: not
    vllm:num_requests_waiting_by_reason, whose reasons add up to the same total); None if it is absent."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(("vllm:num_requests_waiting{", "vllm:num_requests_waiting "))]
    return sum(values) if values else None


def wait_healthy(url: str, launcher: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Return when the server answers /health; raise SystemExit with the log's tail if it ends or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise SystemExit(f"the server ended during startup (exit {launcher.returncode}):\n"
                             f"{log.read_text(errors='replace')[-3000:]}")
        if answers_health(url):
            return
        time.sleep(1)
    raise SystemExit(f"the server did not answer {url}/health within {timeout_s:.0f} s")


def start_bench(args, url: str, run_dir: Path, trace: Path, log: Path) -> subprocess.Popen:
    """Start `servescope bench` (closed loop) into the server's run directory."""
    command = [sys.executable, "-m", "servescope", "bench", "--workload", str(trace), "--count",
               str(args.max_requests), "--concurrency", str(args.concurrency), "--duration", str(args.minutes * 60),
               "--timeout", str(args.request_timeout_s), "--endpoint", url, "--out", str(run_dir)]
    return subprocess.Popen(command, env=engine_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def prepare(args, prefix: str) -> tuple[Path, int, str, Path, Path, dict]:
    """Return a new work directory under --work, a free port and its URL, the tiny model, the closed loop's trace
    and the machine facts: what the soak and its control start from."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=args.work))
    port = free_port()
    model_dir = init_model_dir(work / "tiny-llama", "tiny")
    trace = write_trace(work / "trace.csv", args.max_requests, args.prompt_tokens, args.output_tokens)
    return work, port, f"http://{HOST}:{port}", model_dir, trace, machine_facts()


def drive_load(args, url: str, run_dir: Path, trace: Path, work: Path, timeline: dict,
               sample: Callable[[float, int], None]) -> tuple[int, int]:
    """Run the closed-loop bench until it ends (or its deadline), calling sample(seconds since the load began,
    the bench's pid) every --interval-s; return the bench's exit code and when the load began (monotonic ns).

    timeline gets load_s (and bench_killed_at_deadline); the bench never outlives this call."""
    load_start_ns = time.monotonic_ns()
    bench = start_bench(args, url, run_dir, trace, work / "bench.log")
    try:
        deadline = time.monotonic() + args.minutes * 60 + args.request_timeout_s + 300
        next_sample = time.monotonic()
        while bench.poll() is None and time.monotonic() < deadline:
            sample((time.monotonic_ns() - load_start_ns) / 1e9, bench.pid)
            next_sample += args.interval_s
            time.sleep(max(0.0, next_sample - time.monotonic()))
        code = bench.poll()
        if code is None:
            code = stop(bench, 60)
            timeline["bench_killed_at_deadline"] = True
    finally:
        if bench.poll() is None:
            stop(bench, 30)
    timeline["load_s"] = (time.monotonic_ns() - load_start_ns) / 1e9
    return code, load_start_ns


def take_sample(run_dir: Path, t_s: float, launcher_pid: int, bench_pid: int | None,
                untraced_url: str | None = None) -> dict:
    """Return one sample: the load average and, per process of the run, memory, fds and its spool's counters.

    Untraced (untraced_url given): launcher_pid is the plain server's pid; its processes are found in /proc
    (server_processes) and sampled the same way; spools are the client's only (any other is recorded as a
    server process's spool, which the run refuses); vLLM's waiting gauge is read from untraced_url."""
    processes = {}
    if untraced_url is not None:
        for pid, role in server_processes(launcher_pid).items():
            proc = sample_process(pid, run_dir)
            if proc is not None:
                processes[f"{role}-{pid}"] = {"kind": SERVER, "role": role, "spool_segments": 0,
                                              "spool_bytes_on_disk": 0, "rows_dropped": 0, "internal_errors": 0,
                                              **proc}
        for spool in sample_spools(run_dir).values():
            label = f"{spool['role']}-{spool['pid']}"
            proc = sample_process(spool["pid"], run_dir)
            processes[label] = {"kind": CLIENT if spool["pid"] == bench_pid else "unexpected spool",
                                "spool_segments": spool["segments"], "spool_bytes_on_disk": spool["bytes_on_disk"],
                                "rows_dropped": spool["rows_dropped"], "internal_errors": spool["internal_errors"],
                                **(proc or {"gone": True})}
        return {"t_s": round(t_s, 3), "load_1min": load_average_1min(), "waiting_reqs": waiting_requests(untraced_url),
                "processes": processes}
    spools = sample_spools(run_dir)
    for spool in spools.values():
        label = f"{spool['role']}-{spool['pid']}"
        proc = sample_process(spool["pid"], run_dir)
        entry = processes.setdefault(label, {"kind": CLIENT if spool["pid"] == bench_pid else SERVER,
                                             "spool_segments": 0, "spool_bytes_on_disk": 0, "rows_dropped": 0,
                                             "internal_errors": 0, **(proc or {"gone": True})})
        for key in ("spool_segments", "spool_bytes_on_disk", "rows_dropped", "internal_errors"):
            entry[key] += spool["segments" if key == "spool_segments" else
                                "bytes_on_disk" if key == "spool_bytes_on_disk" else key]
    launcher = sample_process(launcher_pid, run_dir)
    if launcher is not None:
        processes[f"servescope-run-{launcher_pid}"] = {"kind": LAUNCHER, **launcher}
    return {"t_s": round(t_s, 3), "load_1min": load_average_1min(), "processes": processes}


def stop(proc: subprocess.Popen, timeout_s: float, first: int = signal.SIGINT) -> int:
    """Signal a process (first SIGINT, then SIGTERM, then SIGKILL of its session) until it ends; return its code."""
    for sig, wait_s in ((first, timeout_s), (signal.SIGTERM, 60), (signal.SIGKILL, 60)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def children_of(pid: int) -> list[int]:
    """Return the pids of a process's children (/proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------- verdicts


def series(samples: list[dict], label: str, key: str, start_s: float, end_s: float) -> tuple[list, list]:
    """Return (t_s, values) of one process's sampled key within [start_s, end_s]."""
    ts, values = [], []
    for s in samples:
        p = s["processes"].get(label)
        if p is not None and key in p and start_s <= s["t_s"] <= end_s:
            ts.append(s["t_s"])
            values.append(p[key])
    return ts, values


def judge_process(samples: list[dict], label: str, window: tuple[float, float], block_samples: int) -> dict:
    """Return one process's memory and fd trends over the window (MiB/h, fds/h) and their verdicts."""
    t, rss = series(samples, label, "rss_outside_spool_bytes", *window)
    _, total = series(samples, label, "rss_bytes", *window)
    _, spool = series(samples, label, "spool_resident_bytes", *window)
    _, fds = series(samples, label, "open_fds", *window)
    memory = linear_trend(t, [v / MIB for v in rss], block_samples=block_samples)
    fd_trend = linear_trend(t, fds, block_samples=block_samples)
    spool_max = max((v for _, v in zip(*series(samples, label, "spool_resident_bytes", 0, float("inf")))),
                    default=0)
    return {
        "rss_outside_spool_mib": {"first": rss[0] / MIB if rss else None, "last": rss[-1] / MIB if rss else None,
                                  "max": max(rss) / MIB if rss else None, "trend": memory,
                                  "verdict": bounded_verdict(memory, MEMORY_LIMIT_MIB_PER_H)},
        "rss_total_mib": {"max": max(total) / MIB if total else None,
                          "trend": linear_trend(t, [v / MIB for v in total], block_samples=block_samples)},
        "spool_resident_mib": {"max_in_window": max(spool) / MIB if spool else None,
                               "max_whole_run": spool_max / MIB,
                               "within_one_segment": spool_max <= DEFAULT_SEGMENT_BYTES},
        "open_fds": {"min": min(fds) if fds else None, "max": max(fds) if fds else None, "trend": fd_trend,
                     "verdict": bounded_verdict(fd_trend, FD_LIMIT_PER_H)},
    }


def last_counts(samples: list[dict]) -> dict[str, dict]:
    """Return each process's last sampled rows_dropped and internal_errors (spool headers)."""
    out: dict[str, dict] = {}
    for s in samples:
        for label, p in s["processes"].items():
            if "rows_dropped" in p and p.get("spool_segments"):
                out[label] = {"rows_dropped": p["rows_dropped"], "internal_errors": p["internal_errors"]}
    return out


def sending_window_ns(run_dir: Path, minutes: float) -> tuple[int, int, int]:
    """Return (first send, end of sending, last request's end) in CLOCK_MONOTONIC ns from the client's records; the
    end of sending is the first send + minutes, or the last request's end if that came sooner."""
    from servescope.run.tables import read_table

    requests = read_table(run_dir, Table.CLIENT_REQUESTS)
    first = min(requests.column("send_ns").to_pylist())
    last = max(requests.column("end_ns").to_pylist())
    return first, min(first + int(minutes * 60e9), last), last


def verdicts(samples: list[dict], window: tuple[float, float], block: int, health: dict, tokens: dict | None) -> dict:
    """Return the per-process trends over the window (s since the load started; bootstrap blocks of `block` samples)
    and the three verdicts: memory bounded, fds bounded, every drop counted (None with no engine records: tokens
    None)."""
    labels = sorted({label for s in samples for label, p in s["processes"].items() if p["kind"] != CLIENT})
    judged = {label: judge_process(samples, label, window, block) for label in labels}
    client = sorted({label for s in samples for label, p in s["processes"].items() if p["kind"] == CLIENT})
    reported = {label: judge_process(samples, label, window, block) for label in client}
    counts = last_counts(samples)
    sampled_drops = sum(c["rows_dropped"] for c in counts.values())
    memory_ok = all(j["rss_outside_spool_mib"]["verdict"] == BOUNDED and j["spool_resident_mib"]["within_one_segment"]
                    for j in judged.values())
    return {
        "window_s": list(window),
        "limits": {"memory_mib_per_h": MEMORY_LIMIT_MIB_PER_H, "open_fds_per_h": FD_LIMIT_PER_H,
                   "spool_mapping_bytes": DEFAULT_SEGMENT_BYTES},
        "block_samples": block,
        "per_process": judged,
        "bench_client_not_judged": {"why": "the client keeps every request's result in memory by design",
                                    "per_process": reported},
        "memory_bounded": memory_ok,
        "open_fds_bounded": all(j["open_fds"]["verdict"] == BOUNDED for j in judged.values()),
    } | ({"drops": None, "every_drop_counted": None} if tokens is None else drop_verdict(health, tokens, sampled_drops))


def drop_verdict(health: dict, tokens: dict, sampled_drops: int) -> dict:
    """Return the drops counted (spool headers, manifest, client tokens missing) and whether each drop was counted."""
    unexplained = tokens["requests_short"] + tokens["requests_not_joined"]
    return {
        "drops": {"sampled_rows_dropped": sampled_drops, "manifest_rows_dropped": health.get("rows_dropped"),
                  "manifest_internal_errors": health.get("internal_errors"),
                  "client_tokens_missing_from_engine": tokens["missing_tokens"],
                  "client_requests_short_or_not_joined": unexplained},
        "every_drop_counted": ((health.get("rows_dropped") or 0) >= sampled_drops
                               and (tokens["missing_tokens"] == 0 or sampled_drops >= unexplained)),
    }


# --------------------------------------------------------------------------- the figure


def plot(samples: list[dict], result: dict, png: Path) -> None:
    """Write a PNG of the samples: memory outside the spool, spool mapping, fds, spool on disk, drops, load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {label: p["kind"] for s in samples for label, p in s["processes"].items()}
    panels = (("rss_outside_spool_bytes", "resident memory outside the spool mapping (MiB)", MIB),
              ("spool_resident_bytes", "resident spool mapping (MiB)", MIB),
              ("open_fds", "open file descriptors", 1.0),
              ("spool_bytes_on_disk", "spool on disk (MiB)", MIB),
              ("rows_dropped", "rows dropped (spool headers)", 1.0))
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    window = result["verdicts"]["window_s"]
    for ax, (key, title, unit) in zip(axes.ravel(), panels):
        for label in sorted(kinds):
            t, v = series(samples, label, key, float("-inf"), float("inf"))
            if v:
                ax.plot([x / 60 for x in t], [x / unit for x in v], label=f"{label} ({kinds[label]})", lw=1)
        ax.axvspan(window[0] / 60, window[1] / 60, color="0.92", zorder=0)
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=7)
    ax = axes[2][1]
    ax.plot([s["t_s"] / 60 for s in samples], [s["load_1min"] for s in samples], color="k", lw=1,
            label="1-min load average (2 CPUs)")
    share = result["saturation"].get("time_share_waiting_per_minute") or []
    first = result["timeline_s"]["first_send_s"] / 60
    ax.step([first + m + 0.5 for m in range(len(share))], [x * 10 for x in share], where="mid", color="tab:red",
            label="share of each minute with requests waiting (x10)")
    ax.set_title("machine load; engine queue non-empty", fontsize=10)
    ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("minutes since the load started (grey: the trend window)")
    fig.suptitle(f"servescope soak: {result['config']['minutes']} min, closed loop of {result['config']['concurrency']}"
                 f" on max_num_seqs {result['config']['max_num_seqs']} (tiny Llama, vLLM CPU build)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="load duration (no request is sent after it)")
    ap.add_argument("--interval-s", type=float, default=10.0, help="sampling interval during the load")
    ap.add_argument("--trend-minutes", type=float, default=20.0, help="the trend window: the load's last minutes")
    ap.add_argument("--block-s", type=float, default=240.0,
                    help="bootstrap block length (seconds of samples); 24 samples of 10 s keep the interval's "
                         "coverage at 95%% for autocorrelated samples (tests/test_soak_measures.py)")
    ap.add_argument("--concurrency", type=int, default=64, help="closed loop: requests in flight")
    ap.add_argument("--max-num-seqs", type=int, default=8, help="the engine's batch limit (vLLM --max-num-seqs)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=32,
                    help="the engine's token budget per step (vLLM --max-num-batched-tokens): prefills take "
                         "prompt-tokens / budget steps")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-requests", type=int, default=150_000, help="the bench sends at most this many requests")
    ap.add_argument("--request-timeout-s", type=float, default=120.0)
    ap.add_argument("--startup-timeout-s", type=float, default=600.0)
    ap.add_argument("--stop-timeout-s", type=float, default=900.0, help="for the server's stop and compaction")
    ap.add_argument("--work", type=Path, default=None, help="where the run directory goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (default: removed at the end)")
    ap.add_argument("--out", type=Path, help="the raw JSON (a PNG of the samples is written beside)")
    ap.add_argument("--conditions", default=None,
                    help="what else the machine was doing during the run (kept in the raw file as 'conditions')")
    ap.add_argument("--untraced", action="store_true",
                    help="the control: the same server and load with no servescope in the server (plain vLLM, its "
                         "processes found in /proc); the client still records its requests")
    ap.add_argument("--rejudge", type=Path, metavar="RAW",
                    help="run nothing: recompute the verdicts and the PNG of a raw file from its samples (with "
                         "--block-s), noting the commit and command that did")
    args = ap.parse_args(argv)
    if (args.out is None) == (args.rejudge is None):
        ap.error("give --out (run a soak) or --rejudge RAW (recompute a raw file's verdicts), exactly one")
    if not args.concurrency > args.max_num_seqs:
        ap.error("--concurrency must exceed --max-num-seqs, or no request ever waits")
    if not 0 < args.trend_minutes <= args.minutes:
        ap.error("--trend-minutes must be in (0, --minutes]")
    if args.work is not None:
        try:
            args.work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--work {args.work}: {exc.strerror}")
    return args


def verdict_line(v: dict, raw: Path) -> str:
    """Return the three verdicts as one line."""
    return (f"memory bounded: {v['memory_bounded']}; fds bounded: {v['open_fds_bounded']}; "
            f"every drop counted: {v['every_drop_counted']}; raw file: {raw}")


def block_samples(block_s: float, interval_s: float) -> int:
    """Return the bootstrap block length in samples."""
    return max(1, round(block_s / interval_s))


def rejudge(path: Path, block_s: float) -> dict:
    """Recompute the verdicts and the PNG of a raw file from its samples, window and counts; rewrite it; return it."""
    result = json.loads(path.read_text())
    config = result["config"]
    block = block_samples(block_s, config["interval_s"])
    result["verdicts"] = verdicts(result["samples"], tuple(result["verdicts"]["window_s"]), block,
                                  result.get("health") or {}, result.get("tokens"))
    facts = machine_facts()
    result["verdicts_recomputed"] = {"date_utc": facts["date_utc"], "command": facts["command"],
                                     "servescope_commit": facts["versions"]["servescope_commit"], "block_s": block_s}
    samples = result.pop("samples")
    result["samples"] = samples  # last, as written by a run
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, result, path.with_suffix(".png"))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rejudge is not None:
        print(verdict_line(rejudge(args.rejudge, args.block_s)["verdicts"], args.rejudge))
        return 0
    if args.untraced:
        return main_untraced(args)
    work, port, url, model_dir, trace, facts = prepare(args, "soak-")
    run_dir = work / "run"
    launcher = start_server(args, model_dir, run_dir, port, work / "server.log")
    samples: list[dict] = []
    timeline: dict = {}
    server_pids: list[int] = []
    try:
        started = time.monotonic()
        wait_healthy(url, launcher, args.startup_timeout_s, work / "server.log")
        timeline["startup_s"] = time.monotonic() - started
        server_pids = children_of(launcher.pid)
        bench_code, load_start_ns = drive_load(
            args, url, run_dir, trace, work, timeline,
            lambda t_s, bench_pid: samples.append(take_sample(run_dir, t_s, launcher.pid, bench_pid)))
        stopping = time.monotonic()
        launcher.send_signal(signal.SIGINT)
        peak_launcher_rss = 0
        while launcher.poll() is None and time.monotonic() < stopping + args.stop_timeout_s:
            s = take_sample(run_dir, (time.monotonic_ns() - load_start_ns) / 1e9, launcher.pid, None)
            s["stopping"] = True
            samples.append(s)
            peak_launcher_rss = max([peak_launcher_rss] + [p.get("rss_bytes", 0) for p in s["processes"].values()
                                                           if p["kind"] == LAUNCHER])
            time.sleep(1.0)
        launcher_code = stop(launcher, 1.0, first=signal.SIGTERM) if launcher.poll() is None else launcher.returncode
        timeline["stop_and_compaction_s"] = time.monotonic() - stopping
    finally:
        if launcher.poll() is None:
            stop(launcher, 30)
        for pid in server_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    command = read_json(run_dir / "command.json")
    manifest = read_json(run_dir / "manifest.json")
    bench_facts = read_json(run_dir / "bench.json")
    from servescope.analysis.client_vs_engine import engine_token_check

    tokens = engine_token_check(run_dir).summary()
    first_send_ns, sending_end_ns, last_end_ns = sending_window_ns(run_dir, args.minutes)
    served_s = (last_end_ns - first_send_ns) / 1e9  # from the first request sent to the last one's end
    timeline["first_send_s"] = (first_send_ns - load_start_ns) / 1e9
    timeline["sending_end_s"] = (sending_end_ns - load_start_ns) / 1e9
    window = (max(timeline["first_send_s"], timeline["sending_end_s"] - args.trend_minutes * 60),
              timeline["sending_end_s"])
    loads = [s["load_1min"] for s in samples if not s.get("stopping")]
    result = {
        "machine": facts,
        "conditions": args.conditions,
        "what": "a recorded vLLM server (CPU build, tiny dummy-weight Llama) kept saturated by a closed loop; per "
                "process: resident memory (bytes, /proc), open fds, spool segments and bytes on disk, rows dropped "
                "(spool headers), sampled every interval; verdicts from the trend over the load's last minutes",
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "engine_argv": command.get("argv"), "recording_parts": command.get("parts"),
                   "segment_bytes": DEFAULT_SEGMENT_BYTES, "http_keep_alive_s": HTTP_KEEP_ALIVE_S},
        "timeline_s": timeline,
        "load_average_1min": {"mean": sum(loads) / len(loads) if loads else None, "max": max(loads, default=None),
                              "min": min(loads, default=None), "cpus": os.cpu_count(),
                              "note": "the machine is shared with other test runs: see each sample's load_1min"},
        "bench": {"exit_code": bench_code, "status": bench_facts.get("status"), "results": bench_facts.get("results"),
                  "elapsed_s": bench_facts.get("elapsed_s"), "served_s": served_s,
                  "requests_per_s": (bench_facts.get("results") or {}).get("ok", 0) / served_s,
                  "output_tokens_per_s": (bench_facts.get("results") or {}).get("output_tokens", 0) / served_s},
        "saturation": saturation(run_dir, first_send_ns, sending_end_ns),
        "server": {"exit_code": launcher_code, "signals": command.get("signals"),
                   "engine_exit_wait_s": command.get("engine_exit_wait_s"),
                   "compaction_s": command.get("compaction_s"), "rows_compacted": command.get("rows_compacted"),
                   "launcher_peak_rss_mib_while_stopping": peak_launcher_rss / MIB},
        "health": manifest.get("health"),
        "processes": [{k: p.get(k) for k in ("pid", "role", "ended", "rows_recorded", "rows_dropped",
                                              "internal_errors")} for p in manifest.get("processes", [])],
        "run_bytes": sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()),
        "tokens": tokens,
    }
    result["verdicts"] = verdicts(samples, window, block_samples(args.block_s, args.interval_s),
                                  manifest.get("health") or {}, tokens)
    result["samples"] = samples
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, result, args.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("timeline_s", "bench", "saturation", "server", "health", "tokens")},
                     indent=1))
    print(verdict_line(result["verdicts"], args.out))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def metrics_saturation(samples: list[dict], first_send_s: float, end_s: float) -> dict:
    """Return the share of samples in [first_send_s, end_s] whose vllm:num_requests_waiting was > 0, overall and per
    minute, and the gauge's mean (an unrecorded server has no steps table)."""
    inside = [s for s in samples if first_send_s <= s["t_s"] <= end_s and s.get("waiting_reqs") is not None]
    if not inside:
        return {"samples": 0, "sample_share_waiting": None}
    per_minute: dict[int, list[bool]] = {}
    for s in inside:
        per_minute.setdefault(int((s["t_s"] - first_send_s) // 60), []).append(s["waiting_reqs"] > 0)
    return {"source": "vllm:num_requests_waiting at each sample (/metrics)", "samples": len(inside),
            "samples_unanswered": sum(1 for s in samples if first_send_s <= s["t_s"] <= end_s
                                      and s.get("waiting_reqs") is None),
            "sample_share_waiting": sum(s["waiting_reqs"] > 0 for s in inside) / len(inside),
            "time_share_waiting_per_minute": [sum(v) / len(v) for _, v in sorted(per_minute.items())],
            "mean_waiting_reqs": sum(s["waiting_reqs"] for s in inside) / len(inside)}


def main_untraced(args) -> int:
    """The control: the same server and load, nothing of servescope in the server; its processes sampled from /proc."""
    work, port, url, model_dir, trace, facts = prepare(args, "soak-untraced-")
    run_dir, sentinel_dir = work / "client", work / "sentinel"
    sentinel_dir.mkdir()
    server = start_untraced_server(args, model_dir, sentinel_dir, port, work / "server.log")
    samples: list[dict] = []
    timeline: dict = {}
    seen: dict[int, str] = {}
    try:
        started = time.monotonic()
        wait_healthy(url, server, args.startup_timeout_s, work / "server.log")
        timeline["startup_s"] = time.monotonic() - started

        def sample(t_s: float, bench_pid: int) -> None:
            s = take_sample(run_dir, t_s, server.pid, bench_pid, url)
            samples.append(s)
            seen.update({p_pid: p["role"] for label, p in s["processes"].items() if p["kind"] == SERVER
                         for p_pid in [int(label.rsplit("-", 1)[1])]})

        bench_code, load_start_ns = drive_load(args, url, run_dir, trace, work, timeline, sample)
        stopping = time.monotonic()
        server_code = stop(server, args.stop_timeout_s)
        timeline["stop_s"] = time.monotonic() - stopping
    finally:
        if server.poll() is None:
            stop(server, 30)
        try:
            os.killpg(server.pid, signal.SIGKILL)  # anything of its session left behind
        except (ProcessLookupError, PermissionError):
            pass
    (work / "samples.json").write_text(json.dumps({"timeline": timeline, "samples": samples}))  # kept with --keep
    imports = servescope_imports(sentinel_dir)
    server_spools = sorted({label for s in samples for label, p in s["processes"].items()
                            if p["kind"] == "unexpected spool"})
    untraced = {"servescope_imports_by_server_processes": {str(k): v for k, v in imports.items()},
                "spools_not_the_clients": server_spools,
                "server_processes_seen": {str(k): v for k, v in sorted(seen.items())},
                "vllm_plugins": arm_environment("off", sentinel_dir, engine_env()).get("VLLM_PLUGINS")}
    if imports or server_spools or not {"APIServer", "EngineCore", "Worker"} <= set(seen.values()):
        (work / "refused.json").write_text(json.dumps(untraced, indent=1))
        raise SystemExit(f"the untraced run is refused (servescope imported or recording in the server, or a vLLM "
                         f"process not found): {untraced}; work dir kept: {work}")
    bench_facts = read_json(run_dir / "bench.json")
    first_send_ns, sending_end_ns, last_end_ns = sending_window_ns(run_dir, args.minutes)
    served_s = (last_end_ns - first_send_ns) / 1e9
    timeline["first_send_s"] = (first_send_ns - load_start_ns) / 1e9
    timeline["sending_end_s"] = (sending_end_ns - load_start_ns) / 1e9
    window = (max(timeline["first_send_s"], timeline["sending_end_s"] - args.trend_minutes * 60),
              timeline["sending_end_s"])
    loads = [s["load_1min"] for s in samples]
    results = bench_facts.get("results") or {}
    result = {
        "machine": facts,
        "conditions": args.conditions,
        "what": "the control of the soak: the same vLLM server (CPU build, tiny dummy-weight Llama), engine arguments "
                "and closed loop, with no servescope in the server (plain vLLM; plugin left out, import sentinel "
                "clean, no server spool); per server process found in /proc: resident memory and open fds sampled "
                "every interval; trends over the load's last minutes; the client records its own requests",
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "engine_argv": server.args, "segment_bytes": DEFAULT_SEGMENT_BYTES,
                   "http_keep_alive_s": HTTP_KEEP_ALIVE_S},
        "untraced": untraced,
        "timeline_s": timeline,
        "load_average_1min": {"mean": sum(loads) / len(loads) if loads else None, "max": max(loads, default=None),
                              "min": min(loads, default=None), "cpus": os.cpu_count(),
                              "note": "the machine is shared with other test runs: see each sample's load_1min"},
        "bench": {"exit_code": bench_code, "status": bench_facts.get("status"), "results": results,
                  "elapsed_s": bench_facts.get("elapsed_s"), "served_s": served_s,
                  "requests_per_s": results.get("ok", 0) / served_s,
                  "output_tokens_per_s": results.get("output_tokens", 0) / served_s},
        "saturation": metrics_saturation(samples, timeline["first_send_s"], timeline["sending_end_s"]),
        "server": {"exit_code": server_code},
        "tokens": None,
    }
    result["verdicts"] = verdicts(samples, window, block_samples(args.block_s, args.interval_s), {}, None)
    result["samples"] = samples
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, result, args.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("timeline_s", "bench", "saturation", "server", "untraced")}, indent=1))
    print(verdict_line(result["verdicts"], args.out))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
