"""GPU globaltimer stamps: a one-thread kernel writes the GPU's %globaltimer (ns) into a ring slot.

A stamp is enqueued on the current CUDA stream like any kernel, so it marks the moment the
stream reached that point, and it can be captured into a CUDA graph (a captured stamp then
always writes the slot it was captured with; ``graph_stamps.GraphSafeStamps`` is the ring for
stamps inside graphs). ``stamp()`` only enqueues: it never synchronizes. Read a slot after the
work before it completed (a CUDA event after it returned True from ``query()``).

Storage: by default the ring is pinned host memory, which the kernel writes through unified
addressing, so ``read()`` is a plain host memory read (no copy, no synchronization). Where
pinned memory is not device-writable, the ring is device memory and ``read()`` copies it on a
private stream (synchronizing that stream only).

Kernels: Triton (``tl.extra.cuda.globaltimer``) first, a CuPy RawKernel
(``mov.u64 %0, %globaltimer;``) as the fallback. globaltimer is the GPU's nanosecond clock;
``clock_calibration`` maps it onto ``time.monotonic_ns``.
"""

from __future__ import annotations

from typing import Callable, Sequence

try:  # Triton is optional: CPU builds and CI may lack it
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = repr(exc)


if triton is not None:

    @triton.jit
    def membar_sys():
        """Order this thread's earlier memory writes before its later ones, system-wide."""
        return tl.inline_asm_elementwise("membar.sys;\n mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                         is_pure=False, pack=1)

    @triton.jit(do_not_specialize=["slot"])
    def triton_stamp_kernel(out_ptr, slot):
        """Write %globaltimer (ns) into out_ptr[slot]."""
        t = tl.extra.cuda.globaltimer()
        tl.store(out_ptr + slot, t)

    @triton.jit(do_not_specialize=["value"])
    def triton_set_value_kernel(cell_ptr, value):
        """Write value into cell_ptr[0] in stream order."""
        tl.store(cell_ptr, value)

    @triton.jit
    def triton_graph_stamp_kernel(ring_ptr, counter_ptr, ctx_ptr, KIND: tl.constexpr, CAPACITY: tl.constexpr):
        """Append (seq, ctx[0], KIND, globaltimer) at ring entry counter++ % CAPACITY; seq written last."""
        i = tl.atomic_add(counter_ptr, 1)
        t = tl.extra.cuda.globaltimer()
        tag = tl.load(ctx_ptr, volatile=True)
        entry = ring_ptr + (i % CAPACITY) * 4
        tl.store(entry + 1, tag)
        tl.store(entry + 2, i * 0 + KIND)
        tl.store(entry + 3, t)
        _fence = membar_sys()
        tl.store(entry, i + 1)


CUDA_SOURCE = r"""
extern "C" __global__ void servescope_stamp(long long* out, long long slot) {
    if (threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        out[slot] = (long long)t;
    }
}

extern "C" __global__ void servescope_set_value(long long* cell, long long value) {
    if (threadIdx.x == 0) { cell[0] = value; }
}

extern "C" __global__ void servescope_graph_stamp(long long* ring, unsigned long long* counter,
                                                 const long long* ctx, long long kind, long long cap) {
    if (threadIdx.x == 0) {
        unsigned long long i = atomicAdd(counter, 1ULL);
        long long* e = ring + 4 * (long long)(i % (unsigned long long)cap);
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        e[1] = *((volatile const long long*)ctx);
        e[2] = kind;
        e[3] = (long long)t;
        __threadfence_system();
        *((volatile long long*)e) = (long long)i + 1;
    }
}
"""


class CupyKernels:
    """The CUDA C versions of the stamp kernels, launched on torch's current stream."""

    def __init__(self) -> None:
        import cupy
        import numpy
        import torch

        self._cupy, self._np, self._torch = cupy, numpy, torch
        module = cupy.RawModule(code=CUDA_SOURCE)
        self._stamp = module.get_function("servescope_stamp")
        self._set_value = module.get_function("servescope_set_value")
        self._graph_stamp = module.get_function("servescope_graph_stamp")
        self._streams: dict[int, object] = {}

    def _stream(self):
        ptr = self._torch.cuda.current_stream().cuda_stream
        s = self._streams.get(ptr)
        if s is None:
            s = self._streams[ptr] = self._cupy.cuda.ExternalStream(ptr)
        return s

    def stamp(self, buf, slot: int) -> None:
        """Enqueue: buf[slot] = globaltimer (ns)."""
        with self._stream():
            self._stamp((1,), (1,), (self._np.uint64(buf.data_ptr()), self._np.int64(slot)))

    def set_value(self, cell, value: int) -> None:
        """Enqueue: cell[0] = value."""
        with self._stream():
            self._set_value((1,), (1,), (self._np.uint64(cell.data_ptr()), self._np.int64(value)))

    def graph_stamp(self, ring, counter, ctx, kind: int, capacity: int) -> None:
        """Enqueue one graph-safe ring entry (see graph_stamps.py)."""
        np = self._np
        with self._stream():
            self._graph_stamp((1,), (1,), (np.uint64(ring.data_ptr()), np.uint64(counter.data_ptr()),
                                           np.uint64(ctx.data_ptr()), np.int64(kind), np.int64(capacity)))


class TritonKernels:
    """The Triton versions of the stamp kernels (one program, one warp)."""

    def __init__(self) -> None:
        if triton is None:
            raise RuntimeError(f"triton is not importable: {_TRITON_IMPORT_ERROR}")
        if not hasattr(tl.extra, "cuda") or not hasattr(tl.extra.cuda, "globaltimer"):
            raise RuntimeError("this Triton has no tl.extra.cuda.globaltimer")

    def stamp(self, buf, slot: int) -> None:
        """Enqueue: buf[slot] = globaltimer (ns)."""
        triton_stamp_kernel[(1,)](buf, slot, num_warps=1)

    def set_value(self, cell, value: int) -> None:
        """Enqueue: cell[0] = value."""
        triton_set_value_kernel[(1,)](cell, value, num_warps=1)

    def graph_stamp(self, ring, counter, ctx, kind: int, capacity: int) -> None:
        """Enqueue one graph-safe ring entry (see graph_stamps.py)."""
        triton_graph_stamp_kernel[(1,)](ring, counter, ctx, KIND=kind, CAPACITY=capacity, num_warps=1)


def load_kernels(backend: str = "auto"):
    """Return (kernels, backend name) for 'triton', 'cupy' or 'auto' (Triton, then CuPy)."""
    errors = []
    for name in (("triton", "cupy") if backend == "auto" else (backend,)):
        try:
            return (TritonKernels() if name == "triton" else CupyKernels()), name
        except Exception as exc:
            errors.append(f"{name}: {exc!r}")
    raise RuntimeError("no globaltimer kernel backend: " + "; ".join(errors))


def device_writable_pinned_int64(shape, kernels) -> "object | None":
    """Return a zeroed pinned host int64 tensor that a stamp kernel can write, or None."""
    import torch

    try:
        buf = torch.zeros(shape, dtype=torch.int64, pin_memory=True)
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            kernels.stamp(buf.view(-1), 0)
        side.synchronize()
        ok = int(buf.view(-1)[0]) != 0
        buf.zero_()
        return buf if ok else None
    except Exception:
        return None


class GlobalTimerStamps:
    """A ring of ``capacity`` int64 globaltimer stamps (ns); ``stamp()`` enqueues, ``read()`` reads."""

    def __init__(self, capacity: int = 4096, backend: str = "auto", storage: str = "auto") -> None:
        import torch

        self._torch = torch
        self.capacity = int(capacity)
        self.kernels, self.backend = load_kernels(backend)
        self._launch: Callable = self.kernels.stamp
        buf = None
        if storage in ("auto", "pinned"):
            buf = device_writable_pinned_int64((self.capacity,), self.kernels)
            if buf is None and storage == "pinned":
                raise RuntimeError("pinned host memory is not writable by the stamp kernel here")
        if buf is not None:
            self.storage = "pinned"
            self._view = buf.numpy()
        else:
            self.storage = "device"
            buf = torch.zeros(self.capacity, dtype=torch.int64, device="cuda")
            self._view = None
            self._copy_stream = torch.cuda.Stream()
        self.buffer = buf
        self._next = 0
        # compile and load the kernel now, outside any capture, on a private stream
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            self._launch(self.buffer, self.capacity - 1)
        side.synchronize()

    def stamp(self) -> int:
        """Enqueue a globaltimer stamp on the current stream; return its slot (no sync)."""
        slot = self._next
        self._next = slot + 1 if slot + 1 < self.capacity else 0
        self._launch(self.buffer, slot)
        return slot

    def read_one(self, slot: int) -> int:
        """Return the stamp (globaltimer ns) in slot; call only after the stamp's work completed."""
        if self._view is not None:
            return int(self._view[slot])
        return self.read((slot,))[0]

    def read(self, slots: Sequence[int]) -> list[int]:
        """Return the stamps (globaltimer ns) in slots; call only after their work completed."""
        if self._view is not None:
            view = self._view
            return [int(view[s]) for s in slots]
        torch = self._torch
        with torch.cuda.stream(self._copy_stream):
            host = self.buffer.to("cpu")  # synchronizes the private copy stream only
        return [int(host[s]) for s in slots]


def unavailable_reason() -> str | None:
    """Return why globaltimer stamps cannot run here, or None when they can."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
    except Exception as exc:
        return f"torch is not importable: {exc!r}"
    if triton is None:
        try:
            import cupy  # noqa: F401
        except Exception as exc:
            return f"neither triton ({_TRITON_IMPORT_ERROR}) nor cupy ({exc!r}) is importable"
    return None
