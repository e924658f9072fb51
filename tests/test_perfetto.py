"""servescope export --perfetto: the Chrome trace-event JSON of a run, validated event by event.

``validate_trace`` checks what ui.perfetto.dev and chrome://tracing rely on: required keys per
phase, known phases, every slice's track named, timestamps non-decreasing on every track (thread
slices, async request tracks, counters), complete ("X") slices on one thread properly nested,
and async begin/end pairs matched per request.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from runbuilder import RunBuilder
from servescope.export.perfetto import assign_lanes, write_perfetto_trace
from servescope.run.directory import RunDirError, read_processes
from servescope.run.names import StepPhase
from test_report import MS, PROCESSES, T0, build_engine_run, simulate_engine

PHASES = {"X", "b", "e", "n", "C", "M"}
EPSILON_US = 1e-3  # one nanosecond: ts and dur are rounded to ns separately


def validate_trace(document: dict) -> list[dict]:
    """Assert the trace is well-formed (see module docstring); return its events."""
    assert set(document) >= {"traceEvents", "displayTimeUnit"}
    events = document["traceEvents"]
    assert isinstance(events, list)
    process_names, thread_names = {}, {}
    for e in events:
        assert e["ph"] in PHASES, e
        assert isinstance(e["name"], str) and e["name"], e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "M":
            assert e["name"] in {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}, e
            if e["name"] == "process_name":
                process_names[e["pid"]] = e["args"]["name"]
            if e["name"] == "thread_name":
                thread_names[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            assert isinstance(e["tid"], int), e
        elif e["ph"] in "ben":
            assert isinstance(e["cat"], str) and isinstance(e["id"], str), e
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
    body = [e for e in events if e["ph"] != "M"]
    assert all(e["pid"] in process_names for e in body), "a process without a name"
    assert all((e["pid"], e["tid"]) in thread_names for e in body if e["ph"] == "X"), "a thread without a name"

    open_slices: dict[tuple, list[float]] = defaultdict(list)  # (pid, tid) -> ends of enclosing slices
    last_ts: dict[tuple, float] = {}
    async_stacks: dict[tuple, list[str]] = defaultdict(list)
    for e in body:
        if e["ph"] == "X":
            track = ("thread", e["pid"], e["tid"])
        elif e["ph"] == "C":
            track = ("counter", e["pid"], e["name"])
        else:
            track = ("async", e["pid"], e["cat"], e["id"])
        assert e["ts"] >= last_ts.get(track, 0.0), f"time goes back on {track}: {e}"
        last_ts[track] = e["ts"]
        if e["ph"] == "X":
            stack = open_slices[track]
            while stack and stack[-1] <= e["ts"] + EPSILON_US:
                stack.pop()
            end = e["ts"] + e["dur"]
            assert not stack or end <= stack[-1] + EPSILON_US, f"slice crosses its parent's end on {track}: {e}"
            stack.append(end)
        elif e["ph"] == "b":
            async_stacks[track].append(e["name"])
        elif e["ph"] == "e":
            assert async_stacks[track] and async_stacks[track][-1] == e["name"], f"unmatched end {e}"
            async_stacks[track].pop()
        elif e["ph"] == "n":
            assert async_stacks[track], f"instant outside its request: {e}"
    assert not any(async_stacks.values()), "async slices left open"
    return events


def _load(path) -> dict:
    with open(path) as f:
        return json.load(f)


def test_front_end_and_engine_steps_in_one_process_keep_their_own_threads(tmp_path):
    # vLLM without multiprocessing (the in-process engine of `servescope bench --in-process`, offline LLM with
    # VLLM_ENABLE_V1_MULTIPROCESSING=0) records the front end's output processing and the EngineCore's steps from
    # one pid: both once went to thread 1, the output processor's slices under the name "engine steps", crossing
    # the steps' slices there (found by tests/test_client_serve.py's in-process run)
    one = (4101, "MainProcess")
    run = build_engine_run(tmp_path, processes={"frontend": one, "engine": one, "worker": one})
    write_perfetto_trace(run, tmp_path / "trace.json", include_request_ids=True)
    events = validate_trace(_load(tmp_path / "trace.json"))
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    expected = {"frontend": "output processor", "step": "engine steps", "step_phase": "engine steps"}
    on_threads = Counter((e["cat"], threads[(e["pid"], e["tid"])].split(" (lane")[0])
                         for e in events if e["ph"] == "X" and e["cat"] in expected)
    assert {cat for cat, _ in on_threads} == set(expected)
    assert all(expected[cat] == thread for cat, thread in on_threads), on_threads


def test_trace_of_a_synthetic_engine_run(tmp_path):
    run = build_engine_run(tmp_path)
    requests, steps, regions, frontend = simulate_engine()
    n = write_perfetto_trace(run, tmp_path / "trace.json", include_request_ids=True)
    events = validate_trace(_load(tmp_path / "trace.json"))
    assert n == len(events)

    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {pid: role for pid, role in PROCESSES.values()}
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    engine, worker, front = PROCESSES["engine"][0], PROCESSES["worker"][0], PROCESSES["frontend"][0]
    assert {(engine, "engine steps"), (worker, "rank 0"), (worker, "GPU (rank 0)"),
            (front, "output processor")} <= threads

    slices = Counter((e["pid"], e["cat"], e["name"] if e["cat"] != "step" else "step")
                     for e in events if e["ph"] == "X")
    assert slices[(engine, "step", "step")] == len(steps)
    for phase in StepPhase.ALL:  # slices carry the phases' display names
        assert slices[(engine, "step_phase", StepPhase.DISPLAY[phase])] == len(steps)
    assert slices[(worker, "worker_host", "forward")] == len(steps)
    assert slices[(worker, "worker_gpu", "forward")] == len(steps)
    assert slices[(worker, "worker_gpu", "sample")] == 0  # no GPU time recorded for it
    assert slices[(front, "frontend", "process_outputs")] == len(frontend)

    # times: microseconds from the first record (request 0 arrives at T0)
    step0 = next(e for e in events if e["ph"] == "X" and e["name"] == "step 0")
    assert step0["ts"] == pytest.approx((steps[0]["schedule_start_ns"] - T0) / 1e3, abs=1e-3)
    assert step0["dur"] == pytest.approx((steps[0]["update_end_ns"] - steps[0]["schedule_start_ns"]) / 1e3,
                                         abs=1e-3)
    assert min(e["ts"] for e in events if e["ph"] != "M") == 0
    assert step0["args"]["num_prefill_tokens"] == steps[0]["num_prefill_tokens"]

    lifetimes = [e for e in events if e["ph"] == "b" and e["name"] == "request"]
    assert sorted(e["args"]["request_id"] for e in lifetimes) == sorted(r["id"] for r in requests.values())
    assert {e["pid"] for e in lifetimes} == {front}
    instants = Counter(e["name"] for e in events if e["ph"] == "n")
    assert instants == {"first token": len(requests), "preempted": 1}
    ends = {e["id"]: e["ts"] for e in events if e["ph"] == "e" and e["name"] == "request"}
    by_id = {e["args"]["request_id"]: e["id"] for e in lifetimes}
    r0 = requests[0]
    assert ends[by_id[r0["id"]]] == pytest.approx((r0["finished"] - T0) / 1e3, abs=1e-3)

    counters = Counter(e["name"] for e in events if e["ph"] == "C")
    assert counters == {"requests": len(steps), "KV cache usage (%)": len(steps)}


def test_overlapping_steps_of_async_scheduling_go_to_a_second_lane(tmp_path):
    builder = RunBuilder(tmp_path, "async")
    for k in range(6):  # step k+1 is scheduled while step k's output is still awaited
        s = T0 + k * 10 * MS
        builder.row("steps", step_id=k, engine_index=0, schedule_start_ns=s, schedule_end_ns=s + MS,
                    execute_start_ns=s + MS, execute_end_ns=s + 2 * MS, wait_start_ns=s + 2 * MS,
                    wait_end_ns=s + 14 * MS, update_start_ns=s + 14 * MS, update_end_ns=s + 15 * MS,
                    num_running_reqs=1, num_waiting_reqs=0)
    builder.request("a", arrival_ns=T0, scheduled_ns=T0, emissions=[(k, T0 + k * 10 * MS + 15 * MS, 1)
                                                                     for k in range(6)],
                    finished_ns=T0 + 65 * MS, prompt_tokens=4)
    run = builder.write()
    write_perfetto_trace(run, tmp_path / "trace.json")
    events = validate_trace(_load(tmp_path / "trace.json"))
    step_lanes = {e["name"]: e["tid"] for e in events if e["ph"] == "X" and e["cat"] == "step"}
    assert len(set(step_lanes.values())) == 2
    assert step_lanes["step 0"] != step_lanes["step 1"] and step_lanes["step 0"] == step_lanes["step 2"]
    # without process files the tracks are named after the part files' writer
    assert {e["args"]["name"] for e in events if e["name"] == "process_name"} == {"builder"}


def test_lanes_keep_every_track_nested_or_disjoint():
    rng = np.random.default_rng(3)
    for _ in range(50):
        start = rng.integers(0, 1000, size=40)
        end = start + rng.integers(0, 200, size=40)
        lanes = assign_lanes(start, end)
        for lane in np.unique(lanes):
            idx = np.flatnonzero(lanes == lane)
            for i in idx:
                for j in idx:
                    if i == j:
                        continue
                    disjoint = end[i] <= start[j] or end[j] <= start[i]
                    nested = (start[i] <= start[j] and end[j] <= end[i]) or (start[j] <= start[i] and end[i] <= end[j])
                    assert disjoint or nested, (start[i], end[i], start[j], end[j])
    assert assign_lanes(np.array([0, 5, 10]), np.array([10, 15, 20])).tolist() == [0, 1, 0]


def test_trace_of_a_real_offline_vllm_run(offline_run, tmp_path):
    n = write_perfetto_trace(offline_run.run_dir, tmp_path / "trace.json")
    events = validate_trace(_load(tmp_path / "trace.json"))
    assert n == len(events) > 0
    roles = {p["pid"]: p["role"] for p in read_processes(offline_run.run_dir)}
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names.items() <= roles.items()
    assert "EngineCore" in names.values()
    lifetimes = [e for e in events if e["ph"] == "b" and e["name"] == "request"]
    assert len(lifetimes) == offline_run.num_requests
    steps = [e for e in events if e["ph"] == "X" and e["cat"] == "step"]
    assert steps and all(e["args"]["step_id"] == int(e["name"].split()[1]) for e in steps)
    assert any(e["cat"] == "worker_host" for e in events if e["ph"] == "X")


def test_empty_and_missing_runs(tmp_path):
    empty = RunBuilder(tmp_path, "empty").write()
    assert write_perfetto_trace(empty, tmp_path / "empty.json") == 0
    assert validate_trace(_load(tmp_path / "empty.json")) == []
    with pytest.raises(RunDirError, match="no-such-run"):
        write_perfetto_trace(tmp_path / "no-such-run", tmp_path / "x.json")


def test_a_trace_with_one_slice_crossing_its_parent_is_rejected():
    document = {"displayTimeUnit": "ms", "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "ts": 0, "args": {"name": "p"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "ts": 0, "args": {"name": "t"}},
        {"ph": "X", "name": "parent", "cat": "c", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"ph": "X", "name": "child", "cat": "c", "pid": 1, "tid": 1, "ts": 5, "dur": 10},
    ]}
    with pytest.raises(AssertionError, match="crosses"):
        validate_trace(document)
    document["traceEvents"][-1]["dur"] = 5
    validate_trace(document)
    document["traceEvents"].append({"ph": "b", "name": "r", "cat": "request", "id": "0x1", "pid": 1, "ts": 1})
    with pytest.raises(AssertionError, match="left open"):
        validate_trace(document)
