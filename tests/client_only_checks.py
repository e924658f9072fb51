"""An independent reading of what servescope's client recorded, to check the readers of a client-only run against.

Nothing here imports servescope's analysis: the client's two tables are read straight from their
Parquet parts with pyarrow, each request's metrics are computed from its rows in plain Python
(the definitions of docs/json-contract.md's client conventions), percentiles with numpy's
'linear' method, and the fluidity index with test_fluidity.py's line-by-line transcription of
the recurrence in docs/metrics.md (the TTFT gap not judged).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

ENGINE_ONLY = ("scheduling_delay_s", "prefill_s", "ttst_s", "preemptions", "preempted_s", "arrival_from_queue",
               "finish_reason", "tbt_per_token_s")


@dataclass
class ClientRequest:
    """One request as the client's raw rows say: times in ns, chunks (time, tokens) in arrival order."""

    request_id: str
    status: str
    error: str | None
    send_ns: int
    end_ns: int
    prompt_tokens: int
    output_tokens: int
    chunks: list[tuple[int, int]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(k for _, k in self.chunks)

    def ttft_s(self) -> float | None:
        return (self.chunks[0][0] - self.send_ns) / 1e9 if self.chunks else None

    def e2e_s(self) -> float | None:
        return (self.chunks[-1][0] - self.send_ns) / 1e9 if self.chunks else None

    def decode_s(self) -> float | None:
        return (self.chunks[-1][0] - self.chunks[0][0]) / 1e9 if self.chunks else None

    def tpot_s(self) -> float | None:
        return self.decode_s() / (self.tokens - 1) if self.tokens >= 2 else None

    def normalized_latency_s(self) -> float | None:
        return self.e2e_s() / self.tokens if self.chunks else None

    def chunk_gaps_s(self) -> list[float]:
        return [(b[0] - a[0]) / 1e9 for a, b in zip(self.chunks, self.chunks[1:])]

    def token_gaps_s(self) -> list[float]:
        """Return the decode gaps per token: a chunk's first token carries the gap, its other tokens 0."""
        gaps = [0.0] * (self.chunks[0][1] - 1) if self.chunks else []
        for (t_prev, _), (t, k) in zip(self.chunks, self.chunks[1:]):
            gaps += [(t - t_prev) / 1e9] + [0.0] * (k - 1)
        return gaps


def read_client_requests(run_dir: Path) -> dict[str, ClientRequest]:
    """Return every request of the client's tables, read from the Parquet parts with pyarrow alone."""
    requests = {}
    for part in sorted((Path(run_dir) / "tables" / "client_requests").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            requests[row["client_request_id"]] = ClientRequest(
                row["client_request_id"], row["status"], row["error"], row["send_ns"], row["end_ns"],
                row["prompt_tokens"], row["output_tokens"])
    for part in sorted((Path(run_dir) / "tables" / "client_chunks").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            requests[row["client_request_id"]].chunks.append((row["time_ns"], row["num_tokens"]))
    for request in requests.values():
        request.chunks.sort()
    return requests


def fluidity_ttft_ignored(token_gaps_s: list[float], tbt_deadline_s: float) -> tuple[int, int]:
    """Return (misses, deadlines) of docs/metrics.md's recurrence over decode gaps (no TTFT deadline)."""
    from test_fluidity import reference  # the line-by-line transcription, independent of servescope

    _, misses, deadlines = reference([math.nan, *token_gaps_s], math.nan, tbt_deadline_s)
    return misses, deadlines


def stats(values: list[float]) -> dict:
    """Return count, mean, P50, P90, P99 and max (numpy 'linear'), the summary's fields."""
    v = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(v, [50, 90, 99], method="linear")
    return {"count": int(v.size), "mean": float(v.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": float(v.max())}


def assert_summary_equals(summary: dict, expected: dict, what: str) -> None:
    """Assert a summary entry equals the independent statistics (to float rounding of the order of sums)."""
    assert summary["count"] == expected["count"], what
    for key in ("mean", "p50", "p90", "p99", "max"):
        assert math.isclose(summary[key], expected[key], rel_tol=1e-9, abs_tol=1e-12), (what, key, summary, expected)


def write_trace(path: Path, lengths: list[tuple[int, int]]) -> Path:
    """Write a workload CSV of (prompt tokens, output tokens) requests, all due at 0."""
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"0,{p},{o}\n" for p, o in lengths))
    return path


def servescope_cli(*args) -> object:
    """Invoke the servescope command line in this process; return the click Result."""
    from servescope.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def analyze_json(run_dir: Path, *args) -> dict:
    """Return `servescope analyze RUN --json ...` as a dict (the command must succeed)."""
    result = servescope_cli("analyze", run_dir, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def check_client_only_analysis(result: dict, raw: dict[str, ClientRequest], tbt_slo_s: float) -> None:
    """Assert analyze --json of a client-only run equals the independent reading of its client tables."""
    ok = [r for r in raw.values() if r.status == "ok"]
    assert result["run"]["source"] == "client" and result["run"]["observers"] == ["client"]
    assert result["run"]["requests"] == len(raw)
    assert result["run"]["excluded_requests"] == len(raw) - len(ok)
    statuses = {s: sum(r.status == s for r in raw.values()) for s in {r.status for r in raw.values()}}
    assert {k: v for k, v in result["run"]["client_status"].items() if v} == statuses
    assert result["run"]["output_tokens"] == sum(r.tokens for r in ok)
    assert result["run"]["finished_requests"] == len(ok)
    first_send, last_end = min(r.send_ns for r in ok), max(max(r.end_ns, r.chunks[-1][0]) for r in ok)
    assert math.isclose(result["run"]["duration_s"], (last_end - first_send) / 1e9, rel_tol=1e-12)

    by_id = {r["request_id"]: r for r in result["requests"]}
    assert set(by_id) == set(raw)
    for rid, mine in raw.items():
        theirs = by_id[rid]
        assert theirs["source"] == "client" and theirs["client"] is None
        assert (theirs["status"], theirs["error"]) == (mine.status, mine.error), rid
        assert theirs["prompt_tokens"] == mine.prompt_tokens and theirs["output_tokens"] == mine.tokens, rid
        for name in ENGINE_ONLY:
            assert theirs[name] is None, (rid, name)
        for name in ("ttft_s", "e2e_s", "decode_s", "tpot_s", "normalized_latency_s"):
            expected = getattr(mine, name)()
            assert (theirs[name] is None) == (expected is None), (rid, name)
            if expected is not None:
                assert math.isclose(theirs[name], expected, rel_tol=1e-12, abs_tol=1e-15), (rid, name)
        assert theirs["tbt_per_chunk_s"] == mine.chunk_gaps_s(), rid
        misses, deadlines = fluidity_ttft_ignored(mine.token_gaps_s(), tbt_slo_s)
        assert (theirs["deadline_misses"], theirs["deadlines"]) == (misses, deadlines), rid
        assert math.isclose(theirs["fluidity_index"], 1 - misses / deadlines if deadlines else 1.0), rid

    summary = result["summary"]
    for name in ("ttft_s", "e2e_s", "decode_s", "normalized_latency_s"):
        assert_summary_equals(summary[name], stats([getattr(r, name)() for r in ok]), name)
    assert_summary_equals(summary["tpot_s"], stats([r.tpot_s() for r in ok if r.tokens >= 2]), "tpot_s")
    assert_summary_equals(summary["tbt_per_chunk_s"], stats([g for r in ok for g in r.chunk_gaps_s()]),
                          "tbt_per_chunk_s")
    for name in ("scheduling_delay_s", "prefill_s", "ttst_s", "preemptions", "tbt_per_token_s"):
        assert summary[name]["count"] == 0 and result["sources"][name] is None, name
    for name in ("ttft_s", "tbt_per_chunk_s", "e2e_s", "tpot_s", "fluidity_index"):
        assert result["sources"][name] == "client", name
    fluid = [fluidity_ttft_ignored(r.token_gaps_s(), tbt_slo_s) for r in ok]
    assert math.isclose(result["fluidity"]["service_miss_rate"],
                        sum(m for m, _ in fluid) / sum(d for _, d in fluid), rel_tol=1e-12)


def read_engine_ttft(run_dir: Path) -> dict[str, dict]:
    """Return, per external id (the front end's arrival detail), the engine's arrival and first emission (ns).

    Read from the Parquet parts with pyarrow alone.
    """
    arrival, detail_of = {}, {}
    for part in sorted((Path(run_dir) / "tables" / "request_events").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["event"] == "arrival" and row["detail"] is not None:
                arrival[row["request_id"]] = row["time_ns"]
                detail_of[row["request_id"]] = row["detail"]
    first = {}
    for part in sorted((Path(run_dir) / "tables" / "token_emissions").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["num_tokens"] and row["time_ns"] is not None:
                first[row["request_id"]] = min(first.get(row["request_id"], row["time_ns"]), row["time_ns"])
    return {detail_of[rid]: {"engine_id": rid, "arrival_ns": arrival[rid], "first_token_ns": first[rid]}
            for rid in arrival if rid in first}
