"""The spool: what a process appended is readable at once, survives SIGKILL, is never half-read,
never counted twice, and what cannot be stored is counted. Real processes, real files."""

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from servescope.record.recorder import Recorder
from servescope.run.compact import close_run, compact_run
from servescope.run.config import Config
from servescope.run.tables import read_table
from servescope.run.names import RequestEvent, Table
from servescope.run.rows import RequestEventRow, StepRow, WorkerRegionRow
from servescope.run.spool import HEADER_BYTES, read_header, read_spools, segments


def _event(i: int) -> RequestEventRow:
    return RequestEventRow(request_id=f"r{i}", event=RequestEvent.ARRIVAL, time_ns=1000 + i, prompt_tokens=i)


def _run_child(code: str, run_dir, **env) -> subprocess.CompletedProcess:
    script = textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, str(run_dir)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_rows_are_readable_the_moment_they_are_appended(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    rec.append(Table.REQUEST_EVENTS, _event(1))
    assert read_table(tmp_path, Table.REQUEST_EVENTS).to_pylist()[0]["request_id"] == "r1"
    rec.append_emissions(7, 5000, ["a", "b", "c"], [2, 0, 1], drafted=[3, None, 1], accepted=[1, None, 0])
    rec.append_events(RequestEvent.SCHEDULED, 4000, 7, ["a", "c"])
    rows = read_table(tmp_path, Table.TOKEN_EMISSIONS).to_pylist()
    assert [(r["request_id"], r["num_tokens"], r["num_draft_tokens"], r["num_accepted_tokens"]) for r in rows] == \
        [("a", 2, 3, 1), ("c", 1, 1, 0)]  # a request with no token in the step has no row
    events = read_table(tmp_path, Table.REQUEST_EVENTS).to_pylist()
    assert [(e["request_id"], e["event"], e["step_id"]) for e in events[1:]] == [("a", "scheduled", 7), ("c", "scheduled", 7)]
    rec.close()


def test_a_batch_that_keeps_its_requests_writes_their_ids_once_and_reads_back_whole(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path), segment_bytes=1 << 16))
    ids = [f"request-{i:04d}" for i in range(300)]
    expected = []
    for step in range(40):  # 40 steps of one batch cross a 64 KiB segment boundary
        if step == 20:
            ids = ids[1:]  # a request finished: the next record names the ids again
        counts = [1 + (step + i) % 2 for i in range(len(ids))]
        rec.append_emissions(step, 1000 + step, ids, counts)
        expected += [(rid, step, n) for rid, n in zip(ids, counts)]
    reused = list(ids)
    rec.append_emissions(40, 2000, reused, [1] * len(reused))
    reused[0] = "changed-in-place"  # a caller that reuses its list: the next record must name the ids
    rec.append_emissions(41, 2001, reused, [1] * len(reused))
    expected += [(rid, 40, 1) for rid in ids] + [(rid, 41, 1) for rid in reused]
    rows = read_table(tmp_path, Table.TOKEN_EMISSIONS).to_pylist()
    assert [(r["request_id"], r["step_id"], r["num_tokens"]) for r in rows] == expected
    assert read_spools(tmp_path)[0].unreadable_records == 0
    # ids written with the first step and after each change only: 2 segments; with the ids in every record
    # (300 x 12 characters, ~5.5 kB a step) the 42 records would fill at least 4
    assert len(segments(tmp_path)) == 2
    rec.close()


def test_a_region_gets_its_gpu_time_later_and_keeps_its_host_row_if_it_never_does(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    rec.append_region(0, WorkerRegionRow(step_id=1, rank=0, region="forward", host_start_ns=10, host_end_ns=20))
    rec.append_region(1, WorkerRegionRow(step_id=1, rank=0, region="sample", host_start_ns=21, host_end_ns=30))
    rec.resolve_region(0, 7, 11, 18)
    rows = read_table(tmp_path, Table.WORKER_REGIONS).to_pylist()
    assert [(r["region"], r["gpu_ns"], r["gpu_start_ns"], r["gpu_end_ns"], r["host_end_ns"]) for r in rows] == \
        [("forward", 7, 11, 18, 20), ("sample", None, None, None, 30)]
    assert read_spools(tmp_path)[0].regions_without_gpu_time == 1
    rec.close()


def test_sigkill_loses_nothing_that_was_appended(tmp_path):
    proc = _run_child("""
        import os, signal, sys
        from servescope.record.recorder import Recorder
        from servescope.run.config import Config
        from servescope.run.rows import RequestEventRow
        rec = Recorder(Config.from_options(sys.argv[1], segment_bytes=1 << 16))  # several segments
        for i in range(5000):
            rec.append("request_events", RequestEventRow(request_id=f"r{i}", event="arrival", time_ns=i))
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path)
    assert proc.returncode == -signal.SIGKILL
    pid = int(proc.stdout.split()[0])
    assert len(segments(tmp_path)) > 1
    ids = read_table(tmp_path, Table.REQUEST_EVENTS).column("request_id").to_pylist()
    assert ids == [f"r{i}" for i in range(5000)]
    manifest = close_run(tmp_path)  # compacts, then writes the manifest
    assert segments(tmp_path) == []
    assert manifest["health"]["processes_killed"] == [pid] and manifest["health"]["rows_dropped"] == 0
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 5000


def test_a_record_cut_short_by_a_kill_is_not_read(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    rec.append(Table.REQUEST_EVENTS, _event(1))
    rec.close()
    [path] = segments(tmp_path)
    with open(path, "r+b") as f:  # what a kill between the payload copy and the length store leaves
        data = f.read()
        pos = HEADER_BYTES
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4 + ((n + 7) & ~7)
        f.seek(pos + 4)
        f.write(b"\x80garbage payload never published")
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 1


def test_compaction_is_complete_and_never_counts_twice(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    for i in range(100):
        rec.append(Table.REQUEST_EVENTS, _event(i))
    rec.close()
    # a compaction interrupted after writing its parts: the spool is still there
    from servescope.run.compact import write_spool_parts

    write_spool_parts(tmp_path, read_spools(tmp_path)[0])
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 100  # the spool wins over its own parts
    result = compact_run(tmp_path)
    assert result.compacted == [rec.spool_name] and result.rows == 100
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 100
    assert compact_run(tmp_path).compacted == []
    record = json.loads((tmp_path / "processes" / f"{os.getpid()}.json").read_text())
    assert record["ended"] == "closed" and record["rows_recorded"] == {"request_events": 100}
    assert record["spools"][rec.spool_name]["rows_recorded"] == {"request_events": 100}


def test_self_timing_totals_reach_the_process_record_with_cpu_time_and_older_ones_without(tmp_path):
    """A self-timing ledger's last snapshot (wall and thread-CPU ns) lands in the process record by name; a
    snapshot of the older kind (no CPU time) leaves the CPU fields None rather than 0."""
    from servescope.record.self_timing import HookLedger
    from servescope.run.spool import SELF_TIMING

    rec = Recorder(Config.from_options(str(tmp_path)))
    ledger = HookLedger(rec.append_record)
    ledger.charge("Scheduler.schedule", 5_000, 2_000)
    ledger.charge("Scheduler.schedule", 3_000, 1_000)
    ledger.snapshot()
    rec.append_record((SELF_TIMING, {**{k: tuple(v) for k, v in ledger.totals.items()}, "Old.hook": (4, 900, 300)}))
    rec.close()
    compact_run(tmp_path)
    record = json.loads((tmp_path / "processes" / f"{os.getpid()}.json").read_text())
    assert record["hook_cost"]["Scheduler.schedule"] == {"calls": 2, "ns": 8_000, "first_ns": 5_000, "cpu_ns": 3_000,
                                                         "first_cpu_ns": 2_000}
    assert record["hook_cost"]["Old.hook"] == {"calls": 4, "ns": 900, "first_ns": 300, "cpu_ns": None,
                                               "first_cpu_ns": None}


def test_a_running_process_spool_is_left_alone(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path)))
    rec.append(Table.REQUEST_EVENTS, _event(1))
    result = compact_run(tmp_path)
    assert result.compacted == [] and result.left_running == [rec.spool_name]
    rec.append(Table.REQUEST_EVENTS, _event(2))
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 2
    rec.close()


def test_a_record_larger_than_a_segment_is_dropped_and_counted(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path), segment_bytes=1 << 16))
    rec.append_events(RequestEvent.SCHEDULED, 1, 1, [f"request-{i:08d}" for i in range(20000)])  # ~300 kB
    rec.append(Table.REQUEST_EVENTS, _event(1))
    assert rec.rows_dropped == 20000
    assert read_table(tmp_path, Table.REQUEST_EVENTS).num_rows == 1
    assert read_header(segments(tmp_path)[0]).rows_dropped == 20000  # in the header: survives a kill
    rec.close()


def test_no_disk_space_for_a_segment_drops_and_counts_rows_without_raising(tmp_path):
    proc = _run_child("""
        import json, resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of 1 MiB at most
        from servescope.record.recorder import Recorder
        from servescope.run.config import Config
        rec = Recorder(Config.from_options(sys.argv[1], segment_bytes=4 << 20))
        for i in range(10):
            rec.append("request_events", ("r", "arrival", i, None, None, None, None, None))
        rec.close()
        print(json.dumps({"dropped": rec.rows_dropped}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dropped"] == 10
    record = json.loads(next((tmp_path / "processes").glob("*.json")).read_text())
    assert record["rows_dropped"] == 10


def test_threads_appending_at_once_lose_and_mix_nothing(tmp_path):
    rec = Recorder(Config.from_options(str(tmp_path), segment_bytes=1 << 17))

    def work(t: int) -> None:
        for i in range(3000):
            rec.append(Table.STEPS, StepRow(step_id=i, engine_index=t, schedule_start_ns=i, schedule_end_ns=i + 1,
                                            execute_start_ns=None, execute_end_ns=None, wait_start_ns=None,
                                            wait_end_ns=None, update_start_ns=i + 2, update_end_ns=i + 3,
                                            engine_timestamp_ns=None, total_scheduled_tokens=t,
                                            num_prefill_reqs=0, num_prefill_tokens=0, num_decode_reqs=1,
                                            num_decode_tokens=1, num_spec_tokens=0, num_running_reqs=1,
                                            num_waiting_reqs=0, kv_cache_usage=0.5, num_preempted_reqs=0,
                                            num_emitted_tokens=1, num_finished_reqs=0))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows = read_table(tmp_path, Table.STEPS).to_pylist()
    assert len(rows) == 12000
    for t in range(4):
        mine = [r["step_id"] for r in rows if r["engine_index"] == t]
        assert mine == list(range(3000))
        assert all(r["total_scheduled_tokens"] == r["engine_index"] for r in rows)
    rec.close()


def test_a_forked_child_records_into_its_own_spool(tmp_path):
    import servescope.record.recorder as recorder_module

    rec = recorder_module.open_recorder(Config.from_options(str(tmp_path)))
    try:
        rec.append(Table.REQUEST_EVENTS, _event(1))
        pid = os.fork()
        if pid == 0:  # the child: its own spool, the parent's untouched
            try:
                recorder_module.get_recorder().append(Table.REQUEST_EVENTS, _event(2))
                recorder_module.get_recorder().close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        rec.append(Table.REQUEST_EVENTS, _event(3))
        by_process = {s.pid: [r[0] for r in s.rows[Table.REQUEST_EVENTS]] for s in read_spools(tmp_path)}
        assert by_process == {os.getpid(): ["r1", "r3"], pid: ["r2"]}
    finally:
        recorder_module.close_recorder()


def test_a_forked_child_names_the_request_ids_its_parent_wrote_last(tmp_path):
    """The child's spool is read without the parent's: its first emissions record must carry its ids."""
    import servescope.record.recorder as recorder_module

    rec = recorder_module.open_recorder(Config.from_options(str(tmp_path)))
    try:
        rec.append_emissions(1, 100, ["a", "b"], [1, 1])
        pid = os.fork()
        if pid == 0:
            try:
                recorder_module.get_recorder().append_emissions(2, 200, ["a", "b"], [1, 2])
                recorder_module.get_recorder().close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        by_process = {s.pid: ([tuple(r[:2]) for r in s.rows[Table.TOKEN_EMISSIONS]], s.unreadable_records)
                      for s in read_spools(tmp_path)}
        assert by_process == {os.getpid(): ([("a", 1), ("b", 1)], 0), pid: ([("a", 2), ("b", 2)], 0)}
    finally:
        recorder_module.close_recorder()


def _append_as_child(run_dir: str) -> None:
    import servescope.record.recorder as recorder_module

    recorder_module.get_recorder().append(Table.REQUEST_EVENTS, _event(2))


def test_a_forked_multiprocessing_child_records_under_its_own_name(tmp_path):
    """vLLM forks its EngineCore with multiprocessing, which names the child after the fork handlers ran."""
    import multiprocessing

    import servescope.record.recorder as recorder_module

    rec = recorder_module.open_recorder(Config.from_options(str(tmp_path)))
    try:
        rec.append(Table.REQUEST_EVENTS, _event(1))
        child = multiprocessing.get_context("fork").Process(target=_append_as_child, args=(str(tmp_path),),
                                                            name="EngineCore")
        silent = multiprocessing.get_context("fork").Process(target=int, name="Silent")  # records nothing
        for process in (child, silent):
            process.start()
            process.join(60)
            assert process.exitcode == 0
        roles = {s.pid: s.role for s in read_spools(tmp_path)}
        assert roles == {os.getpid(): rec.role, child.pid: "EngineCore"}  # no spool for the silent child
        records = {json.loads(p.read_text())["pid"]: json.loads(p.read_text())["role"]
                   for p in (tmp_path / "processes").glob("*.json")}
        assert records == roles
    finally:
        recorder_module.close_recorder()
