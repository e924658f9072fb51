"""Trace loaders on hostile input: every problem is one WorkloadError naming file, line and field.

Issue 14's "Smaller" list: a huge field, a 1e23 integer and binary garbage are named with their
line; a Mooncake JSONL with a byte-order mark reads like a CSV with one; a negative request count
never drops a request silently; a 30-million-token row is refused before any prompt is built.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servescope.bench.workloads.catalog import load_workload
from servescope.bench.workloads.trace_reading import MAX_LINE_BYTES, MAX_TOKENS
from servescope.bench.workloads.workload import WorkloadError

GENERIC_HEADER = "arrival_s,prompt_tokens,output_tokens\n"


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(WorkloadError) as error:
        load_workload(path, **kwargs)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_huge_csv_field_is_named_with_its_line(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text(GENERIC_HEADER + "0,8,4\n" + f'0,"{"9" * 200_000}",4\n')
    assert "line 3: malformed CSV (field larger than field limit" in error_of(path)


def test_a_line_longer_than_any_row_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n' + b"x" * (2 * MAX_LINE_BYTES))
    assert f"line 2: longer than {MAX_LINE_BYTES} bytes" in error_of(path)


@pytest.mark.parametrize("value, shown", [("1e23", "1e23"), ("100000000000000000000000", "100000000000000000000000"),
                                          (str(MAX_TOKENS + 1), str(MAX_TOKENS + 1))])
def test_a_huge_length_is_named_in_csv_and_jsonl(tmp_path, value, shown):
    csv_path = tmp_path / "big.csv"
    csv_path.write_text(GENERIC_HEADER + f"0,8,4\n0.5,{value},4\n")
    assert f"line 3: field 'prompt_tokens' is too large ('{shown}'" in error_of(csv_path)
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text('{"arrival_s": 0, "prompt_tokens": 8, "output_tokens": 4}\n'
                     f'{{"arrival_s": 1, "prompt_tokens": 8, "output_tokens": {value}}}\n')
    assert "line 2: field 'output_tokens' is too large" in error_of(jsonl)
    mooncake = tmp_path / "big-mooncake.jsonl"
    mooncake.write_text(f'{{"timestamp": 0, "input_length": {value}, "output_length": 4, "hash_ids": [1]}}\n')
    assert "line 1: field 'input_length' is too large" in error_of(mooncake)


def test_a_time_in_the_wrong_unit_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(GENERIC_HEADER + "0,8,4\n1e23,8,4\n")
    assert "line 3: field 'arrival_s' is too large" in error_of(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_binary_garbage_is_named_with_its_line(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    first = GENERIC_HEADER if suffix == ".csv" else '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n'
    path.write_bytes(first.encode() + b"0,1,1\n" * (suffix == ".csv") + b"\xff\xfe\x00\x81garbage\n")
    line = 3 if suffix == ".csv" else 2
    assert f"line {line}: not UTF-8 text" in error_of(path)


def test_garbage_from_the_first_byte_is_named(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(256)) * 64)
    message = error_of(path)
    assert "line 1" in message


def test_a_nul_byte_in_a_csv_is_named(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(GENERIC_HEADER.encode() + b"0,8,4\n0,8\x00,4\n")
    assert "line 3: field 'prompt_tokens' must be a non-negative integer" in error_of(path)


def test_a_damaged_gzip_is_named(tmp_path):
    path = tmp_path / "trace.csv.gz"
    whole = gzip.compress((GENERIC_HEADER + "".join(f"{i},{i % 977 + 1},{i % 13 + 1}\n" for i in range(5000))).encode())
    path.write_bytes(whole[: len(whole) // 2])
    assert "unreadable" in error_of(path)
    path.write_bytes(b"not gzip at all")
    assert "unreadable" in error_of(path)


def test_a_mooncake_jsonl_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    rows = [{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [1, 2]},
            {"timestamp": 250, "input_length": 100, "output_length": 9, "hash_ids": [1]}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text(text)
    marked.write_bytes("\ufeff".encode() + text.encode())
    assert load_workload(marked).requests == load_workload(plain).requests
    assert [r.prompt_tokens for r in load_workload(marked).requests] == [600, 100]


@pytest.mark.parametrize("count", [-1, 0])
def test_a_count_below_one_is_refused_never_a_request_dropped(tmp_path, count):
    path = tmp_path / "t.csv"
    path.write_text(GENERIC_HEADER + "0,8,4\n1,8,4\n2,8,4\n")
    assert len(load_workload(path)) == 3
    with pytest.raises(WorkloadError, match="count must be an integer >= 1"):
        load_workload(path, count=count)
    with pytest.raises(WorkloadError, match="count must be"):
        load_workload("azure-conv-2023", count=count)


# ---- a 30-million-token row is refused before its prompt is built ----------------------------------
class _ModelsOnly(BaseHTTPRequestHandler):
    """An OpenAI-compatible server's model list (max_model_len 1024); any completion is counted and refused."""

    completions = 0

    def do_GET(self):
        body = json.dumps({"data": [{"id": "m", "root": "/nonexistent", "max_model_len": 1024}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        type(self).completions += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def models_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelsOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_thirty_million_token_row_is_refused_before_its_prompt_is_built(tmp_path, models_endpoint):
    from servescope.bench.run import BenchError, BenchSpec, run_bench

    trace = tmp_path / "t.csv"
    trace.write_text(GENERIC_HEADER + "0,8,4\n0.1,30000000,4\n")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BenchError, match="1 of 2 requests need more than the server's max_model_len 1024"):
            run_bench(BenchSpec(str(trace), concurrency=1, endpoint=models_endpoint, vocab_size=100),
                      tmp_path / "run", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 30
    assert peak < 50 * 2**20  # 30 M token ids would take more than 240 MB as a Python list
    assert _ModelsOnly.completions == 0


def test_the_bench_command_names_a_garbage_trace_in_one_line(tmp_path, models_endpoint):
    path = tmp_path / "garbage.csv"
    path.write_bytes(GENERIC_HEADER.encode() + b"\x00\xff\xfe binary\n")
    proc = subprocess.run([sys.executable, "-m", "servescope", "bench", "--workload", str(path), "--concurrency", "1",
                           "--endpoint", models_endpoint, "--vocab-size", "100", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}, line 2: not UTF-8 text" in proc.stdout + proc.stderr
