"""servescope's streaming client for an OpenAI-compatible server (``vllm serve``), and what it recorded.

One coroutine per request: ``StreamingClient.complete(request)`` POSTs ``/v1/completions``
with the prompt as token ids, ``"stream": true``, ``"ignore_eos": true`` and
``"return_token_ids": true``, and reads the server-sent events as they arrive. With
``api="openai"`` (any other OpenAI-compatible server, e.g. ``transformers serve``) it sends only
the standard fields: the prompt as text (the synthetic vocabulary's words of the ids, which the
tokenizer of ``servescope model init`` encodes back to exactly those ids), ``max_tokens``,
``stream`` and ``stream_options``; tokens are then counted one per non-empty text event and checked
against the server's usage count. Server-specific fields go into ``extra_body``. It records,
on the host's CLOCK_MONOTONIC (``time.monotonic_ns()``, the engine's clock too):

* ``client_chunks``: one row per event that carried output tokens (arrival time, tokens in it);
* ``client_requests``: one row per request when it ends, whatever the end: ``ok``, ``error``
  (HTTP status, an error event mid-stream, a refused connection), ``timeout`` (the request's
  whole time limit) or ``cancelled`` (Ctrl-C, the run's end).

The request carries ``X-Request-Id: <client id>``; vLLM then names the completion
``cmpl-<client id>`` and gives the engine the external id ``cmpl-<client id>-0``, which the
front end records as the ``arrival`` event's ``detail``. Reading the tables back is the
analysis's job (re-exported here): ``analysis.client_view`` rebuilds per-request latencies from
the client tables (``client_request_metrics``: the same ``RequestMetrics`` the engine-side
analysis uses, so SLOs and summaries apply) and ``analysis.client_vs_engine`` joins the two sides
(``engine_request_ids``) and sets client and engine TTFT and per-chunk TBT side by side.
``CompletionRequest.prompt_text`` sends text instead of the ids where that is needed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import aiohttp

from servescope.analysis.client_view import client_request_metrics  # noqa: F401 (what the client recorded, read back)
from servescope.analysis.client_vs_engine import (  # noqa: F401
    client_vs_engine,
    client_vs_engine_text,
    engine_request_ids,
)
from servescope.bench.workloads.synthetic_tokenizer import ids_to_text
from servescope.record.recorder import Recorder

API_VLLM = "vllm"  # token-id prompts, ignore_eos, return_token_ids: vLLM's extensions of the API
API_OPENAI = "openai"  # the standard Completions fields only, the prompt as text
APIS = (API_VLLM, API_OPENAI)
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
DEFAULT_REQUEST_TIMEOUT_S = 600.0
MAX_ERROR_CHARS = 500
CONNECTION_LOST = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


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
    connection_lost: bool = False  # refused, reset or cut mid-stream: the server may be gone (server_watch.py)

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


async def served_model(base_url: str, timeout_s: float = 10.0, *, named: str | None = None) -> dict:
    """Return the model the server lists at /v1/models (its 'id' and 'root'); raise EndpointError naming the URL.

    The model named (bench --model) is preferred among those listed; a server that lists none serves it
    anyway when named (transformers serve lists only the models in its hub cache, not one loaded from a path)."""
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
        listed = [dict(model) for model in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise EndpointError(f"{url} did not list a model (is this an OpenAI-compatible server?)") from exc
    if listed:
        return next((model for model in listed if named is not None and model.get("id") == named), listed[0])
    if named is not None:
        return {"id": named}
    raise EndpointError(f"{url} lists no model; name the one it serves with --model")


class StreamingClient:
    """Streams completions from one server, one coroutine per request, recording every chunk and request."""

    def __init__(self, base_url: str, model: str, *, recorder: Recorder | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, extra_body: dict | None = None,
                 api: str = API_VLLM, text_prompts: bool = False):
        if api not in APIS:
            raise ValueError(f"api is one of {', '.join(APIS)}, not {api!r}")
        self.api = api
        self.text_prompts = text_prompts  # vLLM too gets each prompt as text (both engines tokenize alike)
        self.base_url = base_url_of(base_url)
        self.url = self.base_url + COMPLETIONS_PATH
        self.model = model
        self.recorder = recorder
        self.request_timeout_s = request_timeout_s
        self.extra_body = dict(extra_body or {})
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
        """Return the JSON body of one streamed completion request (token ids and vLLM's fields, or api 'openai';
        text_prompts: the prompt as the synthetic tokenizer's text of its ids with vLLM's fields too)."""
        text = request.prompt_text
        if text is None and (self.api == API_OPENAI or self.text_prompts):
            text = ids_to_text(request.prompt_token_ids)
        if self.api == API_OPENAI:
            return {"model": self.model, "prompt": text, "max_tokens": request.max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, **self.extra_body}
        return {
            "model": self.model,
            "prompt": request.prompt_token_ids if text is None else text,
            "max_tokens": request.max_tokens,
            "stream": True,
            "ignore_eos": True,
            "return_token_ids": True,
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
            result.connection_lost = isinstance(exc, CONNECTION_LOST)
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
