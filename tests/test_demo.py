"""The README's main job, `servescope demo`, end to end on the CPU build (fewer requests than its default)."""

import json
import subprocess
import sys

import pytest

from engine_fixtures import ENGINE_TIMEOUT_S, engine_env

pytestmark = pytest.mark.engine


def test_demo_records_analyses_audits_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "servescope", "demo", "--out", str(out), "--requests", "24",
                           "--rate", "6"], env=engine_env(), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["status"] == "complete" and bench["results"]["ok"] == 24, bench
    assert "checklist 8 No obscuring normalization" in proc.stdout
    analysis = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(out), "--json"],
                              capture_output=True, text=True, check=True)
    assert json.loads(analysis.stdout)["run"]["requests"] == 24
    html = (out / "report" / "index.html").read_text()
    assert html.count("<img") >= 5 and "azure-conv-2023" in json.dumps(json.loads((out / "manifest.json").read_text()))
