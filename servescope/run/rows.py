"""Typed rows: one NamedTuple per table, its fields exactly the table's columns (schema.py).

Producers build rows by keyword (``StepRow(step_id=..., ...)``), so two fields of the same type
can never be swapped silently; a row is still a plain tuple in column order, which is what the
recorder stores. ``tests/test_run_contract.py`` asserts that every row type's fields equal its
table's columns. Fields that a producer may not know default to None (null).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from servescope.run.names import Table


class RequestEventRow(NamedTuple):
    request_id: str
    event: str
    time_ns: int
    step_id: Optional[int] = None
    prompt_tokens: Optional[int] = None
    max_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    detail: Optional[str] = None


class TokenEmissionRow(NamedTuple):
    request_id: str
    step_id: Optional[int]
    time_ns: int
    num_tokens: int
    num_draft_tokens: Optional[int] = None
    num_accepted_tokens: Optional[int] = None


class StepRow(NamedTuple):
    step_id: int
    engine_index: int
    schedule_start_ns: int
    schedule_end_ns: int
    execute_start_ns: Optional[int]
    execute_end_ns: Optional[int]
    wait_start_ns: Optional[int]
    wait_end_ns: Optional[int]
    update_start_ns: int
    update_end_ns: int
    engine_timestamp_ns: Optional[int]
    total_scheduled_tokens: int
    num_prefill_reqs: int
    num_prefill_tokens: int
    num_decode_reqs: int
    num_decode_tokens: int
    num_spec_tokens: int
    num_running_reqs: int
    num_waiting_reqs: int
    kv_cache_usage: Optional[float]
    num_preempted_reqs: int
    num_emitted_tokens: int
    num_finished_reqs: int


class FrontendStepRow(NamedTuple):
    engine_timestamp_ns: Optional[int]
    process_start_ns: int
    process_end_ns: int
    num_outputs: int


class WorkerRegionRow(NamedTuple):
    step_id: Optional[int]
    rank: int
    region: str
    host_start_ns: Optional[int]
    host_end_ns: Optional[int]
    gpu_ns: Optional[int] = None
    gpu_start_ns: Optional[int] = None
    gpu_end_ns: Optional[int] = None
    host_cpu_ns: Optional[int] = None
    voluntary_switches: Optional[int] = None
    involuntary_switches: Optional[int] = None
    engine_index: Optional[int] = None
    tp_rank: Optional[int] = None
    pp_rank: Optional[int] = None


class GpuSampleRow(NamedTuple):
    time_ns: int
    gpu: int
    sm_clock_mhz: Optional[int]
    mem_clock_mhz: Optional[int]
    power_w: Optional[float]
    gpu_util_pct: Optional[int]
    mem_used_bytes: Optional[int]


class ClientRequestRow(NamedTuple):
    client_request_id: str
    engine_request_id: Optional[str]
    send_ns: Optional[int]
    end_ns: Optional[int]
    prompt_tokens: Optional[int]
    max_tokens: Optional[int]
    output_tokens: Optional[int]
    status: str
    error: Optional[str] = None
    scheduled_send_ns: Optional[int] = None


class ClientChunkRow(NamedTuple):
    client_request_id: str
    time_ns: int
    num_tokens: int


ROW_TYPES: dict[str, type] = {
    Table.REQUEST_EVENTS: RequestEventRow,
    Table.TOKEN_EMISSIONS: TokenEmissionRow,
    Table.STEPS: StepRow,
    Table.FRONTEND_STEPS: FrontendStepRow,
    Table.WORKER_REGIONS: WorkerRegionRow,
    Table.GPU_SAMPLES: GpuSampleRow,
    Table.CLIENT_REQUESTS: ClientRequestRow,
    Table.CLIENT_CHUNKS: ClientChunkRow,
}
