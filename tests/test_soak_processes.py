"""The untraced soak's process discovery (servescope/studies/soak.py: server_processes), on a real process tree;
and its reading of vLLM's waiting gauge (benchmarks/soak.py: parse_waiting).

A root process (the API server: vLLM leaves its title alone) starts a child that names itself as
vLLM's engine does (setproctitle 'VLLM::EngineCore'), which starts a grandchild named as vLLM's
worker ('VLLM::Worker_TP0'), and the root starts one more child with no vLLM name (like
multiprocessing's resource tracker). Discovery must give exactly root -> APIServer, child ->
EngineCore, grandchild -> Worker, and leave the unnamed child out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from servescope.bench.load.process_tree import descendants
from servescope.studies.soak import server_processes, vllm_role

pytest.importorskip("setproctitle")

NAMED = ("import os, sys, time, subprocess, setproctitle\n"
         "setproctitle.setproctitle(sys.argv[1])\n"
         "kids = [subprocess.Popen([sys.executable, '-c', sys.argv[3], a, '', sys.argv[3]]) for a in sys.argv[2:3] if a]\n"
         "time.sleep(60)\n")
ROOT = ("import sys, time, subprocess\n"
        "named = subprocess.Popen([sys.executable, '-c', sys.argv[1], 'VLLM::EngineCore', 'VLLM::Worker_TP0', sys.argv[1]])\n"
        "plain = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(named.pid, plain.pid, flush=True)\n"
        "time.sleep(60)\n")


def test_vllm_titles_give_their_roles():
    assert vllm_role("VLLM::EngineCore") == "EngineCore"
    assert vllm_role("VLLM::EngineCore_DP1") == "EngineCore"
    assert vllm_role("VLLM::Worker_TP0 ") == "Worker"
    assert vllm_role("VLLM::APIServer_0") == "APIServer"
    assert vllm_role("MYPREFIX::EngineCore", prefix="MYPREFIX") == "EngineCore"
    assert vllm_role("python -m vllm.entrypoints.openai.api_server --model m") is None
    assert vllm_role("VLLM::DPCoordinator") is None


def test_a_real_process_tree_is_found_and_named():
    root = subprocess.Popen([sys.executable, "-c", ROOT, NAMED], stdout=subprocess.PIPE, text=True)
    try:
        engine_pid, plain_pid = map(int, root.stdout.readline().split())
        deadline = time.monotonic() + 60
        found: dict[int, str] = {}
        while time.monotonic() < deadline:  # until the grandchild exists and has named itself
            found = server_processes(root.pid)
            if sorted(found.values()) == ["APIServer", "EngineCore", "Worker"]:
                break
            time.sleep(0.2)
        worker_pids = descendants(engine_pid)
        assert len(worker_pids) == 1
        assert found == {root.pid: "APIServer", engine_pid: "EngineCore", worker_pids[0]: "Worker"}
        assert plain_pid in descendants(root.pid) and plain_pid not in found
        assert descendants(root.pid).index(engine_pid) < descendants(root.pid).index(worker_pids[0])
    finally:
        for pid in descendants(root.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        root.kill()
        root.wait()


METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 57.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 50.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 7.0
vllm:num_requests_running{engine="0",model_name="m"} 8.0
"""


def test_the_waiting_gauge_is_read_once_not_with_its_breakdown_by_reason():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("soak_script", Path(__file__).parents[1] / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert soak.parse_waiting(METRICS) == 57.0
    assert soak.parse_waiting("vllm:num_requests_running 3.0\n") is None
