"""What a measurement ran on: the facts every raw result file carries.

``machine_facts()`` returns the host (CPU, cores, memory, OS, Python), the GPU (name, driver, CUDA), torch,
vLLM and transformers versions, servescope's version and git commit, the date and the command line,
so that a number in docs/ can always be traced to the machine and code that produced it. Every
value that cannot be read is None, never a guess.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine_facts(command: list[str] | str | None = None) -> dict[str, Any]:
    """Return the machine, software versions, servescope commit, UTC date and command of this measurement."""
    from servescope import __version__

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]],
        "host": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "memory_bytes": _memory_total_bytes(),
            "python": platform.python_version(),
        },
        "gpu": gpu_facts(),
        "versions": {
            "servescope": __version__,
            "servescope_commit": git_commit(),
            "torch": _version_of("torch"),
            "vllm": _version_of("vllm"),
            "transformers": _version_of("transformers"),
        },
    }


def gpu_facts() -> dict[str, Any] | None:
    """Return the GPUs' names, the driver and CUDA versions (None without a CUDA GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        facts: dict[str, Any] = {
            "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cuda": torch.version.cuda,
            "driver": None,
        }
    except Exception:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        facts["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        pass
    return facts


def git_commit() -> str | None:
    """Return the git commit of servescope's source tree (with '+dirty' when it has changes), or None.

    Where the tree is no git checkout (a copy installed on a GPU machine), SERVESCOPE_COMMIT names it."""
    if os.environ.get("SERVESCOPE_COMMIT"):
        return os.environ["SERVESCOPE_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except Exception:
        return None


def _version_of(module: str) -> str | None:
    try:
        from importlib.metadata import version

        for dist in (module, f"{module}-cpu"):
            try:
                return version(dist)
            except Exception:
                continue
    except Exception:
        pass
    return None


def _memory_total_bytes() -> int | None:
    """Return the machine's memory (MemTotal of /proc/meminfo) in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # kB
    except Exception:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or None
