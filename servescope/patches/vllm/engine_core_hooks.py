"""Hooks inside vLLM's EngineCore process: scheduler, executor launch, wait, output update.

Each step (one scheduled batch) gets a step_id when ``Scheduler.schedule`` returns; the id rides
on the SchedulerOutput object, so launch, wait, worker regions and the output update join by step
id even when async scheduling runs two steps at once.

Hot path per step: a handful of clock reads, and whole-batch records: one record of every
request's emitted tokens (``append_emissions``), one of the requests scheduled for the first time
(``append_events``), one steps row. Per request that is three C-level maps over the step's outputs
(request ids, token counts, finish reasons: ``map`` over ``attrgetter``s), and the request ids are written only
when the batch's requests changed since the last step (``Recorder.append_emissions``) — no Python loop that builds
a row per request.

Held updates (opt-in, ``SERVESCOPE_HELD_UPDATES=1`` in the engine process, read when the hooks are installed):
``update_from_output``'s hook only reads its two clocks and holds the step (step id, the outputs dict, the step's
speculative counts, the times); the held steps are written, oldest first and by the same ``_on_update``, just
before vLLM's wait for the next step's output (``_timed_wait``: the GPU is computing then), when the engine goes
idle, before an abort's FINISHED rows, when recording stops (pause, reset, recorder closed), and at once beyond
``MAX_HELD_STEPS``. The spool header's ``steps_held`` counts the steps held, so a kill's loss is reported
(manifest ``held_steps_lost``). Holding the outputs dict is safe: after ``Scheduler.update_from_output`` returns,
vLLM (``v1/engine/core.py``: ``EngineCore.step`` / ``step_with_batch_queue``) only sets ``weight_version``
(``_attach_weight_version``) and ``scheduler_stats`` (``_attach_iteration_details``, which also adds an empty
``EngineCoreOutputs`` to an empty dict when iteration details are logged: no request, only its timestamp could
become the step's ``engine_timestamp_ns``), and ``EngineCoreProc.process_output_sockets`` sets ``engine_index``
while encoding; ``new_token_ids`` (a fresh list per request and step, trimmed before the output is built,
``Scheduler.update_from_output`` / ``_update_request_with_output``), ``finish_reason``, ``request_id`` and
``timestamp`` are not touched again.
"""

from __future__ import annotations

import contextlib
import os
from operator import attrgetter
from typing import Any

from servescope.patches.observe import observe_after, observe_before
from servescope.patches.patch import Patch, arg
from servescope.patches.switch import BEFORE_STOP, PARTS, active_recorder
from servescope.run.clock import now_ns
from servescope.run.names import RequestEvent, Table
from servescope.run.rows import RequestEventRow, StepRow

STEP_ATTR = "_servescope_step_id"
_request_id = attrgetter("request_id")  # per-request fields read by C-level maps, not Python loops
_new_token_ids = attrgetter("new_token_ids")
_finish_reason = attrgetter("finish_reason")
MAX_PENDING_STEPS = 64
HELD_UPDATES_ENV = "SERVESCOPE_HELD_UPDATES"
MAX_HELD_STEPS = 4  # beyond this many held steps the oldest is written at once


class EngineCoreState:
    """Per-process bookkeeping between the hooks of one step."""

    def __init__(self) -> None:
        self.hold_updates = False  # SERVESCOPE_HELD_UPDATES, read by hold_updates_if_asked when hooks are installed
        self.held: list[tuple] = []  # (recorder, step id, outputs, spec counts, t0, t1) of steps not written yet
        self.reset()

    def reset(self) -> None:
        """Write the held steps, then forget every step (a new recording starts from step 0)."""
        if self.held:
            write_held_steps()
        self.next_step_id = 0
        self.scheduling_step_id: int | None = None
        self.preempted_while_scheduling = 0
        self.pending: dict[int, dict[str, Any]] = {}
        self.last_launched_step_id: int | None = None
        self.spec_by_request: dict[str, tuple[int, int]] = {}  # a fresh dict per step: a held step keeps its own
        self.engine_index = 0
        self.dropped_pending = 0
        self.facts_written = False


STATE = EngineCoreState()


def step_id_of(scheduler_output: Any) -> int | None:
    """Return the step id servescope attached to a SchedulerOutput (None if absent)."""
    return getattr(scheduler_output, STEP_ATTR, None)


# ---- Scheduler.schedule -------------------------------------------------------------------
def wrap_schedule(wrapped, scheduler, args, kwargs):
    rec = active_recorder()
    if rec is None or not PARTS.steps:
        return wrapped(*args, **kwargs)
    STATE.scheduling_step_id = STATE.next_step_id
    STATE.preempted_while_scheduling = 0
    t0 = now_ns()
    out = wrapped(*args, **kwargs)
    t1 = now_ns()
    try:
        _on_schedule(rec, scheduler, out, t0, t1)
    except Exception as exc:
        rec.error("Scheduler.schedule", exc)
    return out


def _on_schedule(rec, scheduler, out, t0: int, t1: int) -> None:
    if not STATE.facts_written:
        _write_facts_once(rec, scheduler)
    step_id = STATE.next_step_id
    STATE.next_step_id += 1
    STATE.scheduling_step_id = None
    setattr(out, STEP_ATTR, step_id)
    if not PARTS.scheduler:
        return
    num_scheduled = out.num_scheduled_tokens
    new_ids = [new.req_id for new in out.scheduled_new_reqs]  # first scheduling, or resume (Model Runner V2)
    prefill_reqs = len(new_ids)
    prefill_tokens = sum(num_scheduled.get(rid, 0) for rid in new_ids)
    cached = out.scheduled_cached_reqs
    resumed = cached.resumed_req_ids  # resume after preemption (Model Runner V1)
    if resumed:
        new_ids += list(resumed)
    rec.append_events(RequestEvent.SCHEDULED, t0, step_id, new_ids)
    if 0 in cached.num_output_tokens or resumed:  # prompt chunks of known requests
        for rid, n_out in zip(cached.req_ids, cached.num_output_tokens):
            if n_out == 0 or rid in resumed:
                prefill_reqs += 1
                prefill_tokens += num_scheduled.get(rid, 0)
    total = out.total_num_scheduled_tokens
    spec = out.scheduled_spec_decode_tokens
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
        "spec": sum(map(len, spec.values())) if spec else 0,
        "running": len(scheduler.running),
        "waiting": len(scheduler.waiting),
        "kv": kv_usage,
        "preempted": STATE.preempted_while_scheduling,
    }


# ---- Scheduler.add_request / _preempt_request / finish_requests / make_spec_decoding_stats
def _record_queued(rec, scheduler, result, args, kwargs) -> None:
    request = arg(args, kwargs, 0, "request")
    if scheduler.requests.get(request.request_id) is not request:  # a streaming update of a known request
        return
    rec.append(Table.REQUEST_EVENTS, RequestEventRow(
        request_id=request.request_id, event=RequestEvent.QUEUED, time_ns=now_ns(),
        prompt_tokens=request.num_prompt_tokens, max_tokens=getattr(request.sampling_params, "max_tokens", None)))


def _record_preempted(rec, scheduler, args, kwargs) -> None:
    request = arg(args, kwargs, 0, "request")
    STATE.preempted_while_scheduling += 1
    rec.append(Table.REQUEST_EVENTS, RequestEventRow(
        request_id=request.request_id, event=RequestEvent.PREEMPTED, time_ns=now_ns(),
        step_id=STATE.scheduling_step_id, output_tokens=request.num_output_tokens))


def _record_aborted(rec, scheduler, finished, args, kwargs) -> None:
    """Aborts (client gone, LLM.abort) end a request outside update_from_output."""
    t = now_ns()
    if STATE.held:  # the held steps' rows (tokens, FINISHED) come before this request's end
        write_held_steps()
    status = arg(args, kwargs, 1, "finished_status")
    reason = getattr(status, "name", str(status)).lower()
    for request in finished or ():
        rec.append(Table.REQUEST_EVENTS, RequestEventRow(
            request_id=request.request_id, event=RequestEvent.FINISHED, time_ns=t,
            output_tokens=request.num_output_tokens, detail=reason))


def _record_spec_decoding(rec, scheduler, args, kwargs) -> None:
    """Per request of a step: drafted (minus invalid) and accepted tokens, as the scheduler counts them."""
    drafted = arg(args, kwargs, 1, "num_draft_tokens")
    accepted = arg(args, kwargs, 2, "num_accepted_tokens")
    invalid = arg(args, kwargs, 3, "num_invalid_spec_tokens")
    request_id = arg(args, kwargs, 4, "request_id")
    if invalid:
        drafted -= invalid.get(request_id, 0)
    STATE.spec_by_request[request_id] = (drafted, accepted)


wrap_add_request = observe_after("Scheduler.add_request", _record_queued)
wrap_preempt_request = observe_before("Scheduler._preempt_request", _record_preempted)
wrap_finish_requests = observe_after("Scheduler.finish_requests", _record_aborted)
wrap_make_spec_decoding_stats = observe_before("Scheduler.make_spec_decoding_stats", _record_spec_decoding)


# ---- Scheduler.update_from_output -----------------------------------------------------------
def wrap_update_from_output(wrapped, scheduler, args, kwargs):
    rec = active_recorder()
    if rec is None or not (PARTS.scheduler or PARTS.tokens):
        return wrapped(*args, **kwargs)
    STATE.spec_by_request = {}
    t0 = now_ns()
    outputs = wrapped(*args, **kwargs)
    t1 = now_ns()
    try:
        step_id = step_id_of(arg(args, kwargs, 0, "scheduler_output"))
        if STATE.hold_updates:
            _hold_step(rec, step_id, outputs, t0, t1)
        else:
            _on_update(rec, step_id, outputs, STATE.spec_by_request, t0, t1)
        if rec.when_idle and not scheduler.has_requests():
            rec.idle()
    except Exception as exc:
        rec.error("Scheduler.update_from_output", exc)
    return outputs


def _on_update(rec, step_id: int | None, outputs, spec: dict, t0: int, t1: int) -> None:
    emitted = 0
    finished = 0
    engine_ts = None
    for batch in outputs.values():
        if engine_ts is None and getattr(batch, "timestamp", None) is not None:
            engine_ts = int(batch.timestamp * 1e9)
        outs = batch.outputs
        if not outs:
            continue
        counts = list(map(len, map(_new_token_ids, outs)))
        emitted += sum(counts)
        if PARTS.tokens:
            request_ids = list(map(_request_id, outs))
            drafted = accepted = None
            if spec:
                pairs = [spec.get(rid, (None, None)) for rid in request_ids]
                drafted = [d for d, _ in pairs]
                accepted = [a for _, a in pairs]
            rec.append_emissions(step_id, t1, request_ids, counts, drafted, accepted)
        if PARTS.scheduler:
            reasons = list(map(_finish_reason, outs))
            if reasons.count(None) != len(reasons):
                for o, reason in zip(outs, reasons):
                    if reason is not None:
                        rec.append(Table.REQUEST_EVENTS, RequestEventRow(
                            request_id=o.request_id, event=RequestEvent.FINISHED, time_ns=t1, step_id=step_id,
                            detail=str(reason)))
                        finished += 1
    if step_id is None or not PARTS.scheduler:
        return
    p = STATE.pending.pop(step_id, None)
    if p is None:
        return
    execute = p.get("execute", (None, None))
    wait = p.get("wait", (None, None))
    rec.append(Table.STEPS, StepRow(
        step_id=step_id, engine_index=STATE.engine_index,
        schedule_start_ns=p["schedule"][0], schedule_end_ns=p["schedule"][1],
        execute_start_ns=execute[0], execute_end_ns=execute[1], wait_start_ns=wait[0], wait_end_ns=wait[1],
        update_start_ns=t0, update_end_ns=t1, engine_timestamp_ns=engine_ts,
        total_scheduled_tokens=p["total"], num_prefill_reqs=p["prefill_reqs"],
        num_prefill_tokens=p["prefill_tokens"], num_decode_reqs=p["decode_reqs"],
        num_decode_tokens=p["decode_tokens"], num_spec_tokens=p["spec"], num_running_reqs=p["running"],
        num_waiting_reqs=p["waiting"], kv_cache_usage=p["kv"], num_preempted_reqs=p["preempted"],
        num_emitted_tokens=emitted, num_finished_reqs=finished))


# ---- held updates (SERVESCOPE_HELD_UPDATES=1) -----------------------------------------------
def hold_updates_if_asked(rec) -> None:
    """Read SERVESCOPE_HELD_UPDATES once, as the hooks are installed; when it is 1, the held steps are also written
    as the engine goes idle, as the recorder closes and as recording stops in this process."""
    STATE.hold_updates = os.environ.get(HELD_UPDATES_ENV) == "1"
    if not STATE.hold_updates:
        return
    for hooks in (rec.when_idle, rec.before_close, BEFORE_STOP):
        if write_held_steps not in hooks:
            hooks.insert(0, write_held_steps)


def _hold_step(rec, step_id: int | None, outputs, t0: int, t1: int) -> None:
    held = STATE.held
    held.append((rec, step_id, outputs, STATE.spec_by_request, t0, t1))
    if len(held) > MAX_HELD_STEPS:
        _write_held_step(held.pop(0))
    rec.set_steps_held(len(held))


def write_held_steps() -> None:
    """Write every held step, oldest first, as _on_update writes a step at once (never raises)."""
    held = STATE.held
    while held:
        _write_held_step(held.pop(0))


def _write_held_step(step: tuple) -> None:
    rec = step[0]
    try:
        _on_update(*step)
    except Exception as exc:
        rec.error("Scheduler.update_from_output (held step)", exc)
    rec.set_steps_held(len(STATE.held))


# ---- executor launch and EngineCore wait ------------------------------------------------------
def wrap_execute_model(wrapped, executor, args, kwargs):
    if active_recorder() is None or not PARTS.scheduler:
        return wrapped(*args, **kwargs)
    t0 = now_ns()
    out = wrapped(*args, **kwargs)
    t1 = now_ns()
    step_id = step_id_of(arg(args, kwargs, 0, "scheduler_output"))
    p = STATE.pending.get(step_id)
    if p is not None:
        p["execute"] = (t0, t1)
        STATE.last_launched_step_id = step_id
    return out


def wrap_sample_tokens(wrapped, executor, args, kwargs):
    """A non-blocking sample_tokens right after execute_model (async scheduling) is part of the step's
    launch; a blocking one (synchronous step) runs inside the wait and is left there."""
    out = wrapped(*args, **kwargs)
    if arg(args, kwargs, 1, "non_block", False) and active_recorder() is not None and PARTS.scheduler:
        p = STATE.pending.get(STATE.last_launched_step_id)
        if p is not None and "execute" in p:
            p["execute"] = (p["execute"][0], now_ns())
    return out


def wrap_capture_iteration_details(wrapped, engine_core, args, kwargs):
    """vLLM wraps exactly its wait for a step's model output in this context manager."""
    if active_recorder() is None or not PARTS.scheduler:
        return wrapped(*args, **kwargs)
    return _timed_wait(wrapped(*args, **kwargs), arg(args, kwargs, 0, "scheduler_output"))


@contextlib.contextmanager
def _timed_wait(inner, scheduler_output):
    if STATE.held:  # written while the GPU computes the step waited for
        write_held_steps()
    with inner as details:
        t0 = now_ns()
        yield details
        t1 = now_ns()
    p = STATE.pending.get(step_id_of(scheduler_output))
    if p is not None:
        p["wait"] = (t0, t1)


def _write_facts_once(rec, scheduler) -> None:
    """Record the engine's configuration the first time this EngineCore schedules."""
    STATE.facts_written = True
    from servescope.patches.vllm.engine_facts import write_engine_facts

    config = scheduler.vllm_config
    STATE.engine_index = config.parallel_config.data_parallel_rank or 0
    held = {"held_updates": True} if STATE.hold_updates else {}  # the manifest says which way an A/B arm ran
    write_engine_facts(rec.run_dir, config, extra={"scheduler_class": type(scheduler).__name__, **held})


SCHED = "vllm.v1.core.sched.scheduler"
EXECUTORS = ("vllm.v1.executor.abstract.Executor", "vllm.v1.executor.uniproc_executor.UniProcExecutor",
             "vllm.v1.executor.multiproc_executor.MultiprocExecutor")
PATCHES = (
    Patch(SCHED, "Scheduler.schedule", wrap_schedule),
    Patch(SCHED, "Scheduler.update_from_output", wrap_update_from_output),
    Patch(SCHED, "Scheduler.add_request", wrap_add_request, part="scheduler"),
    Patch(SCHED, "Scheduler._preempt_request", wrap_preempt_request, part="scheduler"),
    Patch(SCHED, "Scheduler.finish_requests", wrap_finish_requests, part="scheduler"),
    Patch(SCHED, "Scheduler.make_spec_decoding_stats", wrap_make_spec_decoding_stats, part="tokens"),
    Patch("vllm.v1.engine.core", "EngineCore.capture_iteration_details", wrap_capture_iteration_details,
          part="scheduler"),
    *(Patch(cls.rsplit(".", 1)[0], f"{cls.rsplit('.', 1)[1]}.execute_model", wrap_execute_model, part="scheduler")
      for cls in EXECUTORS),
    *(Patch(cls.rsplit(".", 1)[0], f"{cls.rsplit('.', 1)[1]}.sample_tokens", wrap_sample_tokens, part="scheduler")
      for cls in EXECUTORS),
)
