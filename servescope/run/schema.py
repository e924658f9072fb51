"""The record model: every table servescope writes, its columns, units and clocks.

One place names every column, so the patch that writes a row, the Parquet file
that stores it and the analysis that reads it use the same field names.
docs/tables.md is generated from this module (``python -m servescope.run.schema``).

Clock: every ``*_ns`` time column is CLOCK_MONOTONIC in integer nanoseconds
(``time.monotonic_ns()``), which is one clock for every process of a host.
Each process's (wall, monotonic) anchor is in ``processes/<pid>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from servescope.run.names import ClientStatus, Region, RequestEvent, Table


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: pa.DataType
    unit: str
    doc: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    writer: str  # which process writes it
    doc: str
    columns: tuple[Column, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _c(name: str, type_: pa.DataType, unit: str, doc: str) -> Column:
    return Column(name, type_, unit, doc)


I64, I32, F64, STR, BOOL = pa.int64(), pa.int32(), pa.float64(), pa.string(), pa.bool_()

# Lifecycle events of one request (names.RequestEvent).
REQUEST_EVENTS_TABLE = TableSpec(
    Table.REQUEST_EVENTS,
    "front end (arrival) and EngineCore (the rest)",
    "One row per lifecycle event of a request.",
    (
        _c("request_id", STR, "", "engine-internal request id (vLLM's EngineCoreRequest.request_id)"),
        _c("event", STR, "", ", ".join(RequestEvent.ALL)),
        _c("time_ns", I64, "ns, monotonic", "when the event happened"),
        _c("step_id", I64, "", "engine step that caused it (scheduled, preempted, finished); null otherwise"),
        _c("prompt_tokens", I32, "tokens", "prompt length (arrival, queued)"),
        _c("max_tokens", I32, "tokens", "requested max_tokens (arrival, queued)"),
        _c("output_tokens", I32, "tokens", "tokens generated when the event happened (finished, preempted)"),
        _c("detail", STR, "", "arrival: the caller's request id; finished: the finish reason"),
    ),
)

TOKEN_EMISSIONS_TABLE = TableSpec(
    Table.TOKEN_EMISSIONS,
    "EngineCore",
    "One row per (engine step, request) that emitted output tokens. Tokens emitted by "
    "one step share its time: a speculative step emits accepted drafts + 1 bonus token.",
    (
        _c("request_id", STR, "", "engine-internal request id"),
        _c("step_id", I64, "", "engine step whose output carried the tokens"),
        _c("time_ns", I64, "ns, monotonic", "emission: when the EngineCore turned the step's model output into outputs (end of update_from_output)"),
        _c("num_tokens", I32, "tokens", "output tokens emitted for this request by this step"),
        _c("num_draft_tokens", I32, "tokens", "speculative tokens verified for this request in this step (null without speculation)"),
        _c("num_accepted_tokens", I32, "tokens", "of those, accepted (null without speculation)"),
    ),
)

STEPS_TABLE = TableSpec(
    Table.STEPS,
    "EngineCore",
    "One row per engine step (one scheduled batch). Under async scheduling step k+1 is "
    "scheduled before step k's output is processed: rows join by step_id, never by order.",
    (
        _c("step_id", I64, "", "the scheduler's batch counter in this EngineCore, from 0"),
        _c("engine_index", I32, "", "data-parallel rank of the EngineCore"),
        _c("schedule_start_ns", I64, "ns, monotonic", "Scheduler.schedule() entered"),
        _c("schedule_end_ns", I64, "ns, monotonic", "Scheduler.schedule() returned"),
        _c("execute_start_ns", I64, "ns, monotonic", "executor.execute_model() entered (launch)"),
        _c("execute_end_ns", I64, "ns, monotonic", "executor.execute_model()/sample_tokens() returned (launch done; not GPU done)"),
        _c("wait_start_ns", I64, "ns, monotonic", "EngineCore began to wait for the step's model output"),
        _c("wait_end_ns", I64, "ns, monotonic", "model output available on the host"),
        _c("update_start_ns", I64, "ns, monotonic", "Scheduler.update_from_output() entered"),
        _c("update_end_ns", I64, "ns, monotonic", "Scheduler.update_from_output() returned; tokens of this step are emitted"),
        _c("engine_timestamp_ns", I64, "ns, monotonic", "timestamp vLLM put on this step's output message (EngineCoreOutputs.timestamp); joins frontend_steps"),
        _c("total_scheduled_tokens", I32, "tokens", "tokens computed in this step (prompt + decode + draft)"),
        _c("num_prefill_reqs", I32, "requests", "requests computing prompt tokens (incl. chunked prefill and recompute after preemption)"),
        _c("num_prefill_tokens", I32, "tokens", "prompt tokens computed"),
        _c("num_decode_reqs", I32, "requests", "requests in the decode phase"),
        _c("num_decode_tokens", I32, "tokens", "decode tokens computed (incl. draft tokens under verification)"),
        _c("num_spec_tokens", I32, "tokens", "draft tokens verified in this step"),
        _c("num_running_reqs", I32, "requests", "scheduler's running queue after scheduling"),
        _c("num_waiting_reqs", I32, "requests", "scheduler's waiting queue after scheduling"),
        _c("kv_cache_usage", F64, "fraction", "KV-cache blocks in use after scheduling, 0..1"),
        _c("num_preempted_reqs", I32, "requests", "requests preempted while scheduling this step"),
        _c("num_emitted_tokens", I32, "tokens", "output tokens this step emitted (sum over requests)"),
        _c("num_finished_reqs", I32, "requests", "requests that finished in this step"),
    ),
)

FRONTEND_STEPS_TABLE = TableSpec(
    Table.FRONTEND_STEPS,
    "front end",
    "One row per engine output message processed by the front end's OutputProcessor "
    "(detokenization, request-output building).",
    (
        _c("engine_timestamp_ns", I64, "ns, monotonic", "the EngineCore's timestamp of the message (EngineCoreOutputs.timestamp); joins steps.engine_timestamp_ns"),
        _c("process_start_ns", I64, "ns, monotonic", "OutputProcessor.process_outputs() entered"),
        _c("process_end_ns", I64, "ns, monotonic", "OutputProcessor.process_outputs() returned"),
        _c("num_outputs", I32, "requests", "request outputs in the message"),
    ),
)

WORKER_REGIONS_TABLE = TableSpec(
    Table.WORKER_REGIONS,
    "worker (model runner)",
    "One row per timed region of one step in a worker: host time always, GPU time when "
    "CUDA events resolved it.",
    (
        _c("step_id", I64, "", "engine step (the EngineCore's step_id, carried on the SchedulerOutput)"),
        _c("rank", I32, "", "the worker's rank in its engine's executor (0 .. TP x PP - 1, vLLM's `rank`; the torch.distributed world rank when data parallelism is off)"),
        _c("region", STR, "", ", ".join(Region.ALL)),
        _c("host_start_ns", I64, "ns, monotonic", "region entered on the host"),
        _c("host_end_ns", I64, "ns, monotonic", "region returned on the host (launch done)"),
        _c("gpu_ns", I64, "ns", "GPU stream time between the region's start and end events; null without CUDA"),
        _c("gpu_start_ns", I64, "ns, monotonic", "GPU start of the region on the host clock (calibrated globaltimer); null if not measured"),
        _c("gpu_end_ns", I64, "ns, monotonic", "GPU end of the region on the host clock; null if not measured"),
        _c("host_cpu_ns", I64, "ns", "CPU time (user + system) of the worker thread inside the region (CLOCK_THREAD_CPUTIME_ID); the rest of the host time it was off the CPU; null where not measured"),
        _c("voluntary_switches", I32, "", "context switches in the region where the thread blocked (GIL, lock, blocking CUDA call, I/O)"),
        _c("involuntary_switches", I32, "", "context switches in the region where the scheduler gave the thread's core to another thread"),
        _c("engine_index", I32, "", "data-parallel rank of the EngineCore the worker serves (joins steps.engine_index); null in runs recorded before servescope 0.2"),
        _c("tp_rank", I32, "", "the worker's rank in its tensor-parallel group (vLLM's parallel state); null where not known (runs recorded before it was kept)"),
        _c("pp_rank", I32, "", "the worker's pipeline-parallel stage (0 = first); null where not known"),
    ),
)

GPU_SAMPLES_TABLE = TableSpec(
    Table.GPU_SAMPLES,
    "NVML sampler thread",
    "Periodic samples of each GPU's state.",
    (
        _c("time_ns", I64, "ns, monotonic", "sample time"),
        _c("gpu", I32, "", "NVML device index"),
        _c("sm_clock_mhz", I32, "MHz", "SM clock"),
        _c("mem_clock_mhz", I32, "MHz", "memory clock"),
        _c("power_w", F64, "W", "power draw"),
        _c("gpu_util_pct", I32, "%", "NVML utilization.gpu"),
        _c("mem_used_bytes", I64, "bytes", "device memory in use"),
    ),
)

CLIENT_REQUESTS_TABLE = TableSpec(
    Table.CLIENT_REQUESTS,
    "benchmark client",
    "One row per request sent by servescope's benchmark client.",
    (
        _c("client_request_id", STR, "", "the client's id for the request"),
        _c("engine_request_id", STR, "", "the server's id (the completion id), when known"),
        _c("send_ns", I64, "ns, monotonic", "request sent"),
        _c("end_ns", I64, "ns, monotonic", "last byte received, error or timeout"),
        _c("prompt_tokens", I32, "tokens", "prompt length sent"),
        _c("max_tokens", I32, "tokens", "max_tokens asked for"),
        _c("output_tokens", I32, "tokens", "tokens received"),
        _c("status", STR, "", " | ".join(ClientStatus.ALL)),
        _c("error", STR, "", "error text, if any"),
        _c("scheduled_send_ns", I64, "ns, monotonic", "when the arrival process wanted it sent"),
    ),
)

CLIENT_CHUNKS_TABLE = TableSpec(
    Table.CLIENT_CHUNKS,
    "benchmark client",
    "One row per streamed chunk (server-sent event) that carried output tokens.",
    (
        _c("client_request_id", STR, "", "the client's id for the request"),
        _c("time_ns", I64, "ns, monotonic", "chunk received"),
        _c("num_tokens", I32, "tokens", "output tokens in the chunk"),
    ),
)

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        REQUEST_EVENTS_TABLE,
        TOKEN_EMISSIONS_TABLE,
        STEPS_TABLE,
        FRONTEND_STEPS_TABLE,
        WORKER_REGIONS_TABLE,
        GPU_SAMPLES_TABLE,
        CLIENT_REQUESTS_TABLE,
        CLIENT_CHUNKS_TABLE,
    )
}


def markdown() -> str:
    """Return the tables' documentation as Markdown."""
    out = [
        "# Tables of a run directory",
        "",
        "Generated from `servescope/run/schema.py` by `python -m servescope.run.schema`.",
        "Every `*_ns` time is CLOCK_MONOTONIC in nanoseconds, one clock for all processes of a host.",
        "",
    ]
    for t in TABLES.values():
        out += [f"## `{t.name}`", "", f"Written by: {t.writer}. {t.doc}", "",
                "| column | type | unit / clock | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.unit} | {c.doc} |" for c in t.columns]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
