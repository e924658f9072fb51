"""The `servescope bench`, `capacity` and `sweep` commands (``register(app)`` adds them to the CLI).

* ``bench``: one benchmark run into ``--out RUN``: a workload at ``--rate`` (open loop),
  ``--concurrency`` (closed loop) or the trace's own times, against ``--endpoint URL`` or a
  recorded server servescope starts from ``--engine-args`` (``--in-process``: an AsyncLLM in
  this process instead), with a live progress display; Ctrl-C stops cleanly and keeps what
  was recorded. It ends with client-side and engine-side TTFT / TBT side by side.
* ``capacity``: the highest request rate meeting an SLO (fluidity; TBT + TTFT; TTFT + TPOT
  percentiles), by the bracketing search of ``analysis.capacity_search``; every probe is a
  run directory of its own under ``OUT/probes/<load key>/rate-R/``, reused when the search
  is run again with the same load (an unfinished probe is set aside, never mixed in).
* ``sweep``: the same load on a grid of engine parameters, one recorded server per point,
  so a baseline is tuned as carefully as the treatment; each point's manifest records it.

``run_bench`` and ``search_capacity_runs`` are the functions behind the commands.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional

import typer

from servescope.bench.load.client import DEFAULT_REQUEST_TIMEOUT_S, EndpointError
from servescope.bench.workloads.workload import WorkloadError
from servescope.run.directory import RunDirError, ensure_run_id, read_json, write_json

EXIT_USAGE = 2
API_CHOICES = ("vllm", "openai")
EXIT_INTERRUPTED = 130


class BenchError(RuntimeError):
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
    text_prompts: bool = False  # send each prompt as the synthetic tokenizer's text of its ids
    api: str = "vllm"  # vllm: vLLM's extensions (ignore_eos, return_token_ids); openai: standard fields, text prompts
    extra: dict = field(default_factory=dict, compare=False)  # merged into bench.json (sweep point, probe)

    def load_key(self) -> str:
        """Return a hash of what determines the load sent and the target (not the rate), to reuse cached runs."""
        facts = asdict(self)
        facts.pop("extra")
        facts.pop("rate_per_s")
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- one run


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
            return json.loads((Path(candidate) / "config.json").read_text())
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


def _load_workload(spec: BenchSpec):
    from servescope.bench.workloads.catalog import load_workload

    workload = load_workload(spec.workload, count=spec.count, seed=spec.seed)
    if spec.max_prompt_tokens is not None or spec.max_output_tokens is not None:
        workload = workload.capped(spec.max_prompt_tokens, spec.max_output_tokens)
    return workload


def _check_fits(plan, max_model_len: int | None) -> None:
    if not max_model_len:
        return
    too_long = sum(1 for p, m in zip(plan.prompts, plan.max_tokens) if len(p) + m > max_model_len)
    if too_long:
        raise BenchError(f"{too_long} of {len(plan)} requests need more than the server's max_model_len "
                         f"{max_model_len} tokens (prompt + output): use --max-prompt-tokens / --max-output-tokens")


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


def _validate(spec: BenchSpec) -> None:
    if (spec.endpoint is None) == (not spec.engine_args):
        raise BenchError("give --endpoint URL or --engine-args '...', exactly one")
    if spec.in_process and not spec.engine_args:
        raise BenchError("--in-process builds the engine from --engine-args")
    if spec.server_run is not None and spec.endpoint is None:
        raise BenchError("--server-run names where an --endpoint's server records")
    if spec.rate_per_s is not None and spec.concurrency is not None:
        raise BenchError("give --rate or --concurrency, not both")
    if spec.request_timeout_s <= 0:
        raise BenchError("--timeout must be > 0 s")
    if spec.api not in API_CHOICES:
        raise BenchError(f"--api {spec.api!r}: choose one of {', '.join(API_CHOICES)}")


def run_bench(spec: BenchSpec, out: str | Path, *, progress: bool | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Run one benchmark into out and return its bench.json facts; raise BenchError / WorkloadError / EndpointError on bad input."""
    from servescope.bench.load.client import base_url_of, served_model
    from servescope.bench.load.driver_http import plan_load
    from servescope.bench.load.progress import LiveStats
    from servescope.bench.load.server import copy_engine_records, external_ids_of, wait_for_engine_records
    from servescope.run.manifest import write_manifest
    from servescope.record.recorder import DEFAULT_FLUSH_INTERVAL_S, close_recorder

    _validate(spec)
    out = Path(out)
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
        workload = _load_workload(spec)  # bad input fails before anything is contacted or started
        served = None
        if spec.endpoint is not None:
            served = asyncio.run(served_model(base_url_of(spec.endpoint)))  # EndpointError names the URL
        prompts = _prompts_for(spec, _model_facts(spec, served))
        plan = plan_load(workload, prompts, rate_per_s=spec.rate_per_s, cv=spec.cv, concurrency=spec.concurrency,
                         duration_s=spec.duration_s, time_scale=spec.time_scale, seed=spec.seed,
                         id_prefix=run_id[:12])
        write_json(out / "workload.json", _workload_facts(spec, workload))
        facts["load"] = plan.describe()
        stats.planned = len(plan)
        if served is not None:
            _check_fits(plan, served.get("max_model_len"))
        results = _drive(spec, plan, out, served, stats, facts, progress, echo)
        facts["status"] = "complete"
    except KeyboardInterrupt:
        facts["status"] = "interrupted"
        facts["error"] = "interrupted (Ctrl-C): requests in flight were cancelled and recorded as 'cancelled'"
        echo("servescope: interrupted; keeping what was recorded")
    except Exception as exc:  # recorded in bench.json, then reported by the caller
        facts["status"] = "failed"
        facts["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        close_recorder()
        facts["results"] = _status_counts(stats, results)
        facts["elapsed_s"] = time.monotonic() - started
        write_json(out / "bench.json", facts)  # first: whatever happens next, the run says how it ended
        if spec.server_run is not None and results:
            ok = [r.client_request_id for r in results if r.status == "ok"]
            wait_for_engine_records(spec.server_run, external_ids_of(ok), expected=len(ok))
            time.sleep(1.5 * DEFAULT_FLUSH_INTERVAL_S)  # the steps and worker rows of the window's end
            facts["engine_records"] = copy_engine_records(
                spec.server_run, out, external_ids_of(r.client_request_id for r in results),
                min(r.send_ns for r in results), max(r.end_ns for r in results))
            write_json(out / "bench.json", facts)
        write_manifest(out)
    return facts


def _drive(spec: BenchSpec, plan, out: Path, served: dict | None, stats, facts: dict, progress: bool | None,
           echo: Callable[[str], None]) -> list:
    """Send the plan to the spec's target (endpoint, a server started here, or an in-process engine); return the results."""
    from servescope.bench.load.client import base_url_of, served_model
    from servescope.bench.load.driver_http import drive_http
    from servescope.bench.load.progress import live_progress
    from servescope.bench.load.server import start_server, wait_for_engine_records
    from servescope.record.recorder import DEFAULT_FLUSH_INTERVAL_S

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
            _check_fits(plan, served.get("max_model_len"))
            facts["server"] = {"argv": server.argv, "url": server.url, "started_by_servescope": True}
        facts["endpoint"] = base_url_of(server.url if server is not None else spec.endpoint)
        facts["model"] = spec.model or served.get("id")
        if not facts["model"]:
            raise BenchError(f"{facts['endpoint']} lists no model (transformers serve lists only its hub cache): "
                             "give --model")
        with live_progress(stats, enabled=progress):
            results = asyncio.run(drive_http(facts["endpoint"], plan, out, model=facts["model"],
                                             request_timeout_s=spec.request_timeout_s, stats=stats,
                                             text_prompts=spec.text_prompts,
                                             vllm_extensions=spec.api == "vllm"))
        if server is not None:  # vLLM's shutdown may kill its engine processes: let them write the run first
            wait_for_engine_records(out, {f"cmpl-{r.client_request_id}-0" for r in results if r.status == "ok"})
            time.sleep(1.5 * DEFAULT_FLUSH_INTERVAL_S)  # worker rows: each process writes every interval
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
    errors = [r.error for r in results if r.error and r.status in ("error", "timeout")]
    if errors:
        counts["first_error"] = errors[0]
    return counts


def bench_report(out: str | Path) -> str:
    """Return the end-of-run text: request counts, then client vs engine (or client-only) TTFT and TBT in ms."""
    from servescope.analysis.distributions import summarize
    from servescope.bench.load.client import client_request_metrics, client_vs_engine, client_vs_engine_text
    from servescope.run.directory import read_table

    facts = read_json(Path(out) / "bench.json")
    r = facts.get("results", {})
    lines = [f"servescope bench: {facts['status']}; sent {r.get('sent', 0)}, ok {r.get('ok', 0)}, error "
             f"{r.get('error', 0)}, timeout {r.get('timeout', 0)}, cancelled {r.get('cancelled', 0)}; "
             f"{r.get('output_tokens', 0)} output tokens in {facts.get('elapsed_s', 0):.1f} s"]
    if r.get("first_error"):
        lines.append(f"first error: {r['first_error']}")
    if len(read_table(out, "client_requests")) == 0:
        return "\n".join(lines)
    if len(read_table(out, "request_events")):
        lines.append(client_vs_engine_text(client_vs_engine(out)))
        lines.append(f"next: servescope analyze {out}")
    else:
        metrics = client_request_metrics(out)
        for label, values in (("client TTFT", metrics.ttft_s), ("client TBT/chunk", metrics.all_tbt_per_chunk_s())):
            s = summarize(values)
            cells = ", ".join(f"{k} {s[k] * 1e3:.2f}" for k in ("p50", "p90", "p99") if s[k] is not None)
            lines.append(f"{label} (ms, {s['count']} samples): {cells or '-'}  (no engine records in this run)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- capacity


SLO_TYPES = ("fluidity", "tbt-ttft", "ttft-tpot")


def build_slos(slo_type: str, *, tbt_s: float | None = None, ttft_s: float | None = None,
               tpot_s: float | None = None, percentile: float = 99.0, min_fluidity: float = 0.9) -> list:
    """Return the SLO objects (analysis.slo) of one SLO type; thresholds in seconds."""
    from servescope.analysis.slo import FluiditySLO, LatencySLO

    def need(value, flag):
        if value is None or not value > 0:
            raise BenchError(f"--slo {slo_type} needs {flag} > 0 (seconds)")
        return value

    if slo_type == "fluidity":
        return [FluiditySLO(need(tbt_s, "--tbt"), min_fluidity=min_fluidity, percentile=percentile,
                            ttft_deadline_s=ttft_s)]
    if slo_type == "tbt-ttft":
        return [LatencySLO("tbt", need(tbt_s, "--tbt"), percentile), LatencySLO("ttft", need(ttft_s, "--ttft"), percentile)]
    if slo_type == "ttft-tpot":
        return [LatencySLO("ttft", need(ttft_s, "--ttft"), percentile), LatencySLO("tpot", need(tpot_s, "--tpot"), percentile)]
    raise BenchError(f"--slo is one of {list(SLO_TYPES)}, not {slo_type!r}")


def evaluate_run(run_dir: str | Path, slos: list, *, measure: str = "engine", tbt_convention: str = "per_token") -> dict:
    """Return a run's SLO verdict: pass (bool), per-SLO service-level values (s), goodput (req/s), what was measured."""
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run
    from servescope.analysis.slo import evaluate_slos
    from servescope.bench.load.client import client_request_metrics

    if measure == "engine":
        metrics = compute_request_metrics(load_run(run_dir))
    elif measure == "client":
        metrics = client_request_metrics(run_dir)
    else:
        raise BenchError(f"--measure is 'engine' or 'client', not {measure!r}")
    if len(metrics) == 0:
        return {"pass": False, "measure": measure, "requests": 0, "service_level": {}, "goodput_rps": None,
                "notes": ["no requests recorded"]}
    report = evaluate_slos(metrics, slos, tbt_convention=tbt_convention)
    return {
        "pass": bool(report.service_level_pass),
        "measure": measure,
        "requests": len(metrics),
        "service_level": report.service_level,
        "goodput_rps": None if math.isnan(report.goodput_rps) else report.goodput_rps,
        "notes": report.notes,
    }


def set_aside(run_dir: Path) -> Path | None:
    """Rename an existing run directory to '<name>.stale-<n>' (nothing is deleted); return its new path."""
    if not run_dir.exists():
        return None
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.stale-{n}")
        if not target.exists():
            run_dir.rename(target)
            return target


ProbeRunner = Callable[[float, Path], None]  # (rate req/s, probe run dir) -> records a run there


def probe_dir_name(rate: float) -> str:
    """Return the directory name of the probe at rate (req/s)."""
    return f"rate-{rate:.6g}"


def search_capacity_runs(out: str | Path, run_probe: ProbeRunner, slos: list, *, start_rate: float,
                         load_key: str, measure: str = "engine", tbt_convention: str = "per_token",
                         granularity: float = 0.1, max_probes: int = 12, min_rate: float | None = None) -> dict:
    """Search the highest passing rate (req/s), one run directory per probe under out/probes, reusing finished probes of the same load_key."""
    from servescope.analysis.capacity_search import search_capacity

    out = Path(out)
    probes_dir = out / "probes" / load_key  # another load never meets these runs
    verdicts: dict[float, dict] = {}
    cache: dict[float, bool] = {}
    for probe_json in sorted(probes_dir.glob("*/probe.json")):  # probes of an earlier search: re-judged, not re-run
        probe = read_json(probe_json)
        if probe.get("load_key") == load_key and probe.get("complete"):
            verdict = evaluate_run(probe_json.parent, slos, measure=measure, tbt_convention=tbt_convention)
            verdicts[probe["rate"]] = {**verdict, "run_dir": str(probe_json.parent)}
            cache[probe["rate"]] = verdict["pass"]

    def probe(rate: float) -> bool:
        run_dir = probes_dir / probe_dir_name(rate)
        set_aside(run_dir)  # an unfinished probe of an interrupted search: kept, not mixed into this one
        write_json(run_dir / "probe.json", {"rate": rate, "load_key": load_key, "complete": False})
        run_probe(rate, run_dir)
        write_json(run_dir / "probe.json", {"rate": rate, "load_key": load_key, "complete": True})
        verdict = evaluate_run(run_dir, slos, measure=measure, tbt_convention=tbt_convention)
        verdicts[rate] = {**verdict, "run_dir": str(run_dir)}
        write_json(run_dir / "slo.json", verdicts[rate])
        return verdict["pass"]

    result = search_capacity(probe, start_rate=start_rate, granularity=granularity, max_probes=max_probes,
                             min_rate=min_rate, cache=cache)
    summary = {
        "capacity_rps": result.capacity,
        "lowest_failing_rps": None if math.isinf(result.lowest_failing) else result.lowest_failing,
        "bracket_rps": [result.lower, result.upper],
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "granularity": granularity,
        "start_rate_rps": start_rate,
        "measure": measure,
        "tbt_convention": tbt_convention,
        "slos": [s.name for s in slos],
        "probes": [{"rate": p.rate, "pass": p.passed, "cached": p.cached, **verdicts.get(p.rate, {})}
                   for p in result.history],
    }
    write_json(out / "capacity.json", summary)
    return summary


def capacity_text(summary: dict) -> str:
    """Return the capacity search as a table of probes (in order) and the result."""
    names = summary["slos"]
    header = f"{'#':>3}  {'rate/s':>9}  {'verdict':<7}  {'cached':<6}  " + "  ".join(f"{n:>28}" for n in names)
    lines = [f"capacity search ({summary['measure']}-side metrics, TBT {summary['tbt_convention']})", header]
    for i, p in enumerate(summary["probes"], 1):
        cells = []
        for n in names:
            s = p.get("service_level", {}).get(n)
            value = None if s is None else s["value"]
            cells.append("-" if s is None else f"{'-' if value is None else format(value, '.4g')} / {s['threshold']:.4g}")
        lines.append(f"{i:>3}  {p['rate']:>9.4g}  {'pass' if p['pass'] else 'FAIL':<7}  "
                     f"{'yes' if p['cached'] else 'no':<6}  " + "  ".join(f"{c:>28}" for c in cells))
    low = summary["lowest_failing_rps"]
    lines.append(f"capacity: {summary['capacity_rps']:.4g} req/s (lowest failing: "
                 f"{'none' if low is None else f'{low:.4g}'} req/s; stop: {summary['stop_reason']}; "
                 f"granularity {summary['granularity']:g})")
    lines.append("cells: service-level value / threshold (seconds; fluidity: miss rate at the percentile)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sweep


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """Return {parameter: values} from 'name=v1,v2' items (names as engine args: max_num_seqs or --max-num-seqs)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        parsed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not parsed:
            raise BenchError(f"--grid {item!r}: expected NAME=V1,V2,... e.g. max_num_seqs=8,16")
        if name in grid:
            raise BenchError(f"--grid names {name!r} twice")
        grid[name] = parsed
    if not grid:
        raise BenchError("give at least one --grid NAME=V1,V2")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Return every combination of the grid's values, in order."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def point_engine_args(base: list[str], point: dict[str, str]) -> list[str]:
    """Return base engine args with each point parameter set (as --name-with-dashes VALUE; later flags win)."""
    args = list(base)
    for name, value in point.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


def point_dir_name(index: int, point: dict[str, str]) -> str:
    """Return the run directory name of a sweep point."""
    return f"{index:02d}-" + "-".join(f"{k}={v}" for k, v in point.items())


def check_engine_args(engine_args: list[str]) -> None:
    """Raise BenchError if vLLM's engine-argument parser rejects engine_args."""
    import contextlib
    import io

    from servescope.bench.load.driver_inprocess import async_engine_args
    from servescope.bench.load.server import normalize_engine_args

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            async_engine_args(normalize_engine_args(engine_args))
    except SystemExit:
        raise BenchError(f"vLLM rejects the engine args {shlex.join(engine_args)}: "
                         f"{stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else ''}") from None


def sweep_summary_row(run_dir: str | Path) -> dict:
    """Return one sweep point's headline numbers: client and engine TTFT / TBT percentiles (s), throughput, failures."""
    from servescope.analysis.distributions import summarize
    from servescope.analysis.summary import analyze_run
    from servescope.bench.load.client import client_request_metrics

    facts = read_json(Path(run_dir) / "bench.json")
    client = client_request_metrics(run_dir)
    row = {"status": facts["status"], "results": facts.get("results", {}),
           "client_ttft_s": summarize(client.ttft_s), "client_tbt_per_chunk_s": summarize(client.all_tbt_per_chunk_s())}
    try:
        engine = analyze_run(run_dir)
        row.update(engine_ttft_s=engine["summary"]["ttft_s"], engine_tbt_per_token_s=engine["summary"]["tbt_per_token_s"],
                   output_tokens_per_s=engine["run"]["output_tokens_per_s"])
    except (RunDirError, ValueError):
        pass
    return row


def sweep_text(rows: list[dict]) -> str:
    """Return the sweep as a table: one line per point, times in ms."""
    def ms(stats, key):
        return "-" if not stats or stats.get(key) is None else f"{stats[key] * 1e3:.1f}"

    lines = [f"{'point':<44} {'status':<11} {'ok':>5} {'TTFT p50':>9} {'TTFT p99':>9} {'TBT p50':>8} "
             f"{'TBT p99':>8} {'tok/s':>8}   (client side, ms)"]
    for row in rows:
        tps = row.get("output_tokens_per_s")
        lines.append(f"{row['point_name']:<44} {row['status']:<11} {row['results'].get('ok', 0):>5} "
                     f"{ms(row['client_ttft_s'], 'p50'):>9} {ms(row['client_ttft_s'], 'p99'):>9} "
                     f"{ms(row['client_tbt_per_chunk_s'], 'p50'):>8} {ms(row['client_tbt_per_chunk_s'], 'p99'):>8} "
                     f"{'-' if tps is None else f'{tps:.1f}':>8}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the commands


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.secho(f"servescope: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _env_pairs(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--server-env {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def _engine_args(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text)) if text else ()


def _echo(message: str) -> None:
    typer.echo(message, err=True)


WORKLOAD_HELP = "Workload name (servescope.bench.workloads.catalog) or trace file."
ENDPOINT_HELP = "Base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000."
ENGINE_ARGS_HELP = "vLLM engine arguments, quoted ('--model DIR --load-format dummy' or 'vllm serve DIR ...'): " \
                   "servescope starts a recorded server on 127.0.0.1."


def bench(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to record into (created)."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: mean arrival rate, requests/s."),
    cv: float = typer.Option(1.0, "--cv", help="Coefficient of variation of arrival gaps (1: Poisson; gamma otherwise)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Closed loop: requests kept in flight."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Send no request after this many seconds."),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Requests (presets: sampled, default 1000; traces: the first)."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Trace replay: multiply the trace's gaps by this."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to ask the endpoint for (default: its first)."),
    server_run: Optional[Path] = typer.Option(None, "--server-run", help="Run directory the endpoint's server records into; "
                                              "its records of this run's requests are copied into --out."),
    engine_args: Optional[str] = typer.Option(None, "--engine-args", help=ENGINE_ARGS_HELP),
    in_process: bool = typer.Option(False, "--in-process", help="With --engine-args: drive an AsyncLLM in this process (no HTTP)."),
    spelling: str = typer.Option("module", "--spelling", help="Start the server as 'module' (python -m ...) or 'cli' (vllm serve)."),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", help="KEY=VALUE for the server's environment (repeat)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", help="Cap prompt lengths (tokens)."),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", help="Cap output lengths (tokens)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Model vocabulary size (default: its config.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of lengths (presets), arrivals and prompt ids."),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout", help="Time limit of one request, seconds."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Live progress (default: on a terminal)."),
    text_prompts: bool = typer.Option(False, "--text-prompts", help="Send prompts as text (the synthetic tokenizer's "
                                      "words for the ids; servescope model init dirs); the server's tokenizer adds BOS."),
    api: str = typer.Option("vllm", "--api", help="vllm: token-id prompts with ignore_eos and return_token_ids; openai: "
                            "standard fields only, text prompts (transformers serve; it must stop at max_tokens "
                            "by itself: model_kit.stop_only_at_max_tokens)."),
) -> None:
    """Send a workload to a vLLM or transformers server (or in-process vLLM) and record client and engine into one run."""
    spec = BenchSpec(workload, count, seed, rate, cv, concurrency, duration, time_scale, max_prompt_tokens,
                     max_output_tokens, vocab_size, endpoint, model, None if server_run is None else str(server_run),
                     _engine_args(engine_args), in_process, spelling, _env_pairs(server_env), timeout,
                     text_prompts=text_prompts, api=api)
    try:
        facts = run_bench(spec, out, progress=progress, echo=_echo)
    except (BenchError, WorkloadError, EndpointError, RunDirError, ValueError) as exc:
        _fail(f"{exc} (run directory kept: {out})")
    except Exception as exc:  # ServerError and the like: the run dir is kept too
        _fail(f"{type(exc).__name__}: {exc} (run directory kept: {out})")
    typer.echo(bench_report(out))
    if facts["status"] == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def capacity(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of the search: probes/<load key>/rate-R/ runs, capacity.json."),
    slo: str = typer.Option(..., "--slo", help="fluidity | tbt-ttft | ttft-tpot"),
    tbt: Optional[float] = typer.Option(None, "--tbt", help="TBT bound or fluidity decode deadline D_d, seconds."),
    ttft: Optional[float] = typer.Option(None, "--ttft", help="TTFT bound (fluidity: prefill deadline), seconds."),
    tpot: Optional[float] = typer.Option(None, "--tpot", help="TPOT bound, seconds."),
    percentile: float = typer.Option(99.0, "--percentile", help="Percentile the bounds apply to."),
    min_fluidity: float = typer.Option(0.9, "--min-fluidity", help="Fluidity SLO: minimum fluidity index."),
    tbt_convention: str = typer.Option("per_token", "--tbt-convention", help="per_token | per_chunk"),
    start_rate: float = typer.Option(..., "--start-rate", help="First bracket is [0, 2 x this], requests/s."),
    granularity: float = typer.Option(0.1, "--granularity", help="Stop when the bracket is within this fraction."),
    max_probes: int = typer.Option(12, "--max-probes", help="At most this many probe runs."),
    min_rate: Optional[float] = typer.Option(None, "--min-rate", help="Stop if the capacity is below this, requests/s."),
    count: int = typer.Option(100, "--count", "-n", help="Requests per probe."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Per probe: send no request after this many s."),
    cv: float = typer.Option(1.0, "--cv", help="Coefficient of variation of arrival gaps."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to ask the endpoint for."),
    server_run: Optional[Path] = typer.Option(None, "--server-run", help="Where the endpoint's server records "
                                              "(engine-side metrics); without it, client-side metrics are judged."),
    engine_args: Optional[str] = typer.Option(None, "--engine-args", help=ENGINE_ARGS_HELP),
    spelling: str = typer.Option("module", "--spelling", help="'module' or 'cli'."),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", help="KEY=VALUE for the server (repeat)."),
    measure: Optional[str] = typer.Option(None, "--measure", help="engine | client (default: engine when recorded)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens"),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens"),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size"),
    seed: int = typer.Option(0, "--seed"),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout", help="Time limit of one request, seconds."),
) -> None:
    """Search the highest request rate whose run meets the SLO; every probe is cached as a run."""
    from servescope.bench.load.server import ServerError, start_server

    try:
        slos = build_slos(slo, tbt_s=tbt, ttft_s=ttft, tpot_s=tpot, percentile=percentile, min_fluidity=min_fluidity)
        if tbt_convention not in ("per_token", "per_chunk"):
            raise BenchError("--tbt-convention is per_token or per_chunk")
        if (endpoint is None) == (engine_args is None):
            raise BenchError("give --endpoint URL or --engine-args '...', exactly one")
        if measure is None:
            measure = "client" if endpoint is not None and server_run is None else "engine"
        if measure not in ("engine", "client"):
            raise BenchError(f"--measure is 'engine' or 'client', not {measure!r}")
        if measure == "engine" and endpoint is not None and server_run is None:
            raise BenchError("engine-side metrics of an --endpoint need --server-run DIR (where its server records)")
        _load_workload(BenchSpec(workload, count, seed))  # bad workload: fail before starting anything
    except (BenchError, WorkloadError) as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if engine_args is not None:
            _echo(f"servescope: starting one recorded vLLM server for every probe ({out / 'server' / 'server.log'}) ...")
            server = start_server(list(_engine_args(engine_args)), out / "server", extra_env=dict(_env_pairs(server_env)),
                                  spelling=spelling)
            endpoint, server_run = server.url, out / "server"
        base = BenchSpec(workload, count, seed, None, cv, None, duration, 1.0, max_prompt_tokens, max_output_tokens,
                         vocab_size, endpoint, model, None if server_run is None else str(server_run), (), False,
                         spelling, (), timeout)
        key_spec = replace(base, endpoint=engine_args or endpoint, server_run=None)  # a restarted server is the same target

        def run_probe(rate: float, run_dir: Path) -> None:
            spec = replace(base, rate_per_s=rate, extra={"capacity_probe": {"rate": rate, "search": str(out)}})
            facts = run_bench(spec, run_dir, progress=False, echo=_echo)
            if facts["status"] != "complete":
                raise KeyboardInterrupt
            _echo(f"servescope: probe {rate:.4g} req/s: {facts['results']}")

        summary = search_capacity_runs(out, run_probe, slos, start_rate=start_rate, load_key=key_spec.load_key(),
                                       measure=measure, tbt_convention=tbt_convention, granularity=granularity,
                                       max_probes=max_probes, min_rate=min_rate)
    except KeyboardInterrupt:
        _fail(f"interrupted; finished probes are kept under {out / 'probes'} and reused next time", EXIT_INTERRUPTED)
    except (BenchError, WorkloadError, EndpointError, ServerError, RunDirError, ValueError) as exc:
        _fail(f"{exc} (kept: {out})")
    finally:
        if server is not None:
            server.stop()
    typer.echo(capacity_text(summary))


def sweep(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of the sweep: one run per grid point, sweep.json."),
    engine_args: str = typer.Option(..., "--engine-args", help="Base vLLM engine arguments, quoted."),
    grid: List[str] = typer.Option(..., "--grid", help="NAME=V1,V2 (engine parameter and values; repeat)."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop rate, requests/s."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Closed loop: requests in flight."),
    cv: float = typer.Option(1.0, "--cv"),
    duration: Optional[float] = typer.Option(None, "--duration", help="Per point: send no request after this many s."),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Requests per point."),
    spelling: str = typer.Option("module", "--spelling"),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", help="KEY=VALUE for the server (repeat)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens"),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens"),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size"),
    seed: int = typer.Option(0, "--seed"),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout"),
) -> None:
    """Run one workload on every point of a grid of engine parameters (one recorded server per point)."""
    base_args = list(_engine_args(engine_args))
    try:
        parsed = parse_grid(grid)
        points = grid_points(parsed)
        _load_workload(BenchSpec(workload, count, seed))
        for point in points:
            check_engine_args(point_engine_args(base_args, point))
    except (BenchError, WorkloadError, ValueError) as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for index, point in enumerate(points):
            name = point_dir_name(index, point)
            run_dir = out / name
            spec = BenchSpec(workload, count, seed, rate, cv, concurrency, duration, 1.0, max_prompt_tokens,
                             max_output_tokens, vocab_size, None, None, None,
                             tuple(point_engine_args(base_args, point)), False, spelling, _env_pairs(server_env),
                             timeout, extra={"sweep": {"grid": parsed, "point": point, "index": index,
                                                       "base_engine_args": base_args, "sweep_dir": str(out)}})
            previous = run_dir / "bench.json"
            if previous.exists() and read_json(previous).get("status") == "complete" \
                    and read_json(previous).get("load_key") == spec.load_key():
                _echo(f"servescope: {name}: already complete, reused")
            else:
                stale = set_aside(run_dir)  # an unfinished or different earlier run of this point
                if stale is not None:
                    _echo(f"servescope: {name}: an earlier unfinished run was moved to {stale}")
                _echo(f"servescope: sweep point {index + 1}/{len(points)}: {point}")
                facts = run_bench(spec, run_dir, progress=None, echo=_echo)
                if facts["status"] == "interrupted":
                    raise KeyboardInterrupt
            rows.append({"point_name": name, "point": point, "run_dir": str(run_dir), **sweep_summary_row(run_dir)})
    except KeyboardInterrupt:
        _fail(f"interrupted; finished points are kept under {out} and reused next time", EXIT_INTERRUPTED)
    except (BenchError, WorkloadError, EndpointError, RunDirError, ValueError) as exc:
        _fail(f"{exc} (kept: {out})")
    except Exception as exc:
        _fail(f"{type(exc).__name__}: {exc} (kept: {out})")
    finally:
        write_json(out / "sweep.json", {"grid": parsed, "base_engine_args": base_args, "points": rows})
    typer.echo(sweep_text(rows))


def register(app: typer.Typer) -> None:
    """Add the bench, capacity and sweep commands to the servescope CLI."""
    app.command("bench")(bench)
    app.command("capacity")(capacity)
    app.command("sweep")(sweep)
