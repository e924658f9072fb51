"""Golden analysis: two committed runs must analyse, compare and audit to the committed numbers.

tests/golden/base and tests/golden/budget512 are offline runs of the tiny model
(tests/engine_fixtures.py ``record_offline_run``: 24 requests of 20 + 9 i prompt tokens, 16 output
tokens each, greedy; chunked-prefill token budget 128 and 512), recorded on 2026-12-01 with the code of
branch restructure-moves (d4bb98b, the code of main before the restructuring: the same numbers).
tests/golden/expected/*.json is what `servescope analyze --json`, `compare --json` and
`audit --json` printed for them with that code (regenerated once since, for the rename of the
iterations key launch_s to execute_s: every other key and every number unchanged). Every refactor must keep these outputs: same
keys, same strings, every number equal to 1e-12 relative.

Regenerating (``python tests/test_golden_analysis.py --regenerate``) rewrites the expected
files with the current code. That is allowed only when a change of the numbers or the JSON is
intended (a fixed bug, a new field), is named in the commit message, and docs/json-contract.md
says what changed; never to make a refactor pass. The runs themselves are not re-recorded
(a new recording is a different workload sample, not a regression test).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = GOLDEN / "expected"
RUNS = ("base", "budget512")
RELATIVE_TOLERANCE = 1e-12
COMMANDS = {  # expected file -> servescope arguments ({base}, {treat}: the run directories)
    "analyze.json": ["analyze", "{base}", "--json"],
    "analyze-fluidity.json": ["analyze", "{base}", "--json", "--tbt-slo", "0.02", "--ttft-slo", "0.1"],
    "analyze-budget512.json": ["analyze", "{treat}", "--json"],
    "compare.json": ["compare", "{base}", "{treat}", "--json"],
    "audit.json": ["audit", "{base}", "--treat", "{treat}", "--json"],
}


def copy_runs(tmp: Path) -> dict[str, Path]:
    """Copy the committed runs to tmp (the readers may build files in a run) and return base/treat paths."""
    paths = {}
    for name, key in zip(RUNS, ("base", "treat")):
        paths[key] = tmp / name
        shutil.copytree(GOLDEN / name, paths[key])
    return paths


def servescope_json(args: list[str], paths: dict[str, Path]) -> object:
    """Run the real CLI and return its JSON, with the run directories' paths replaced by {base} / {treat}."""
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    cwd = next(iter(paths.values())).parent  # not the checkout: `-m` imports from the working directory first
    proc = subprocess.run([sys.executable, "-m", "servescope", *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for key, path in paths.items():
        text = text.replace(str(path), "{" + key + "}")
    return json.loads(text)


def differences(expected, actual, where: str = "$") -> list[str]:
    """Return where actual differs from expected: keys, types, strings exactly, numbers to 1e-12 relative."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}: key {k!r} missing" for k in expected if k not in actual]
        out += [f"{where}: unexpected key {k!r}" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(expected[k], actual[k], f"{where}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool) \
            and not isinstance(actual, bool):
        if math.isclose(expected, actual, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0) or expected == actual \
                or (math.isnan(expected) and math.isnan(actual)):
            return []
        return [f"{where}: {actual!r}, expected {expected!r}"]
    return [] if expected == actual and type(expected) is type(actual) else [f"{where}: {actual!r}, expected {expected!r}"]


def test_differences_finds_a_changed_number_key_and_string():
    expected = {"a": 1.0, "b": [1, "x"], "c": {"d": None}}
    assert differences(expected, {"a": 1.0 + 1e-14, "b": [1, "x"], "c": {"d": None}}) == []
    assert differences(expected, {"a": 1.0 + 1e-9, "b": [1, "x"], "c": {"d": None}}) == ["$.a: 1.000000001, expected 1.0"]
    assert differences(expected, {"a": 1.0, "b": [1, "y"], "c": {}}) == ["$.b[1]: 'y', expected 'x'",
                                                                          "$.c: key 'd' missing"]
    assert differences({"n": None}, {"n": 0.0}) == ["$.n: 0.0, expected None"]


def test_committed_runs_analyse_to_the_committed_numbers(tmp_path):
    paths = copy_runs(tmp_path)
    failures = {}
    for name, args in COMMANDS.items():
        expected = json.loads((EXPECTED / name).read_text())
        found = differences(expected, servescope_json(args, paths))
        if found:
            failures[name] = found[:20]
    assert not failures, json.dumps(failures, indent=1)


def regenerate() -> None:
    """Rewrite tests/golden/expected/ with the current code (see the module docstring for when that is allowed)."""
    import tempfile

    EXPECTED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = copy_runs(Path(tmp))
        for name, args in COMMANDS.items():
            (EXPECTED / name).write_text(json.dumps(servescope_json(args, paths), indent=1, sort_keys=True) + "\n")
            print(f"wrote {EXPECTED / name}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden_analysis.py --regenerate  (read the module docstring first)")
    regenerate()
