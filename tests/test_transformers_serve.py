"""`transformers serve --continuous-batching` recorded by `servescope run`, under load from `servescope bench`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from engine_fixtures import engine_env
from servescope.bench.load.server import answers_health
from servescope.bench.load.client import engine_request_ids
from servescope.run.tables import read_table
from servescope.run.manifest import load_manifest
from servescope.run.names import RequestEvent, Table

pytest.importorskip("transformers.generation.continuous_batching")
pytestmark = pytest.mark.engine

COUNT, OUTPUT, PROMPT = 12, 8, 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        if answers_health(url, timeout_s=5):
            return
        time.sleep(1)
    raise AssertionError("transformers serve did not become healthy")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A recorded transformers server and one bench run against it (open loop, 12 requests at 4 req/s)."""
    from servescope.bench.model_kit import init_model_dir, stop_only_at_max_tokens, write_random_weights

    tmp = tmp_path_factory.mktemp("hf-serve")
    model = stop_only_at_max_tokens(write_random_weights(init_model_dir(tmp / "model", "tiny")))
    (tmp / "hub").mkdir()  # transformers serve lists its hub cache at /v1/models: it must exist
    env = engine_env(HF_HUB_CACHE=str(tmp / "hub"), HF_HUB_OFFLINE="1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_run, bench_run = tmp / "server", tmp / "bench"
    serve = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", str(model),
             "--continuous-batching", "--attn-implementation", "sdpa", "--device", "cpu", "--host", "127.0.0.1",
             "--port", str(port), "--cb-num-blocks", "64", "--cb-max-batch-tokens", "128", "--log-level", "warning"]
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "servescope", "run", "--out", str(server_run), "--no-export",
                               "--", *serve], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, server)
        trace = tmp / "trace.csv"
        trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + f"0,{PROMPT},{OUTPUT}\n" * COUNT)
        bench = subprocess.run([sys.executable, "-m", "servescope", "bench", "--workload", str(trace), "--rate", "4",
                                "--count", str(COUNT), "--endpoint", url, "--server-run", str(server_run), "--model",
                                str(model), "--api", "openai", "--no-progress", "--out", str(bench_run)],
                               env=env, capture_output=True, text=True, timeout=600)
    finally:
        if server.poll() is None:
            # servescope run forwards it and writes the server run's manifest. SIGTERM, not SIGINT: a suite started in
            # the background by a non-interactive shell ignores SIGINT and the server inherits that (one outlived the
            # suite by 13 minutes; SIGTERM ended it in 5 s)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    return bench_run, server_run, bench.stdout


def test_every_client_request_is_joined_to_its_engine_records(served):
    bench_run, server_run, stdout = served
    facts = json.loads((bench_run / "bench.json").read_text())
    assert facts["status"] == "complete" and facts["results"]["ok"] == COUNT, facts["results"]
    joined = engine_request_ids(bench_run)
    assert len(joined) == COUNT and set(joined) == set(joined.values())  # transformers serve keeps X-Request-Id
    emitted = {}
    for row in read_table(bench_run, Table.TOKEN_EMISSIONS).to_pylist():
        emitted[row["request_id"]] = emitted.get(row["request_id"], 0) + row["num_tokens"]
    client = {r["client_request_id"]: r for r in read_table(bench_run, Table.CLIENT_REQUESTS).to_pylist()}
    for cid, rid in joined.items():
        assert emitted[rid] == client[cid]["output_tokens"] == OUTPUT, cid
    arrivals = [r for r in read_table(bench_run, Table.REQUEST_EVENTS).to_pylist() if r["event"] == RequestEvent.ARRIVAL]
    assert {r["prompt_tokens"] for r in arrivals} == {PROMPT + 1}  # the server's tokenizer adds BOS
    assert "client vs engine (12 requests joined" in stdout


def test_client_sees_each_request_after_the_engine(served):
    bench_run, _, _ = served
    events = {}
    for row in read_table(bench_run, Table.REQUEST_EVENTS).to_pylist():
        events.setdefault((row["request_id"], row["event"]), row["time_ns"])
    client = {r["client_request_id"]: r for r in read_table(bench_run, Table.CLIENT_REQUESTS).to_pylist()}
    for cid, rid in engine_request_ids(bench_run).items():
        assert client[cid]["send_ns"] <= events[(rid, RequestEvent.ARRIVAL)]
        assert events[(rid, RequestEvent.FINISHED)] <= client[cid]["end_ns"]


def test_the_bench_run_has_the_server_s_steps_and_engine(served):
    bench_run, server_run, _ = served
    steps = read_table(bench_run, Table.STEPS)
    assert steps.num_rows > 0
    assert sum(steps["num_emitted_tokens"].to_pylist()) == COUNT * OUTPUT
    manifest = load_manifest(bench_run)
    assert manifest["engine"]["name"] == "transformers"
    assert load_manifest(server_run)["health"]["internal_errors"] == 0
    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(bench_run), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["run"]["requests"] == COUNT and result["run"]["output_tokens"] == COUNT * OUTPUT
