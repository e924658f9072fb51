"""Hooks in vLLM's front end (the LLM / AsyncLLM process): arrival and output processing."""

from __future__ import annotations

from servescope.patches.observe import observe_before
from servescope.patches.patch import Patch, arg
from servescope.patches.switch import PARTS, active_recorder
from servescope.run.clock import now_ns, wall_seconds_to_monotonic_ns
from servescope.run.names import RequestEvent, Table
from servescope.run.rows import FrontendStepRow, RequestEventRow


def _record_arrival(rec, output_processor, args, kwargs) -> None:
    """OutputProcessor.add_request sees every request the front end accepted, with vLLM's arrival time."""
    if not PARTS.frontend:
        return
    request = arg(args, kwargs, 0, "request")
    arrival = getattr(request, "arrival_time", None)
    prompt = getattr(request, "prompt_token_ids", None)
    rec.append(Table.REQUEST_EVENTS, RequestEventRow(
        request_id=request.request_id, event=RequestEvent.ARRIVAL,
        time_ns=wall_seconds_to_monotonic_ns(arrival) if arrival else now_ns(),
        prompt_tokens=len(prompt) if prompt is not None else None,
        max_tokens=getattr(getattr(request, "sampling_params", None), "max_tokens", None),
        detail=getattr(request, "external_req_id", None) or request.request_id))


wrap_add_request = observe_before("OutputProcessor.add_request", _record_arrival)


def wrap_process_outputs(wrapped, output_processor, args, kwargs):
    rec = active_recorder()
    if rec is None or not PARTS.frontend:
        return wrapped(*args, **kwargs)
    t0 = now_ns()
    out = wrapped(*args, **kwargs)
    t1 = now_ns()
    try:
        engine_ts = arg(args, kwargs, 1, "engine_core_timestamp")
        rec.append(Table.FRONTEND_STEPS, FrontendStepRow(
            engine_timestamp_ns=int(engine_ts * 1e9) if engine_ts is not None else None,
            process_start_ns=t0, process_end_ns=t1, num_outputs=len(arg(args, kwargs, 0, "engine_core_outputs"))))
    except Exception as exc:
        rec.error("OutputProcessor.process_outputs", exc)
    return out


OUTPUT = "vllm.v1.engine.output_processor"
PATCHES = (
    Patch(OUTPUT, "OutputProcessor.add_request", wrap_add_request, part="frontend"),
    Patch(OUTPUT, "OutputProcessor.process_outputs", wrap_process_outputs, part="frontend"),
)
