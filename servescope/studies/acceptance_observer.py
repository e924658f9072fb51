"""Accepted draft tokens observed a second time: from what the caller receives, not from vLLM's stats.

servescope's per-step acceptance (``token_emissions.num_accepted_tokens``) is taken from the
scheduler's ``make_spec_decoding_stats`` call, the same call that feeds vLLM's own counters, so
"servescope equals vLLM's counters" shows the bookkeeping is right, not that anything was seen
twice. This module counts acceptance where the tokens arrive:

- **offline** (``DeliveryObserver``): the outputs of ``LLMEngine.step()`` with
  ``RequestOutputKind.DELTA``. A step that verified a draft for a request delivers the accepted
  draft tokens plus one token of its own (the bonus or the correction), so n tokens delivered in
  one step = n - 1 accepted. A step without a draft delivers 1 token: 0 accepted.
- **served** (``chunks_against_emissions``): the streaming client's chunks. The server may merge
  the outputs of several steps into one chunk when the client lags behind, and then a chunk is
  not a step; merged chunks are found (their token boundaries do not match one engine step's) and
  counted, never split or dropped silently.

One case bounds instead of equals: the delivery that brings a request to its ``max_tokens`` may
be cut short (vLLM counts the step's accepted tokens before it truncates the output at the limit),
so there the caller's n - 1 is a lower bound of what vLLM counted as accepted. The comparison
reports those tokens (accepted, never delivered) per request.

``compare_deliveries`` sets the caller's view against servescope's ``token_emissions`` rows, per
step (the k-th delivery to a request against the request's k-th emission row) and per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from servescope.run.names import RequestEvent


@dataclass(slots=True)
class Delivery:
    """Tokens one engine step delivered to one request, as the caller saw them."""

    num_tokens: int
    call: int  # which LLMEngine.step() call (0-based) returned it
    capped: bool  # this delivery brought the request to its max_tokens: it may have been cut short


@dataclass
class DeliveryObserver:
    """Records, from LLMEngine.step() outputs (RequestOutputKind.DELTA), the tokens each step gives each request."""

    max_tokens: dict[str, int]  # request id -> the max_tokens it was sent with
    deliveries: dict[str, list[Delivery]] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def observe(self, outputs: Iterable[Any]) -> None:
        """Record one step() call's outputs (each a RequestOutput holding only its new tokens)."""
        for out in outputs:
            n = sum(len(c.token_ids) for c in out.outputs)
            if n == 0:
                continue
            total = self.delivered.get(out.request_id, 0) + n
            self.delivered[out.request_id] = total
            capped = total >= self.max_tokens.get(out.request_id, total + 1)
            self.deliveries.setdefault(out.request_id, []).append(Delivery(n, self.calls, capped))
        self.calls += 1


def by_engine_id(deliveries: dict[str, list[Delivery]], request_events: Iterable[dict]) -> dict[str, list[Delivery]]:
    """Return the deliveries keyed by the engine's request id (token_emissions.request_id): the front end's
    arrival event holds the caller's id in its detail."""
    engine_id = {e["detail"]: e["request_id"] for e in request_events if e["event"] == RequestEvent.ARRIVAL}
    return {engine_id.get(rid, rid): d for rid, d in deliveries.items()}


def compare_deliveries(deliveries: dict[str, list[Delivery]], emissions: Iterable[dict]) -> dict:
    """Return the caller's accepted tokens (n - 1 per delivery) against token_emissions' num_accepted_tokens,
    per step and per request, with every disagreement listed.

    emissions: token_emissions rows (dicts with request_id, step_id, num_tokens, num_accepted_tokens).
    A capped delivery (see the module docstring) agrees when servescope's count is at least n - 1.
    """
    rows_by_request: dict[str, list[dict]] = {}
    for row in emissions:
        rows_by_request.setdefault(row["request_id"], []).append(row)
    per_request, mismatches = {}, []
    steps_compared = steps_exact = steps_capped = 0
    observed_by_call: dict[int, int] = {}
    recorded_by_step: dict[int, int] = {}
    for rid in sorted(set(rows_by_request) | set(deliveries)):
        rows = sorted(rows_by_request.get(rid, []), key=lambda r: r["step_id"])
        seen = deliveries.get(rid, [])
        if len(rows) != len(seen):
            mismatches.append(f"{rid}: {len(seen)} deliveries seen by the caller, {len(rows)} emission rows")
            per_request[rid] = {"agree": False, "deliveries": len(seen), "emission_rows": len(rows)}
            continue
        observed = recorded = not_delivered = 0
        agree = True
        for k, (d, row) in enumerate(zip(seen, rows)):
            caller = d.num_tokens - 1
            ours = row.get("num_accepted_tokens") or 0
            steps_compared += 1
            observed += caller
            recorded += ours
            cut = d.capped and ours > caller  # accepted by vLLM, cut at max_tokens before delivery
            observed_by_call[d.call] = observed_by_call.get(d.call, 0) + caller
            recorded_by_step[row["step_id"]] = recorded_by_step.get(row["step_id"], 0) + (caller if cut else ours)
            if ours == caller:
                steps_exact += 1
                continue
            if cut:
                steps_capped += 1
                not_delivered += ours - caller
                continue
            agree = False
            mismatches.append(f"{rid} delivery {k} (step {row['step_id']}): the caller got {d.num_tokens} tokens "
                              f"({caller} accepted), token_emissions says {ours} accepted")
        per_request[rid] = {"agree": agree, "accepted_seen_by_caller": observed, "accepted_recorded": recorded,
                            "accepted_not_delivered": not_delivered, "deliveries": len(seen)}
    # per engine step: the caller's step() calls and servescope's steps, in order, carry the same totals
    step_totals_equal = [v for _, v in sorted(observed_by_call.items())] == \
        [v for _, v in sorted(recorded_by_step.items())]
    if not step_totals_equal and not mismatches:
        mismatches.append("per-step totals differ in order: step() calls and recorded steps do not line up")
    return {
        "requests": len(per_request),
        "requests_agreeing": sum(1 for r in per_request.values() if r["agree"]),
        "steps_compared": steps_compared, "steps_exact": steps_exact, "steps_cut_at_max_tokens": steps_capped,
        "accepted_seen_by_caller": sum(r.get("accepted_seen_by_caller", 0) for r in per_request.values()),
        "accepted_recorded": sum(r.get("accepted_recorded", 0) for r in per_request.values()),
        "accepted_not_delivered": sum(r.get("accepted_not_delivered", 0) for r in per_request.values()),
        "step_totals_equal": step_totals_equal,
        "agree": not mismatches,
        "mismatches": mismatches[:50],
        "per_request": per_request,
    }


def chunks_against_emissions(chunk_tokens: list[int], emission_rows: list[dict], num_speculative_tokens: int
                             ) -> dict:
    """Return one served request's streamed chunks (token counts, in order) matched to its emission rows.

    A chunk whose token boundary is one emission row's is a step as the client saw it: its n - 1
    accepted tokens are compared with the row's num_accepted_tokens. A chunk that spans several rows
    is merged (the server joined steps while the client lagged) and is counted, not compared; a chunk
    of more than k + 1 tokens is merged whatever the engine rows say (certainly_merged).
    """
    rows = sorted(emission_rows, key=lambda r: r["step_id"])
    row_ends, total = {}, 0
    for i, r in enumerate(rows):
        total += r["num_tokens"]
        row_ends[total] = i
    out = {"chunks": len(chunk_tokens), "merged_chunks": 0, "certainly_merged": 0, "compared": 0, "exact": 0,
           "capped": 0, "misaligned": 0, "mismatches": []}
    delivered, first_row = 0, 0
    for k, n in enumerate(chunk_tokens):
        delivered += n
        out["certainly_merged"] += n > num_speculative_tokens + 1
        last_row = row_ends.get(delivered)
        if last_row is None:
            out["misaligned"] += 1  # a boundary inside one step's tokens: one of the two records is wrong
            out["mismatches"].append(f"chunk {k} ends at token {delivered}, inside an engine step")
            continue
        if last_row > first_row:
            out["merged_chunks"] += 1
        else:
            row = rows[last_row]
            ours = row.get("num_accepted_tokens") or 0
            out["compared"] += 1
            if ours == n - 1:
                out["exact"] += 1
            elif last_row == len(rows) - 1 and ours >= n - 1:
                out["capped"] += 1  # the request's last step, cut at max_tokens
            else:
                out["mismatches"].append(f"chunk {k}: {n} tokens ({n - 1} accepted), step {row['step_id']} "
                                         f"recorded {ours}")
        first_row = last_row + 1
    if delivered != total:
        out["mismatches"].append(f"the client received {delivered} tokens, the engine emitted {total}")
    out["agree"] = not out["mismatches"]
    return out


def served_comparison(client_chunks: Iterable[dict], emissions: Iterable[dict], engine_ids: dict[str, str],
                      num_speculative_tokens: int) -> dict:
    """Return chunks_against_emissions for every joined request of a served run, and the totals.

    client_chunks: client_chunks rows (client_request_id, time_ns, num_tokens); emissions:
    token_emissions rows; engine_ids: client id -> engine request id (bench.load.client.engine_request_ids).
    """
    chunks: dict[str, list[tuple[int, int]]] = {}
    for c in client_chunks:
        chunks.setdefault(c["client_request_id"], []).append((c["time_ns"], c["num_tokens"]))
    rows: dict[str, list[dict]] = {}
    for r in emissions:
        rows.setdefault(r["request_id"], []).append(r)
    per_request = {cid: chunks_against_emissions([n for _, n in sorted(chunks[cid])], rows.get(eid, []),
                                                 num_speculative_tokens)
                   for cid, eid in engine_ids.items() if cid in chunks}
    keys = ("chunks", "merged_chunks", "certainly_merged", "compared", "exact", "capped", "misaligned")
    totals = {k: sum(r[k] for r in per_request.values()) for k in keys}
    return {**totals, "requests": len(per_request),
            "requests_agreeing": sum(1 for r in per_request.values() if r["agree"]),
            "requests_with_merged_chunks": sum(1 for r in per_request.values() if r["merged_chunks"]),
            "agree": all(r["agree"] for r in per_request.values()), "per_request": per_request}


def served_acceptance(server_run_dir, client_run_dirs) -> dict | None:
    """Return served_comparison (without per-request detail) of the client runs against the server's
    records, or None when the server verified no draft (no speculation)."""
    from servescope.bench.load.client import engine_request_ids
    from servescope.run.directory import read_table

    emissions = read_table(server_run_dir, "token_emissions").to_pylist()
    k = max((r["num_draft_tokens"] or 0 for r in emissions), default=0)
    if k == 0:
        return None
    chunks, ids = [], {}
    for run in client_run_dirs:
        chunks += read_table(run, "client_chunks").to_pylist()
        ids.update(engine_request_ids(run, server_run_dir))
    result = served_comparison(chunks, emissions, ids, k)
    mismatched = {cid: r["mismatches"] for cid, r in result.pop("per_request").items() if r["mismatches"]}
    return {**result, "num_speculative_tokens": k, "mismatches": dict(list(mismatched.items())[:20])}
