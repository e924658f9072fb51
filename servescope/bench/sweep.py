"""A sweep: the same load on every point of a grid of engine parameters, one recorded server per point.

So a baseline is tuned as carefully as the treatment. ``parse_grid`` / ``grid_points`` /
``point_engine_args`` turn ``--grid NAME=V1,V2`` items into engine arguments; ``run_sweep``
runs one ``bench`` per point into ``OUT/<index>-<name=value...>/`` (a finished point of the
same load is reused, an unfinished one set aside), writes ``OUT/sweep.json`` and returns one
summary row per point; ``sweep_text`` prints them.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Callable

from servescope.bench.run import COMPLETE, INTERRUPTED, BenchError, BenchSpec, run_bench, set_aside
from servescope.run.directory import RunDirError, read_json, write_json


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


def run_sweep(base: BenchSpec, grid: dict[str, list[str]], out: str | Path, *,
              echo: Callable[[str], None] = print) -> list[dict]:
    """Run base's load with base.engine_args plus each grid point into out/<point>/; return one summary row per point."""
    out = Path(out)
    base_args = list(base.engine_args)
    points = grid_points(grid)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for index, point in enumerate(points):
            name = point_dir_name(index, point)
            run_dir = out / name
            spec = replace(base, engine_args=tuple(point_engine_args(base_args, point)),
                           extra={"sweep": {"grid": grid, "point": point, "index": index,
                                            "base_engine_args": base_args, "sweep_dir": str(out)}})
            previous = run_dir / "bench.json"
            if previous.exists() and read_json(previous).get("status") == COMPLETE \
                    and read_json(previous).get("load_key") == spec.load_key():
                echo(f"servescope: {name}: already complete, reused")
            else:
                stale = set_aside(run_dir)  # an unfinished or different earlier run of this point
                if stale is not None:
                    echo(f"servescope: {name}: an earlier run was moved to {stale}")
                echo(f"servescope: sweep point {index + 1}/{len(points)}: {point}")
                facts = run_bench(spec, run_dir, progress=None, echo=echo)
                if facts["status"] == INTERRUPTED:
                    raise KeyboardInterrupt
            rows.append({"point_name": name, "point": point, "run_dir": str(run_dir), **sweep_summary_row(run_dir)})
    finally:
        write_json(out / "sweep.json", {"grid": grid, "base_engine_args": base_args, "points": rows})
    return rows


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

    lines = [f"{'point':<44} {'status':<15} {'ok':>5} {'TTFT p50':>9} {'TTFT p99':>9} {'TBT p50':>8} "
             f"{'TBT p99':>8} {'tok/s':>8}   (client side, ms)"]
    for row in rows:
        tps = row.get("output_tokens_per_s")
        lines.append(f"{row['point_name']:<44} {row['status']:<15} {row['results'].get('ok', 0):>5} "
                     f"{ms(row['client_ttft_s'], 'p50'):>9} {ms(row['client_ttft_s'], 'p99'):>9} "
                     f"{ms(row['client_tbt_per_chunk_s'], 'p50'):>8} {ms(row['client_tbt_per_chunk_s'], 'p99'):>8} "
                     f"{'-' if tps is None else f'{tps:.1f}':>8}")
    return "\n".join(lines)
