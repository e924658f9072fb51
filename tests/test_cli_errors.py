"""Every failure a user can cause is one line `servescope: ...` naming the option or file, exit code 2.

The cases of issue 14 run through the real command line in a subprocess (``python -m
servescope``); the sweep over every numeric option of every command runs in this process
through the same app and handler (typer's CliRunner). Nothing here starts an engine.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from servescope.cli import options
from servescope.cli.main import app

GOLDEN_RUN = Path(__file__).parent / "golden" / "base"


def servescope(*args, cwd: Path, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the real command line (python -m servescope, or main() after a prelude) in a subprocess."""
    argv = [str(a) for a in args]
    if prelude:
        command = [sys.executable, "-c", f"{prelude}\nfrom servescope.cli import main\nmain()", *argv]
    else:
        command = [sys.executable, "-m", "servescope", *argv]
    import os

    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def assert_one_line(proc: subprocess.CompletedProcess, *names: str, code: int = 2) -> str:
    """Assert exit code, nothing on stdout, exactly one stderr error line starting 'servescope: ' and naming each
    name. Warnings about the run read ('servescope: warning: ...', e.g. the golden runs predate the part index)
    are separate lines and not the error."""
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("servescope: warning: ")]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("servescope: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def run_copy(tmp_path) -> Path:
    """A readable run directory (a copy of the committed golden run)."""
    return Path(shutil.copytree(GOLDEN_RUN, tmp_path / "run"))


# --------------------------------------------------------------------------- issue 14's raw tracebacks


def test_otlp_export_to_a_closed_port_is_one_line(run_copy, tmp_path):
    proc = servescope("export", run_copy, "--otlp", "http://127.0.0.1:1", cwd=tmp_path)
    assert_one_line(proc, "http://127.0.0.1:1", "OTLP export")


@pytest.mark.parametrize("damage", ["truncated", "not-utf8"])
@pytest.mark.parametrize("command", [["export"], ["audit"], ["compare", "{good}"], ["analyze"]])
def test_a_damaged_manifest_is_named(run_copy, tmp_path, damage, command):
    good = Path(shutil.copytree(run_copy, tmp_path / "good"))
    manifest = run_copy / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:150] if damage == "truncated" else b"\xff\xfe{\x00garbage")
    args = [command[0], run_copy] + [a.format(good=good) for a in command[1:]]
    line = assert_one_line(servescope(*args, cwd=tmp_path), str(manifest))
    assert ("line " in line and "not valid JSON" in line) if damage == "truncated" else "not UTF-8" in line


def test_run_out_an_existing_file(tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    assert_one_line(servescope("run", "--out", existing, "--", "true", cwd=tmp_path), "--out", str(existing))


@pytest.mark.parametrize("args,option", [
    (["report", "{run}", "--out", "{blocked}/report"], "--out"),
    (["model", "init", "{blocked}/model"], "directory"),
    (["export", "{run}", "--perfetto", "{blocked}/trace.json"], "--perfetto"),
    (["calibrate-prefill", "{run}", "--out", "{blocked}/prefill.json"], "--out"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(run_copy, tmp_path, args, option):
    blocked = tmp_path / "a-file"  # a path under a regular file: nobody can create it, root included
    blocked.write_text("x")
    argv = [a.format(run=run_copy, blocked=blocked) for a in args]
    assert_one_line(servescope(*argv, cwd=tmp_path), option, str(blocked))


def test_engine_args_that_do_not_parse(tmp_path):
    proc = servescope("bench", "--workload", "chat", "--out", tmp_path / "b", "--engine-args", "--model 'unterminated",
                      cwd=tmp_path)
    assert_one_line(proc, "--engine-args", "No closing quotation")
    assert not (tmp_path / "b").exists()
    proc = servescope("overhead", "--model", tmp_path / "m", "--out", tmp_path / "o", "--engine-args", "[1,2]",
                      cwd=tmp_path)
    assert_one_line(proc, "--engine-args", "JSON object")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option,value", [("--count", "-1"), ("--max-prompt-tokens", "0"), ("--timeout", "nan"),
                                          ("--rate", "inf"), ("--time-scale", "0"), ("--cv", "-1"),
                                          ("--max-failed-fraction", "2")])
def test_bench_values_are_checked_before_any_work(tmp_path, option, value):
    out = tmp_path / "run"
    proc = servescope("bench", "--workload", "chat", "--endpoint", "http://127.0.0.1:9", "--out", out, option, value,
                      cwd=tmp_path)
    assert_one_line(proc, option, value)
    assert not out.exists()


@pytest.mark.parametrize("command", [["analyze", "{run}"], ["report", "{run}", "--out", "{tmp}/r"],
                                     ["audit", "{run}"], ["capacity", "--workload", "chat", "--slo", "tbt-ttft",
                                                          "--start-rate", "1", "--out", "{tmp}/c"]])
def test_a_negative_slo_is_refused(run_copy, tmp_path, command):
    option = "--ttft" if command[0] == "capacity" else "--ttft-slo"
    argv = [a.format(run=run_copy, tmp=tmp_path) for a in command] + [option, "-5"]
    assert_one_line(servescope(*argv, cwd=tmp_path), option, "-5")


def test_run_stops_parsing_options_at_the_command(tmp_path):
    script = "import sys, json; json.dump(sys.argv[1:], open('argv.json', 'w'))"
    proc = servescope("run", "--out", tmp_path / "run", "--no-export", sys.executable, "-c", script, "--out", "theirs",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "argv.json").read_text() == '["--out", "theirs"]'  # the command got its own --out
    assert (tmp_path / "run" / "command.json").exists() and not (tmp_path / "theirs").exists()


def test_debug_prints_the_traceback_instead(tmp_path):
    missing = tmp_path / "no-such-run"
    plain = servescope("export", missing, cwd=tmp_path)
    assert_one_line(plain, str(missing))
    for proc in (servescope("--debug", "export", missing, cwd=tmp_path),
                 servescope("export", missing, cwd=tmp_path, env={"SERVESCOPE_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
        assert "RunDirError" in proc.stderr and str(missing) in proc.stderr


def test_a_missing_package_is_named_and_the_command_still_listed(run_copy, tmp_path):
    blocked = "import sys\nsys.modules['matplotlib'] = None\nsys.modules['opentelemetry'] = None"
    listing = servescope("--help", cwd=tmp_path, prelude=blocked)
    assert listing.returncode == 0 and " report " in listing.stdout and " export " in listing.stdout
    report = servescope("report", run_copy, "--out", tmp_path / "r", cwd=tmp_path, prelude=blocked)
    assert_one_line(report, "'matplotlib'", "pip install matplotlib")
    export = servescope("export", run_copy, cwd=tmp_path, prelude=blocked)
    assert_one_line(export, "'opentelemetry'", "pip install opentelemetry-sdk")


def test_both_module_entry_points_run_the_command_line(tmp_path):
    for module in ("servescope", "servescope.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0 and "analyze" in proc.stdout and "bench" in proc.stdout, proc.stderr


# --------------------------------------------------------------------------- every numeric option of every command


def numeric_options() -> list[tuple[list[str], str, object]]:
    """Return (command path, option flag, its check) for every int or float option of every command."""
    found = []

    def walk(typer_app: typer.Typer, path: list[str]) -> None:
        for info in typer_app.registered_commands:
            name = info.name or info.callback.__name__.replace("_", "-")
            for parameter in inspect.signature(info.callback).parameters.values():
                default = parameter.default
                annotation = str(parameter.annotation)
                if isinstance(default, typer.models.OptionInfo) and ("int" in annotation or "float" in annotation) \
                        and "bool" not in annotation:
                    flag = next(d for d in (default.default, *default.param_decls) if isinstance(d, str) and
                                d.startswith("--"))
                    found.append((path + [name], flag, default.callback))
        for group in typer_app.registered_groups:
            walk(group.typer_instance, path + [group.name])

    walk(app, [])
    return found


def test_every_numeric_option_has_a_check():
    unchecked = [f"{' '.join(path)} {flag}" for path, flag, check in numeric_options()
                 if check not in options.NUMERIC_CHECKS]
    assert len(numeric_options()) > 50 and not unchecked, unchecked


BAD_VALUES = {  # check -> values it must refuse
    options.positive: ["nan", "inf", "-inf", "0", "-1"],
    options.non_negative: ["nan", "inf", "-1"],
    options.fraction: ["nan", "-0.1", "1.5"],
    options.percentile: ["nan", "0", "100.5"],
    options.any_finite: ["nan", "inf"],
    options.at_least_two: ["nan", "inf", "1", "0", "-2"],
}


@pytest.mark.parametrize("path,flag,check", numeric_options(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_numeric_option_refuses_what_means_nothing(path, flag, check, tmp_path):
    for value in BAD_VALUES[check]:
        if value in ("nan", "inf", "-inf", "1.5", "-0.1", "100.5") and _is_int_option(path, flag):
            continue  # an integer option refuses these already while parsing (not a number)
        result = CliRunner().invoke(app, [*path, flag, value])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (path, flag, value, result.output)
        assert len(lines) == 1 and lines[0].startswith("servescope: ") and flag in lines[0], (flag, value, lines)


def _is_int_option(path: list[str], flag: str) -> bool:
    callback = _command_callback(path)
    for parameter in inspect.signature(callback).parameters.values():
        default = parameter.default
        if isinstance(default, typer.models.OptionInfo) and flag in (default.default, *default.param_decls):
            return "int" in str(parameter.annotation)
    raise KeyError(flag)


def _command_callback(path: list[str]):
    typer_app = app
    for part in path[:-1]:
        typer_app = next(g.typer_instance for g in typer_app.registered_groups if g.name == part)
    return next(c.callback for c in typer_app.registered_commands
                if (c.name or c.callback.__name__.replace("_", "-")) == path[-1])
