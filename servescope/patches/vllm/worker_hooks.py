"""Hooks in the model runner (inside a worker): timed regions of every step.

Runner modules are heavy (and may touch CUDA), so they are never imported at plugin time:
``WorkerWrapperBase.init_worker`` runs in the worker process before the model runner is built,
and patches the runner classes there. Regions (names.Region): execute_model, forward,
sample_tokens, sample, draft, bookkeep (Model Runner V1 and the CPU runner); execute_model,
forward, sample_tokens, sample (Model Runner V2). On CUDA each region also gets its GPU time from
CUDA events (recording part ``gpu_events``); on the CPU build the host clock stands alone.

A region's host row is recorded the moment it ends; its GPU time follows when the events have
completed (``RegionTimer`` in pending mode), so a killed worker loses at most the GPU times of the
regions still on the GPU, and the manifest counts them.
"""

from __future__ import annotations

from servescope.patches.patch import Patch, arg
from servescope.patches.switch import PARTS, active_recorder
from servescope.patches.vllm.engine_core_hooks import step_id_of
from servescope.run.names import Region, Table


class WorkerState:
    """Per-process state of the worker hooks; reset() forgets everything (a new recording)."""

    def __init__(self) -> None:
        self.rank = 0
        self.patch_runners = None  # set by the instrumentor: applies RUNNER_PATCHES in this process
        self.reset()

    def reset(self) -> None:
        self.step_id: int | None = None
        self.timer = None
        self.facts_written = False
        self.in_execute_model = False  # Model Runner V2 forward hooks record only inside a real step
        self.forward_token = None
        self.nvml = None
        self.placement: tuple = (None, None, None)  # (engine_index, tp_rank, pp_rank), known at the first step
        self.depth = 0  # timed regions of a step now open on this thread (collectives record only inside one)
        self.collectives: str | None = None  # collective_hooks: "timed", or why the collectives are not timed
        self.hook_handles: list = []  # torch module hook handles, removed by close()
        self.profile = None  # record.profile_window.ProfileWindow when the configuration asks for one

    def close(self) -> None:
        """Resolve the GPU regions still in flight, stop the sampler and the profiler, remove module hooks; reset."""
        if self.profile is not None:
            try:
                self.profile.close()
            except Exception:
                pass
        if self.timer is not None:
            try:
                self.timer.close()
            except Exception:
                pass
        if self.nvml is not None:
            try:
                self.nvml.stop()
            except Exception:
                pass
        for handle in self.hook_handles:
            try:
                handle.remove()
            except Exception:
                pass
        self.reset()


WORKER = WorkerState()


def _timer(rec):
    if WORKER.timer is None:
        from servescope.record.timers import make_region_timer

        # built at the first step (Model Runner V1, or V2 without stamps): stamps, if asked, give every region its
        # GPU start / end; only V2's load_model hook builds the timer early enough to stamp inside CUDA graphs
        WORKER.timer = make_region_timer(
            lambda row: rec.append(Table.WORKER_REGIONS, row), WORKER.rank, gpu_events=PARTS.gpu_events,
            read_thread_usage=PARTS.thread, gpu_stamps=PARTS.gpu_stamps, append_pending=rec.append_region,
            resolve=rec.resolve_region)
        WORKER.timer.set_placement(*WORKER.placement)
        _harvest_when_idle_and_at_close(rec)
        if WORKER.rank == 0 and WORKER.timer.mode == "cuda":
            _start_nvml_sampler(rec)
    return WORKER.timer


def _profile_window(rec):
    """Return the profile window the run asks for (built at the first step, whoever built the timer), or None."""
    if WORKER.profile is None and rec.config.profile_steps is not None:
        from servescope.record.profile_window import profile_window_for

        WORKER.profile = profile_window_for(rec.config, rank=WORKER.rank)
    return WORKER.profile


def harvest_regions() -> None:
    """Resolve the GPU times of the regions whose events have completed (never waits, never raises)."""
    timer = WORKER.timer
    if timer is not None:
        try:
            timer.harvest()
        except Exception:
            pass


def _harvest_when_idle_and_at_close(rec) -> None:
    """A step's regions are resolved by the next step's harvest: the last steps before the engine goes idle (or
    before this process ends) have none. Harvest them when the engine has no work left (its outputs are in, so
    their GPU work is done: EngineCore and worker share a process in vLLM's default single-GPU layout) and when
    the recorder closes."""
    for hooks in (rec.when_idle, rec.before_close):
        if harvest_regions not in hooks:
            hooks.append(harvest_regions)


def _start_nvml_sampler(rec) -> None:
    """Sample the GPUs' clocks, power, utilization and memory into gpu_samples (rank 0 only)."""
    if not PARTS.nvml or WORKER.nvml is not None:
        return
    from servescope.record.nvml_sampler import NvmlSampler

    WORKER.nvml = NvmlSampler(lambda row: rec.append(Table.GPU_SAMPLES, row), interval_s=rec.config.nvml_interval_s)
    WORKER.nvml.start()


def region(name: str, starts_step: bool = False):
    """Return a wrapper that times the wrapped method as region `name`."""

    def timed(wrapped, runner, args, kwargs):
        rec = active_recorder()
        if rec is None or not PARTS.regions:
            return wrapped(*args, **kwargs)
        try:
            timer = _timer(rec)
            if starts_step:
                WORKER.step_id = step_id_of(arg(args, kwargs, 0, "scheduler_output"))
                profile = _profile_window(rec)
                if profile is not None:
                    profile.on_step(WORKER.step_id)
                timer.harvest()
                if not WORKER.facts_written and not kwargs.get("dummy_run"):  # a real step: the KV cache is built
                    _write_facts(rec, runner)
            token = timer.start(WORKER.step_id, name)
        except Exception as exc:
            rec.error(f"region {name}", exc)
            return wrapped(*args, **kwargs)
        WORKER.depth += 1
        try:
            return wrapped(*args, **kwargs)
        finally:
            WORKER.depth -= 1
            try:
                timer.end(token)
            except Exception as exc:
                rec.error(f"region {name}", exc)

    return timed


def _write_facts(rec, runner) -> None:
    from servescope.patches.vllm.engine_facts import write_worker_facts

    WORKER.facts_written = True
    _place(runner)
    engine_index, tp_rank, pp_rank = WORKER.placement
    facts = {"engine_index": engine_index, "tp_rank": tp_rank, "pp_rank": pp_rank}
    if WORKER.collectives is not None:
        facts["collectives"] = WORKER.collectives
    backends = attention_backends(runner)
    if backends:
        facts["attention_implementation"] = backends
    write_worker_facts(rec.run_dir, runner, WORKER.rank, facts)


def attention_backends(runner) -> str | None:
    """Return the attention backends the runner's layers use ('FLASH_ATTN', or 'A|B' for several), or None
    (read at the first step, when the KV cache and its attention groups exist; the same name the audit reads
    from transformers' attention implementation)."""
    try:
        names = {group.backend.get_name() for groups in runner.attn_groups for group in groups}
    except Exception:
        return None
    return "|".join(sorted(names)) or None


def _place(runner) -> None:
    """Read this worker's engine index and TP / PP ranks (from the runner's config and vLLM's parallel state) into
    WORKER.placement and the timer, which tags every later row with them."""
    try:
        engine_index = runner.vllm_config.parallel_config.data_parallel_rank or 0
    except Exception:
        engine_index = None
    WORKER.placement = (engine_index, *parallel_ranks())
    if WORKER.timer is not None:
        WORKER.timer.set_placement(*WORKER.placement)


def parallel_ranks() -> tuple[int | None, int | None]:
    """Return this worker's (tensor-parallel rank, pipeline-parallel stage) from vLLM's parallel state (the module
    globals _TP and _PP, GroupCoordinator.rank_in_group, in 0.26 to 0.32); None for a group not set up."""
    try:
        from vllm.distributed import parallel_state
    except Exception:
        return None, None
    return _rank_in_group(parallel_state, "_TP"), _rank_in_group(parallel_state, "_PP")


def _rank_in_group(module, group: str) -> int | None:
    try:
        return int(getattr(module, group).rank_in_group)
    except Exception:
        return None


def _forward_pre_hook(module, args, kwargs=None):
    rec = active_recorder()
    if rec is not None and PARTS.regions and WORKER.in_execute_model:
        try:
            WORKER.forward_token = _timer(rec).start(WORKER.step_id, Region.FORWARD)
        except Exception as exc:
            rec.error("forward hook", exc)


def _forward_hook(module, args, *rest):
    token = WORKER.forward_token
    if token is not None:
        WORKER.forward_token = None
        try:
            WORKER.timer.end(token)
        except Exception:
            pass


_timed_mrv2_execute_model = region(Region.EXECUTE_MODEL, starts_step=True)


def wrap_mrv2_execute_model(wrapped, runner, args, kwargs):
    """Model Runner V2: time execute_model; eager and piecewise forwards are timed by module hooks on
    runner.model (installed once, removed by uninstrument), full CUDA graphs by the run_fullgraph region."""
    if active_recorder() is None or not PARTS.regions:
        return wrapped(*args, **kwargs)
    model = getattr(runner, "model", None)
    if model is not None and not getattr(model, "_servescope_hooks", False):
        try:
            WORKER.hook_handles.append(model.register_forward_pre_hook(_forward_pre_hook))
            WORKER.hook_handles.append(model.register_forward_hook(_forward_hook))
            model._servescope_hooks = True
            WORKER.hook_handles.append(_AttributeRemover(model, "_servescope_hooks"))
        except Exception:
            pass
    WORKER.in_execute_model = True
    try:
        return _timed_mrv2_execute_model(wrapped, runner, args, kwargs)
    finally:
        WORKER.in_execute_model = False


class _AttributeRemover:
    """A hook handle that deletes a marker attribute (so a later instrument installs the hooks again)."""

    def __init__(self, obj, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def remove(self) -> None:
        try:
            delattr(self.obj, self.attr)
        except AttributeError:
            pass


def wrap_mrv2_load_model(wrapped, runner, args, kwargs):
    """With the gpu_stamps part on CUDA, build the GPU timer right after the model loads, before vLLM
    captures its CUDA graphs, and hook the model's forward with globaltimer stamps: captured into every
    graph, they give the forward's GPU start and end on the host clock even inside FULL graphs (rows of
    region forward_gpu), and every timed region gets GPU start / end too."""
    out = wrapped(*args, **kwargs)
    rec = active_recorder()
    if rec is not None and PARTS.regions and PARTS.gpu_stamps:
        try:
            _install_forward_stamps(rec, runner.model)
            _place(runner)
        except Exception as exc:
            rec.error("GPUModelRunner.load_model", exc)
    return out


def _install_forward_stamps(rec, model) -> None:
    import torch

    from servescope.record.timers import make_region_timer

    if not torch.cuda.is_available() or WORKER.timer is not None:
        return
    timer = make_region_timer(lambda row: rec.append(Table.WORKER_REGIONS, row), WORKER.rank, gpu_events=True,
                              read_thread_usage=PARTS.thread, gpu_stamps=True, append_pending=rec.append_region,
                              resolve=rec.resolve_region)
    WORKER.timer = timer
    _harvest_when_idle_and_at_close(rec)
    if WORKER.rank == 0:
        _start_nvml_sampler(rec)

    def stamp_begin(module, args):
        if active_recorder() is not None:
            timer.forward_begin()

    def stamp_end(module, args, output):
        if active_recorder() is not None:
            timer.forward_end()

    WORKER.hook_handles.append(model.register_forward_pre_hook(stamp_begin))
    WORKER.hook_handles.append(model.register_forward_hook(stamp_end))


MRV1 = "vllm.v1.worker.gpu_model_runner"
MRV2 = "vllm.v1.worker.gpu.model_runner"
RUNNER_PATCHES = (
    Patch(MRV1, "GPUModelRunner.execute_model", region(Region.EXECUTE_MODEL, starts_step=True), part="regions"),
    Patch(MRV1, "GPUModelRunner._model_forward", region(Region.FORWARD), part="regions"),
    Patch(MRV1, "GPUModelRunner.sample_tokens", region(Region.SAMPLE_TOKENS), part="regions"),
    Patch(MRV1, "GPUModelRunner._sample", region(Region.SAMPLE), part="regions"),
    Patch(MRV1, "GPUModelRunner.propose_draft_token_ids", region(Region.DRAFT), part="regions"),
    Patch(MRV1, "GPUModelRunner._bookkeeping_sync", region(Region.BOOKKEEP), part="regions"),
    Patch(MRV2, "GPUModelRunner.execute_model", wrap_mrv2_execute_model, optional=True, part="regions"),
    Patch(MRV2, "GPUModelRunner.load_model", wrap_mrv2_load_model, optional=True, part="gpu_stamps"),
    Patch("vllm.v1.worker.gpu.cudagraph_utils", "ModelCudaGraphManager.run_fullgraph", region(Region.FORWARD),
          optional=True, part="regions"),
    Patch(MRV2, "GPUModelRunner.sample_tokens", region(Region.SAMPLE_TOKENS), optional=True, part="regions"),
    Patch(MRV2, "GPUModelRunner.sample", region(Region.SAMPLE), optional=True, part="regions"),
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


def wrap_init_worker(wrapped, worker_wrapper, args, kwargs):
    """Patch the model runners in the worker process, before vLLM builds one."""
    rec = active_recorder()
    if rec is not None:
        try:
            all_kwargs = arg(args, kwargs, 0, "all_kwargs")
            kw = all_kwargs[getattr(worker_wrapper, "rpc_rank", 0)] if all_kwargs else {}
            WORKER.rank = int(kw.get("rank", 0) or 0)
            if WORKER.patch_runners is not None:
                WORKER.patch_runners()
        except Exception as exc:
            rec.error("WorkerWrapperBase.init_worker", exc)
    return wrapped(*args, **kwargs)


PATCHES = (Patch("vllm.v1.worker.worker_base", "WorkerWrapperBase.init_worker", wrap_init_worker),)


