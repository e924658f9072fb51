"""Run a function right after a module is imported, for engines that have no plugin entry point.

``after_import(name, callback)`` calls ``callback(module)`` at once when ``name`` is already in
``sys.modules``; otherwise it puts a finder at the front of ``sys.meta_path`` that answers for
that one name only: it lets the other finders find the module, wraps the loader so that the
callback runs after the module's code, and removes itself. A process that never imports the
module pays one string comparison per new import. An exception in the callback is logged and
never breaks the import.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from typing import Any, Callable

logger = logging.getLogger("servescope")

_lock = threading.Lock()


class _LoaderThenCallback(importlib.abc.Loader):
    """A loader that runs the real loader, then the callback; every other attribute is the real loader's."""

    def __init__(self, loader: Any, callback: Callable[[Any], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run(self._callback, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for one module name, wraps the loader that the other finders find."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        remove_finder(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderThenCallback(spec.loader, self.callback)
                return spec
        return None


def _run(callback: Callable[[Any], None], module: Any) -> None:
    try:
        callback(module)
    except Exception as exc:
        logger.warning("servescope: could not instrument %s: %r", getattr(module, "__name__", module), exc)


def after_import(name: str, callback: Callable[[Any], None]) -> Any | None:
    """Call callback(module) once the module is imported (now if it already is); return the finder waiting, or None."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            for finder in sys.meta_path:
                if isinstance(finder, _AfterImportFinder) and finder.name == name and finder.callback == callback:
                    return finder
            finder = _AfterImportFinder(name, callback)
            sys.meta_path.insert(0, finder)
            return finder
    _run(callback, module)
    return None


def remove_finder(finder: Any) -> None:
    """Take a finder of after_import off sys.meta_path (no-op if it is gone)."""
    with _lock:
        try:
            sys.meta_path.remove(finder)
        except ValueError:
            pass


def cancel(name: str) -> None:
    """Stop waiting for module name: remove every finder of after_import waiting for it."""
    for finder in list(sys.meta_path):
        if isinstance(finder, _AfterImportFinder) and finder.name == name:
            remove_finder(finder)


def waiting_for() -> list[str]:
    """Return the module names that finders of after_import are still waiting for."""
    return [f.name for f in sys.meta_path if isinstance(f, _AfterImportFinder)]
