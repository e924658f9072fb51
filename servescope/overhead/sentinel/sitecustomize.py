"""Import sentinel of `servescope overhead`: on PYTHONPATH in both arms, it notes every process that imports
any servescope module (a line in SERVESCOPE_SENTINEL_DIR/<pid>), so the untraced arm can prove it ran
with no servescope code at all. It only observes (its finder finds nothing) and then hands over to the
next sitecustomize on the path, if any."""

import os
import sys

_DIR = os.environ.get("SERVESCOPE_SENTINEL_DIR")


class _ServescopeImportSentinel:
    def find_spec(self, name, path=None, target=None):
        if name == "servescope" or name.startswith("servescope."):
            try:
                with open(os.path.join(_DIR, str(os.getpid())), "a") as f:
                    f.write(name + "\n")
            except OSError:
                pass
        return None


if _DIR:
    sys.meta_path.insert(0, _ServescopeImportSentinel())


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    me = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if me is not None:
            sys.modules["sitecustomize"] = me


_chain()
