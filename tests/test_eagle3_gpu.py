"""EAGLE-3 on Model Runner V2 on a CUDA GPU (vLLM 0.26): one small configuration through the study's chain,
then the region structure of every verify step checked on the run directory. Skipped without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import engine_env
from servescope.run.tables import read_table
from servescope.run.names import Region

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.engine,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def eagle3_run(tmp_path_factory):
    from servescope.bench.model_kit import init_model_dir

    tmp = tmp_path_factory.mktemp("eagle3-gpu")
    target = init_model_dir(tmp / "llama3-8b", "llama3-8b", with_tokenizer=False)
    run, deliveries, out = tmp / "run", tmp / "deliveries.json", tmp / "result.json"
    env = engine_env(VLLM_USE_FLASHINFER_SAMPLER="0")
    subprocess.run([sys.executable, "-m", "servescope", "run", "--out", str(run), "--", sys.executable, "-m",
                    "servescope.studies.eagle3_study", "batch", "--config", "eagle3-k2-a2.5", "--target", str(target),
                    "--head", str(ROOT / "benchmarks" / "models" / "llama3-8b-eagle3"), "--batches", "1",
                    "--num-requests", "16", "--prompt-len", "128", "--output-len", "64", "--out", str(deliveries)],
                   env=env, check=True, timeout=900)
    proc = subprocess.run([sys.executable, "-m", "servescope.studies.eagle3_study", "result", str(run),
                           "--deliveries", str(deliveries), "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, json.loads(out.read_text()), run / "phases" / "measured"


def test_every_check_passes_on_model_runner_v2(eagle3_run):
    proc, result, _ = eagle3_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(".gpu.model_runner." in r for r in result["model_runner"]), result["model_runner"]
    assert not any(result["checks"].values()), result["checks"]


def test_each_step_nests_its_speculative_regions_as_model_runner_v2_calls_them(eagle3_run):
    _, _, run = eagle3_run
    steps = {s["step_id"]: s for s in read_table(run, "steps").to_pylist()}
    by_step: dict = {}
    for r in read_table(run, "worker_regions").to_pylist():
        if r["step_id"] is not None and r["rank"] == 0 and r["host_start_ns"] is not None:
            by_step.setdefault(r["step_id"], {}).setdefault(r["region"], []).append(r)
    verified = [sid for sid, s in steps.items() if s["num_spec_tokens"] > 0]
    assert verified
    for sid in verified:
        regions = {name: rows[0] for name, rows in by_step[sid].items()}
        inside = [(Region.REJECTION_SAMPLE, Region.SAMPLE), (Region.SAMPLE, Region.SAMPLE_TOKENS),
                  (Region.DRAFT, Region.SAMPLE_TOKENS), (Region.DRAFT_DECODE, Region.DRAFT)]
        for inner, outer in inside:
            a, b = regions[inner], regions[outer]
            assert b["host_start_ns"] <= a["host_start_ns"] <= a["host_end_ns"] <= b["host_end_ns"], (sid, inner)
        assert regions[Region.SAMPLE]["host_end_ns"] <= regions[Region.DRAFT]["host_start_ns"]  # verify, then draft
        for name in (Region.FORWARD, Region.REJECTION_SAMPLE, Region.DRAFT, Region.DRAFT_DECODE):
            assert regions[name]["gpu_ns"] is not None and regions[name]["gpu_ns"] > 0, (sid, name)
        assert regions[Region.DRAFT_DECODE]["gpu_ns"] <= regions[Region.DRAFT]["gpu_ns"]  # nested events
