"""The engines servescope can instrument: name -> the module that turns it on and off.

``instrument(run_dir)`` instruments every engine that is installed (or the ones named),
``uninstrument()`` removes every engine's patches and then closes the recorder they share,
``autoload(run_dir)`` is what servescope run's sitecustomize calls in each process it starts:
it arms the engines that have no plugin entry point of their own (vLLM has one). Each
instrumentor module has ``instrument(run_dir, **options)``, ``remove_patches()`` and
``uninstrument()``; those that need the sitecustomize also have ``autoload(run_dir)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any


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


def instrument(run_dir: str | os.PathLike, engines=None, **options) -> dict[str, Any]:
    """Instrument each installed engine (or those named); return engine name -> its PatchSet (None: refused)."""
    return {e.name: importlib.import_module(e.instrumentor).instrument(run_dir, **options) for e in _selected(engines)}


def uninstrument() -> None:
    """Remove every instrumented engine's patches, then flush and close this process's recorder."""
    from servescope.record.recorder import close_recorder

    for engine in ENGINES.values():
        module = sys.modules.get(engine.instrumentor)
        if module is not None:
            module.remove_patches()
    close_recorder()


def autoload(run_dir: str | os.PathLike) -> None:
    """Arm every installed engine without a plugin entry point to record into run_dir once it is imported."""
    for engine in ENGINES.values():
        if engine.autoload and installed(engine):
            importlib.import_module(engine.instrumentor).autoload(run_dir)
