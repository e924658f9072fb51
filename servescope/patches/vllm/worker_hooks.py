"""Hooks in the model runner (inside a worker): timed regions of every step.

Runner modules are heavy (and may touch CUDA), so they are never imported at plugin time:
``WorkerWrapperBase.init_worker`` runs in the worker process before the model runner is
built, and patches the runner classes there. Regions: execute_model, forward, sample_tokens,
sample, draft, bookkeep (Model Runner V1 and the CPU runner); execute_model, sample_tokens,
sample (Model Runner V2). On CUDA each region also gets GPU times from servescope's timers;
on the CPU build host timers stand in.
"""

from __future__ import annotations

import functools
import os

from servescope.patches.patch import Patch, PatchSet
from servescope.patches.vllm.active import active_recorder
from servescope.patches.vllm.engine_core_hooks import step_id_of


class WorkerState:
    def __init__(self) -> None:
        self.step_id: int | None = None
        self.rank = 0
        self.timer = None
        self.facts_written = False
        self.in_execute_model = False  # Model Runner V2 forward hooks record only inside a real step
        self.nvml = None


WORKER = WorkerState()


def _timer(rec):
    if WORKER.timer is None:
        from servescope.record.timers import make_region_timer

        WORKER.timer = make_region_timer(lambda row: rec.append("worker_regions", row), WORKER.rank)
        if WORKER.rank == 0 and getattr(WORKER.timer, "mode", "host") == "cuda":
            _start_nvml_sampler(rec)
    return WORKER.timer


def _start_nvml_sampler(rec) -> None:
    """Sample the GPUs' clocks, power, utilization and memory into gpu_samples (rank 0 only; every
    SERVESCOPE_NVML_INTERVAL_S seconds, default 0.1; 0 turns it off)."""
    import os

    interval = float(os.environ.get("SERVESCOPE_NVML_INTERVAL_S", "0.1"))
    if interval <= 0:
        return
    from servescope.record.nvml_sampler import NvmlSampler

    WORKER.nvml = NvmlSampler(lambda row: rec.append("gpu_samples", row), interval_s=interval)
    WORKER.nvml.start()


def region(name: str, starts_step: bool = False):
    """Return a patch wrapper factory that times the wrapped method as region `name`."""

    def make_wrapper(original):
        @functools.wraps(original)
        def timed(self, *args, **kwargs):
            rec = active_recorder()
            if rec is None:
                return original(self, *args, **kwargs)
            try:
                timer = _timer(rec)
                if starts_step:
                    WORKER.step_id = step_id_of(args[0] if args else kwargs.get("scheduler_output"))
                    timer.harvest()
                    if not WORKER.facts_written:
                        _write_facts(rec, self)
                token = timer.start(WORKER.step_id, name)
            except Exception as exc:
                rec.error(f"region {name}", exc)
                return original(self, *args, **kwargs)
            try:
                return original(self, *args, **kwargs)
            finally:
                try:
                    timer.end(token)
                except Exception as exc:
                    rec.error(f"region {name}", exc)

        return timed

    return make_wrapper


def _write_facts(rec, runner) -> None:
    from servescope.patches.vllm.engine_facts import write_worker_facts

    WORKER.facts_written = True
    write_worker_facts(rec.run_dir, runner, WORKER.rank)


def _forward_pre_hook(module, args, kwargs=None):
    rec = active_recorder()
    if rec is not None and WORKER.in_execute_model:
        try:
            WORKER.forward_token = _timer(rec).start(WORKER.step_id, "forward")
        except Exception as exc:
            rec.error("forward hook", exc)


def _forward_hook(module, args, *rest):
    token = getattr(WORKER, "forward_token", None)
    if token is not None:
        WORKER.forward_token = None
        try:
            WORKER.timer.end(token)
        except Exception:
            pass


def wrap_mrv2_execute_model(original):
    """Model Runner V2: time execute_model; eager and piecewise forwards are timed by module hooks
    on runner.model (installed once), full CUDA graphs by the run_fullgraph region."""
    timed = region("execute_model", starts_step=True)(original)

    @functools.wraps(original)
    def execute_model(self, *args, **kwargs):
        if active_recorder() is None:
            return original(self, *args, **kwargs)
        model = getattr(self, "model", None)
        if model is not None and not getattr(model, "_servescope_hooks", False):
            try:
                model.register_forward_pre_hook(_forward_pre_hook)
                model.register_forward_hook(_forward_hook)
                model._servescope_hooks = True
            except Exception:
                pass
        WORKER.in_execute_model = True
        try:
            return timed(self, *args, **kwargs)
        finally:
            WORKER.in_execute_model = False

    return execute_model


GPU_STAMPS_ENV = "SERVESCOPE_GPU_STAMPS"  # 1: globaltimer stamps, also inside captured CUDA graphs


def wrap_mrv2_load_model(original):
    """With SERVESCOPE_GPU_STAMPS=1 on CUDA, build the GPU timer right after the model loads, before
    vLLM captures its CUDA graphs, and hook the model's forward with globaltimer stamps: captured
    into every graph, they give the forward's GPU start and end on the host clock even inside FULL
    graphs (rows of region ``forward_gpu``), and every timed region gets GPU start / end too."""

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        rec = active_recorder()
        if rec is not None and os.environ.get(GPU_STAMPS_ENV) == "1":
            try:
                _install_forward_stamps(rec, self.model)
            except Exception as exc:
                rec.error("GPUModelRunner.load_model", exc)
        return out

    return load_model


def _install_forward_stamps(rec, model) -> None:
    import torch

    from servescope.record.region_timer import RegionTimer

    if not torch.cuda.is_available() or WORKER.timer is not None:
        return
    timer = RegionTimer(lambda row: rec.append("worker_regions", row), rank=WORKER.rank, mode="cuda",
                        use_globaltimer=True, forward_stamps=True)
    WORKER.timer = timer
    if WORKER.rank == 0:
        _start_nvml_sampler(rec)
    model.register_forward_pre_hook(lambda module, args: timer.forward_begin())
    model.register_forward_hook(lambda module, args, output: timer.forward_end())


MRV1 = "vllm.v1.worker.gpu_model_runner"
MRV2 = "vllm.v1.worker.gpu.model_runner"
RUNNER_PATCHES = (
    Patch(MRV1, "GPUModelRunner.execute_model", region("execute_model", starts_step=True)),
    Patch(MRV1, "GPUModelRunner._model_forward", region("forward")),
    Patch(MRV1, "GPUModelRunner.sample_tokens", region("sample_tokens")),
    Patch(MRV1, "GPUModelRunner._sample", region("sample")),
    Patch(MRV1, "GPUModelRunner.propose_draft_token_ids", region("draft")),
    Patch(MRV1, "GPUModelRunner._bookkeeping_sync", region("bookkeep")),
    Patch(MRV2, "GPUModelRunner.execute_model", wrap_mrv2_execute_model, optional=True),
    Patch(MRV2, "GPUModelRunner.load_model", wrap_mrv2_load_model, optional=True),
    Patch("vllm.v1.worker.gpu.cudagraph_utils", "ModelCudaGraphManager.run_fullgraph", region("forward"),
          optional=True),
    Patch(MRV2, "GPUModelRunner.sample_tokens", region("sample_tokens"), optional=True),
    Patch(MRV2, "GPUModelRunner.sample", region("sample"), optional=True),
)


def in_worker_process() -> bool:
    """Return True in a vLLM worker process (multiprocess executor), setting this worker's rank."""
    import multiprocessing

    name = multiprocessing.current_process().name
    if not name.startswith("VllmWorker"):
        return False
    try:
        WORKER.rank = int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        pass
    return True


def patch_runners(patch_set: PatchSet) -> None:
    """Apply the model-runner patches in this (worker) process."""
    for p in RUNNER_PATCHES:
        patch_set.apply(p)


def wrap_init_worker(original):
    @functools.wraps(original)
    def init_worker(self, all_kwargs, *args, **kwargs):
        rec = active_recorder()
        if rec is not None:
            try:
                from servescope.patches.vllm.instrumentor import current_patch_set

                kw = all_kwargs[getattr(self, "rpc_rank", 0)] if all_kwargs else {}
                WORKER.rank = int(kw.get("rank", 0) or 0)
                patch_set = current_patch_set()
                if patch_set is not None:
                    patch_runners(patch_set)
            except Exception as exc:
                rec.error("WorkerWrapperBase.init_worker", exc)
        return original(self, all_kwargs, *args, **kwargs)

    return init_worker


PATCHES = (Patch("vllm.v1.worker.worker_base", "WorkerWrapperBase.init_worker", wrap_init_worker),)
