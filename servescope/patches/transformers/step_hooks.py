"""The steps of transformers' continuous batching loop, mapped onto the steps table's phases.

One step is one pass of ``ContinuousBatchingManager._generation_loop_body`` that found work:

* schedule: ``ContinuousBatchProcessor.prepare_next_batch`` entered .. returned. It takes new
  requests and cancellations off the manager's queues, asks the scheduler for a batch
  (offloading requests when the cache is full: preemption) and builds the batch's input
  tensors on the host (that part is also the ``prepare_inputs`` region).
* execute: the launch. ``_generation_step`` entered (the inputs handed to the device) ..
  ``ModelRunner.compute_batch`` returned (the forward, logits processing and sampling enqueued
  on the device's compute stream). With async batching, .. ``_generation_step`` returned (the
  device-to-host copy of the sampled tokens enqueued too). On the CPU, where there is no device
  stream and compute_batch computes synchronously, execute ends where compute_batch begins.
* wait: the host blocked until the step's sampled tokens are on the host, until
  ``prepare_batch_update`` returned (``.tolist()`` of the output ids). It begins where
  compute_batch returned (the stream synchronize follows) or, on the CPU, where compute_batch
  began: the host computing the model is the CPU build's "device" at work, as the vLLM CPU
  build's EngineCore waits for its worker process. With async batching it begins where
  ``prepare_batch_update`` begins (after the next step's launch).
* update: ``prepare_batch_update`` returned .. ``update_batch`` returned: tokens appended to the
  requests, finished requests released, outputs delivered. Tokens count as emitted then.

With async batching, step k+1 is scheduled and launched before step k's update: rows join by
step_id. Per step the hot path is a handful of clock reads and one pass over the batch.
"""

from __future__ import annotations

from typing import Any

from servescope.patches.transformers.state import MAX_PENDING_STEPS, STATE, PendingStep, UpdateInProgress, active_recorder
from servescope.patches.transformers.request_hooks import tokens_generated
from servescope.patches.transformers.runner_hooks import harvest_regions
from servescope.run.clock import now_ns
from servescope.run.names import FinishReason, RequestEvent, Table
from servescope.run.rows import RequestEventRow, StepRow, TokenEmissionRow

ENGINE_INDEX = 0


def kv_cache_usage(cache: Any) -> float | None:
    """Return the fraction of the paged KV cache in use, 0..1 (None if this version exposes neither measure)."""
    free = getattr(cache, "compute_free_capacity", None)  # 5.18+: free bytes / cache bytes
    if free is not None:
        return 1.0 - float(free())
    free_blocks = getattr(cache, "get_num_free_blocks", None)  # 5.17: free blocks / blocks
    if free_blocks is not None and getattr(cache, "num_blocks", 0):
        return 1.0 - free_blocks() / cache.num_blocks
    return None


# ---- scheduler.schedule_batch: the batch of the step being scheduled ------------------------------
def wrap_schedule_batch(wrapped, self, args, kwargs):
    if not STATE.scheduling:
        return wrapped(*args, **kwargs)
    if STATE.schedule_batch_start_ns is None:
        STATE.schedule_batch_start_ns = now_ns()
    out = wrapped(*args, **kwargs)
    try:
        if out[0] is not None:  # None: cache full, transformers offloads and asks again
            STATE.last_batch = out[0]
    except Exception:
        pass
    return out


# ---- ContinuousBatchProcessor.prepare_next_batch: schedule -----------------------------------------
def wrap_prepare_next_batch(wrapped, self, args, kwargs):
    rec = active_recorder()
    if rec is None or getattr(self, "input_queue", True) is None:  # TP: only the driver rank records
        return wrapped(*args, **kwargs)
    STATE.scheduling = True
    STATE.schedule_batch_start_ns = None
    STATE.last_batch = None
    STATE.preempted_while_scheduling = 0
    t0 = now_ns()
    try:
        has_batch = wrapped(*args, **kwargs)
    finally:
        STATE.scheduling = False
    if has_batch:
        t1 = now_ns()
        try:
            _on_schedule(rec, self, t0, t1)
        except Exception as exc:
            rec.error("ContinuousBatchProcessor.prepare_next_batch", exc)
    return has_batch


def _on_schedule(rec, processor, t0: int, t1: int) -> None:
    step_id = STATE.next_step_id
    STATE.next_step_id += 1
    scheduled_at = STATE.schedule_batch_start_ns or t0
    total = prefill_reqs = prefill_tokens = 0
    batch = STATE.last_batch or ()
    STATE.last_batch = None
    append = rec.append
    for future in batch:
        state = future.state
        query = future.query_length
        total += query
        prompt_left = len(state.initial_tokens) - (state.position_offset - query)  # offsets moved on by query
        if prompt_left > 0:
            prefill_reqs += 1
            prefill_tokens += min(prompt_left, query)
        request_id = state.request_id
        if request_id not in STATE.scheduled:
            STATE.scheduled.add(request_id)
            append(Table.REQUEST_EVENTS, RequestEventRow(request_id=request_id, event=RequestEvent.SCHEDULED,
                                                         time_ns=scheduled_at, step_id=step_id))
    scheduler = processor.scheduler
    if len(STATE.pending) >= MAX_PENDING_STEPS:
        STATE.pending.pop(next(iter(STATE.pending)))
        STATE.dropped_pending += 1
    STATE.pending[step_id] = PendingStep(
        schedule=(t0, t1), total_tokens=total, prefill_reqs=prefill_reqs, prefill_tokens=prefill_tokens,
        decode_reqs=len(batch) - prefill_reqs, decode_tokens=total - prefill_tokens,
        running=len(scheduler.active_requests), waiting=len(scheduler.waiting_requests),
        kv_usage=kv_cache_usage(processor.cache), preempted=STATE.preempted_while_scheduling)
    STATE.scheduled_step_id = step_id
    if not STATE.facts_written:
        STATE.facts_written = True
        from servescope.patches.transformers.engine_facts import write_engine_facts

        write_engine_facts(rec.run_dir, processor)


# ---- ContinuousBatchProcessor._generation_step: execute --------------------------------------------
def wrap_generation_step(wrapped, self, args, kwargs):
    step_id = STATE.scheduled_step_id
    if step_id is None or active_recorder() is None:
        return wrapped(*args, **kwargs)
    STATE.scheduled_step_id = None
    STATE.executing_step_id = step_id
    STATE.compute_start_ns = STATE.compute_end_ns = None
    t0 = now_ns()
    try:
        out = wrapped(*args, **kwargs)
    finally:
        STATE.executing_step_id = None
    t1 = now_ns()
    pending = STATE.pending.get(step_id)
    if pending is not None:
        _set_launch_and_wait(pending, self, t0, t1)
        STATE.launched.append(step_id)
    return out


def _set_launch_and_wait(pending: PendingStep, processor, t0: int, t1: int) -> None:
    """Set the step's execute interval and, for synchronous batching, where its wait began."""
    start, end = STATE.compute_start_ns, STATE.compute_end_ns
    if getattr(processor, "use_async_batching", False) or start is None or end is None:
        pending.execute = (t0, t1)  # the wait comes with the update, after the next step's launch
    elif getattr(getattr(processor, "inputs_and_outputs", None), "compute_stream", None) is None:
        pending.execute = (t0, start)  # no device stream (CPU): compute_batch computes, the host waits for it
        pending.wait_start = start
    else:
        pending.execute = (t0, end)  # compute_batch launched; the stream synchronize follows
        pending.wait_start = end


# ---- IOs.prepare_batch_update: the wait for a step's sampled tokens --------------------------------
def wrap_prepare_batch_update(wrapped, self, args, kwargs):
    update = STATE.update
    if update is None:
        return wrapped(*args, **kwargs)
    t0 = now_ns()
    update.depth += 1
    try:
        out = wrapped(*args, **kwargs)
    finally:
        update.depth -= 1
    if update.depth == 0:
        update.wait = (t0, now_ns())
        try:
            finished = STATE.finished_status
            update.before = [(f.state, len(f.state.generated_tokens), f.state.status >= finished) for f in out[0]]
        except Exception as exc:
            update.before = []
            rec = active_recorder()
            if rec is not None:
                rec.error("prepare_batch_update", exc)
    return out


# ---- ContinuousBatchProcessor.update_batch: update, emissions, finished, the step's row -------------
def wrap_update_batch(wrapped, self, args, kwargs):
    rec = active_recorder()
    if rec is None:
        return wrapped(*args, **kwargs)
    step_id = STATE.launched.popleft() if STATE.launched else None
    update = STATE.update = UpdateInProgress()
    t0 = now_ns()
    try:
        out = wrapped(*args, **kwargs)
    finally:
        STATE.update = None
    t1 = now_ns()
    try:
        _on_update(rec, step_id, update, t0, t1)
    except Exception as exc:
        rec.error("ContinuousBatchProcessor.update_batch", exc)
    harvest_regions()  # the step's tokens are in: its regions' events have completed
    return out


def _on_update(rec, step_id: int | None, update: UpdateInProgress, t0: int, t1: int) -> None:
    append = rec.append
    emitted = finished = 0
    done = STATE.finished_status
    for state, before, was_done in update.before:
        generated = state.generated_tokens
        n = len(generated) - before
        request_id = state.request_id
        if n > 0:
            emitted += n
            append(Table.TOKEN_EMISSIONS, TokenEmissionRow(request_id=request_id, step_id=step_id, time_ns=t1,
                                                           num_tokens=n))
        if not was_done and state.status >= done:
            finished += 1
            stop = bool(generated) and generated[-1] in getattr(state, "_eos_token_ids", ())
            STATE.forget(request_id)
            append(Table.REQUEST_EVENTS, RequestEventRow(
                request_id=request_id, event=RequestEvent.FINISHED, time_ns=t1, step_id=step_id,
                output_tokens=tokens_generated(state), detail=FinishReason.STOP if stop else FinishReason.LENGTH))
    if step_id is None:
        return
    p = STATE.pending.pop(step_id, None)
    if p is None:
        return
    execute = p.execute or (None, None)
    wait_end = update.wait[1] if update.wait else None
    wait_start = p.wait_start if p.wait_start is not None else (update.wait[0] if update.wait else None)
    append(Table.STEPS, StepRow(
        step_id=step_id, engine_index=ENGINE_INDEX, schedule_start_ns=p.schedule[0], schedule_end_ns=p.schedule[1],
        execute_start_ns=execute[0], execute_end_ns=execute[1], wait_start_ns=wait_start, wait_end_ns=wait_end,
        update_start_ns=wait_end if wait_end is not None else t0, update_end_ns=t1, engine_timestamp_ns=None,
        total_scheduled_tokens=p.total_tokens, num_prefill_reqs=p.prefill_reqs, num_prefill_tokens=p.prefill_tokens,
        num_decode_reqs=p.decode_reqs, num_decode_tokens=p.decode_tokens, num_spec_tokens=0,
        num_running_reqs=p.running, num_waiting_reqs=p.waiting, kv_cache_usage=p.kv_usage,
        num_preempted_reqs=p.preempted, num_emitted_tokens=emitted, num_finished_reqs=finished))
