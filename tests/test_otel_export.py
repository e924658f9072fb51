"""OpenTelemetry export of a run directory, checked through real OTLP receivers on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from servescope.export.otel_export import (
    OtlpExportError,
    export_run,
    otlp_json,
    resolve_endpoint,
    span_batches,
)
from servescope.export.otel_spans import build_run_spans
from servescope.run.directory import RunDirError, write_json
from servescope.run.parts import write_part
from servescope.run.schema import TABLES

from otlp_receiver import (  # tests/ is on sys.path (conftest.py)
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    free_loopback_port,
    otlp_json_to_request,
    spans_of,
)
from runbuilder import RunBuilder

MS = 1_000_000
S = 1_000_000_000
ENGINE_WALL_NS = 1_700_000_000_000_000_000
ENGINE_MONO_NS = 5 * S
OFFSET = ENGINE_WALL_NS - ENGINE_MONO_NS  # what the EngineCore's anchor says
T0 = 10 * S  # the run's monotonic origin, for readable times below
RUN_ID = "run-otel-test"
MODEL = "org/tiny-llama"
DP0, DP1, FRONT = 1, 4343, 1000  # RunBuilder names its parts builder-1-<k>: pid 1


# ---- the run under test ------------------------------------------------------------------------
def _write_part(run_dir: Path, table: str, role: str, pid: int, rows: list[dict]) -> None:
    """Write one indexed part as the recorder names it: tables/<table>/<role>-<pid>-<seq>.parquet."""
    spec = TABLES[table]
    columns = {c.name: [row.get(c.name) for row in rows] for c in spec.columns}
    write_part(run_dir, table, pa.table(columns, schema=spec.arrow_schema), writer=f"{role}-{pid}",
               name=f"{role}-{pid}-000001")


def _ev(rid, event, ms, step=None, prompt=None, max_tokens=None, out=None, detail=None) -> dict:
    return dict(request_id=rid, event=event, time_ns=T0 + int(ms * MS), step_id=step, prompt_tokens=prompt,
                max_tokens=max_tokens, output_tokens=out, detail=detail)


def _tok(rid, step, ms, n, drafted=None, accepted=None) -> dict:
    return dict(request_id=rid, step_id=step, time_ns=T0 + int(ms * MS), num_tokens=n,
                num_draft_tokens=drafted, num_accepted_tokens=accepted)


def _step(step_id, engine_index, start_ms, *, wait=True, emitted=0, finished=0) -> dict:
    t = T0 + int(start_ms * MS)
    return dict(step_id=step_id, engine_index=engine_index,
                schedule_start_ns=t, schedule_end_ns=t + MS // 2,
                execute_start_ns=t + MS // 2, execute_end_ns=t + MS,
                wait_start_ns=t + MS if wait else None, wait_end_ns=t + 7 * MS if wait else None,
                update_start_ns=t + 7 * MS, update_end_ns=t + 8 * MS,
                engine_timestamp_ns=t + 8 * MS, total_scheduled_tokens=12, num_prefill_reqs=1,
                num_prefill_tokens=10, num_decode_reqs=2, num_decode_tokens=2, num_spec_tokens=0,
                num_running_reqs=3, num_waiting_reqs=0, kv_cache_usage=0.25, num_preempted_reqs=0,
                num_emitted_tokens=emitted, num_finished_reqs=finished)


# Steps of EngineCore DP0 (ms after T0): 0: 2..10, 1: 12..20, 2: 21..29, 3: 31..39 (update_end = emission).
# Step 0 of EngineCore DP1: 3..11. Both EngineCores have a step 0: links must not mix them.
EXPECTED_LINKS = {  # (pid, step_id) -> request ids whose tokens the step emitted
    (DP0, 0): {"req-a", "req-b"},
    (DP0, 1): {"req-a"},
    (DP0, 2): {"req-a"},
    (DP0, 3): {"req-b", "req-c"},
    (DP1, 0): {"req-d"},
}
NUM_REQUESTS = 4
NUM_STEPS = 5
NUM_PHASE_SPANS = 5 * 4 - 1  # step 1 of DP0 has no wait phase recorded
NUM_SPANS = NUM_REQUESTS + NUM_STEPS + NUM_PHASE_SPANS


def build_run(root: Path, *, req_d_finish_reason: str = "stop") -> Path:
    """Write a two-EngineCore run: four requests (one preempted, one unfinished), five steps.

    RunBuilder writes the front end's and EngineCore DP0's rows (its parts carry pid 1); the
    data-parallel EngineCore DP1 writes its own parts, as a second process does.
    """
    builder = RunBuilder(root, manifest={"run_id": RUN_ID})
    for row in (
        _ev("req-a", "arrival", 0.0, prompt=7, max_tokens=16, detail="cmpl-a"),
        _ev("req-b", "arrival", 0.5, prompt=5, max_tokens=2, detail="cmpl-b"),
        _ev("req-c", "arrival", 25.0, prompt=3, max_tokens=8, detail="cmpl-c"),
        _ev("req-d", "arrival", 0.1, prompt=4, max_tokens=1, detail="cmpl-d"),
        _ev("req-a", "queued", 1.0, prompt=7, max_tokens=16),
        _ev("req-b", "queued", 1.5, prompt=5, max_tokens=2),
        _ev("req-a", "scheduled", 2.0, step=0),
        _ev("req-b", "scheduled", 2.0, step=0),
        _ev("req-b", "preempted", 21.0, step=2, out=1),
        _ev("req-a", "finished", 29.0, step=2, detail="stop"),
        _ev("req-c", "queued", 26.0, prompt=3, max_tokens=8),
        _ev("req-b", "scheduled", 31.0, step=3),
        _ev("req-c", "scheduled", 31.0, step=3),
        _ev("req-b", "finished", 39.0, step=3, detail="length"),
    ):
        builder.row("request_events", **row)
    for row in (
        _tok("req-a", 0, 10.0, 1), _tok("req-b", 0, 10.0, 1),
        _tok("req-a", 1, 20.0, 1),
        _tok("req-a", 2, 29.0, 2, drafted=3, accepted=1),
        _tok("req-b", 3, 39.0, 1), _tok("req-c", 3, 39.0, 1),
    ):
        builder.row("token_emissions", **row)
    for row in (_step(0, 0, 2.0, emitted=2), _step(1, 0, 12.0, wait=False, emitted=1),
                _step(2, 0, 21.0, emitted=2, finished=1), _step(3, 0, 31.0, emitted=2, finished=1)):
        builder.row("steps", **row)
    run_dir = builder.write()

    _write_part(run_dir, "request_events", "EngineCore_DP1", DP1, [
        _ev("req-d", "queued", 1.1, prompt=4, max_tokens=1),
        _ev("req-d", "scheduled", 3.0, step=0),
        _ev("req-d", "finished", 11.0, step=0, detail=req_d_finish_reason),
    ])
    _write_part(run_dir, "token_emissions", "EngineCore_DP1", DP1, [_tok("req-d", 0, 11.0, 1)])
    _write_part(run_dir, "steps", "EngineCore_DP1", DP1, [_step(0, 1, 3.0, emitted=1, finished=1)])

    write_json(run_dir / "processes" / f"{FRONT}.json",  # another anchor, 3 us off: must not be used
               {"pid": FRONT, "role": "MainProcess", "wall_ns": ENGINE_WALL_NS + 3000, "monotonic_ns": ENGINE_MONO_NS})
    for pid, role in ((DP0, "EngineCore_DP0"), (DP1, "EngineCore_DP1")):
        write_json(run_dir / "processes" / f"{pid}.json",
                   {"pid": pid, "role": role, "wall_ns": ENGINE_WALL_NS, "monotonic_ns": ENGINE_MONO_NS})
    write_json(run_dir / "engine" / f"EngineCore_DP0-{DP0}.json",
               {"role": "EngineCore_DP0", "pid": DP0, "engine": {"name": "vllm", "version": "0.26.0"},
                "model": {"path": MODEL}, "host": {"hostname": "testhost"}})
    return run_dir


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch):
    """Every test starts without OTEL_* variables, so the machine's settings cannot leak in."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return build_run(tmp_path)


# ---- helpers to read received spans -------------------------------------------------------------
def attrs(span) -> dict:
    """Return a protobuf span's (or link's, event's) attributes as plain Python values."""
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


def request_spans(spans) -> dict[str, Span]:
    return {attrs(s)["servescope.request_id"]: s for s in spans if "servescope.request_id" in attrs(s)}


def step_spans(spans) -> dict[tuple[int, int], Span]:
    return {(attrs(s)["servescope.step.engine_pid"], attrs(s)["servescope.step.step_id"]): s
            for s in spans if s.name == "servescope.step"}


def run_dir_snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def export_over_http(run_dir: Path, **kwargs) -> tuple[int, list[Span], OtlpHttpReceiver]:
    """Export over HTTP to a real receiver; request ids included unless the caller says otherwise."""
    kwargs.setdefault("include_request_ids", True)
    with OtlpHttpReceiver() as receiver:
        count = export_run(run_dir, endpoint=receiver.endpoint, **kwargs)
    return count, receiver.spans(), receiver


# ---- HTTP/protobuf -------------------------------------------------------------------------------
def test_http_export_sends_every_span_once(run_dir):
    count, spans, receiver = export_over_http(run_dir)
    assert count == NUM_SPANS == len(spans)
    assert len({(s.trace_id, s.span_id) for s in spans}) == NUM_SPANS
    names = sorted(s.name for s in spans)
    assert names.count(f"text_completion {MODEL}") == NUM_REQUESTS
    assert names.count("servescope.step") == NUM_STEPS
    assert names.count("servescope.step.wait") == NUM_STEPS - 1
    for phase in ("schedule", "execute", "update"):
        assert names.count(f"servescope.step.{phase}") == NUM_STEPS
    resource = {kv.key: kv.value.string_value for kv in receiver.requests[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "vllm"
    assert resource["servescope.run_id"] == RUN_ID
    assert resource["service.version"] == "0.26.0"
    assert receiver.requests[0].resource_spans[0].scope_spans[0].scope.name == "servescope"


def test_request_spans_carry_genai_attributes(run_dir):
    _, spans, _ = export_over_http(run_dir)
    requests = request_spans(spans)
    assert set(requests) == {"req-a", "req-b", "req-c", "req-d"}
    a = requests["req-a"]
    assert a.kind == Span.SPAN_KIND_SERVER
    assert a.parent_span_id == b""
    got = attrs(a)
    assert got["gen_ai.operation.name"] == "text_completion"
    assert got["gen_ai.provider.name"] == "vllm"
    assert got["gen_ai.system"] == "vllm"
    assert got["gen_ai.request.model"] == MODEL
    assert got["gen_ai.request.max_tokens"] == 16
    assert got["gen_ai.response.id"] == "cmpl-a"
    assert got["gen_ai.response.finish_reasons"] == ["stop"]
    assert got["gen_ai.usage.input_tokens"] == 7
    assert got["gen_ai.usage.output_tokens"] == 4
    assert got["gen_ai.server.time_to_first_token"] == pytest.approx(0.010)
    assert got["gen_ai.server.time_per_output_token"] == pytest.approx(0.019 / 3)
    assert got["servescope.scheduling_delay_s"] == pytest.approx(0.002)
    assert got["servescope.prefill_s"] == pytest.approx(0.008)
    assert got["servescope.decode_s"] == pytest.approx(0.019)
    assert got["servescope.preemptions"] == 0
    assert "servescope.unfinished" not in got

    b = attrs(requests["req-b"])
    assert b["gen_ai.response.finish_reasons"] == ["length"]
    assert b["servescope.preemptions"] == 1
    assert b["servescope.preempted_s"] == pytest.approx(0.010)  # preempted at 21 ms, rescheduled at 31 ms
    c = attrs(requests["req-c"])
    assert c["servescope.unfinished"] is True
    assert "gen_ai.response.finish_reasons" not in c
    d = attrs(requests["req-d"])
    assert "gen_ai.server.time_per_output_token" not in d  # one output token: no TPOT


def test_a_request_finished_by_an_error_has_error_status(tmp_path):
    _, spans, _ = export_over_http(build_run(tmp_path, req_d_finish_reason="error"))
    requests = request_spans(spans)
    assert requests["req-d"].status.code == requests["req-d"].status.STATUS_CODE_ERROR
    assert attrs(requests["req-d"])["error.type"] == "error"
    assert requests["req-a"].status.code == requests["req-a"].status.STATUS_CODE_UNSET


def test_request_span_times_and_events_are_on_the_engine_wall_clock(run_dir):
    _, spans, _ = export_over_http(run_dir)
    requests = request_spans(spans)
    a = requests["req-a"]
    assert a.start_time_unix_nano == OFFSET + T0  # arrival
    assert a.end_time_unix_nano == OFFSET + T0 + 29 * MS  # finished
    c = requests["req-c"]
    assert c.end_time_unix_nano == OFFSET + T0 + 39 * MS  # unfinished: its last token
    b = requests["req-b"]
    events = [(e.name, e.time_unix_nano - OFFSET - T0, attrs(e)) for e in b.events]
    assert events == [
        ("queued", int(1.5 * MS), {}),
        ("scheduled", 2 * MS, {"servescope.step_id": 0}),
        ("first_token", 10 * MS, {}),
        ("preempted", 21 * MS, {"servescope.step_id": 2, "servescope.output_tokens": 1}),
        ("scheduled", 31 * MS, {"servescope.step_id": 3}),
    ]


def test_step_spans_link_to_the_requests_whose_tokens_they_emitted(run_dir):
    _, spans, _ = export_over_http(run_dir)
    requests = request_spans(spans)
    ids_of = {(s.trace_id, s.span_id): rid for rid, s in requests.items()}
    steps = step_spans(spans)
    assert set(steps) == set(EXPECTED_LINKS)
    for key, step in steps.items():
        linked = {ids_of[(link.trace_id, link.span_id)] for link in step.links}
        assert linked == EXPECTED_LINKS[key], key
        assert attrs(step)["servescope.step.links_dropped"] == 0
        assert step.dropped_links_count == 0
    spec_link = steps[(DP0, 2)].links[0]
    assert attrs(spec_link) == {"servescope.num_tokens": 2, "servescope.num_draft_tokens": 3,
                                "servescope.num_accepted_tokens": 1}
    step = steps[(DP0, 0)]
    got = attrs(step)
    assert step.kind == Span.SPAN_KIND_INTERNAL
    assert step.start_time_unix_nano == OFFSET + T0 + 2 * MS
    assert step.end_time_unix_nano == OFFSET + T0 + 10 * MS
    assert got["servescope.step.engine_index"] == 0
    assert got["servescope.step.wait_s"] == pytest.approx(0.006)
    assert got["servescope.step.num_emitted_tokens"] == 2
    assert got["servescope.step.kv_cache_usage"] == pytest.approx(0.25)
    assert got["servescope.step.linked_requests"] == 2
    assert attrs(steps[(DP1, 0)])["servescope.step.engine_index"] == 1


def test_phase_spans_are_children_of_their_step(run_dir):
    _, spans, _ = export_over_http(run_dir)
    steps = step_spans(spans)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    phases = [s for s in spans if s.name.startswith("servescope.step.")]
    assert len(phases) == NUM_PHASE_SPANS
    for phase in phases:
        parent = by_id[(phase.trace_id, phase.parent_span_id)]
        assert parent.name == "servescope.step"
        assert parent.start_time_unix_nano <= phase.start_time_unix_nano <= phase.end_time_unix_nano
        assert phase.end_time_unix_nano <= parent.end_time_unix_nano
    children = {s.name for s in phases if s.parent_span_id == steps[(DP0, 1)].span_id}
    assert children == {"servescope.step.schedule", "servescope.step.execute", "servescope.step.update"}
    update = next(s for s in phases if s.parent_span_id == steps[(DP0, 0)].span_id and s.name.endswith("update"))
    assert update.start_time_unix_nano == OFFSET + T0 + 9 * MS


def test_links_past_the_cap_are_counted_as_dropped(run_dir):
    _, spans, _ = export_over_http(run_dir, max_links_per_step=1)
    step = step_spans(spans)[(DP0, 3)]
    assert len(step.links) == 1
    assert step.dropped_links_count == 1
    assert attrs(step)["servescope.step.links_dropped"] == 1
    assert attrs(step)["servescope.step.linked_requests"] == 2


def test_exporting_twice_sends_the_same_ids(run_dir):
    _, first, _ = export_over_http(run_dir)
    _, second, _ = export_over_http(run_dir)
    assert sorted((s.trace_id, s.span_id) for s in first) == sorted((s.trace_id, s.span_id) for s in second)


def test_each_request_is_its_own_trace(run_dir):
    _, spans, _ = export_over_http(run_dir)
    requests = request_spans(spans)
    assert len({s.trace_id for s in requests.values()}) == NUM_REQUESTS
    assert not {s.trace_id for s in requests.values()} & {s.trace_id for s in step_spans(spans).values()}


def test_standard_variables_choose_endpoint_compression_and_headers(run_dir, monkeypatch):
    with OtlpHttpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)  # base URL: /v1/traces appended
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=servescope")
        count = export_run(run_dir)
    assert count == NUM_SPANS == len(receiver.spans())
    assert set(receiver.content_encodings) == {"gzip"}
    assert all(h.get("x-tenant") == "servescope" for h in receiver.headers)
    assert not (run_dir / "otlp").exists()


def test_traces_endpoint_variable_is_used_as_given(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:2/custom/path")
    assert resolve_endpoint(None, "http/protobuf") == "http://127.0.0.1:2/custom/path"
    assert resolve_endpoint("127.0.0.1:3", "http/protobuf") == "http://127.0.0.1:3/v1/traces"
    assert resolve_endpoint("http://127.0.0.1:3/v1/traces", "http/protobuf") == "http://127.0.0.1:3/v1/traces"
    assert resolve_endpoint("http://127.0.0.1:4", "grpc") == "http://127.0.0.1:4"


# ---- gRPC ----------------------------------------------------------------------------------------
def test_grpc_export_sends_the_same_spans_as_http(run_dir):
    _, http_spans, _ = export_over_http(run_dir, include_request_ids=False)
    with OtlpGrpcReceiver() as receiver:
        count = export_run(run_dir, endpoint=receiver.endpoint, protocol="grpc", headers={"x-tenant": "t1"})
    grpc_spans = receiver.spans()
    assert count == NUM_SPANS == len(grpc_spans)
    assert sorted(s.SerializeToString(deterministic=True) for s in grpc_spans) == \
        sorted(s.SerializeToString(deterministic=True) for s in http_spans)
    assert all(h.get("x-tenant") == "t1" for h in receiver.headers)


def test_protocol_variable_selects_grpc(run_dir, monkeypatch):
    with OtlpGrpcReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        count = export_run(run_dir, endpoint=receiver.endpoint)
    assert count == len(receiver.spans()) == NUM_SPANS


# ---- failures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_unreachable_endpoint_is_named_and_the_run_dir_is_untouched(run_dir, protocol):
    before = run_dir_snapshot(run_dir)
    endpoint = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(OtlpExportError) as raised:
        export_run(run_dir, endpoint=endpoint, protocol=protocol, timeout_s=0.5)
    assert endpoint.removeprefix("http://") in str(raised.value)
    assert protocol in str(raised.value)
    assert run_dir_snapshot(run_dir) == before


def test_a_wrong_path_is_reported_with_the_receivers_answer(run_dir):
    with OtlpHttpReceiver() as receiver:
        url = f"{receiver.endpoint}/not/traces"
        with pytest.raises(OtlpExportError, match="404") as raised:
            export_run(run_dir, endpoint=url)
    assert url in str(raised.value)
    assert receiver.requests == []
    assert not (run_dir / "otlp").exists()


def test_unsupported_protocol_is_refused(run_dir):
    with pytest.raises(ValueError, match="http/json"):
        export_run(run_dir, endpoint="http://127.0.0.1:4318", protocol="http/json")


def test_run_without_clock_anchor_is_refused(run_dir):
    for p in (run_dir / "processes").glob("*.json"):
        p.unlink()
    with pytest.raises(RunDirError, match="clock anchor"):
        export_run(run_dir)


def test_clock_anchors_copied_into_the_manifest_are_enough(run_dir):
    processes = [json.loads(p.read_text()) for p in sorted((run_dir / "processes").glob("*.json"))]
    for p in (run_dir / "processes").glob("*.json"):
        p.unlink()
    write_json(run_dir / "manifest.json", {"run_id": RUN_ID, "processes": processes})
    _, spans, _ = export_over_http(run_dir)
    assert request_spans(spans)["req-a"].start_time_unix_nano == OFFSET + T0


# ---- OTLP-JSON lines -----------------------------------------------------------------------------
def test_without_endpoint_spans_go_to_otlp_json_lines(run_dir):
    count = export_run(run_dir)
    path = run_dir / "otlp" / "spans.jsonl"
    lines = path.read_text().splitlines()
    assert count == NUM_SPANS
    requests = [otlp_json_to_request(line) for line in lines]
    spans = spans_of(requests)
    assert len(spans) == NUM_SPANS

    raw = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"]
    first = raw[0]
    assert len(first["traceId"]) == 32 and int(first["traceId"], 16)
    assert len(first["spanId"]) == 16 and int(first["spanId"], 16)
    assert isinstance(first["startTimeUnixNano"], str) and int(first["startTimeUnixNano"]) > OFFSET
    assert isinstance(first["kind"], int)
    step = next(s for s in raw if s["name"] == "servescope.step")
    assert all(len(link["spanId"]) == 16 for link in step["links"])

    # the same spans, ids and times as an OTLP/HTTP receiver gets
    _, http_spans, _ = export_over_http(run_dir, include_request_ids=False)
    assert sorted(s.SerializeToString(deterministic=True) for s in spans) == \
        sorted(s.SerializeToString(deterministic=True) for s in http_spans)


def test_json_lines_are_rewritten_not_appended(run_dir):
    export_run(run_dir)
    first = (run_dir / "otlp" / "spans.jsonl").read_text()
    export_run(run_dir)
    assert (run_dir / "otlp" / "spans.jsonl").read_text() == first


def test_batches_split_on_span_and_link_counts(run_dir):
    spans = build_run_spans(run_dir)
    assert [len(b) for b in span_batches(spans, max_spans=10)] == [10, 10, 8]
    by_links = list(span_batches(spans, max_spans=1000, max_links=2))
    assert all(sum(len(s.links) for s in b) <= 2 for b in by_links)
    assert sum(len(b) for b in by_links) == NUM_SPANS
    assert sum(len(rs["scopeSpans"][0]["spans"]) for rs in otlp_json(spans)["resourceSpans"]) == NUM_SPANS


# ---- a real vLLM run (CPU build) -----------------------------------------------------------------
@pytest.mark.engine
def test_a_real_vllm_run_exports_a_span_per_request_and_step(offline_run):
    from servescope.run.tables import read_table

    _, spans, _ = export_over_http(offline_run.run_dir)
    requests = request_spans(spans)
    assert len(requests) == offline_run.num_requests
    assert {attrs(s)["gen_ai.response.id"] for s in requests.values()} == set(offline_run.outputs)
    for span in requests.values():
        got = attrs(span)
        assert got["gen_ai.usage.output_tokens"] == offline_run.max_tokens
        assert got["gen_ai.response.finish_reasons"] == ["length"]
        event_times = [e.time_unix_nano for e in span.events]
        assert span.start_time_unix_nano <= min(event_times) <= max(event_times) <= span.end_time_unix_nano
    steps = step_spans(spans)
    assert len(steps) == read_table(offline_run.run_dir, "steps").num_rows
    request_ids = {(s.trace_id, s.span_id) for s in requests.values()}
    linked = [(link.trace_id, link.span_id) for step in steps.values() for link in step.links]
    assert linked and set(linked) <= request_ids
    emitted = read_table(offline_run.run_dir, "token_emissions")
    assert len(linked) == emitted.num_rows  # one link per (step, request) emission: none over the cap here
