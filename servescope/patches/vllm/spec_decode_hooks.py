"""Hooks on speculative decoding inside the model runner: the proposer, its later drafts, the rejection sampler.

Regions (names.Region), timed with ``worker_hooks.region`` (host clock; CUDA events on CUDA):

- ``draft``: one call of the proposer's ``propose`` in Model Runner V2 (EAGLE, EAGLE-3, MTP and
  the other speculators): every draft forward of the step and its draft sampling, the EAGLE-3
  fusion of the target's auxiliary hidden states (``combine_hidden_states``) and the input
  preparation kernels. Model Runner V1 times its ``propose_draft_token_ids`` (worker_hooks.py).
- ``draft_decode``: inside ``draft``, the drafts after the first (``_multi_step_decode``: k - 1
  one-token forwards with their sampling; absent when k = 1). ``draft`` minus ``draft_decode`` is
  the first draft forward over the step's tokens, the "draft prefill".
- ``rejection_sample``: the rejection sampler that verifies a step's drafted tokens against the
  target's logits (Model Runner V2's ``RejectionSampler.__call__``, V1's ``RejectionSampler.forward``),
  inside the ``sample`` region; the target's ``compute_logits`` is in ``sample`` but not in it.

The verify forward has no region of its own: it is the target's ``forward`` of a step that
verified drafted tokens (``steps.num_spec_tokens > 0``; the worker's batch takes its draft counts
from the same ``scheduled_spec_decode_tokens``). analysis/speculative_steps.py makes the split.

Dummy proposals (memory profiling, CUDA graph warm-up, data-parallel padding steps pass
``dummy_run=True``) are not recorded, nor the drafts inside them. CUDA graph capture calls the
speculators' ``_prefill`` / ``_generate_draft`` directly, never a patched method. Every patch is
optional: a target absent from this vLLM version is skipped quietly (docs/how-it-works.md lists
which version has which).
"""

from __future__ import annotations

from servescope.patches.patch import Patch
from servescope.patches.switch import PARTS, active_recorder
from servescope.patches.vllm.worker_hooks import region
from servescope.run.names import Region


class DraftState:
    """Whether a recorded (not dummy) proposal is running in this worker thread."""

    def __init__(self) -> None:
        self.drafting = False


DRAFT = DraftState()

_timed_draft = region(Region.DRAFT)
_timed_draft_decode = region(Region.DRAFT_DECODE)


def wrap_propose(wrapped, speculator, args, kwargs):
    """Time a proposal as region draft; dummy proposals pass straight through."""
    if active_recorder() is None or not PARTS.regions or kwargs.get("dummy_run"):
        return wrapped(*args, **kwargs)
    DRAFT.drafting = True
    try:
        return _timed_draft(wrapped, speculator, args, kwargs)
    finally:
        DRAFT.drafting = False


def wrap_draft_decode(wrapped, speculator, args, kwargs):
    """Time the drafts after the first as region draft_decode, only inside a recorded proposal."""
    if not DRAFT.drafting:
        return wrapped(*args, **kwargs)
    return _timed_draft_decode(wrapped, speculator, args, kwargs)


_SPEC = "vllm.v1.worker.gpu.spec_decode"
_PROPOSERS = (  # (module under _SPEC, class): the speculators of Model Runner V2 that define propose
    ("autoregressive.speculator", "AutoRegressiveSpeculator"),  # 0.26: EAGLE, EAGLE-3, MTP, Gemma 4 MTP
    ("target_dependent_ar.speculator", "TargetDependentARSpeculator"),  # 0.32: EAGLE, EAGLE-3, MTP
    ("standalone_ar.speculator", "StandaloneARSpeculator"),  # 0.32: draft_model
    ("multi_module_mtp.speculator", "MultiModuleMTPSpeculator"),  # 0.32
    ("ngram.speculator", "NgramGPUSpeculator"),  # 0.32
    ("dflash.speculator", "DFlashSpeculator"),  # 0.26 and 0.32: DFlash, DSpark
)
_DRAFT_LOOPS = (  # (module under _SPEC, "Class.method"): the loop over drafts 2..k
    ("autoregressive.speculator", "AutoRegressiveSpeculator._multi_step_decode"),
    ("target_dependent_ar.speculator", "TargetDependentARSpeculator._multi_step_decode"),
    ("target_dependent_ar.speculator", "TargetDependentARSpeculator._fused_multi_step_decode"),
    ("standalone_ar.speculator", "StandaloneARSpeculator._multi_step_decode"),
)

RUNNER_PATCHES = (
    *(Patch(f"{_SPEC}.{module}", f"{cls}.propose", wrap_propose, optional=True, part="regions")
      for module, cls in _PROPOSERS),
    *(Patch(f"{_SPEC}.{module}", target, wrap_draft_decode, optional=True, part="regions")
      for module, target in _DRAFT_LOOPS),
    Patch(f"{_SPEC}.rejection_sampler", "RejectionSampler.__call__", region(Region.REJECTION_SAMPLE),
          optional=True, part="regions"),
    Patch("vllm.v1.sample.rejection_sampler", "RejectionSampler.forward", region(Region.REJECTION_SAMPLE),
          optional=True, part="regions"),
)
