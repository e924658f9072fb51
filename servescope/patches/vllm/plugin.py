"""vLLM's `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts.

It records only when ``SERVESCOPE_RUN_DIR`` is set (by ``servescope run`` or
``servescope.instrument()``), with the configuration exported beside it (run.config); otherwise it
costs one environment lookup. It never raises into vLLM.
"""

from __future__ import annotations

import logging
import os

from servescope.run.config import RUN_DIR_ENV


def register() -> None:
    """Instrument this vLLM process when a run directory is set in the environment."""
    if not os.environ.get(RUN_DIR_ENV):
        return
    try:
        from servescope.patches.vllm.instrumentor import instrument
        from servescope.run.config import Config

        instrument(Config.from_environment())
    except Exception as exc:  # never break vLLM's start-up
        logging.getLogger("servescope").warning("servescope: instrumentation failed, vLLM runs untraced: %r", exc)
