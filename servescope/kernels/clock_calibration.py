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


def handshake_brackets(samples: int = 32, timeout_ns: int = 20_000_000) -> list[tuple[int, int, int]]:
    """Return brackets from a spinning kernel released by a host write into pinned memory (PCIe round trip)."""
    import torch

    if triton is None:
        raise RuntimeError("handshake calibration needs Triton")
    ready = torch.zeros(samples, dtype=torch.int64, pin_memory=True)
    flag = torch.zeros(samples, dtype=torch.int64, pin_memory=True)
    out = torch.zeros(samples, dtype=torch.int64, pin_memory=True)
    rv, fv, ov = ready.numpy(), flag.numpy(), out.numpy()
    side = torch.cuda.Stream()
    brackets = []
    deadline_s = timeout_ns / 1e9 * 5
    with torch.cuda.stream(side):
        for i in range(samples):
            triton_handshake_kernel[(1,)](ready, flag, out, i, timeout_ns, num_warps=1)
            t_end = time.monotonic() + deadline_s
            while rv[i] == 0 and time.monotonic() < t_end:
                pass
            h0 = time.monotonic_ns()
            fv[i] = 1
            while ov[i] == 0 and time.monotonic() < t_end:
                pass
            h1 = time.monotonic_ns()
            if rv[i] != 0 and ov[i] > 0:
                brackets.append((h0, int(ov[i]), h1))
    side.synchronize()
    return brackets


def calibrate(samples: int = 32, method: str = "auto", resolution_ns: int = DEFAULT_RESOLUTION_NS,
              stamps=None) -> ClockCalibration:
    """Return the globaltimer - monotonic offset (ns) from `samples` brackets (method: auto | handshake | sync)."""
    brackets: list = []
    used = method
    if method in ("auto", "handshake"):
        try:
            brackets = handshake_brackets(samples)
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
