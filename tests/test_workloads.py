"""Trace loaders, format sniffing, validation errors, Workload helpers and prompts.

Shipped data: Azure LLM inference trace 2023, Azure Public Dataset, CC-BY 4.0
(Patel et al., Splitwise, ISCA 2024).
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from servescope.bench.workloads.azure_trace import load_azure_trace
from servescope.bench.workloads.burstgpt_trace import load_burstgpt_trace
from servescope.bench.workloads.generic_trace import load_generic_trace
from servescope.bench.workloads.mooncake_trace import load_mooncake_trace
from servescope.bench.workloads.prompts import SyntheticPrompts
from servescope.bench.workloads.workload import Request, Workload, WorkloadError, length_stats
from servescope.bench.workloads.catalog import (
    AZURE_2023_CREDIT,
    available_workloads,
    load_workload,
    shipped_trace_path,
    sniff_trace_format,
)


def write(path, text, compress=False):
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


AZURE_CSV = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:17:03.9799600,4808,10\n"
    "2023-11-16 18:17:04.0319600,3180,8\n"
    "2023-11-16 18:17:05.0000001,110,27\n"
)


# --- shipped Azure 2023 traces: figures from /work/shared/traces/README.md ---------------

@pytest.mark.parametrize(
    "name, count, prompt_median, prompt_p99, output_median, output_p99",
    [
        ("azure-code-2023", 8819, 1469, 7436, 13, 249),
        ("azure-conv-2023", 19366, 1020, 4142, 129, 601),
    ],
)
def test_shipped_azure_2023_matches_published_table(name, count, prompt_median, prompt_p99, output_median, output_p99):
    workload = load_workload(name)
    assert len(workload) == count
    assert workload.has_arrival_times
    assert AZURE_2023_CREDIT in workload.source
    prompt, output = workload.prompt_stats(), workload.output_stats()
    assert prompt.median == prompt_median
    assert output.median == output_median
    # The README's P99 uses another percentile convention: allow one percent.
    assert prompt.p99 == pytest.approx(prompt_p99, rel=0.01)
    assert output.p99 == pytest.approx(output_p99, rel=0.01)
    assert workload.arrival_s[0] == 0.0
    assert np.all(np.diff(workload.arrival_s) >= 0)
    # One hour on 2023-11-16.
    assert 3000 < workload.duration_s() < 3600


def test_shipped_trace_attribution_file_credits_the_dataset():
    attribution = shipped_trace_path("azure-code-2023").parent / "ATTRIBUTION.md"
    assert AZURE_2023_CREDIT in attribution.read_text(encoding="utf-8")
    assert AZURE_2023_CREDIT == (
        "Azure LLM inference trace 2023, Azure Public Dataset, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024)"
    )


def test_available_workloads_lists_traces_and_presets():
    names = available_workloads()
    for name in ("azure-code-2023", "azure-conv-2023", "azure-code-2024", "azure-conv-2024", "mooncake", "chat",
                 "summarization"):
        assert name in names


def test_count_takes_first_requests_of_a_trace():
    workload = load_workload("azure-conv-2023", count=10)
    assert len(workload) == 10
    assert workload.requests == load_workload("azure-conv-2023").requests[:10]


# --- Azure format ----------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_azure_loader_parses_seven_digit_timestamps(tmp_path, compress):
    path = write(tmp_path / ("t.csv.gz" if compress else "t.csv"), AZURE_CSV, compress)
    workload = load_azure_trace(path)
    assert workload.arrival_s.tolist() == pytest.approx([0.0, 0.052, 1.0200401], abs=1e-9)
    assert workload.prompt_tokens.tolist() == [4808, 3180, 110]
    assert workload.output_tokens.tolist() == [10, 8, 27]
    assert sniff_trace_format(path) == "azure"
    assert load_workload(path).requests == workload.requests


def test_azure_rows_with_zero_tokens_are_skipped_and_counted(tmp_path):
    text = AZURE_CSV + "2023-11-16 18:17:06.0000000,0,5\n2023-11-16 18:17:07.0000000,7,0\n"
    workload = load_azure_trace(write(tmp_path / "t.csv", text))
    assert len(workload) == 3
    assert workload.skipped == 2


@pytest.mark.parametrize(
    "bad_row, line, field",
    [
        ("2023-11-16 18:17:06.0000000,-4,5", 5, "ContextTokens"),
        ("2023-11-16 18:17:06.0000000,12.5,5", 5, "ContextTokens"),
        ("2023-11-16 18:17:06.0000000,12,many", 5, "GeneratedTokens"),
        ("2023-11-16 18:17:06.0000000,12", 5, "malformed row"),
        ("yesterday,12,5", 5, "TIMESTAMP"),
        ("2023-11-16 18:17:02.0000000,12,5", 5, "TIMESTAMP"),
    ],
)
def test_azure_errors_name_file_line_and_field(tmp_path, bad_row, line, field):
    path = write(tmp_path / "bad.csv", AZURE_CSV + bad_row + "\n")
    with pytest.raises(WorkloadError) as error:
        load_azure_trace(path)
    message = str(error.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert field in message


def test_unsorted_timestamps_error_says_sorted(tmp_path):
    path = write(tmp_path / "bad.csv", AZURE_CSV + "2023-11-16 18:17:02.0000000,12,5\n")
    with pytest.raises(WorkloadError, match="not sorted"):
        load_azure_trace(path)


def test_missing_header_field_is_named(tmp_path):
    path = write(tmp_path / "bad.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n")
    with pytest.raises(WorkloadError, match=r"line 1: header lacks field\(s\) \['GeneratedTokens'\]"):
        load_azure_trace(path)


def test_integral_float_lengths_are_accepted(tmp_path):
    path = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,48.0,10\n")
    assert load_azure_trace(path).prompt_tokens.tolist() == [48]


# --- Mooncake format -------------------------------------------------------------------

def mooncake_lines(*records):
    return "".join(json.dumps(record) + "\n" for record in records)


def test_mooncake_loader_reads_ms_timestamps_and_hash_ids(tmp_path):
    text = mooncake_lines(
        {"timestamp": 0, "input_length": 1000, "output_length": 20, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 700, "output_length": 5, "hash_ids": [0, 2]},
        {"timestamp": 2500, "input_length": 10, "output_length": 3},
    )
    path = write(tmp_path / "m.jsonl", text)
    workload = load_mooncake_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 1.5, 2.5]
    assert workload.requests[0].prefix_block_ids == (0, 1)
    assert workload.requests[2].prefix_block_ids is None
    assert workload.prefix_block_tokens == 512
    assert sniff_trace_format(path) == "mooncake"


@pytest.mark.parametrize(
    "record, field",
    [
        ({"timestamp": 10, "input_length": -3, "output_length": 5}, "input_length"),
        ({"timestamp": 10, "input_length": 3.5, "output_length": 5}, "input_length"),
        ({"timestamp": 10, "input_length": 3, "output_length": True}, "output_length"),
        ({"timestamp": 10, "input_length": 3}, "output_length"),
        ({"timestamp": 10, "input_length": 3, "output_length": 5, "hash_ids": [1, -1]}, "hash_ids"),
        ({"timestamp": "soon", "input_length": 3, "output_length": 5}, "timestamp"),
        ({"timestamp": 1, "input_length": 3, "output_length": 5}, "timestamp"),
    ],
)
def test_mooncake_errors_name_file_line_and_field(tmp_path, record, field):
    good = {"timestamp": 5, "input_length": 100, "output_length": 10}
    path = write(tmp_path / "m.jsonl", mooncake_lines(good, good) + "\n" + mooncake_lines(record))
    with pytest.raises(WorkloadError) as error:
        load_mooncake_trace(path)
    message = str(error.value)
    assert str(path) in message and "line 4" in message and field in message


def test_malformed_json_line_is_named(tmp_path):
    path = write(tmp_path / "m.jsonl", mooncake_lines({"timestamp": 0, "input_length": 1, "output_length": 1}) + "{oops\n")
    with pytest.raises(WorkloadError, match=r"line 2: malformed JSON"):
        load_mooncake_trace(path)


# --- BurstGPT format -------------------------------------------------------------------

BURSTGPT_CSV = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,0,1087,Conversation log\n"
    "118,GPT-4,417,145,562,API log\n"
    "127.5,ChatGPT,1360,249,1609,Conversation log\n"
)


def test_burstgpt_skips_failed_requests_and_counts_them(tmp_path):
    path = write(tmp_path / "b.csv", BURSTGPT_CSV)
    workload = load_burstgpt_trace(path)
    assert workload.prompt_tokens.tolist() == [472, 417, 1360]
    assert workload.output_tokens.tolist() == [18, 145, 249]
    assert workload.arrival_s.tolist() == [0.0, 113.0, 122.5]
    assert workload.skipped == 1
    assert "1 failed" in workload.source
    assert sniff_trace_format(path) == "burstgpt"


def test_burstgpt_model_filter(tmp_path):
    workload = load_burstgpt_trace(write(tmp_path / "b.csv", BURSTGPT_CSV), model="ChatGPT")
    assert workload.prompt_tokens.tolist() == [472, 1360]
    assert workload.skipped == 1


def test_burstgpt_error_names_line_and_field(tmp_path):
    path = write(tmp_path / "b.csv", BURSTGPT_CSV + "130,ChatGPT,12x,5,17,API log\n")
    with pytest.raises(WorkloadError, match=r"b\.csv, line 6: field 'Request tokens'"):
        load_burstgpt_trace(path)


# --- generic format --------------------------------------------------------------------

def test_generic_csv_and_jsonl_give_the_same_workload(tmp_path):
    csv_path = write(tmp_path / "g.csv", "arrival_s,prompt_tokens,output_tokens,comment\n0,812,64,a\n0.25,1530,12,b\n")
    jsonl_path = write(
        tmp_path / "g.jsonl.gz",
        mooncake_lines(
            {"arrival_s": 0, "prompt_tokens": 812, "output_tokens": 64},
            {"arrival_s": 0.25, "prompt_tokens": 1530, "output_tokens": 12},
        ),
        compress=True,
    )
    from_csv, from_jsonl = load_generic_trace(csv_path), load_workload(jsonl_path)
    assert from_csv.requests == from_jsonl.requests == [Request(0.0, 812, 64), Request(0.25, 1530, 12)]
    assert sniff_trace_format(csv_path) == sniff_trace_format(jsonl_path) == "generic"


def test_generic_jsonl_keeps_prefix_block_ids(tmp_path):
    path = write(tmp_path / "g.jsonl", mooncake_lines({"arrival_s": 0, "prompt_tokens": 9, "output_tokens": 1,
                                                       "prefix_block_ids": [3, 4]}))
    assert load_generic_trace(path).requests[0].prefix_block_ids == (3, 4)


@pytest.mark.parametrize(
    "row, field",
    [("-1,5,5", "arrival_s"), ("2,0,5", "prompt_tokens"), ("2,5,1e3x", "output_tokens"), ("0.5,5,5", "arrival_s")],
)
def test_generic_errors_name_file_line_and_field(tmp_path, row, field):
    path = write(tmp_path / "g.csv", f"arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,1,1\n{row}\n")
    with pytest.raises(WorkloadError) as error:
        load_generic_trace(path)
    assert str(path) in str(error.value) and "line 4" in str(error.value) and field in str(error.value)


def test_unknown_name_or_format_raises(tmp_path):
    with pytest.raises(WorkloadError, match="neither a known workload"):
        load_workload("no-such-workload")
    with pytest.raises(WorkloadError, match="unknown CSV trace header"):
        load_workload(write(tmp_path / "x.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(WorkloadError, match="no requests"):
        load_workload(write(tmp_path / "e.csv", "arrival_s,prompt_tokens,output_tokens\n"))


# --- Workload helpers ------------------------------------------------------------------

def small_workload():
    return Workload("w", [Request(float(t), 10 * (t + 1), t + 1) for t in range(10)], "test")


def test_length_stats_follow_numpy_percentiles():
    lengths = np.arange(1, 101)
    stats = length_stats(lengths)
    assert (stats.count, stats.median, stats.p25, stats.p75, stats.max) == (100, 50.5, 25.75, 75.25, 100)
    assert stats.iqr == 49.5
    assert stats.p99 == pytest.approx(99.01)


def test_workload_arrays_and_rate():
    workload = small_workload()
    assert workload.prompt_tokens.tolist() == list(range(10, 101, 10))
    assert workload.duration_s() == 9.0
    assert workload.mean_rate_per_s() == 1.0


def test_with_arrivals_replaces_offsets_and_rejects_mismatch():
    workload = small_workload().with_arrivals(np.linspace(0, 1, 10))
    assert workload.arrival_s[-1] == 1.0
    with pytest.raises(WorkloadError):
        workload.with_arrivals(np.zeros(3))
    with pytest.raises(WorkloadError):
        workload.with_arrivals(np.arange(10)[::-1].astype(float))


def test_replayed_windows_and_scales_a_trace():
    replayed = small_workload().replayed(time_scale=0.5, start_s=2, end_s=6)
    assert replayed.arrival_s.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert replayed.prompt_tokens.tolist() == [30, 40, 50, 60]


def test_capped_clips_lengths():
    capped = small_workload().capped(max_prompt_tokens=50, max_output_tokens=3)
    assert capped.prompt_tokens.max() == 50 and capped.output_tokens.max() == 3
    assert capped.prompt_tokens.min() == 10


# --- prompts ---------------------------------------------------------------------------

def test_prompts_have_the_logged_length_avoid_special_ids_and_are_deterministic():
    workload = load_workload("azure-code-2023", count=50).capped(max_prompt_tokens=2000)
    maker = SyntheticPrompts(vocab_size=2048, special_ids=[1, 2], seed=7)
    prompts = maker.for_workload(workload)
    assert [len(p) for p in prompts] == workload.prompt_tokens.tolist()
    every = np.concatenate(prompts)
    assert every.min() >= 0 and every.max() < 2048
    assert not np.isin(every, [1, 2]).any()
    assert prompts == SyntheticPrompts(vocab_size=2048, special_ids=[1, 2], seed=7).for_workload(workload)
    assert prompts != SyntheticPrompts(vocab_size=2048, special_ids=[1, 2], seed=8).for_workload(workload)
    # Unrelated requests share no prefix.
    assert prompts[0][:8] != prompts[1][:8]


def test_shared_hash_ids_give_identical_prefix_blocks():
    requests = [
        Request(0.0, 1200, 5, (10, 11, 12)),
        Request(1.0, 700, 5, (10, 13)),
        Request(2.0, 1100, 5, (10, 11)),  # longer than its blocks: a unique tail follows
    ]
    workload = Workload("m", requests, "test", prefix_block_tokens=512)
    maker = SyntheticPrompts(vocab_size=32000, special_ids=[1, 2], seed=3, block_tokens=512)
    a, b, c = maker.for_workload(workload)
    assert [len(a), len(b), len(c)] == [1200, 700, 1100]
    assert a[:512] == b[:512] == c[:512]
    assert a[:1024] == c[:1024]
    assert a[512:700] != b[512:700]
    assert a[1024:1100] != c[1024:1100]
    assert maker.block_ids(12).tolist()[:176] == a[1024:1200]


def test_prompt_block_size_must_match_the_workload():
    workload = Workload("m", [Request(0.0, 10, 1, (1,))], "test", prefix_block_tokens=512)
    with pytest.raises(ValueError, match="block_tokens=512"):
        SyntheticPrompts(vocab_size=100, block_tokens=16).for_workload(workload)
