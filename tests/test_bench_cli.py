"""servescope bench / capacity / sweep without an engine: bad input, the client's statuses, Ctrl-C, capacity on an oracle.

A fake OpenAI-compatible server (aiohttp, 127.0.0.1, a thread of this process) streams
completions the way vLLM does (one 'data:' event per token, a usage event, [DONE]);
its behaviour is set per test. Nothing here starts vLLM except one parser check.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from servescope.analysis.slo import build_slos
from servescope.bench.capacity import capacity_text, search_capacity_runs
from servescope.bench.load.client import CompletionRequest, StreamingClient, client_request_metrics
from servescope.bench.load.server import free_port, normalize_engine_args, server_argv
from servescope.bench.run import BenchError
from servescope.bench.sweep import grid_points, parse_grid, point_dir_name, point_engine_args
from servescope.cli.main import app
from servescope.record.recorder import Recorder
from servescope.run.compact import compact_run
from servescope.run.directory import read_json
from servescope.run.tables import read_table

S = 1_000_000_000


def invoke(*args: str):
    """Run the servescope command line in this process (its error handler included)."""
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- a fake streaming server


class FakeServer:
    """An OpenAI-compatible /v1/completions that streams one token per event; behaviour set by attributes."""

    def __init__(self):
        self.delay_s = 0.0  # between token events
        self.fail_status: int | None = None  # answer every request with this HTTP status
        self.error_after_tokens: int | None = None  # send an error event after this many tokens
        self.received = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _serve(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start())
        self._ready.set()
        self._loop.run_forever()

    def stop(self):
        """Stop serving: streams in flight are cut, new connections refused (a server that died)."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _models(self, request):
        return web.json_response({"data": [{"id": "fake-model", "root": "/nonexistent", "max_model_len": 1024}]})

    async def _completions(self, request):
        self.received += 1
        body = await request.json()
        if self.fail_status is not None:
            return web.json_response({"error": {"message": "refused by the fake", "code": self.fail_status}},
                                     status=self.fail_status)
        completion_id = "cmpl-" + request.headers.get("X-Request-Id", "anonymous")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(body["max_tokens"]):
            if self.error_after_tokens is not None and i == self.error_after_tokens:
                await response.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
                return response
            await asyncio.sleep(self.delay_s)
            event = {"id": completion_id, "choices": [{"index": 0, "text": f" <t{i}>", "token_ids": [i]}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        usage = {"id": completion_id, "choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return response


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.stop()


def write_trace(path: Path, rows: int = 6, prompt: int = 8, output: int = 4) -> Path:
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"0,{prompt},{output}\n" for _ in range(rows)))
    return path


# --------------------------------------------------------------------------- bad input


def test_unknown_workload_file_format_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,how_long\n1,2\n")
    result = invoke("bench", "--workload", bad, "--rate", "1", "--endpoint", "http://127.0.0.1:9",
                    "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "bad.csv, line 1" in result.output and "unknown CSV trace header" in result.output


def test_malformed_row_names_its_line(tmp_path, fake_server):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n0.5,-3,4\n")
    result = invoke("bench", "--workload", bad, "--concurrency", "1", "--endpoint", fake_server.url,
                    "--vocab-size", "100", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "bad.csv, line 3" in result.output
    assert fake_server.received == 0
    assert read_json(tmp_path / "run" / "bench.json")["status"] == "failed"


def test_rate_and_concurrency_together_are_refused(tmp_path):
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--rate", "1", "--concurrency", "2",
                    "--endpoint", "http://127.0.0.1:9", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--rate or --concurrency, not both" in result.output


def test_a_target_is_required(tmp_path):
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--rate", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--endpoint URL or --engine-args" in result.output


def test_unreachable_endpoint_names_the_url_and_keeps_the_run_dir(tmp_path):
    out = tmp_path / "run"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--rate", "5", "--endpoint", url,
                    "--vocab-size", "100", "--out", out)
    assert result.exit_code == 2
    assert url in result.output and "cannot reach" in result.output
    assert str(out) in result.output  # says where the kept run directory is
    facts = read_json(out / "bench.json")
    assert facts["status"] == "failed" and url in facts["error"]
    assert (out / "manifest.json").exists()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Return every file under directory with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_directory_that_holds_a_bench_run_is_refused_and_left_as_it_was(tmp_path, fake_server):
    out = tmp_path / "run"
    first = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "2",
                   "--endpoint", fake_server.url, "--vocab-size", "100", "--out", out)
    assert first.exit_code == 0, first.output
    before, received = snapshot(out), fake_server.received
    second = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "2",
                    "--endpoint", fake_server.url, "--vocab-size", "100", "--out", out)
    assert second.exit_code == 2
    assert f"{out} already holds a bench run" in second.output and f"--out {out}-2" in second.output
    assert snapshot(out) == before and fake_server.received == received  # nothing written, nothing sent

    earlier = tmp_path / "earlier"  # client rows recorded by something else: refused too
    recorder = Recorder(earlier)
    recorder.append("client_requests", ("earlier-0", None, 1, 2, 8, 4, 4, "ok", None, 1))
    recorder.close()
    before = snapshot(earlier)
    third = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "2",
                   "--endpoint", fake_server.url, "--vocab-size", "100", "--out", earlier)
    assert third.exit_code == 2 and "1 client_requests row(s) in the spool of" in third.output  # not compacted
    assert snapshot(earlier) == before
    compact_run(earlier)
    before = snapshot(earlier)
    fourth = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "2",
                    "--endpoint", fake_server.url, "--vocab-size", "100", "--out", earlier)
    assert fourth.exit_code == 2 and "1 client_requests part(s)" in fourth.output
    assert snapshot(earlier) == before


def test_a_bench_that_starts_its_engine_refuses_any_recorded_run(tmp_path):
    recorded = tmp_path / "offline"  # e.g. a `servescope run` of an offline script
    recorder = Recorder(recorded)
    recorder.append("request_events", ("r0", "arrival", 1, None, 8, 4, None, None))
    recorder.close()
    compact_run(recorded)  # as servescope run leaves it
    (recorded / "command.json").write_text('{"argv": ["python", "x.py"]}')
    before = snapshot(recorded)
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "1",
                    "--engine-args", "--model /nonexistent", "--out", recorded)
    assert result.exit_code == 2, result.output
    assert "already holds a recorded run (command.json, 1 request_events part(s))" in result.output
    assert snapshot(recorded) == before  # no server was started into it


def test_failed_requests_beyond_the_threshold_mark_the_run_and_exit_1(tmp_path, fake_server):
    fake_server.fail_status = 400  # lists a model, rejects every POST
    out = tmp_path / "run"
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv", rows=4), "--concurrency", "2",
                    "--endpoint", fake_server.url, "--vocab-size", "100", "--out", out)
    assert result.exit_code == 1, result.output
    facts = read_json(out / "bench.json")
    assert facts["status"] == "requests_failed" and facts["results"]["error"] == 4
    assert "4 of 4 requests failed" in facts["error"] and "--max-failed-fraction 0" in facts["error"]
    assert read_json(out / "manifest.json")["bench"]["status"] == "requests_failed"
    assert result.output.strip().splitlines()[-1].startswith("servescope: 4 of 4 requests failed")

    fake_server.fail_status = None
    fake_server.error_after_tokens = 2  # every request fails mid-stream; a threshold of 1 accepts that
    tolerant = invoke("bench", "--workload", write_trace(tmp_path / "t.csv", rows=4), "--concurrency", "2",
                      "--endpoint", fake_server.url, "--vocab-size", "100", "--max-failed-fraction", "1",
                      "--out", tmp_path / "tolerant")
    assert tolerant.exit_code == 0, tolerant.output
    assert read_json(tmp_path / "tolerant" / "bench.json")["status"] == "complete"


def test_bench_stops_when_the_endpoint_is_gone(tmp_path, fake_server):
    from servescope.bench.load.server_watch import SERVER_GONE_AFTER_S

    fake_server.delay_s = 0.05  # 20 tokens: 1 s per request
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope", "bench", "--workload",
         str(write_trace(tmp_path / "t.csv", rows=400, output=20)), "--rate", "10", "--endpoint", fake_server.url,
         "--vocab-size", "100", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while fake_server.received < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert fake_server.received >= 10
    fake_server.stop()  # the server goes away: streams cut, connections refused from now on
    stopped = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    took_s = time.monotonic() - stopped
    assert proc.returncode == 1, output
    facts = read_json(out / "bench.json")
    assert facts["status"] == "server_gone" and fake_server.url in facts["error"]
    # stopped before its plan (400 requests at 10/s, 40 s) ran out, and promptly: how many it had sent by
    # then depends on how fast a loaded machine let this test see the first 10 requests, not on bench
    assert facts["results"]["sent"] < 400, facts["results"]
    assert took_s < SERVER_GONE_AFTER_S + 10, (took_s, output)
    assert "stopped answering" in output.strip().splitlines()[-1]
    rows = read_table(out, "client_requests").to_pylist()
    assert len(rows) == facts["results"]["sent"]  # every request sent has its row, failed or cancelled


def test_missing_vocabulary_size_is_explained(tmp_path, fake_server):
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv"), "--rate", "5",
                    "--endpoint", fake_server.url, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--vocab-size" in result.output


def test_capacity_slo_options_are_checked():
    with pytest.raises(ValueError, match="needs a TBT bound > 0 s \\(--tbt\\)"):
        build_slos("tbt-ttft", ttft_s=1.0)
    with pytest.raises(ValueError, match="the SLO type is one of"):
        build_slos("latency", ttft_s=1.0)
    assert [s.name for s in build_slos("ttft-tpot", ttft_s=2.0, tpot_s=0.1, percentile=90)] == [
        "ttft_p90<=2s", "tpot_p90<=0.1s"]
    (fluidity,) = build_slos("fluidity", tbt_s=0.05, ttft_s=1.0)
    assert fluidity.tbt_deadline_s == 0.05 and fluidity.ttft_deadline_s == 1.0


def test_capacity_command_refuses_engine_metrics_without_server_records(tmp_path):
    result = invoke("capacity", "--workload", write_trace(tmp_path / "t.csv"), "--slo", "ttft-tpot", "--ttft", "1",
                    "--tpot", "0.1", "--start-rate", "1", "--endpoint", "http://127.0.0.1:9", "--measure", "engine",
                    "--out", tmp_path / "cap")
    assert result.exit_code == 2 and "--server-run" in result.output


# --------------------------------------------------------------------------- the client against the fake


def test_bench_records_every_request_and_chunk(tmp_path, fake_server):
    out = tmp_path / "run"
    result = invoke("bench", "--workload", write_trace(tmp_path / "t.csv", rows=6, output=4), "--concurrency", "3",
                    "--endpoint", fake_server.url, "--vocab-size", "100", "--out", out)
    assert result.exit_code == 0, result.output
    requests = read_table(out, "client_requests").to_pylist()
    chunks = read_table(out, "client_chunks").to_pylist()
    assert len(requests) == 6 and {r["status"] for r in requests} == {"ok"}
    assert all(r["output_tokens"] == 4 and r["prompt_tokens"] == 8 for r in requests)
    assert all(r["engine_request_id"] == "cmpl-" + r["client_request_id"] for r in requests)
    assert len(chunks) == 24 and {c["num_tokens"] for c in chunks} == {1}
    for r in requests:
        times = [c["time_ns"] for c in chunks if c["client_request_id"] == r["client_request_id"]]
        assert r["send_ns"] < min(times) and max(times) <= r["end_ns"]
    facts = read_json(out / "bench.json")
    assert facts["status"] == "complete" and facts["results"]["ok"] == 6
    assert read_json(out / "manifest.json")["bench"]["load"]["mode"] == "closed_loop"
    assert "no engine records in this run" in result.output
    metrics = client_request_metrics(out)
    assert sorted(metrics.output_tokens.tolist()) == [4] * 6


def _complete(server_url, requests, **client_options):
    async def go():
        async with StreamingClient(server_url, "fake-model", **client_options) as client:
            return await asyncio.gather(*(client.complete(r) for r in requests))

    return asyncio.run(go())


def test_http_errors_error_events_and_timeouts_get_their_status(tmp_path, fake_server):
    request = CompletionRequest("r0", [1, 2, 3], 5)
    fake_server.fail_status = 400
    (result,) = _complete(fake_server.url, [request])
    assert result.status == "error" and "HTTP 400" in result.error and fake_server.url in result.error
    fake_server.fail_status = None
    fake_server.error_after_tokens = 2
    (result,) = _complete(fake_server.url, [request])
    assert result.status == "error" and "engine died" in result.error and result.output_tokens == 2
    fake_server.error_after_tokens = None
    fake_server.delay_s = 0.5
    (result,) = _complete(fake_server.url, [request], request_timeout_s=0.2)
    assert result.status == "timeout" and result.output_tokens == 0


def test_cancelled_request_still_records_its_row(tmp_path, fake_server):
    fake_server.delay_s = 0.2
    recorder = Recorder(tmp_path / "run")

    async def go():
        async with StreamingClient(fake_server.url, "fake-model", recorder=recorder) as client:
            task = asyncio.create_task(client.complete(CompletionRequest("r0", [1, 2], 50)))
            while not read_table(tmp_path / "run", "client_chunks").num_rows:  # in the spool at once
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    recorder.close()
    (row,) = read_table(tmp_path / "run", "client_requests").to_pylist()
    assert row["status"] == "cancelled" and 1 <= row["output_tokens"] < 50


def test_ctrl_c_stops_cleanly_and_keeps_what_was_recorded(tmp_path, fake_server):
    fake_server.delay_s = 0.5  # 200 tokens: every request is still streaming when Ctrl-C comes
    out = tmp_path / "run"
    # a suite started in the background by a non-interactive shell ignores SIGINT, and an ignored signal stays ignored
    # in its children: a handler here (reset to the default across exec) gives the bench a terminal's Ctrl-C
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "servescope", "bench", "--workload",
             str(write_trace(tmp_path / "t.csv", rows=4, output=200)), "--concurrency", "4", "--endpoint", fake_server.url,
             "--vocab-size", "100", "--progress", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while fake_server.received < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert fake_server.received == 4
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("bench still running 60 s after Ctrl-C; its output:\n" + proc.communicate()[0][-4000:])
    assert proc.returncode == 130, output
    assert "interrupted" in output
    facts = read_json(out / "bench.json")
    assert facts["status"] == "interrupted" and facts["results"]["cancelled"] == 4
    rows = read_table(out, "client_requests").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"cancelled"}
    assert (out / "manifest.json").exists()


# --------------------------------------------------------------------------- capacity on a simulated oracle

LIMIT_S = 0.37  # the oracle's TTFT is 0.1 s per (request/s): the SLO TTFT <= 0.37 s passes up to 3.7 req/s


def oracle_run(rate: float, run_dir: Path, requests: int = 20) -> None:
    """Record a run whose every request has TTFT = 0.1 s x rate (engine; client +1 ms) and 4 tokens 10 ms apart."""
    recorder = Recorder(run_dir)
    ttft_ns = int(0.1 * rate * S)
    for i in range(requests):
        rid, arrival = f"req-{i}", 10 * S + i * S // 10
        tokens = [arrival + ttft_ns + k * S // 100 for k in range(4)]
        for event, t in (("arrival", arrival), ("queued", arrival), ("scheduled", arrival + 1000), ("finished", tokens[-1])):
            recorder.append("request_events", (rid, event, t, None, 16, 4, 4 if event == "finished" else None,
                                               f"cmpl-c{i}-0" if event == "arrival" else "length"))
        for step, t in enumerate(tokens):
            recorder.append("token_emissions", (rid, step, t, 1, None, None))
            recorder.append("client_chunks", (f"c{i}", t + 1_000_000, 1))
        recorder.append("client_requests", (f"c{i}", f"cmpl-c{i}", arrival, tokens[-1] + 2_000_000, 16, 4, 4, "ok",
                                            None, arrival))
    recorder.close()


class CountingOracle:
    def __init__(self):
        self.rates = []

    def __call__(self, rate, run_dir):
        self.rates.append(rate)
        oracle_run(rate, run_dir)


@pytest.mark.parametrize("measure", ["engine", "client"])
def test_capacity_search_over_recorded_runs_finds_the_oracles_limit_and_reuses_probes(tmp_path, measure):
    slos = build_slos("ttft-tpot", ttft_s=LIMIT_S, tpot_s=0.05, percentile=99)
    oracle = CountingOracle()
    summary = search_capacity_runs(tmp_path, oracle, slos, start_rate=1.0, load_key="k1", measure=measure,
                                   granularity=0.05)
    assert summary["capacity_rps"] <= 3.7 < summary["lowest_failing_rps"]
    assert summary["lowest_failing_rps"] - summary["capacity_rps"] <= 0.05 * summary["lowest_failing_rps"]
    assert summary["stop_reason"] == "granularity"
    assert [p["rate"] for p in summary["probes"]] == oracle.rates
    for probe in summary["probes"]:
        assert probe["pass"] == (0.1 * probe["rate"] + (0.001 if measure == "client" else 0) <= LIMIT_S)
        assert probe["measure"] == measure and probe["requests"] == 20
        assert read_json(Path(probe["run_dir"]) / "probe.json")["complete"]
        assert len(read_table(probe["run_dir"], "client_requests")) == 20
    assert read_json(tmp_path / "capacity.json")["capacity_rps"] == summary["capacity_rps"]
    text = capacity_text(summary)
    assert f"capacity: {summary['capacity_rps']:.4g} req/s" in text
    assert text.count("FAIL") == sum(not p["pass"] for p in summary["probes"])

    again = CountingOracle()
    repeat = search_capacity_runs(tmp_path, again, slos, start_rate=1.0, load_key="k1", measure=measure,
                                  granularity=0.05)
    assert again.rates == []  # every probe came from its run directory
    assert repeat["capacity_rps"] == summary["capacity_rps"]
    assert all(p["cached"] for p in repeat["probes"])

    other_load = CountingOracle()
    search_capacity_runs(tmp_path, other_load, slos, start_rate=1.0, load_key="k2", measure=measure, granularity=0.05)
    assert other_load.rates == oracle.rates  # a different load does not reuse them


def test_interrupted_probe_is_not_reused(tmp_path):
    slos = build_slos("ttft-tpot", ttft_s=LIMIT_S, tpot_s=0.05)

    def interrupted(rate, run_dir):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search_capacity_runs(tmp_path, interrupted, slos, start_rate=1.0, load_key="k", granularity=0.05)
    oracle = CountingOracle()
    search_capacity_runs(tmp_path, oracle, slos, start_rate=1.0, load_key="k", granularity=0.05)
    assert oracle.rates[0] == 1.0  # the unfinished probe at 1.0 req/s ran again
    assert (tmp_path / "probes" / "k" / "rate-1.stale-1" / "probe.json").exists()  # and its directory was kept


# --------------------------------------------------------------------------- sweep and server arguments


def test_grid_points_and_their_engine_args():
    grid = parse_grid(["max_num_batched_tokens=256,512", "--max-num-seqs=4,8"])
    points = grid_points(grid)
    assert points == [
        {"max_num_batched_tokens": "256", "max_num_seqs": "4"}, {"max_num_batched_tokens": "256", "max_num_seqs": "8"},
        {"max_num_batched_tokens": "512", "max_num_seqs": "4"}, {"max_num_batched_tokens": "512", "max_num_seqs": "8"}]
    assert point_engine_args(["--model", "m"], points[1]) == [
        "--model", "m", "--max-num-batched-tokens", "256", "--max-num-seqs", "8"]
    assert point_dir_name(1, points[1]) == "01-max_num_batched_tokens=256-max_num_seqs=8"
    for bad in (["max_num_seqs"], ["=4"], ["max_num_seqs="], ["a=1", "a=2"]):
        with pytest.raises(BenchError):
            parse_grid(bad)


def test_sweep_rejects_an_unknown_engine_parameter_before_starting_anything(tmp_path):
    result = invoke("sweep", "--workload", write_trace(tmp_path / "t.csv"), "--concurrency", "1",
                    "--engine-args", "--model /nonexistent", "--grid", "max_num_seqz=4,8", "--out", tmp_path / "sw")
    assert result.exit_code == 2 and "max-num-seqz" in result.output
    assert not (tmp_path / "sw").exists()


def test_both_spellings_of_the_engine_args_give_one_server_command():
    module = ["--model", "/m", "--max-model-len", "1024"]
    for spelled in (["vllm", "serve", "/m", "--max-model-len", "1024"], ["serve", "/m", "--max-model-len", "1024"],
                    ["/m", "--max-model-len", "1024"], ["python", "-m", "vllm.entrypoints.openai.api_server",
                                                          "--model", "/m", "--max-model-len", "1024"], module):
        assert normalize_engine_args(spelled) == module
    argv = server_argv(module, 8123)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    cli = server_argv(module, 8123, spelling="cli")
    assert os.path.basename(cli[0]) == "vllm" and cli[1:3] == ["serve", "/m"] and "--model" not in cli
    with pytest.raises(Exception, match="--port is chosen by servescope"):
        normalize_engine_args(["--model", "/m", "--port", "9000"])
