"""NVML sampler: a daemon thread that samples each GPU's clocks, power, utilization and memory.

Rows go to ``append_row(tuple)`` in gpu_samples column order (schema.py): time_ns, gpu,
sm_clock_mhz, mem_clock_mhz, power_w, gpu_util_pct, mem_used_bytes. A field the GPU does not
report is null. Without nvidia-ml-py (``pynvml``), an NVML library or a GPU, ``start()`` returns
False and ``reason`` says why; nothing else happens. One NVML query costs ~5 us (H100), so a
sample of 5 fields on one GPU costs ~25 us of this thread's time.

``gpus`` are NVML device indices (NVML counts every GPU of the host; CUDA_VISIBLE_DEVICES
does not renumber them). None samples every GPU.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from servescope.run.clock import now_ns


def load_nvml():
    """Return the pynvml module, or raise ImportError with a clear message."""
    try:
        import pynvml
    except Exception as exc:
        raise ImportError(f"pynvml (pip install nvidia-ml-py) is not importable: {exc!r}") from exc
    return pynvml


class NvmlSampler:
    """Samples GPU state every interval_s seconds on a daemon thread; rows in gpu_samples order."""

    def __init__(self, append_row: Callable[[tuple], None], interval_s: float = 0.1,
                 gpus: Sequence[int] | None = None, nvml=None) -> None:
        self._append = append_row
        self.interval_s = float(interval_s)
        self.gpus = list(gpus) if gpus is not None else None
        self._nvml = nvml
        self._handles: list = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason: str | None = None  # why the sampler does not run
        self.samples = 0  # rows appended
        self.errors = 0  # failed queries and exceptions inside the thread

    def start(self) -> bool:
        """Start sampling; return False (reason set) when NVML or a GPU is missing."""
        if self._thread is not None and self._thread.is_alive():
            return True
        try:
            nv = self._nvml if self._nvml is not None else load_nvml()
            nv.nvmlInit()
        except Exception as exc:
            self.reason = f"NVML unavailable: {exc}"
            return False
        try:
            count = nv.nvmlDeviceGetCount()
            indices = self.gpus if self.gpus is not None else list(range(count))
            indices = [i for i in indices if 0 <= i < count]
            if not indices:
                raise RuntimeError(f"no GPU to sample (NVML sees {count}, asked for {self.gpus})")
            self._handles = [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in indices]
        except Exception as exc:
            self.reason = f"NVML has no GPU to sample: {exc}"
            self._shutdown(nv)
            return False
        self._nvml = nv
        self.reason = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="servescope-nvml", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the thread (after one last sample) and release NVML."""
        t = self._thread
        if t is None:
            return
        self._stop.set()
        t.join(timeout=max(2.0, 4 * self.interval_s))
        self._thread = None
        self._shutdown(self._nvml)

    def sample_once(self) -> None:
        """Append one row per GPU now (the thread calls this every interval_s)."""
        nv = self._nvml
        for index, h in self._handles:
            t = now_ns()
            self._append((
                t,
                index,
                self._query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                self._query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
                self._scaled(self._query(nv.nvmlDeviceGetPowerUsage, h), 1e-3),
                self._field(self._query(nv.nvmlDeviceGetUtilizationRates, h), "gpu"),
                self._field(self._query(nv.nvmlDeviceGetMemoryInfo, h), "used"),
            ))
            self.samples += 1

    def _query(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            self.errors += 1
            return None

    @staticmethod
    def _scaled(value, factor):
        return None if value is None else value * factor

    @staticmethod
    def _field(value, name):
        return None if value is None else getattr(value, name, None)

    def _run(self) -> None:
        stop = self._stop
        while True:
            t0 = now_ns()
            try:
                self.sample_once()
            except Exception:
                self.errors += 1
            if stop.is_set():
                return
            stop.wait(max(0.0, self.interval_s - (now_ns() - t0) / 1e9))
            # after stop is set, the loop takes one last sample and returns

    def _shutdown(self, nv) -> None:
        try:
            if nv is not None:
                nv.nvmlShutdown()
        except Exception:
            self.errors += 1
