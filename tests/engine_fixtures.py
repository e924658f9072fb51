"""Real vLLM engines (the CPU build) for the tests: started once per session and shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).parent
ENGINE_TIMEOUT_S = 600

def engine_env(**extra: str) -> dict[str, str]:
    """Return the environment for a CPU-build vLLM child process."""
    env = dict(os.environ)
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop("SERVESCOPE_RUN_DIR", None)
    env.update(extra)
    return env


def write_tiny_model(directory: Path) -> Path:
    """Write the tiny dummy-weight Llama (config + synthetic tokenizer) the engine tests use."""
    from servescope.bench.model_kit import init_model_dir

    return init_model_dir(directory, "tiny")


@dataclass
class OfflineRun:
    run_dir: Path
    outputs: dict[str, list[int]]
    num_requests: int
    max_tokens: int
    log: str


def record_offline_run(tmp: Path, model_dir: Path, *, num_requests: int = 24, max_tokens: int = 16,
                       token_budget: int = 128, traced: bool = True, **env: str) -> OfflineRun:
    """Run tests/engine_scripts/offline_generate.py (under `servescope run` when traced)."""
    run_dir, out_json = tmp / "run", tmp / "outputs.json"
    script = [sys.executable, str(TESTS / "engine_scripts" / "offline_generate.py"), str(model_dir),
              str(out_json), str(num_requests), str(max_tokens), str(token_budget)]
    log = run_script(script, run_dir if traced else None, **env)
    return OfflineRun(run_dir, json.loads(out_json.read_text()), num_requests, max_tokens, log)


def run_script(script: list[str], run_dir: Path | None, *, parts: str | None = None, **env: str) -> str:
    """Run a user's engine script (under `servescope run --out run_dir [--parts parts]` unless run_dir is None);
    return its log."""
    options = ["--parts", parts] if parts is not None else []
    command = ([sys.executable, "-m", "servescope", "run", "--out", str(run_dir), *options, "--"] + script
               if run_dir is not None else script)
    proc = subprocess.run(command, env=engine_env(**env), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"engine run failed ({proc.returncode}):\n{log[-6000:]}")
    return log
