"""A request's lifecycle in transformers' continuous batching: arrival, queued, preempted, cancelled, failed.

``scheduled``, the token emissions and ``finished`` belong to a step and are recorded by step_hooks.
Every hook reads what it needs from transformers' own objects (the RequestState, the scheduler's
queues), never from positional arguments it would have to know the order of.
"""

from __future__ import annotations

from typing import Any

from servescope.patches.observe import observe_after
from servescope.patches.transformers.state import STATE, active_recorder
from servescope.run.clock import now_ns
from servescope.run.names import FinishReason, RequestEvent, Table
from servescope.run.rows import RequestEventRow


def tokens_generated(state: Any) -> int:
    """Return the output tokens a request has so far (tokens), counting those a soft reset moved into its prompt."""
    true_prompt = getattr(state, "_true_initial_tokens", 0) or 0
    carried = len(state.initial_tokens) - true_prompt if true_prompt else 0
    return len(state.generated_tokens) + carried


def _argument(args: tuple, kwargs: dict, name: str, position: int) -> Any:
    """Return a call's argument by keyword, else by position (None if absent)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


# ---- ContinuousBatchingManager.add_request: arrival ---------------------------------------------
def wrap_add_request(wrapped, self, args, kwargs):
    """Arrival: the manager accepted the request (time taken on entry, id from its return value)."""
    rec = active_recorder()
    if rec is None:
        return wrapped(*args, **kwargs)
    t = now_ns()
    request_id = wrapped(*args, **kwargs)
    if request_id is not None:
        try:
            prompt = _argument(args, kwargs, "input_ids", 0)
            max_tokens = kwargs.get("max_new_tokens")
            if max_tokens is None:
                max_tokens = getattr(getattr(self, "generation_config", None), "max_new_tokens", None)
            rec.append(Table.REQUEST_EVENTS, RequestEventRow(
                request_id=request_id, event=RequestEvent.ARRIVAL, time_ns=t,
                prompt_tokens=len(prompt) if prompt is not None else None, max_tokens=max_tokens,
                detail=request_id))
        except Exception as exc:
            rec.error("ContinuousBatchingManager.add_request", exc)
    return request_id


# ---- Scheduler.add_waiting_request: queued (a requeue after preemption is not a new 'queued') ----
def _record_queued(rec, scheduler, result, args, kwargs) -> None:
    state = _argument(args, kwargs, "state", 0)
    request_id = state.request_id
    if request_id not in STATE.live:
        STATE.live.add(request_id)
        rec.append(Table.REQUEST_EVENTS, RequestEventRow(
            request_id=request_id, event=RequestEvent.QUEUED, time_ns=now_ns(),
            prompt_tokens=len(state.initial_tokens), max_tokens=state.max_new_tokens))


wrap_add_waiting_request = observe_after("Scheduler.add_waiting_request", _record_queued, active_recorder)


# ---- OffloadingManager.offload_requests: preemption (CPU offload or soft reset) -------------------
def wrap_offload_requests(wrapped, self, args, kwargs):
    """A request that leaves the active set for the waiting queue was preempted (offloaded or soft reset)."""
    rec = active_recorder()
    if rec is None:
        return wrapped(*args, **kwargs)
    try:
        active = list(self.scheduler.active_requests.items())
    except Exception as exc:
        rec.error("OffloadingManager.offload_requests", exc)
        return wrapped(*args, **kwargs)
    out = wrapped(*args, **kwargs)
    try:
        scheduler = self.scheduler
        t = now_ns()
        step_id = STATE.next_step_id if STATE.scheduling else None
        for request_id, state in active:
            if request_id not in scheduler.active_requests and request_id in scheduler.waiting_requests:
                STATE.preempted_while_scheduling += 1
                STATE.scheduled.discard(request_id)
                rec.append(Table.REQUEST_EVENTS, RequestEventRow(
                    request_id=request_id, event=RequestEvent.PREEMPTED, time_ns=t, step_id=step_id,
                    output_tokens=tokens_generated(state)))
    except Exception as exc:
        rec.error("OffloadingManager.offload_requests", exc)
    return out


# ---- Scheduler.clear_cancelled_requests and OutputRouter.fail_and_deliver: ends outside a step ----
def _record_end(rec, state: Any, reason: str) -> None:
    request_id = state.request_id
    if not isinstance(request_id, str):
        return
    STATE.forget(request_id)
    rec.append(Table.REQUEST_EVENTS, RequestEventRow(
        request_id=request_id, event=RequestEvent.FINISHED, time_ns=now_ns(),
        output_tokens=tokens_generated(state), detail=reason))


def _record_cancelled(rec, scheduler, cancelled, args, kwargs) -> None:
    for state in cancelled or ():
        _record_end(rec, state, FinishReason.ABORT)


def _record_failed(rec, router, result, args, kwargs) -> None:
    _record_end(rec, _argument(args, kwargs, "state", 0), FinishReason.ERROR)


wrap_clear_cancelled_requests = observe_after("Scheduler.clear_cancelled_requests", _record_cancelled,
                                              active_recorder)
wrap_fail_and_deliver = observe_after("OutputRouter.fail_and_deliver", _record_failed, active_recorder)
