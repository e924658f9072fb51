"""Per-rank records from a real vLLM run with tensor parallelism: the CPU build, the tiny model, TP=2 across two
worker processes (gloo between them), eager so that the part 'collectives' can time GroupCoordinator's all-reduce.

What the records must say: two ranks tagged TP 0 and TP 1 of pipeline stage 0, both with regions in every engine
step, the same number of collectives per step on both (each all-reduce ends on both ranks), and analyze's ranks
block measuring skew and communication over those steps. Without enforce_eager the CPU build compiles the
collectives into its graph and they are not timed (the last test). About two minutes on a 2-core machine
(docs/multi-gpu.md says what it costs)."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from engine_fixtures import TESTS, run_script

from servescope.analysis.rank_skew import rank_summary, step_groups
from servescope.patches.vllm.collective_hooks import collective_patch_refusal
from servescope.run.columns import int_column
from servescope.run.data import load_run
from servescope.run.names import Region

NUM_REQUESTS, MAX_TOKENS = 6, 8


@pytest.fixture(scope="module")
def tp2_run_dir(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("tp2")
    script = [sys.executable, str(TESTS / "engine_scripts" / "parallel_generate.py"), str(tiny_model_dir),
              str(tmp / "outputs.json"), "2", "1", "eager", str(NUM_REQUESTS), str(MAX_TOKENS)]
    # one core per worker: the CPU build binds each worker's OpenMP threads to its own cores
    run_script(script, tmp / "run", parts="default,collectives", VLLM_CPU_OMP_THREADS_BIND="0|1")
    outputs = json.loads((tmp / "outputs.json").read_text())
    assert len(outputs) == NUM_REQUESTS and all(len(t) == MAX_TOKENS for t in outputs.values())
    return tmp / "run"


@pytest.mark.engine
def test_each_worker_records_its_tensor_parallel_rank_and_times_its_collectives(tp2_run_dir):
    facts = sorted((json.loads(p.read_text()) for p in (tp2_run_dir / "engine").glob("*-worker.json")),
                   key=lambda f: f["rank"])
    assert [(f["rank"], f["tp_rank"], f["pp_rank"], f["engine_index"]) for f in facts] == [(0, 0, 0, 0), (1, 1, 0, 0)]
    assert [f["collectives"] for f in facts] == ["timed", "timed"]
    regions = load_run(tp2_run_dir).worker_regions
    rank, tp, pp = int_column(regions, "rank"), int_column(regions, "tp_rank", -1), int_column(regions, "pp_rank", -1)
    assert np.array_equal(tp, rank) and set(rank.tolist()) == {0, 1} and set(pp.tolist()) == {0}


@pytest.mark.engine
def test_every_step_has_both_ranks_and_matching_collectives(tp2_run_dir):
    run = load_run(tp2_run_dir)
    groups = step_groups(run.worker_regions)
    steps_with_regions = set(int_column(run.worker_regions, "step_id", -1).tolist()) - {-1}
    assert len(groups) == len(steps_with_regions) >= MAX_TOKENS  # one group per step: a single engine and stage
    assert (groups.ranks == 2).all()
    assert np.isfinite(groups.skew_ns).all() and (groups.skew_ns >= 0).all()
    assert set(groups.slowest_rank.tolist()) <= {0, 1}
    # a step that ran the model (not the empty last one) all-reduces on both ranks, as often on one as on the other
    regions = run.worker_regions
    collective = regions.filter(np.asarray(regions["region"].to_pylist(), dtype=object) == Region.COLLECTIVE)
    per_rank_step = collective.group_by(["step_id", "rank"]).aggregate([("region", "count")]).to_pylist()
    counts = {}
    for row in per_rank_step:
        counts.setdefault(row["step_id"], {})[row["rank"]] = row["region_count"]
    assert counts and all(len(c) == 2 and c[0] == c[1] > 0 for step, c in counts.items() if step is not None)
    forward_steps = {s for s in steps_with_regions if s in counts}
    measured = groups.step_id[np.isfinite(groups.communication_ns)]
    assert set(measured.tolist()) == forward_steps
    assert (groups.communication_ns[np.isfinite(groups.communication_ns)] > 0).all()


@pytest.mark.engine
def test_analyze_reports_skew_and_communication_for_the_tp2_run(tp2_run_dir):
    ranks = rank_summary(load_run(tp2_run_dir))
    assert [(p["rank"], p["tp_rank"]) for p in ranks["placement"]] == [(0, 0), (1, 1)]
    assert ranks["clock"] == "host"  # no GPU: spans on the host clock
    assert sum(ranks["slowest_rank"].values()) == ranks["groups"]
    comm = ranks["communication"]
    assert comm["measured_groups"] > 0 and comm["communication_s"]["p50"] > 0
    share = comm["share_of_step_gpu_time"]
    assert 0 < share["p50"] < 1  # the all-reduces are part of the step's time, not all of it


def test_the_cpu_build_times_collectives_only_in_eager_mode():
    """On the CPU platform torch.compile traces GroupCoordinator's collectives: a wrapper would be compiled into vLLM's
    graph, so the patches stay out unless the forward runs eagerly (CompilationMode.NONE = 0)."""
    def config(mode):
        return SimpleNamespace(compilation_config=SimpleNamespace(mode=mode))

    assert collective_patch_refusal(config(0)) is None
    refusal = collective_patch_refusal(config(3))  # VLLM_COMPILE, the CPU build's default
    assert refusal is not None and "enforce_eager" in refusal
