"""`servescope run` passes signals on to its command's process group: the first as it came, the second as SIGTERM,
the third as SIGKILL; whichever ends the command, the run is finished (command.json, manifest). The command here
is a real process that ignores SIGINT, as a server does that ends its work on SIGINT but not its process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

COMMAND = ("import signal, sys, time\n"
           "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
           "print('ready', flush=True)\n"
           "time.sleep(120)\n")


def start(run_dir, command: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", "--",
                             sys.executable, "-c", command], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_signal_is_passed_on_as_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, COMMAND)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the command ignored it
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    command = json.loads((run_dir / "command.json").read_text())
    assert command["signals"] == ["SIGINT", "SIGINT"] and command["exit_code"] == -signal.SIGTERM
    assert (run_dir / "manifest.json").exists()


def test_a_third_signal_kills(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, COMMAND.replace("signal.SIGINT, signal.SIG_IGN", "signal.SIGINT, signal.SIG_IGN); "
                                          "signal.signal(signal.SIGTERM, signal.SIG_IGN"))
    try:
        for _ in range(2):
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    command = json.loads((run_dir / "command.json").read_text())
    assert command["signals"] == ["SIGTERM"] * 3 and command["exit_code"] == -signal.SIGKILL
    assert (run_dir / "manifest.json").exists()
