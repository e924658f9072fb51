"""servescope: measure LLM serving engines from the inside.

``servescope.instrument(run_dir=...)`` patches vLLM in this process (and, through the environment,
in every process vLLM starts) so that each request, token and engine step is recorded into the run
directory; ``servescope.uninstrument()`` restores vLLM. ``pause()`` / ``resume()`` switch recording
off and on in this process without removing the patches.
"""

__version__ = "0.1.0"


def instrument(run_dir: str, **options):
    """Start recording vLLM into run_dir; returns the applied patch set (None when vLLM is not supported).

    options are those of ``servescope.run.config.Config``: ``parts`` (a comma list or set of recording
    parts, e.g. "default,thread"), ``segment_bytes``, ``nvml_interval_s``, ``profile_steps`` ...; they
    reach every process the engine starts."""
    import os

    from servescope.patches.vllm.instrumentor import instrument as _instrument
    from servescope.run.config import Config

    return _instrument(Config.from_options(os.path.abspath(str(run_dir)), **options))


def uninstrument() -> None:
    """Remove every patch, close the recorder and compact what the ended processes recorded."""
    from servescope.patches.vllm.instrumentor import current_config, uninstrument as _uninstrument
    from servescope.run.compact import compact_run

    config = current_config()
    _uninstrument()
    if config is not None:
        try:
            compact_run(config.run_dir)
        except Exception as exc:  # the spools stay: readers decode them, `servescope run` compacts them later
            import logging

            logging.getLogger("servescope").warning("servescope: compaction of %s failed (%r); the spool stays",
                                                    config.run_dir, exc)


def pause() -> None:
    """Stop recording in this process (patches stay; each hook costs one check)."""
    from servescope.patches.switch import pause as _pause

    _pause()


def resume() -> None:
    """Record again in this process after pause()."""
    from servescope.patches.switch import resume as _resume

    _resume()
