"""servescope: measure LLM serving engines from the inside.

``servescope.instrument(run_dir=...)`` patches every supported engine installed in this process
(vLLM, and Hugging Face transformers' continuous batching) so that each request, token and
engine step is recorded into the run directory; vLLM's child processes record too, through the
environment. ``servescope.uninstrument()`` restores the engines exactly as they were.
"""

__version__ = "0.1.0"


def instrument(run_dir: str, engines=None, **options) -> dict:
    """Start recording into run_dir; return engine name -> its applied PatchSet (None where refused).

    engines: names to instrument (default: every installed one; see servescope.patches.engines)."""
    from servescope.patches.engines import instrument as _instrument

    return _instrument(run_dir, engines, **options)


def uninstrument() -> None:
    """Remove every patch of every engine and flush what was recorded."""
    from servescope.patches.engines import uninstrument as _uninstrument

    _uninstrument()
