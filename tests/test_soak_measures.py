"""What the soak benchmark measures (servescope/studies/soak.py), against known answers.

/proc readings: file descriptors this test opens, pages it touches in a mapped spool segment and
memory it allocates; spool counters: segments a real SpoolWriter fills and rows it drops; the trend:
exact lines and the interval's coverage on series with a known slope and autocorrelated noise;
saturation: a hand-built steps table whose shares are worked out below.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from runbuilder import RunBuilder
from servescope.record.spool_writer import SpoolWriter
from servescope.run.spool import spool_dir
from servescope.studies.soak import (BOUNDED, GROWING, NOT_RESOLVED, bounded_verdict, linear_trend, sample_process,
                                     sample_spools, saturation)

PAGE = mmap.PAGESIZE
MIB = 1 << 20
S = 1_000_000_000


def test_open_file_descriptors_are_counted_exactly(tmp_path):
    before = sample_process(os.getpid(), tmp_path)["open_fds"]
    files = [open(tmp_path / f"f{i}", "w") for i in range(7)]
    try:
        assert sample_process(os.getpid(), tmp_path)["open_fds"] == before + 7
    finally:
        for f in files:
            f.close()
    assert sample_process(os.getpid(), tmp_path)["open_fds"] == before


def test_the_spool_mapping_is_told_apart_from_other_resident_memory(tmp_path):
    spool = spool_dir(tmp_path)
    spool.mkdir()
    mappings = []
    try:
        for path, pages in ((spool / "MainProcess-1-abcd0123-000000.spool", 5), (spool / "notes.bin", 3),
                            (tmp_path / "elsewhere.spool", 2)):
            with open(path, "wb") as f:
                f.truncate(16 * PAGE)
            with open(path, "r+b") as f:
                mm = mmap.mmap(f.fileno(), 16 * PAGE)
            for page in range(pages):
                mm[page * PAGE] = 1  # a write fault maps exactly this page
            mappings.append(mm)
        sample = sample_process(os.getpid(), tmp_path)
        assert sample["spool_resident_bytes"] == 5 * PAGE  # only the segment under RUN/spool/
        assert sample["rss_outside_spool_bytes"] == sample["rss_bytes"] - 5 * PAGE
    finally:
        for mm in mappings:
            mm.close()
    assert sample_process(os.getpid(), tmp_path)["spool_resident_bytes"] == 0


def test_allocated_memory_shows_in_the_resident_set(tmp_path):
    before = sample_process(os.getpid(), tmp_path)["rss_anon_bytes"]
    block = np.ones(64 * MIB, dtype=np.uint8)  # 64 MiB, every page written
    after = sample_process(os.getpid(), tmp_path)["rss_anon_bytes"]
    assert 64 * MIB <= after - before <= 72 * MIB
    del block


def test_a_process_that_is_gone_gives_no_sample(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert sample_process(pid, tmp_path) is None


def test_spool_counters_are_read_from_the_segments_and_their_headers(tmp_path):
    segment = 1 << 16
    writer = SpoolWriter(spool_dir(tmp_path), "EngineCore", segment_bytes=segment)
    payload = b"x" * 1000  # 1,004 bytes a record with its length: 61 fill a segment of 61,440 usable bytes
    for _ in range(150):
        assert writer.write(payload)
    assert not writer.write(b"y" * (2 * segment), rows=17)  # larger than a segment: dropped, counted
    (entry,) = sample_spools(tmp_path).values()
    assert (entry["role"], entry["pid"]) == ("EngineCore", os.getpid())
    assert entry["segments"] == 3 and entry["bytes_on_disk"] == 3 * segment
    assert entry["rows_dropped"] == 17 and entry["internal_errors"] == 0
    writer.close()


def test_an_exact_line_has_its_slope_and_a_zero_width_interval():
    t = np.arange(120) * 10.0
    trend = linear_trend(t, 300 + 5.0 * t / 3600)  # 5 units an hour
    assert trend["slope_per_h"] == pytest.approx(5.0)
    assert trend["ci95_per_h"] == pytest.approx([5.0, 5.0])
    assert bounded_verdict(trend, 2.0) == GROWING and bounded_verdict(trend, 10.0) == BOUNDED
    flat = linear_trend(t, np.full(120, 51.0))
    assert flat["slope_per_h"] == 0 and flat["ci95_per_h"] == [0.0, 0.0] and bounded_verdict(flat, 1.0) == BOUNDED


def test_an_interval_across_the_limit_is_not_resolved():
    assert bounded_verdict({"ci95_per_h": [-1.0, 3.0]}, 2.0) == NOT_RESOLVED
    assert bounded_verdict(linear_trend([0, 10], [1, 2]), 2.0) == NOT_RESOLVED  # too few samples


def _ar1(rng, n: int, phi: float) -> np.ndarray:
    noise = np.empty(n)
    x = 0.0
    for i in range(n):
        x = phi * x + rng.normal()
        noise[i] = x
    return noise


def _coverage(block_samples: int, phi: float, series: int = 60) -> float:
    t = np.arange(120) * 10.0  # 20 minutes of 10-s samples, as the soak's trend window
    covered = 0
    for k in range(series):
        y = 2.0 * t / 3600 + _ar1(np.random.default_rng(1000 + k), len(t), phi)
        lo, hi = linear_trend(t, y, block_samples=block_samples, n_boot=400, seed=k)["ci95_per_h"]
        covered += lo <= 2.0 <= hi
    return covered / series


def test_the_block_bootstrap_interval_holds_the_true_slope_despite_autocorrelated_samples():
    # AR(1) noise with phi 0.7 (a sample carries most of the one before): the soak's blocks of 24 samples keep the
    # interval's coverage near its nominal 95%; resampling single samples (blocks of 1) ignores the correlation
    # and covers the true slope far less often: the check can tell the two apart.
    assert _coverage(24, 0.7) >= 0.85
    assert _coverage(1, 0.7) <= 0.7


def test_saturation_shares_equal_the_hand_worked_timeline(tmp_path):
    b = RunBuilder(tmp_path)
    # steps at -1 s (before the window), 0, 1, 3, 6 s, and 10 s (the window's end: outside); window [0, 10 s)
    for start_s, waiting, running in ((-1, 9, 9), (0, 2, 4), (1, 0, 3), (3, 1, 4), (6, 0, 2), (10, 9, 9)):
        b.row("steps", step_id=start_s + 1, schedule_start_ns=start_s * S, num_waiting_reqs=waiting,
              num_running_reqs=running)
    result = saturation(b.write(), 0, 10 * S)
    # each step's state holds until the next step (the last until the end): 1, 2, 3 and 4 s; requests waited in
    # the first (1 s) and the third (3 s): 4 of 10 s; 2 of 4 steps
    assert result["steps"] == 4
    assert result["time_share_waiting"] == pytest.approx(0.4) and result["step_share_waiting"] == 0.5
    assert result["time_share_waiting_per_minute"] == [pytest.approx(0.4)]
    assert result["mean_waiting_reqs"] == 0.75 and result["mean_running_reqs"] == 3.25 and result["max_running_reqs"] == 4
