"""Kernel attribution on the CPU build: a profile window of four steps inside a real vLLM worker,
its host operators placed in servescope's host regions. The known answer is the model's own
shape: every step's forward runs 4 matrix multiplications per layer (qkv, o, gate_up, down
projections) and the step's execute_model one more outside the forward (the lm_head)."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from engine_fixtures import ENGINE_TIMEOUT_S, TESTS, engine_env
from servescope.analysis.kernel_attribution import attribute_kernels, kernel_attribution_summary, region_intervals
from servescope.record.profile_window import read_profile
from servescope.run.data import load_run

pytestmark = pytest.mark.engine
FIRST, COUNT = 5, 4
# The CPU build's linear layers: which kernel vLLM dispatches depends on the CPU (dispatch_cpu_unquantized_gemm in
# vllm/model_executor/layers/utils.py: with AMX tiles and weights under 1 MiB, the tiny model's, sgl-kernel's
# weight_packed_linear; otherwise oneDNN's onednn_mm). Either way one call per linear layer.
LINEAR_OPS = ("_C::onednn_mm", "_C::weight_packed_linear")


def test_cpu_operators_of_a_profile_window_land_in_their_step_and_region(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--", sys.executable,
         str(TESTS / "engine_scripts" / "profile_generate.py"), str(tiny_model_dir), str(run_dir), str(FIRST), str(COUNT)],
        env=engine_env(VLLM_ALLOW_INSECURE_SERIALIZATION="1"), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    profile, (facts,) = read_profile(run_dir)
    steps = list(range(FIRST, FIRST + COUNT))
    assert facts["steps"] == steps and facts["rows"]["cpu_op"] == profile.num_rows > 0
    assert facts["clock"]["start"]["uncertainty_ns"] < 20_000 and facts["clock"]["end"]["uncertainty_ns"] < 20_000

    run = load_run(run_dir)
    summary = kernel_attribution_summary(profile, run.worker_regions, facts)
    assert summary["source"] == "host" and summary["steps"] == steps
    assert summary["straddling"] == 0 and summary["outside"]["kernels"] == 0, json.dumps(summary["outside"])

    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    regions = region_intervals(run.worker_regions, "host")
    rows = profile.to_pydict()
    owner = attribute_kernels(np.array(rows["start_ns"]), np.array(rows["end_ns"]), regions)
    matmuls = Counter((int(regions.step_id[o]), regions.region[o])
                      for o, name in zip(owner, rows["name"]) if name in LINEAR_OPS and o >= 0)
    expected = {(s, "forward"): 4 * layers for s in steps} | {(s, "execute_model"): 1 for s in steps}
    assert dict(matmuls) == expected
