"""Region ``collective``: vLLM's all-reduce, all-gather and reduce-scatter between the ranks of a worker's groups.

Every tensor-parallel collective of vLLM 0.26 to 0.32 goes through one ``GroupCoordinator`` method per kind
(``vllm/distributed/parallel_state.py``): ``all_reduce`` -> ``_all_reduce_out_place`` ->
``device_communicator.all_reduce``, where the CUDA communicator picks vLLM's custom all-reduce, quick
all-reduce, symmetric memory or NCCL (pynccl), and the CPU communicator its shared-memory or gloo path; the
same for ``_all_gather_out_place`` and ``_reduce_scatter_out_place``. On CUDA (and ROCm, XPU)
``GroupCoordinator.all_reduce`` calls them through the custom ops ``torch.ops.vllm.all_reduce`` etc., whose
implementation runs the ``_*_out_place`` method at run time: torch.compile sees an opaque op and never traces
the method, so a wrapper there runs on every eager call. Inside CUDA graphs the ops are captured once and
replayed without Python: the wrapper passes straight through while a graph is captured, and replays have no
region (docs/multi-gpu.md says how a profile window's kernels give their time there).

Where torch.compile traces the collectives (the CPU build's platforms, which call ``_*_out_place`` directly
from the compiled forward), a wrapper would be compiled into vLLM's graph: the patches are then not applied
(``collective_patch_refusal`` says why, in the worker's facts: ``collectives``) and the forward region holds the collectives.
The decision is taken in ``Worker.load_model``, before anything is compiled, from the worker's configuration.

A collective is recorded only inside a timed region of a step (``WORKER.depth``): the memory profile, warm-up
and dummy batches record none. Part ``collectives`` (off by default): one region per collective costs one
timer start / end, i.e. two CUDA events, on the forward's hot path (2 x layers per forward).
"""

from __future__ import annotations

from servescope.patches.patch import Patch
from servescope.patches.switch import PARTS, active_recorder
from servescope.patches.vllm.worker_hooks import WORKER
from servescope.run.names import Region


class CollectiveState:
    """How this worker applies the collective patches (WORKER.collectives says whether it did, or why not)."""

    def __init__(self) -> None:
        self.apply = None  # set by the instrumentor: applies COLLECTIVE_PATCHES in this process


STATE = CollectiveState()
TIMED = "timed"  # WORKER.collectives when the patches are in place


def timed_collective(wrapped, group, args, kwargs):
    """Time one collective as region ``collective`` of the current step (never while a CUDA graph is captured)."""
    rec = active_recorder()
    timer = WORKER.timer
    if rec is None or timer is None or WORKER.depth == 0 or not PARTS.collectives:
        return wrapped(*args, **kwargs)
    try:
        if timer.is_capturing():
            return wrapped(*args, **kwargs)
        token = timer.start(WORKER.step_id, Region.COLLECTIVE)
    except Exception as exc:
        rec.error("region collective", exc)
        return wrapped(*args, **kwargs)
    try:
        return wrapped(*args, **kwargs)
    finally:
        try:
            timer.end(token)
        except Exception as exc:
            rec.error("region collective", exc)


def collective_patch_refusal(vllm_config) -> str | None:
    """Return why the collective patches must stay out of this worker (torch.compile would trace them), or None."""
    try:
        from vllm.platforms import current_platform

        if current_platform.use_custom_op_collectives():
            return None  # torch.ops.vllm.* collectives: opaque to torch.compile
    except Exception:
        pass
    try:
        if int(vllm_config.compilation_config.mode) == 0:  # CompilationMode.NONE: eager (enforce_eager)
            return None
        mode = vllm_config.compilation_config.mode
    except Exception as exc:
        return f"compilation mode unknown ({exc!r})"
    return (f"torch.compile ({getattr(mode, 'name', mode)}) traces this platform's collectives: not timed (run "
            "with enforce_eager to time them; the forward region holds them)")


def wrap_worker_load_model(wrapped, worker, args, kwargs):
    """Before the model loads (and is compiled), apply the collective patches where torch.compile cannot see them."""
    if active_recorder() is not None and PARTS.collectives and STATE.apply is not None:
        try:
            refusal = collective_patch_refusal(worker.vllm_config)
            if refusal is None:
                STATE.apply()
            WORKER.collectives = refusal or TIMED
        except Exception as exc:
            WORKER.collectives = f"not applied: {exc!r}"
    return wrapped(*args, **kwargs)


PARALLEL_STATE = "vllm.distributed.parallel_state"
COLLECTIVE_PATCHES = tuple(
    Patch(PARALLEL_STATE, f"GroupCoordinator.{method}", timed_collective, optional=True, part="collectives")
    for method in ("_all_reduce_out_place", "_all_gather_out_place", "_reduce_scatter_out_place"))
RUNNER_PATCHES = (
    Patch("vllm.v1.worker.gpu_worker", "Worker.load_model", wrap_worker_load_model, optional=True,
          part="collectives"),
)
