"""Privacy by default: no prompt text, no token ids and no client-supplied request ids leave a run.

A real recorded `vllm serve` (CPU build, tiny model) gets two requests whose client ids
(X-Request-Id) carry a secret; vLLM builds its engine request ids from them, so the engine
tables hold the secret too (checked: the test would otherwise prove nothing). The run's spans go
to a real OTLP receiver on 127.0.0.1 and into OTLP-JSON lines, the run becomes a Perfetto trace:
none holds the secret, the prompt's text or its token ids unless --include-request-ids is given,
and then the ids are there (the same check can fail). The report is checked on a hand-built run
with a stall, so that the request is named on the page.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from servescope.bench.load.client import CompletionRequest, StreamingClient, served_model
from servescope.bench.load.server import start_server, wait_for_engine_records
from servescope.export.otel_export import export_run
from servescope.export.perfetto import write_perfetto_trace
from servescope.report.build import write_report
from servescope.run.tables import read_table

from engine_fixtures import engine_env
from otlp_receiver import OtlpHttpReceiver
from runbuilder import RunBuilder

SECRET = "acme-customer-4711"
PROMPT_TEXT = "zebra quartz violin marmalade"
PROMPT_IDS = [1733, 911, 1522, 87, 1301, 1999, 404, 1212]  # the tiny model's vocabulary has 2048 ids
ENGINE_ARGS = ["--load-format", "dummy", "--max-model-len", "512"]


def id_sequence_forms(ids: list[int]) -> list[str]:
    """The ways a list of token ids could be written into JSON or text."""
    return [",".join(map(str, ids)), ", ".join(map(str, ids)), " ".join(map(str, ids))]


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A recorded server run with two requests whose client ids carry SECRET (one token-id, one text prompt)."""
    run_dir = tmp_path_factory.mktemp("private") / "server-run"
    env = {k: v for k, v in engine_env().items() if k in ("VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE",
                                                          "TOKENIZERS_PARALLELISM")}
    server = start_server(["--model", str(tiny_model_dir), *ENGINE_ARGS], run_dir, extra_env=env,
                          startup_timeout_s=600)
    try:
        async def send():
            model = (await served_model(server.url))["id"]
            async with StreamingClient(server.url, model) as client:
                return [await client.complete(CompletionRequest(f"{SECRET}-0", PROMPT_IDS, 8)),
                        await client.complete(CompletionRequest(f"{SECRET}-1", PROMPT_IDS, 8,
                                                                prompt_text=PROMPT_TEXT))]

        results = asyncio.run(send())
        assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
        assert wait_for_engine_records(run_dir, {f"cmpl-{r.client_request_id}-0" for r in results}) == 2
        time.sleep(1.5)  # the steps of the last request
    finally:
        server.stop()
    return run_dir


@pytest.mark.engine
def test_the_engine_tables_hold_the_client_ids(served_run):
    events = read_table(served_run, "request_events")
    assert all(SECRET in rid for rid in pc.unique(events["request_id"]).to_pylist())
    assert any(SECRET in (d or "") for d in events["detail"].to_pylist())


def exported_bytes(run_dir: Path, **kwargs) -> bytes:
    with OtlpHttpReceiver() as receiver:
        count = export_run(run_dir, endpoint=receiver.endpoint, **kwargs)
    assert count == len(receiver.spans()) > 2
    return b"".join(r.SerializeToString() for r in receiver.requests)


@pytest.mark.engine
def test_spans_carry_no_request_id_prompt_or_token_ids_unless_asked(served_run):
    sent = exported_bytes(served_run)
    assert SECRET.encode() not in sent and PROMPT_TEXT.encode() not in sent
    assert b"cmpl-" not in sent
    export_run(served_run)  # OTLP-JSON lines in the run directory: the same spans as text
    lines = (served_run / "otlp" / "spans.jsonl").read_text()
    assert SECRET not in lines and PROMPT_TEXT not in lines
    assert not any(form in lines for form in id_sequence_forms(PROMPT_IDS))
    for request in map(json.loads, lines.splitlines()):  # no attribute is a list of numbers (token ids)
        for span in (s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]):
            for attribute in span.get("attributes", []):
                values = attribute["value"].get("arrayValue", {}).get("values", [])
                assert all(set(v) == {"stringValue"} for v in values), (span["name"], attribute)
    asked = exported_bytes(served_run, include_request_ids=True)
    assert SECRET.encode() in asked and PROMPT_TEXT.encode() not in asked


@pytest.mark.engine
def test_step_links_still_reach_the_request_spans_without_ids(served_run):
    from servescope.export.otel_spans import build_run_spans

    spans = build_run_spans(served_run)
    request_ids = {s.context.span_id for s in spans if s.kind.name == "SERVER"}
    linked = {link.context.span_id for s in spans if s.name == "servescope.step" for link in s.links}
    assert len(request_ids) == 2 and linked == request_ids


@pytest.mark.engine
def test_perfetto_trace_names_requests_by_position_unless_asked(served_run, tmp_path):
    write_perfetto_trace(served_run, tmp_path / "trace.json")
    text = (tmp_path / "trace.json").read_text()
    assert SECRET not in text and PROMPT_TEXT not in text
    assert not any(form in text for form in id_sequence_forms(PROMPT_IDS))
    requests = [e for e in json.loads(text)["traceEvents"] if e.get("name") == "request" and e["ph"] == "b"]
    assert sorted(e["args"]["request"] for e in requests) == [0, 1]
    proc = subprocess.run([sys.executable, "-m", "servescope", "export", str(served_run), "--perfetto",
                           str(tmp_path / "asked.json"), "--include-request-ids"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert SECRET in (tmp_path / "asked.json").read_text()


def test_the_report_names_requests_by_position_unless_asked(tmp_path):
    ms = 1_000_000
    builder = RunBuilder(tmp_path)
    for k in range(4):  # request 3 waits 400 ms for its last token: a stall the report lists
        times = [10 * ms * (i + 1) for i in range(8)] + ([400 * ms] if k == 3 else [90 * ms])
        rid = f"cmpl-{SECRET}-{k}-0"
        builder.request(rid, arrival_ns=0, queued_ns=1, scheduled_ns=2, prompt_tokens=4, max_tokens=9,
                        emissions=[(i, t, 1) for i, t in enumerate(times)], finished_ns=times[-1])
    run = builder.write()
    page = write_report([run], tmp_path / "report").read_text()
    assert SECRET not in page and re.search(r'<span class="mono">request \d+</span>', page)
    asked = write_report([run], tmp_path / "asked", include_request_ids=True).read_text()
    assert SECRET in asked
