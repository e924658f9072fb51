"""benchmarks/h200_eagle3.sh --cpu-smoke: the EAGLE-3 study's whole chain on the CPU build (prompt lookup on
Model Runner V1): `servescope run` around the offline batches, the caller's deliveries, the result JSON and
its checks. The regions and the accounting are checked again here against the run directory itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import engine_env
from servescope.run.tables import read_table
from servescope.run.names import Region

pytestmark = pytest.mark.engine
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("eagle3-out"), tmp_path_factory.mktemp("eagle3-work")
    env = engine_env(OUT=str(out), EAGLE3_WORK=str(work), PYTHON=sys.executable,
                     PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["bash", "benchmarks/h200_eagle3.sh", "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, out, work


def test_the_smoke_run_passes_its_checks_and_writes_at_most_eight_files(smoke):
    proc, out, _ = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["grid.json", "ngram-k3.json", "runs.tar.gz"]
    result = json.loads((out / "ngram-k3.json").read_text())
    assert result["checks"] and not any(result["checks"].values()), result["checks"]
    grid = json.loads((out / "grid.json").read_text())
    assert grid["configs"]["ngram-k3"]["failed_checks"] == [] and grid["skipped"] == []
    assert grid["machine"]["versions"]["vllm"]


def test_rejection_sampling_is_recorded_in_every_step_that_verified_drafts_inside_its_sample_region(smoke):
    _, _, work = smoke
    run = work / "runs" / "ngram-k3" / "phases" / "measured"
    steps = read_table(run, "steps").to_pylist()
    regions = [r for r in read_table(run, "worker_regions").to_pylist() if r["step_id"] is not None]
    verified = {s["step_id"] for s in steps if s["num_spec_tokens"] > 0}
    assert verified, "prompt lookup drafted nothing"
    rejection = [r for r in regions if r["region"] == Region.REJECTION_SAMPLE]
    assert verified <= {r["step_id"] for r in rejection}  # V1 of vLLM 0.32 also runs it over zero drafts
    sample = {r["step_id"]: r for r in regions if r["region"] == Region.SAMPLE}
    for r in rejection:  # inside the sample region of its step, on the host clock
        s = sample[r["step_id"]]
        assert s["host_start_ns"] <= r["host_start_ns"] <= r["host_end_ns"] <= s["host_end_ns"]
    assert not [r for r in regions if r["region"] == Region.DRAFT_DECODE]  # Model Runner V1 has no draft loop


def test_the_split_and_both_observers_agree_with_the_run_directory(smoke):
    _, out, work = smoke
    result = json.loads((out / "ngram-k3.json").read_text())
    run = work / "runs" / "ngram-k3" / "phases" / "measured"
    steps = read_table(run, "steps").to_pylist()
    split = result["analysis"]["speculative"]["steps"]
    assert split["steps"]["verify"] == sum(1 for s in steps if s["num_spec_tokens"] > 0 and not s["num_prefill_tokens"])
    assert split["steps"]["verify_with_prefill"] == sum(1 for s in steps if s["num_spec_tokens"] and s["num_prefill_tokens"])
    emissions = read_table(run, "token_emissions").to_pylist()
    accepted = sum(e["num_accepted_tokens"] or 0 for e in emissions)
    second = result["acceptance"]["second_observer"]
    assert second["agree"] and second["accepted_seen_by_caller"] > 0
    assert second["accepted_seen_by_caller"] + second["accepted_not_delivered"] == accepted
    assert result["acceptance"]["vllm_counters"]["vllm:spec_decode_num_accepted_tokens"] == accepted
    # the deliveries the caller saw in the measured batch: every request got its max_tokens
    deliveries = json.loads((work / "deliveries" / "ngram-k3.json").read_text())["deliveries"]
    measured = {rid: d for rid, d in deliveries.items() if rid.startswith("measured-")}
    assert len(measured) == 4 and all(sum(n for n, _, _ in d) == 24 for d in measured.values())
