"""Map GPU globaltimer stamps onto the host's time.monotonic_ns timeline.

A bracket is (host_before_ns, gpu_ns, host_after_ns): a globaltimer stamp the host knows ran
between two of its own monotonic reads. Each bracket says offset = gpu - host lies in
[gpu - host_after, gpu + resolution - host_before]; with a steady offset every bracket holds,
so their intersection is the estimate, and its half-width the uncertainty. If they do not
intersect (the clocks drifted or stepped during calibration) the tightest single bracket is used.

Two ways to take brackets, both on a private stream (they never wait for other streams' work):

* ``handshake`` (Triton, pinned memory): a kernel spins until the host writes a flag into pinned
  memory, then stamps; the host reads the clock just before writing the flag and just after it
  sees the stamp. A bracket is a PCIe round trip, a few microseconds.
* ``sync``: read the clock, enqueue a stamp, synchronize the private stream, read the clock.
  A bracket includes the kernel launch and the synchronize wake-up (tens of microseconds).

The offset is not constant: on the H100 globaltimer lost ~22 us per second against
CLOCK_MONOTONIC (-22 ppm). ``ClockTracker`` recalibrates periodically and fits that drift.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

from servescope.kernels.globaltimer import triton

DEFAULT_RESOLUTION_NS = 1000  # assume a globaltimer tick of up to 1 us unless told otherwise

if triton is not None:
    import triton.language as tl

    @triton.jit(do_not_specialize=["i", "timeout_ns"])
    def triton_handshake_kernel(ready_ptr, flag_ptr, out_ptr, i, timeout_ns):
        """Set ready[i], spin until flag[i] != 0 (or timeout_ns passes), then out[i] = globaltimer (-1 on timeout)."""
        tl.store(ready_ptr + i, 1)
        t0 = tl.extra.cuda.globaltimer()
        t = t0
        f = tl.load(flag_ptr + i, volatile=True)
        while (f == 0) & (t - t0 < timeout_ns):
            f = tl.load(flag_ptr + i, volatile=True)
            t = tl.extra.cuda.globaltimer()
        t1 = tl.extra.cuda.globaltimer()
        tl.store(out_ptr + i, tl.where(f != 0, t1, -1))


@dataclass(frozen=True, slots=True)
class ClockCalibration:
    """globaltimer = monotonic + offset_ns, known to within +- uncertainty_ns."""

    offset_ns: int  # globaltimer_ns - monotonic_ns
    uncertainty_ns: int  # half-width of the interval the offset is known to lie in
    method: str  # how brackets were taken: handshake | sync | given
    estimator: str  # intersection | tightest
    samples: int  # brackets used
    tightest_bracket_ns: int  # width of the narrowest bracket
    taken_at_monotonic_ns: int  # when the calibration finished

    def to_monotonic_ns(self, globaltimer_ns: int) -> int:
        """Return the host monotonic ns of a globaltimer stamp (ns)."""
        return globaltimer_ns - self.offset_ns

    def as_dict(self) -> dict:
        """Return the calibration as a JSON-ready dict (ns)."""
        return asdict(self)


def estimate_offset(brackets: Sequence[tuple[int, int, int]], resolution_ns: int = 0) -> tuple[int, int, str, int]:
    """Return (offset_ns, uncertainty_ns, estimator, tightest_bracket_ns) from (host_before, gpu, host_after) ns brackets."""
    valid = [(a, g, b) for a, g, b in brackets if b >= a and g > 0]
    if not valid:
        raise ValueError("no valid bracket")
    lo = max(g - b for a, g, b in valid)
    hi = min(g + resolution_ns - a for a, g, b in valid)
    a, g, b = min(valid, key=lambda x: x[2] - x[0])
    tightest = b - a
    if lo <= hi:
        return (lo + hi) // 2, (hi - lo + 1) // 2, "intersection", tightest
    return g + resolution_ns // 2 - (a + b) // 2, (b - a + resolution_ns + 1) // 2, "tightest", tightest


def drift_ppm(earlier: ClockCalibration, later: ClockCalibration) -> float:
    """Return how fast globaltimer gains on monotonic between two calibrations, in parts per million."""
    dt = later.taken_at_monotonic_ns - earlier.taken_at_monotonic_ns
    return (later.offset_ns - earlier.offset_ns) / dt * 1e6 if dt else 0.0


def sync_brackets(samples: int = 32, stamps=None) -> list[tuple[int, int, int]]:
    """Return brackets from stamps enqueued on a private stream, each followed by that stream's synchronize."""
    import torch

    from servescope.kernels.globaltimer import GlobalTimerStamps

    stamps = stamps or GlobalTimerStamps(capacity=max(samples, 16))
    side = torch.cuda.Stream()
    out = []
    with torch.cuda.stream(side):
        for _ in range(samples):
            side.synchronize()
            h0 = time.monotonic_ns()
            slot = stamps.stamp()
            side.synchronize()
            h1 = time.monotonic_ns()
            out.append((h0, stamps.read_one(slot), h1))
    return out


class HandshakeCalibrator:
    """Takes handshake brackets on a private high-priority stream, reusing pinned buffers across calls."""

    def __init__(self, slots: int = 1024, timeout_ns: int = 20_000_000) -> None:
        import torch

        if triton is None:
            raise RuntimeError("handshake calibration needs Triton")
        self.slots = slots
        self.timeout_ns = timeout_ns
        self.ready = torch.zeros(slots, dtype=torch.int64, pin_memory=True)
        self.flag = torch.zeros(slots, dtype=torch.int64, pin_memory=True)
        self.out = torch.zeros(slots, dtype=torch.int64, pin_memory=True)
        self._rv, self._fv, self._ov = self.ready.numpy(), self.flag.numpy(), self.out.numpy()
        self.stream = torch.cuda.Stream(priority=-1)
        self._next = 0
        self._torch = torch

    def brackets(self, samples: int, ready_wait_s: float = 0.1, result_wait_s: float = 0.1,
                 stop_on_miss: bool = False) -> list[tuple[int, int, int]]:
        """Return up to `samples` (host_before, gpu, host_after) ns brackets; waits are bounded per sample.

        stop_on_miss: end the round at the first kernel that was not running within ready_wait_s
        (the GPU is full), so a round costs at most one ready_wait_s of waiting.
        """
        rv, fv, ov = self._rv, self._fv, self._ov
        out = []
        with self._torch.cuda.stream(self.stream):
            for _ in range(samples):
                i = self._next  # slots are used round-robin, so a late kernel never meets a reset slot
                self._next = (i + 1) % self.slots
                rv[i] = fv[i] = ov[i] = 0
                triton_handshake_kernel[(1,)](self.ready, self.flag, self.out, i, self.timeout_ns, num_warps=1)
                t_end = time.monotonic() + ready_wait_s
                while rv[i] == 0 and time.monotonic() < t_end:
                    pass
                running = rv[i] != 0
                h0 = time.monotonic_ns()
                fv[i] = 1  # always released, so the kernel never spins long
                if not running:  # not scheduled yet: it will find its flag set and exit
                    if stop_on_miss:
                        break
                    continue
                t_end = time.monotonic() + result_wait_s
                while ov[i] == 0 and time.monotonic() < t_end:
                    pass
                h1 = time.monotonic_ns()
                if ov[i] > 0:
                    out.append((h0, int(ov[i]), h1))
        return out


def handshake_brackets(samples: int = 32) -> list[tuple[int, int, int]]:
    """Return brackets from a spinning kernel released by a host write into pinned memory (PCIe round trip)."""
    return HandshakeCalibrator(slots=max(samples, 16)).brackets(samples)


def calibrate(samples: int = 32, method: str = "auto", resolution_ns: int = DEFAULT_RESOLUTION_NS,
              stamps=None, handshake: HandshakeCalibrator | None = None, **waits) -> ClockCalibration:
    """Return the globaltimer - monotonic offset (ns) from `samples` brackets (method: auto | handshake | sync)."""
    brackets: list = []
    used = method
    if method in ("auto", "handshake"):
        try:
            hs = handshake if handshake is not None else HandshakeCalibrator(slots=max(samples, 16))
            brackets = hs.brackets(samples, **waits)
            used = "handshake"
        except Exception:
            if method == "handshake":
                raise
        if len(brackets) < max(1, samples // 2):
            if method == "handshake":
                raise RuntimeError(f"handshake calibration: only {len(brackets)} of {samples} samples completed")
            brackets = []
    if not brackets:
        brackets = sync_brackets(samples, stamps)
        used = "sync"
    offset, unc, estimator, tightest = estimate_offset(brackets, resolution_ns)
    return ClockCalibration(offset, unc, used, estimator, len(brackets), tightest, time.monotonic_ns())


class ClockTracker:
    """Keeps the globaltimer -> monotonic map current over a long run: recalibrates, fits the drift.

    globaltimer and CLOCK_MONOTONIC run at slightly different rates (about -22 ppm measured on
    the H100: 22 us per second), so one calibration at start-up goes stale within seconds.
    ``maybe_recalibrate()`` (call it off the hot path, e.g. from harvest) takes a short calibration
    when the last is older than interval_s; ``to_monotonic_ns`` uses a least-squares line through
    the offsets of the last `history` calibrations (offset + rate * (t - t_ref)).
    Calibrations less precise than max_uncertainty_ns are rejected (counted).
    """

    def __init__(self, interval_s: float = 1.0, samples: int = 8, history: int = 8,
                 max_uncertainty_ns: int = 50_000, calibrate_fn=None, first=None, stamps=None,
                 now_ns=time.monotonic_ns) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.history_len = history
        self.max_uncertainty_ns = max_uncertainty_ns
        self._now = now_ns
        self._samples = samples
        hs = None
        given_fn = calibrate_fn is not None
        if calibrate_fn is None:
            try:
                hs = HandshakeCalibrator()
            except Exception:
                hs = None

            def calibrate_fn(n):  # periodic: bounded waits, no fallback that could wait on the GPU
                if hs is not None:
                    return calibrate(samples=n, method="handshake", handshake=hs,
                                     ready_wait_s=0.002, result_wait_s=0.001, stop_on_miss=True)
                return calibrate(samples=n, method="sync", stamps=stamps)

        self._calibrate = calibrate_fn
        self.history: list[ClockCalibration] = []
        self.rejected = 0
        self.failures = 0
        self._model = (0, 0, 0.0)  # (t_ref_ns, offset_at_t_ref_ns, rate: ns of offset per ns)
        if first is None:  # the first calibration may take its time: full waits, sync fallback
            first = (calibrate_fn(max(samples, 32)) if given_fn
                     else calibrate(samples=max(samples, 32), handshake=hs, stamps=stamps))
        self.add(first)
        self._last_attempt_ns = first.taken_at_monotonic_ns

    @property
    def latest(self) -> ClockCalibration:
        """The most recent accepted calibration."""
        return self.history[-1]

    @property
    def rate_ppm(self) -> float:
        """The fitted drift of globaltimer against monotonic, parts per million."""
        return self._model[2] * 1e6

    def add(self, cal: ClockCalibration) -> bool:
        """Accept a calibration into the fit unless it is too imprecise; return whether accepted."""
        if self.history and cal.uncertainty_ns > self.max_uncertainty_ns:
            self.rejected += 1
            return False
        self.history = (self.history + [cal])[-self.history_len:]
        self._model = fit_offset_line(self.history)
        return True

    def maybe_recalibrate(self) -> bool:
        """Take a short calibration if the last attempt is older than interval_s; return whether one was accepted."""
        now = self._now()
        if now - self._last_attempt_ns < self.interval_ns:
            return False
        self._last_attempt_ns = now
        try:
            return self.add(self._calibrate(self._samples))
        except Exception:
            self.failures += 1
            return False

    def offset_at(self, monotonic_ns: int) -> int:
        """Return the fitted globaltimer - monotonic offset (ns) at a monotonic time (ns)."""
        t_ref, off, rate = self._model
        return off + round(rate * (monotonic_ns - t_ref))

    def to_monotonic_ns(self, globaltimer_ns: int) -> int:
        """Return the host monotonic ns of a globaltimer stamp (ns), drift corrected."""
        t_ref, off, rate = self._model
        approx = globaltimer_ns - off
        return globaltimer_ns - (off + round(rate * (approx - t_ref)))

    def as_dict(self) -> dict:
        """Return the tracker's state (latest calibration, fitted rate, counts) as a JSON-ready dict."""
        return {"latest": self.latest.as_dict(), "rate_ppm": round(self.rate_ppm, 3),
                "calibrations": len(self.history), "rejected": self.rejected, "failures": self.failures}


def fit_offset_line(cals: Sequence[ClockCalibration]) -> tuple[int, int, float]:
    """Return (t_ref_ns, offset_at_t_ref_ns, rate) of the least-squares line offset(t) through calibrations."""
    last = cals[-1]
    if len(cals) < 2 or cals[-1].taken_at_monotonic_ns - cals[0].taken_at_monotonic_ns < 200_000_000:
        return last.taken_at_monotonic_ns, last.offset_ns, 0.0
    t_ref = last.taken_at_monotonic_ns
    ts = [c.taken_at_monotonic_ns - t_ref for c in cals]
    ys = [c.offset_ns - last.offset_ns for c in cals]
    n = len(ts)
    tm, ym = sum(ts) / n, sum(ys) / n
    var = sum((t - tm) ** 2 for t in ts)
    rate = sum((t - tm) * (y - ym) for t, y in zip(ts, ys)) / var
    return t_ref, last.offset_ns + round(ym - rate * tm), rate
