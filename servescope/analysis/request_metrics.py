"""Per-request latency metrics of docs/metrics.md, computed from a loaded run.

One entry per request, sorted by arrival. Timestamps stay integer nanoseconds on the
host's CLOCK_MONOTONIC (``*_ns``, ``MISSING_NS`` where not recorded); durations are
float seconds (``*_s``, NaN where undefined). Every output token's emission time is
kept in ragged arrays (flat values + offsets), so TBT distributions are over tokens.

Everything is vectorised over requests and tokens (argsort, bincount, repeat): no
Python loop runs per token or per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servescope.run.data import RunData
from servescope.run.names import RequestEvent

NS_PER_S = 1e9
MISSING_NS = np.iinfo(np.int64).min  # a timestamp that was not recorded
UNKNOWN_COUNT = -1  # a token count that was not recorded (prompt_tokens)

# Lifecycle events in the order that breaks ties between equal timestamps: a
# preemption ends at the next 'scheduled', even one in the same nanosecond.
EVENT_ORDER = (RequestEvent.ARRIVAL, RequestEvent.QUEUED, RequestEvent.PREEMPTED, RequestEvent.SCHEDULED,
               RequestEvent.FINISHED)
ARRIVAL, QUEUED, PREEMPTED, SCHEDULED, FINISHED = range(len(EVENT_ORDER))
_BLOCK = 1 << 23  # rows per block where a whole-table temporary would cost memory


@dataclass(eq=False)
class RequestMetrics:
    """Per-request timestamps (ns), token counts and latency metrics (s), sorted by arrival."""

    request_id: np.ndarray  # object (str)
    prompt_tokens: np.ndarray  # int64, UNKNOWN_COUNT where not recorded
    output_tokens: np.ndarray  # int64, N_d: tokens in token_emissions
    arrival_ns: np.ndarray  # int64: 'arrival' event, else 'queued' (see arrival_from_queue)
    arrival_from_queue: np.ndarray  # bool: no 'arrival' event, arrival_ns is the 'queued' time
    queued_ns: np.ndarray  # int64
    first_scheduled_ns: np.ndarray  # int64: s
    first_token_ns: np.ndarray  # int64: t_0
    last_token_ns: np.ndarray  # int64: t_{n-1}
    finished_ns: np.ndarray  # int64
    finish_reason: np.ndarray  # object (str or None)
    preemptions: np.ndarray  # int64
    preempted_s: np.ndarray  # float64: preempted -> next scheduled (or finished); NaN if still open
    ttft_s: np.ndarray  # t_0 - a
    scheduling_delay_s: np.ndarray  # T_s = s - a
    prefill_s: np.ndarray  # T_p = t_0 - s
    decode_s: np.ndarray  # T_d = t_{n-1} - t_0
    e2e_s: np.ndarray  # t_{n-1} - a
    ttst_s: np.ndarray  # t_1 - t_0, NaN if n < 2
    tpot_s: np.ndarray  # T_d / (n - 1), NaN if n < 2
    normalized_latency_s: np.ndarray  # (T_s + T_p + T_d) / N_d
    token_times_ns: np.ndarray  # int64, one per output token, request i at token_offsets[i:i+2]
    token_offsets: np.ndarray  # int64, n_requests + 1
    chunk_times_ns: np.ndarray  # int64, one per emission row (step carrying >= 1 token)
    chunk_num_tokens: np.ndarray  # int32
    chunk_step_ids: np.ndarray  # int64 (-1 where not recorded)
    chunk_offsets: np.ndarray  # int64, n_requests + 1

    def __len__(self) -> int:
        return len(self.request_id)

    def tbt_per_token(self, i: int) -> np.ndarray:
        """Return request i's gaps t_k - t_{k-1} (k >= 1) in seconds, 0 inside a multi-token chunk."""
        lo, hi = self.token_offsets[i], self.token_offsets[i + 1]
        return np.diff(self.token_times_ns[lo:hi]) / NS_PER_S

    def tbt_per_chunk(self, i: int) -> np.ndarray:
        """Return request i's gaps between consecutive emission rows (chunks) in seconds."""
        lo, hi = self.chunk_offsets[i], self.chunk_offsets[i + 1]
        return np.diff(self.chunk_times_ns[lo:hi]) / NS_PER_S

    def all_tbt_per_token_s(self) -> np.ndarray:
        """Return every request's per-token gaps in seconds, concatenated in request order."""
        return ragged_gaps_s(self.token_times_ns, self.token_offsets)

    def all_tbt_per_chunk_s(self) -> np.ndarray:
        """Return every request's per-chunk gaps in seconds, concatenated in request order."""
        return ragged_gaps_s(self.chunk_times_ns, self.chunk_offsets)

    def tbt_per_token_offsets(self) -> np.ndarray:
        """Return offsets (n_requests + 1) of each request's gaps in all_tbt_per_token_s()."""
        return ragged_gap_offsets(self.token_offsets)

    def tbt_per_chunk_offsets(self) -> np.ndarray:
        """Return offsets (n_requests + 1) of each request's gaps in all_tbt_per_chunk_s()."""
        return ragged_gap_offsets(self.chunk_offsets)


# The per-request arrays of RequestMetrics and its ragged (values, offsets) pairs: what take_requests selects.
PER_REQUEST_FIELDS = ("request_id", "prompt_tokens", "output_tokens", "arrival_ns", "arrival_from_queue", "queued_ns",
                      "first_scheduled_ns", "first_token_ns", "last_token_ns", "finished_ns", "finish_reason",
                      "preemptions", "preempted_s", "ttft_s", "scheduling_delay_s", "prefill_s", "decode_s", "e2e_s",
                      "ttst_s", "tpot_s", "normalized_latency_s")
RAGGED_FIELDS = (("token_offsets", ("token_times_ns",)),
                 ("chunk_offsets", ("chunk_times_ns", "chunk_num_tokens", "chunk_step_ids")))


def take_requests(metrics: RequestMetrics, rows: np.ndarray) -> RequestMetrics:
    """Return the RequestMetrics of the given requests only (row indices, in the order given); units unchanged."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == len(metrics) and np.array_equal(rows, np.arange(len(metrics))):
        return metrics
    values = {name: getattr(metrics, name)[rows] for name in PER_REQUEST_FIELDS}
    for offsets_name, names in RAGGED_FIELDS:
        offsets = getattr(metrics, offsets_name)
        starts = offsets[rows]
        lengths = offsets[rows + 1] - starts
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        index = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
        values[offsets_name] = new_offsets
        values.update({name: getattr(metrics, name)[index] for name in names})
    return RequestMetrics(**values)


def ragged_gaps_s(times_ns: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return the gaps between consecutive times inside each segment, in seconds, flattened."""
    n = len(times_ns)
    if n < 2:
        return np.empty(0)
    keep = np.ones(n - 1, dtype=bool)
    starts = offsets[1:-1]  # the gap ending at a segment's first entry crosses segments
    keep[starts[(starts > 0) & (starts < n)] - 1] = False
    out = np.empty(int(keep.sum()))
    written = 0
    for start in range(0, n - 1, _BLOCK):  # blocks: no n-sized int64 temporaries
        stop = min(start + _BLOCK, n - 1)
        gaps = (times_ns[start + 1:stop + 1] - times_ns[start:stop])[keep[start:stop]]
        np.divide(gaps, NS_PER_S, out=out[written:written + len(gaps)])
        written += len(gaps)
    return out


def ragged_gap_offsets(offsets: np.ndarray) -> np.ndarray:
    """Return the offsets of each segment's gaps (segment length - 1, at least 0) in ragged_gaps_s."""
    gap_counts = np.maximum(np.diff(offsets), 1) - 1
    return np.concatenate([[0], np.cumsum(gap_counts)]).astype(np.int64)


def compute_request_metrics(run: RunData) -> RequestMetrics:
    """Return per-request timestamps (ns) and metrics (s) for every request of the run, by arrival."""
    events = run.request_events
    emission_ids = run.token_emissions.column("request_id")
    universe = _request_universe(events.column("request_id"), emission_ids)
    lifecycle = _lifecycle(events, universe)

    # Sort requests by arrival; requests with no arrival or queued event go by their
    # first event, and requests seen only in token_emissions go last.
    known = lifecycle["arrival_ns"] != MISSING_NS
    sort_key = np.where(known, lifecycle["arrival_ns"], lifecycle["first_event_ns"])
    sort_key[sort_key == MISSING_NS] = np.iinfo(np.int64).max
    order = np.argsort(sort_key, kind="stable")
    rank = np.empty(len(universe), dtype=np.int32)
    rank[order] = np.arange(len(universe), dtype=np.int32)
    lifecycle = {name: values[order] for name, values in lifecycle.items()}

    tokens = _token_arrays(run.token_emissions, universe, rank)
    return _assemble(universe.take(pa.array(order)), lifecycle, tokens)


def _request_universe(event_ids: pa.ChunkedArray, emission_ids: pa.ChunkedArray) -> pa.Array:
    """Return every request id in the run once (lifecycle events first, then emission-only ids)."""
    keys = [c.cast(pa.string()) for c in event_ids.chunks]
    for chunk in emission_ids.chunks:
        keys.append(chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk)
    if not keys:
        return pa.array([], pa.string())
    return pc.drop_null(pc.unique(pa.chunked_array(keys, type=pa.string())))


def _lifecycle(events: pa.Table, universe: pa.Array) -> dict[str, np.ndarray]:
    """Return per-request lifecycle arrays in universe order, from the request_events table."""
    n = len(universe)
    req = _filled(pc.index_in(events.column("request_id"), value_set=universe), -1)
    code = _filled(pc.index_in(events.column("event"), value_set=pa.array(EVENT_ORDER)), -1)
    time_ns = _filled(events.column("time_ns"), MISSING_NS)
    valid = (req >= 0) & (code >= 0) & (time_ns != MISSING_NS)
    rows = np.flatnonzero(valid)
    order = rows[np.lexsort((code[rows], time_ns[rows], req[rows]))]
    req, code, time_ns = req[order], code[order], time_ns[order]

    def first_time(event: int) -> np.ndarray:
        return _first_per_request(req, time_ns, code == event, n, MISSING_NS)

    prompt = _filled(events.column("prompt_tokens"), UNKNOWN_COUNT)[order].astype(np.int64)
    prompt_from = {e: _first_per_request(req, prompt, (code == e) & (prompt >= 0), n, UNKNOWN_COUNT)
                   for e in (ARRIVAL, QUEUED)}
    finished_row = _first_per_request(req, order, code == FINISHED, n, -1)
    finish_reason = np.full(n, None, dtype=object)
    has_finished = finished_row >= 0
    finish_reason[has_finished] = (
        np.asarray(events.column("detail").take(pa.array(finished_row[has_finished])), dtype=object)
    )
    arrival_event = first_time(ARRIVAL)
    queued = first_time(QUEUED)
    arrival_from_queue = (arrival_event == MISSING_NS) & (queued != MISSING_NS)
    preemptions, preempted_s = _preemptions(req, code, time_ns, n)
    return {
        "arrival_ns": np.where(arrival_from_queue, queued, arrival_event),
        "arrival_from_queue": arrival_from_queue,
        "queued_ns": queued,
        "first_scheduled_ns": first_time(SCHEDULED),
        "finished_ns": first_time(FINISHED),
        "finish_reason": finish_reason,
        "first_event_ns": _first_per_request(req, time_ns, np.ones(len(req), bool), n, MISSING_NS),
        "prompt_tokens": np.where(prompt_from[QUEUED] >= 0, prompt_from[QUEUED], prompt_from[ARRIVAL]),
        "preemptions": preemptions,
        "preempted_s": preempted_s,
    }


def _preemptions(req: np.ndarray, code: np.ndarray, time_ns: np.ndarray, n: int):
    """Return per-request preemption counts and seconds preempted, from events sorted by request, time.

    A preemption lasts until the request's next 'scheduled' event, else its 'finished'
    event; one with neither is still open when recording stopped: NaN seconds.
    """
    preempted_at = np.flatnonzero(code == PREEMPTED)
    end_ns = _next_event_ns(req, code, time_ns, preempted_at, SCHEDULED)
    unresumed = end_ns == MISSING_NS
    end_ns[unresumed] = _next_event_ns(req, code, time_ns, preempted_at[unresumed], FINISHED)
    owner = req[preempted_at]
    closed = end_ns != MISSING_NS
    counts = np.bincount(owner, minlength=n).astype(np.int64)
    seconds = np.bincount(owner[closed], weights=end_ns[closed] - time_ns[preempted_at[closed]],
                          minlength=n) / NS_PER_S
    seconds[np.bincount(owner[~closed], minlength=n) > 0] = np.nan
    return counts, seconds


def _next_event_ns(req: np.ndarray, code: np.ndarray, time_ns: np.ndarray, rows: np.ndarray,
                   event: int) -> np.ndarray:
    """Return, for each row, the time of its request's next `event` row (rows sorted by request, time)."""
    out = np.full(len(rows), MISSING_NS)
    candidates = np.flatnonzero(code == event)
    nxt = np.searchsorted(candidates, rows, side="right")
    found = np.flatnonzero(nxt < len(candidates))
    end_row = candidates[nxt[found]]
    same_request = req[end_row] == req[rows[found]]
    out[found[same_request]] = time_ns[end_row[same_request]]
    return out


def _token_arrays(emissions: pa.Table, universe: pa.Array, rank: np.ndarray) -> dict[str, np.ndarray]:
    """Return emission rows grouped by request (in rank order) and by time within one: the ragged arrays."""
    n = len(universe)
    req = _request_index(emissions.column("request_id"), universe, rank)
    _drop_unusable_emissions(emissions, req)
    dropped = req < 0
    counts = np.bincount(req[~dropped] if dropped.any() else req, minlength=n)
    del dropped
    chunk_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    kept = int(chunk_offsets[-1])
    destination = _grouped_destination(req, kept)
    del req
    chunk_times_ns = _scatter(emissions.column("time_ns"), destination, kept, MISSING_NS)
    chunk_num_tokens = _scatter(emissions.column("num_tokens"), destination, kept, 0)
    chunk_step_ids = _scatter(emissions.column("step_id"), destination, kept, -1)
    del destination

    # Within a request, emission rows keep file order; an engine writes them in step
    # order, so they are time-ordered unless parts were concatenated out of order.
    out_of_order = chunk_times_ns[1:] < chunk_times_ns[:-1]
    boundaries = chunk_offsets[1:-1]
    out_of_order[boundaries[(boundaries > 0) & (boundaries < len(chunk_times_ns))] - 1] = False
    if out_of_order.any():
        owner = np.repeat(np.arange(n), counts)
        fix = np.lexsort((chunk_step_ids, chunk_times_ns, owner))
        chunk_times_ns, chunk_num_tokens, chunk_step_ids = (
            chunk_times_ns[fix], chunk_num_tokens[fix], chunk_step_ids[fix])
    del out_of_order

    if chunk_num_tokens.sum(dtype=np.int64) == len(chunk_num_tokens):
        # One token per row (every row has >= 1): token arrays are the chunk arrays, no copy.
        token_offsets, token_times_ns = chunk_offsets, chunk_times_ns
    else:
        tokens_per_request = np.zeros(n, dtype=np.int64)
        emitting = counts > 0
        tokens_per_request[emitting] = np.add.reduceat(
            chunk_num_tokens, chunk_offsets[:-1][emitting], dtype=np.int64)
        token_offsets = np.concatenate([[0], np.cumsum(tokens_per_request)]).astype(np.int64)
        token_times_ns = np.repeat(chunk_times_ns, chunk_num_tokens)
    return {
        "token_times_ns": token_times_ns,
        "token_offsets": token_offsets,
        "chunk_times_ns": chunk_times_ns,
        "chunk_num_tokens": chunk_num_tokens,
        "chunk_step_ids": chunk_step_ids,
        "chunk_offsets": chunk_offsets,
    }


def _drop_unusable_emissions(emissions: pa.Table, req: np.ndarray) -> None:
    """Set req to -1 for rows without a time or with no tokens (num_tokens null or <= 0)."""
    time_ns, num_tokens = emissions.column("time_ns"), emissions.column("num_tokens")
    if len(req) == 0 or not (time_ns.null_count or num_tokens.null_count
                             or pc.min(num_tokens).as_py() <= 0):
        return
    unusable = pc.or_(pc.is_null(time_ns), pc.invert(pc.fill_null(pc.greater(num_tokens, 0), False)))
    req[np.asarray(unusable)] = -1


def _grouped_destination(req: np.ndarray, n_kept: int) -> np.ndarray:
    """Return each row's position once rows are grouped by request, file order kept inside one (int32, -1: dropped)."""
    order = np.argsort(req, kind="stable")  # dropped rows (-1) first
    order = order[len(order) - n_kept:]
    destination = np.full(len(req), -1, dtype=np.int32 if len(req) < 2**31 else np.int64)
    for start in range(0, n_kept, _BLOCK):  # blocks: no n-sized arange temporary
        stop = min(start + _BLOCK, n_kept)
        destination[order[start:stop]] = np.arange(start, stop, dtype=destination.dtype)
    return destination


def _scatter(column: pa.ChunkedArray, destination: np.ndarray, size: int, fill) -> np.ndarray:
    """Return the column's values moved to their destination rows, straight from its Arrow chunks."""
    out = np.empty(size, dtype=column.type.to_pandas_dtype())
    row = 0
    for chunk in column.chunks:
        values = _filled(chunk, fill)
        where = destination[row:row + len(chunk)]
        kept = where >= 0
        if kept.all():
            out[where] = values
        else:
            out[where[kept]] = values[kept]
        row += len(chunk)
    return out


def _request_index(ids: pa.ChunkedArray, universe: pa.Array, rank: np.ndarray) -> np.ndarray:
    """Return, per row, the request's position in arrival order (int32; -1 for a null id)."""
    if not pa.types.is_dictionary(ids.type):
        return _rank_of(pc.index_in(ids, value_set=universe), rank)
    # Look every chunk's (small) dictionary up in one pass, then map each row through
    # its chunk's dictionary indices: no string is hashed per row.
    dictionaries = [chunk.dictionary for chunk in ids.chunks]
    entry_rank = _rank_of(pc.index_in(pa.chunked_array(dictionaries, pa.string()), value_set=universe), rank)
    out = np.empty(len(ids), dtype=np.int32)
    row = entry = 0
    for chunk, dictionary in zip(ids.chunks, dictionaries):
        np.take(entry_rank[entry:entry + len(dictionary)], _filled(chunk.indices, 0),
                out=out[row:row + len(chunk)])
        if chunk.null_count:
            out[row:row + len(chunk)][np.asarray(pc.is_null(chunk))] = -1
        row += len(chunk)
        entry += len(dictionary)
    return out


def _rank_of(universe_index, rank: np.ndarray) -> np.ndarray:
    """Return rank[index] for each entry (int32), -1 where the index is null."""
    index = _filled(universe_index, -1)
    out = np.full(len(index), -1, dtype=np.int32)
    found = index >= 0
    out[found] = rank[index[found]]
    return out


def _first_per_request(req: np.ndarray, values: np.ndarray, mask: np.ndarray, n: int, fill) -> np.ndarray:
    """Return, per request, values at the first masked row (rows sorted by request), else fill."""
    out = np.full(n, fill, dtype=values.dtype)
    r, v = req[mask], values[mask]
    if len(r):
        first = np.concatenate([[True], r[1:] != r[:-1]])
        out[r[first]] = v[first]
    return out


def _filled(column, fill) -> np.ndarray:
    """Return an Arrow integer (chunked) array as a numpy array, nulls replaced by fill."""
    if column.null_count:
        column = pc.fill_null(column, fill)
    return np.asarray(column)


def _assemble(request_ids: pa.Array, lifecycle: dict, tokens: dict) -> RequestMetrics:
    """Return RequestMetrics: derive the durations (s) from timestamps (ns) and token times."""
    token_offsets = tokens["token_offsets"]
    token_times = tokens["token_times_ns"]
    n_tokens = np.diff(token_offsets)
    has = n_tokens >= 1
    has2 = n_tokens >= 2
    first_token = np.full(len(n_tokens), MISSING_NS)
    last_token = np.full(len(n_tokens), MISSING_NS)
    second_token = np.full(len(n_tokens), MISSING_NS)
    first_token[has] = token_times[token_offsets[:-1][has]]
    last_token[has] = token_times[token_offsets[1:][has] - 1]
    second_token[has2] = token_times[token_offsets[:-1][has2] + 1]

    a = lifecycle["arrival_ns"]
    s = lifecycle["first_scheduled_ns"]
    decode = _seconds(last_token, first_token)
    e2e = _seconds(last_token, a)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(has2, decode / (n_tokens - 1), np.nan)
        normalized = np.where(has, e2e / n_tokens, np.nan)
    return RequestMetrics(
        request_id=np.asarray(request_ids, dtype=object),
        prompt_tokens=lifecycle["prompt_tokens"],
        output_tokens=n_tokens,
        arrival_ns=a,
        arrival_from_queue=lifecycle["arrival_from_queue"],
        queued_ns=lifecycle["queued_ns"],
        first_scheduled_ns=s,
        first_token_ns=first_token,
        last_token_ns=last_token,
        finished_ns=lifecycle["finished_ns"],
        finish_reason=lifecycle["finish_reason"],
        preemptions=lifecycle["preemptions"],
        preempted_s=lifecycle["preempted_s"],
        ttft_s=_seconds(first_token, a),
        scheduling_delay_s=_seconds(s, a),
        prefill_s=_seconds(first_token, s),
        decode_s=decode,
        e2e_s=e2e,
        ttst_s=_seconds(second_token, first_token),
        tpot_s=tpot,
        normalized_latency_s=normalized,
        **tokens,
    )


def _seconds(end_ns: np.ndarray, start_ns: np.ndarray) -> np.ndarray:
    """Return (end - start) in seconds, exact in integer ns first; NaN where either is missing."""
    out = np.full(len(end_ns), np.nan)
    ok = (end_ns != MISSING_NS) & (start_ns != MISSING_NS)
    out[ok] = (end_ns[ok] - start_ns[ok]) / NS_PER_S
    return out
