"""Capacity under SLOs: the highest request rate whose run meets them, every probe a run directory of its own.

``run_capacity`` searches with ``analysis.capacity_search`` (the bracketing search) and runs
each probe as a ``bench`` run under ``OUT/probes/<load key>/rate-R/``; ``search_capacity_runs``
is the search over probe runs (any ``ProbeRunner``, so it is testable without an engine);
finished probes of the same load are re-judged, never re-run, and an unfinished one is set
aside (``rate-R.stale-N``), never mixed in. ``evaluate_run`` judges one run: a probe whose
requests failed beyond the bench threshold (``requests_failed``) fails, whatever its latencies.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Callable

from servescope.bench.run import INTERRUPTED, REQUESTS_FAILED, SERVER_GONE, BenchError, BenchSpec, run_bench, set_aside
from servescope.run.directory import read_json, write_json

MEASURES = ("engine", "client")
TBT_CONVENTIONS = ("per_token", "per_chunk")

ProbeRunner = Callable[[float, Path], None]  # (rate req/s, probe run dir) -> records a run there


def evaluate_run(run_dir: str | Path, slos: list, *, measure: str = "engine", tbt_convention: str = "per_token") -> dict:
    """Return a run's SLO verdict: pass (bool), per-SLO service-level values (s), goodput (req/s), what was measured."""
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.analysis.slo import evaluate_slos
    from servescope.bench.load.client import client_request_metrics
    from servescope.run.data import load_run

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
    verdict = {
        "pass": bool(report.service_level_pass),
        "measure": measure,
        "requests": len(metrics),
        "service_level": report.service_level,
        "goodput_rps": None if math.isnan(report.goodput_rps) else report.goodput_rps,
        "notes": list(report.notes),
    }
    bench = Path(run_dir) / "bench.json"
    facts = read_json(bench) if bench.exists() else {}
    if facts.get("status") == REQUESTS_FAILED:  # the latencies are of the survivors only
        verdict["pass"] = False
        verdict["notes"].append(f"fails: {facts.get('error')}")
    return verdict


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


def run_capacity(base: BenchSpec, out: str | Path, slos: list, *, start_rate: float, measure: str,
                 tbt_convention: str = "per_token", granularity: float = 0.1, max_probes: int = 12,
                 min_rate: float | None = None, echo: Callable[[str], None] = print) -> dict:
    """Search the capacity of base's target (one recorded server for every probe when base has engine args); return the summary."""
    from servescope.bench.load.server import start_server

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key_spec = replace(base, endpoint=shlex.join(base.engine_args) if base.engine_args else base.endpoint,
                       engine_args=(), server_run=None, server_env=())  # a restarted server is the same target
    server = None
    try:
        if base.engine_args:
            echo(f"servescope: starting one recorded vLLM server for every probe ({out / 'server' / 'server.log'}) ...")
            server = start_server(list(base.engine_args), out / "server", extra_env=dict(base.server_env),
                                  spelling=base.spelling)
            base = replace(base, endpoint=server.url, server_run=str(out / "server"), engine_args=(), server_env=())

        def run_probe(rate: float, run_dir: Path) -> None:
            spec = replace(base, rate_per_s=rate, extra={"capacity_probe": {"rate": rate, "search": str(out)}})
            facts = run_bench(spec, run_dir, progress=False, echo=echo)
            if facts["status"] == INTERRUPTED:
                raise KeyboardInterrupt
            if facts["status"] == SERVER_GONE:
                raise BenchError(f"probe at {rate:.4g} req/s: {facts['error']}")
            echo(f"servescope: probe {rate:.4g} req/s: {facts['status']}, {facts['results']}")

        return search_capacity_runs(out, run_probe, slos, start_rate=start_rate, load_key=key_spec.load_key(),
                                    measure=measure, tbt_convention=tbt_convention, granularity=granularity,
                                    max_probes=max_probes, min_rate=min_rate)
    finally:
        if server is not None:
            server.stop()


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
