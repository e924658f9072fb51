"""Held updates (SERVESCOPE_HELD_UPDATES=1): the update_from_output hook holds its step and writes it later, off the
engine's critical path. The rows are those of the immediate path, in the same order; at most 4 steps are held; a
kill's loss is counted in the spool header and the manifest; a real CPU engine records the same tokens and steps.

The hooks are driven through their wrappers with stand-in scheduler objects and a real Recorder writing a real spool;
the last test runs a real vLLM CPU engine."""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine_fixtures import record_offline_run
from servescope.patches import switch
from servescope.patches.switch import PARTS
from servescope.patches.vllm import engine_core_hooks as ech
from servescope.record.recorder import close_recorder, open_recorder
from servescope.run.compact import close_run
from servescope.run.config import Config
from servescope.run.directory import read_json
from servescope.run.names import Table
from servescope.run.spool import EMISSIONS, EMISSIONS_SAME_IDS, ROW, read_header, read_records, read_spools, segments
from servescope.run.tables import read_table

TESTS = Path(__file__).parent
REQUESTS = [f"r{i}" for i in range(3)]


# ---- driving the hooks as vLLM's EngineCore calls them -------------------------------------------
def start_recording(run_dir, *, held: bool):
    """Open a real recorder for run_dir and turn the EngineCore hooks on, held or not (as instrument() does)."""
    os.environ[ech.HELD_UPDATES_ENV] = "1" if held else "0"
    rec = open_recorder(Config.from_options(str(run_dir)))
    ech.STATE.reset()
    ech.STATE.facts_written = True  # no vllm_config to describe
    PARTS.set(rec.config.parts)
    ech.hold_updates_if_asked(rec)
    switch.set_enabled(True)
    return rec


def stop_recording() -> None:
    switch.set_enabled(False)
    close_recorder()
    ech.STATE.hold_updates = False
    if ech.write_held_steps in switch.BEFORE_STOP:
        switch.BEFORE_STOP.remove(ech.write_held_steps)
    os.environ.pop(ech.HELD_UPDATES_ENV, None)
    PARTS.set(())


def _scheduler(busy: bool = True):
    return SimpleNamespace(kv_cache_manager=SimpleNamespace(usage=0.25), running=REQUESTS, waiting=[],
                           has_requests=lambda: busy)


def _scheduled():
    cached = SimpleNamespace(req_ids=REQUESTS, resumed_req_ids=set(), num_output_tokens=[1] * len(REQUESTS))
    return SimpleNamespace(num_scheduled_tokens={r: 1 for r in REQUESTS}, scheduled_new_reqs=[],
                           scheduled_cached_reqs=cached, total_num_scheduled_tokens=len(REQUESTS),
                           scheduled_spec_decode_tokens={})


def _outputs(step: int, finished: tuple = ()):
    return {0: SimpleNamespace(timestamp=step + 0.5, outputs=[
        SimpleNamespace(request_id=r, new_token_ids=[step] * (1 + i % 2), finish_reason="stop" if r in finished else None)
        for i, r in enumerate(REQUESTS)])}


def run_step(step: int, *, wait: bool = True, busy: bool = True, finished: tuple = ()) -> None:
    """One engine step through the wrappers: schedule, (wait for the output,) update from the output."""
    scheduler, scheduled = _scheduler(busy), _scheduled()
    ech.wrap_schedule(lambda *a, **k: scheduled, scheduler, (), {})
    if wait:
        with ech.wrap_capture_iteration_details(lambda *a, **k: contextlib.nullcontext(), None, (scheduled,), {}):
            pass
    ech.wrap_update_from_output(lambda *a, **k: _outputs(step, finished), scheduler, (scheduled, None), {})


def spool_records(run_dir) -> list[tuple]:
    return [marshal.loads(payload) for path in segments(run_dir) for payload in read_records(path)]


def steps_held_in_header(run_dir) -> int:
    return read_header(segments(run_dir)[-1]).steps_held


@pytest.fixture
def deterministic_clock(monkeypatch):
    monkeypatch.setattr(ech, "now_ns", itertools.count(1000).__next__)


@pytest.fixture
def recording():
    yield start_recording
    stop_recording()


def _workload(run_dir, held: bool) -> None:
    """Eight steps: some without a wait (the held steps pile up past the cap), a finished request, then idle."""
    start_recording(run_dir, held=held)
    for step in range(8):
        run_step(step, wait=step not in (2, 3, 4, 5, 6), finished=("r1",) if step == 4 else (),
                 busy=step < 7)
    stop_recording()


# ---- tests ---------------------------------------------------------------------------------------
def test_held_steps_write_the_rows_of_the_immediate_path_in_the_same_order(tmp_path, monkeypatch):
    tables = {}
    for held in (False, True):
        monkeypatch.setattr(ech, "now_ns", itertools.count(1000).__next__)  # the same clock readings both ways
        _workload(tmp_path / str(held), held)
        spool, = read_spools(tmp_path / str(held))
        tables[held] = spool.rows
    for table in (Table.TOKEN_EMISSIONS, Table.STEPS):
        assert tables[True][table] == tables[False][table] and tables[True][table]
    assert len(tables[True][Table.STEPS]) == 8
    finished = [[r for r in tables[held][Table.REQUEST_EVENTS] if r[1] == "finished"] for held in (False, True)]
    assert finished[0] == finished[1] and len(finished[1]) == 1
    assert sorted(tables[True][Table.REQUEST_EVENTS]) == sorted(tables[False][Table.REQUEST_EVENTS])


def test_the_update_hook_holds_its_step_until_the_next_wait_and_never_more_than_four(
        tmp_path, recording, deterministic_clock):
    recording(tmp_path, held=True)
    run_step(0)
    assert len(ech.STATE.held) == 1 and steps_held_in_header(tmp_path) == 1
    assert not read_spools(tmp_path)[0].rows[Table.STEPS]
    for step in range(1, 6):  # no wait: nothing written until the cap
        run_step(step, wait=False)
    assert len(ech.STATE.held) == ech.MAX_HELD_STEPS == 4 and steps_held_in_header(tmp_path) == 4
    assert [row[0] for row in read_spools(tmp_path)[0].rows[Table.STEPS]] == [0, 1]  # the oldest, at once
    run_step(6)  # its wait writes steps 2-5 first, oldest first
    assert [row[0] for row in read_spools(tmp_path)[0].rows[Table.STEPS]] == [0, 1, 2, 3, 4, 5]
    assert len(ech.STATE.held) == 1 and steps_held_in_header(tmp_path) == 1
    run_step(7, busy=False)  # the engine goes idle: written at once
    assert not ech.STATE.held and steps_held_in_header(tmp_path) == 0
    assert [row[0] for row in read_spools(tmp_path)[0].rows[Table.STEPS]] == list(range(8))


def test_an_abort_writes_the_held_steps_before_its_finished_rows(tmp_path, recording, deterministic_clock):
    recording(tmp_path, held=True)
    run_step(0)
    aborted = SimpleNamespace(request_id="r2", num_output_tokens=1)
    ech.wrap_finish_requests(lambda *a, **k: [aborted], _scheduler(), ("r2", "FINISHED_ABORTED"), {})
    records = spool_records(tmp_path)
    emission = [i for i, r in enumerate(records) if r[0] in (EMISSIONS, EMISSIONS_SAME_IDS)]
    aborted_finished = [i for i, r in enumerate(records) if r[0] == ROW and r[2][:2] == ("r2", "finished")]
    assert len(emission) == len(aborted_finished) == 1 and emission[0] < aborted_finished[0]
    assert not ech.STATE.held


def test_pausing_or_closing_the_recorder_writes_the_held_steps(tmp_path, recording, deterministic_clock):
    rec = recording(tmp_path, held=True)
    run_step(0)
    switch.pause()
    assert not ech.STATE.held and len(read_spools(tmp_path)[0].rows[Table.STEPS]) == 1
    switch.resume()
    run_step(1)
    rec.close()
    spool, = read_spools(tmp_path)
    assert spool.closed_cleanly and spool.steps_held == 0 and len(spool.rows[Table.STEPS]) == 2


KILLED_WITH_THREE_STEPS_HELD = """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from test_held_updates import run_step, start_recording
    rec = start_recording(sys.argv[1], held=True)
    for step in range(3):
        run_step(step, wait=False)
    print(os.getpid(), flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    rec.close()
"""


@pytest.mark.parametrize("end", ["kill", "close"])
def test_steps_held_when_the_process_is_killed_are_counted_as_lost(tmp_path, end):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WITH_THREE_STEPS_HELD), str(tmp_path),
                           str(TESTS), end], capture_output=True, text=True, timeout=120)
    pid = int(proc.stdout.split()[0])
    killed = end == "kill"
    assert proc.returncode == (-signal.SIGKILL if killed else 0), proc.stderr
    assert steps_held_in_header(tmp_path) == (3 if killed else 0)
    manifest = close_run(tmp_path)
    assert manifest["health"]["held_steps_lost"] == (3 if killed else 0)
    assert [p["held_steps_lost"] for p in manifest["processes"] if p["pid"] == pid] == [3 if killed else 0]
    assert read_json(tmp_path / "processes" / f"{pid}.json")["held_steps_lost"] == (3 if killed else 0)
    assert read_table(tmp_path, Table.STEPS).num_rows == (0 if killed else 3)


def test_a_real_cpu_engine_records_the_same_tokens_and_steps_with_held_updates(tmp_path, offline_run,
                                                                                 tiny_model_dir):
    held = record_offline_run(tmp_path, tiny_model_dir, SERVESCOPE_HELD_UPDATES="1")  # offline_run's workload
    assert held.outputs == offline_run.outputs

    def tokens_per_request(run_dir) -> dict[str, list[int]]:
        """Each request's token counts, step after step, by the request's id as the user knows it."""
        external = {e["request_id"]: e["detail"] for e in read_table(run_dir, Table.REQUEST_EVENTS).to_pylist()
                    if e["event"] == "arrival"}
        counts: dict[str, list[int]] = {}
        for row in read_table(run_dir, Table.TOKEN_EMISSIONS).to_pylist():
            counts.setdefault(external[row["request_id"]], []).append(row["num_tokens"])
        return counts

    assert tokens_per_request(held.run_dir) == tokens_per_request(offline_run.run_dir)
    assert sum(map(sum, tokens_per_request(held.run_dir).values())) == held.num_requests * held.max_tokens
    assert read_table(held.run_dir, Table.STEPS).num_rows == read_table(offline_run.run_dir, Table.STEPS).num_rows
    manifest = read_json(held.run_dir / "manifest.json")
    assert manifest["engine"]["held_updates"] is True  # the EngineCore did hold its updates
    assert "held_updates" not in read_json(offline_run.run_dir / "manifest.json")["engine"]
    assert manifest["health"]["held_steps_lost"] == 0 and manifest["health"]["internal_errors"] == 0
