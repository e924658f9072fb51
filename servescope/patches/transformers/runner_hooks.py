"""Timed regions of a step inside transformers' model runner, with the timers vLLM's regions use.

* ``execute_model``: ``ModelRunner.compute_batch``, the forward, logits processing and sampling
  of the step (a CUDA graph replay when graphs are on). Its CUDA events are recorded on the
  runner's compute stream, where that work runs.
* ``forward``: the model's forward (module hooks), and ``sample``: ``ModelRunner._sample``;
  both only where they run eagerly (not inside a replayed graph; under torch.compile the hooks
  stand aside).
* ``prepare_inputs``: ``prepare_batch_tensors``, building the batch's input tensors on the host,
  inside the schedule phase; host time only (it launches no device work of its own).

Regions of the warm-up (before any step) are not recorded. On CUDA, rank 0 also samples the GPU
(clocks, power, memory) into gpu_samples.
"""

from __future__ import annotations

import contextlib

from servescope.patches.transformers.state import STATE, active_recorder
from servescope.run.clock import now_ns
from servescope.run.names import Region, Table
from servescope.run.rows import WorkerRegionRow

RANK = 0
ENGINE_INDEX = 0
TP_RANK = 0  # only the tensor-parallel driver rank records (one process, one rank)
PP_RANK = 0


def _timer(rec):
    """Return this process's region timer, built on first use (CUDA events on a GPU, host clocks elsewhere)."""
    if STATE.timer is None:
        from servescope.record.timers import make_region_timer

        config = rec.config
        STATE.timer = make_region_timer(lambda row: rec.append(Table.WORKER_REGIONS, row), RANK,
                                        gpu_events=config.records("gpu_events"),
                                        read_thread_usage=config.records("thread"),
                                        append_pending=rec.append_region, resolve=rec.resolve_region)
        STATE.timer.set_placement(ENGINE_INDEX, TP_RANK, PP_RANK)
        if STATE.timer.mode == "cuda":
            _start_gpu_sampler(rec)
    return STATE.timer


def _start_gpu_sampler(rec) -> None:
    """Sample the GPUs every nvml_interval_s seconds (the run configuration's; the part nvml) into gpu_samples."""
    if rec.config.records("nvml") and rec.config.nvml_interval_s > 0:
        from servescope.record.nvml_sampler import NvmlSampler

        STATE.nvml = NvmlSampler(lambda row: rec.append(Table.GPU_SAMPLES, row), interval_s=rec.config.nvml_interval_s)
        STATE.nvml.start()


def _on_stream(stream, timer):
    """Return a context that makes stream current while the timer records its events (a no-op without one)."""
    if stream is None or getattr(timer, "mode", "host") != "cuda":
        return contextlib.nullcontext()
    import torch

    return torch.cuda.stream(stream)


def _compiling() -> bool:
    try:
        import torch

        return torch.compiler.is_compiling()
    except Exception:
        return False


def _forward_pre_hook(module, args):
    if _compiling():
        return
    rec = active_recorder()
    step_id = STATE.executing_step_id
    if rec is not None and step_id is not None:
        try:
            STATE.forward_token = _timer(rec).start(step_id, Region.FORWARD)
        except Exception as exc:
            rec.error("forward hook", exc)


def _forward_hook(module, args, output):
    if _compiling():
        return
    token = STATE.forward_token
    if token is not None:
        STATE.forward_token = None
        try:
            STATE.timer.end(token)
        except Exception as exc:
            rec = active_recorder()
            if rec is not None:
                rec.error("forward hook", exc)


def hook_forward(model) -> None:
    """Install the forward region's hooks on model once (uninstrument removes them)."""
    if model is None or id(model) in STATE.forward_hooks:
        return
    STATE.forward_hooks[id(model)] = [model.register_forward_pre_hook(_forward_pre_hook),
                                      model.register_forward_hook(_forward_hook)]


def remove_forward_hooks() -> None:
    """Remove every forward hook servescope installed."""
    for handles in STATE.forward_hooks.values():
        for handle in handles:
            handle.remove()
    STATE.forward_hooks.clear()


@contextlib.contextmanager
def _timed_region(rec, step_id: int, region: str, stream=None):
    """Time the body as a region of step_id (events on stream when given); a timer fault is counted, never raised."""
    timer = token = None
    try:
        timer = _timer(rec)
        with _on_stream(stream, timer):
            token = timer.start(step_id, region)
    except Exception as exc:
        rec.error(f"region {region}", exc)
    try:
        yield
    finally:
        if token is not None:
            try:
                with _on_stream(stream, timer):
                    timer.end(token)
            except Exception as exc:
                rec.error(f"region {region}", exc)


# ---- ModelRunner.compute_batch: region execute_model, and where the step's launch ends ----------------
def wrap_compute_batch(wrapped, self, args, kwargs):
    rec = active_recorder()
    step_id = STATE.executing_step_id
    if rec is None or step_id is None:  # the warm-up, or tracing off
        return wrapped(*args, **kwargs)
    stream = None
    try:
        _timer(rec).harvest()
        hook_forward(args[0] if args else kwargs.get("model"))
        stream = getattr(getattr(self, "inputs_and_outputs", None), "compute_stream", None)
    except Exception as exc:
        rec.error("ModelRunner.compute_batch", exc)
    with _timed_region(rec, step_id, Region.EXECUTE_MODEL, stream):
        STATE.compute_start_ns = now_ns()
        try:
            return wrapped(*args, **kwargs)
        finally:
            STATE.compute_end_ns = now_ns()


# ---- ModelRunner._sample: region sample ---------------------------------------------------------------
def wrap_sample(wrapped, self, args, kwargs):
    rec = active_recorder()
    step_id = STATE.executing_step_id
    if rec is None or step_id is None or _compiling():
        return wrapped(*args, **kwargs)
    with _timed_region(rec, step_id, Region.SAMPLE):
        return wrapped(*args, **kwargs)


# ---- IOs.prepare_batch_tensors: region prepare_inputs (host only) -------------------------------------
def wrap_prepare_batch_tensors(wrapped, self, args, kwargs):
    if not STATE.scheduling or STATE.preparing:  # the warm-up, or nested (async IOs -> host IOs)
        return wrapped(*args, **kwargs)
    STATE.preparing = True
    t0 = now_ns()
    try:
        out = wrapped(*args, **kwargs)
    finally:
        STATE.preparing = False
    t1 = now_ns()
    rec = active_recorder()
    if rec is not None:
        try:
            rec.append(Table.WORKER_REGIONS, WorkerRegionRow(
                step_id=STATE.next_step_id, rank=RANK, region=Region.PREPARE_INPUTS, host_start_ns=t0,
                host_end_ns=t1, engine_index=ENGINE_INDEX, tp_rank=TP_RANK, pp_rank=PP_RANK))
        except Exception as exc:
            rec.error("prepare_batch_tensors", exc)
    return out


def harvest_regions() -> None:
    """Resolve the GPU times of the regions whose events have completed (never waits, never raises).

    Called after each step's update, when the host has waited for the step's sampled tokens: that step's regions
    are done, so the last step before the engine goes idle (the end of a bench call, of a served load) gets its
    GPU time then, not at the next step's launch, which may never come (on the H200 one step per served run had
    none: benchmarks/results/h200-engine-vs-engine-2.json)."""
    timer = STATE.timer
    if timer is not None:
        try:
            timer.harvest()
        except Exception:
            pass


def close_timers() -> None:
    """Resolve the GPU regions still in flight and stop the GPU sampler (exit and uninstrument)."""
    if STATE.timer is not None:
        try:
            STATE.timer.close()
        except Exception:
            pass
        STATE.timer = None
    if STATE.nvml is not None:
        try:
            STATE.nvml.stop()
        except Exception:
            pass
        STATE.nvml = None
