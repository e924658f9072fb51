"""servescope's streaming client for an OpenAI-compatible server (``vllm serve``), and what it recorded.

One coroutine per request: ``StreamingClient.complete(request)`` POSTs ``/v1/completions``
with the prompt as token ids, ``"stream": true``, ``"ignore_eos": true`` and
``"return_token_ids": true`` (vLLM's extensions; ``vllm_extensions=False`` sends only standard
OpenAI fields and the prompt as text, for servers such as ``transformers serve``, which must then
stop at max_tokens by themselves), and reads the server-sent events as they arrive. It records,
on the host's CLOCK_MONOTONIC (``time.monotonic_ns()``, the engine's clock too):

* ``client_chunks``: one row per event that carried output tokens (arrival time, tokens in it);
* ``client_requests``: one row per request when it ends, whatever the end: ``ok``, ``error``
  (HTTP status, an error event mid-stream, a refused connection), ``timeout`` (the request's
  whole time limit) or ``cancelled`` (Ctrl-C, the run's end).

The request carries ``X-Request-Id: <client id>``; vLLM then names the completion
``cmpl-<client id>`` and gives the engine the external id ``cmpl-<client id>-0``, which the
front end records as the ``arrival`` event's ``detail``. ``engine_request_ids`` joins the two
sides on it; ``client_request_metrics`` rebuilds per-request latencies from the client tables
(the same ``RequestMetrics`` the engine-side analysis uses, so SLOs and summaries apply), and
``client_vs_engine`` puts client and engine TTFT and per-chunk TBT side by side.
``CompletionRequest.prompt_text`` sends text instead of the ids where that is needed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pyarrow as pa

from servescope.analysis.distributions import summarize
from servescope.analysis.request_metrics import RequestMetrics, compute_request_metrics
from servescope.bench.workloads.synthetic_tokenizer import ids_to_text
from servescope.run.data import RunData, load_run
from servescope.record.recorder import Recorder
from servescope.run.directory import read_table
from servescope.run.schema import TABLES

COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
DEFAULT_REQUEST_TIMEOUT_S = 600.0
MAX_ERROR_CHARS = 500


class EndpointError(RuntimeError):
    """The endpoint cannot be used (unreachable, or not an OpenAI-compatible server); the message names its URL."""


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One request to send: its client id, prompt token ids, max_tokens, and when it was due (ns, monotonic).

    ``prompt_text``, when set, is sent instead of the token ids (the prompt the ids encode),
    for servers that take no token-id prompts or to send exactly what a text client sends.
    """

    client_request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    scheduled_send_ns: int | None = None
    prompt_text: str | None = None


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request: times in ns (monotonic), tokens per chunk, status."""

    client_request_id: str
    prompt_tokens: int
    max_tokens: int
    scheduled_send_ns: int | None
    send_ns: int = 0
    end_ns: int = 0
    engine_request_id: str | None = None
    status: str = "ok"  # ok | error | timeout | cancelled
    error: str | None = None
    chunk_times_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        """Return the output tokens received (tokens)."""
        return sum(self.chunk_tokens)

    @property
    def ttft_s(self) -> float:
        """Return first chunk arrival minus send, in seconds (NaN without a chunk)."""
        return (self.chunk_times_ns[0] - self.send_ns) / 1e9 if self.chunk_times_ns else math.nan

    def chunk_gaps_s(self) -> list[float]:
        """Return the gaps between consecutive chunk arrivals (per-chunk TBT / ITL), in seconds."""
        t = self.chunk_times_ns
        return [(b - a) / 1e9 for a, b in zip(t, t[1:])]

    def row(self) -> tuple:
        """Return the client_requests row of this request (schema column order)."""
        return (self.client_request_id, self.engine_request_id, self.send_ns, self.end_ns, self.prompt_tokens,
                self.max_tokens, self.output_tokens, self.status, self.error, self.scheduled_send_ns)


def base_url_of(endpoint: str) -> str:
    """Return the server's base URL from an endpoint given as base, .../v1 or .../v1/completions."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"{endpoint!r}: an endpoint is an http(s) URL, e.g. http://127.0.0.1:8000")
    for suffix in (COMPLETIONS_PATH, "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


async def served_model(base_url: str, timeout_s: float = 10.0) -> dict:
    """Return the first model the server lists at /v1/models (its 'id' and 'root'; {} if it lists none); raise
    EndpointError naming the URL."""
    url = base_url + MODELS_PATH
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url) as response:
                body = await response.text()
                if response.status != 200:
                    raise EndpointError(f"{url} answered HTTP {response.status}: {body[:MAX_ERROR_CHARS]}")
    except aiohttp.ClientError as exc:
        raise EndpointError(f"cannot reach {base_url} ({url}): {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise EndpointError(f"cannot reach {base_url} ({url}): no answer in {timeout_s:g} s") from exc
    try:
        models = json.loads(body)["data"]
        return dict(models[0]) if models else {}  # {}: a server that lists nothing (transformers serve, no hub cache)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"{url} did not list a model (is this an OpenAI-compatible server?)") from exc


class StreamingClient:
    """Streams completions from one server, one coroutine per request, recording every chunk and request."""

    def __init__(self, base_url: str, model: str, *, recorder: Recorder | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, extra_body: dict | None = None,
                 text_prompts: bool = False, vllm_extensions: bool = True):
        self.base_url = base_url_of(base_url)
        self.url = self.base_url + COMPLETIONS_PATH
        self.model = model
        self.recorder = recorder
        self.request_timeout_s = request_timeout_s
        self.extra_body = dict(extra_body or {})
        self.text_prompts = text_prompts or not vllm_extensions  # prompts as the synthetic tokenizer's text
        self.vllm_extensions = vllm_extensions  # ignore_eos, return_token_ids: refused by a strict OpenAI server
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StreamingClient:
        # limit=0: no connection cap; the driver bounds the requests in flight.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                              timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def payload(self, request: CompletionRequest) -> dict:
        """Return the JSON body of one streamed completion request (prompt: its text if given, else token ids)."""
        prompt = request.prompt_token_ids if request.prompt_text is None else request.prompt_text
        if self.text_prompts and request.prompt_text is None:
            prompt = ids_to_text(request.prompt_token_ids)
        extensions = {"ignore_eos": True, "return_token_ids": True} if self.vllm_extensions else {}
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": request.max_tokens,
            "stream": True,
            **extensions,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }

    async def complete(self, request: CompletionRequest) -> RequestResult:
        """Send one request and stream its answer; return what was seen (never raises but CancelledError)."""
        if self._session is None:
            raise RuntimeError("use StreamingClient inside 'async with'")
        result = RequestResult(request.client_request_id, len(request.prompt_token_ids), request.max_tokens,
                               request.scheduled_send_ns)
        body = self.payload(request)
        headers = {"X-Request-Id": request.client_request_id}
        result.send_ns = time.monotonic_ns()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                async with self._session.post(self.url, json=body, headers=headers) as response:
                    if response.status != 200:
                        text = await response.text()
                        self._fail(result, "error", f"HTTP {response.status} from {self.url}: {text[:MAX_ERROR_CHARS]}")
                    else:
                        await self._read_stream(response, result)
        except asyncio.CancelledError:
            self._fail(result, "cancelled", "cancelled before the stream ended")
            self._finish(result)
            raise
        except TimeoutError:
            self._fail(result, "timeout", f"no complete answer within {self.request_timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(result, "error", f"{self.url}: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        except Exception as exc:  # anything else is this request's failure, not the run's
            self._fail(result, "error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        self._finish(result)
        return result

    async def _read_stream(self, response: aiohttp.ClientResponse, result: RequestResult) -> None:
        usage_tokens = None
        async for raw in response.content:  # one line at a time, as it arrives
            now = time.monotonic_ns()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators and SSE comments
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            try:
                event = json.loads(data)
            except ValueError:
                self._fail(result, "error", f"unparsable event: {data[:MAX_ERROR_CHARS]!r}")
                return
            if "error" in event:
                self._fail(result, "error", json.dumps(event["error"])[:MAX_ERROR_CHARS])
                return
            result.engine_request_id = result.engine_request_id or event.get("id")
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            tokens = sum(_tokens_in_choice(choice) for choice in event.get("choices") or ())
            if tokens:
                result.chunk_times_ns.append(now)
                result.chunk_tokens.append(tokens)
                if self.recorder is not None:
                    self.recorder.append("client_chunks", (result.client_request_id, now, tokens))
        if not result.chunk_times_ns:
            self._fail(result, "error", "the stream ended without an output token")
        elif usage_tokens is not None and usage_tokens != result.output_tokens:
            self._fail(result, "error", f"received {result.output_tokens} tokens, the server counted {usage_tokens}")

    @staticmethod
    def _fail(result: RequestResult, status: str, message: str) -> None:
        if result.status == "ok":
            result.status, result.error = status, message

    def _finish(self, result: RequestResult) -> None:
        result.end_ns = time.monotonic_ns()
        if self.recorder is not None:
            self.recorder.append("client_requests", result.row())


def _tokens_in_choice(choice: dict) -> int:
    """Return the output tokens one streamed choice carries: its token_ids, else 1 per non-empty text."""
    token_ids = choice.get("token_ids")
    if token_ids is not None:
        return len(token_ids)
    return 1 if choice.get("text") else 0  # a server without return_token_ids


def record_result(recorder: Recorder | None, result: RequestResult) -> None:
    """Append one finished request and its chunks to the client tables (for drivers without StreamingClient)."""
    if recorder is None:
        return
    for t, n in zip(result.chunk_times_ns, result.chunk_tokens):
        recorder.append("client_chunks", (result.client_request_id, t, n))
    recorder.append("client_requests", result.row())


# --------------------------------------------------------------------------- reading back


def engine_request_ids(run_dir: str | os.PathLike) -> dict[str, str]:
    """Return client_request_id -> the engine's internal request id, joined on the front end's arrival 'detail'."""
    events = read_table(run_dir, "request_events").select(["request_id", "event", "detail"]).to_pydict()
    by_external: dict[str, str] = {}
    for rid, event, detail in zip(events["request_id"], events["event"], events["detail"]):
        if event == "arrival" and detail is not None:
            by_external.setdefault(detail, rid)
    client = read_table(run_dir, "client_requests").select(["client_request_id", "engine_request_id"]).to_pydict()
    joined = {}
    for cid, eid in zip(client["client_request_id"], client["engine_request_id"]):
        # HTTP: completion id 'cmpl-<cid>', external id 'cmpl-<cid>-0'; in process: the id itself.
        for external in (eid, f"{eid}-0", f"cmpl-{cid}-0", cid):
            if external is not None and external in by_external:
                joined[cid] = by_external[external]
                break
    return joined


def client_run_data(run_dir: str | os.PathLike) -> RunData:
    """Return the client's observations as a RunData: send = 'arrival', end = 'finished' (detail: status), chunks = emissions."""
    requests = read_table(run_dir, "client_requests").to_pydict()
    chunks = read_table(run_dir, "client_chunks")
    n = len(requests["client_request_id"])
    events = pa.table(
        {
            "request_id": requests["client_request_id"] * 2,
            "event": ["arrival"] * n + ["finished"] * n,
            "time_ns": requests["send_ns"] + requests["end_ns"],
            "step_id": pa.nulls(2 * n, pa.int64()),
            "prompt_tokens": requests["prompt_tokens"] + [None] * n,
            "max_tokens": requests["max_tokens"] + [None] * n,
            "output_tokens": [None] * n + requests["output_tokens"],
            "detail": requests["client_request_id"] + requests["status"],
        },
        schema=TABLES["request_events"].arrow_schema,
    )
    emissions = pa.table(
        {
            "request_id": chunks.column("client_request_id"),
            "step_id": pa.nulls(len(chunks), pa.int64()),
            "time_ns": chunks.column("time_ns"),
            "num_tokens": chunks.column("num_tokens"),
            "num_draft_tokens": pa.nulls(len(chunks), pa.int32()),
            "num_accepted_tokens": pa.nulls(len(chunks), pa.int32()),
        },
        schema=TABLES["token_emissions"].arrow_schema,
    )
    empty = {name: TABLES[name].arrow_schema.empty_table()
             for name in ("steps", "frontend_steps", "worker_regions", "client_requests", "client_chunks")}
    return RunData(path=Path(run_dir), manifest={}, request_events=events, token_emissions=emissions, **empty)


def client_request_metrics(run_dir: str | os.PathLike) -> RequestMetrics:
    """Return per-request latencies as the client saw them (arrival = send), in the engine analysis's RequestMetrics."""
    return compute_request_metrics(client_run_data(run_dir))


def client_vs_engine(run_dir: str | os.PathLike) -> dict:
    """Return client-side and engine-side TTFT and per-chunk TBT distributions (s) of the joined requests, and their difference."""
    joined = engine_request_ids(run_dir)
    client = client_request_metrics(run_dir)
    engine = compute_request_metrics(load_run(run_dir))
    client_index = {rid: i for i, rid in enumerate(client.request_id.tolist())}
    engine_index = {rid: i for i, rid in enumerate(engine.request_id.tolist())}
    pairs = [(client_index[c], engine_index[e]) for c, e in joined.items() if c in client_index and e in engine_index]
    ci = np.asarray([c for c, _ in pairs], dtype=np.int64)
    ei = np.asarray([e for _, e in pairs], dtype=np.int64)

    def chunk_gaps(metrics: RequestMetrics, rows: np.ndarray) -> np.ndarray:
        gaps = [metrics.tbt_per_chunk(i) for i in rows.tolist()]
        return np.concatenate(gaps) if gaps else np.empty(0)

    result = {
        "joined_requests": len(pairs),
        "client_requests": len(client),
        "engine_requests": len(engine),
        "conventions": {
            "ttft": "client: first token-carrying event received - request sent; engine: first emission - "
                    "front-end arrival; difference per request (client - engine)",
            "tbt_per_chunk": "client: gaps between token-carrying events; engine: gaps between emission steps; "
                             "difference of the distributions' percentiles (client - engine)",
            "percentiles": "numpy 'linear'",
        },
    }
    for name, client_values, engine_values in (
        ("ttft_s", client.ttft_s[ci], engine.ttft_s[ei]),
        ("e2e_s", client.e2e_s[ci], engine.e2e_s[ei]),
        ("tbt_per_chunk_s", chunk_gaps(client, ci), chunk_gaps(engine, ei)),
    ):
        c, e = summarize(client_values), summarize(engine_values)
        if name == "tbt_per_chunk_s":
            difference = {k: None if c[k] is None or e[k] is None else c[k] - e[k]
                          for k in ("mean", "p50", "p90", "p99")}
        else:
            difference = summarize(client_values - engine_values)
        result[name] = {"client": c, "engine": e, "difference": difference}
    return result


def client_vs_engine_text(comparison: dict) -> str:
    """Return client_vs_engine's result as a text table, times in ms."""
    lines = [f"client vs engine ({comparison['joined_requests']} requests joined; client "
             f"{comparison['client_requests']}, engine {comparison['engine_requests']})",
             f"{'metric':<16}{'side':<12}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}"]
    for name, label in (("ttft_s", "TTFT"), ("tbt_per_chunk_s", "TBT/chunk"), ("e2e_s", "end-to-end")):
        for side in ("client", "engine", "difference"):
            stats = comparison[name][side]
            cells = "".join(f"{'-' if stats.get(k) is None else f'{stats[k] * 1e3:.2f}':>10}"
                            for k in ("p50", "p90", "p99", "mean"))
            lines.append(f"{label if side == 'client' else '':<16}{side:<12}{cells}")
    lines.append("times in ms; " + comparison["conventions"]["tbt_per_chunk"])
    return "\n".join(lines)
