"""One benchmark run: a workload sent to a server (or an in-process engine) and recorded into one run directory.

``BenchSpec`` says what to send, how (``--rate`` open loop, ``--concurrency`` closed loop, or
the trace's own times) and where (an endpoint, a recorded server servescope starts from engine
arguments, or an AsyncLLM in this process). ``run_bench(spec, RUN)`` runs it and returns the
facts it wrote to ``RUN/bench.json``; ``bench_report(RUN)`` is the text printed at the end.

How a run ends (``bench.json`` ``status``, and the exit code of ``servescope bench``):

* ``complete`` (0): every planned request was sent and at most ``max_failed_fraction`` of the
  sent requests ended in ``error`` or ``timeout``;
* ``requests_failed`` (1): more than ``max_failed_fraction`` of them did (default 0: any failed
  request marks the run, since its latencies then describe the survivors only);
* ``server_gone`` (1): the server stopped answering mid-run (``load/server_watch.py``): the
  requests in flight were cancelled and nothing more was sent;
* ``interrupted`` (130): Ctrl-C;
* ``failed`` (2 for bad input, else 1): the run could not be made; ``error`` says why.

Nothing recorded is overwritten: a directory that already holds a bench run (``bench.json``,
``workload.json`` or client tables) is refused before anything is written or sent, and so is
any recorded run when the bench starts its own engine (``--engine-args``). A server's own run
directory (``servescope run``) takes one bench against that server; each further bench goes to
a new directory (``--server-run`` copies the server's records of its requests there).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from servescope.bench.load.client import API_VLLM, APIS, DEFAULT_REQUEST_TIMEOUT_S
from servescope.bench.load.server_watch import ServerGoneError
from servescope.run.directory import ensure_run_id, read_json, table_dir, write_json
from servescope.run.names import Table
from servescope.run.spool import read_spools

DEFAULT_MAX_FAILED_FRACTION = 0.0
FAILED_STATUSES = ("error", "timeout")
COMPLETE, REQUESTS_FAILED, SERVER_GONE, INTERRUPTED, FAILED = (
    "complete", "requests_failed", "server_gone", "interrupted", "failed")


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class BenchSpec:
    """Everything one benchmark run needs: workload, load, target (endpoint or engine args) and limits."""

    workload: str
    count: Optional[int] = None
    seed: int = 0
    rate_per_s: Optional[float] = None
    cv: float = 1.0
    concurrency: Optional[int] = None
    duration_s: Optional[float] = None
    time_scale: float = 1.0
    max_prompt_tokens: Optional[int] = None
    max_output_tokens: Optional[int] = None
    vocab_size: Optional[int] = None
    endpoint: Optional[str] = None
    model: Optional[str] = None
    server_run: Optional[str] = None  # where the endpoint's server records (its rows are copied into the run)
    engine_args: tuple[str, ...] = ()
    in_process: bool = False
    spelling: str = "module"
    server_env: tuple[tuple[str, str], ...] = ()
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION  # of sent requests ending in error or timeout
    extra: dict = field(default_factory=dict, compare=False)  # merged into bench.json (sweep point, probe)
    api: str = API_VLLM  # what the client sends: vLLM's fields, or 'openai' (standard fields, text prompts)
    extra_body: str = ""  # a JSON object merged into every request body (server-specific fields)
    text_prompts: bool = False  # vLLM too gets prompts as text (the synthetic tokenizer's), as openai servers do

    def load_key(self) -> str:
        """Return a hash of what determines the load sent and the target (not the rate), to reuse cached runs."""
        facts = asdict(self)
        for judged_not_sent in ("extra", "rate_per_s", "max_failed_fraction"):
            facts.pop(judged_not_sent)
        for name, default in (("api", API_VLLM), ("extra_body", ""), ("text_prompts", False)):  # defaults: keys of before
            if facts[name] == default:
                facts.pop(name)
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- before anything is sent


def check_spec(spec: BenchSpec) -> None:
    """Raise BenchError naming the option when the spec's target or load is contradictory."""
    if (spec.endpoint is None) == (not spec.engine_args):
        raise BenchError("give --endpoint URL or --engine-args '...', exactly one")
    if spec.in_process and not spec.engine_args:
        raise BenchError("--in-process builds the engine from --engine-args")
    if spec.server_run is not None and spec.endpoint is None:
        raise BenchError("--server-run names where an --endpoint's server records")
    if spec.rate_per_s is not None and spec.concurrency is not None:
        raise BenchError("give --rate or --concurrency, not both")
    if not spec.request_timeout_s > 0:
        raise BenchError("--timeout must be > 0 s")
    if not 0 <= spec.max_failed_fraction <= 1:
        raise BenchError(f"--max-failed-fraction is a fraction in [0, 1], not {spec.max_failed_fraction}")
    if spec.api not in APIS:
        raise BenchError(f"--api is one of {', '.join(APIS)}, not {spec.api!r}")
    if spec.in_process and (spec.api != API_VLLM or spec.extra_body):
        raise BenchError("--api and --extra-body shape HTTP requests: not with --in-process")
    extra_body_of(spec)


def extra_body_of(spec: BenchSpec) -> dict | None:
    """Return --extra-body as a dict (None when not given); raise BenchError naming the option when it is not a JSON object."""
    if not spec.extra_body:
        return None
    try:
        body = json.loads(spec.extra_body)
    except json.JSONDecodeError as exc:
        raise BenchError(f"--extra-body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BenchError("--extra-body must be a JSON object, e.g. '{\"temperature\": 0}'")
    return body


def recorded_files(out: Path, *, engine_too: bool = False) -> list[str]:
    """Return what out already holds of a bench run (bench.json, workload.json, client table parts), and with
    engine_too of any recording (command.json, table parts of any table)."""
    found = [name for name in ("bench.json", "workload.json") + (("command.json",) if engine_too else ())
             if (out / name).exists()]
    tables = Table.ALL if engine_too else (Table.CLIENT_REQUESTS, Table.CLIENT_CHUNKS)
    for table in tables:
        parts = list(table_dir(out, table).glob("*.parquet"))
        if parts:
            found.append(f"{len(parts)} {table} part(s)")
    for spool in read_spools(out):  # recorded, not compacted yet (a recording still running, or cut short)
        for table in tables:
            if spool.rows.get(table):
                found.append(f"{len(spool.rows[table])} {table} row(s) in the spool of {spool.name}")
    return found


def refuse_recorded_run(out: Path, *, starts_engine: bool = False) -> None:
    """Raise BenchError if out already holds a bench run (or, when the bench starts its own engine, any
    recording): nothing recorded is ever overwritten or mixed with another engine's records."""
    found = recorded_files(Path(out), engine_too=starts_engine)
    if found:
        what = "a recorded run" if starts_engine else "a bench run"
        raise BenchError(f"{out} already holds {what} ({', '.join(found)}); servescope never overwrites a "
                         f"recorded run: bench into a new directory, e.g. --out {out}-2 (with --endpoint, add "
                         f"--server-run DIR to copy the records of a server that records into DIR)")


def set_aside(run_dir: Path) -> Path | None:
    """Rename an existing run directory to '<name>.stale-<n>' (nothing is deleted); return its new path."""
    if not run_dir.exists():
        return None
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.stale-{n}")
        if not target.exists():
            run_dir.rename(target)
            return target


def load_spec_workload(spec: BenchSpec):
    """Return the spec's workload, capped to its token limits; raise WorkloadError naming the file and line."""
    from servescope.bench.workloads.catalog import load_workload

    workload = load_workload(spec.workload, count=spec.count, seed=spec.seed)
    if spec.max_prompt_tokens is not None or spec.max_output_tokens is not None:
        workload = workload.capped(spec.max_prompt_tokens, spec.max_output_tokens)
    return workload


def _model_facts(spec: BenchSpec, served: dict | None) -> dict:
    """Return the model's config.json (vocab_size, special ids) if it can be found on this host, else {}."""
    from servescope.bench.load.server import model_of

    candidates = [spec.model]
    if spec.engine_args:
        candidates.append(model_of(list(spec.engine_args)))
    if served:
        candidates += [served.get("root"), served.get("id")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return read_json(Path(candidate) / "config.json")
    return {}


def _prompts_for(spec: BenchSpec, config: dict):
    from servescope.bench.workloads.prompts import SyntheticPrompts

    vocab = spec.vocab_size or config.get("vocab_size")
    if not vocab:
        raise BenchError("cannot find the model's vocabulary size (no config.json on this host): give --vocab-size")
    special = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        special.update(value if isinstance(value, list) else [value] if value is not None else [])
    return SyntheticPrompts(int(vocab), sorted(i for i in special if 0 <= i < vocab), seed=spec.seed)


def _check_fits(tokens_needed, max_model_len: int | None) -> None:
    """Raise BenchError when a request needs more than max_model_len tokens (tokens_needed: prompt + output each)."""
    if not max_model_len:
        return
    too_long = sum(1 for n in tokens_needed if n > max_model_len)
    if too_long:
        raise BenchError(f"{too_long} of {len(tokens_needed)} requests need more than the server's max_model_len "
                         f"{max_model_len} tokens (prompt + output): use --max-prompt-tokens / --max-output-tokens")


def _planned_max_model_len(spec: BenchSpec, served: dict | None, config: dict) -> int | None:
    """Return the context limit known before any prompt is built: the server's, else --max-model-len, else the model's."""
    if served is not None:
        return served.get("max_model_len")
    args = list(spec.engine_args)
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-model-len=") else (
            args[i + 1] if arg == "--max-model-len" and i + 1 < len(args) else None)
        if value is not None and value.isdigit():
            return int(value)
    limit = config.get("max_position_embeddings")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def _workload_facts(spec: BenchSpec, workload) -> dict:
    return {
        "name": workload.name,
        "source": workload.source,
        "requests": len(workload),
        "seed": spec.seed,
        "prompt_tokens": asdict(workload.prompt_stats()),
        "output_tokens": asdict(workload.output_stats()),
        "notes": list(workload.notes),
        "arrival": ("closed_loop" if spec.concurrency is not None
                    else "trace" if spec.rate_per_s is None
                    else "poisson" if spec.cv == 1.0 else "gamma"),
    }


# --------------------------------------------------------------------------- the run


def run_bench(spec: BenchSpec, out: str | Path, *, progress: bool | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run one benchmark into out and return its bench.json facts; raise BenchError / WorkloadError / EndpointError on bad input."""
    from servescope.bench.load.client import base_url_of, served_model
    from servescope.bench.load.driver_http import plan_load
    from servescope.bench.load.progress import LiveStats
    from servescope.bench.load.server import copy_engine_records, external_ids_of, wait_for_engine_records
    from servescope.record.recorder import close_recorder
    from servescope.run.compact import close_run

    check_spec(spec)
    out = Path(out)
    refuse_recorded_run(out, starts_engine=bool(spec.engine_args))
    out.mkdir(parents=True, exist_ok=True)
    run_id = ensure_run_id(out)
    facts: dict = {
        "driver": "inprocess" if spec.in_process else "http",
        "spec": {k: v for k, v in asdict(spec).items() if k != "extra"},
        "load_key": spec.load_key(),
        "status": "running",
        "error": None,
        "started_wall_ns": time.time_ns(),
        **spec.extra,
    }
    write_json(out / "bench.json", facts)
    started = time.monotonic()
    results: list = []
    stats = LiveStats(duration_s=spec.duration_s)
    try:
        workload = load_spec_workload(spec)  # bad input fails before anything is contacted or started
        served = None
        if spec.endpoint is not None:
            served = asyncio.run(served_model(base_url_of(spec.endpoint), named=spec.model))  # EndpointError names the URL
        config = _model_facts(spec, served)
        _check_fits(workload.tokens_needed(), _planned_max_model_len(spec, served, config))  # before any prompt
        prompts = _prompts_for(spec, config)
        plan = plan_load(workload, prompts, rate_per_s=spec.rate_per_s, cv=spec.cv, concurrency=spec.concurrency,
                         duration_s=spec.duration_s, time_scale=spec.time_scale, seed=spec.seed,
                         id_prefix=f"{run_id[:8]}{uuid.uuid4().hex[:4]}")  # unique per bench, also in a shared RUN
        write_json(out / "workload.json", _workload_facts(spec, workload))
        facts["load"] = plan.describe()
        stats.planned = len(plan)
        results = _drive(spec, plan, out, served, stats, facts, progress, echo)
        facts["status"] = COMPLETE
    except ServerGoneError as exc:
        results = exc.results
        facts["status"], facts["error"] = SERVER_GONE, f"{exc}; the requests in flight were cancelled"
        echo(f"servescope: {exc}; stopped sending, keeping what was recorded")
    except KeyboardInterrupt:
        facts["status"] = INTERRUPTED
        facts["error"] = "interrupted (Ctrl-C): requests in flight were cancelled and recorded as 'cancelled'"
        echo("servescope: interrupted; keeping what was recorded")
    except Exception as exc:  # recorded in bench.json, then reported by the caller
        facts["status"] = FAILED
        facts["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        close_recorder()
        facts["results"] = _status_counts(stats, results)
        facts["elapsed_s"] = time.monotonic() - started
        if facts["status"] == COMPLETE:
            _judge_failures(facts, spec.max_failed_fraction)
        write_json(out / "bench.json", facts)  # first: whatever happens next, the run says how it ended
        if spec.server_run is not None and results:
            ok = [r.client_request_id for r in results if r.status == "ok"]
            wait_for_engine_records(spec.server_run, external_ids_of(ok), expected=len(ok))
            facts["engine_records"] = copy_engine_records(
                spec.server_run, out, external_ids_of(r.client_request_id for r in results),
                min(r.send_ns for r in results), max(r.end_ns for r in results))
            write_json(out / "bench.json", facts)
        close_run(out)
    return facts


def _judge_failures(facts: dict, max_failed_fraction: float) -> None:
    """Mark a finished run requests_failed when more than max_failed_fraction of its sent requests failed."""
    counts = facts["results"]
    failed = sum(counts.get(s, 0) for s in FAILED_STATUSES)
    sent = counts.get("sent", 0)
    if sent and failed / sent > max_failed_fraction:
        facts["status"] = REQUESTS_FAILED
        facts["error"] = (f"{failed} of {sent} requests failed (error {counts.get('error', 0)}, timeout "
                          f"{counts.get('timeout', 0)}), above --max-failed-fraction {max_failed_fraction:g}")


def _drive(spec: BenchSpec, plan, out: Path, served: dict | None, stats, facts: dict, progress: bool | None,
           echo: Callable[[str], None]) -> list:
    """Send the plan to the spec's target (endpoint, a server started here, or an in-process engine); return the results."""
    from servescope.bench.load.client import base_url_of, served_model
    from servescope.bench.load.driver_http import drive_http
    from servescope.bench.load.progress import live_progress
    from servescope.bench.load.server import external_ids_of, start_server, wait_for_engine_records

    if spec.in_process:
        import servescope
        from servescope.bench.load.driver_inprocess import drive_inprocess

        try:
            with live_progress(stats, enabled=progress):
                return asyncio.run(drive_inprocess(list(spec.engine_args), plan, out,
                                                   request_timeout_s=spec.request_timeout_s, stats=stats))
        finally:
            servescope.uninstrument()
    server = None
    try:
        if spec.engine_args:
            echo(f"servescope: starting a recorded vLLM server (log: {out / 'server.log'}) ...")
            server = start_server(list(spec.engine_args), out, extra_env=dict(spec.server_env), spelling=spec.spelling)
            served = asyncio.run(served_model(server.url))
            _check_fits([len(p) + m for p, m in zip(plan.prompts, plan.max_tokens)], served.get("max_model_len"))
            facts["server"] = {"argv": server.argv, "url": server.url, "started_by_servescope": True}
        facts["endpoint"] = base_url_of(server.url if server is not None else spec.endpoint)
        facts["model"] = spec.model or served.get("id")
        if not facts["model"]:
            raise BenchError(f"{facts['endpoint']} lists no model (transformers serve lists only its hub cache): "
                             "give --model")
        with live_progress(stats, enabled=progress):
            results = asyncio.run(drive_http(facts["endpoint"], plan, out, model=facts["model"],
                                             request_timeout_s=spec.request_timeout_s, stats=stats,
                                             server_process=None if server is None else server.process,
                                             api=spec.api, extra_body=extra_body_of(spec),
                                             text_prompts=spec.text_prompts))
        if server is not None:  # vLLM's shutdown may kill its engine processes: let them write the run first
            ok = [r.client_request_id for r in results if r.status == "ok"]
            wait_for_engine_records(out, external_ids_of(ok), expected=len(ok))
        return results
    finally:
        if server is not None:
            server.stop()


def _status_counts(stats, results) -> dict:
    counts = {"sent": stats.sent, "ok": 0, "error": 0, "timeout": 0, "cancelled": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    counts["cancelled"] += max(0, stats.sent - len(results))  # cancelled before their result came back
    counts["output_tokens"] = sum(r.output_tokens for r in results)
    errors = [r.error for r in results if r.error and r.status in FAILED_STATUSES]
    if errors:
        counts["first_error"] = errors[0]
    return counts


def bench_report(out: str | Path) -> str:
    """Return the end-of-run text: request counts, then client vs engine (or client-only) TTFT and TBT in ms."""
    from servescope.analysis.distributions import summarize
    from servescope.bench.load.client import client_request_metrics, client_vs_engine, client_vs_engine_text
    from servescope.run.tables import read_table

    facts = read_json(Path(out) / "bench.json")
    r = facts.get("results", {})
    lines = [f"servescope bench: {facts['status']}; sent {r.get('sent', 0)}, ok {r.get('ok', 0)}, error "
             f"{r.get('error', 0)}, timeout {r.get('timeout', 0)}, cancelled {r.get('cancelled', 0)}; "
             f"{r.get('output_tokens', 0)} output tokens in {facts.get('elapsed_s', 0):.1f} s"]
    if facts.get("status") in (REQUESTS_FAILED, SERVER_GONE) and facts.get("error"):
        lines.append(f"run not complete: {facts['error']}")
    if r.get("first_error"):
        lines.append(f"first error: {r['first_error']}")
    if len(read_table(out, Table.CLIENT_REQUESTS)) == 0:
        return "\n".join(lines)
    if len(read_table(out, Table.REQUEST_EVENTS)):
        lines.append(client_vs_engine_text(client_vs_engine(out)))
    else:
        metrics = client_request_metrics(out)
        for label, values in (("client TTFT", metrics.ttft_s), ("client TBT/chunk", metrics.all_tbt_per_chunk_s())):
            s = summarize(values)
            cells = ", ".join(f"{k} {s[k] * 1e3:.2f}" for k in ("p50", "p90", "p99") if s[k] is not None)
            lines.append(f"{label} (ms, {s['count']} samples): {cells or '-'}  (client only: no engine records in this run)")
    lines.append(f"next: servescope analyze {out}")
    return "\n".join(lines)
