"""transformers' continuous batching on a CUDA GPU, traced: every token recorded, and every step's model-runner
regions timed on the GPU by CUDA events (on the CPU build they are host-timed: test_transformers_engine.py).
Skipped without a GPU; the H200 case study (docs/case-studies/engine-vs-engine.md) ran the same hooks there."""

from __future__ import annotations

from collections import defaultdict

import pytest

from hf_fixtures import record_hf_run
from servescope.run.names import Region, Table
from servescope.run.tables import read_table

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.engine,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_a_traced_gpu_run_records_every_token_and_gpu_times_of_every_step(tmp_path, tiny_model_dir):
    run = record_hf_run(tmp_path, tiny_model_dir, num_requests=16, max_tokens=12, HF_DEVICE="cuda")
    emitted = defaultdict(int)
    for r in read_table(run.run_dir, Table.TOKEN_EMISSIONS).to_pylist():
        emitted[r["request_id"]] += r["num_tokens"]
    assert dict(emitted) == {rid: len(out) for rid, out in run.outputs.items()}
    assert all(len(out) == run.max_tokens for out in run.outputs.values())
    steps = {s["step_id"] for s in read_table(run.run_dir, Table.STEPS).to_pylist()}
    regions = read_table(run.run_dir, Table.WORKER_REGIONS).to_pylist()
    for name in (Region.EXECUTE_MODEL, Region.FORWARD, Region.SAMPLE):
        timed = [r for r in regions if r["region"] == name]
        assert {r["step_id"] for r in timed} == steps, name
        # every step, the last one included (resolved at its own update: test_transformers_harvest.py)
        assert [r["step_id"] for r in timed if not r["gpu_ns"]] == [], name
