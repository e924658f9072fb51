"""`servescope run --out RUN -- COMMAND`: record every engine process a command starts.

The command inherits the run's configuration (run.config: SERVESCOPE_RUN_DIR and
SERVESCOPE_CONFIG); vLLM loads servescope's plugin in each of its processes, which then record
into RUN's spool. Engines without a plugin entry point (transformers' continuous batching) are
reached through ``servescope/patches/autoload/sitecustomize.py``, which the command finds first on
PYTHONPATH: every Python process it starts arms them, to be patched if and when it imports one. The command runs in a process group of its own: SIGINT / SIGTERM sent to
`servescope run` are passed on to the whole group (as a terminal's Ctrl-C would be); a second
signal is passed on as SIGTERM (a command that ends its work on SIGINT but not its process, as
transformers serve does after serving, ends there), a third kills the group. Whatever way the command ends, its processes'
records are in their spools; when it has ended (and its engine processes too, or after a grace
period), the spools are compacted into Parquet parts and the manifest is written, with the
command's exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servescope.run.compact import compact_run, process_alive
from servescope.run.config import Config
from servescope.run.directory import read_json, write_json
from servescope.run.manifest import write_manifest
from servescope.run.spool import group_segments, segments

PLUGIN_NAME = "servescope"
ENGINE_EXIT_GRACE_S = 10.0  # how long the engine's processes may outlive the command before compaction
# the directory holding servescope's sitecustomize (a path only: the launcher imports nothing above its layer)
AUTOLOAD_DIR = Path(__file__).resolve().parents[1] / "patches" / "autoload"


def child_environment(config: Config, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment that makes engine processes record with this configuration."""
    env = dict(os.environ if base is None else base)
    env.update(config.environment())
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(AUTOLOAD_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(AUTOLOAD_DIR), *path])
    allowed = env.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        env["VLLM_PLUGINS"] = ",".join([p for p in allowed.split(",") if p] + [PLUGIN_NAME])
    return env


def run_command(command: list[str], config: Config) -> int:
    """Run command recording as config says; compact, write the manifest and return its exit code."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time_ns()
    write_json(run_dir / "command.json", {"argv": command, "cwd": os.getcwd(), "started_wall_ns": started,
                                          "parts": sorted(config.parts)})
    try:
        proc = subprocess.Popen(command, env=child_environment(config), process_group=0)
    except OSError as exc:
        raise SystemExit(f"servescope run: cannot start {command[0]!r}: {exc.strerror}") from exc

    signals_seen = []

    def forward(signum, _frame):
        signals_seen.append(signum)
        target = (signum, signal.SIGTERM, signal.SIGKILL)[min(len(signals_seen), 3) - 1]
        try:
            os.killpg(proc.pid, target)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    finish_run(run_dir, exit_code=code, signals=[signal.Signals(s).name for s in signals_seen])
    return code


def finish_run(run_dir: Path, *, exit_code: int | None, signals: list[str] | None = None) -> dict:
    """Wait (briefly) for the engine's processes to end, compact their spools, write the manifest; return it.

    command.json gets the exit code, the signals passed on, and the seconds spent waiting for the engine's
    processes (engine_exit_wait_s) and compacting their spools (compaction_s, rows_compacted rows)."""
    waited = time.monotonic()
    deadline = waited + ENGINE_EXIT_GRACE_S
    while time.monotonic() < deadline and _spool_owners_alive(run_dir):
        time.sleep(0.1)
    compacting = time.monotonic()
    compaction = compact_run(run_dir)
    compacted = time.monotonic()
    command_path = run_dir / "command.json"
    command = read_json(command_path) if command_path.exists() else {}
    command.update({"exit_code": exit_code, "signals": signals or [], "ended_wall_ns": time.time_ns(),
                    "still_running_at_compaction": compaction.left_running,
                    "engine_exit_wait_s": compacting - waited, "compaction_s": compacted - compacting,
                    "rows_compacted": compaction.rows})
    write_json(command_path, command)
    return write_manifest(run_dir)


def _spool_owners_alive(run_dir: Path) -> bool:
    return any(process_alive(pid) for _, pid, _ in group_segments(segments(run_dir)))


if __name__ == "__main__":
    sys.exit(run_command(sys.argv[1:], Config.from_environment() or Config.from_options("run")))
