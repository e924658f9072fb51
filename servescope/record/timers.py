"""The one way to build a region timer: CUDA events where CUDA runs (and was asked for), host clocks elsewhere."""

from __future__ import annotations

from typing import Callable

from servescope.record.region_timer import RegionTimer


def make_region_timer(append_row: Callable[[tuple], None], rank: int = 0, *, gpu_events: bool = True,
                      read_thread_usage: bool = False, gpu_stamps: bool = False,
                      append_pending: Callable | None = None, resolve: Callable | None = None) -> RegionTimer:
    """Return a RegionTimer writing worker_regions rows: "cuda" mode when asked and CUDA is there, else "host"."""
    mode = "host"
    if gpu_events:
        try:
            import torch

            if torch.cuda.is_available():
                mode = "cuda"
        except Exception:
            pass
    return RegionTimer(append_row, rank=rank, mode=mode, append_pending=append_pending, resolve=resolve,
                       read_thread_usage=read_thread_usage, use_globaltimer=gpu_stamps and mode == "cuda",
                       forward_stamps=gpu_stamps and mode == "cuda")
