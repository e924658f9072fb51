"""Choose the region timer for this process: CUDA events where CUDA runs, host clocks elsewhere."""

from __future__ import annotations

from typing import Callable


def make_region_timer(append_row: Callable[[tuple], None], rank: int = 0):
    """Return a timer with start/end/harvest/close that writes worker_regions rows."""
    try:
        import torch

        if torch.cuda.is_available():
            from servescope.record.region_timer import RegionTimer

            return RegionTimer(append_row, rank=rank, mode="cuda")
    except Exception:
        pass
    from servescope.record.host_region_timer import HostRegionTimer

    return HostRegionTimer(append_row, rank=rank)
