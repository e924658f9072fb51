"""Shared reading and validation for trace files (.csv, .jsonl, optionally .gz).

Every problem becomes a ``WorkloadError`` naming the file, the line number (1-based,
the header of a CSV is line 1) and the field, so a bad row in a million-line trace
can be found at once. The happy path converts whole columns with numpy; only when
that fails does a per-row scan look for the first offending line.
"""

from __future__ import annotations

import csv
import gzip
import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from servescope.bench.workloads.workload import WorkloadError


MAX_LINE_BYTES = 1 << 20  # a trace row is a few dozen bytes; a longer line is not a trace row
MAX_TOKENS = 2**31 - 1  # lengths are int32 in the run's tables
MAX_SECONDS = 1e10  # about 317 years: a larger time offset is in the wrong unit
BOM = "\ufeff"


def open_trace_bytes(path: str | Path) -> IO[bytes]:
    """Returns a binary stream over the file, transparently gunzipping names ending in .gz."""
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def trace_lines(path: str | Path):
    """Yields (line number from 1, text) of each line, decoded as UTF-8 (a leading BOM dropped).

    Raises WorkloadError naming the file and line for bytes that are not UTF-8 text, a line over
    MAX_LINE_BYTES (read no further than that), or a damaged gzip stream. The text keeps its line end.
    """
    path = Path(path)
    try:
        with open_trace_bytes(path) as stream:
            number = 0
            while raw := stream.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise WorkloadError(f"{path}, line {number}: longer than {MAX_LINE_BYTES} bytes "
                                        "(not a trace row: binary data?)")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise WorkloadError(f"{path}, line {number}: not UTF-8 text (binary data?)") from None
                yield number, text.lstrip(BOM) if number == 1 else text
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise WorkloadError(f"{path}: unreadable ({exc.strerror or exc if isinstance(exc, OSError) else exc})") \
            from None


def first_line(path: str | Path) -> str:
    """Returns the first non-blank line of the file, stripped (empty string if none)."""
    for _, line in trace_lines(path):
        if line.strip():
            return line.strip()
    return ""


@dataclass
class Columns:
    """Raw string (CSV) or object (JSONL) values per field, and the file line of each row."""

    path: Path
    values: dict[str, list]
    line_numbers: np.ndarray
    # CSV values are all strings: numpy's int conversion then rejects "1.5" itself.
    all_text: bool = False

    def __len__(self) -> int:
        return int(self.line_numbers.size)


def read_csv_columns(path: str | Path, required: list[str]) -> Columns:
    """Returns the named columns of a headed CSV as strings, with each row's line number."""
    path = Path(path)
    reader = csv.reader(text for _, text in trace_lines(path))
    try:
        header = next(reader, None)
        if header is None:
            raise WorkloadError(f"{path}: empty file, expected a header with {required}")
        header = [name.strip() for name in header]
        missing = [name for name in required if name not in header]
        if missing:
            raise WorkloadError(f"{path}, line 1: header lacks field(s) {missing}; found {header}")
        index = [header.index(name) for name in required]
        width = len(header)
        values: dict[str, list] = {name: [] for name in required}
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise WorkloadError(
                    f"{path}, line {reader.line_num}: malformed row, {len(row)} fields where the header has {width}"
                )
            for name, i in zip(required, index):
                values[name].append(row[i].strip())
            lines.append(reader.line_num)
    except csv.Error as exc:  # a field over csv.field_size_limit(), a NUL byte, an unclosed quote
        raise WorkloadError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return Columns(path, values, np.asarray(lines, dtype=np.int64), all_text=True)


def read_jsonl_columns(path: str | Path, required: list[str], optional: list[str] = ()) -> Columns:
    """Returns the named fields of a JSON-lines file (missing optional fields as None), with each row's line number."""
    path = Path(path)
    names = list(required) + list(optional)
    values: dict[str, list] = {name: [] for name in names}
    lines: list[int] = []
    for line_number, line in trace_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise WorkloadError(f"{path}, line {line_number}: malformed JSON ({error.msg})") from None
        except (RecursionError, ValueError) as error:  # nesting too deep; an integer of too many digits
            raise WorkloadError(f"{path}, line {line_number}: malformed JSON ({type(error).__name__})") from None
        if not isinstance(record, dict):
            raise WorkloadError(f"{path}, line {line_number}: malformed row, expected a JSON object")
        for name in required:
            if name not in record:
                raise WorkloadError(f"{path}, line {line_number}: field '{name}' is missing")
        for name in names:
            values[name].append(record.get(name))
        lines.append(line_number)
    return Columns(path, values, np.asarray(lines, dtype=np.int64))


def _is_integral(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return bool(np.isfinite(number)) and number == int(number)


def _length_problem(value) -> str:
    """Returns why value is not a usable token length ("" if it is one)."""
    if not _is_integral(value):
        return f"must be a non-negative integer, got {_shown(value)}"
    if float(value) > MAX_TOKENS:
        return f"is too large ({_shown(value)}; at most {MAX_TOKENS} tokens)"
    return ""


def _shown(value) -> str:
    """Returns a value as an error message shows it: repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def token_lengths(columns: Columns, field: str, minimum: int = 0) -> np.ndarray:
    """Returns a length column as int64 tokens; raises naming the first non-integer, too-large or too-small value."""
    raw = columns.values[field]
    try:
        lengths = np.asarray(raw, dtype=np.int64) if raw else np.zeros(0, np.int64)
        exact = True
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact or (lengths.size and not columns.all_text and not _all_exact(raw)):
        for value, line in zip(raw, columns.line_numbers.tolist()):
            problem = _length_problem(value)
            if problem:
                raise WorkloadError(f"{columns.path}, line {line}: field '{field}' {problem}")
        lengths = np.asarray([int(float(v)) if not isinstance(v, int) else v for v in raw], dtype=np.int64)
    large = np.flatnonzero(lengths > MAX_TOKENS)
    if large.size:
        i = int(large[0])
        raise WorkloadError(f"{columns.path}, line {columns.line_numbers[i]}: field '{field}' "
                            f"{_length_problem(raw[i])}")
    bad = np.flatnonzero(lengths < minimum)
    if bad.size:
        i = int(bad[0])
        kind = "negative" if lengths[i] < 0 else f"below {minimum}"
        raise WorkloadError(
            f"{columns.path}, line {columns.line_numbers[i]}: field '{field}' is {kind} ({lengths[i]})"
        )
    return lengths


def _all_exact(raw: list) -> bool:
    # np.asarray(["1.5"], dtype=int64) raises, but np.asarray([1.5], dtype=int64)
    # truncates silently: JSON numbers need this second check.
    return all(isinstance(v, str) or _is_integral(v) for v in raw)


def seconds_column(columns: Columns, field: str, scale: float = 1.0) -> np.ndarray:
    """Returns a numeric time column multiplied by ``scale`` (to seconds); raises naming the first non-number.

    A time beyond MAX_SECONDS (after scaling) is refused as a unit error.
    """
    raw = columns.values[field]
    try:
        times = np.asarray(raw, dtype=np.float64) if raw else np.zeros(0)
        ok = not any(isinstance(v, bool) for v in raw)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not np.all(np.isfinite(times)):
        for value, line in zip(raw, columns.line_numbers.tolist()):
            try:
                good = not isinstance(value, bool) and bool(np.isfinite(float(value)))
            except (TypeError, ValueError, OverflowError):
                good = False
            if not good:
                raise WorkloadError(f"{columns.path}, line {line}: field '{field}' is not a number: {_shown(value)}")
    seconds = times * scale
    large = np.flatnonzero(np.abs(seconds) > MAX_SECONDS)
    if large.size:
        i = int(large[0])
        raise WorkloadError(f"{columns.path}, line {columns.line_numbers[i]}: field '{field}' is too large "
                            f"({_shown(raw[i])}: over {MAX_SECONDS:.0e} s; wrong unit?)")
    return seconds


def datetime_seconds_column(columns: Columns, field: str) -> np.ndarray:
    """Returns 'YYYY-MM-DD HH:MM:SS.fffffff' timestamps as seconds after the first row (float64)."""
    raw = columns.values[field]
    with warnings.catch_warnings():  # a timezone suffix is converted to UTC; numpy warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        return _datetime_seconds(columns, field, raw)


def _datetime_seconds(columns: Columns, field: str, raw: list) -> np.ndarray:
    try:
        stamps = np.asarray(raw, dtype="datetime64[ns]")
        ok = not np.any(np.isnat(stamps))
    except (ValueError, TypeError, OverflowError):
        ok = False
    if not ok:
        for value, line in zip(raw, columns.line_numbers.tolist()):
            try:
                good = not np.isnat(np.datetime64(value, "ns"))
            except (ValueError, TypeError, OverflowError):
                good = False
            if not good:
                raise WorkloadError(
                    f"{columns.path}, line {line}: field '{field}' is not a timestamp "
                    f"'YYYY-MM-DD HH:MM:SS.fffffff': {_shown(value)}"
                )
    if stamps.size == 0:
        return np.zeros(0)
    return (stamps - stamps[0]).astype(np.int64) / 1e9


def require_sorted(columns: Columns, times_s: np.ndarray, field: str) -> None:
    """Returns None if times never decrease; otherwise raises naming the first line that goes back in time."""
    back = np.flatnonzero(np.diff(times_s) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise WorkloadError(
            f"{columns.path}, line {columns.line_numbers[i]}: field '{field}' is not sorted "
            f"(goes back from line {columns.line_numbers[i - 1]})"
        )


def require_rows(columns: Columns) -> None:
    """Returns None if the file has at least one data row; otherwise raises naming the file."""
    if len(columns) == 0:
        raise WorkloadError(f"{columns.path}: no requests in file")


def block_id_lists(columns: Columns, field: str) -> list[tuple[int, ...] | None]:
    """Returns each row's list of prefix-block ids as a tuple (None where absent); raises naming a bad one."""
    blocks: list[tuple[int, ...] | None] = []
    for value, line in zip(columns.values[field], columns.line_numbers.tolist()):
        if value is None:
            blocks.append(None)
            continue
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise WorkloadError(f"{columns.path}, line {line}: field '{field}' must be a list of non-negative integers")
        blocks.append(tuple(value))
    return blocks


def zero_length_mask(prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Returns a bool mask of rows with a 0-token prompt or output: unsendable, skipped and counted by loaders."""
    return (prompt == 0) | (output == 0)
