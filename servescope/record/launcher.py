"""`servescope run --out RUN -- COMMAND`: record every engine process a command starts.

The command inherits SERVESCOPE_RUN_DIR. vLLM loads servescope's plugin in each of its
processes, which then record into RUN. Engines without a plugin entry point (transformers'
continuous batching) are reached through ``servescope/patches/autoload/sitecustomize.py``,
which the command finds first on PYTHONPATH: every Python process it starts arms them, to be
patched if and when it imports one. When the command ends, the manifest is assembled. Signals
reach the command; Ctrl-C stops it and keeps what was recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servescope.run.manifest import write_manifest
from servescope.run.directory import RUN_DIR_ENV, write_json

PLUGIN_NAME = "servescope"
# the directory holding servescope's sitecustomize (a path only: the launcher imports nothing above its layer)
AUTOLOAD_DIR = Path(__file__).resolve().parents[1] / "patches" / "autoload"


def child_environment(run_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment that makes engine processes record into run_dir."""
    env = dict(os.environ if base is None else base)
    env[RUN_DIR_ENV] = str(run_dir.absolute())
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(AUTOLOAD_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(AUTOLOAD_DIR), *path])
    allowed = env.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        env["VLLM_PLUGINS"] = ",".join([p for p in allowed.split(",") if p] + [PLUGIN_NAME])
    return env


def run_command(command: list[str], run_dir: str | os.PathLike, *, export_spans: bool = True) -> int:
    """Run command with recording into run_dir; return its exit code.

    Afterwards the manifest is written and, unless export_spans is False, the run's spans go to
    the OTLP endpoint named by the standard OTEL_EXPORTER_OTLP_* variables, or, with none set,
    into RUN/otlp/spans.jsonl as OTLP-JSON lines."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "command.json", {"argv": command, "cwd": os.getcwd(), "started_wall_ns": time.time_ns()})
    try:
        proc = subprocess.Popen(command, env=child_environment(run_dir))
    except FileNotFoundError as exc:
        raise SystemExit(f"servescope run: cannot start {command[0]!r}: {exc.strerror}") from exc

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    write_manifest(run_dir)
    if export_spans:
        export_spans_of(run_dir)
    return code


def export_spans_of(run_dir: Path) -> None:
    """Export the run's spans (OTLP endpoint from the environment, else OTLP-JSON lines); warn on failure."""
    try:
        from servescope.export.otel_export import export_run

        if any((run_dir / "tables").glob("*/*.parquet")):
            export_run(run_dir)
    except Exception as exc:  # the run is recorded; exporting it can be repeated with `servescope export`
        print(f"servescope: spans not exported ({exc}); retry with: servescope export {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_command(sys.argv[1:], os.environ.get(RUN_DIR_ENV, "run")))
