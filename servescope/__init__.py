"""servescope: measure LLM serving engines from the inside.

``servescope.instrument(run_dir=...)`` patches vLLM in this process (and, through the
environment, in every process vLLM starts) so that each request, token and engine step
is recorded into the run directory; ``servescope.uninstrument()`` restores vLLM.
"""

__version__ = "0.1.0"


def instrument(run_dir: str, **options):
    """Start recording vLLM into run_dir; returns the active instrumentor."""
    from servescope.patches.vllm.instrumentor import instrument as _instrument

    return _instrument(run_dir, **options)


def uninstrument() -> None:
    """Remove every patch and flush what was recorded."""
    from servescope.patches.vllm.instrumentor import uninstrument as _uninstrument

    _uninstrument()
