"""The in-process driver: vLLM's AsyncLLM built in this process, no HTTP in between.

``drive_inprocess(engine_args, plan, run_dir)`` calls ``servescope.instrument(run_dir)``
first, so this process's front end (arrival, output processing) and the EngineCore and
workers vLLM starts all record into run_dir; then it builds an ``AsyncLLM`` from the same
engine arguments ``vllm serve`` takes (``--model DIR --load-format dummy ...``) and sends the
plan's requests as token-id prompts with ``ignore_eos`` and ``max_tokens`` through
``run_load``, the same arrival loop the HTTP driver uses. Each ``generate()`` output
(``RequestOutputKind.DELTA``: the tokens of one engine step) is a chunk in the client
tables, so client minus engine time here is the front end alone, without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servescope.bench.load.client import DEFAULT_REQUEST_TIMEOUT_S, CompletionRequest, RequestResult, record_result
from servescope.bench.load.driver_http import LoadPlan, run_load
from servescope.bench.load.progress import LiveStats
from servescope.run.phases import Phase, record_phase
from servescope.record.recorder import Recorder, open_recorder


def async_engine_args(engine_args: list[str]):
    """Return vLLM AsyncEngineArgs parsed from `vllm serve`-style arguments (e.g. ['--model', DIR, ...])."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="servescope bench --in-process"))
    return AsyncEngineArgs.from_cli_args(parser.parse_args(list(engine_args)))


def build_async_llm(engine_args: list[str]):
    """Return a started vLLM AsyncLLM for the engine arguments (call after servescope.instrument)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(async_engine_args(engine_args))


def make_send(engine, recorder: Recorder | None, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, *,
              temperature: float | None = None):
    """Return a send(request) coroutine function that generates through engine (an AsyncLLM) and records the client rows."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    sampling = {} if temperature is None else {"temperature": temperature}

    async def send(request: CompletionRequest) -> RequestResult:
        result = RequestResult(request.client_request_id, len(request.prompt_token_ids), request.max_tokens,
                               request.scheduled_send_ns, engine_request_id=request.client_request_id)
        params = SamplingParams(max_tokens=request.max_tokens, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA, **sampling)
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        result.send_ns = time.monotonic_ns()
        try:
            async with asyncio.timeout(request_timeout_s):
                async for output in engine.generate(prompt, params, request.client_request_id):
                    now = time.monotonic_ns()
                    tokens = sum(len(o.token_ids) for o in output.outputs)
                    if tokens:
                        result.chunk_times_ns.append(now)
                        result.chunk_tokens.append(tokens)
            if not result.chunk_times_ns:
                result.status, result.error = "error", "generate() ended without an output token"
        except asyncio.CancelledError:  # generate() aborts the request in the engine
            result.status, result.error = "cancelled", "cancelled before the request finished"
            result.end_ns = time.monotonic_ns()
            record_result(recorder, result)
            raise
        except TimeoutError:
            result.status, result.error = "timeout", f"no complete answer within {request_timeout_s:g} s"
        except Exception as exc:  # an engine error for this request
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"[:500]
        result.end_ns = time.monotonic_ns()
        record_result(recorder, result)
        return result

    return send


async def drive_inprocess(engine_args: list[str], plan: LoadPlan, run_dir: str | os.PathLike, *,
                          request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, stats: LiveStats | None = None,
                          ) -> list[RequestResult]:
    """Build an instrumented AsyncLLM in this process, run the plan on it, shut it down; return the results."""
    async with instrumented_engine(engine_args, run_dir) as (engine, recorder):
        return await run_load(plan, make_send(engine, recorder, request_timeout_s), stats)


@dataclass
class PhasePlan:
    """One phase of a multi-phase run: a name, its load plan (whose id_prefix marks its requests), what it is."""

    name: str
    plan: LoadPlan
    workload: dict = field(default_factory=dict)
    measured: bool = True
    temperature: float | None = None  # None: vLLM's default sampling


async def drive_phases(engine_args: list[str], phases: list[PhasePlan], run_dir: str | os.PathLike, *,
                       request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, pause_s: float = 0.5,
                       on_phase: Callable[[Phase, list[RequestResult]], None] | None = None) -> list[Phase]:
    """Run the phases one after another on one instrumented AsyncLLM; record each in RUN/phases.json; return them.

    Each phase starts when the previous one has drained, after pause_s of idle engine (so no
    step straddles two phases). Per phase, vLLM's own counters (its Prometheus registry in this
    process) are recorded as the difference over the phase, under ``extra["vllm_counters"]``.
    """
    done = []
    async with instrumented_engine(engine_args, run_dir) as (engine, recorder):
        for phase_plan in phases:
            await asyncio.sleep(pause_s)
            before = vllm_counters()
            start_ns = time.monotonic_ns()
            send = make_send(engine, recorder, request_timeout_s, temperature=phase_plan.temperature)
            results = await run_load(phase_plan.plan, send)
            phase = Phase(phase_plan.name, phase_plan.plan.id_prefix, start_ns, time.monotonic_ns(),
                          workload=phase_plan.workload, measured=phase_plan.measured,
                          extra={"vllm_counters": counter_difference(before, vllm_counters()),
                                 "results": dict(Counter(r.status for r in results))})
            record_phase(run_dir, phase)
            done.append(phase)
            if on_phase is not None:
                on_phase(phase, results)
    return done


def vllm_counters() -> dict[str, float | list[float]]:
    """Return vLLM's counters from this process's Prometheus registry (name -> value, summed over labels)."""
    from vllm.v1.metrics.reader import Counter as VllmCounter, Vector, get_metrics_snapshot

    out: dict = {}
    for metric in get_metrics_snapshot():
        if isinstance(metric, VllmCounter):
            out[metric.name] = out.get(metric.name, 0) + float(metric.value)
        elif isinstance(metric, Vector):
            values = [float(v) for v in metric.values]
            previous = out.get(metric.name, [0.0] * len(values))
            out[metric.name] = [a + b for a, b in zip(previous, values)]
    return out


def counter_difference(before: dict, after: dict) -> dict:
    """Return after - before for every counter (per element for vectors)."""
    diff = {}
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, list):
            diff[name] = [v - o for v, o in zip(value, old or [0.0] * len(value))]
        else:
            diff[name] = value - (old or 0.0)
    return diff


@contextlib.asynccontextmanager
async def instrumented_engine(engine_args: list[str], run_dir: str | os.PathLike):
    """Instrument this process for run_dir, build an AsyncLLM, yield (engine, recorder); shut it down after."""
    import servescope

    run_dir = Path(run_dir).absolute()  # the path vLLM's plugin opens too: one recorder, not two
    servescope.instrument(str(run_dir), engines=["vllm"])
    engine = build_async_llm(engine_args)
    recorder = open_recorder(run_dir)  # the recorder the front end records into, after vLLM loaded its plugins
    try:
        yield engine, recorder  # every row is in a spool the moment it is appended: nothing to wait for
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # AsyncLLM.__del__ shuts down again: let it run now, not at interpreter exit
