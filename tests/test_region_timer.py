"""RegionTimer logic on the CPU: host mode, and the CUDA path driven by fake events and stamps."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from servescope.kernels.clock_calibration import (
    ClockCalibration,
    ClockTracker,
    drift_ppm,
    estimate_offset,
    fit_offset_line,
)
from servescope.kernels.graph_stamps import BEGIN, END, NO_TAG, StampEntry, StampPairer, read_new_entries
from servescope.record.nvml_sampler import NvmlSampler
from servescope.record.region_timer import RegionTimer
from servescope.run.schema import GPU_SAMPLES_TABLE, WORKER_REGIONS_TABLE

COLS = WORKER_REGIONS_TABLE.column_names


def as_dicts(rows):
    return [dict(zip(COLS, r)) for r in rows]


# ---- fakes -------------------------------------------------------------------------------------
class FakeEvent:
    def __init__(self, gpu):
        self.gpu = gpu
        self.t = None
        self.done = False

    def record(self):
        if self.gpu.fail_record:
            raise RuntimeError("record failed")
        self.gpu.clock += 1000
        self.t = self.gpu.clock
        self.done = False
        self.gpu.recorded.append(self)

    def query(self):
        self.gpu.queries += 1
        return self.done

    def elapsed_time(self, other):
        if self.t is None or other.t is None or not (self.done and other.done):
            raise RuntimeError("event not ready")
        return (other.t - self.t) / 1e6  # ms, like torch


class FakeGpu:
    """Stands in for torch.cuda: events complete when the test says so."""

    def __init__(self):
        self.clock = 0
        self.capturing = False
        self.fail_record = False
        self.created = 0
        self.recorded = []
        self.queries = 0

    def new_pair(self):
        self.created += 1
        return (FakeEvent(self), FakeEvent(self))

    def is_capturing(self):
        return self.capturing

    def complete(self, n=None):
        """Complete the first n recorded events not yet done (all if None), in record order."""
        todo = [e for e in self.recorded if not e.done]
        for e in todo[: len(todo) if n is None else n]:
            e.done = True

    def synchronize(self):
        self.complete()


class FakeStamps:
    """GlobalTimerStamps stand-in: slot i holds a stamp 5 ms + 10 us * i on the GPU clock."""

    def __init__(self):
        self.next = 0

    def stamp(self):
        self.next += 1
        return self.next - 1

    def read_one(self, slot):
        return 5_000_000 + 10_000 * slot


class FakeGraphStamps:
    def __init__(self):
        self.context = NO_TAG
        self.contexts_set = []
        self.entries = []
        self.t = 1_000_000

    def set_context(self, tag):
        self.context = tag
        self.contexts_set.append(tag)

    def stamp(self, kind):
        self.t += 500
        self.entries.append(StampEntry(len(self.entries) + 1, self.context, kind, self.t))

    def drain(self):
        out, self.entries = self.entries, []
        return out


CAL = ClockCalibration(offset_ns=1_000, uncertainty_ns=1, method="given", estimator="intersection",
                       samples=1, tightest_bracket_ns=2, taken_at_monotonic_ns=0)


def cuda_timer(pool_size=4, **kw):
    gpu = FakeGpu()
    rows = []
    timer = RegionTimer(rows.append, rank=3, mode="cuda", pool_size=pool_size, events=gpu, **kw)
    assert timer.mode == "cuda", timer.reason
    return timer, gpu, rows


# ---- host mode ------------------------------------------------------------------------------------
def test_host_mode_rows_in_schema_order_and_nesting():
    rows = []
    t = RegionTimer(rows.append, rank=2, mode="host")
    outer = t.start(7, "execute_model")
    inner = t.start(7, "forward")
    t.end(inner)
    t.end(outer)
    assert t.harvest() == 0
    t.close()
    assert all(len(r) == len(COLS) for r in rows)
    d = as_dicts(rows)
    assert [r["region"] for r in d] == ["forward", "execute_model"]  # rows in order of region end
    assert all(r["step_id"] == 7 and r["rank"] == 2 for r in d)
    assert all(r["gpu_ns"] is None and r["gpu_start_ns"] is None and r["gpu_end_ns"] is None for r in d)
    fwd, ex = d
    assert ex["host_start_ns"] <= fwd["host_start_ns"] <= fwd["host_end_ns"] <= ex["host_end_ns"]
    assert t.errors == 0 and t.dropped == 0


def test_auto_mode_without_cuda_is_host_with_reason():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this checks the fallback on a machine without CUDA")
    rows = []
    t = RegionTimer(rows.append, mode="auto")
    assert t.mode == "host" and "cuda" in t.reason.lower()
    t.end(t.start(1, "forward"))
    assert len(rows) == 1 and rows[0][5] is None


def test_unknown_mode_is_counted_and_falls_back_to_host():
    rows = []
    t = RegionTimer(rows.append, mode="gpu-please")
    assert t.mode == "host" and t.errors == 1
    t.end(t.start(1, "x"))
    assert len(rows) == 1


def test_exceptions_never_escape():
    def boom(row):
        raise RuntimeError("sink broke")

    t = RegionTimer(boom, mode="host")
    t.end(t.start(1, "forward"))
    t.end("not a token")
    assert t.errors == 2

    timer, gpu, rows = cuda_timer()
    gpu.fail_record = True
    tok = timer.start(1, "forward")  # record fails: host-only token, pair back in the pool
    timer.end(tok)
    assert timer.errors == 1 and len(timer._free) == 4
    assert rows and rows[-1][5] is None
    timer._append = boom
    gpu.fail_record = False
    timer.end(timer.start(2, "forward"))
    gpu.complete()
    timer.harvest()  # the sink raises inside harvest: counted, not raised
    assert timer.errors == 2


# ---- CUDA path with fake events -------------------------------------------------------------------
def test_construction_during_capture_falls_back_to_host():
    gpu = FakeGpu()
    gpu.capturing = True
    rows = []
    t = RegionTimer(rows.append, mode="cuda", events=gpu)
    assert t.mode == "host" and "captur" in t.reason and gpu.created == 0


def test_harvest_resolves_only_completed_regions_in_order():
    timer, gpu, rows = cuda_timer()
    for i in range(3):
        timer.end(timer.start(i, "forward"))
    assert rows == []  # nothing until the GPU completes
    assert timer.harvest() == 0 and rows == []
    gpu.complete(3)  # region 0 (2 events) and the start of region 1
    assert timer.harvest() == 1
    assert [r[0] for r in rows] == [0]
    gpu.complete()
    assert timer.harvest() == 2
    d = as_dicts(rows)
    assert [r["step_id"] for r in d] == [0, 1, 2]
    assert all(r["gpu_ns"] == 1000 for r in d)  # fake events 1000 ns apart
    assert all(r["rank"] == 3 and r["gpu_start_ns"] is None for r in d)
    assert timer.harvest() == 0


def test_harvest_stops_at_first_unfinished_region():
    timer, gpu, rows = cuda_timer()
    a = timer.start(1, "a")
    b = timer.start(1, "b")
    timer.end(b)
    timer.end(a)
    gpu.complete()
    a_pair = timer._pending[1][4]
    timer._pending[0][4][1].done = False  # b's end event still running
    assert timer.harvest() == 0
    timer._pending[0][4][1].done = True
    assert timer.harvest() == 2
    assert [r[2] for r in rows] == ["b", "a"]
    assert as_dicts(rows)[1]["gpu_ns"] == (a_pair[1].t - a_pair[0].t)


def test_one_query_serves_a_harvest_when_the_newest_region_is_done():
    timer, gpu, rows = cuda_timer(pool_size=8)
    for i in range(5):
        timer.end(timer.start(i, "forward"))
    gpu.complete()
    gpu.queries = 0
    assert timer.harvest() == 5
    assert gpu.queries == 1 and [r[0] for r in rows] == [0, 1, 2, 3, 4]
    for i in range(3):
        timer.end(timer.start(i, "forward"))
    for event in timer._pending[0][4]:  # only the first region done: the newest is not, each is asked in turn
        event.done = True
    gpu.queries = 0
    assert timer.harvest() == 1 and gpu.queries == 3  # the newest, the first (done), the second (running)


def test_start_event_on_slower_stream_waits():
    timer, gpu, rows = cuda_timer()
    timer.end(timer.start(1, "draft"))
    start_ev, end_ev = timer._pending[0][4]
    end_ev.done = True  # end completed, start (another stream) not yet
    assert timer.harvest() == 0 and timer.errors == 0
    start_ev.done = True
    assert timer.harvest() == 1 and rows[0][5] == 1000


def test_pool_exhaustion_drops_gpu_part_and_recovers():
    timer, gpu, rows = cuda_timer(pool_size=2)
    created = gpu.created
    toks = [timer.start(5, f"r{i}") for i in range(3)]
    for tok in toks:
        timer.end(tok)
    assert timer.dropped == 1
    assert len(rows) == 1 and rows[0][2] == "r2" and rows[0][5] is None  # host-only, immediately
    gpu.complete()
    assert timer.harvest() == 2
    timer.end(timer.start(6, "again"))  # pairs went back to the pool
    assert timer.dropped == 1 and len(timer._pending) == 1
    assert gpu.created == created  # no event created after construction


def test_no_events_created_on_the_hot_path():
    timer, gpu, rows = cuda_timer(pool_size=8)
    created = gpu.created
    for step in range(100):
        timer.end(timer.start(step, "forward"))
        gpu.complete()
        timer.harvest()
    assert gpu.created == created == 8
    assert len(rows) == 100 and timer.dropped == 0 and timer.errors == 0


def test_capture_gives_host_rows_and_pauses_harvest():
    timer, gpu, rows = cuda_timer()
    timer.end(timer.start(1, "forward"))
    gpu.complete()
    gpu.capturing = True
    timer.end(timer.start(None, "capture"))
    assert timer.skipped_capture == 1 and rows[-1][2] == "capture" and rows[-1][5] is None
    assert timer.harvest() == 0  # no event query while a capture is under way
    gpu.capturing = False
    assert timer.harvest() == 1


def test_broken_pair_is_counted_and_retired():
    timer, gpu, rows = cuda_timer(pool_size=2)
    timer.end(timer.start(1, "forward"))
    start_ev, end_ev = timer._pending[0][4]
    start_ev.t = None  # elapsed_time will raise although both report done
    gpu.complete()
    assert timer.harvest() == 1
    assert timer.errors == 1 and rows[0][5] is None and len(timer._free) == 1


def test_close_resolves_everything():
    timer, gpu, rows = cuda_timer()
    for i in range(3):
        timer.end(timer.start(i, "forward"))
    timer.close()  # the fake synchronize completes every event
    assert [r[0] for r in rows] == [0, 1, 2] and all(r[5] == 1000 for r in rows)
    assert timer.mode == "host"
    timer.end(timer.start(9, "late"))
    assert rows[-1][2] == "late" and rows[-1][5] is None


def test_globaltimer_stamps_map_to_host_clock():
    timer, gpu, rows = cuda_timer(use_globaltimer=True, stamps=FakeStamps(), calibration=CAL)
    timer.end(timer.start(4, "forward"))
    gpu.complete()
    timer.harvest()
    r = as_dicts(rows)[0]
    assert r["gpu_start_ns"] == 5_000_000 - 1_000  # slot 0, minus the offset
    assert r["gpu_end_ns"] == 5_010_000 - 1_000  # slot 1


def test_forward_stamps_are_tagged_with_the_step():
    gs = FakeGraphStamps()
    timer, gpu, rows = cuda_timer(forward_stamps=True, graph_stamps=gs, calibration=CAL)
    timer.forward_begin()
    timer.forward_end()  # before any step: untagged, dropped
    for step in (10, 11):
        tok = timer.start(step, "execute_model")
        inner = timer.start(step, "sample")
        timer.forward_begin()
        timer.forward_end()
        timer.end(inner)
        timer.end(tok)
    assert gs.contexts_set == [10, 11]  # once per step, not per region
    gpu.complete()
    timer.harvest()
    fwd = [r for r in as_dicts(rows) if r["region"] == "forward_gpu"]
    assert [r["step_id"] for r in fwd] == [10, 11]
    assert all(r["gpu_ns"] == 500 and r["host_start_ns"] is None for r in fwd)
    assert fwd[0]["gpu_start_ns"] == fwd[0]["gpu_end_ns"] - 500
    assert timer.stats()["forward_untagged"] == 1


# ---- graph-safe stamp ring ------------------------------------------------------------------------
def ring(capacity, entries):
    view = np.zeros((capacity, 4), dtype=np.int64)
    for seq, tag, kind, t in entries:
        view[(seq - 1) % capacity] = (seq, tag, kind, t)
    return view


def test_ring_reads_only_visible_entries_in_order():
    view = ring(8, [(1, 5, BEGIN, 100), (2, 5, END, 200), (4, 6, END, 400)])  # seq 3 not visible yet
    out, cursor, lost = read_new_entries(view, 0)
    assert [e.seq for e in out] == [1, 2] and cursor == 2 and lost == 0
    view[2] = (3, 6, BEGIN, 300)
    out, cursor, lost = read_new_entries(view, cursor)
    assert [e.seq for e in out] == [3, 4] and cursor == 4


def test_ring_overrun_is_counted():
    view = ring(4, [(s, 1, s % 2, s * 10) for s in range(1, 11)])  # 10 entries in 4 slots
    out, cursor, lost = read_new_entries(view, 0)
    assert lost == 8 and [e.seq for e in out] == [9, 10] and cursor == 10


def test_pairer():
    p = StampPairer()
    e = lambda s, tag, kind: StampEntry(s, tag, kind, s * 100)  # noqa: E731
    got = p.feed([e(1, 3, BEGIN), e(2, 3, END), e(3, 4, BEGIN), e(4, 4, BEGIN), e(5, 4, END),
                  e(6, NO_TAG, BEGIN), e(7, NO_TAG, END), e(8, 5, END)])
    assert got == [(3, 100, 200), (4, 400, 500)]
    assert p.unpaired == 2 and p.untagged == 1


# ---- clock calibration math -----------------------------------------------------------------------
def synthetic_brackets(offset, n, rng, resolution=0, drift_per_sample=0):
    out = []
    host = 10_000_000_000
    for i in range(n):
        host += int(rng.integers(10_000, 50_000))
        d0, d1 = int(rng.integers(500, 30_000)), int(rng.integers(500, 30_000))
        gpu = host + offset + i * drift_per_sample
        if resolution:
            gpu -= gpu % resolution
        out.append((host - d0, gpu, host + d1))
    return out


def test_intersection_contains_true_offset_and_beats_best_bracket():
    rng = np.random.default_rng(1)
    true = -1_080_123
    br = synthetic_brackets(true, 40, rng)
    off, unc, est, tightest = estimate_offset(br)
    assert est == "intersection"
    assert abs(off - true) <= unc
    assert unc <= tightest // 2 + 1


def test_resolution_widens_but_still_contains_truth():
    rng = np.random.default_rng(2)
    true = 123_456_789
    br = synthetic_brackets(true, 40, rng, resolution=1000)
    off0, unc0, est0, _ = estimate_offset(br, resolution_ns=0)
    off, unc, est, _ = estimate_offset(br, resolution_ns=1000)
    assert est == est0 == "intersection" and abs(off - true) <= unc
    # a 1 us resolution moves every bracket's upper end up by 1000 ns: the intersection is 1000 ns
    # wider, so the estimate moves up and the half-width grows by exactly 500 ns
    assert (off - off0, unc - unc0) == (500, 500)


def test_inconsistent_brackets_fall_back_to_tightest():
    rng = np.random.default_rng(3)
    br = synthetic_brackets(0, 20, rng, drift_per_sample=200_000)  # clocks drift apart fast
    br.append((1_000, 5_000 + 1_000_000, 1_010))  # the tightest bracket, width 10 ns
    off, unc, est, tightest = estimate_offset(br)
    assert est == "tightest" and tightest == 10
    assert off == 5_000 + 1_000_000 - 1_005 and unc == 5


def test_estimate_rejects_empty_and_invalid():
    with pytest.raises(ValueError):
        estimate_offset([])
    with pytest.raises(ValueError):
        estimate_offset([(10, 5, 9)])  # after < before


def test_calibration_maps_and_drift():
    a = ClockCalibration(1_000, 5, "sync", "intersection", 8, 20, taken_at_monotonic_ns=0)
    b = ClockCalibration(1_100, 5, "sync", "intersection", 8, 20, taken_at_monotonic_ns=1_000_000_000)
    assert a.to_monotonic_ns(51_000) == 50_000
    assert drift_ppm(a, b) == pytest.approx(0.1)
    assert a.as_dict()["offset_ns"] == 1_000


class DriftingClocks:
    """A host clock the test advances and a GPU clock that loses 22 ppm against it."""

    def __init__(self, offset=1_795_529_300_681_519_960, rate=-22e-6, fail=False, noise=300):
        self.t = 55_000_000_000
        self.t0 = self.t
        self.offset0, self.rate = offset, rate
        self.rng = np.random.default_rng(7)
        self.noise = noise
        self.fail = fail
        self.calls = 0

    def true_offset(self, t):
        return self.offset0 + round(self.rate * (t - self.t0))

    def gpu_at(self, t):
        return t + self.true_offset(t)

    def calibrate(self, n):
        self.calls += 1
        if self.fail:
            raise RuntimeError("kernel never ran")
        err = int(self.rng.integers(-self.noise, self.noise + 1))
        return ClockCalibration(self.true_offset(self.t) + err, 1_400, "handshake", "intersection", n, 2_000, self.t)


def test_tracker_fits_drift_and_maps_accurately():
    clocks = DriftingClocks()
    tr = ClockTracker(interval_s=1.0, calibrate_fn=clocks.calibrate, now_ns=lambda: clocks.t)
    frozen = tr.latest
    assert not tr.maybe_recalibrate()  # too soon
    for _ in range(8):
        clocks.t += 1_000_000_000
        assert tr.maybe_recalibrate()
    assert tr.rate_ppm == pytest.approx(-22, abs=1.0)
    clocks.t += 500_000_000  # half an interval after the last calibration
    g = clocks.gpu_at(clocks.t)
    assert abs(tr.to_monotonic_ns(g) - clocks.t) < 1_000
    assert abs(frozen.to_monotonic_ns(g) - clocks.t) > 150_000  # one start-up calibration is 187 us off by now
    assert abs(tr.offset_at(clocks.t) - clocks.true_offset(clocks.t)) < 1_000
    assert len(tr.history) == 8 and tr.as_dict()["rate_ppm"] == pytest.approx(-22, abs=1.0)


def test_tracker_rejects_imprecise_and_survives_failures():
    clocks = DriftingClocks()
    tr = ClockTracker(interval_s=1.0, calibrate_fn=clocks.calibrate, now_ns=lambda: clocks.t,
                      max_uncertainty_ns=10_000)
    wide = ClockCalibration(0, 1_000_000, "sync", "tightest", 8, 2_000_000, clocks.t)
    assert not tr.add(wide) and tr.rejected == 1 and tr.latest.offset_ns != 0
    clocks.fail = True
    clocks.t += 2_000_000_000
    assert not tr.maybe_recalibrate() and tr.failures == 1
    calls = clocks.calls
    clocks.t += 10_000_000
    assert not tr.maybe_recalibrate() and clocks.calls == calls  # waits another interval before retrying
    clocks.fail = False
    clocks.t += 1_000_000_000
    assert tr.maybe_recalibrate() and len(tr.history) == 2


def test_offset_line_needs_a_time_span():
    c = lambda off, t: ClockCalibration(off, 1, "x", "intersection", 1, 1, t)  # noqa: E731
    assert fit_offset_line([c(100, 0), c(200, 100_000_000)]) == (100_000_000, 200, 0.0)  # 0.1 s: no rate
    t_ref, off, rate = fit_offset_line([c(0, 0), c(-22_000, 1_000_000_000), c(-44_000, 2_000_000_000)])
    assert (t_ref, off) == (2_000_000_000, -44_000) and rate == pytest.approx(-22e-6)


def test_timer_recalibrates_from_harvest_only_with_stamps():
    class Clock:
        calls = 0

        def maybe_recalibrate(self):
            self.calls += 1
            return False

        def to_monotonic_ns(self, g):
            return g

    clock = Clock()
    timer, gpu, rows = cuda_timer(use_globaltimer=True, stamps=FakeStamps(), calibration=clock)
    timer.harvest()
    assert clock.calls == 1
    plain, _, _ = cuda_timer(calibration=clock)
    plain.harvest()
    assert clock.calls == 1


# ---- NVML sampler ---------------------------------------------------------------------------------
class FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    class Util:
        gpu = 87

    class Mem:
        used = 123_456_789

    def __init__(self, count=2, fail_init=False):
        self.count = count
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        if h == "h1":
            raise RuntimeError("Not Supported")
        return 350_500  # mW

    def nvmlDeviceGetUtilizationRates(self, h):
        return self.Util()

    def nvmlDeviceGetMemoryInfo(self, h):
        return self.Mem()


def test_nvml_rows_in_schema_order():
    rows = []
    s = NvmlSampler(rows.append, interval_s=0.01, nvml=FakeNvml(count=2))
    assert s.start()
    import time

    time.sleep(0.05)
    s.stop()
    assert len(rows) >= 4 and s.samples == len(rows)
    d = [dict(zip(GPU_SAMPLES_TABLE.column_names, r)) for r in rows]
    g0 = [r for r in d if r["gpu"] == 0][0]
    assert g0 == {**g0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "power_w": pytest.approx(350.5),
                  "gpu_util_pct": 87, "mem_used_bytes": 123_456_789}
    g1 = [r for r in d if r["gpu"] == 1][0]
    assert g1["power_w"] is None and s.errors >= 1  # unsupported field: null, counted
    assert all(len(r) == len(GPU_SAMPLES_TABLE.column_names) for r in rows)
    times = [r[0] for r in rows]
    assert times == sorted(times)


def test_nvml_selects_gpus_and_reports_missing_ones():
    rows = []
    s = NvmlSampler(rows.append, gpus=[1], nvml=FakeNvml(count=2))
    assert s.start()
    s.stop()
    assert {r[1] for r in rows} == {1}
    nv = FakeNvml(count=0)
    s = NvmlSampler(rows.append, nvml=nv)
    assert not s.start() and "no GPU" in s.reason and nv.shutdowns == 1


def test_nvml_absent_is_a_clear_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now fails
    rows = []
    s = NvmlSampler(rows.append)
    assert not s.start()
    assert "nvidia-ml-py" in s.reason and rows == []
    s.stop()  # harmless
    s = NvmlSampler(rows.append, nvml=FakeNvml(fail_init=True))
    assert not s.start() and "Library Not Found" in s.reason


def test_the_last_steps_regions_get_their_gpu_time_when_the_engine_goes_idle_or_the_recorder_closes(tmp_path):
    """A step's regions are resolved by the next step's harvest; the last step has no next step (seen on the H200:
    one execute_model per run without GPU time before this)."""
    from servescope.patches.vllm import worker_hooks
    from servescope.record.recorder import Recorder
    from servescope.run.config import Config
    from servescope.run.tables import read_table

    rec = Recorder(Config.from_options(str(tmp_path)))
    gpu = FakeGpu()
    timer = RegionTimer(lambda row: rec.append("worker_regions", row), mode="cuda", events=gpu,
                        append_pending=rec.append_region, resolve=rec.resolve_region)
    worker_hooks.WORKER.timer = timer
    try:
        worker_hooks._harvest_when_idle_and_at_close(rec)
        worker_hooks._harvest_when_idle_and_at_close(rec)  # registered once however often the timer is built
        assert rec.when_idle.count(worker_hooks.harvest_regions) == 1
        timer.end(timer.start(7, "execute_model"))
        gpu.complete()
        rec.idle()  # what the EngineCore's update hook calls when no request is left
        timer.end(timer.start(8, "execute_model"))
        gpu.complete()
        rec.close()
        rows = read_table(tmp_path, "worker_regions", warnings=[]).to_pylist()
        assert [(r["step_id"], r["gpu_ns"]) for r in rows] == [(7, 1000), (8, 1000)]
    finally:
        worker_hooks.WORKER.reset()
