"""Client-only runs and client beside engine, on hand-built run directories with known answers.

The timelines are written by hand (runbuilder.py), so every expected number below is worked out
from them here; tests/test_client_only.py does the same against real servers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from client_only_checks import analyze_json, check_client_only_analysis, read_client_requests, servescope_cli
from runbuilder import RunBuilder
from servescope.analysis.client_vs_engine import engine_token_check
from servescope.analysis.compare import compare_run_dirs
from servescope.analysis.request_metrics import compute_request_metrics, take_requests
from servescope.analysis.request_view import request_view
from servescope.analysis.stalls import find_stalls
from servescope.run.data import load_run
from servescope.run.directory import RunDirError
from servescope.run.tables import read_table

MS = 1_000_000


def client_request(b: RunBuilder, cid: str, send_ns: int, chunks, *, status="ok", error=None, end_ns=None,
                   prompt_tokens=10, server_id=None) -> RunBuilder:
    """Add one request as servescope's client records it: chunks are (time_ns, tokens)."""
    for t, k in chunks:
        b.row("client_chunks", client_request_id=cid, time_ns=t, num_tokens=k)
    end = end_ns if end_ns is not None else (chunks[-1][0] + MS if chunks else send_ns + MS)
    return b.row("client_requests", client_request_id=cid, engine_request_id=server_id or f"cmpl-{cid}",
                 send_ns=send_ns, end_ns=end, prompt_tokens=prompt_tokens, max_tokens=8,
                 output_tokens=sum(k for _, k in chunks), status=status, error=error, scheduled_send_ns=send_ns)


def client_only_run(root, name="client-run", scale=1):
    b = RunBuilder(root, name)
    client_request(b, "r-0", 0, [(100 * MS * scale, 1), (150 * MS * scale, 2), (210 * MS * scale, 1)])
    client_request(b, "r-1", 50 * MS, [(180 * MS * scale, 1), (200 * MS * scale, 1), (230 * MS * scale, 1),
                                       (600 * MS * scale, 1)])
    client_request(b, "r-2", 60 * MS, [(400 * MS, 1)], status="timeout", error="no complete answer within 0.5 s",
                   end_ns=560 * MS)
    client_request(b, "r-3", 70 * MS, [], status="error", error="HTTP 400 from http://x/v1/completions: bad")
    return b.write()


def test_client_only_analysis_equals_the_hand_worked_timeline(tmp_path):
    run = client_only_run(tmp_path)
    result = analyze_json(run, "--tbt-slo", 0.05)
    check_client_only_analysis(result, read_client_requests(run), 0.05)
    by_id = {r["request_id"]: r for r in result["requests"]}
    assert by_id["r-0"]["ttft_s"] == 0.1 and by_id["r-0"]["tbt_per_chunk_s"] == [0.05, 0.06]
    assert by_id["r-1"]["tpot_s"] == pytest.approx(0.42 / 3)
    assert by_id["r-3"]["status"] == "error" and by_id["r-3"]["e2e_s"] is None
    assert result["summary"]["ttft_s"]["count"] == 2  # r-2 (timeout) and r-3 (error) are left out
    assert result["run"]["client_status"] == {"ok": 2, "error": 1, "timeout": 1, "cancelled": 0}
    # r-1's gaps 20, 30, 370 ms at a 50 ms deadline: 30 + 20 = 50 ms of slack banked, then the 370 ms gap
    # misses floor((370 - 50 - 50) / 50) + 1 = 6 periods; 2 + 6 deadlines
    assert (by_id["r-1"]["deadline_misses"], by_id["r-1"]["deadlines"]) == (6, 8)


def test_a_stall_seen_only_by_the_client_is_unattributed(tmp_path):
    run = load_run(client_only_run(tmp_path))
    view = request_view(run)
    stalls = find_stalls(view.counted_metrics(), run, threshold_s=0.2)
    assert stalls.request_id.tolist() == ["r-1"] and stalls.gap_s.tolist() == [pytest.approx(0.37)]
    assert stalls.cause.tolist() == ["unattributed"] and stalls.gpu_time_source.tolist() == ["none"]


def test_take_requests_keeps_each_requests_ragged_rows(tmp_path):
    metrics = request_view(load_run(client_only_run(tmp_path))).metrics
    picked = take_requests(metrics, np.array([2, 0]))
    assert picked.request_id.tolist() == ["r-2", "r-0"]
    assert picked.chunk_offsets.tolist() == [0, 1, 4] and picked.chunk_num_tokens.tolist() == [1, 1, 2, 1]
    assert picked.token_offsets.tolist() == [0, 1, 5]
    assert picked.all_tbt_per_chunk_s().tolist() == pytest.approx([0.05, 0.06])


def test_two_recorders_of_one_process_keep_each_others_parts(tmp_path):
    from servescope.record.recorder import close_recorder, open_recorder

    for cid in ("first", "second"):
        recorder = open_recorder(tmp_path / "run")
        recorder.append("client_requests", (cid, None, 1, 2, 3, 4, 0, "error", "x", 1))
        close_recorder()
    assert sorted(read_table(tmp_path / "run", "client_requests")["client_request_id"].to_pylist()) == ["first",
                                                                                                       "second"]


def test_duplicate_client_ids_are_refused_naming_the_run(tmp_path):
    b = RunBuilder(tmp_path, "twice")
    client_request(b, "same-0", 0, [(10 * MS, 1)])
    client_request(b, "same-0", 5 * MS, [(20 * MS, 1)])
    run = b.write()
    result = servescope_cli("analyze", run)
    assert result.exit_code == 2 and "same-0" in result.output and str(run) in result.output


def test_compare_of_client_only_runs_and_of_mixed_observers(tmp_path):
    base, treat = client_only_run(tmp_path, "base"), client_only_run(tmp_path, "treat", scale=2)
    result = compare_run_dirs([str(base)], [str(treat)])
    assert result["observer"] == "client"
    # ok requests only: TTFT 100 and 130 ms in the baseline, 200 and 310 ms in the treatment (chunks x2)
    assert result["latency"]["ttft"]["mean"]["baseline"] == pytest.approx(0.115)
    assert result["latency"]["ttft"]["mean"]["treatment"] == pytest.approx(0.255)
    assert result["latency"]["ttft"]["mean"]["diff"] == pytest.approx(0.14)

    engine = RunBuilder(tmp_path, "engine").request("e", arrival_ns=0, queued_ns=0, scheduled_ns=MS,
                                                    emissions=[(1, 5 * MS, 1), (2, 9 * MS, 1)], finished_ns=9 * MS)
    engine_run = engine.write()
    refused = servescope_cli("compare", base, engine_run)
    assert refused.exit_code == 2 and "no observer recorded every run" in refused.output
    with pytest.raises(ValueError, match="no client records"):
        compare_run_dirs([str(base)], [str(engine_run)], observer="client")


def test_client_beside_engine_splits_the_ttft_on_a_shared_clock(tmp_path):
    b = RunBuilder(tmp_path, "both")
    # engine: arrival 2 ms after the send, first emission at 30 ms; the client gets the chunk at 33 ms
    b.request("eng-a", arrival_ns=2 * MS, queued_ns=2 * MS, scheduled_ns=4 * MS,
              emissions=[(1, 30 * MS, 1), (2, 40 * MS, 1)], finished_ns=40 * MS)
    b.event("eng-a", "arrival", 2 * MS, detail="cmpl-c-0-0")
    client_request(b, "c-0", 0, [(33 * MS, 1), (44 * MS, 1)], server_id="cmpl-c-0")
    client_request(b, "c-lost", 1 * MS, [], status="error", error="refused")
    run = b.write()
    result = analyze_json(run)
    side = result["client_vs_engine"]
    assert side["compared_requests"] == 1 and side["shared_clock"] is True
    assert side["ttft_s"]["difference"]["p50"] == pytest.approx(0.033 - 0.028)
    assert side["before_arrival_s"]["p50"] == pytest.approx(0.002)
    assert side["after_first_emission_s"]["p50"] == pytest.approx(0.003)
    assert side["network_front_end_share_of_ttft"]["p50"] == pytest.approx(0.005 / 0.033)
    assert side["unjoined_client_requests"] == [{"request_id": "c-lost", "status": "error", "error": "refused"}]
    (record,) = [r for r in result["requests"] if r["request_id"] == "eng-a"]
    assert record["source"] == "engine" and record["client"]["request_id"] == "c-0"
    assert record["client"]["tbt_per_chunk_s"] == [pytest.approx(0.011)]
    client_view = analyze_json(run, "--observer", "client")
    assert client_view["run"]["source"] == "client" and client_view["summary"]["ttft_s"]["count"] == 1
    assert "client vs engine (1 requests joined" in servescope_cli("analyze", run).output


def test_the_engine_token_check_names_each_request_whose_received_tokens_are_not_recorded(tmp_path):
    b = RunBuilder(tmp_path, "witness")
    # whole: 3 tokens received, 3 recorded; cut: 4 received, 1 recorded (a lost emission row); lost: no arrival
    b.request("eng-whole", arrival_ns=MS, queued_ns=MS, scheduled_ns=2 * MS,
              emissions=[(1, 10 * MS, 1), (2, 20 * MS, 2)], finished_ns=20 * MS)
    b.event("eng-whole", "arrival", MS, detail="cmpl-whole-0")
    b.request("eng-cut", arrival_ns=MS, queued_ns=MS, scheduled_ns=2 * MS, emissions=[(1, 10 * MS, 1)])
    b.event("eng-cut", "arrival", MS, detail="cmpl-cut-0")
    client_request(b, "whole", 0, [(11 * MS, 1), (21 * MS, 2)])
    client_request(b, "cut", 0, [(11 * MS, 1), (21 * MS, 3)])
    client_request(b, "lost", 0, [(12 * MS, 2)])
    client_request(b, "refused", 0, [], status="error", error="refused")  # received nothing: nothing to hold
    check = engine_token_check(b.write())
    assert (check.client_requests, check.client_tokens) == (3, 9)
    assert check.not_joined == {"lost": 2} and check.short == {"cut": (4, 1)}
    assert check.missing_tokens == 2 + 3
    assert check.summary()["requests_short"] == 1 and check.summary()["examples_short"] == {"cut": [4, 1]}


def test_a_client_clock_apart_from_the_engines_gives_no_split(tmp_path):
    b = RunBuilder(tmp_path, "two-hosts")
    b.request("eng-a", arrival_ns=5_000 * MS, queued_ns=5_000 * MS, scheduled_ns=5_001 * MS,
              emissions=[(1, 5_020 * MS, 1)], finished_ns=5_020 * MS)
    b.event("eng-a", "arrival", 5_000 * MS, detail="cmpl-c-0-0")
    client_request(b, "c-0", 0, [(30 * MS, 1)], server_id="cmpl-c-0")
    side = analyze_json(b.write())["client_vs_engine"]
    assert side["shared_clock"] is False and side["before_arrival_s"] is None
    assert side["ttft_s"]["difference"]["p50"] == pytest.approx(0.030 - 0.020)  # durations need no shared clock


def test_engine_runs_keep_their_contract(tmp_path):
    builder = RunBuilder(tmp_path, "engine")
    run = builder.request("e", arrival_ns=0, queued_ns=0, scheduled_ns=MS, emissions=[(1, 5 * MS, 1), (2, 9 * MS, 2)],
                          finished_ns=9 * MS).write()
    result = analyze_json(run)
    assert result["run"]["source"] == "engine" and result["run"]["client_status"] is None
    assert set(result["sources"].values()) == {"engine"} and "client_vs_engine" not in result
    (record,) = result["requests"]
    assert record["status"] is None and record["client"] is None and record["tbt_per_token_s"] == [0.004, 0.0]
    assert json.dumps(result, allow_nan=False)
    assert compute_request_metrics(load_run(run)).request_id.tolist() == ["e"]
