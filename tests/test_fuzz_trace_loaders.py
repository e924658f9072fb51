"""Property-based tests of every trace loader (generic CSV and JSONL, Azure, BurstGPT, Mooncake).

Each example writes a valid trace of random rows in one format (optionally gzipped, optionally
with a byte-order mark), damages it, and loads it through ``load_workload`` (format sniffing
included). Properties:

* nothing but a one-line WorkloadError naming the file ever escapes a loader;
* an undamaged trace reads back exactly (lengths, order, arrival offsets);
* a duplicated or deleted row is one more or one fewer request, never a silently different total;
* a field made hostile (text, a fraction, negative, 1e23, empty, binary) or a column removed is an
  error naming the line and field;
* a trace cut short is an error, or its rows are the original's first rows with the last one's
  numbers possibly cut (a plain-text file cut inside its last line cannot be told from a shorter
  line; gzip detects the cut): docs/reliability.md states this limit.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servescope.bench.workloads.catalog import load_workload
from servescope.bench.workloads.trace_reading import MAX_TOKENS
from servescope.bench.workloads.workload import WorkloadError

from fuzzing import FUZZ

EACH = settings(FUZZ, max_examples=10)  # per format (and byte-order mark): every loader gets its share

FORMATS = ("generic-csv", "generic-jsonl", "azure", "burstgpt", "mooncake")
LENGTH_FIELD = {"generic-csv": "prompt_tokens", "generic-jsonl": "prompt_tokens", "azure": "ContextTokens",
                "burstgpt": "Request tokens", "mooncake": "input_length"}
HOSTILE = ["abc", "1.5", "-3", "1e23", "", "\x00", "99999999999999999999999999", "NaN"]


@dataclass
class Trace:
    """A trace as written: its format, header line (or None), one text line per row, and the rows' lengths."""

    fmt: str
    header: str | None
    lines: list[str]
    prompt: list[int]
    output: list[int]

    def text(self, lines: list[str] | None = None) -> str:
        body = self.lines if lines is None else lines
        return "".join(([self.header] if self.header else []) + [line + "\n" for line in body])

    @property
    def first_data_line(self) -> int:
        return 2 if self.header else 1


@st.composite
def traces(draw, fmt: str) -> Trace:
    """A valid trace of 1 to 12 random rows in format fmt."""
    n = draw(st.integers(1, 12))
    prompt = draw(st.lists(st.integers(1, 50_000), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 4_000), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(0, 5_000), min_size=n, max_size=n))  # ms
    times_ms = np.cumsum(gaps).tolist()
    if fmt == "generic-csv":
        lines = [f"{t / 1000:.3f},{p},{o}" for t, p, o in zip(times_ms, prompt, output)]
        return Trace(fmt, "arrival_s,prompt_tokens,output_tokens\n", lines, prompt, output)
    if fmt == "generic-jsonl":
        lines = [json.dumps({"arrival_s": t / 1000, "prompt_tokens": p, "output_tokens": o})
                 for t, p, o in zip(times_ms, prompt, output)]
        return Trace(fmt, None, lines, prompt, output)
    if fmt == "azure":
        stamps = np.datetime64("2023-11-16T18:15:46.680", "ms") + np.asarray(times_ms, "timedelta64[ms]")
        lines = [f"{str(s).replace('T', ' ')}0000,{p},{o}" for s, p, o in zip(stamps, prompt, output)]
        return Trace(fmt, "TIMESTAMP,ContextTokens,GeneratedTokens\n", lines, prompt, output)
    if fmt == "burstgpt":
        lines = [f"{t / 1000:.1f},ChatGPT,{p},{o},{p + o},Conversation log" for t, p, o in zip(times_ms, prompt, output)]
        return Trace(fmt, "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n", lines, prompt,
                     output)
    blocks = draw(st.lists(st.lists(st.integers(0, 50), max_size=4), min_size=n, max_size=n))
    lines = [json.dumps({"timestamp": t, "input_length": p, "output_length": o, "hash_ids": b})
             for t, p, o, b in zip(times_ms, prompt, output, blocks)]
    return Trace(fmt, None, lines, prompt, output)


def suffix_of(fmt: str) -> str:
    return ".jsonl" if fmt in ("generic-jsonl", "mooncake") else ".csv"


def write(trace: Trace, data: bytes, directory: str, zipped: bool) -> Path:
    path = Path(directory) / ("trace" + suffix_of(trace.fmt) + (".gz" if zipped else ""))
    path.write_bytes(gzip.compress(data) if zipped else data)
    return path


def load(path: Path):
    """Return the Workload, or the WorkloadError's message; any other exception fails the test."""
    try:
        return load_workload(path)
    except WorkloadError as error:
        message = str(error)
        assert "\n" not in message and str(path) in message, message
        return message


def assert_sane(workload) -> None:
    """Whatever a loader returns holds lengths in [0, MAX_TOKENS] and non-decreasing arrival offsets."""
    assert all(0 <= r.prompt_tokens <= MAX_TOKENS and 0 <= r.output_tokens <= MAX_TOKENS for r in workload.requests)
    arrivals = workload.arrival_s
    assert np.all(np.isfinite(arrivals)) and np.all(np.diff(arrivals) >= 0)


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
@EACH
@given(data=st.data(), zipped=st.booleans())
def test_an_undamaged_trace_reads_back_exactly(fmt, bom, data, zipped):
    trace = data.draw(traces(fmt))
    with tempfile.TemporaryDirectory() as directory:
        data = ("\ufeff" if bom else "").encode() + trace.text().encode()
        workload = load(write(trace, data, directory, zipped))
    assert not isinstance(workload, str), workload
    assert [r.prompt_tokens for r in workload.requests] == trace.prompt
    assert [r.output_tokens for r in workload.requests] == trace.output
    assert_sane(workload)


@pytest.mark.parametrize("fmt", FORMATS)
@EACH
@given(data=st.data())
def test_a_duplicated_or_deleted_row_changes_the_total_by_exactly_that_row(fmt, data):
    trace = data.draw(traces(fmt))
    i = data.draw(st.integers(0, len(trace.lines) - 1))
    duplicate = data.draw(st.booleans())
    lines = list(trace.lines)
    if duplicate:
        lines.insert(i, lines[i])
        expected = trace.prompt[:i] + [trace.prompt[i]] + trace.prompt[i:]
    else:
        del lines[i]
        expected = trace.prompt[:i] + trace.prompt[i + 1:]
    with tempfile.TemporaryDirectory() as directory:
        workload = load(write(trace, trace.text(lines).encode(), directory, zipped=False))
    if not expected:
        assert isinstance(workload, str) and ("no " in workload or "empty" in workload), workload
        return
    assert not isinstance(workload, str), workload
    assert [r.prompt_tokens for r in workload.requests] == expected


@pytest.mark.parametrize("fmt", FORMATS)
@EACH
@given(data=st.data())
def test_a_hostile_field_is_named_with_its_line_and_field(fmt, data):
    trace = data.draw(traces(fmt))
    i = data.draw(st.integers(0, len(trace.lines) - 1))
    value = data.draw(st.sampled_from(HOSTILE))
    field = LENGTH_FIELD[trace.fmt]
    lines = list(trace.lines)
    if trace.fmt in ("generic-jsonl", "mooncake"):
        record = json.loads(lines[i])
        record[field] = {"abc": "abc", "1.5": 1.5, "-3": -3, "1e23": 1e23, "": None, "\x00": "\x00",
                         "NaN": float("nan")}.get(value, int(value) if value.isdigit() else value)
        lines[i] = json.dumps(record)
    else:
        cells = lines[i].split(",")
        cells[trace.header.strip().split(",").index(field)] = value
        lines[i] = ",".join(cells)
    with tempfile.TemporaryDirectory() as directory:
        message = load(write(trace, trace.text(lines).encode(), directory, zipped=False))
    assert isinstance(message, str), f"{value!r} in {field} was accepted"
    assert f"line {trace.first_data_line + i}" in message and field in message, message


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in ("generic-jsonl", "mooncake")])
@EACH
@given(data=st.data())
def test_a_removed_column_is_named(fmt, data):
    trace = data.draw(traces(fmt))
    field = LENGTH_FIELD[trace.fmt]
    names = trace.header.strip().split(",")
    k = names.index(field)
    header = ",".join(n for j, n in enumerate(names) if j != k) + "\n"
    lines = [",".join(c for j, c in enumerate(line.split(",")) if j != k) for line in trace.lines]
    with tempfile.TemporaryDirectory() as directory:
        message = load(write(trace, (header + "".join(line + "\n" for line in lines)).encode(), directory, False))
    assert isinstance(message, str) and "line 1" in message and field in message, message


@pytest.mark.parametrize("fmt", FORMATS)
@EACH
@given(data=st.data(), zipped=st.booleans())
def test_a_trace_cut_short_is_an_error_or_a_prefix(fmt, data, zipped):
    trace = data.draw(traces(fmt))
    whole = trace.text().encode()
    cut = data.draw(st.integers(0, len(whole) - 1))
    with tempfile.TemporaryDirectory() as directory:
        path = write(trace, whole, directory, zipped)
        blob = path.read_bytes()
        path.write_bytes(blob[: cut * len(blob) // len(whole)])
        workload = load(path)
    if isinstance(workload, str):
        return
    assert not zipped, "a cut gzip stream was read without an error"
    assert_sane(workload)
    got = [(r.prompt_tokens, r.output_tokens) for r in workload.requests]
    original = list(zip(trace.prompt, trace.output))
    assert got[:-1] == original[:len(got) - 1]
    if got:  # the last row read may be the original's with its last number cut to a prefix of its digits
        last, source = got[-1], original[len(got) - 1]
        assert last[0] == source[0] and str(source[1]).startswith(str(last[1])) or last == source


@pytest.mark.parametrize("fmt", FORMATS)
@EACH
@given(data=st.data())
def test_garbage_bytes_never_escape_as_a_traceback(fmt, data):
    trace = data.draw(traces(fmt))
    whole = trace.text().encode()
    at = data.draw(st.integers(0, len(whole)))
    garbage = data.draw(st.binary(min_size=1, max_size=64))
    overwrite = data.draw(st.booleans())
    damaged = whole[:at] + garbage + whole[at + (len(garbage) if overwrite else 0):]
    with tempfile.TemporaryDirectory() as directory:
        workload = load(write(trace, damaged, directory, zipped=False))
    if not isinstance(workload, str):
        assert_sane(workload)
