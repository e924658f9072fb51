"""`servescope run` leaves what no option says to the single SERVESCOPE_* variables (docs/cli.md): a variable
named in the docs and then ignored by the command line lost the kernel-time windows of a GPU lease."""

import json
import os
import subprocess
import sys

SHOW_CONFIG = "import json, os; print(json.dumps(json.loads(os.environ['SERVESCOPE_CONFIG'])))"


def _child_config(tmp_path, name, options=(), **env):
    run_dir = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", *options,
                           "--", sys.executable, "-c", SHOW_CONFIG],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_parts_the_variables_add_gpu_stamps_and_thread_usage(tmp_path):
    config = _child_config(tmp_path, "vars", SERVESCOPE_GPU_STAMPS="1", SERVESCOPE_THREAD_USAGE="1",
                           SERVESCOPE_SELF_TIMING="1")
    assert {"gpu_stamps", "thread", "regions"} <= set(config["parts"])
    assert config["self_timing"] is True


def test_an_explicit_parts_list_wins_over_the_variables(tmp_path):
    config = _child_config(tmp_path, "explicit", ("--parts", "default", "--self-timing"), SERVESCOPE_GPU_STAMPS="1")
    assert "gpu_stamps" not in config["parts"] and "regions" in config["parts"]
    assert config["self_timing"] is True


def test_no_variable_no_option_records_the_default_parts(tmp_path):
    env = {k: "" for k in ("SERVESCOPE_GPU_STAMPS", "SERVESCOPE_THREAD_USAGE", "SERVESCOPE_SELF_TIMING")}
    config = _child_config(tmp_path, "plain", **env)
    from servescope.run.config import DEFAULT_PARTS
    assert set(config["parts"]) == set(DEFAULT_PARTS) and config["self_timing"] is False
