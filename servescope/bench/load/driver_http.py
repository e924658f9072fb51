"""The arrival loop: send a workload's requests on time, open loop or closed loop, bounded in count and time.

``plan_load`` turns a workload into a ``LoadPlan``: prompt token ids (``SyntheticPrompts``),
max_tokens, and either open-loop send offsets (Poisson / gamma at ``rate``, or the trace's
own arrival times) or a closed-loop ``concurrency``. ``run_load`` executes a plan with any
``send(request) -> RequestResult`` coroutine, one task per request: open loop sends each
request at its offset whatever the server does; closed loop keeps ``concurrency`` requests
in flight and sends the next when one ends. It stops sending after the plan's last request
or after ``duration_s``, waits for the requests in flight (each bounded by its own timeout),
and on cancellation (Ctrl-C) cancels them, so each still records its row as ``cancelled``.
While it runs, the objects that existed before are frozen out of the garbage collector
(``frozen_gc_heap``), so a full collection cannot pause the client mid-measurement.
``drive_http`` runs a plan against an OpenAI-compatible endpoint with ``StreamingClient``,
and stops early, with ``ServerGoneError``, when the server is gone (``server_watch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import numpy as np

from servescope.bench.workloads.arrivals import gamma_arrivals
from servescope.bench.load.client import (
    API_VLLM,
    DEFAULT_REQUEST_TIMEOUT_S,
    CompletionRequest,
    RequestResult,
    StreamingClient,
    base_url_of,
    served_model,
)
from servescope.bench.load.progress import LiveStats
from servescope.bench.load.server_watch import SERVER_GONE_AFTER_S, ServerGoneError, ServerWatch
from servescope.bench.workloads.prompts import SyntheticPrompts
from servescope.bench.workloads.workload import Workload, WorkloadError
from servescope.record.recorder import open_recorder

Send = Callable[[CompletionRequest], Awaitable[RequestResult]]


@dataclass(frozen=True)
class LoadPlan:
    """Requests to send (token ids, max_tokens) and when: open-loop offsets (s) or a closed-loop concurrency."""

    prompts: list[list[int]]
    max_tokens: list[int]
    arrival_s: np.ndarray | None = None  # open loop: send offsets from the start, seconds
    concurrency: int | None = None  # closed loop: requests kept in flight
    duration_s: float | None = None  # no request is sent after this many seconds
    id_prefix: str = "ssc"

    def __post_init__(self) -> None:
        if (self.arrival_s is None) == (self.concurrency is None):
            raise ValueError("a load plan is open loop (arrival_s) or closed loop (concurrency), not both")
        if len(self.prompts) != len(self.max_tokens):
            raise ValueError("prompts and max_tokens differ in length")
        if self.arrival_s is not None and len(self.arrival_s) != len(self.prompts):
            raise ValueError("one arrival offset per request is needed")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")

    def __len__(self) -> int:
        return len(self.prompts)

    def describe(self) -> dict:
        """Return the plan's load as JSON-ready facts (mode, rate or concurrency, count, duration in s)."""
        facts = {"requests": len(self), "duration_s": self.duration_s}
        if self.concurrency is not None:
            return {"mode": "closed_loop", "concurrency": self.concurrency, **facts}
        span = float(self.arrival_s[-1]) if len(self) else 0.0
        return {"mode": "open_loop", "offered_rate_per_s": (len(self) - 1) / span if span > 0 else None, **facts}


def plan_load(workload: Workload, prompts: SyntheticPrompts, *, rate_per_s: float | None = None, cv: float = 1.0,
              concurrency: int | None = None, duration_s: float | None = None, time_scale: float = 1.0,
              seed: int = 0, id_prefix: str = "ssc") -> LoadPlan:
    """Return the load plan of a workload: Poisson/gamma at rate_per_s (req/s), closed loop, or the trace's own times."""
    if not workload.requests:
        raise WorkloadError(f"{workload.name}: no requests to send")
    if rate_per_s is not None and concurrency is not None:
        raise WorkloadError("give --rate or --concurrency, not both")
    arrival_s = None
    if rate_per_s is not None:
        if not rate_per_s > 0:
            raise WorkloadError(f"--rate must be > 0 requests/s, got {rate_per_s}")
        arrival_s = gamma_arrivals(rate_per_s, cv, count=len(workload), seed=seed)
        arrival_s = arrival_s - arrival_s[0]  # the first request leaves at once
    elif concurrency is None:
        if not workload.has_arrival_times:
            raise WorkloadError(f"{workload.name} has no arrival times: give --rate or --concurrency")
        arrival_s = (workload.arrival_s - workload.arrival_s[0]) * time_scale
    max_tokens = [max(1, int(n)) for n in workload.output_tokens.tolist()]
    token_ids = [ids if ids else [int(prompts.allowed_ids[0])] for ids in prompts.for_workload(workload)]
    return LoadPlan(token_ids, max_tokens, arrival_s, concurrency, duration_s, id_prefix)


def _request(plan: LoadPlan, index: int, scheduled_ns: int) -> CompletionRequest:
    return CompletionRequest(f"{plan.id_prefix}-{index}", plan.prompts[index], plan.max_tokens[index], scheduled_ns)


@contextlib.contextmanager
def frozen_gc_heap() -> Iterator[None]:
    """Collect, then freeze the objects that exist now, for the block: no long GC pause while timing.

    A collection of the oldest generation walks every object of the process: 320 ms on
    the 2-core test machine after importing transformers and vLLM's benchmark module
    (630,000 objects), a pause the client would measure as latency. vLLM's benchmark
    client freezes its heap the same way. Blocks nest (a caller may freeze around run_load, which
    freezes too): only the outermost collects, freezes and unfreezes.
    """
    global _frozen_depth
    if _frozen_depth == 0:
        gc.collect()
        gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


_frozen_depth = 0  # frozen_gc_heap blocks open now (this process)


async def run_load(plan: LoadPlan, send: Send, stats: LiveStats | None = None,
                   watch: ServerWatch | None = None) -> list[RequestResult]:
    """Send the plan's requests through send on its schedule; return every ended request's result.

    With a watch, the load stops when the server is gone: the requests in flight are cancelled
    (each records itself) and ServerGoneError carries the reason and the results so far."""
    results: list[RequestResult] = []
    with frozen_gc_heap():
        if watch is None:
            return await _run_load(plan, send, stats, results)
        return await _run_watched(plan, send, stats, watch, results)


async def _run_watched(plan: LoadPlan, send: Send, stats: LiveStats | None, watch: ServerWatch,
                       results: list[RequestResult]) -> list[RequestResult]:
    async def watched_send(request: CompletionRequest) -> RequestResult:
        result = await send(request)
        watch.on_result(result)
        return result

    load = asyncio.create_task(_run_load(plan, watched_send, stats, results))
    gone = asyncio.create_task(watch.wait_gone())
    try:
        await asyncio.wait({load, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this coroutine is cancelled (Ctrl-C): nothing is left running
        for task in (load, gone):
            if not task.done():
                task.cancel()
        await asyncio.gather(load, gone, return_exceptions=True)
    if load.cancelled():
        raise ServerGoneError(gone.result(), results)
    return load.result()


async def _run_load(plan: LoadPlan, send: Send, stats: LiveStats | None,
                    results: list[RequestResult]) -> list[RequestResult]:
    stats = stats if stats is not None else LiveStats()
    tasks: set[asyncio.Task] = set()
    start_ns = time.monotonic_ns()
    deadline_ns = None if plan.duration_s is None else start_ns + int(plan.duration_s * 1e9)

    async def one(request: CompletionRequest) -> None:
        stats.on_sent()
        result = await send(request)
        results.append(result)
        stats.on_result(result)

    def launch(request: CompletionRequest) -> None:
        task = asyncio.create_task(one(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def closed_loop_worker(indices: itertools.count) -> None:
        for index in indices:
            now = time.monotonic_ns()
            if index >= len(plan) or (deadline_ns is not None and now >= deadline_ns):
                return
            await one(_request(plan, index, now))

    try:
        if plan.concurrency is not None:
            indices = itertools.count()
            workers = [asyncio.create_task(closed_loop_worker(indices)) for _ in range(plan.concurrency)]
            tasks.update(workers)
            await asyncio.gather(*workers)
        else:
            for index, offset in enumerate(plan.arrival_s.tolist()):
                due_ns = start_ns + int(offset * 1e9)
                if deadline_ns is not None and due_ns >= deadline_ns:
                    break
                wait_s = (due_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                launch(_request(plan, index, due_ns))
            while tasks:
                await asyncio.gather(*list(tasks))
    except asyncio.CancelledError:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*list(tasks), return_exceptions=True)  # each records itself as cancelled
        raise
    return results


async def drive_http(endpoint: str, plan: LoadPlan, run_dir: str | os.PathLike, *, model: str | None = None,
                     request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, stats: LiveStats | None = None,
                     server_process: subprocess.Popen | None = None,
                     server_gone_after_s: float | None = SERVER_GONE_AFTER_S,
                     api: str = API_VLLM, extra_body: dict | None = None,
                     text_prompts: bool = False) -> list[RequestResult]:
    """Run the plan against an OpenAI-compatible endpoint, recording the client tables into run_dir.

    Stops with ServerGoneError when the server is gone (server_watch.py; server_process: the
    server servescope started, if any; server_gone_after_s None: never stop early). api, extra_body
    and text_prompts: what the client sends (StreamingClient: vLLM's fields, or the standard ones only).
    """
    base_url = base_url_of(endpoint)
    if model is None:
        model = (await served_model(base_url))["id"]  # raises EndpointError naming the URL
    recorder = open_recorder(Path(run_dir).absolute())
    watch = None if server_gone_after_s is None else ServerWatch(base_url, server_process,
                                                                  gone_after_s=server_gone_after_s)
    async with StreamingClient(base_url, model, recorder=recorder, request_timeout_s=request_timeout_s,
                               api=api, extra_body=extra_body, text_prompts=text_prompts) as client:
        return await run_load(plan, client.complete, stats, watch)
