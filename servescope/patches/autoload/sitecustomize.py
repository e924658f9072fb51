"""servescope run's sitecustomize: arms the engines without a plugin entry point, then runs any other sitecustomize.

``servescope run`` puts this directory first on PYTHONPATH, so Python imports this module at
start-up in every process the command starts. With SERVESCOPE_RUN_DIR set, it calls
``servescope.patches.engines.autoload``, which costs an import-hook check per new import until
an engine is imported (and nothing else in processes that never import one). Then it looks for
the sitecustomize this one hides (later on sys.path) and runs it, so a site's own customization
still happens. Nothing here may raise into the process.
"""

import os
import sys


def _arm_engines() -> None:
    if not os.environ.get("SERVESCOPE_RUN_DIR"):
        return
    try:
        from servescope.patches.engines import autoload
        from servescope.run.config import Config

        autoload(Config.from_environment())
    except Exception as exc:  # never break the process's start-up
        print(f"servescope: engines not armed, this process runs untraced: {exc!r}", file=sys.stderr)


def _run_hidden_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_arm_engines()
_run_hidden_sitecustomize()
