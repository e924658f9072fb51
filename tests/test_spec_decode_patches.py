"""The speculative-decoding patches (patches/vllm/spec_decode_hooks.py) in this process: the targets this vLLM
has are patched by instrument() and restored by uninstrument(); the draft wrappers record a real proposal,
never a dummy one, and its later drafts only inside it. Model Runner V2 does not run on the CPU build, so the
wrappers are driven here through a speculator-shaped class patched the same way."""

import importlib

import pytest

import servescope
from servescope.patches.patch import Patch, PatchSet, is_patched
from servescope.patches.vllm import instrumentor, spec_decode_hooks, worker_hooks
from servescope.run.tables import read_table
from servescope.run.names import Region

pytest.importorskip("vllm")


def _resolve(patch):
    try:
        owner = importlib.import_module(patch.module)
        *path, attr = patch.target.split(".")
        for part in path:
            owner = getattr(owner, part)
    except (ImportError, AttributeError):
        return None
    return (owner, attr) if attr in vars(owner) else None


def test_the_targets_this_vllm_has_are_patched_and_restored(tmp_path):
    present = {p.name: _resolve(p) for p in spec_decode_hooks.RUNNER_PATCHES if _resolve(p)}
    # both rejection samplers exist from vLLM 0.26 to 0.32
    assert "vllm.v1.sample.rejection_sampler.RejectionSampler.forward" in present
    assert "vllm.v1.worker.gpu.spec_decode.rejection_sampler.RejectionSampler.__call__" in present
    originals = {name: vars(owner)[attr] for name, (owner, attr) in present.items()}
    patch_set = servescope.instrument(tmp_path / "run", engines=["vllm"])["vllm"]
    instrumentor.patch_runners()
    try:
        for name, (owner, attr) in present.items():
            assert is_patched(getattr(owner, attr)), name
        assert set(present) <= set(patch_set.applied)
    finally:
        servescope.uninstrument()
    for name, (owner, attr) in present.items():
        assert vars(owner)[attr] is originals[name], name


class Speculator:
    """The shape of a Model Runner V2 speculator: propose() runs the later drafts in _multi_step_decode()."""

    def __init__(self):
        self.calls = []

    def propose(self, input_batch, *args, dummy_run=False, **kwargs):
        self.calls.append(("propose", input_batch, dummy_run))
        self._multi_step_decode(input_batch)
        return f"drafts of {input_batch}"

    def _multi_step_decode(self, input_batch):
        self.calls.append(("decode", input_batch))


def test_a_real_proposal_is_timed_with_its_later_drafts_and_a_dummy_one_is_not(tmp_path):
    patches = PatchSet()
    patches.apply(Patch(__name__, "Speculator.propose", spec_decode_hooks.wrap_propose))
    patches.apply(Patch(__name__, "Speculator._multi_step_decode", spec_decode_hooks.wrap_draft_decode))
    servescope.instrument(tmp_path / "run")
    try:
        s = Speculator()
        worker_hooks.WORKER.step_id = 7
        assert s.propose("batch-7") == "drafts of batch-7"  # arguments and result untouched
        worker_hooks.WORKER.step_id = None
        s.propose("dummy", dummy_run=True)  # profiling / graph warm-up / DP padding
        worker_hooks.WORKER.step_id = 8
        s._multi_step_decode("outside")  # not inside a recorded proposal
    finally:
        servescope.uninstrument()
        patches.remove_all()
    assert s.calls == [("propose", "batch-7", False), ("decode", "batch-7"), ("propose", "dummy", True),
                       ("decode", "dummy"), ("decode", "outside")]
    rows = read_table(tmp_path / "run", "worker_regions").to_pylist()
    assert sorted((r["step_id"], r["region"]) for r in rows) == [(7, Region.DRAFT), (7, Region.DRAFT_DECODE)]
    draft, decode = (next(r for r in rows if r["region"] == name) for name in (Region.DRAFT, Region.DRAFT_DECODE))
    assert draft["host_start_ns"] <= decode["host_start_ns"] <= decode["host_end_ns"] <= draft["host_end_ns"]
    assert not spec_decode_hooks.DRAFT.drafting


def test_the_synthetic_acceptance_length_asked_for_survives_vllms_conversion_to_rates():
    """vLLM turns synthetic_acceptance_length into per-position rates and sets the length to None (seen in the H200
    EAGLE-3 manifests): the engine parameters give the length back from vLLM's own rates."""
    from types import SimpleNamespace

    from vllm.config.speculative import SpeculativeConfig

    from servescope.patches.vllm.engine_facts import engine_parameters

    for length, k in ((2.5, 4), (1.5, 2), (3.0, 2)):
        rates = SpeculativeConfig._resolve_synthetic_acceptance_rates(k, None, length)  # what vLLM keeps
        spec = SimpleNamespace(method="eagle3", num_speculative_tokens=k, model="head", rejection_sample_method="synthetic",
                               synthetic_acceptance_length=None, synthetic_acceptance_rates=rates)
        params = engine_parameters(SimpleNamespace(speculative_config=spec))
        assert params["synthetic_acceptance_length"] == pytest.approx(length)
        assert params["speculative_config"]["synthetic_acceptance_rates"] == rates
    plain = engine_parameters(SimpleNamespace(speculative_config=None))
    assert plain["speculative_config"] is None and plain["synthetic_acceptance_length"] is None
