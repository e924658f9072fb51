"""Client-only runs against real servers that servescope does not trace, both streaming on the CPU.

Two OpenAI-compatible servers, each started once for the module, used for its benchmark runs
and stopped before the next one starts (2 shared cores):

* vLLM's own server, untraced (``python -m vllm.entrypoints.openai.api_server``, no
  SERVESCOPE_RUN_DIR: servescope's plugin records nothing): ``servescope bench --endpoint`` at
  concurrency 4 and at concurrency 1, plus two requests that fail for real (a prompt id outside
  the vocabulary: vLLM answers with an error event; a long answer under a 0.3 s limit: timeout);
* ``transformers serve`` (Hugging Face transformers, not vLLM): the tiny Llama with random
  weights saved by transformers into a local Hugging Face cache (it serves cache entries, and
  lists them at /v1/models), offline; it takes text prompts only and rejects vLLM's fields, so
  the client sends ``--api openai`` with the synthetic vocabulary's words, and transformers'
  own ``generation_config`` suppresses BOS and EOS (the equivalent of ignore_eos).

Every reader (analyze text and --json, report, audit, compare, Perfetto) is checked against an
independent reading of the client's Parquet tables (client_only_checks.py), never against
servescope's own analysis.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client_only_checks import (
    analyze_json,
    check_client_only_analysis,
    read_client_requests,
    servescope_cli,
    stats,
    write_trace,
)
from engine_fixtures import engine_env
from test_perfetto import validate_trace
from test_report import assert_page_renders, load_in_browser

pytestmark = pytest.mark.engine

TBT_SLO_S = 0.05
LENGTHS = [(int(p), int(o)) for p, o in zip(np.random.default_rng(11).integers(8, 200, 16),
                                              np.random.default_rng(12).integers(2, 40, 16))]
# transformers serve decodes one request at a time per thread, far slower on 2 shared cores: a smaller load.
SHORT_LENGTHS = [(p, min(o, 12)) for p, o in LENGTHS[:8]]
VLLM_ARGS = ["--load-format", "dummy", "--max-model-len", "1024"]
HF_REVISION = "0" * 40
# transformers serve: no BOS (1) or EOS (2) generated, greedy; max_tokens comes from the request.
TRANSFORMERS_BODY = json.dumps({"generation_config": json.dumps({"suppress_tokens": [1, 2], "do_sample": False})})


def start(argv: list[str], log: Path, env: dict[str, str], port: int, timeout_s: float = 600):
    """Start a server (not recorded) on 127.0.0.1:port; return it once /health answers (servescope's own wait)."""
    from servescope.bench.load.server import HOST, RecordedServer, wait_until_healthy

    log_file = open(log, "ab")
    process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = RecordedServer(process, f"http://{HOST}:{port}", log.parent, log, argv, log_file)
    try:
        wait_until_healthy(server, timeout_s)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    return server


def bench(url: str, trace: Path, out: Path, *args) -> None:
    result = servescope_cli("bench", "--workload", trace, "--endpoint", url, "--out", out, "--no-progress", *args)
    assert result.exit_code == 0, result.output
    assert "client only: no engine records" in result.output and f"next: servescope analyze {out}" in result.output


@pytest.fixture(scope="module")
def vllm_runs(tmp_path_factory, tiny_model_dir):
    """Two client-only runs of an untraced vLLM server (concurrency 4 with two failures; concurrency 1)."""
    from servescope.bench.load.driver_http import LoadPlan, drive_http
    from servescope.bench.load.server import free_port
    from servescope.record.recorder import close_recorder
    from servescope.run.compact import close_run

    root = tmp_path_factory.mktemp("vllm-untraced")
    port = free_port()
    server = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
                    *VLLM_ARGS, "--host", "127.0.0.1", "--port", str(port)], root / "server.log", engine_env(), port)
    try:
        trace = write_trace(root / "mixed.csv", LENGTHS)
        busy, alone = root / "concurrency-4", root / "concurrency-1"
        bench(server.url, trace, busy, "--concurrency", "4")
        bench(server.url, trace, alone, "--concurrency", "1")
        # Two requests that fail for real, into the first run after its workload (a bench refuses a directory that
        # already holds client rows): an error, then a timeout. Three recorders of this process write into the one
        # run directory: none may overwrite another's parts.
        for prompt, max_tokens, limit_s, prefix in (([5, 999_999], 8, 60.0, "bad-id"), ([5, 6, 7], 1000, 0.3, "slow")):
            plan = LoadPlan([prompt], [max_tokens], concurrency=1, id_prefix=prefix)
            asyncio.run(drive_http(server.url, plan, busy, request_timeout_s=limit_s))
            close_recorder()
        close_run(busy)  # compacts the two recorders' spools and writes the manifest again
    finally:
        server.stop()
    assert not list(busy.glob("tables/request_events/*")), "the untraced server recorded engine rows"
    return busy, alone


@pytest.fixture(scope="module")
def transformers_run(tmp_path_factory, tiny_model_dir, vllm_runs):
    """A client-only run of `transformers serve` (started after the vLLM server stopped)."""
    import torch
    import transformers

    from servescope.bench.load.server import free_port

    root = tmp_path_factory.mktemp("transformers-serve")
    snapshot = root / "hub" / "models--local--tiny" / "snapshots" / HF_REVISION
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(HF_REVISION)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(snapshot))
    model.save_pretrained(snapshot)  # random weights: transformers has no dummy load format
    del model
    port = free_port()
    env = {**engine_env(), "HF_HUB_CACHE": str(root / "hub")}
    command = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    server = start([command, "serve", "local/tiny", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                   root / "server.log", env, port)
    out = root / "transformers"
    try:
        bench(server.url, write_trace(root / "short.csv", SHORT_LENGTHS), out, "--concurrency", "4", "--api", "openai",
              "--extra-body", TRANSFORMERS_BODY, "--vocab-size", "2048")
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------- vLLM, untraced


def test_analyze_of_an_untraced_vllm_run_equals_the_client_tables(vllm_runs):
    busy, _ = vllm_runs
    raw = read_client_requests(busy)
    assert len(raw) == len(LENGTHS) + 2
    failed = {r.request_id: r for r in raw.values() if r.status != "ok"}
    assert sorted(r.status for r in failed.values()) == ["error", "timeout"]
    (bad,) = [r for r in failed.values() if r.status == "error"]
    assert "out of vocabulary" in bad.error and not bad.chunks  # vLLM streams it as an error event
    ok = sorted((r for r in raw.values() if r.status == "ok"), key=lambda r: int(r.request_id.rsplit("-", 1)[1]))
    assert [(r.prompt_tokens, r.tokens) for r in ok] == LENGTHS  # ignore_eos: every token asked for came

    result = analyze_json(busy, "--tbt-slo", TBT_SLO_S)
    check_client_only_analysis(result, raw, TBT_SLO_S)
    listed = {r["request_id"]: r for r in result["requests"]}
    assert listed[bad.request_id]["ttft_s"] is None and "out of vocabulary" in listed[bad.request_id]["error"]

    text = servescope_cli("analyze", busy, "--tbt-slo", TBT_SLO_S).output
    assert "observer: client only" in text and f"client requests: {len(ok)} ok, 1 error, 1 timeout" in text
    assert "2 requests did not end 'ok'" in text and "null: engine only" in text
    ttft_p50 = stats([r.ttft_s() for r in ok])["p50"] * 1e3
    assert f"{ttft_p50:.2f}" in next(line for line in text.splitlines() if line.startswith("TTFT"))


def test_report_audit_and_perfetto_of_an_untraced_vllm_run(vllm_runs, tmp_path):
    from servescope.report.build import figure_specs, write_report

    busy, _ = vllm_runs
    raw = read_client_requests(busy)
    index = write_report([busy], tmp_path / "report", tbt_slo_s=TBT_SLO_S)
    specs = figure_specs(TBT_SLO_S, engine_steps=False)
    drawn = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert drawn == sorted(f"{s.name}.png" for s in specs)
    assert "iteration-timeline.png" not in drawn and "client-vs-engine.png" not in drawn
    html = index.read_text()
    assert "client only" in html and "engine only" in html and "not visible from the client" in html
    result = load_in_browser(index, tmp_path / "profile")
    assert_page_renders(result, len(specs))
    assert "1 error, 1 timeout" in result["text"]

    audit = servescope_cli("audit", busy, "--tbt-slo", TBT_SLO_S, "--ttft-slo", 1.0, "--json")
    assert audit.exit_code == 0, audit.output
    items = {item["item"]: item for item in json.loads(audit.output)["items"]}
    assert items[1]["status"] == "warn" and "cannot be seen from outside" in " ".join(items[1]["evidence"])
    assert "cannot be seen from outside" in " ".join(items[2]["evidence"] + items[3]["evidence"])
    assert "2 requests did not end 'ok'" in " ".join(items[7]["evidence"])
    ok_gaps = [g for r in raw.values() if r.status == "ok" for g in r.chunk_gaps_s()]
    tbt_p99 = np.percentile(ok_gaps, 99)
    assert f"TBT per chunk (client) P99 {tbt_p99 * 1e3:.1f} ms" in " ".join(items[5]["evidence"])

    trace = tmp_path / "trace.json"
    assert servescope_cli("export", busy, "--perfetto", trace, "--include-request-ids").exit_code == 0
    events = validate_trace(json.loads(trace.read_text()))
    begins = {e["args"]["request_id"]: e for e in events if e["ph"] == "b" and e["name"] == "client request"}
    assert set(begins) == set(raw)
    for rid, mine in raw.items():
        assert begins[rid]["args"]["status"] == mine.status and begins[rid]["args"]["chunks"] == len(mine.chunks)
    instants = [e for e in events if e["ph"] == "n"]
    assert sorted(e["name"] for e in instants) == ["error", "timeout"]
    assert not [e for e in events if e.get("cat") == "request"]  # no engine request: nothing made up


def test_compare_of_two_client_only_runs_of_one_server(vllm_runs):
    busy, alone = vllm_runs
    result = servescope_cli("compare", alone, busy, "--json")
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert comparison["observer"] == "client" and comparison["iteration"] == {}
    assert set(comparison["latency"]) == {"ttft", "tbt_per_chunk", "e2e", "decode", "tpot", "normalized_latency"}
    assert comparison["configuration"]["same_engine"] is None
    ok = {run: [r for r in read_client_requests(run).values() if r.status == "ok"] for run in (alone, busy)}
    for metric, values in (("ttft", lambda rs: [r.ttft_s() for r in rs]),
                           ("e2e", lambda rs: [r.e2e_s() for r in rs]),
                           ("tbt_per_chunk", lambda rs: [g for r in rs for g in r.chunk_gaps_s()])):
        base, treat = stats(values(ok[alone])), stats(values(ok[busy]))
        for stat in ("mean", "p50", "p99"):
            row = comparison["latency"][metric][stat]
            assert math.isclose(row["baseline"], base[stat], rel_tol=1e-9), (metric, stat)
            assert math.isclose(row["treatment"], treat[stat], rel_tol=1e-9), (metric, stat)
            assert math.isclose(row["diff"], treat[stat] - base[stat], rel_tol=1e-9, abs_tol=1e-12)
            lo, hi = row["ci"]
            assert lo <= hi
    statement = comparison["statement"]
    assert statement.startswith("Seen from the client only") and "What the client cannot see" in statement
    assert "not recorded for a side" in statement

    text = servescope_cli("compare", alone, busy)
    assert text.exit_code == 0 and "Seen from the client only" in text.output


# --------------------------------------------------------------------------- transformers serve


def test_transformers_serve_run_analyzes_like_an_engine_run(transformers_run):
    raw = read_client_requests(transformers_run)
    assert {r.status for r in raw.values()} == {"ok"}, {r.request_id: r.error for r in raw.values()}
    requests = sorted(raw.values(), key=lambda r: int(r.request_id.rsplit("-", 1)[1]))
    assert [(r.prompt_tokens, r.tokens) for r in requests] == SHORT_LENGTHS
    assert all(k == 1 for r in requests for _, k in r.chunks)  # text events: one token each, checked against usage
    result = analyze_json(transformers_run, "--tbt-slo", TBT_SLO_S)
    check_client_only_analysis(result, raw, TBT_SLO_S)
    manifest = json.loads((transformers_run / "manifest.json").read_text())
    assert manifest["bench"]["model"] == "local/tiny" and manifest["bench"]["spec"]["api"] == "openai"


def test_compare_two_engines_behind_the_same_api(vllm_runs, transformers_run, tiny_model_dir, tmp_path):
    from servescope.report.build import write_report

    _, alone = vllm_runs
    result = servescope_cli("compare", alone, transformers_run, "--json")
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert comparison["observer"] == "client"
    served = comparison["configuration"]["served"]
    assert served["baseline"]["model"] == str(tiny_model_dir) and served["treatment"]["model"] == "local/tiny"
    assert "Targets: baseline" in comparison["statement"]
    theirs = [r.ttft_s() for r in read_client_requests(transformers_run).values()]
    assert math.isclose(comparison["latency"]["ttft"]["p50"]["treatment"], stats(theirs)["p50"], rel_tol=1e-9)
    index = write_report([alone, transformers_run], tmp_path / "two-servers")
    assert "client only" in index.read_text()
