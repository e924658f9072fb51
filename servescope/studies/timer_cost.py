"""Measure on a GPU what servescope's timers cost and how well they agree.

    python -m servescope.studies.timer_cost [--out results.json]

Host costs (us per call, median of repeats): monotonic clock, capture check, pooled and fresh
CUDA event record, stamp kernel launches (Triton, CuPy, graph-safe), event query and
elapsed_time, a whole RegionTimer region (start + end) per mode, harvest per row and per empty
call, NVML queries. Agreement: CUDA events vs globaltimer stamps around matmuls, eager and inside
a captured CUDA graph. Clocks: globaltimer tick, calibration offset/uncertainty per method,
stability and drift. Every section is independent: a failure is reported, the rest still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import triton
import triton.language as tl

from servescope.record.region_timer import RegionTimer


@triton.jit
def tick_kernel(out_ptr):
    """Write the size (ns) of one globaltimer update step into out_ptr[0]."""
    t0 = tl.extra.cuda.globaltimer()
    t1 = t0
    i = 0
    while (t1 == t0) & (i < 1_000_000):
        t1 = tl.extra.cuda.globaltimer()
        i += 1
    t2 = t1
    while (t2 == t1) & (i < 2_000_000):
        t2 = tl.extra.cuda.globaltimer()
        i += 1
    tl.store(out_ptr, t2 - t1)


def per_call_us(fn, n: int = 2000, repeats: int = 5) -> float:
    """Return the median over repeats of the mean host time of fn() in microseconds."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        out.append((time.perf_counter_ns() - t0) / n / 1e3)
        torch.cuda.synchronize()
    return round(statistics.median(out), 3)


def environment() -> dict:
    """Return the device and software versions."""
    env = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version()}
    for mod in ("triton", "cupy", "pynvml"):
        try:
            env[mod] = getattr(__import__(mod), "__version__", "present")
        except Exception as exc:
            env[mod] = f"absent ({exc.__class__.__name__})"
    try:
        import pynvml

        pynvml.nvmlInit()
        env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return env


def host_costs() -> dict:
    """Return the host cost of each timer primitive, us per call."""
    from servescope.kernels.globaltimer import GlobalTimerStamps
    from servescope.kernels.graph_stamps import GraphSafeStamps

    res = {}
    res["monotonic_ns_us"] = per_call_us(time.monotonic_ns)
    res["is_current_stream_capturing_us"] = per_call_us(torch.cuda.is_current_stream_capturing)
    pool = [torch.cuda.Event(enable_timing=True) for _ in range(2000)]
    for e in pool:
        e.record()
    torch.cuda.synchronize()
    it = iter(pool * 5)
    res["event_record_pooled_us"] = per_call_us(lambda: next(it).record(), n=2000, repeats=5)
    res["event_record_fresh_us"] = per_call_us(lambda: torch.cuda.Event(enable_timing=True).record(), n=2000)
    torch.cuda.synchronize()
    res["event_query_us"] = per_call_us(pool[0].query)
    res["event_elapsed_time_us"] = per_call_us(lambda: pool[0].elapsed_time(pool[1]))
    for backend in ("triton", "cupy"):
        try:
            st = GlobalTimerStamps(4096, backend=backend)
            res[f"stamp_launch_{backend}_us"] = per_call_us(st.stamp)
            res[f"stamp_storage_{backend}"] = st.storage
        except Exception as exc:
            res[f"stamp_launch_{backend}_us"] = f"failed: {exc!r}"
    gs = GraphSafeStamps(4096)
    res["graph_stamp_launch_us"] = per_call_us(lambda: gs.stamp(0))
    res["set_context_launch_us"] = per_call_us(lambda: gs.set_context(1))
    gs.drain()
    try:
        res.update(driver_floor(pool))
    except Exception as exc:
        res["driver_floor"] = f"failed: {exc!r}"
    return res


STAMP_PTX = """
.version 7.0
.target sm_70
.address_size 64
.visible .entry servescope_stamp_ptx(.param .u64 out, .param .u64 slot)
{
    .reg .b64 %rd<6>;
    ld.param.u64 %rd1, [out];
    ld.param.u64 %rd2, [slot];
    mov.u64 %rd3, %globaltimer;
    shl.b64 %rd4, %rd2, 3;
    add.s64 %rd5, %rd1, %rd4;
    st.global.u64 [%rd5], %rd3;
    ret;
}
"""


def driver_floor(pool) -> dict:
    """Return where the host cost of a record or launch goes: torch's Python layer vs the CUDA driver call."""
    import ctypes

    res = {}
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    stream = torch.cuda.current_stream()
    raw = ctypes.c_void_p(stream.cuda_stream)
    res["torch_current_stream_us"] = per_call_us(torch.cuda.current_stream)
    it = iter(pool * 5)
    res["event_record_given_stream_us"] = per_call_us(lambda: next(it).record(stream))
    handles = [ctypes.c_void_p(e.cuda_event) for e in pool]
    it2 = iter(handles * 5)
    rec = cuda.cuEventRecord
    res["driver_cuEventRecord_ctypes_us"] = per_call_us(lambda: rec(next(it2), raw))
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    ptx = ctypes.create_string_buffer(STAMP_PTX.encode())
    assert cuda.cuModuleLoadData(ctypes.byref(mod), ptx) == 0
    assert cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"servescope_stamp_ptx") == 0
    buf = torch.zeros(16, dtype=torch.int64, pin_memory=True)
    out, slot = ctypes.c_uint64(buf.data_ptr()), ctypes.c_uint64(3)
    params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(out), ctypes.c_void_p),
                                   ctypes.cast(ctypes.byref(slot), ctypes.c_void_p))
    launch = cuda.cuLaunchKernel
    launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3

    def go():
        return launch(fn, 1, 1, 1, 1, 1, 1, 0, raw, params, None)

    assert go() == 0
    torch.cuda.synchronize()
    res["driver_ptx_stamp_wrote"] = int(buf[3]) > 0
    res["driver_cuLaunchKernel_stamp_ctypes_us"] = per_call_us(go)
    return res


def region_costs() -> dict:
    """Return the host cost of one region (start + end) and of harvest, per RegionTimer mode."""
    res = {}
    configs = {
        "host": dict(mode="host"),
        "cuda_events": dict(mode="cuda"),
        "cuda_events_globaltimer": dict(mode="cuda", use_globaltimer=True),
        "cuda_events_forward_stamps": dict(mode="cuda", forward_stamps=True),
    }
    for name, kw in configs.items():
        rows = []
        timer = RegionTimer(rows.append, pool_size=1024, **kw)
        region, harvest_row, harvest_empty = [], [], []
        for rep in range(6):
            n = 500
            t0 = time.perf_counter_ns()
            for i in range(n):
                timer.end(timer.start(i, "r"))
                if kw.get("forward_stamps"):
                    timer.forward_begin()
                    timer.forward_end()
            region.append((time.perf_counter_ns() - t0) / n / 1e3)
            torch.cuda.synchronize()
            t0 = time.perf_counter_ns()
            got = timer.harvest()
            harvest_row.append((time.perf_counter_ns() - t0) / max(got, 1) / 1e3)
            # harvest while the oldest region is still running on the GPU: the common case
            tok = timer.start(0, "blocker")
            torch.cuda._sleep(20_000_000)
            timer.end(tok)
            t0 = time.perf_counter_ns()
            for _ in range(100):
                timer.harvest()
            harvest_empty.append((time.perf_counter_ns() - t0) / 100 / 1e3)
            torch.cuda.synchronize()
            timer.harvest()
        res[name] = {
            "mode": timer.mode, "reason": timer.reason,
            "region_start_end_us": round(statistics.median(region[1:]), 3),
            "harvest_per_row_us": round(statistics.median(harvest_row[1:]), 3),
            "harvest_nothing_ready_us": round(statistics.median(harvest_empty[1:]), 3),
            "rows": len(rows), "errors": timer.errors, "dropped": timer.dropped,
            "note": "forward_stamps: the region figure includes forward_begin+forward_end and one set_context" if kw.get("forward_stamps") else "",
        }
    return res


def agreement() -> dict:
    """Return events vs globaltimer stamps around matmuls (eager) and around/inside a CUDA graph."""
    res = {}
    rows = []
    timer = RegionTimer(rows.append, mode="cuda", use_globaltimer=True, forward_stamps=True)
    res["calibration"] = timer.calibration.as_dict() if timer.calibration else None
    res["timer_reason"] = timer.reason
    for n in (512, 2048, 8192):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        rows.clear()
        for i in range(30):
            tok = timer.start(i, "mm")
            a @ b
            timer.end(tok)
        torch.cuda.synchronize()
        timer.harvest()
        ev = [r[5] for r in rows[5:]]
        diff = [(r[7] - r[6]) - r[5] for r in rows[5:]]
        res[f"eager_matmul_{n}"] = {"event_median_us": statistics.median(ev) / 1e3,
                                    "stamp_minus_event_median_us": statistics.median(diff) / 1e3,
                                    "stamp_minus_event_max_us": max(diff) / 1e3,
                                    "stamp_minus_event_min_us": min(diff) / 1e3}
    # a captured graph: in-graph forward stamps vs events around the replay
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    xs = [torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    graphs = {}
    for name, body in (("graph_matmul_8192", lambda: a @ b),
                       ("graph_decode_like_20_small_matmuls", lambda: [xs[0] @ w for _ in range(20)])):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            body()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            timer.forward_begin()
            body()
            timer.forward_end()
        graphs[name] = g
    for name, g in graphs.items():
        rows.clear()
        for step in range(30):
            tok = timer.start(1000 + step, "replay")
            g.replay()
            timer.end(tok)
        torch.cuda.synchronize()
        timer.harvest()
        ev = {r[0]: r for r in rows if r[2] == "replay"}
        st = {r[0]: r for r in rows if r[2] == "forward_gpu"}
        steps = sorted(set(ev) & set(st))[5:]
        res[name] = {
            "replays_matched": len(set(ev) & set(st)),
            "event_around_replay_median_us": statistics.median(ev[s][5] for s in steps) / 1e3,
            "in_graph_stamps_median_us": statistics.median(st[s][5] for s in steps) / 1e3,
            "event_minus_in_graph_median_us": statistics.median(ev[s][5] - st[s][5] for s in steps) / 1e3,
            "region_stamps_minus_in_graph_median_us":
                statistics.median((ev[s][7] - ev[s][6]) - st[s][5] for s in steps) / 1e3,
            "in_graph_start_after_region_start_median_us":
                statistics.median(st[s][6] - ev[s][6] for s in steps) / 1e3,
        }
    res["timer_stats"] = timer.stats()
    return res


def clocks() -> dict:
    """Return globaltimer's tick, calibration per method, stability, drift and offset to wall time."""
    from servescope.kernels.clock_calibration import calibrate, drift_ppm

    res = {}
    out = torch.zeros(1, dtype=torch.int64, device="cuda")
    ticks = []
    for _ in range(20):
        tick_kernel[(1,)](out, num_warps=1)
        torch.cuda.synchronize()
        ticks.append(int(out.item()))
    res["globaltimer_tick_ns"] = {"min": min(ticks), "median": statistics.median(ticks), "max": max(ticks)}
    cals = {}
    for method in ("handshake", "sync"):
        cs = []
        t0 = time.perf_counter()
        for _ in range(5):
            cs.append(calibrate(samples=32, method=method))
            time.sleep(0.2)
        offs = [c.offset_ns for c in cs]
        cals[method] = {
            "offset_ns": offs,
            "uncertainty_ns": [c.uncertainty_ns for c in cs],
            "estimator": [c.estimator for c in cs],
            "tightest_bracket_ns": [c.tightest_bracket_ns for c in cs],
            "offset_spread_ns": max(offs) - min(offs),
            "drift_ppm_first_to_last": round(drift_ppm(cs[0], cs[-1]), 3),
            "seconds_per_calibration": round((time.perf_counter() - t0 - 1.0) / 5, 4),
        }
    res["calibration"] = cals
    res["tracker"] = tracker_experiment()
    res["handshake_minus_sync_offset_ns"] = cals["handshake"]["offset_ns"][-1] - cals["sync"]["offset_ns"][-1]
    wall_minus_mono = time.time_ns() - time.monotonic_ns()
    res["globaltimer_minus_wall_ms"] = (cals["handshake"]["offset_ns"][-1] - wall_minus_mono) / 1e6
    return res


def tracker_experiment() -> dict:
    """Return a ClockTracker's map error after ~3 s vs a single start-up calibration, and recalibration costs."""
    from servescope.kernels.clock_calibration import ClockTracker, calibrate

    tracker = ClockTracker(interval_s=0.5)
    first = tracker.latest
    idle = []
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        t0 = time.perf_counter_ns()
        if tracker.maybe_recalibrate():
            idle.append((time.perf_counter_ns() - t0) / 1e6)
        time.sleep(0.02)
    fresh = calibrate(method="handshake")
    res = {
        "seconds": 3.0,
        "tracked_error_ns": tracker.offset_at(fresh.taken_at_monotonic_ns) - fresh.offset_ns,
        "single_startup_calibration_error_ns": first.offset_ns - fresh.offset_ns,
        "fresh_uncertainty_ns": fresh.uncertainty_ns,
        "rate_ppm": round(tracker.rate_ppm, 3),
        "recalibration_idle_ms_median": statistics.median(idle) if idle else None,
        "recalibration_idle_ms_max": max(idle) if idle else None,
    }
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    busy, accepted = [], 0
    for _ in range(5):
        for _ in range(40):  # ~56 ms of matmuls queued on the compute stream
            a @ b
        time.sleep(0.005)
        tracker._last_attempt_ns = 0
        t0 = time.perf_counter_ns()
        accepted += bool(tracker.maybe_recalibrate())
        busy.append((time.perf_counter_ns() - t0) / 1e6)
        torch.cuda.synchronize()
    res["recalibration_busy_gpu_ms"] = [round(x, 3) for x in busy]
    res["recalibration_busy_gpu_accepted"] = f"{accepted}/5"
    res["tracker"] = tracker.as_dict()
    return res


def nvml_costs() -> dict:
    """Return one NVML query's host cost and the sampler's achieved rate at 10 ms."""
    import pynvml

    from servescope.record.nvml_sampler import NvmlSampler

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    res = {
        "clock_query_us": per_call_us(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM), n=200),
        "power_query_us": per_call_us(lambda: pynvml.nvmlDeviceGetPowerUsage(h), n=200),
        "util_query_us": per_call_us(lambda: pynvml.nvmlDeviceGetUtilizationRates(h), n=200),
        "memory_query_us": per_call_us(lambda: pynvml.nvmlDeviceGetMemoryInfo(h), n=200),
    }
    pynvml.nvmlShutdown()
    rows = []
    s = NvmlSampler(rows.append, interval_s=0.01)
    s.start()
    t0 = time.perf_counter_ns()
    s.sample_once()
    res["sample_once_one_gpu_us"] = (time.perf_counter_ns() - t0) / 1e3
    time.sleep(1.0)
    s.stop()
    res["sampler_rows_per_s_at_10ms"] = len(rows)
    res["last_row"] = rows[-1] if rows else None
    res["errors"] = s.errors
    return res


def main(argv=None) -> dict:
    """Run every section and print JSON (and a summary); write it to --out or $OUT."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from servescope.run.machine import machine_facts

    results = {"command": "python -m servescope.studies.timer_cost", "environment": environment(),
               "machine": machine_facts(["python", "-m", "servescope.studies.timer_cost",
                                         *(argv if argv is not None else sys.argv[1:])])}
    torch.cuda.init()
    for name, fn in (("host_costs", host_costs), ("region_costs", region_costs),
                     ("agreement", agreement), ("clocks", clocks), ("nvml", nvml_costs)):
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"failed": traceback.format_exc()[-2000:]}
        results[name + "_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[bench] {name} done in {results[name + '_seconds']} s", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1, default=str)
    out = args.out or (os.path.join(os.environ["OUT"], "bench_timer_cost.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
