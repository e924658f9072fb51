"""What verifying a run costs: reading it through load_run (every part checksummed and checked against
the part index) against reading the same Parquet parts with pyarrow alone, and writing a part through
parts.write_part (fsync, checksum, index line) against a bare write + rename.

    python benchmarks/verify_cost.py --requests 20000 --tokens 2000000 --repeats 5 \
        --out benchmarks/results/cpu-verify-cost.json

The run is synthesized by servescope.studies.analysis_scale (a realistic token_emissions table
split into parts). Read arms alternate (plain, verified) in one process after a warm-up read, so
both find the files in the page cache; times are wall-clock seconds, every sample is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.data import DICTIONARY_ID_COLUMNS, LOADED_TABLES, load_run
from servescope.run.machine import machine_facts
from servescope.run.parts import write_part
from servescope.run.schema import TABLES
from servescope.studies import analysis_scale


def plain_read_s(run: Path) -> float:
    """Seconds to read every part of the loaded tables as load_run does (schema, dictionary ids), with no check."""
    started = time.perf_counter()
    for table in LOADED_TABLES:
        parts = sorted((run / "tables" / table).glob("*.parquet"))
        column = DICTIONARY_ID_COLUMNS.get(table)
        tables = []
        for part in parts:
            if column is None:
                tables.append(pq.read_table(part, schema=TABLES[table].arrow_schema))
            else:
                with pq.ParquetFile(part, read_dictionary=[column]) as parquet:
                    tables.append(parquet.read())
        if tables:
            pa.concat_tables(tables)
    return time.perf_counter() - started


def verified_read_s(run: Path) -> float:
    """Seconds for load_run (checksums, index, schema checks, dictionary-encoded ids)."""
    started = time.perf_counter()
    result = load_run(run)
    elapsed = time.perf_counter() - started
    assert not result.warnings, result.warnings
    return elapsed


def write_times_s(directory: Path, rows: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per part of `rows` token_emissions rows: parts.write_part vs pq.write_table + os.replace."""
    table = pq.read_table(next((directory / "run" / "tables" / "token_emissions").glob("*.parquet"))).slice(0, rows)
    out: dict[str, list[float]] = {"bare": [], "write_part": []}
    target = directory / "writes"
    for k in range(repeats):
        started = time.perf_counter()
        (target / "tables" / "token_emissions").mkdir(parents=True, exist_ok=True)
        tmp = target / "tables" / "token_emissions" / f".bare-{k}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, tmp.with_name(f"bare-{k}.parquet"))
        out["bare"].append(time.perf_counter() - started)
        started = time.perf_counter()
        write_part(target, "token_emissions", table, writer="bench-1", name=f"bench-1-{k:06d}", run_id="bench")
        out["write_part"].append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part-rows", type=int, default=10_000, help="rows of one written part (about 1 s of tokens)")
    parser.add_argument("--rows-per-part", type=int, default=50_000, help="token_emissions rows per part of the run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        run = directory / "run"
        analysis_scale.ROWS_PER_PART = args.rows_per_part
        size = analysis_scale.synthesize_run(run, args.requests, args.tokens, concurrency=256, tokens_per_chunk=1.0,
                                             preempted_fraction=0.02, seed=1)
        parts = sorted((run / "tables").glob("*/*.parquet"))
        total_bytes = sum(p.stat().st_size for p in parts)
        plain_read_s(run)  # warm-up: both arms read from the page cache
        plain, verified = [], []
        for _ in range(args.repeats):
            plain.append(plain_read_s(run))
            verified.append(verified_read_s(run))
        writes = write_times_s(directory, args.part_rows, 30)
    result = {
        "machine": machine_facts(),
        "what": "read: load_run (sha256 of every part, index, schema and run-id checks) vs the same reads with no "
                "check; write: parts.write_part (fsync of part, directory and index line; sha256) vs "
                "pq.write_table + os.replace; seconds, every sample",
        "run": {"requests": args.requests, "tokens": args.tokens, "parts": len(parts), "bytes": total_bytes, **size},
        "read_s": {"plain_pyarrow": plain, "load_run_verified": verified,
                   "median_plain": statistics.median(plain), "median_verified": statistics.median(verified)},
        "write_part_s": {"rows": args.part_rows, **writes,
                         "median_bare": statistics.median(writes["bare"]),
                         "median_write_part": statistics.median(writes["write_part"])},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("run", "read_s", "write_part_s")}, indent=1))


if __name__ == "__main__":
    main()
