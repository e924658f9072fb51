"""Per-request metrics from hand-built timelines with known answers (docs/metrics.md)."""

import math

import numpy as np
import pyarrow as pa
import pytest
from runbuilder import RunBuilder

from servescope.analysis.request_metrics import MISSING_NS, compute_request_metrics
from servescope.run.data import load_run
from servescope.run.directory import RunDirError
from servescope.run.tables import read_table

MS = 1_000_000
# A monotonic clock 115 days after boot: beyond 2**53 ns, where float64 loses nanoseconds.
T = 10**16


def metrics_of(builder: RunBuilder, **write_args):
    return compute_request_metrics(load_run(builder.write(**write_args)))


def index_of(m, request_id: str) -> int:
    return list(m.request_id).index(request_id)


def ms(values) -> list:
    return [round(v * 1e3, 6) for v in values]


def test_single_request_timeline_gives_each_metric(tmp_path):
    m = metrics_of(RunBuilder(tmp_path).request(
        "r", arrival_ns=T, queued_ns=T + 2 * MS, scheduled_ns=T + 10 * MS,
        emissions=[(1, T + 50 * MS, 1), (2, T + 70 * MS, 1), (3, T + 100 * MS, 1)],
        finished_ns=T + 100 * MS, prompt_tokens=32, finish_reason="length"))
    assert list(m.request_id) == ["r"]
    assert m.prompt_tokens[0] == 32 and m.output_tokens[0] == 3
    assert (m.arrival_ns[0], m.queued_ns[0], m.first_scheduled_ns[0]) == (T, T + 2 * MS, T + 10 * MS)
    assert (m.first_token_ns[0], m.last_token_ns[0], m.finished_ns[0]) == (T + 50 * MS, T + 100 * MS, T + 100 * MS)
    assert m.finish_reason[0] == "length" and not m.arrival_from_queue[0]
    assert m.ttft_s[0] == pytest.approx(0.050, abs=1e-12)
    assert m.scheduling_delay_s[0] == pytest.approx(0.010, abs=1e-12)
    assert m.prefill_s[0] == pytest.approx(0.040, abs=1e-12)
    assert m.decode_s[0] == pytest.approx(0.050, abs=1e-12)
    assert m.e2e_s[0] == pytest.approx(0.100, abs=1e-12)
    assert m.ttst_s[0] == pytest.approx(0.020, abs=1e-12)
    assert m.tpot_s[0] == pytest.approx(0.025, abs=1e-12)  # T_d / (n - 1)
    assert m.normalized_latency_s[0] == pytest.approx(0.100 / 3, abs=1e-12)
    assert ms(m.tbt_per_token(0)) == [20.0, 30.0]
    assert ms(m.tbt_per_chunk(0)) == [20.0, 30.0]
    assert m.preemptions[0] == 0 and m.preempted_s[0] == 0.0


def test_nanosecond_gaps_survive_a_large_monotonic_clock(tmp_path):
    m = metrics_of(RunBuilder(tmp_path).request(
        "r", arrival_ns=T + 1, scheduled_ns=T + 2,
        emissions=[(1, T + 3, 1), (2, T + 4, 1), (3, T + 7, 1)], finished_ns=T + 7))
    assert list(m.tbt_per_token(0)) == [1e-9, 3e-9]
    assert m.ttft_s[0] == 2e-9 and m.scheduling_delay_s[0] == 1e-9 and m.e2e_s[0] == 6e-9


def test_multi_token_chunks_give_zero_gaps_per_token_and_one_gap_per_chunk(tmp_path):
    # A speculative step emits accepted drafts + 1 bonus token, all at the step's time.
    m = metrics_of(RunBuilder(tmp_path).request(
        "spec", arrival_ns=T, scheduled_ns=T + 5 * MS,
        emissions=[(1, T + 30 * MS, 1), (2, T + 50 * MS, 3, 3, 2), (3, T + 75 * MS, 2, 3, 1)],
        finished_ns=T + 75 * MS))
    assert m.output_tokens[0] == 6
    assert list(m.token_times_ns) == [T + 30 * MS] + [T + 50 * MS] * 3 + [T + 75 * MS] * 2
    assert ms(m.tbt_per_token(0)) == [20.0, 0.0, 0.0, 25.0, 0.0]
    assert ms(m.tbt_per_chunk(0)) == [20.0, 25.0]
    assert list(m.chunk_num_tokens) == [1, 3, 2] and list(m.chunk_step_ids) == [1, 2, 3]
    assert m.ttst_s[0] == pytest.approx(0.020, abs=1e-12)
    assert m.tpot_s[0] == pytest.approx(0.045 / 5, abs=1e-12)
    assert m.normalized_latency_s[0] == pytest.approx(0.075 / 6, abs=1e-12)


def test_a_first_chunk_of_two_tokens_gives_zero_ttst(tmp_path):
    m = metrics_of(RunBuilder(tmp_path).request(
        "burst", arrival_ns=T, scheduled_ns=T + MS,
        emissions=[(1, T + 10 * MS, 2), (2, T + 40 * MS, 1)], finished_ns=T + 40 * MS))
    assert m.ttst_s[0] == 0.0
    assert ms(m.tbt_per_token(0)) == [0.0, 30.0]
    assert ms(m.tbt_per_chunk(0)) == [30.0]


def test_one_token_output_has_zero_decode_and_no_second_token_metrics(tmp_path):
    m = metrics_of(RunBuilder(tmp_path).request(
        "one", arrival_ns=T, scheduled_ns=T + 4 * MS, emissions=[(1, T + 24 * MS, 1)],
        finished_ns=T + 24 * MS))
    assert m.output_tokens[0] == 1
    assert m.decode_s[0] == 0.0
    assert m.e2e_s[0] == m.ttft_s[0] == pytest.approx(0.024, abs=1e-12)
    assert math.isnan(m.ttst_s[0]) and math.isnan(m.tpot_s[0])
    assert m.normalized_latency_s[0] == pytest.approx(0.024, abs=1e-12)
    assert len(m.tbt_per_token(0)) == 0 and len(m.tbt_per_chunk(0)) == 0


def test_zero_output_requests_get_nan_token_metrics(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("scheduled-then-aborted", arrival_ns=T, queued_ns=T + MS, scheduled_ns=T + 3 * MS,
              finished_ns=T + 9 * MS, finish_reason="abort")
    b.request("aborted-waiting", arrival_ns=T + 1 * MS, queued_ns=T + 2 * MS, finished_ns=T + 8 * MS,
              finish_reason="abort")
    m = metrics_of(b)
    assert list(m.request_id) == ["scheduled-then-aborted", "aborted-waiting"]
    assert list(m.output_tokens) == [0, 0]
    for name in ("ttft_s", "prefill_s", "decode_s", "e2e_s", "ttst_s", "tpot_s", "normalized_latency_s"):
        assert np.isnan(getattr(m, name)).all(), name
    assert m.scheduling_delay_s[0] == pytest.approx(0.003, abs=1e-12)
    assert math.isnan(m.scheduling_delay_s[1])  # never scheduled
    assert list(m.first_token_ns) == [MISSING_NS, MISSING_NS]
    assert list(m.finish_reason) == ["abort", "abort"]
    assert list(m.token_offsets) == [0, 0, 0] and list(m.chunk_offsets) == [0, 0, 0]
    assert len(m.all_tbt_per_token_s()) == 0 and len(m.all_tbt_per_chunk_s()) == 0


def test_preemptions_are_counted_and_timed_until_rescheduled(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("twice", arrival_ns=T, scheduled_ns=T + MS,
              preemptions=[(T + 20 * MS, T + 45 * MS), (T + 60 * MS, T + 70 * MS)],
              emissions=[(1, T + 10 * MS, 1), (5, T + 50 * MS, 1), (9, T + 80 * MS, 1)],
              finished_ns=T + 80 * MS)
    b.request("aborted-while-preempted", arrival_ns=T + MS, scheduled_ns=T + 2 * MS,
              preemptions=[(T + 30 * MS, None)], emissions=[(2, T + 12 * MS, 1)],
              finished_ns=T + 90 * MS, finish_reason="abort")
    b.request("never-resumed", arrival_ns=T + 2 * MS, scheduled_ns=T + 3 * MS,
              preemptions=[(T + 40 * MS, None)], emissions=[(3, T + 14 * MS, 1)])
    m = metrics_of(b)
    assert list(m.request_id) == ["twice", "aborted-while-preempted", "never-resumed"]
    assert list(m.preemptions) == [2, 1, 1]
    assert m.preempted_s[0] == pytest.approx(0.035, abs=1e-12)  # 25 ms + 10 ms
    assert m.preempted_s[1] == pytest.approx(0.060, abs=1e-12)  # until 'finished'
    assert math.isnan(m.preempted_s[2])  # still preempted when recording stopped
    # s is the first 'scheduled', not the rescheduling after a preemption.
    assert m.first_scheduled_ns[0] == T + MS
    assert ms(m.tbt_per_token(0)) == [40.0, 30.0]


def test_arrival_falls_back_to_queued_when_the_front_end_was_not_recorded(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("engine-only", queued_ns=T + 5 * MS, scheduled_ns=T + 7 * MS,
              emissions=[(1, T + 20 * MS, 1)], finished_ns=T + 20 * MS, prompt_tokens=9)
    b.request("front-end", arrival_ns=T, queued_ns=T + MS, scheduled_ns=T + 2 * MS,
              emissions=[(1, T + 20 * MS, 1)], finished_ns=T + 20 * MS)
    m = metrics_of(b)
    assert list(m.request_id) == ["front-end", "engine-only"]
    assert list(m.arrival_from_queue) == [False, True]
    assert m.arrival_ns[1] == T + 5 * MS
    assert m.ttft_s[1] == pytest.approx(0.015, abs=1e-12)
    assert list(m.prompt_tokens) == [-1, 9]  # -1: not recorded


def test_requests_come_out_sorted_by_arrival_whatever_the_file_order(tmp_path):
    b = RunBuilder(tmp_path)
    for rid, arrival in (("c", 300), ("a", 100), ("b", 200)):
        b.request(rid, arrival_ns=T + arrival * MS, scheduled_ns=T + (arrival + 1) * MS,
                  emissions=[(arrival, T + (arrival + 10) * MS, 1), (arrival + 1, T + (arrival + 25) * MS, 2)],
                  finished_ns=T + (arrival + 25) * MS)
    m = metrics_of(b, sort_by_time=False)
    assert list(m.request_id) == ["a", "b", "c"]
    assert list(m.arrival_ns) == [T + 100 * MS, T + 200 * MS, T + 300 * MS]
    assert list(m.chunk_offsets) == [0, 2, 4, 6] and list(m.token_offsets) == [0, 3, 6, 9]
    assert list(m.chunk_step_ids) == [100, 101, 200, 201, 300, 301]


def test_emission_rows_out_of_time_order_in_the_files_are_put_in_order(tmp_path):
    b = RunBuilder(tmp_path).request(
        "r", arrival_ns=T, scheduled_ns=T + MS,
        emissions=[(7, T + 70 * MS, 1), (3, T + 30 * MS, 2), (5, T + 50 * MS, 1)], finished_ns=T + 70 * MS)
    m = metrics_of(b, sort_by_time=False, parts=3)  # one row per part, latest first
    assert list(m.chunk_step_ids) == [3, 5, 7]
    assert list(m.token_times_ns) == [T + 30 * MS, T + 30 * MS, T + 50 * MS, T + 70 * MS]
    assert m.ttft_s[0] == pytest.approx(0.030, abs=1e-12)


def build_mixed_run(tmp_path) -> RunBuilder:
    """Every shape at once: bursts, one token, zero tokens, preemption, interleaved requests."""
    b = RunBuilder(tmp_path)
    b.request("spec", arrival_ns=T, queued_ns=T + MS, scheduled_ns=T + 2 * MS,
              emissions=[(1, T + 30 * MS, 1), (2, T + 50 * MS, 4), (4, T + 90 * MS, 3), (5, T + 117 * MS, 1)],
              finished_ns=T + 117 * MS, prompt_tokens=100)
    b.request("one", arrival_ns=T + 3 * MS, queued_ns=T + 4 * MS, scheduled_ns=T + 5 * MS,
              emissions=[(2, T + 50 * MS, 1)], finished_ns=T + 50 * MS, prompt_tokens=7)
    b.request("zero", arrival_ns=T + 6 * MS, queued_ns=T + 7 * MS, finished_ns=T + 8 * MS,
              finish_reason="abort")
    b.request("preempted", arrival_ns=T + 9 * MS, queued_ns=T + 10 * MS, scheduled_ns=T + 31 * MS,
              preemptions=[(T + 60 * MS, T + 85 * MS)],
              emissions=[(2, T + 50 * MS, 1), (3, T + 55 * MS, 1), (4, T + 90 * MS, 1), (5, T + 117 * MS, 2)],
              finished_ns=T + 117 * MS, prompt_tokens=12)
    b.request("queued-only", queued_ns=T + 11 * MS, scheduled_ns=T + 31 * MS,
              emissions=[(2, T + 50 * MS, 2), (3, T + 55 * MS, 1)], finished_ns=T + 55 * MS)
    return b


def test_the_latency_decomposition_adds_up_to_e2e_at_nanosecond_resolution(tmp_path):
    m = metrics_of(build_mixed_run(tmp_path))
    defined = ~np.isnan(m.e2e_s)
    assert defined.sum() == 4
    parts_ns = np.round((m.scheduling_delay_s + m.prefill_s + m.decode_s)[defined] * 1e9).astype(np.int64)
    e2e_ns = np.round(m.e2e_s[defined] * 1e9).astype(np.int64)
    assert list(parts_ns) == list(e2e_ns)
    assert list(e2e_ns) == list(m.last_token_ns[defined] - m.arrival_ns[defined])
    ttft_ns = np.round((m.scheduling_delay_s + m.prefill_s)[defined] * 1e9).astype(np.int64)
    assert list(ttft_ns) == list(np.round(m.ttft_s[defined] * 1e9).astype(np.int64))


def test_per_token_and_per_chunk_gaps_agree_with_each_other_and_with_decode(tmp_path):
    m = metrics_of(build_mixed_run(tmp_path))
    for i in range(len(m)):
        per_token, per_chunk = m.tbt_per_token(i), m.tbt_per_chunk(i)
        assert len(per_token) == max(m.output_tokens[i] - 1, 0)
        assert len(per_chunk) == max(m.chunk_offsets[i + 1] - m.chunk_offsets[i] - 1, 0)
        if m.output_tokens[i]:
            assert per_token.sum() == pytest.approx(per_chunk.sum(), abs=1e-12)
            assert per_token.sum() == pytest.approx(m.decode_s[i], abs=1e-12)
    # The flat (all-request) arrays are the per-request ones concatenated, at the offsets.
    flat_token, flat_chunk = m.all_tbt_per_token_s(), m.all_tbt_per_chunk_s()
    token_off, chunk_off = m.tbt_per_token_offsets(), m.tbt_per_chunk_offsets()
    for i in range(len(m)):
        assert list(flat_token[token_off[i]:token_off[i + 1]]) == list(m.tbt_per_token(i))
        assert list(flat_chunk[chunk_off[i]:chunk_off[i + 1]]) == list(m.tbt_per_chunk(i))
    assert len(flat_token) == token_off[-1] == 8 + 0 + 0 + 4 + 2
    assert len(flat_chunk) == chunk_off[-1] == 3 + 0 + 0 + 3 + 1
    assert (flat_token == 0).sum() == 3 + 2 + 1 + 1  # the tokens after the first of each burst


def test_the_mixed_run_has_its_hand_computed_values(tmp_path):
    m = metrics_of(build_mixed_run(tmp_path))
    assert list(m.request_id) == ["spec", "one", "zero", "preempted", "queued-only"]
    assert list(m.output_tokens) == [9, 1, 0, 5, 3]
    i = index_of(m, "preempted")
    assert ms(m.tbt_per_token(i)) == [5.0, 35.0, 27.0, 0.0]
    assert m.preempted_s[i] == pytest.approx(0.025, abs=1e-12)
    assert m.prefill_s[i] == pytest.approx(0.019, abs=1e-12)
    assert m.tpot_s[i] == pytest.approx(0.067 / 4, abs=1e-12)
    i = index_of(m, "queued-only")
    assert m.arrival_from_queue[i] and m.ttst_s[i] == 0.0


def test_same_metrics_from_one_part_or_several(tmp_path):
    one = metrics_of(build_mixed_run(tmp_path / "one"))
    for parts in (2, 3):
        many = metrics_of(build_mixed_run(tmp_path / f"parts{parts}"), parts=parts)
        for name, value in vars(one).items():
            np.testing.assert_array_equal(getattr(many, name), value, err_msg=name)


def test_a_request_seen_only_in_token_emissions_is_kept_without_arrival(tmp_path):
    b = RunBuilder(tmp_path)
    b.request("known", arrival_ns=T, scheduled_ns=T + MS, emissions=[(1, T + 9 * MS, 1)], finished_ns=T + 9 * MS)
    b.request("orphan", emissions=[(1, T + 9 * MS, 1), (2, T + 19 * MS, 1)])
    m = metrics_of(b)
    assert list(m.request_id) == ["known", "orphan"]
    assert m.arrival_ns[1] == MISSING_NS and math.isnan(m.ttft_s[1]) and math.isnan(m.e2e_s[1])
    assert m.decode_s[1] == pytest.approx(0.010, abs=1e-12)


def test_emission_rows_without_time_or_tokens_are_ignored(tmp_path):
    b = RunBuilder(tmp_path).request(
        "r", arrival_ns=T, scheduled_ns=T + MS, emissions=[(1, T + 9 * MS, 1), (2, T + 19 * MS, 1)],
        finished_ns=T + 19 * MS)
    b.row("token_emissions", request_id="r", step_id=3, time_ns=None, num_tokens=1)
    b.row("token_emissions", request_id="r", step_id=4, time_ns=T + 29 * MS, num_tokens=0)
    b.row("token_emissions", request_id="r", step_id=5, time_ns=T + 39 * MS, num_tokens=None)
    b.row("token_emissions", request_id=None, step_id=6, time_ns=T + 49 * MS, num_tokens=1)
    m = metrics_of(b)
    assert list(m.request_id) == ["r"] and m.output_tokens[0] == 2
    assert list(m.chunk_step_ids) == [1, 2]


def test_an_empty_run_gives_empty_metrics(tmp_path):
    m = metrics_of(RunBuilder(tmp_path))
    assert len(m) == 0 and len(m.token_offsets) == 1 and len(m.chunk_offsets) == 1
    assert len(m.all_tbt_per_token_s()) == 0 and len(m.all_tbt_per_chunk_s()) == 0


def test_load_run_reads_manifest_and_tables(tmp_path):
    path = RunBuilder(tmp_path, manifest={"engine": "vllm"}).request(
        "r", arrival_ns=T, emissions=[(1, T + MS, 1)]).write(parts=2)
    run = load_run(path)
    assert run.path == path and run.manifest == {"engine": "vllm"}
    assert run.request_events.num_rows == 1 and run.token_emissions.num_rows == 1
    assert run.steps.num_rows == 0 and run.client_chunks.num_rows == 0
    # The per-token tables keep their id column dictionary-encoded (memory: see run_data.py).
    assert pa.types.is_dictionary(run.token_emissions.schema.field("request_id").type)
    assert run.token_emissions.column("request_id").cast(pa.string()).to_pylist() == ["r"]


def test_load_run_explains_what_is_wrong(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a servescope run directory"):
        load_run(tmp_path / "empty")
    bad_manifest = RunBuilder(tmp_path, "bad-manifest").write()
    (bad_manifest / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="manifest.json, line 1: not valid JSON"):
        load_run(bad_manifest)
    # A part cut short is named and left out (the rest is read); strict makes it an error.
    for indexed, what, strict_error in ((True, "changed since it was written", "changed since it was written"),
                                        (False, "unreadable Parquet part", "cannot be verified")):
        cut_short = RunBuilder(tmp_path, f"cut-short-{indexed}").request("r", emissions=[(1, T, 1)]).write(
            indexed=indexed)
        part = next((cut_short / "tables" / "token_emissions").glob("*.parquet"))
        part.write_bytes(part.read_bytes()[:20])
        run = load_run(cut_short)
        assert run.token_emissions.num_rows == 0
        assert [w for w in run.warnings if str(part) in w and what in w], run.warnings
        with pytest.raises(RunDirError, match=strict_error):  # unindexed: strict refuses it at once
            load_run(cut_short, strict=True)


def test_plain_string_ids_give_the_same_metrics_as_dictionary_ids(tmp_path):
    # RunData built by hand (read_table's plain schema) rather than by load_run.
    path = build_mixed_run(tmp_path).write(parts=2)
    run = load_run(path)
    run.token_emissions = read_table(path, "token_emissions")
    assert pa.types.is_string(run.token_emissions.schema.field("request_id").type)
    plain, dictionary = compute_request_metrics(run), compute_request_metrics(load_run(path))
    for name, value in vars(dictionary).items():
        np.testing.assert_array_equal(getattr(plain, name), value, err_msg=name)


def test_a_synthetic_engine_run_reads_back_consistently(tmp_path, monkeypatch):
    from servescope.studies import analysis_scale as bench_scale

    monkeypatch.setattr(bench_scale, "ROWS_PER_PART", 5_000)  # many parts, requests split across them
    size = bench_scale.synthesize_run(tmp_path / "run", 2_000, 120_000, concurrency=64,
                                      tokens_per_chunk=2.0, preempted_fraction=0.05, seed=7)
    run = load_run(tmp_path / "run")
    m = compute_request_metrics(run)
    assert len(m) == 2_000 and m.output_tokens.sum() == 120_000
    assert len(m.chunk_times_ns) == size["emission_rows"] == run.token_emissions.num_rows
    # Each request's token count equals what its 'finished' event says the engine emitted.
    events = run.request_events.to_pydict()
    finished = {rid: out for rid, ev, out in zip(events["request_id"], events["event"], events["output_tokens"])
                if ev == "finished"}
    assert {rid: int(n) for rid, n in zip(m.request_id, m.output_tokens)} == finished
    assert m.preemptions.sum() == events["event"].count("preempted") > 0
    # Time order inside every request, and the flat arrays equal the per-request ones.
    flat, offsets = m.all_tbt_per_token_s(), m.tbt_per_token_offsets()
    assert (flat >= 0).all()
    for i in range(len(m)):
        np.testing.assert_array_equal(flat[offsets[i]:offsets[i + 1]], m.tbt_per_token(i))
    assert np.all(np.diff(m.arrival_ns) >= 0)
