"""Hooks in vLLM's front end (the LLM / AsyncLLM process): arrival and output processing."""

from __future__ import annotations

import functools

from servescope.patches.patch import Patch
from servescope.patches.vllm.active import active_recorder
from servescope.patches.vllm.observe import observe_before
from servescope.run.clock import now_ns, wall_seconds_to_monotonic_ns


def _record_arrival(rec, output_processor, request, *args, **kwargs) -> None:
    """OutputProcessor.add_request sees every request the front end accepted, with vLLM's arrival time."""
    arrival = getattr(request, "arrival_time", None)
    t = wall_seconds_to_monotonic_ns(arrival) if arrival else now_ns()
    prompt = getattr(request, "prompt_token_ids", None)
    params = getattr(request, "sampling_params", None)
    rec.append("request_events", (request.request_id, "arrival", t, None, len(prompt) if prompt is not None else None,
                                  getattr(params, "max_tokens", None), None,
                                  getattr(request, "external_req_id", None) or request.request_id))


wrap_add_request = observe_before("OutputProcessor.add_request", _record_arrival)


def wrap_process_outputs(original):
    @functools.wraps(original)
    def process_outputs(self, engine_core_outputs, engine_core_timestamp=None, *args, **kwargs):
        rec = active_recorder()
        if rec is None:
            return original(self, engine_core_outputs, engine_core_timestamp, *args, **kwargs)
        t0 = now_ns()
        out = original(self, engine_core_outputs, engine_core_timestamp, *args, **kwargs)
        try:
            rec.append(
                "frontend_steps",
                (int(engine_core_timestamp * 1e9) if engine_core_timestamp is not None else None, t0, now_ns(),
                 len(engine_core_outputs)),
            )
        except Exception as exc:
            rec.error("OutputProcessor.process_outputs", exc)
        return out

    return process_outputs


OUTPUT = "vllm.v1.engine.output_processor"
PATCHES = (
    Patch(OUTPUT, "OutputProcessor.add_request", wrap_add_request),
    Patch(OUTPUT, "OutputProcessor.process_outputs", wrap_process_outputs),
)
