"""Region timer for model-runner regions: host times always, GPU times from pooled CUDA events.

Rows go to ``append_row(tuple)`` in worker_regions column order (schema.py): step_id, rank,
region, host_start_ns, host_end_ns, gpu_ns, gpu_start_ns, gpu_end_ns, host_cpu_ns,
voluntary_switches, involuntary_switches (the thread's CPU time and context switches inside the
region, with ``read_thread_usage=True``: thread_usage.py), then the worker's placement:
engine_index, tp_rank, pp_rank (``set_placement``; None until the patch knows them).

Where the GPU part of a region comes later than its host part, give ``append_pending(seq, row)``
and ``resolve(seq, gpu_ns, gpu_start_ns, gpu_end_ns)``: the host row is recorded the moment the
region ends (so it survives the process being killed) and its GPU times follow at the harvest
that resolves them. Without them a region's complete row goes to ``append_row`` at that harvest.

Hot path (``start``/``end``): ``time.monotonic_ns()``, the thread's usage where it is turned on
(thread_usage.py) and, on CUDA, ``record()`` of a pooled, pre-created
``torch.cuda.Event(enable_timing=True)`` on the current stream (``TorchCudaEvents.record``). It never
synchronizes and never creates events. ``harvest()`` resolves, oldest first, the regions whose
end event has completed, and stops at the first one still running (it waits for a later harvest);
when the newest region's end event has completed, that one ``query()`` stands for all of them.
``close()`` resolves the rest and may synchronize: call it only at exit.

Bounded: ``pool_size`` event pairs. When none is free, a region gets a host-only row and
``dropped`` counts it. While the current stream is capturing a CUDA graph, regions get
host-only rows (``skipped_capture``) and ``harvest()`` does nothing. Exceptions never leave the
timer; ``errors`` counts them.

GPU clock stamps (optional, CUDA + Triton or CuPy):

* ``use_globaltimer=True``: each region also gets globaltimer stamps enqueued around its events,
  mapped to the host clock, as gpu_start_ns/gpu_end_ns (one stamp launch at start, one at end).
  The map is a ``ClockTracker``: calibrated at construction, recalibrated from ``harvest()``
  every ``recalibrate_s`` (~0.5 ms of host time on the H100, bounded), drift fitted (globaltimer drifts
  ~22 ppm against CLOCK_MONOTONIC on the H100). Pass ``calibration`` to use a fixed map.
* ``forward_stamps=True``: ``forward_begin()``/``forward_end()`` stamp the start and end of the
  model forward. Call them around the forward *also while it is being captured*: captured into a
  CUDA graph they run on every replay, which events cannot do (events only go around a replay).
  Each begin/end pair becomes a row of region ``forward_region`` (default ``forward_gpu``) with
  null host times, tagged with the step_id of the last ``start()`` before it on the stream.

Construct the timer in the process and thread that run the regions, after any fork, before
CUDA graph capture (it compiles kernels and calibrates clocks). ``mode="host"`` is the timer of
the CPU build: host clock only.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from servescope.record.thread_usage import NO_USAGE, thread_usage, usage_between
from servescope.run.clock import now_ns


def _no_usage() -> None:
    return None

MODES = ("auto", "cuda", "host")


class TorchCudaEvents:
    """CUDA events and capture checks through torch (the production event source).

    ``record(event)`` is torch's ``Event.record()`` without its per-call ``torch.cuda.current_stream()``, which
    builds a Stream object (~4 us of the ~6 us a record took on the H200, benchmarks/results/h200-hook-cost-b256.json):
    the Stream object is kept and built again only when the current device's raw stream changes."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.is_capturing = torch.cuda.is_current_stream_capturing
        self._record = torch._C._CudaEventBase.record
        self._raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        self._get_device = getattr(torch._C, "_cuda_getDevice", None)
        self._stream_key = None
        self._stream = None

    def current_stream(self):
        """Return torch.cuda.current_stream(), built again only when the device or its current stream changed."""
        if self._raw_stream is None or self._get_device is None:
            return self._torch.cuda.current_stream()
        device = self._get_device()
        key = (device, self._raw_stream(device))
        if key != self._stream_key:
            self._stream = self._torch.cuda.current_stream()
            self._stream_key = key
        return self._stream

    def record(self, event) -> None:
        """Record event on the current stream (as event.record() does)."""
        self._record(event, self.current_stream())

    def new_pair(self) -> tuple:
        """Return a (start, end) pair of timing events, already created on the device."""
        torch = self._torch
        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for e in pair:  # torch creates the CUDA event lazily at its first record: do it now
            e.record(self._warm_stream)
        return pair

    def prepare(self) -> None:
        """Make the private stream used to pre-create events."""
        self._warm_stream = self._torch.cuda.Stream()

    def synchronize(self) -> None:
        """Wait for all work on the device (exit only)."""
        self._torch.cuda.synchronize()


def _record_on_current_stream(event) -> None:
    event.record()


def cuda_unavailable_reason() -> str | None:
    """Return why CUDA events cannot be used in this process, or None when they can."""
    try:
        import torch
    except Exception as exc:
        return f"torch is not importable: {exc!r}"
    try:
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
    except Exception as exc:
        return f"torch.cuda.is_available() failed: {exc!r}"
    return None


class RegionTimer:
    """Times regions on the host clock and, on CUDA, on the GPU stream; writes worker_regions rows."""

    def __init__(
        self,
        append_row: Callable[[tuple], None],
        rank: int = 0,
        mode: str = "auto",
        *,
        append_pending: Callable[[int, tuple], None] | None = None,
        resolve: Callable[[int, int | None, int | None, int | None], None] | None = None,
        read_thread_usage: bool = False,
        pool_size: int = 1024,
        use_globaltimer: bool = False,
        forward_stamps: bool = False,
        forward_region: str = "forward_gpu",
        calibration=None,
        recalibrate_s: float = 1.0,
        events=None,
        stamps=None,
        graph_stamps=None,
    ) -> None:
        self._append = append_row
        self._append_pending = append_pending if resolve is not None else None
        self._resolve_gpu = resolve
        self._seq = 0
        self._usage = thread_usage if read_thread_usage else _no_usage
        self.rank = rank
        self.placement: tuple = (None, None, None)  # (engine_index, tp_rank, pp_rank): every row's last columns
        self.forward_region = forward_region
        self.dropped = 0  # regions whose GPU part was dropped (pool exhausted)
        self.errors = 0  # exceptions caught inside the timer
        self.skipped_capture = 0  # regions started while the stream was capturing
        self.reason: str | None = None  # why the timer runs in a lesser mode than asked
        self.clock = calibration  # maps globaltimer ns -> monotonic ns (to_monotonic_ns); None: unmapped
        self.recalibrate_s = recalibrate_s
        self.calibration_at_close = None
        self._pending: deque = deque()
        self._free: list = []
        self._stamps = None
        self._graph_stamps = None
        self._pairer = None
        self._context_step = object()
        self.mode = "host"
        if mode not in MODES:
            self.reason = f"unknown mode {mode!r}; host timing"
            self.errors += 1
            return
        if mode == "host":
            return
        if events is None:
            self.reason = cuda_unavailable_reason()
            if self.reason is not None:
                return
        try:
            self._events = events if events is not None else TorchCudaEvents()
            if self._events.is_capturing():
                self.reason = "constructed while a CUDA graph was being captured; host timing"
                return
            if hasattr(self._events, "prepare"):
                self._events.prepare()
            self._free = [self._events.new_pair() for _ in range(pool_size)]
            self._is_capturing = self._events.is_capturing
            self._record = getattr(self._events, "record", _record_on_current_stream)
            self.mode = "cuda"
        except Exception as exc:
            self.errors += 1
            self.reason = f"CUDA events unavailable ({exc!r}); host timing"
            self._free = []
            return
        if use_globaltimer or forward_stamps:
            self._setup_stamps(use_globaltimer, forward_stamps, stamps, graph_stamps, 2 * pool_size + 16)

    def set_placement(self, engine_index: int | None, tp_rank: int | None, pp_rank: int | None) -> None:
        """Tag every later row with the worker's engine index (data-parallel rank), tensor- and pipeline-parallel rank."""
        self.placement = (engine_index, tp_rank, pp_rank)

    def is_capturing(self) -> bool:
        """Return True while the current CUDA stream is capturing a graph (False in host mode)."""
        if self.mode == "host":
            return False
        try:
            return bool(self._is_capturing())
        except Exception:
            self.errors += 1
            return True  # unknown: stay out of the way

    def _setup_stamps(self, use_globaltimer, forward_stamps, stamps, graph_stamps, capacity) -> None:
        try:
            if use_globaltimer:
                if stamps is None:
                    from servescope.kernels.globaltimer import GlobalTimerStamps

                    stamps = GlobalTimerStamps(capacity)
                self._stamps = stamps
            if forward_stamps:
                if graph_stamps is None:
                    from servescope.kernels.graph_stamps import GraphSafeStamps

                    graph_stamps = GraphSafeStamps(capacity)
                from servescope.kernels.graph_stamps import StampPairer

                self._graph_stamps = graph_stamps
                self._pairer = StampPairer()
            if self.clock is None:
                from servescope.kernels.clock_calibration import ClockTracker

                self.clock = ClockTracker(interval_s=self.recalibrate_s, stamps=stamps)
        except Exception as exc:
            self.errors += 1
            self.reason = f"globaltimer stamps unavailable ({exc!r}); CUDA events only"
            self._stamps = self._graph_stamps = self._pairer = None

    # ---- hot path -----------------------------------------------------------------------------
    def start(self, step_id: int | None, region: str) -> tuple:
        """Open a region now; return the token to pass to end()."""
        if self.mode == "host":
            return self._host_only(step_id, region)
        pair = None
        try:
            if self._is_capturing():
                self.skipped_capture += 1
                return self._host_only(step_id, region)
            free = self._free
            if not free:
                self.dropped += 1
                return self._host_only(step_id, region)
            pair = free.pop()
            gs = self._graph_stamps
            if gs is not None and step_id != self._context_step:
                gs.set_context(-1 if step_id is None else step_id)
                self._context_step = step_id
            s0 = self._stamps.stamp() if self._stamps is not None else None
            self._record(pair[0])
            return (step_id, region, now_ns(), pair, s0, self._usage())
        except Exception:
            self.errors += 1
            if pair is not None:
                self._free.append(pair)
            return self._host_only(step_id, region)

    def _host_only(self, step_id, region) -> tuple:
        """Return the token of a region timed on the host only (no event pair)."""
        return (step_id, region, now_ns(), None, None, self._usage())

    def end(self, token: tuple) -> None:
        """Close the region of token (host row now; GPU row at a later harvest)."""
        usage = self._usage()  # read inside [host_start_ns, host_end_ns]: host_cpu_ns <= the wall time
        h1 = now_ns()
        try:
            step_id, region, h0, pair, s0, usage0 = token
            used = usage_between(usage0, usage)
            if pair is None:
                self._append((step_id, self.rank, region, h0, h1, None, None, None, *used, *self.placement))
                return
            self._record(pair[1])
            s1 = self._stamps.stamp() if s0 is not None else None
            seq = None
            if self._append_pending is not None:  # the host part is recorded now, the GPU part at harvest
                seq = self._seq
                self._seq += 1
                self._append_pending(seq, (step_id, self.rank, region, h0, h1, None, None, None, *used,
                                           *self.placement))
            self._pending.append((step_id, region, h0, h1, pair, s0, s1, used, seq))
        except Exception:
            self.errors += 1

    def forward_begin(self) -> None:
        """Stamp the start of the model forward on the current stream (works inside graph capture)."""
        gs = self._graph_stamps
        if gs is not None:
            try:
                gs.stamp(0)
            except Exception:
                self.errors += 1

    def forward_end(self) -> None:
        """Stamp the end of the model forward on the current stream (works inside graph capture)."""
        gs = self._graph_stamps
        if gs is not None:
            try:
                gs.stamp(1)
            except Exception:
                self.errors += 1

    # ---- off the hot path ---------------------------------------------------------------------
    def harvest(self) -> int:
        """Append rows for completed regions (event.query(), no sync); return how many."""
        if self.mode == "host":
            return 0
        n = 0
        try:
            if self._is_capturing():
                return 0
            if self._stamps is not None or self._graph_stamps is not None:
                recal = getattr(self.clock, "maybe_recalibrate", None)
                if recal is not None:
                    recal()
            pending = self._pending
            if pending:
                # the newest end event done: every earlier one on its stream is too, so one query serves them all
                # (a region on another, slower stream is found by _resolve and waits for a later harvest)
                newest_done = pending[-1][4][1].query()
                while pending:
                    if not newest_done and not pending[0][4][1].query():
                        break
                    if not self._resolve(pending[0]):
                        break
                    pending.popleft()
                    n += 1
            n += self._harvest_forward()
        except Exception:
            self.errors += 1
        return n

    def _resolve(self, item) -> bool:
        """Append the row of a completed region; False if its start event is still running."""
        step_id, region, h0, h1, pair, s0, s1, used, seq = item
        gpu_ns = gs = ge = None
        try:
            gpu_ns = round(pair[0].elapsed_time(pair[1]) * 1e6)
            self._free.append(pair)
        except Exception:
            try:
                if not (pair[0].query() and pair[1].query()):  # recorded on another, slower stream: not done yet
                    return False
            except Exception:
                pass
            self.errors += 1  # broken pair: keep it out of the pool
        try:
            cal = self.clock
            if s0 is not None and cal is not None:
                gs = cal.to_monotonic_ns(self._stamps.read_one(s0))
                ge = cal.to_monotonic_ns(self._stamps.read_one(s1))
        except Exception:
            self.errors += 1
            gs = ge = None
        self._emit(item, gpu_ns, gs, ge)
        return True

    def _emit(self, item, gpu_ns, gpu_start, gpu_end) -> None:
        """Record a region's GPU part: its whole row, or (pending mode) the resolution of its host row."""
        step_id, region, h0, h1, _, _, _, used, seq = item
        if seq is not None:
            self._resolve_gpu(seq, gpu_ns, gpu_start, gpu_end)
        else:
            self._append((step_id, self.rank, region, h0, h1, gpu_ns, gpu_start, gpu_end, *used, *self.placement))

    def _harvest_forward(self) -> int:
        gs = self._graph_stamps
        if gs is None:
            return 0
        cal = self.clock
        n = 0
        for tag, b, e in self._pairer.feed(gs.drain()):
            start = cal.to_monotonic_ns(b) if cal is not None else None
            end = cal.to_monotonic_ns(e) if cal is not None else None
            self._append((tag, self.rank, self.forward_region, None, None, e - b, start, end, *NO_USAGE, *self.placement))
            n += 1
        return n

    def close(self) -> None:
        """Resolve every pending region, waiting for the GPU (exit only); the timer is host-only after."""
        if self.mode == "host":
            return
        try:
            self._events.synchronize()
        except Exception:
            self.errors += 1
        try:
            pending = self._pending
            while pending:
                item = pending.popleft()
                if not self._resolve(item):
                    self.errors += 1
                    self._emit(item, None, None, None)
            self._harvest_forward()
        except Exception:
            self.errors += 1
        if self._stamps is not None or self._graph_stamps is not None:
            try:
                from servescope.kernels.clock_calibration import calibrate

                self.calibration_at_close = calibrate(stamps=self._stamps)
                if hasattr(self.clock, "add"):
                    self.clock.add(self.calibration_at_close)
            except Exception:
                self.errors += 1
        self.mode = "host"
        self._free = []

    @property
    def calibration(self):
        """The latest ClockCalibration behind gpu_start_ns/gpu_end_ns, or None."""
        return getattr(self.clock, "latest", self.clock)

    def stats(self) -> dict:
        """Return the timer's counters and clock calibration (for the process record)."""
        pairer = self._pairer
        gs = self._graph_stamps
        cal, cal2 = self.clock, self.calibration_at_close
        return {
            "mode": self.mode,
            "reason": self.reason,
            "dropped": self.dropped,
            "errors": self.errors,
            "skipped_capture": self.skipped_capture,
            "pending": len(self._pending),
            "globaltimer": self._stamps is not None,
            "forward_stamps": gs is not None,
            "forward_unpaired": pairer.unpaired if pairer else 0,
            "forward_untagged": pairer.untagged if pairer else 0,
            "forward_lost": getattr(gs, "lost", 0) if gs else 0,
            "clock": cal.as_dict() if cal is not None else None,
            "calibration_at_close": cal2.as_dict() if cal2 is not None else None,
        }
