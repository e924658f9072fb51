"""RecordedServer.lower_engine_priority on a real process tree: every thread of the server's descendants gets the
nice value, the server process itself keeps its own. Read back from /proc/PID/task/TID/stat (field 19, nice),
not through the functions under test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from servescope.bench.load.server import RecordedServer

# an "API server" that starts an "engine" child, which starts a second thread and a "worker" grandchild
ENGINE = ("import subprocess, sys, threading, time\n"
          "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
          "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "print(worker.pid, flush=True)\n"
          "time.sleep(60)\n")
SERVER = ("import subprocess, sys, time\n"
          "engine = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, text=True)\n"
          "print(engine.pid, engine.stdout.readline().strip(), flush=True)\n"
          "time.sleep(60)\n")


def nice_values(pid: int) -> list[int]:
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        values.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))  # field 19: nice
    return values


def test_engine_threads_get_the_nice_value_and_the_server_keeps_its_own(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", SERVER, ENGINE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        engine_pid, worker_pid = map(int, server.stdout.readline().split())
        deadline = time.monotonic() + 30
        while len(nice_values(engine_pid)) < 2 and time.monotonic() < deadline:  # the engine's second thread
            time.sleep(0.05)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        recorded = RecordedServer(server, "http://127.0.0.1:1", tmp_path, tmp_path / "server.log", [])
        assert recorded.lower_engine_priority(own + 7) == 3  # the engine's two threads, the worker's one
        assert nice_values(engine_pid) == [own + 7, own + 7]
        assert nice_values(worker_pid) == [own + 7]
        assert nice_values(server.pid) == [own]
    finally:
        os.killpg(server.pid, 9)
        server.wait()
