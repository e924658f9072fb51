"""Real transformers continuous batching (CPU) for the tests: a user's script, traced or not."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from engine_fixtures import TESTS, run_script


@dataclass
class HfRun:
    run_dir: Path
    outputs: dict[str, list[int]]  # request id -> generated token ids, as transformers returned them
    prompt_tokens: dict[str, int]  # request id -> prompt length the script sent
    max_tokens: int
    log: str


def record_hf_run(tmp: Path, model_dir: Path, *, traced: bool = True, mode: str = "batch", num_requests: int = 24,
                  max_tokens: int = 16, token_budget: int = 128, num_blocks: int = 64, page_size: int = 256,
                  prefix_sharing: bool = True, **env: str) -> HfRun:
    """Run tests/engine_scripts/hf_generate.py (under `servescope run` when traced); return what it produced."""
    run_dir, out_json = tmp / "run", tmp / "outputs.json"
    script = [sys.executable, str(TESTS / "engine_scripts" / "hf_generate.py"), str(model_dir), str(out_json),
              str(num_requests), str(max_tokens), str(token_budget), str(num_blocks), str(page_size), mode,
              "share" if prefix_sharing else "noshare"]
    log = run_script(script, run_dir if traced else None, **env)
    produced = json.loads(out_json.read_text())
    return HfRun(run_dir, produced["outputs"], produced["prompt_tokens"], max_tokens, log)
