"""The engines servescope can instrument: name -> the module that turns it on and off.

``instrument(config)`` exports the run's configuration (run.config: every process an engine starts
records with it) and instruments every engine that is installed (or the ones named);
``uninstrument()`` removes every engine's patches, restores the environment and then closes the
recorder they share; ``autoload(config)`` is what servescope run's sitecustomize calls in each
process it starts: it arms the engines that have no plugin entry point of their own (vLLM has
one). Each instrumentor module has ``instrument(config)``, ``remove_patches()`` and
``uninstrument()``; those that need the sitecustomize also have ``autoload(config)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any

from servescope.run.config import Config


@dataclass(frozen=True)
class Engine:
    name: str  # as the manifest's engine.name records it
    package: str  # the import name whose presence says the engine is installed
    instrumentor: str  # module with instrument / remove_patches / uninstrument
    autoload: bool  # reached through servescope run's sitecustomize (no plugin entry point)


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("vllm", "vllm", "servescope.patches.vllm.instrumentor", autoload=False),
    Engine("transformers", "transformers", "servescope.patches.transformers.instrumentor", autoload=True),
)}


def installed(engine: Engine) -> bool:
    """Return True if the engine's package can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(engine.package) is not None
    except (ImportError, ValueError):
        return False


def _selected(names) -> list[Engine]:
    if names is None:
        return [e for e in ENGINES.values() if installed(e)]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; known: {list(ENGINES)}")
    return [ENGINES[n] for n in names]


_exported_env: dict[str, str | None] = {}  # the variables instrument() set, with what they were before


def instrument(config: Config, engines=None) -> dict[str, Any]:
    """Export config and instrument each installed engine (or those named); return engine name -> its PatchSet
    (None: refused)."""
    selected = _selected(engines)
    for key, value in config.environment().items():
        _exported_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value
    return {e.name: importlib.import_module(e.instrumentor).instrument(config) for e in selected}


def uninstrument() -> None:
    """Remove every instrumented engine's patches, restore the environment, then close this process's recorder."""
    from servescope.record.recorder import close_recorder

    for engine in ENGINES.values():
        module = sys.modules.get(engine.instrumentor)
        if module is not None:
            module.remove_patches()
    for key, previous in list(_exported_env.items()):
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
    _exported_env.clear()
    close_recorder()


def autoload(config: Config) -> None:
    """Arm every installed engine without a plugin entry point to record as config says once it is imported."""
    for engine in ENGINES.values():
        if engine.autoload and installed(engine):
            importlib.import_module(engine.instrumentor).autoload(config)
