"""Isolated prefills and the prefill-time model: hand-built steps, then a real calibration run."""

import json
import subprocess
import sys

import numpy as np
import pytest
from runbuilder import RunBuilder

from engine_fixtures import engine_env
from servescope.analysis.prefill_calibration import (calibrate_prefill, isolated_prefills, load_prefill_model,
                                                     save_prefill_model)
from servescope.analysis.request_metrics import compute_request_metrics
from servescope.run.data import load_run

MS = 1_000_000


def _step(b, step_id, start_ms, end_ms, prefill, decode):
    b.row("steps", step_id=step_id, schedule_start_ns=start_ms * MS, update_end_ns=end_ms * MS,
          num_prefill_reqs=prefill, num_decode_reqs=decode)


def test_only_prefills_that_ran_alone_are_isolated(tmp_path):
    b = RunBuilder(tmp_path)
    _step(b, 0, 0, 10, 1, 0)  # A alone: isolated
    _step(b, 1, 10, 20, 1, 1)  # B's prefill beside A's decode: not isolated
    _step(b, 2, 20, 30, 1, 0)  # C chunk 1, alone
    _step(b, 3, 30, 45, 1, 0)  # C chunk 2, alone, first token: isolated over two steps
    _step(b, 4, 45, 50, 2, 0)  # D with another prefill: not isolated
    b.request("A", arrival_ns=0, queued_ns=0, scheduled_ns=0, emissions=[(0, 10 * MS, 1), (1, 20 * MS, 1)],
              finished_ns=20 * MS, prompt_tokens=100)
    b.request("B", arrival_ns=9 * MS, queued_ns=9 * MS, scheduled_ns=10 * MS, emissions=[(1, 20 * MS, 1)],
              finished_ns=20 * MS, prompt_tokens=50)
    b.request("C", arrival_ns=19 * MS, queued_ns=19 * MS, scheduled_ns=20 * MS, emissions=[(3, 45 * MS, 1)],
              finished_ns=45 * MS, prompt_tokens=300)
    b.request("D", arrival_ns=44 * MS, queued_ns=44 * MS, scheduled_ns=45 * MS, emissions=[(4, 50 * MS, 1)],
              finished_ns=50 * MS, prompt_tokens=20)
    run = load_run(b.write())
    lengths, prefill = isolated_prefills(run, compute_request_metrics(run))
    assert sorted(zip(lengths.tolist(), np.round(prefill, 6).tolist())) == [(100, 0.010), (300, 0.025)]


def test_model_round_trips_and_bad_file_is_named(tmp_path):
    from servescope.analysis.fluidity import fit_prefill_model

    model = fit_prefill_model([100, 200, 400, 800], [0.011, 0.021, 0.041, 0.081])
    save_prefill_model(model, tmp_path / "m.json")
    again = load_prefill_model(tmp_path / "m.json")
    assert again.predict(400) == pytest.approx(model.predict(400))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_prefill_model(tmp_path / "bad.json")


@pytest.mark.engine
def test_calibration_run_on_the_cpu_engine_feeds_fluidity(tmp_path, tiny_model_dir):
    trace = tmp_path / "lengths.csv"
    lengths = [32, 64, 128, 192, 256, 384, 512, 640]
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i},{n},2\n" for i, n in enumerate(lengths)))
    run_dir = tmp_path / "calibration"
    subprocess.run([sys.executable, "-m", "servescope", "bench", "--workload", str(trace), "--concurrency", "1",
                    "--in-process", "--no-progress", "--out", str(run_dir), "--engine-args",
                    f"--model {tiny_model_dir} --load-format dummy --max-model-len 1024 --max-num-batched-tokens 1024"],
                   env=engine_env(), check=True, capture_output=True, timeout=600)
    run = load_run(run_dir)
    found, prefill = isolated_prefills(run, compute_request_metrics(run))
    assert sorted(found.tolist()) == lengths  # one request in flight: every prefill ran alone
    # each prefill time recomputed from the raw rows: first token emitted minus first scheduled
    from servescope.run.tables import read_table

    scheduled, first_token, prompt = {}, {}, {}
    for e in read_table(run_dir, "request_events").to_pylist():
        if e["event"] == "scheduled":
            scheduled.setdefault(e["request_id"], e["time_ns"])
        if e["prompt_tokens"] is not None:
            prompt[e["request_id"]] = e["prompt_tokens"]
    for r in read_table(run_dir, "token_emissions").to_pylist():
        first_token[r["request_id"]] = min(first_token.get(r["request_id"], r["time_ns"]), r["time_ns"])
    expected = sorted((prompt[rid], (first_token[rid] - scheduled[rid]) / 1e9) for rid in first_token)
    got = sorted(zip(found.tolist(), prefill.tolist()))
    assert [p for p, _ in got] == [p for p, _ in expected]
    np.testing.assert_allclose([t for _, t in got], [t for _, t in expected], rtol=0, atol=1e-9)
    model_path = tmp_path / "prefill.json"
    out = subprocess.run([sys.executable, "-m", "servescope", "calibrate-prefill", str(run_dir), "--out",
                          str(model_path)], capture_output=True, text=True, check=True)
    assert "8 isolated prefills" in out.stdout
    model = calibrate_prefill([run_dir])
    assert np.all(np.diff(model.predict(np.array(lengths))) >= 0) and model.predict(640) > 0
    result = json.loads(subprocess.run(
        [sys.executable, "-m", "servescope", "analyze", str(run_dir), "--json", "--tbt-slo", "0.5",
         "--prefill-model", str(model_path), "--ttft-slack", "0.2"], capture_output=True, text=True, check=True).stdout)
    assert result["fluidity"]["prefill_model_s"] == pytest.approx(list(model.coefficients_s))
    assert all(r["deadlines"] >= 1 for r in result["requests"])
