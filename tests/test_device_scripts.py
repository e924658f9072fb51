"""The GPU machine's scripts (benchmarks/*.sh) call what exists: every `python3 -m MODULE` is importable, every
`python3 PATH.py` is a file of this tree (also as "$py"), and every --option they pass is one that command's --help lists. A
lease of the GPU machine is short: a renamed option or a removed script must fail here, not there."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))
CALL = re.compile(r"(?:python3|\"\$py\"|\$py)\s+(-m\s+(?P<module>[\w.]+)|(?P<path>[\w./-]+\.py))(?P<rest>[^\n]*)")
NOT_OURS = {"pip"}


def invocations(script: Path) -> list[tuple[str, list[str]]]:
    """Return (command, options) per python3 call of a script: continuation lines joined, comments dropped; the
    options are the --words up to the end of the command (a pipe, redirection, `;`, `&&`, `||`, or `--`)."""
    text = re.sub(r"\\\n", " ", script.read_text())
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    found, position = [], 0
    while (m := CALL.search(text, position)) is not None:
        position = m.start("rest")  # the next search starts there: a call can hold another (`run ... -- python3 x.py`)
        command = m["module"] or m["path"]
        if command in NOT_OURS:
            continue
        try:
            words = shlex.split(m["rest"], comments=True)
        except ValueError:  # a quote this line does not close
            words = m["rest"].split()
        options = []
        for word in words:
            if word in ("--", "|", ";", "&&", "||") or word[:1] in (">", "|") or word.startswith("2>"):
                break
            if word.startswith("--") and " " not in word:  # a quoted value with spaces is an argument, not an option
                options.append(word.split("=", 1)[0])
        if m["module"]:  # `python3 -m servescope SUBCOMMAND [SUBCOMMAND]`, `-m servescope.studies.x SUBCOMMAND`
            subcommands = []
            for word in words:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                subcommands.append(word)
            command = " ".join([command, *subcommands])
        found.append((command, options))
    return found


@lru_cache(maxsize=None)
def help_text(command: str) -> str:
    if command.endswith(".py"):
        argv = [sys.executable, str(ROOT / command), "--help"]
    else:
        argv = [sys.executable, "-m", *shlex.split(command), "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "COLUMNS": "250", "TERM": "dumb"})
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


CALLS = [(script.name, command, options) for script in SCRIPTS for command, options in invocations(script)]


def test_the_scripts_call_something():
    commands = {command for _, command, _ in CALLS}
    assert {"servescope overhead", "servescope run", "servescope.studies.engine_vs_engine"} <= commands, commands


@pytest.mark.parametrize("script,command,options", CALLS, ids=[f"{s}:{c}" for s, c, _ in CALLS])
def test_each_call_exists_and_takes_its_options(script, command, options):
    name = command.split()[0]
    if name.endswith(".py"):
        assert (ROOT / name).is_file(), f"{script} runs {name}, which does not exist"
    else:
        assert importlib.util.find_spec(name) is not None, f"{script} runs python3 -m {name}, which is not importable"
    if name.startswith("servescope") or name.endswith(".py"):
        text = help_text(command)
        missing = [o for o in options if not re.search(re.escape(o) + r"(?![\w-])", text)]
        assert not missing, f"{script}: {command} does not take {missing}"
