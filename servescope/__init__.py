"""servescope: measure LLM serving engines from the inside.

``servescope.instrument(run_dir=...)`` patches every supported engine installed in this process
(vLLM, and Hugging Face transformers' continuous batching) so that each request, token and
engine step is recorded into the run directory; vLLM's child processes record too, with the same
options, through the environment. ``servescope.uninstrument()`` restores the engines exactly as
they were. ``pause()`` / ``resume()`` switch vLLM's recording off and on in this process without
removing the patches.
"""

__version__ = "0.1.0"


def instrument(run_dir: str, engines=None, **options) -> dict:
    """Start recording into run_dir; return engine name -> its applied PatchSet (None where refused).

    engines: names to instrument (default: every installed one; servescope.patches.engines).
    options are those of ``servescope.run.config.Config``: ``parts`` (a comma list or set of recording
    parts, e.g. "default,thread"), ``segment_bytes``, ``nvml_interval_s``, ``profile_steps``, ...; they
    reach every process the engine starts."""
    import os

    from servescope.patches.engines import instrument as _instrument
    from servescope.run.config import Config

    return _instrument(Config.from_options(os.path.abspath(str(run_dir)), **options), engines)


def uninstrument() -> None:
    """Remove every patch of every engine, close the recorder and compact what the ended processes recorded."""
    import os

    from servescope.patches.engines import uninstrument as _uninstrument
    from servescope.run.compact import compact_run

    run_dir = os.environ.get("SERVESCOPE_RUN_DIR")
    _uninstrument()
    if run_dir:
        try:
            compact_run(run_dir)
        except Exception as exc:  # the spools stay: readers decode them, `servescope run` compacts them later
            import logging

            logging.getLogger("servescope").warning("servescope: compaction of %s failed (%r); the spool stays",
                                                    run_dir, exc)


def pause() -> None:
    """Stop recording in this process (patches stay; each hook costs one check)."""
    from servescope.patches.switch import pause as _pause

    _pause()


def resume() -> None:
    """Record again in this process after pause()."""
    from servescope.patches.switch import resume as _resume

    _resume()
