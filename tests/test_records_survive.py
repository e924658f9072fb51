"""Records survive their process: a real `vllm serve` under `servescope run`, a real streaming load, and
the engine's EngineCore killed with SIGKILL (or `servescope run` stopped with SIGTERM) in the middle.

The independent witness is servescope's HTTP client in another process: every token the client
received was emitted by the EngineCore before it was sent, so the engine's records of every request
must hold at least the client's tokens; and the manifest must say which process was killed and that no
row was lost (rows are in the spool the moment they are appended).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from engine_fixtures import engine_env
from servescope.analysis.client_vs_engine import engine_token_check
from servescope.bench.load.server import free_port
from servescope.run.directory import read_json
from servescope.run.tables import read_table

pytestmark = pytest.mark.engine

STARTUP_TIMEOUT_S = 600


def _start_recorded_server(model_dir: Path, run_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", "--",
               sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--load-format", "dummy", "--max-model-len", "1024", "--host", "127.0.0.1", "--port", str(port)]
    log = open(run_dir.parent / "launcher.log", "wb")
    proc = subprocess.Popen(command, env=engine_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, (run_dir.parent / "launcher.log").read_text()[-4000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not start")


def _engine_core_pid(run_dir: Path) -> int:
    for path in (run_dir / "processes").glob("*.json"):
        record = read_json(path)
        if record.get("role", "").startswith("EngineCore"):
            return record["pid"]
    raise AssertionError("no EngineCore process record")


def _bench_in_background(url: str, model_dir: Path, run_dir: Path, tmp: Path) -> threading.Thread:
    from servescope.bench.run import BenchSpec, run_bench

    trace = tmp / "long.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join("0,64,300\n" for _ in range(48)))
    spec = BenchSpec(str(trace), concurrency=8, endpoint=url, request_timeout_s=60)
    thread = threading.Thread(target=lambda: run_bench(spec, run_dir, progress=False), daemon=True)
    thread.start()
    return thread


def _client_tokens(run_dir: Path) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for row in read_table(run_dir, "client_chunks").to_pylist():
        tokens[row["client_request_id"]] = tokens.get(row["client_request_id"], 0) + row["num_tokens"]
    return tokens


def _wait_for_tokens(run_dir: Path, at_least: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(_client_tokens(run_dir).values()) < at_least:
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.2)


def _check_engine_holds_every_client_token(run_dir: Path) -> int:
    check = engine_token_check(run_dir)
    assert check.client_tokens > 0
    assert not check.not_joined and not check.short, check.summary()
    return check.client_tokens


def test_sigkill_of_the_engine_core_loses_no_record(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher, url = _start_recorded_server(tiny_model_dir, run_dir)
    try:
        bench = _bench_in_background(url, tiny_model_dir, run_dir, tmp_path)
        _wait_for_tokens(run_dir, 500)
        core = _engine_core_pid(run_dir)
        os.kill(core, signal.SIGKILL)
        bench.join(180)
        launcher.wait(180)  # the API server ends when its EngineCore dies; servescope run then compacts
    finally:
        if launcher.poll() is None:
            launcher.kill()
    received = _check_engine_holds_every_client_token(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    assert core in manifest["health"]["processes_killed"], manifest["health"]
    assert manifest["health"]["rows_dropped"] == 0 and manifest["health"]["internal_errors"] == 0
    core_record = next(p for p in manifest["processes"] if p["pid"] == core)
    assert core_record["ended"].startswith("killed") and core_record["rows_recorded"]["token_emissions"] > 0
    assert received >= 500
    assert not list((run_dir / "spool").glob("*.spool")), "every spool is compacted once the run ended"


def test_sigterm_to_servescope_run_loses_no_record(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher, url = _start_recorded_server(tiny_model_dir, run_dir)
    try:
        bench = _bench_in_background(url, tiny_model_dir, run_dir, tmp_path)
        _wait_for_tokens(run_dir, 500)
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(180)
        bench.join(180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    _check_engine_holds_every_client_token(run_dir)
    command = json.loads((run_dir / "command.json").read_text())
    assert command["signals"] == ["SIGTERM"] and command["exit_code"] == code
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["health"]["rows_dropped"] == 0 and manifest["health"]["internal_errors"] == 0
    assert {"MainProcess", "EngineCore"} <= {p["role"] for p in manifest["processes"]}
