"""What servescope's streaming client saw of each request, as the per-request metrics the analysis reads.

The client records two tables (servescope/bench/load/client.py): ``client_requests`` (one row per
request when it ends: send and end times, tokens, status, error) and ``client_chunks`` (one row
per streamed event that carried tokens: its arrival time and token count). ``client_requests``
turns them into the same ``RequestMetrics`` the engine-side analysis uses, with

* arrival ``a`` = the request was sent (``send_ns``), ``finished`` = its end (``end_ns``);
* one emission per chunk: its tokens all arrive at the chunk's time, so TTFT is the first
  token-carrying chunk minus the send, e2e the last such chunk minus the send, TBT per chunk
  the gaps between chunks, TPOT (last - first chunk) / (n - 1);

and keeps each request's ``status`` and ``error`` beside them, aligned row by row. What only the
engine can know (scheduling delay, prefill, preemptions, the time of a token inside a chunk)
is not in these tables; ``request_view.ENGINE_ONLY_METRICS`` lists what the readers leave null.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.analysis.request_metrics import RequestMetrics, compute_request_metrics
from servescope.run.data import RunData, load_run
from servescope.run.directory import RunDirError
from servescope.run.names import ClientStatus, RequestEvent, Table
from servescope.run.schema import TABLES

# The tables client_run_data leaves empty: no engine step, and no client table (its rows became the others).
EMPTY_TABLES = (Table.STEPS, Table.FRONTEND_STEPS, Table.WORKER_REGIONS, Table.CLIENT_REQUESTS, Table.CLIENT_CHUNKS)


@dataclass(eq=False)
class ClientRequests:
    """The client's record of every request it sent: metrics (s; arrival = send) and status, by send time."""

    metrics: RequestMetrics  # request_id = the client's id; times on the client host's CLOCK_MONOTONIC
    status: np.ndarray  # object: ClientStatus per request
    error: np.ndarray  # object: error text or None
    server_request_id: np.ndarray  # object: the id the server gave the request (completion id), or None
    send_ns: np.ndarray  # int64: request sent (= metrics.arrival_ns)
    end_ns: np.ndarray  # int64: last byte received, error or timeout

    def __len__(self) -> int:
        return len(self.metrics)

    @property
    def ok(self) -> np.ndarray:
        """Return a bool per request: the request ended with status 'ok'."""
        return self.status == ClientStatus.OK

    def status_counts(self) -> dict[str, int]:
        """Return requests per status (every status of ClientStatus.ALL, then any other seen), counts."""
        counts = {status: int(np.count_nonzero(self.status == status)) for status in ClientStatus.ALL}
        for status in sorted(set(self.status.tolist()) - set(ClientStatus.ALL), key=str):
            counts[str(status)] = int(np.count_nonzero(self.status == status))
        return counts


def client_run_data(run: RunData) -> RunData:
    """Return the run's client tables as a RunData of engine tables.

    send = 'arrival', end = 'finished' (detail: the status), each chunk = one emission of its tokens.
    """
    requests = run.client_requests
    chunks = run.client_chunks
    n = requests.num_rows

    def column(name: str) -> pa.Array:
        return requests.column(name).combine_chunks()

    def at_send_then_end(at_send: pa.Array, at_end: pa.Array) -> pa.Array:
        return pa.concat_arrays([at_send, at_end])

    ids = column("client_request_id").cast(pa.string())
    events = pa.table(
        {
            "request_id": at_send_then_end(ids, ids),
            "event": [RequestEvent.ARRIVAL] * n + [RequestEvent.FINISHED] * n,
            "time_ns": at_send_then_end(column("send_ns"), column("end_ns")),
            "step_id": pa.nulls(2 * n, pa.int64()),
            "prompt_tokens": at_send_then_end(column("prompt_tokens"), pa.nulls(n, pa.int32())),
            "max_tokens": at_send_then_end(column("max_tokens"), pa.nulls(n, pa.int32())),
            "output_tokens": at_send_then_end(pa.nulls(n, pa.int32()), column("output_tokens")),
            "detail": at_send_then_end(pa.nulls(n, pa.string()), column("status")),
        },
        schema=TABLES[Table.REQUEST_EVENTS].arrow_schema,
    )
    rows = chunks.num_rows
    emissions = pa.table(
        {
            "request_id": chunks.column("client_request_id"),
            "step_id": pa.nulls(rows, pa.int64()),
            "time_ns": chunks.column("time_ns"),
            "num_tokens": chunks.column("num_tokens"),
            "num_draft_tokens": pa.nulls(rows, pa.int32()),
            "num_accepted_tokens": pa.nulls(rows, pa.int32()),
        }
    )
    empty = {name: TABLES[name].arrow_schema.empty_table() for name in EMPTY_TABLES}
    return RunData(path=run.path, manifest=run.manifest, request_events=events, token_emissions=emissions, **empty)


def client_requests(run: RunData) -> ClientRequests:
    """Return the client's record of the run (empty when the client recorded nothing), requests by send time.

    Raises RunDirError naming the run when a client request id has two rows: two requests would be merged.
    """
    _check_unique_ids(run)
    metrics = compute_request_metrics(client_run_data(run))
    table = run.client_requests
    row = pc.index_in(pa.array(metrics.request_id.tolist(), pa.string()),
                      value_set=table.column("client_request_id").cast(pa.string()).combine_chunks())
    row = np.asarray(pc.fill_null(row, -1), dtype=np.int64)  # every client id has its row

    def column(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_pylist(), dtype=object)[row] if len(row) else np.empty(0, object)

    return ClientRequests(metrics=metrics, status=column("status"), error=column("error"),
                          server_request_id=column("engine_request_id"), send_ns=metrics.arrival_ns,
                          end_ns=metrics.finished_ns)


def _check_unique_ids(run: RunData) -> None:
    ids = run.client_requests.column("client_request_id")
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids.combine_chunks())
    repeated = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    raise RunDirError(f"{run.path}: {len(repeated)} client request ids have more than one client_requests row "
                      f"(first: {repeated[0]!r}); two benchmarks into one run directory with the same ids? Their "
                      "chunks cannot be told apart")


def client_request_metrics(run_dir: str | os.PathLike) -> RequestMetrics:
    """Return per-request latencies as the client saw them (arrival = send), in the engine analysis's RequestMetrics."""
    return client_requests(load_run(Path(run_dir))).metrics
