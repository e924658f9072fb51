"""Hooks inside vLLM's EngineCore process: scheduler, executor launch, wait, output update.

Each step (one scheduled batch) gets a step_id when ``Scheduler.schedule`` returns; the id
rides on the SchedulerOutput object, so launch, wait, worker regions and the output update
join by step id even when async scheduling runs two steps at once. Per step the hot path is
a handful of clock reads, one pass over the batch's request ids, and appends of tuples.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from servescope.patches.patch import Patch
from servescope.patches.vllm.active import active_recorder
from servescope.patches.vllm.observe import observe_after, observe_before
from servescope.run.clock import now_ns

STEP_ATTR = "_servescope_step_id"
MAX_PENDING_STEPS = 64


class EngineCoreState:
    """Per-process bookkeeping between the hooks of one step."""

    def __init__(self) -> None:
        self.next_step_id = 0
        self.scheduling_step_id: int | None = None
        self.preempted_while_scheduling = 0
        self.pending: dict[int, dict[str, Any]] = {}
        self.last_launched_step_id: int | None = None
        self.spec_by_request: dict[str, tuple[int, int]] = {}
        self.engine_index = 0
        self.dropped_pending = 0
        self.facts_written = False


STATE = EngineCoreState()


def step_id_of(scheduler_output: Any) -> int | None:
    """Return the step id servescope attached to a SchedulerOutput (None if absent)."""
    return getattr(scheduler_output, STEP_ATTR, None)


# ---- Scheduler.schedule -------------------------------------------------------------------
def wrap_schedule(original):
    @functools.wraps(original)
    def schedule(self, *args, **kwargs):
        rec = active_recorder()
        if rec is None:
            return original(self, *args, **kwargs)
        STATE.scheduling_step_id = STATE.next_step_id
        STATE.preempted_while_scheduling = 0
        t0 = now_ns()
        out = original(self, *args, **kwargs)
        t1 = now_ns()
        try:
            _on_schedule(rec, self, out, t0, t1)
        except Exception as exc:
            rec.error("Scheduler.schedule", exc)
        return out

    return schedule


def _on_schedule(rec, scheduler, out, t0: int, t1: int) -> None:
    if not STATE.facts_written:
        _write_facts_once(rec, scheduler)
    step_id = STATE.next_step_id
    STATE.next_step_id += 1
    STATE.scheduling_step_id = None
    setattr(out, STEP_ATTR, step_id)
    num_scheduled = out.num_scheduled_tokens
    prefill_reqs = 0
    prefill_tokens = 0
    for new in out.scheduled_new_reqs:  # first scheduling, or resume (Model Runner V2)
        rid = new.req_id
        prefill_reqs += 1
        prefill_tokens += num_scheduled.get(rid, 0)
        rec.append("request_events", (rid, "scheduled", t0, step_id, None, None, None, None))
    cached = out.scheduled_cached_reqs
    resumed = cached.resumed_req_ids
    for rid in resumed:  # resume after preemption (Model Runner V1)
        rec.append("request_events", (rid, "scheduled", t0, step_id, None, None, None, None))
    if 0 in cached.num_output_tokens or resumed:  # prompt chunks of known requests
        for rid, n_out in zip(cached.req_ids, cached.num_output_tokens):
            if n_out == 0 or rid in resumed:
                prefill_reqs += 1
                prefill_tokens += num_scheduled.get(rid, 0)
    total = out.total_num_scheduled_tokens
    spec = out.scheduled_spec_decode_tokens
    num_spec = sum(map(len, spec.values())) if spec else 0
    try:
        kv_usage = scheduler.kv_cache_manager.usage
    except Exception:
        kv_usage = None
    if len(STATE.pending) >= MAX_PENDING_STEPS:  # steps whose output never came back
        STATE.pending.pop(next(iter(STATE.pending)))
        STATE.dropped_pending += 1
    STATE.pending[step_id] = {
        "schedule": (t0, t1),
        "total": total,
        "prefill_reqs": prefill_reqs,
        "prefill_tokens": prefill_tokens,
        "decode_reqs": len(num_scheduled) - prefill_reqs,
        "decode_tokens": total - prefill_tokens,
        "spec": num_spec,
        "running": len(scheduler.running),
        "waiting": len(scheduler.waiting),
        "kv": kv_usage,
        "preempted": STATE.preempted_while_scheduling,
    }


# ---- Scheduler.add_request / _preempt_request / finish_requests / make_spec_decoding_stats
def _record_queued(rec, scheduler, result, request, *args, **kwargs) -> None:
    if scheduler.requests.get(request.request_id) is not request:  # a streaming update of a known request
        return
    params = request.sampling_params
    rec.append("request_events", (request.request_id, "queued", now_ns(), None, request.num_prompt_tokens,
                                  getattr(params, "max_tokens", None), None, None))


def _record_preempted(rec, scheduler, request, *args, **kwargs) -> None:
    STATE.preempted_while_scheduling += 1
    rec.append("request_events", (request.request_id, "preempted", now_ns(), STATE.scheduling_step_id, None, None,
                                  request.num_output_tokens, None))


def _record_aborted(rec, scheduler, finished, request_ids, finished_status, *args, **kwargs) -> None:
    """Aborts (client gone, LLM.abort) end a request outside update_from_output."""
    t = now_ns()
    reason = getattr(finished_status, "name", str(finished_status)).lower()
    for request in finished or ():
        rec.append("request_events", (request.request_id, "finished", t, None, None, None,
                                      request.num_output_tokens, reason))


wrap_add_request = observe_after("Scheduler.add_request", _record_queued)
wrap_preempt_request = observe_before("Scheduler._preempt_request", _record_preempted)
wrap_finish_requests = observe_after("Scheduler.finish_requests", _record_aborted)


def wrap_make_spec_decoding_stats(original):
    @functools.wraps(original)
    def make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                 num_invalid_spec_tokens, request_id, *args, **kwargs):
        if active_recorder() is not None:
            drafted = num_draft_tokens
            if num_invalid_spec_tokens:
                drafted -= num_invalid_spec_tokens.get(request_id, 0)
            STATE.spec_by_request[request_id] = (drafted, num_accepted_tokens)
        return original(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                        num_invalid_spec_tokens, request_id, *args, **kwargs)

    return make_spec_decoding_stats


# ---- Scheduler.update_from_output -----------------------------------------------------------
def wrap_update_from_output(original):
    @functools.wraps(original)
    def update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs):
        rec = active_recorder()
        if rec is None:
            return original(self, scheduler_output, model_runner_output, *args, **kwargs)
        STATE.spec_by_request.clear()
        t0 = now_ns()
        outputs = original(self, scheduler_output, model_runner_output, *args, **kwargs)
        t1 = now_ns()
        try:
            _on_update(rec, scheduler_output, outputs, t0, t1)
            if not self.has_requests():  # idle: write now, an engine may be killed at shutdown
                rec.flush_soon()
        except Exception as exc:
            rec.error("Scheduler.update_from_output", exc)
        return outputs

    return update_from_output


def _on_update(rec, scheduler_output, outputs, t0: int, t1: int) -> None:
    step_id = step_id_of(scheduler_output)
    spec = STATE.spec_by_request
    emitted = 0
    finished = 0
    engine_ts = None
    append = rec.append
    for batch in outputs.values():
        if engine_ts is None and getattr(batch, "timestamp", None) is not None:
            engine_ts = int(batch.timestamp * 1e9)
        for o in batch.outputs:
            rid = o.request_id
            n = len(o.new_token_ids)
            if n:
                emitted += n
                drafted, accepted = spec.get(rid, (None, None)) if spec else (None, None)
                append("token_emissions", (rid, step_id, t1, n, drafted, accepted))
            if o.finish_reason is not None:
                finished += 1
                append("request_events", (rid, "finished", t1, step_id, None, None, None, str(o.finish_reason)))
    if step_id is None:
        return
    p = STATE.pending.pop(step_id, None)
    if p is None:
        return
    launch = p.get("launch", (None, None))
    wait = p.get("wait", (None, None))
    append(
        "steps",
        (step_id, STATE.engine_index, p["schedule"][0], p["schedule"][1], launch[0], launch[1], wait[0],
         wait[1], t0, t1, engine_ts, p["total"], p["prefill_reqs"], p["prefill_tokens"], p["decode_reqs"],
         p["decode_tokens"], p["spec"], p["running"], p["waiting"], p["kv"], p["preempted"], emitted, finished),
    )


# ---- executor launch and EngineCore wait ------------------------------------------------------
def wrap_execute_model(original):
    @functools.wraps(original)
    def execute_model(self, scheduler_output, *args, **kwargs):
        if active_recorder() is None:
            return original(self, scheduler_output, *args, **kwargs)
        t0 = now_ns()
        out = original(self, scheduler_output, *args, **kwargs)
        step_id = step_id_of(scheduler_output)
        p = STATE.pending.get(step_id)
        if p is not None:
            p["launch"] = (t0, now_ns())
            STATE.last_launched_step_id = step_id
        return out

    return execute_model


def wrap_sample_tokens(original):
    """A non-blocking sample_tokens right after execute_model (async scheduling) is part of the
    step's launch; a blocking one (synchronous step) runs inside the wait and is left there."""

    @functools.wraps(original)
    def sample_tokens(self, grammar_output, non_block=False, *args, **kwargs):
        out = original(self, grammar_output, non_block, *args, **kwargs)
        if non_block and active_recorder() is not None:
            p = STATE.pending.get(STATE.last_launched_step_id)
            if p is not None and "launch" in p:
                p["launch"] = (p["launch"][0], now_ns())
        return out

    return sample_tokens


def wrap_capture_iteration_details(original):
    """vLLM wraps exactly its wait for a step's model output in this context manager."""

    @functools.wraps(original)
    @contextlib.contextmanager
    def capture_iteration_details(self, scheduler_output, *args, **kwargs):
        if active_recorder() is None:
            with original(self, scheduler_output, *args, **kwargs) as details:
                yield details
            return
        with original(self, scheduler_output, *args, **kwargs) as details:
            t0 = now_ns()
            yield details
            t1 = now_ns()
        p = STATE.pending.get(step_id_of(scheduler_output))
        if p is not None:
            p["wait"] = (t0, t1)

    return capture_iteration_details


def _write_facts_once(rec, scheduler) -> None:
    """Record the engine's configuration the first time this EngineCore schedules."""
    STATE.facts_written = True
    from servescope.patches.vllm.engine_facts import write_engine_facts

    config = scheduler.vllm_config
    STATE.engine_index = config.parallel_config.data_parallel_rank or 0
    write_engine_facts(rec.run_dir, config, extra={"scheduler_class": type(scheduler).__name__})


SCHED = "vllm.v1.core.sched.scheduler"
PATCHES = (
    Patch(SCHED, "Scheduler.schedule", wrap_schedule),
    Patch(SCHED, "Scheduler.update_from_output", wrap_update_from_output),
    Patch(SCHED, "Scheduler.add_request", wrap_add_request),
    Patch(SCHED, "Scheduler._preempt_request", wrap_preempt_request),
    Patch(SCHED, "Scheduler.finish_requests", wrap_finish_requests),
    Patch(SCHED, "Scheduler.make_spec_decoding_stats", wrap_make_spec_decoding_stats),
    Patch("vllm.v1.engine.core", "EngineCore.capture_iteration_details", wrap_capture_iteration_details),
    Patch("vllm.v1.executor.abstract", "Executor.execute_model", wrap_execute_model),
    Patch("vllm.v1.executor.abstract", "Executor.sample_tokens", wrap_sample_tokens),
    Patch("vllm.v1.executor.uniproc_executor", "UniProcExecutor.execute_model", wrap_execute_model),
    Patch("vllm.v1.executor.uniproc_executor", "UniProcExecutor.sample_tokens", wrap_sample_tokens),
    Patch("vllm.v1.executor.multiproc_executor", "MultiprocExecutor.execute_model", wrap_execute_model),
    Patch("vllm.v1.executor.multiproc_executor", "MultiprocExecutor.sample_tokens", wrap_sample_tokens),
)
