"""An OTLP endpoint that is down or hangs never slows the engine and never loses the run directory.

`servescope run` exports spans only once the command has ended and its spools are compacted
(record/launcher.py run_command, then cli/record.py): no engine process waits on the endpoint. The
export's wait is bounded by the OTLP exporter's timeout (OTEL_EXPORTER_OTLP_TIMEOUT, in seconds in
the Python SDK, 10 by default): it covers one batch, retries included, and the first batch that fails
ends the export. A failed export is one line saying how to export again; the command's exit code
and the run directory are kept.

The endpoints are real loopback sockets: one that accepts every connection and never answers
(otlp_receiver.HangingEndpoint), and a port nothing listens on. The engine is a real offline vLLM
(CPU build) under `servescope run`, the command ending with exit code 7 after its generate.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from engine_fixtures import ENGINE_TIMEOUT_S, TESTS, engine_env
from otlp_receiver import HangingEndpoint, free_loopback_port
from servescope.run.directory import read_json
from servescope.run.tables import read_table

EXPORT_TIMEOUT_S = 4  # OTEL_EXPORTER_OTLP_TIMEOUT for these tests
# What may pass between the export's end and the process's exit, beyond the exporter's timeout: closing the
# exporter, printing, the interpreter's exit (a few seconds on the shared 2-core test machine).
AFTER_EXPORT_S = 15
COMMAND_EXIT_CODE = 7
GOLDEN_RUN = TESTS / "golden" / "base"
NUM_REQUESTS, MAX_TOKENS = 6, 8


def recorded_run(tmp: Path, model_dir: Path, endpoint: str) -> dict:
    """Run a short offline vLLM script under `servescope run` with the OTLP endpoint set; return what happened."""
    run_dir, out_json = tmp / "run", tmp / "outputs.json"
    script = [sys.executable, str(TESTS / "engine_scripts" / "offline_generate.py"), str(model_dir), str(out_json),
              str(NUM_REQUESTS), str(MAX_TOKENS)]
    # the user's command: the script, then exit 7 (a failing script keeps its own code)
    command = [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--",
               "sh", "-c", f'"$@" && exit {COMMAND_EXIT_CODE}', "sh", *script]
    env = engine_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORT_TIMEOUT_S))
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=ENGINE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            popen.terminate()  # servescope run passes SIGTERM on to the command's process group: nothing is left behind
            _, stderr = popen.communicate(timeout=120)
            raise AssertionError(f"servescope run took over {ENGINE_TIMEOUT_S} s:\n{stderr[-4000:]}") from None
    proc = subprocess.CompletedProcess(command, popen.returncode, stdout, stderr)
    return {"proc": proc, "exited_wall_ns": time.time_ns(), "run_dir": run_dir,
            "outputs": read_json(out_json) if out_json.exists() else None}


@pytest.fixture(scope="module")
def hung_run(tmp_path_factory, tiny_model_dir):
    with HangingEndpoint() as endpoint:
        result = recorded_run(tmp_path_factory.mktemp("otlp-hangs"), tiny_model_dir, endpoint.endpoint)
        result["accepted_wall_ns"] = list(endpoint.accepted_wall_ns)
    return result


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory, tiny_model_dir):
    return recorded_run(tmp_path_factory.mktemp("otlp-closed"), tiny_model_dir,
                        f"http://127.0.0.1:{free_loopback_port()}")


def failure_line(proc: subprocess.CompletedProcess, run_dir: Path) -> str:
    """Return servescope's one line about the failed export (asserting there is exactly one, and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if "spans not exported" in line]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert lines[0].startswith("servescope: ") and lines[0].endswith(f"retry with: servescope export {run_dir}")
    return lines[0]


def assert_run_complete(result: dict) -> None:
    """The run directory holds every token vLLM returned, the manifest reports nothing lost, and the exit code is the
    command's."""
    proc, run_dir = result["proc"], result["run_dir"]
    assert result["outputs"] is not None and len(result["outputs"]) == NUM_REQUESTS, proc.stderr[-4000:]
    assert proc.returncode == COMMAND_EXIT_CODE, proc.stderr[-4000:]
    assert read_json(run_dir / "command.json")["exit_code"] == COMMAND_EXIT_CODE
    health = read_json(run_dir / "manifest.json")["health"]
    assert health["rows_dropped"] == 0 and health["internal_errors"] == 0 and health["processes_running"] == []
    external = {r["request_id"]: r["detail"] for r in read_table(run_dir, "request_events").to_pylist()
                if r["event"] == "arrival"}
    recorded = defaultdict(int)
    for row in read_table(run_dir, "token_emissions").to_pylist():
        recorded[external[row["request_id"]]] += row["num_tokens"]
    assert dict(recorded) == {rid: len(tokens) for rid, tokens in result["outputs"].items()}
    assert not list((run_dir / "spool").glob("*.spool"))


@pytest.mark.engine
def test_a_hanging_endpoint_is_contacted_only_after_the_run_and_waited_on_no_longer_than_the_timeout(hung_run):
    proc, run_dir = hung_run["proc"], hung_run["run_dir"]
    assert_run_complete(hung_run)
    line = failure_line(proc, run_dir)
    assert "OTLP export to" in line and "/v1/traces" in line
    ended_wall_ns = read_json(run_dir / "command.json")["ended_wall_ns"]  # the command ended and was compacted
    accepted = hung_run["accepted_wall_ns"]
    assert accepted, "the exporter never reached the endpoint"
    assert min(accepted) >= ended_wall_ns, "a process contacted the endpoint while the command ran"
    waited_s = (hung_run["exited_wall_ns"] - min(accepted)) / 1e9
    assert EXPORT_TIMEOUT_S - 0.5 <= waited_s <= EXPORT_TIMEOUT_S + AFTER_EXPORT_S, waited_s


@pytest.mark.engine
def test_a_closed_port_leaves_the_run_complete_and_says_how_to_export_again(refused_run):
    assert_run_complete(refused_run)
    line = failure_line(refused_run["proc"], refused_run["run_dir"])
    assert "OTLP export to" in line and "Is a Collector listening there?" in line


def tree_digest(root: Path) -> dict[str, str]:
    """Return relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_export_to_a_hanging_endpoint_ends_after_the_timeout_with_one_line(tmp_path, protocol):
    run_dir = Path(shutil.copytree(GOLDEN_RUN, tmp_path / "run"))
    before = tree_digest(run_dir)
    env = {k: v for k, v in engine_env(OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORT_TIMEOUT_S)).items()
           if not k.startswith("OTEL_EXPORTER_OTLP_") or k == "OTEL_EXPORTER_OTLP_TIMEOUT"}
    with HangingEndpoint() as endpoint:
        proc = subprocess.run([sys.executable, "-m", "servescope", "export", str(run_dir), "--otlp", endpoint.endpoint,
                               "--protocol", protocol], env=env, capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        exited_wall_ns = time.time_ns()
        accepted = list(endpoint.accepted_wall_ns)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("servescope: warning: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("servescope: ") and endpoint.endpoint.removeprefix("http://") in errors[0]
    assert protocol in errors[0]
    assert accepted, "the exporter never reached the endpoint"
    waited_s = (exited_wall_ns - min(accepted)) / 1e9
    assert EXPORT_TIMEOUT_S - 0.5 <= waited_s <= EXPORT_TIMEOUT_S + AFTER_EXPORT_S, waited_s
    assert tree_digest(run_dir) == before
