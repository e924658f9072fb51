"""Which observer a run's analysis reads, and the per-request view it gives.

A run directory can hold two records of its requests (names.Observer): the engine's own
(``request_events``, ``token_emissions``, ...; written inside a traced engine) and servescope's
client's (``client_requests``, ``client_chunks``; written by ``servescope bench``). The readers
(analyze, report, audit, compare, Perfetto) read

* the engine's record when the run has one: it sees inside (scheduling delay, prefill,
  preemptions, the time of every token); the client's record, when there is one too, is set
  beside it (client_vs_engine.py);
* else the client's record ("a client-only run": ``servescope bench --endpoint URL`` against a
  server that servescope does not trace, of any make). Every number then comes from the client;
  what only the engine can know is null (ENGINE_ONLY_FIELDS; summary.CLIENT_CONVENTIONS says
  why). Requests that did not end 'ok' (error, timeout, cancelled) stay in the
  per-request lists with their status and error and are left out of every distribution and
  throughput, which say how many were left out.

``request_view(run, observer=...)`` asks for one observer explicitly (e.g. the client's view of a
run that has both, to compare it with a client-only run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servescope.analysis.client_view import ClientRequests, client_requests
from servescope.analysis.request_metrics import RequestMetrics, compute_request_metrics, take_requests
from servescope.run.data import RunData
from servescope.run.names import Observer

# Per-request fields (analyze's names) that only the engine's record holds: null in a client view.
ENGINE_ONLY_FIELDS = ("scheduling_delay_s", "prefill_s", "ttst_s", "tbt_per_token_s", "preemptions", "preempted_s",
                      "arrival_from_queue", "finish_reason")


@dataclass(eq=False)
class RequestView:
    """The requests of a run as one observer recorded them: metrics (s), which count, and the client's record."""

    source: str | None  # Observer.ENGINE or Observer.CLIENT; None when the run recorded no request
    observers: tuple[str, ...]  # every observer with records in the run
    metrics: RequestMetrics  # every request of the source, by arrival (the client's: by send)
    counted: np.ndarray  # bool per request: in the distributions (engine: all; client: status 'ok')
    client: ClientRequests | None  # the client's record (for a client view: of metrics itself)

    def counted_metrics(self) -> RequestMetrics:
        """Return the metrics of the counted requests only (all of them for the engine's view)."""
        return take_requests(self.metrics, np.flatnonzero(self.counted))

    def observed(self, field: str) -> bool:
        """Return whether this view's observer can know a field (False: an engine-only field in a client view)."""
        return not (self.source == Observer.CLIENT and field in ENGINE_ONLY_FIELDS)

    def status_counts(self) -> dict[str, int] | None:
        """Return the client's requests per status, None without a client record."""
        return self.client.status_counts() if self.client is not None else None


def observers_of(run: RunData) -> tuple[str, ...]:
    """Return the observers that recorded requests in the run (names.Observer, engine first)."""
    engine = run.request_events.num_rows > 0 or run.token_emissions.num_rows > 0
    client = run.client_requests.num_rows > 0
    return tuple(name for name, present in ((Observer.ENGINE, engine), (Observer.CLIENT, client)) if present)


def request_view(run: RunData, observer: str | None = None) -> RequestView:
    """Return the run's requests as observer recorded them (None: the engine's when recorded, else the client's).

    Raises ValueError naming the run when the observer asked for recorded nothing in it.
    """
    observers = observers_of(run)
    if observer is None:
        observer = observers[0] if observers else None
    elif observer not in Observer.ALL:
        raise ValueError(f"observer is one of {', '.join(Observer.ALL)}, not {observer!r}")
    elif observer not in observers:
        raise ValueError(f"{run.path}: no {observer} records in this run "
                         f"(it has: {', '.join(observers) or 'no request records'})")
    client = client_requests(run) if Observer.CLIENT in observers else None
    if observer == Observer.CLIENT:
        return RequestView(Observer.CLIENT, observers, client.metrics, client.ok, client)
    metrics = compute_request_metrics(run)
    return RequestView(observer, observers, metrics, np.ones(len(metrics), dtype=bool), client)
