"""Client beside engine: each request as servescope's client saw it and as the engine recorded it.

A run that has both records (``servescope bench`` against a recorded server) holds every request
twice: the client's send, chunk and end times, and the engine's arrival, emissions and finish.
The join: the client sends ``X-Request-Id: <client id>``; vLLM names the completion
``cmpl-<client id>`` and gives the engine the external id ``cmpl-<client id>-0``, which the front
end records as the ``arrival`` event's detail (in process the id itself).

Per joined request, the difference client TTFT - engine TTFT is the time the engine's own stamps
cannot see: HTTP, request parsing and tokenization before the front end stamps the arrival, and
output processing, SSE writing and the network after the first emission ("network and front-end
time"); its share of the client TTFT says how much of what a user waits for is outside the engine.
Where both observers ran on one host (one CLOCK_MONOTONIC; checked: every compared request's
engine arrival lies between its send and its first chunk, and its first emission before the
first chunk) the difference is also split into the part before the arrival stamp and the part
after the first emission. Only requests that ended 'ok' for the client are compared.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from servescope.analysis.client_view import ClientRequests, client_requests
from servescope.analysis.distributions import summarize
from servescope.analysis.request_metrics import MISSING_NS, NS_PER_S, RequestMetrics, compute_request_metrics
from servescope.run.data import RunData, load_run
from servescope.run.names import RequestEvent

DIFFERENCE_STATS = ("mean", "p50", "p90", "p99")
CONVENTIONS = {
    "join": "client id -> the engine request whose front-end 'arrival' detail is the completion id + '-0' "
            "(vLLM's external id), else the client id itself (in process)",
    "compared": "joined requests that ended 'ok' for the client",
    "ttft": "client: first token-carrying chunk received - request sent; engine: first emission - front-end "
            "arrival; difference per request (client - engine): network and front-end time",
    "e2e": "client: last token-carrying chunk received - request sent; engine: last emission - arrival; "
           "difference per request (client - engine)",
    "tbt_per_chunk": "client: gaps between token-carrying chunks; engine: gaps between emission steps; "
                     "difference of the two distributions' statistics (client - engine), not per gap",
    "network_front_end_share": "(client TTFT - engine TTFT) / client TTFT, per request",
    "before_arrival": "engine arrival - client send: HTTP, parsing and tokenization before the front end's "
                      "arrival stamp; null unless client and engine share a host clock",
    "after_first_emission": "client first chunk - engine first emission: output processing, SSE and network; "
                            "null unless client and engine share a host clock",
    "percentiles": "numpy 'linear' (Hyndman-Fan type 7)",
}


def engine_rows_of_client(run: RunData, client: ClientRequests, engine: RequestMetrics) -> np.ndarray:
    """Return, per client request (client order), the row of its engine request in engine, -1 where unjoined."""
    events = run.request_events
    arrival_by_external: dict[str, str] = {}
    if events.num_rows:
        rid, event, detail = (events.column(name).to_pylist() for name in ("request_id", "event", "detail"))
        for r, e, d in zip(rid, event, detail):
            if e == RequestEvent.ARRIVAL and d is not None:
                arrival_by_external.setdefault(d, r)
    engine_row = {r: i for i, r in enumerate(engine.request_id.tolist())}
    out = np.full(len(client), -1, dtype=np.int64)
    for i, (cid, server_id) in enumerate(zip(client.metrics.request_id.tolist(), client.server_request_id.tolist())):
        for external in (server_id, f"{server_id}-0", f"cmpl-{cid}-0", cid):
            engine_id = arrival_by_external.get(external) if external is not None else None
            if engine_id is not None and engine_id in engine_row:
                out[i] = engine_row[engine_id]
                break
    return out


class ClientBesideEngine:
    """The joined requests of one run: client and engine arrays side by side, and their summary."""

    def __init__(self, run: RunData, client: ClientRequests, engine: RequestMetrics):
        self.client, self.engine = client, engine
        self.engine_row = engine_rows_of_client(run, client, engine)
        self.compared = np.flatnonzero((self.engine_row >= 0) & client.ok)  # client rows
        c, e = client.metrics, engine
        ci, ei = self.compared, self.engine_row[self.compared]
        self.ttft_client_s, self.ttft_engine_s = c.ttft_s[ci], e.ttft_s[ei]
        self.e2e_client_s, self.e2e_engine_s = c.e2e_s[ci], e.e2e_s[ei]
        self.ttft_difference_s = self.ttft_client_s - self.ttft_engine_s
        with np.errstate(invalid="ignore", divide="ignore"):
            self.network_front_end_share = self.ttft_difference_s / self.ttft_client_s
        before = _seconds(e.arrival_ns[ei], c.arrival_ns[ci])
        after = _seconds(c.first_token_ns[ci], e.first_token_ns[ei])
        known = np.isfinite(before) & np.isfinite(after)
        self.shared_clock = bool(known.any()) and bool(np.all((before[known] >= 0) & (after[known] >= 0)
                                                              & (before[known] <= self.ttft_client_s[known])))
        nothing = np.full(len(ci), np.nan)
        self.before_arrival_s = before if self.shared_clock else nothing
        self.after_first_emission_s = after if self.shared_clock else nothing

    def chunk_gaps_s(self, side: str) -> np.ndarray:
        """Return every per-chunk gap (s) of the compared requests on one side ('client' or 'engine')."""
        metrics, rows = ((self.client.metrics, self.compared) if side == "client"
                         else (self.engine, self.engine_row[self.compared]))
        gaps = [metrics.tbt_per_chunk(i) for i in rows.tolist()]
        return np.concatenate(gaps) if gaps else np.empty(0)

    def summary(self) -> dict:
        """Return the JSON-ready side-by-side summary: counts, per-metric client / engine / difference (s)."""
        unjoined = np.flatnonzero(self.engine_row < 0)
        c = self.client
        result = {
            "client_requests": len(c),
            "engine_requests": len(self.engine),
            "joined_requests": int(np.count_nonzero(self.engine_row >= 0)),
            "compared_requests": int(self.compared.size),
            "client_status": c.status_counts(),
            "unjoined_client_requests": [
                {"request_id": c.metrics.request_id[i], "status": c.status[i], "error": c.error[i]}
                for i in unjoined.tolist()],
            "shared_clock": self.shared_clock,
            "conventions": dict(CONVENTIONS),
        }
        for name, client_values, engine_values, difference in (
            ("ttft_s", self.ttft_client_s, self.ttft_engine_s, self.ttft_difference_s),
            ("e2e_s", self.e2e_client_s, self.e2e_engine_s, self.e2e_client_s - self.e2e_engine_s),
        ):
            result[name] = {"client": summarize(client_values), "engine": summarize(engine_values),
                            "difference": summarize(difference)}
        client_gaps, engine_gaps = summarize(self.chunk_gaps_s("client")), summarize(self.chunk_gaps_s("engine"))
        result["tbt_per_chunk_s"] = {
            "client": client_gaps, "engine": engine_gaps,
            "difference": {k: None if client_gaps[k] is None or engine_gaps[k] is None
                           else client_gaps[k] - engine_gaps[k] for k in DIFFERENCE_STATS},
        }
        result["network_front_end_share_of_ttft"] = summarize(self.network_front_end_share)
        result["before_arrival_s"] = summarize(self.before_arrival_s) if self.shared_clock else None
        result["after_first_emission_s"] = summarize(self.after_first_emission_s) if self.shared_clock else None
        return result

    def per_engine_request(self) -> list[dict | None]:
        """Return, per engine request (engine order), its client's view (JSON-ready, s), None where none joined."""
        out: list[dict | None] = [None] * len(self.engine)
        c = self.client
        position = {int(row): k for k, row in enumerate(self.compared.tolist())}
        for i in np.flatnonzero(self.engine_row >= 0).tolist():
            m = c.metrics
            k = position.get(i)
            out[int(self.engine_row[i])] = {
                "request_id": m.request_id[i],
                "status": c.status[i],
                "error": c.error[i],
                "output_tokens": int(m.output_tokens[i]),
                "ttft_s": _number(m.ttft_s[i]),
                "e2e_s": _number(m.e2e_s[i]),
                "tpot_s": _number(m.tpot_s[i]),
                "tbt_per_chunk_s": m.tbt_per_chunk(i).tolist(),
                "ttft_difference_s": None if k is None else _number(self.ttft_difference_s[k]),
                "network_front_end_share": None if k is None else _number(self.network_front_end_share[k]),
                "before_arrival_s": None if k is None else _number(self.before_arrival_s[k]),
                "after_first_emission_s": None if k is None else _number(self.after_first_emission_s[k]),
            }
        return out


def _seconds(end_ns: np.ndarray, start_ns: np.ndarray) -> np.ndarray:
    out = np.full(len(end_ns), np.nan)
    ok = (end_ns != MISSING_NS) & (start_ns != MISSING_NS)
    out[ok] = (end_ns[ok] - start_ns[ok]) / NS_PER_S
    return out


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- one run directory


def engine_request_ids(run_dir: str | os.PathLike, engine_run_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Return client_request_id -> the engine's internal request id of every joined request: the client's records in
    run_dir, the engine's there too, or in engine_run_dir when the server recorded elsewhere."""
    run = load_run(run_dir)
    return joined_request_ids(run, run if engine_run_dir is None else load_run(engine_run_dir))


def joined_request_ids(run: RunData, engine_run: RunData) -> dict[str, str]:
    """Return client_request_id -> the engine's internal request id of every joined request of two loaded runs."""
    client, engine = client_requests(run), compute_request_metrics(engine_run)
    rows = engine_rows_of_client(engine_run, client, engine)
    return {cid: engine.request_id[r] for cid, r in zip(client.metrics.request_id.tolist(), rows.tolist()) if r >= 0}


@dataclass
class EngineTokenCheck:
    """Every token the client received must be in the engine's token_emissions: the requests where it is not."""

    client_requests: int  # client requests that received at least one token
    client_tokens: int  # tokens the client received, in all
    not_joined: dict[str, int]  # client request id -> tokens received, for requests with no engine arrival record
    short: dict[str, tuple[int, int]]  # client request id -> (tokens received, tokens recorded), recorded < received

    @property
    def missing_tokens(self) -> int:
        """Return how many tokens the client received that the engine's records lack."""
        return sum(self.not_joined.values()) + sum(received - recorded for received, recorded in self.short.values())

    def summary(self, examples: int = 5) -> dict:
        """Return the check as JSON-ready counts (tokens), with a few of the requests that fail it."""
        return {"client_requests": self.client_requests, "client_tokens": self.client_tokens,
                "requests_not_joined": len(self.not_joined), "requests_short": len(self.short),
                "missing_tokens": self.missing_tokens,
                "examples_not_joined": dict(list(self.not_joined.items())[:examples]),
                "examples_short": {cid: list(v) for cid, v in list(self.short.items())[:examples]}}


def engine_token_check(run_dir: str | os.PathLike) -> EngineTokenCheck:
    """Return, for a run holding client and engine records, the client requests whose received tokens (a count) the
    engine's token_emissions do not all hold (the witness of records that survive their process)."""
    run = load_run(run_dir)
    joined = joined_request_ids(run, run)
    received = _token_sums(run.client_chunks, "client_request_id")
    recorded = _token_sums(run.token_emissions, "request_id")
    not_joined, short = {}, {}
    for cid, n in received.items():
        if n <= 0:
            continue
        if cid not in joined:
            not_joined[cid] = n
        elif recorded.get(joined[cid], 0) < n:
            short[cid] = (n, recorded.get(joined[cid], 0))
    return EngineTokenCheck(client_requests=sum(1 for n in received.values() if n > 0),
                            client_tokens=sum(received.values()), not_joined=not_joined, short=short)


def _token_sums(table: pa.Table, key: str) -> dict[str, int]:
    """Return key -> the sum of num_tokens over the table's rows (key decoded when dictionary-encoded)."""
    if table.num_rows == 0:
        return {}
    keys = table.column(key)
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(keys.type.value_type)
    sums = pa.table({"key": keys, "num_tokens": table.column("num_tokens")}).group_by("key").aggregate(
        [("num_tokens", "sum")])
    return dict(zip(sums.column("key").to_pylist(), sums.column("num_tokens_sum").to_pylist()))


def client_vs_engine(run_dir: str | os.PathLike) -> dict:
    """Return the side-by-side summary (ClientBesideEngine.summary) of a run directory's joined requests, in s."""
    run = load_run(run_dir)
    return ClientBesideEngine(run, client_requests(run), compute_request_metrics(run)).summary()


def client_vs_engine_text(comparison: dict) -> str:
    """Return the side-by-side summary as a text table, times in ms."""
    lines = [f"client vs engine ({comparison['joined_requests']} requests joined, {comparison['compared_requests']} "
             f"ok compared; client {comparison['client_requests']}, engine {comparison['engine_requests']})",
             f"{'metric':<16}{'side':<12}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}"]
    rows = [("ttft_s", "TTFT", ("client", "engine", "difference")),
            ("tbt_per_chunk_s", "TBT/chunk", ("client", "engine", "difference")),
            ("e2e_s", "end-to-end", ("client", "engine", "difference"))]
    for name, label, sides in rows:
        for side in sides:
            lines.append(_text_row(label if side == sides[0] else "", side, comparison[name][side], 1e3))
    share = comparison["network_front_end_share_of_ttft"]
    lines.append(_text_row("outside engine", "% of TTFT", share, 100.0))
    for name, label in (("before_arrival_s", "before arrival"), ("after_first_emission_s", "after emission")):
        if comparison.get(name):
            lines.append(_text_row(label, "ms", comparison[name], 1e3))
    lines.append("times in ms; TBT/chunk difference: of the distributions' statistics; outside engine: "
                 "(client TTFT - engine TTFT) / client TTFT"
                 + ("" if comparison["shared_clock"] else "; no before/after split (no shared host clock)"))
    unjoined = comparison["unjoined_client_requests"]
    if unjoined:
        lines.append(f"{len(unjoined)} client requests have no engine record (first: {unjoined[0]['request_id']}, "
                     f"{unjoined[0]['status']}: {unjoined[0]['error']})")
    return "\n".join(lines)


def _text_row(label: str, side: str, stats: dict, scale: float) -> str:
    cells = "".join(f"{'-' if stats.get(k) is None else f'{stats[k] * scale:.2f}':>10}"
                    for k in ("p50", "p90", "p99", "mean"))
    return f"{label:<16}{side:<12}{cells}"
