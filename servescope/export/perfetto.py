"""A run as a Chrome trace-event JSON file, for ui.perfetto.dev and chrome://tracing.

Layout of the trace (times in microseconds from the run's first record):

* one process per recording process (pid and role from ``processes/*.json``; a table part's
  writer is read off its file name, ``<role>-<pid>.parquet``, or ``<role>-<pid>-<seq>.parquet`` in runs
  recorded before servescope 0.2);
* EngineCore: one slice per engine step (``steps``), schedule -> update, with its CPU phases
  nested inside, named by ``StepPhase.DISPLAY`` (schedule, execute (launch), wait for the GPU's
  output, update (emit tokens)); steps that overlap (async scheduling) go to
  a second "engine steps" lane; counters for the running / waiting queues and KV-cache usage;
* workers: each rank's timed regions on its host track (nested regions stay nested) and, where
  the GPU timers resolved them, the same regions on a separate "GPU" track; one track per rank, named
  with its tensor- and pipeline-parallel rank where the run recorded them ("rank 1, TP 1, PP 0");
* front end: the output processor's work per engine output (``frontend_steps``), and every
  request's lifetime as an async slice (arrival -> finished) with nested queued / prefill /
  decode parts and instant events for the first token and each preemption;
* servescope's client (``client_requests``, ``client_chunks``; the only track of a client-only
  run): every request as the client saw it, an async "client request" slice (sent -> end) with
  nested "to first token" and "streaming" parts, and an instant named after its status when it
  did not end 'ok' (its error in the arguments). The client's slices sit on the host clock
  beside the engine's; a trace whose client and engine did not share a host clock says so in
  ``otherData.client_clock``.

Complete ("X") events are used for every slice on a thread track, nestable async events
("b"/"e"/"n") for requests, "C" for counters and "M" for names. Events are written sorted by
time, so every track's timestamps increase.

Privacy: a request's slice carries its request id only with ``include_request_ids=True`` (vLLM's
ids embed the client's ``X-Request-Id``); by default it is named by its position in the run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.analysis.client_view import ClientRequests, client_requests
from servescope.analysis.client_vs_engine import ClientBesideEngine
from servescope.analysis.request_metrics import MISSING_NS, compute_request_metrics
from servescope.run.columns import int_column
from servescope.run.data import load_run
from servescope.run import directory as rundir
from servescope.run.tables import report_warnings
from servescope.run.names import ClientStatus, RequestEvent, StepPhase, Table

PART_NAME = re.compile(r"^(?P<role>.+)-(?P<pid>\d+)-(?P<seq>\d+)\.parquet$")
STEP_PHASES = tuple((StepPhase.DISPLAY[p], *StepPhase.columns(p)) for p in StepPhase.ALL)  # (slice name, start, end)
STEP_ARGS = ("total_scheduled_tokens", "num_prefill_reqs", "num_prefill_tokens", "num_decode_reqs",
             "num_decode_tokens", "num_spec_tokens", "num_running_reqs", "num_waiting_reqs", "kv_cache_usage",
             "num_preempted_reqs", "num_emitted_tokens", "num_finished_reqs")
# thread ids per kind of slice, apart, since one process can hold several kinds (front end and EngineCore share a
# pid when vLLM runs without multiprocessing)
ENGINE_STEP_TID = 1  # lanes 1, 2, ... of engine steps
FRONTEND_TID = 50  # lanes 50, 51, ... of the output processor
WORKER_HOST_TID = 100  # + 10 * rank + lane
WORKER_GPU_TID = 10_000  # + 10 * rank + lane
SYNTHETIC_PID = 9_000_000  # processes known only by role (a part name without a pid)
REQUEST_CATEGORY = "request"
CLIENT_CATEGORY = "client_request"
CLIENT_ID_BASE = 1 << 40  # client slices' async ids, apart from the engine requests' (0, 1, ...)
CLIENT_ROLE = "servescope client"


def write_perfetto_trace(run_dir: str | os.PathLike, path: str | os.PathLike, *, include_request_ids: bool = False,
                         strict: bool = False, warnings: list[str] | None = None) -> int:
    """Write the run as Chrome trace-event JSON to path; return the number of trace events.

    The run's problems (load_run's warnings) are appended to warnings; strict raises RunDirError instead.
    """
    run_path = rundir.check_run_dir(run_dir)
    other: dict = {}
    events = trace_events(run_path, other, include_request_ids=include_request_ids, strict=strict, warnings=warnings)
    manifest = _manifest(run_path)
    document = {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": "servescope",
            "run_dir": str(run_path),
            "run_id": str(manifest.get("run_id", "")),
            "engine": " ".join(str(v) for v in ((manifest.get("engine") or {}).get("name"),
                                                (manifest.get("engine") or {}).get("version")) if v),
            "clock": "CLOCK_MONOTONIC of the host; ts = microseconds since the run's first record",
            **other,
        },
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(document, f, separators=(",", ":"), allow_nan=False)
    return len(events)


def trace_events(run_dir: str | os.PathLike, other_data: dict | None = None, *, include_request_ids: bool = False,
                 strict: bool = False, warnings: list[str] | None = None) -> list[dict]:
    """Return the run's trace events (metadata first, then every event by time); notes go into other_data."""
    run_path = rundir.check_run_dir(run_dir)
    run = load_run(run_path, strict=strict)
    report_warnings(run.warnings, warnings)
    roles = {int(p["pid"]): str(p.get("role") or "process") for p in rundir.read_processes(run_path)
             if p.get("pid") is not None}
    engine_pids = set(roles)
    parts = {name: _parts(run, name, roles) for name in (Table.STEPS, Table.WORKER_REGIONS, Table.FRONTEND_STEPS)}
    t0 = _time_zero(run)
    if t0 is None:
        return []
    clock = _Clock(t0)
    events: list[dict] = []
    names = _TrackNames()
    for pid, steps in parts[Table.STEPS]:
        events += _step_events(steps, pid, clock, names)
    for pid, regions in parts[Table.WORKER_REGIONS]:
        events += _region_events(regions, pid, clock, names)
    for pid, front in parts[Table.FRONTEND_STEPS]:
        events += _frontend_events(front, pid, clock, names)
    request_pid = _request_pid(parts, run, roles)
    events += _request_events(run, request_pid, clock, names, include_request_ids)
    if run.client_requests.num_rows:
        client = client_requests(run)
        events += _client_events(client, _client_pid(run, roles, engine_pids), clock, names, include_request_ids)
        if run.request_events.num_rows and other_data is not None:
            shared = ClientBesideEngine(run, client, compute_request_metrics(run)).shared_clock
            other_data["client_clock"] = ("shared with the engine (one host)" if shared else
                                          "not shown to be shared with the engine: the client's slices may be "
                                          "offset from the engine's")
    events.sort(key=lambda e: e["ts"])  # stable: a parent emitted before its child stays first on ties
    return names.metadata(roles) + events


# --------------------------------------------------------------------------- sources


def _manifest(run_path: Path) -> dict:
    try:
        manifest = rundir.read_json(run_path / "manifest.json")
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _parts(run, table: str, roles: dict[int, str]) -> list[tuple[int, pa.Table]]:
    """Return (writer pid, rows) per writer of a loaded table; a part without a pid in its name gets a synthetic one."""
    by_pid: dict[int, list[pa.Table]] = {}
    for span, data in run.rows_by_part(table):
        pid = _writer_pid(Path(span.file), roles)
        by_pid.setdefault(pid, []).append(data)
    return [(pid, pa.concat_tables(tables)) for pid, tables in sorted(by_pid.items()) if sum(map(len, tables))]


def _writer_of(part: Path, roles: dict[int, str]) -> dict | None:
    """Return {role, pid} of the process that wrote a part (or a spool), from its name, or None."""
    for pid, role in roles.items():  # recorded processes: <role>-<pid>-<instance>[.pNNN] (a spool's parts, or itself)
        name = f"{role}-{pid}"
        if part.stem == name or part.stem.startswith((name + "-", name + ".p")):
            return {"role": role, "pid": pid}
    match = PART_NAME.match(part.name)  # <role>-<pid>-<seq>.parquet: runs recorded before servescope 0.2
    return {"role": match["role"], "pid": int(match["pid"])} if match else None


def _writer_pid(part: Path, roles: dict[int, str]) -> int:
    """Return the pid of the process that wrote a part (noting its role), else a synthetic pid for the name."""
    match = _writer_of(part, roles)
    if match:
        roles.setdefault(match["pid"], match["role"])
        return match["pid"]
    role = part.stem
    pid = next((p for p, r in roles.items() if r == role and p >= SYNTHETIC_PID), None)
    if pid is None:
        pid = SYNTHETIC_PID + len([p for p in roles if p >= SYNTHETIC_PID])
        roles[pid] = role
    return pid


def _request_pid(parts: dict, run, roles: dict[int, str]) -> int:
    """Return the process that shows request lifetimes: the front end, else the EngineCore, else a synthetic one."""
    for table in (Table.FRONTEND_STEPS, Table.STEPS):
        if parts[table]:
            return parts[table][0][0]
    for span in run.parts.get(Table.REQUEST_EVENTS, []):
        match = _writer_of(Path(span.file), roles)
        if match:
            roles.setdefault(int(match["pid"]), match["role"])
            return int(match["pid"])
    roles.setdefault(SYNTHETIC_PID - 1, "requests")
    return SYNTHETIC_PID - 1


def _time_zero(run) -> int | None:
    """Return the earliest recorded time (ns) of the run, None when nothing was recorded."""
    columns = [(run.request_events, "time_ns"), (run.token_emissions, "time_ns"),
               (run.steps, "schedule_start_ns"), (run.steps, "update_end_ns"),
               (run.worker_regions, "host_start_ns"), (run.worker_regions, "gpu_start_ns"),
               (run.frontend_steps, "process_start_ns"), (run.client_requests, "send_ns"),
               (run.client_chunks, "time_ns")]
    lows = [pc.min(table[name]).as_py() for table, name in columns if table.num_rows]
    lows = [v for v in lows if v is not None]
    return min(lows) if lows else None


def _ns(table: pa.Table, name: str) -> np.ndarray:
    """Return an int64 ns column, MISSING_NS for nulls."""
    return int_column(table, name, MISSING_NS)


class _Clock:
    """Converts CLOCK_MONOTONIC ns to trace microseconds since the run's first record."""

    def __init__(self, t0_ns: int):
        self.t0_ns = t0_ns

    def us(self, ns: np.ndarray) -> list[float]:
        """Return ns times as microseconds since t0, rounded to the nanosecond."""
        return np.round((np.asarray(ns, dtype=np.int64) - self.t0_ns) / 1e3, 3).tolist()

    @staticmethod
    def dur(start_ns: np.ndarray, end_ns: np.ndarray) -> list[float]:
        """Return end - start in microseconds (never negative)."""
        return np.round(np.maximum(end_ns - start_ns, 0) / 1e3, 3).tolist()


class _TrackNames:
    """Collects the processes and threads used, for the metadata ("M") events."""

    def __init__(self) -> None:
        self.threads: dict[tuple[int, int], tuple[str, int]] = {}
        self.pids: set[int] = set()

    def thread(self, pid: int, tid: int, name: str, sort_index: int | None = None) -> None:
        """Record a thread track's name (and its order within the process)."""
        self.pids.add(pid)
        self.threads.setdefault((pid, tid), (name, tid if sort_index is None else sort_index))

    def process(self, pid: int) -> None:
        """Record a process that has tracks without threads (counters, async slices)."""
        self.pids.add(pid)

    def metadata(self, roles: dict[int, str]) -> list[dict]:
        """Return process_name / process_sort_index / thread_name / thread_sort_index events."""
        def order(pid: int) -> tuple[int, int]:
            role = roles.get(pid, "")
            rank = 0 if ("Main" in role or "API" in role or "front" in role.lower()) else (
                1 if "EngineCore" in role else 2)
            return rank, pid

        events = []
        for index, pid in enumerate(sorted(self.pids, key=order)):
            role = roles.get(pid, "process")
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0,
                           "args": {"name": role}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": 0,
                           "args": {"sort_index": index}})
        for (pid, tid), (name, sort_index) in sorted(self.threads.items()):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0,
                           "args": {"name": name}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": 0,
                           "args": {"sort_index": sort_index}})
        return events


# --------------------------------------------------------------------------- lanes


def assign_lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Return a lane (0, 1, ...) per interval so that intervals on one lane are disjoint or properly nested.

    Intervals are visited by start (longer first on ties); each goes to the first lane where it
    starts after the innermost open interval ends, or lies inside it.
    """
    n = len(start)
    lanes = np.zeros(n, dtype=np.int64)
    if n == 0:
        return lanes
    order = np.lexsort((-(np.asarray(end) - np.asarray(start)), start))
    stacks: list[list[int]] = []  # per lane: ends of the open (enclosing) intervals
    for k in order.tolist():
        s, e = int(start[k]), int(end[k])
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                lanes[k] = lane
                break
        else:
            stacks.append([e])
            lanes[k] = len(stacks) - 1
    return lanes


def _complete_events(name, cat: str, pid: int, tids, start_ns: np.ndarray, end_ns: np.ndarray,
                     clock: _Clock, args: list[dict] | None = None) -> list[dict]:
    """Return "X" events (name: a str or one per row; tids: one per row), in order of start then length."""
    order = np.lexsort((-(end_ns - start_ns), start_ns))
    ts, dur = clock.us(start_ns[order]), clock.dur(start_ns[order], end_ns[order])
    tids = np.asarray(tids)[order].tolist()
    names = [name] * len(order) if isinstance(name, str) else np.asarray(name, dtype=object)[order].tolist()
    events = []
    for k, row in enumerate(order.tolist()):
        event = {"ph": "X", "name": names[k], "cat": cat, "pid": pid, "tid": tids[k], "ts": ts[k], "dur": dur[k]}
        if args is not None:
            event["args"] = args[row]
        events.append(event)
    return events


def _row_args(table: pa.Table, columns: tuple[str, ...], rows: np.ndarray) -> list[dict]:
    """Return per selected row a dict of the non-null values of columns."""
    picked = table.select(list(columns)).take(pa.array(rows, type=pa.int64())).to_pylist()
    return [{k: v for k, v in row.items() if v is not None} for row in picked]


# --------------------------------------------------------------------------- EngineCore steps


def _step_events(steps: pa.Table, pid: int, clock: _Clock, names: _TrackNames) -> list[dict]:
    """Return one EngineCore's step slices, their nested CPU phases and its queue / KV counters."""
    phase_start = [_ns(steps, a) for _, a, _ in STEP_PHASES]
    phase_end = [_ns(steps, b) for _, _, b in STEP_PHASES]
    big = np.iinfo(np.int64).max
    starts = np.stack([np.where(s == MISSING_NS, big, s) for s in phase_start])
    ends = np.stack([np.where(e == MISSING_NS, MISSING_NS, e) for e in phase_end])
    step_start, step_end = starts.min(axis=0), ends.max(axis=0)
    ok = (step_start != big) & (step_end != MISSING_NS) & (step_end >= step_start)
    rows = np.flatnonzero(ok)
    step_start, step_end = step_start[rows], step_end[rows]
    lanes = assign_lanes(step_start, step_end)
    tids = ENGINE_STEP_TID + lanes
    for lane in np.unique(lanes).tolist():
        names.thread(pid, ENGINE_STEP_TID + lane, "engine steps" + (f" (lane {lane + 1}, overlapping)" if lane else ""))
    step_ids = pc.fill_null(steps["step_id"], -1).to_numpy(zero_copy_only=False)[rows]
    args = _row_args(steps, ("step_id",) + STEP_ARGS, rows)
    events = _complete_events([f"step {s}" for s in step_ids.tolist()], "step", pid, tids, step_start, step_end,
                              clock, args)
    previous_end = step_start.copy()
    for (phase, _, _), start, end in zip(STEP_PHASES, phase_start, phase_end):
        start, end = start[rows], end[rows]
        has = (start != MISSING_NS) & (end != MISSING_NS)
        start = np.clip(np.maximum(start, previous_end), step_start, step_end)  # siblings never overlap
        end = np.clip(end, start, step_end)
        previous_end = np.where(has, end, previous_end)
        sel = np.flatnonzero(has)
        events += _complete_events(phase, "step_phase", pid, tids[sel], start[sel], end[sel], clock)
    events += _counter_events(steps, pid, clock, names)
    return events


def _counter_events(steps: pa.Table, pid: int, clock: _Clock, names: _TrackNames) -> list[dict]:
    """Return the running / waiting queue and KV-cache usage counters, one sample per step (after scheduling)."""
    at = _ns(steps, "schedule_end_ns")
    at = np.where(at == MISSING_NS, _ns(steps, "schedule_start_ns"), at)
    running = steps["num_running_reqs"].to_pylist()
    waiting = steps["num_waiting_reqs"].to_pylist()
    kv = steps["kv_cache_usage"].to_pylist()
    ts = clock.us(at)
    events = []
    for k in np.flatnonzero(at != MISSING_NS).tolist():
        if running[k] is not None or waiting[k] is not None:
            events.append({"ph": "C", "name": "requests", "pid": pid, "tid": 0, "ts": ts[k],
                           "args": {"running": running[k] or 0, "waiting": waiting[k] or 0}})
        if kv[k] is not None:
            events.append({"ph": "C", "name": "KV cache usage (%)", "pid": pid, "tid": 0, "ts": ts[k],
                           "args": {"used": round(100.0 * kv[k], 4)}})
    if events:
        names.process(pid)
    return events


# --------------------------------------------------------------------------- workers and front end


def _region_events(regions: pa.Table, pid: int, clock: _Clock, names: _TrackNames) -> list[dict]:
    """Return one worker process's timed regions: host intervals per rank, GPU intervals on GPU tracks."""
    rank = pc.fill_null(regions["rank"], 0).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(pc.fill_null(regions["region"], "region")).combine_chunks()
    region = np.asarray(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy()]
    placement = {r: _placement(regions, rank == r) for r in np.unique(rank).tolist()}
    arg_columns = tuple(c for c in ("step_id", "gpu_ns", "engine_index", "tp_rank", "pp_rank")
                        if c in regions.column_names)
    events = []
    for source, start_col, end_col, base, label in (
        ("host", "host_start_ns", "host_end_ns", WORKER_HOST_TID, "rank {rank}{placement}"),
        ("gpu", "gpu_start_ns", "gpu_end_ns", WORKER_GPU_TID, "GPU (rank {rank}{placement})"),
    ):
        start, end = _ns(regions, start_col), _ns(regions, end_col)
        for r in np.unique(rank).tolist():
            rows = np.flatnonzero((rank == r) & (start != MISSING_NS) & (end != MISSING_NS) & (end >= start))
            if rows.size == 0:
                continue
            lanes = assign_lanes(start[rows], end[rows])
            tids = base + 10 * r + lanes
            for lane in np.unique(lanes).tolist():
                names.thread(pid, base + 10 * r + lane,
                             label.format(rank=r, placement=placement[r]) + (f" (lane {lane + 1})" if lane else ""))
            args = _row_args(regions, arg_columns, rows)
            events += _complete_events(region[rows], f"worker_{source}", pid, tids, start[rows], end[rows], clock,
                                       args)
    return events


def _placement(regions: pa.Table, mine: np.ndarray) -> str:
    """Return ', TP t, PP p' (and ', engine e' past engine 0) for one rank's rows, '' where the run did not record it."""
    values = {}
    for column, name in (("tp_rank", "TP"), ("pp_rank", "PP"), ("engine_index", "engine")):
        if column in regions.column_names:
            known = pc.drop_null(regions[column].filter(pa.array(mine))).to_pylist()
            values[name] = known[0] if known else None
    if values.get("TP") is None and values.get("PP") is None:
        return ""
    text = f", TP {values['TP']}, PP {values['PP']}"
    return text + (f", engine {values['engine']}" if values.get("engine") else "")


def _frontend_events(front: pa.Table, pid: int, clock: _Clock, names: _TrackNames) -> list[dict]:
    """Return the front end's output processing slices (one per engine output message)."""
    start, end = _ns(front, "process_start_ns"), _ns(front, "process_end_ns")
    rows = np.flatnonzero((start != MISSING_NS) & (end != MISSING_NS) & (end >= start))
    lanes = assign_lanes(start[rows], end[rows])
    for lane in np.unique(lanes).tolist():
        names.thread(pid, FRONTEND_TID + lane, "output processor" + (f" (lane {lane + 1})" if lane else ""))
    args = _row_args(front, ("num_outputs",), rows)
    return _complete_events("process_outputs", "frontend", pid, FRONTEND_TID + lanes, start[rows], end[rows],
                            clock, args)


# --------------------------------------------------------------------------- requests


def _request_events(run, pid: int, clock: _Clock, names: _TrackNames, include_request_ids: bool) -> list[dict]:
    """Return every request's lifetime as nestable async slices with queued / prefill / decode parts and instants.

    A request's args carry its id only when include_request_ids; otherwise "request": its position (from 0).
    """
    m = compute_request_metrics(run)
    if len(m) == 0:
        return []
    names.process(pid)
    arrival = m.arrival_ns
    first_event = np.where(arrival != MISSING_NS, arrival,
                           np.where(m.first_scheduled_ns != MISSING_NS, m.first_scheduled_ns, m.first_token_ns))
    end = np.maximum(m.finished_ns, m.last_token_ns)  # MISSING_NS is the int64 minimum
    keep = np.flatnonzero((first_event != MISSING_NS) & (end != MISSING_NS) & (end >= first_event))
    preempted = run.request_events.filter(pc.equal(run.request_events["event"], RequestEvent.PREEMPTED))
    preempt_at = {}
    for request_id, time_ns in zip(preempted["request_id"].to_pylist(), _ns(preempted, "time_ns").tolist()):
        if time_ns != MISSING_NS:
            preempt_at.setdefault(request_id, []).append(time_ns)

    def us(values):
        return clock.us(np.asarray(values, dtype=np.int64))

    start_us, end_us = us(first_event[keep]), us(end[keep])
    sched, first, last = m.first_scheduled_ns[keep], m.first_token_ns[keep], m.last_token_ns[keep]
    sched_us, first_us, last_us = us(np.where(sched == MISSING_NS, 0, sched)), \
        us(np.where(first == MISSING_NS, 0, first)), us(np.where(last == MISSING_NS, 0, last))
    ids = m.request_id[keep].tolist()
    prompt, output = m.prompt_tokens[keep].tolist(), m.output_tokens[keep].tolist()
    reasons = m.finish_reason[keep].tolist()
    ttft, e2e = m.ttft_s[keep].tolist(), m.e2e_s[keep].tolist()
    events = []
    for k, request_id in enumerate(ids):
        a, e = start_us[k], end_us[k]
        common = {"cat": REQUEST_CATEGORY, "id": f"0x{int(keep[k]):x}", "pid": pid, "tid": 0}
        args = {"request_id": request_id} if include_request_ids else {"request": int(keep[k])}
        args["output_tokens"] = output[k]
        if prompt[k] >= 0:
            args["prompt_tokens"] = prompt[k]
        if reasons[k] is not None:
            args["finish_reason"] = reasons[k]
        for key, value in (("ttft_ms", ttft[k]), ("e2e_ms", e2e[k])):
            if value == value:  # not NaN
                args[key] = round(value * 1e3, 3)
        events.append({"ph": "b", "name": "request", "ts": a, "args": args, **common})
        s = sched_us[k] if sched[k] != MISSING_NS else None
        t0 = first_us[k] if first[k] != MISSING_NS else None
        tn = last_us[k] if last[k] != MISSING_NS else None
        for part, lo, hi in (("queued", a, s), ("prefill", s, t0), ("decode", t0, tn)):
            if lo is not None and hi is not None and hi > lo:
                lo, hi = max(lo, a), min(hi, e)
                events.append({"ph": "b", "name": part, "ts": lo, **common})
                events.append({"ph": "e", "name": part, "ts": hi, **common})
        if t0 is not None:
            events.append({"ph": "n", "name": "first token", "ts": min(max(t0, a), e), **common})
        for time_ns in preempt_at.get(request_id, ()):
            ts = clock.us(np.array([time_ns]))[0]
            events.append({"ph": "n", "name": RequestEvent.PREEMPTED, "ts": min(max(ts, a), e), **common})
        events.append({"ph": "e", "name": "request", "ts": e, **common})
    return _ordered_per_request(events)


def _client_pid(run, roles: dict[int, str], engine_pids: set[int]) -> int:
    """Return the process of the client's slices: the writer of client_requests (named 'servescope client' unless
    it is also an engine process, as in process), else a synthetic one."""
    for span in run.parts.get(Table.CLIENT_REQUESTS, []):
        match = _writer_of(Path(span.file), {})
        if match:
            pid = int(match["pid"])
            if pid not in engine_pids:
                roles[pid] = f"{CLIENT_ROLE} ({match['role']})"
            return pid
    roles.setdefault(SYNTHETIC_PID - 2, CLIENT_ROLE)
    return SYNTHETIC_PID - 2


def _client_events(client: ClientRequests, pid: int, clock: _Clock, names: _TrackNames,
                   include_request_ids: bool) -> list[dict]:
    """Return every client request as an async slice (sent -> end) with 'to first token' and 'streaming' parts."""
    m = client.metrics
    start, end = m.arrival_ns, np.maximum(client.end_ns, m.last_token_ns)  # MISSING_NS is the int64 minimum
    keep = np.flatnonzero((start != MISSING_NS) & (end != MISSING_NS) & (end >= start))
    if keep.size == 0:
        return []
    names.process(pid)

    def us(values: np.ndarray) -> list[float]:
        return clock.us(np.where(values == MISSING_NS, 0, values))

    start_us, end_us = us(start[keep]), us(end[keep])
    first_us, last_us = us(m.first_token_ns[keep]), us(m.last_token_ns[keep])
    has_token = m.first_token_ns[keep] != MISSING_NS
    chunks = np.diff(m.chunk_offsets)[keep].tolist()
    events = []
    for k, row in enumerate(keep.tolist()):
        a, e = start_us[k], end_us[k]
        common = {"cat": CLIENT_CATEGORY, "id": f"0x{CLIENT_ID_BASE + row:x}", "pid": pid, "tid": 0}
        status, error = client.status[row], client.error[row]
        args = {"request_id": m.request_id[row]} if include_request_ids else {"request": row}
        args.update({"status": status, "output_tokens": int(m.output_tokens[row]), "chunks": chunks[k]})
        if m.prompt_tokens[row] >= 0:
            args["prompt_tokens"] = int(m.prompt_tokens[row])
        if include_request_ids and client.server_request_id[row] is not None:
            args["server_request_id"] = client.server_request_id[row]
        for key, value in (("ttft_ms", m.ttft_s[row]), ("e2e_ms", m.e2e_s[row])):
            if value == value:  # not NaN
                args[key] = round(float(value) * 1e3, 3)
        if error is not None:
            args["error"] = error
        events.append({"ph": "b", "name": "client request", "ts": a, "args": args, **common})
        if has_token[k]:
            t0, tn = min(max(first_us[k], a), e), min(max(last_us[k], a), e)
            for part, lo, hi in (("to first token", a, t0), ("streaming", t0, tn)):
                if hi > lo:
                    events.append({"ph": "b", "name": part, "ts": lo, **common})
                    events.append({"ph": "e", "name": part, "ts": hi, **common})
        if status != ClientStatus.OK:
            events.append({"ph": "n", "name": str(status), "ts": e, "args": {"error": error}, **common})
        events.append({"ph": "e", "name": "client request", "ts": e, **common})
    return _ordered_per_request(events, parent="client request")


def _ordered_per_request(events: list[dict], parent: str = "request") -> list[dict]:
    """Return one request's async events ordered so that, at equal times, ends precede begins (parent last/first).

    Order at one timestamp: child ends, instants, then begins; the request's own begin comes
    first and its own end last, so the stable global sort by time keeps them nested.
    """
    def rank(event: dict) -> int:
        if event["name"] == parent:
            return 0 if event["ph"] == "b" else 4
        return {"e": 1, "n": 2, "b": 3}[event["ph"]]

    return sorted(events, key=lambda ev: (ev["id"], ev["ts"], rank(ev)))
