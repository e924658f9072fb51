"""Graph-safe globaltimer stamps: stamps that also work inside captured CUDA graphs.

Inside a FULL CUDA graph the host runs no Python per replay, and CUDA events cannot be put
inside the graph; only kernels captured into it run. A captured kernel has fixed arguments,
so these stamps take their ring slot from a device counter (``atomicAdd``) and their tag from a
device context cell, both read when the kernel runs:

* ``set_context(tag)`` (eager, once per step) enqueues ``ctx = tag`` on the current stream;
* ``stamp(kind)`` (eager, or during capture, then on every replay) appends the entry
  ``(seq, tag=ctx, kind, globaltimer_ns)`` to a ring in pinned host memory; ``seq`` is written
  last, after a system-wide memory barrier;
* ``drain()`` returns, without synchronizing, the entries whose ``seq`` is visible.

Stream order makes an entry carry the tag that was set before it on the same stream, which is
how a stamp replayed from a graph finds the step it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from servescope.kernels.globaltimer import device_writable_pinned_int64, load_kernels

BEGIN = 0
END = 1
NO_TAG = -1  # the context before any set_context()

ENTRY_WORDS = 4  # seq, tag, kind, globaltimer_ns


@dataclass(frozen=True, slots=True)
class StampEntry:
    seq: int  # 1, 2, ... in GPU execution order
    tag: int  # the context when the stamp ran (NO_TAG before any set_context)
    kind: int  # BEGIN or END (or the caller's own kinds)
    gpu_ns: int  # globaltimer, ns


def read_new_entries(view, cursor: int) -> tuple[list[StampEntry], int, int]:
    """Return (entries after cursor, new cursor, entries lost to ring overrun) from a (capacity, 4) array."""
    capacity = len(view)
    out: list[StampEntry] = []
    lost = 0
    while True:
        row = view[cursor % capacity]
        seq = int(row[0])
        if seq == cursor + 1:
            out.append(StampEntry(seq, int(row[1]), int(row[2]), int(row[3])))
            cursor += 1
        elif seq > cursor + 1 and (seq - cursor - 1) % capacity == 0:
            lost += seq - cursor - 1  # the writer lapped the reader; skip to what is there
            cursor = seq - 1
        else:
            return out, cursor, lost


@dataclass(slots=True)
class StampPairer:
    """Pairs BEGIN/END entries of one stream into (tag, begin_ns, end_ns) intervals."""

    unpaired: int = 0
    untagged: int = 0
    _open: StampEntry | None = None

    def feed(self, entries) -> list[tuple[int, int, int]]:
        """Return the (tag, begin_gpu_ns, end_gpu_ns) intervals closed by entries, in order."""
        out = []
        for e in entries:
            if e.kind == BEGIN:
                if self._open is not None:
                    self.unpaired += 1
                self._open = e
            elif e.kind == END:
                b = self._open
                self._open = None
                if b is None or b.tag != e.tag:
                    self.unpaired += 1
                elif e.tag == NO_TAG:
                    self.untagged += 1
                else:
                    out.append((e.tag, b.gpu_ns, e.gpu_ns))
        return out


class GraphSafeStamps:
    """A ring of tagged globaltimer stamps that can be captured into CUDA graphs."""

    def __init__(self, capacity: int = 4096, backend: str = "auto") -> None:
        import torch

        self.capacity = int(capacity)
        self.kernels, self.backend = load_kernels(backend)
        ring = device_writable_pinned_int64((self.capacity, ENTRY_WORDS), self.kernels)
        if ring is None:
            raise RuntimeError("pinned host memory is not writable by the stamp kernel here")
        self.ring = ring
        self._view = ring.numpy()
        self.counter = torch.zeros(1, dtype=torch.int64, device="cuda")
        self.context = torch.full((1,), NO_TAG, dtype=torch.int64, device="cuda")
        self._cursor = 0
        self.lost = 0
        # compile and load both kernel variants now, outside any capture, then forget the entries
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            for kind in (BEGIN, END):
                self.kernels.graph_stamp(self.ring, self.counter, self.context, kind, self.capacity)
            self.kernels.set_value(self.context, NO_TAG)
        side.synchronize()
        self.drain()

    def set_context(self, tag: int) -> None:
        """Enqueue ctx = tag on the current stream (eager only; not while capturing)."""
        self.kernels.set_value(self.context, tag)

    def stamp(self, kind: int) -> None:
        """Enqueue a (tag, kind, globaltimer) entry on the current stream; capturable into a graph."""
        self.kernels.graph_stamp(self.ring, self.counter, self.context, kind, self.capacity)

    def drain(self) -> list[StampEntry]:
        """Return the entries written since the last drain, in GPU order (no sync)."""
        out, self._cursor, lost = read_new_entries(self._view, self._cursor)
        self.lost += lost
        return out
