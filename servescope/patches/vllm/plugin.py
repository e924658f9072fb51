"""vLLM's `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts.

It records only when ``SERVESCOPE_RUN_DIR`` is set (by ``servescope run`` or
``servescope.instrument()``); otherwise it costs one environment lookup. It never raises
into vLLM.
"""

from __future__ import annotations

import logging
import os

from servescope.run.directory import RUN_DIR_ENV


def register() -> None:
    """Instrument this vLLM process when a run directory is set in the environment."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return
    try:
        from servescope.patches.vllm.instrumentor import instrument

        instrument(run_dir)
    except Exception as exc:  # never break vLLM's start-up
        logging.getLogger("servescope").warning("servescope: instrumentation failed, vLLM runs untraced: %r", exc)
