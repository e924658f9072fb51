"""The thread's CPU time and context switches inside a region (worker_regions.host_cpu_ns, *_switches)."""

import threading
import time

from servescope.record.region_timer import RegionTimer
from servescope.record.timers import make_region_timer
from servescope.record.thread_usage import thread_usage, usage_between
from servescope.run.schema import WORKER_REGIONS_TABLE

COLS = WORKER_REGIONS_TABLE.column_names


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed(timer, body) -> dict:
    rows = []
    timer._append = rows.append
    token = timer.start(1, "draft")
    body()
    timer.end(token)
    timer.close()
    (row,) = rows
    assert len(row) == len(COLS)
    return dict(zip(COLS, row))


def timers(read_thread_usage: bool = True):
    """The host timer as the CPU build's worker gets it (the recording part `thread` on), and built directly."""
    return [make_region_timer(None, gpu_events=False, read_thread_usage=read_thread_usage),
            RegionTimer(None, mode="host", read_thread_usage=read_thread_usage)]


def test_thread_usage_counts_this_threads_cpu_only():
    before = thread_usage()
    worker = threading.Thread(target=spin, args=(0.2,))
    worker.start()
    worker.join()  # another thread's CPU time is not ours
    mid = thread_usage()
    spin(0.1)
    after = thread_usage()
    assert usage_between(before, mid)[0] < 50_000_000
    assert usage_between(mid, after)[0] >= 25_000_000  # leaves room for a busy machine
    assert usage_between(None, after) == (None, None, None)


def test_busy_region_is_on_the_cpu():
    for timer in timers():
        row = timed(timer, lambda: spin(0.1))
        wall = row["host_end_ns"] - row["host_start_ns"]
        assert 0.25 * wall <= row["host_cpu_ns"] <= wall + 20_000  # read inside the wall interval


def test_sleeping_region_is_off_the_cpu_and_blocked():
    for timer in timers():
        row = timed(timer, lambda: time.sleep(0.1))
        wall = row["host_end_ns"] - row["host_start_ns"]
        assert wall >= 100_000_000
        assert row["host_cpu_ns"] < 0.2 * wall
        assert row["voluntary_switches"] >= 1


def test_waiting_for_the_gil_is_off_the_cpu():
    """A region of pure Python while another thread spins in Python: the GIL is shared, so the
    region's wall time is about twice its CPU time, and the waits are voluntary switches."""
    stop = threading.Event()

    def hog():
        while not stop.is_set():
            pass

    other = threading.Thread(target=hog)
    other.start()
    try:
        row = timed(RegionTimer(None, mode="host", read_thread_usage=True), lambda: spin(0.3))
    finally:
        stop.set()
        other.join()
    wall = row["host_end_ns"] - row["host_start_ns"]
    assert row["host_cpu_ns"] < 0.8 * wall
    assert row["voluntary_switches"] >= 5


def test_off_by_default_the_columns_are_null():
    for timer in timers(read_thread_usage=False):
        row = timed(timer, lambda: spin(0.01))
        assert row["host_cpu_ns"] is None and row["voluntary_switches"] is None
        assert row["involuntary_switches"] is None and row["host_end_ns"] > row["host_start_ns"]
