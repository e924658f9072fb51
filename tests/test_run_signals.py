"""`servescope run` passes signals on to its command's process group: the first as it came, the second as SIGTERM,
the third as SIGKILL; whichever ends the command, the run is finished (command.json, manifest). The command here
is a real process that ignores SIGINT, as a server does that ends its work on SIGINT but not its process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

def signal_until_it_ends(run_dir, ignored: tuple[str, ...], sent: list[signal.Signals]) -> dict:
    """Run under servescope run a command that ignores the signals named ignored; send it the signals of sent one
    second apart (it must outlive all but the last); return the run's command.json once the run is finished."""
    command = ("import signal, time\n" + "".join(f"signal.signal(signal.{name}, signal.SIG_IGN)\n" for name in ignored)
               + "print('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", "--",
                             sys.executable, "-c", command], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for number, sig in enumerate(sent, start=1):
            proc.send_signal(sig)
            if number < len(sent):
                time.sleep(1.0)
                assert proc.poll() is None, f"the command ended at signal {number} of {len(sent)}"
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (run_dir / "manifest.json").exists()
    return json.loads((run_dir / "command.json").read_text())


def test_a_second_signal_is_passed_on_as_sigterm(tmp_path):
    command = signal_until_it_ends(tmp_path / "run", ("SIGINT",), [signal.SIGINT, signal.SIGINT])
    assert command["signals"] == ["SIGINT", "SIGINT"] and command["exit_code"] == -signal.SIGTERM


def test_a_third_signal_kills(tmp_path):
    command = signal_until_it_ends(tmp_path / "run", ("SIGINT", "SIGTERM"), [signal.SIGTERM] * 3)
    assert command["signals"] == ["SIGTERM"] * 3 and command["exit_code"] == -signal.SIGKILL
