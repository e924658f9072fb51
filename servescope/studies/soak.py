"""What a soak measures: per-process memory, open files and spool counters over time, and the verdicts on them.

benchmarks/soak.py runs the soak (a recorded ``vllm serve`` under a saturating load for 30 minutes
or more) and calls these every sampling interval and at the end:

- ``sample_process(pid, run_dir)``: the process's resident memory from ``/proc/PID/status``
  (VmRSS and its anonymous / file / shared parts), how much of it is the spool's mapped segment
  (``/proc/PID/smaps``: the Rss of mappings of ``RUN/spool/*.spool``), and its open file descriptors
  (``/proc/PID/fd``); bytes and counts.
- ``sample_spools(run_dir)``: per recorder (role, pid, instance), its spool segments on disk (count,
  allocated bytes) and what their headers say (``spool.read_header``): rows dropped and internal
  errors so far.
- ``linear_trend(t_s, values)``: the least-squares slope per hour with a 95% moving-block bootstrap
  interval (blocks of consecutive samples, so that the samples' autocorrelation widens the interval
  instead of hiding in it).
- ``bounded_verdict(trend, limit)``: 'bounded' when the whole interval lies at or below a growth
  limit fixed before the run, 'growing' when it lies above it, 'not resolved' otherwise.
- ``saturation(run_dir, start_ns, end_ns)``: how much of the load period the engine's waiting queue
  was non-empty (the steps table's num_waiting_reqs), the definition of a saturated engine here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from servescope.bench.load.process_tree import descendants
from servescope.run.names import Table
from servescope.run.spool import SpoolError, read_header, segments, spool_dir
from servescope.run.tables import read_table

STATUS_FIELDS = {"VmRSS": "rss_bytes", "RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes",
                 "RssShmem": "rss_shmem_bytes"}
SECONDS_PER_HOUR = 3600.0
BOUNDED, GROWING, NOT_RESOLVED = "bounded", "growing", "not resolved"


# --------------------------------------------------------------------------- sampling (/proc, spool headers)


def sample_process(pid: int, run_dir: str | os.PathLike) -> dict | None:
    """Return the process's resident memory (bytes: total, anon, file, shmem, spool mapping) and open fds; None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    sample = dict.fromkeys(STATUS_FIELDS.values(), 0)
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            sample[STATUS_FIELDS[key]] = int(value.split()[0]) * 1024  # kB
    if "VmRSS:" not in status:  # a zombie: it has ended, its parent has not reaped it yet
        return None
    sample["spool_resident_bytes"] = spool_resident_bytes(smaps, spool_dir(run_dir))
    sample["rss_outside_spool_bytes"] = sample["rss_bytes"] - sample["spool_resident_bytes"]
    sample["open_fds"] = open_fds
    return sample


def spool_resident_bytes(smaps: str, directory: Path) -> int:
    """Return the resident bytes (Rss) of the mappings of spool segments under directory in a /proc/PID/smaps text."""
    prefix = str(Path(directory).resolve()) + os.sep
    total, in_spool = 0, False
    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: address range, perms, ..., path
            path = fields[5] if len(fields) > 5 else ""
            in_spool = path.startswith(prefix) and path.endswith(".spool")
        elif in_spool and fields[0] == "Rss:":
            total += int(fields[1]) * 1024  # kB
    return total


def sample_spools(run_dir: str | os.PathLike) -> dict[str, dict]:
    """Return '<role>-<pid>-<instance>' -> pid, role, segments, bytes on disk (allocated), rows dropped and internal errors."""
    out: dict[str, dict] = {}
    for path in segments(run_dir):
        try:
            header = read_header(path)
            allocated = os.stat(path).st_blocks * 512
        except (SpoolError, FileNotFoundError):  # compacted and deleted meanwhile, or not a segment
            continue
        entry = out.setdefault(f"{header.role}-{header.pid}-{header.instance}", {
            "pid": header.pid, "role": header.role, "segments": 0, "bytes_on_disk": 0, "rows_dropped": 0,
            "internal_errors": 0})
        entry["segments"] += 1
        entry["bytes_on_disk"] += allocated
        entry["rows_dropped"] = max(entry["rows_dropped"], header.rows_dropped)  # a process total, in each header
        entry["internal_errors"] = max(entry["internal_errors"], header.internal_errors)
    return out


def load_average_1min() -> float:
    """Return the machine's 1-minute load average (/proc/loadavg)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------- trends and verdicts


def ols_slope(t: np.ndarray, y: np.ndarray) -> float:
    """Return the least-squares slope of y against t (y's unit per t's unit); 0 when t does not vary."""
    tc = t - t.mean()
    denominator = float(tc @ tc)
    return 0.0 if denominator == 0 else float(tc @ (y - y.mean())) / denominator


def ols_slopes(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the least-squares slope of each row of y against the same row of t (0 where t does not vary)."""
    tc = t - t.mean(axis=1, keepdims=True)
    denominator = (tc * tc).sum(axis=1)
    numerator = (tc * (y - y.mean(axis=1, keepdims=True))).sum(axis=1)
    return np.divide(numerator, denominator, out=np.zeros(len(t)), where=denominator != 0)


def linear_trend(t_s, values, *, block_samples: int = 12, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> dict:
    """Return the slope of values per hour (values' unit / h) with its moving-block bootstrap interval.

    Blocks of block_samples consecutive (t, value) pairs are drawn with replacement until as many
    samples as there are; each resample's least-squares slope is one bootstrap estimate."""
    t = np.asarray(t_s, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    n = len(t)
    if n < 3:
        return {"samples": n, "slope_per_h": None, "ci95_per_h": None}
    block = max(1, min(block_samples, n))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(n_boot, math.ceil(n / block)))
    index = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)[:, :n]
    estimates = ols_slopes(t[index], y[index])
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(estimates, [tail, 100.0 - tail])
    return {"samples": n, "block_samples": block, "slope_per_h": ols_slope(t, y) * SECONDS_PER_HOUR,
            "ci95_per_h": [float(lo) * SECONDS_PER_HOUR, float(hi) * SECONDS_PER_HOUR]}


def bounded_verdict(trend: dict, limit_per_h: float) -> str:
    """Return 'bounded' (the interval at or below limit_per_h), 'growing' (above it) or 'not resolved'."""
    ci = trend.get("ci95_per_h")
    if ci is None:
        return NOT_RESOLVED
    if ci[1] <= limit_per_h:
        return BOUNDED
    if ci[0] > limit_per_h:
        return GROWING
    return NOT_RESOLVED


# --------------------------------------------------------------------------- saturation


def saturation(run_dir: str | os.PathLike, start_ns: int, end_ns: int, minute_s: float = 60.0) -> dict:
    """Return the share of steps and of time (from one step's start to the next) with num_waiting_reqs > 0 in
    [start_ns, end_ns) (CLOCK_MONOTONIC ns), overall and per minute, with the running and waiting means."""
    steps = read_table(run_dir, Table.STEPS).select(["schedule_start_ns", "num_waiting_reqs", "num_running_reqs"])
    start = np.asarray(steps.column("schedule_start_ns").to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(start, kind="stable")
    start = start[order]
    waiting = np.asarray(steps.column("num_waiting_reqs").to_numpy(zero_copy_only=False), dtype=np.int64)[order]
    running = np.asarray(steps.column("num_running_reqs").to_numpy(zero_copy_only=False), dtype=np.int64)[order]
    inside = (start >= start_ns) & (start < end_ns)
    start, waiting, running = start[inside], waiting[inside], running[inside]
    if len(start) < 2:
        return {"steps": int(len(start)), "time_share_waiting": None, "step_share_waiting": None}
    held_ns = np.diff(np.append(start, end_ns))  # each step's state holds until the next step (or the end)
    queued = waiting > 0
    minute = ((start - start_ns) // int(minute_s * 1e9)).astype(np.int64)
    per_minute = []
    for m in range(int(minute.max()) + 1):
        sel = minute == m
        if held_ns[sel].sum() > 0:
            per_minute.append(float(held_ns[sel & queued].sum() / held_ns[sel].sum()))
    return {
        "steps": int(len(start)),
        "steps_per_s": len(start) / ((end_ns - start_ns) / 1e9),
        "time_share_waiting": float(held_ns[queued].sum() / held_ns.sum()),
        "step_share_waiting": float(queued.mean()),
        "time_share_waiting_per_minute": per_minute,
        "mean_waiting_reqs": float(waiting.mean()),
        "mean_running_reqs": float(running.mean()),
        "max_running_reqs": int(running.max()),
    }


# --------------------------------------------------------------------------- an unrecorded server's processes (/proc)


def process_title(pid: int) -> str | None:
    """Return a process's command line as ps shows it (setproctitle rewrites it); None if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


# vLLM names its processes with setproctitle: VLLM_PROCESS_NAME_PREFIX (default 'VLLM') '::' the name
VLLM_ROLES = (("EngineCore", "EngineCore"), ("Worker", "Worker"), ("APIServer", "APIServer"))


def vllm_role(title: str, prefix: str = "VLLM") -> str | None:
    """Return 'EngineCore', 'Worker' or 'APIServer' for a vLLM process title ('VLLM::EngineCore', 'VLLM::Worker_TP0',
    ...), None for any other process."""
    head = title.split(" ", 1)[0]
    if not head.startswith(prefix + "::"):
        return None
    name = head[len(prefix) + 2:]
    for start, role in VLLM_ROLES:
        if name.startswith(start):
            return role
    return None


def server_processes(root_pid: int, prefix: str = "VLLM") -> dict[int, str]:
    """Return {pid: role} of an unrecorded vLLM server: the root (the API server, 'APIServer' unless vLLM named it
    otherwise) and those of its descendants vLLM named (EngineCore, Worker); other descendants (multiprocessing's
    resource tracker, compilers) are left out."""
    out = {}
    title = process_title(root_pid)
    if title is None:
        return out
    out[root_pid] = vllm_role(title, prefix) or "APIServer"
    for pid in descendants(root_pid):
        title = process_title(pid)
        role = vllm_role(title, prefix) if title is not None else None
        if role is not None:
            out[pid] = role
    return out
