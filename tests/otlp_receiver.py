"""Real OTLP trace receivers on loopback for tests: HTTP/protobuf and gRPC, an endpoint that hangs, and an OTLP/JSON
line decoder.

    with OtlpHttpReceiver() as receiver:
        export_run(run_dir, endpoint=receiver.endpoint)
        spans = receiver.spans()

Both receivers decode each ExportTraceServiceRequest with the generated protobuf classes of
opentelemetry-proto and keep it, with the request's headers (HTTP) or metadata (gRPC).
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

LOOPBACK = "127.0.0.1"
TRACES_PATH = "/v1/traces"


class _Store:
    """The requests a receiver got, with their headers; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []

    def add(self, request: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(request)
            self.headers.append(headers)

    def spans(self) -> list[Span]:
        """Return every span received, in arrival order."""
        with self._lock:
            return spans_of(self.requests)


def spans_of(requests: list[ExportTraceServiceRequest]) -> list[Span]:
    """Return the spans of these ExportTraceServiceRequests, in order."""
    return [span for request in requests for rs in request.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpHttpReceiver(_Store):
    """An OTLP/HTTP (protobuf) trace receiver: a threaded http.server on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        super().__init__()
        self.content_encodings: list[str | None] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != TRACES_PATH:
                    self.send_error(404, f"only {TRACES_PATH} is served")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding")
                try:
                    request = ExportTraceServiceRequest.FromString(_decode_body(body, encoding))
                except Exception as exc:
                    self.send_error(400, f"undecodable ExportTraceServiceRequest: {exc}")
                    return
                store.content_encodings.append(encoding)
                store.add(request, {k.lower(): v for k, v in self.headers.items()})
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """Return the base URL (http://127.0.0.1:<port>); OTLP/HTTP clients append /v1/traces."""
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-http-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class OtlpGrpcReceiver(_Store):
    """An OTLP/gRPC trace receiver: a TraceService server on 127.0.0.1:<free port>, plaintext."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (the generated service's name)
                store.add(request, {k: v for k, v in context.invocation_metadata()})
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._server)
        self.port = self._server.add_insecure_port(f"{LOOPBACK}:0")

    @property
    def endpoint(self) -> str:
        """Return the endpoint URL (http://127.0.0.1:<port>: plaintext gRPC)."""
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None).wait()


def _hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode()


def otlp_json_to_request(line: str) -> ExportTraceServiceRequest:
    """Return the ExportTraceServiceRequest of one OTLP/JSON line (hex ids, as the OTLP JSON mapping writes them)."""
    message = json.loads(line)
    for rs in message.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = _hex_to_b64(span[key])
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if link.get(key):
                            link[key] = _hex_to_b64(link[key])
    return json_format.ParseDict(message, ExportTraceServiceRequest())


class HangingEndpoint:
    """A loopback TCP server that accepts every connection and never reads or answers: an OTLP endpoint that hangs.

    ``accepted_wall_ns`` holds the wall-clock time (time.time_ns) of each accepted connection."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.accepted_wall_ns: list[int] = []
        self._held: list[socket.socket] = []  # kept open: the client waits for an answer that never comes
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """Return the base URL (http://127.0.0.1:<port>)."""
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            self.accepted_wall_ns.append(time.time_ns())
            self._held.append(conn)

    def __enter__(self) -> HangingEndpoint:
        self._thread = threading.Thread(target=self._accept, name="otlp-hanging-endpoint", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self._held:
            conn.close()
        if self._thread is not None:
            self._thread.join(5)
