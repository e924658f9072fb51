"""Send a run's spans to an OTLP endpoint (HTTP/protobuf or gRPC), or write them as OTLP-JSON lines.

Target: the ``endpoint`` argument, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
OTEL_EXPORTER_OTLP_ENDPOINT. Protocol: the ``protocol`` argument, else
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else ``http/protobuf``.
Headers, compression, timeout and TLS variables are honoured by the SDK's OTLP exporters.
With no endpoint at all, the spans go to RUN/otlp/spans.jsonl: one OTLP/JSON
ExportTraceServiceRequest per line (hex ids, int64 as strings, enums as integers).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.util.re import parse_env_headers

from servescope.export.otel_spans import DEFAULT_MAX_LINKS_PER_STEP, iter_run_spans

PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"
HTTP_TRACES_PATH = "/v1/traces"
JSONL_PATH = Path("otlp") / "spans.jsonl"
MAX_SPANS_PER_BATCH = 512
MAX_LINKS_PER_BATCH = 16_384  # keeps one request near 1 MiB, under a Collector's 4 MiB gRPC default
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp",)


class OtlpExportError(RuntimeError):
    """Spans could not be delivered to the OTLP endpoint (the run directory is untouched)."""


# ---- target ----------------------------------------------------------------------------------
def resolve_protocol(protocol: str | None = None) -> str:
    """Return the OTLP protocol to use: the argument, else the OTEL_* variables, else http/protobuf."""
    chosen = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
              or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or DEFAULT_PROTOCOL).strip().lower()
    if chosen not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {chosen!r} is not supported; use one of {', '.join(PROTOCOLS)} "
                         "(or set no endpoint to write OTLP-JSON lines into the run directory)")
    return chosen


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def resolve_endpoint(endpoint: str | None, protocol: str) -> str | None:
    """Return the full traces endpoint URL (the argument, else the OTEL_* variables), or None when none is set.

    HTTP: an endpoint given without a path, like OTEL_EXPORTER_OTLP_ENDPOINT, gets /v1/traces appended;
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and endpoints with a path are used as they are. A bare
    host:port means http:// (plaintext).
    """
    signal_specific = False
    if not endpoint:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        signal_specific = bool(endpoint)
    if not endpoint:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint:
        return None
    url = _with_scheme(endpoint.strip())
    if protocol == "http/protobuf" and not signal_specific and urlparse(url).path in ("", "/"):
        url = url.rstrip("/") + HTTP_TRACES_PATH
    return url


def _header_dict(headers: Mapping[str, str] | str | None) -> dict[str, str] | None:
    if headers is None:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS
    if isinstance(headers, str):
        return dict(parse_env_headers(headers, liberal=True))
    return {str(k): str(v) for k, v in headers.items()}


def make_span_exporter(url: str, protocol: str, headers: Mapping[str, str] | str | None = None,
                       timeout_s: float | None = None) -> SpanExporter:
    """Return the SDK's OTLP span exporter for this URL and protocol."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=url, headers=_header_dict(headers), timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=url, headers=_header_dict(headers), timeout=timeout_s)


# ---- batching --------------------------------------------------------------------------------
def span_batches(spans: Iterable[ReadableSpan], max_spans: int = MAX_SPANS_PER_BATCH,
                 max_links: int = MAX_LINKS_PER_BATCH) -> Iterator[list[ReadableSpan]]:
    """Yield lists of spans with at most max_spans spans and (past the first span) max_links links."""
    batch: list[ReadableSpan] = []
    links = 0
    for span in spans:
        n = len(span.links)
        if batch and (len(batch) >= max_spans or links + n > max_links):
            yield batch
            batch, links = [], 0
        batch.append(span)
        links += n
    if batch:
        yield batch


# ---- OTLP/JSON -------------------------------------------------------------------------------
def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def otlp_json(spans: list[ReadableSpan]) -> dict:
    """Return the OTLP/JSON form of one ExportTraceServiceRequest holding these spans.

    Per the OTLP specification's JSON mapping: lowerCamelCase field names, trace and span ids
    as hex strings (not base64), 64-bit integers as decimal strings, enums as integers.
    """
    message = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in message.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _b64_to_hex(span[key])
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if key in link:
                            link[key] = _b64_to_hex(link[key])
    return message


def write_otlp_jsonl(spans: Iterable[ReadableSpan], path: Path) -> int:
    """Write the spans as OTLP/JSON lines (one request per batch) to path, atomically; return the span count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w") as f:
            for batch in span_batches(spans):
                f.write(json.dumps(otlp_json(batch), separators=(",", ":")))
                f.write("\n")
                count += len(batch)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


# ---- sending ---------------------------------------------------------------------------------
class _ExporterMessages(logging.Handler):
    """Collects what the SDK's exporters log, to name the cause of a failed export."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:
            pass


@contextmanager
def _captured_exporter_logs() -> Iterator[_ExporterMessages]:
    handler = _ExporterMessages()
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False  # the cause goes into OtlpExportError instead of stderr
    try:
        yield handler
    finally:
        for lg, propagate in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate


def send_spans(spans: Iterable[ReadableSpan], exporter: SpanExporter, *, url: str, protocol: str) -> int:
    """Export the spans in batches through exporter; return the count sent, or raise OtlpExportError."""
    sent = 0
    with _captured_exporter_logs() as log:
        try:
            for batch in span_batches(spans):
                try:
                    result = exporter.export(batch)
                except Exception as exc:  # an exporter should not raise; name it if it does
                    log.messages.append(repr(exc))
                    result = SpanExportResult.FAILURE
                if result is not SpanExportResult.SUCCESS:
                    distinct = list(dict.fromkeys(m.strip().rstrip(".") for m in log.messages))
                    cause = "; ".join(distinct[-3:]) or "the exporter reported a failure"
                    raise OtlpExportError(
                        f"OTLP export to {url} ({protocol}) failed after {sent} spans were sent: {cause}. "
                        "Is a Collector listening there? The run directory is unchanged; exporting again "
                        "sends the same trace and span ids.")
                sent += len(batch)
        finally:
            exporter.shutdown()
    return sent


def export_run(run_dir: str | os.PathLike, *, endpoint: str | None = None, protocol: str | None = None,
               headers: Mapping[str, str] | str | None = None, timeout_s: float | None = None,
               max_links_per_step: int = DEFAULT_MAX_LINKS_PER_STEP, include_request_ids: bool = False,
               strict: bool = False, warnings: list[str] | None = None) -> int:
    """Export a run's spans to the OTLP endpoint (or to RUN/otlp/spans.jsonl without one); return the span count.

    Request ids are left out unless include_request_ids (otel_spans.py: they carry the client's ids).
    The run's problems (load_run's warnings) are appended to warnings; strict raises RunDirError instead.
    """
    read = {"max_links_per_step": max_links_per_step, "include_request_ids": include_request_ids,
            "strict": strict, "warnings": warnings}
    if not (endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()):
        spans = iter_run_spans(run_dir, **read)
        return write_otlp_jsonl(spans, Path(run_dir) / JSONL_PATH)
    chosen = resolve_protocol(protocol)
    url = resolve_endpoint(endpoint, chosen)
    spans = iter_run_spans(run_dir, **read)  # reads and checks the run first
    exporter = make_span_exporter(url, chosen, headers, timeout_s)
    return send_spans(spans, exporter, url=url, protocol=chosen)
