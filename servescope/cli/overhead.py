"""The `servescope overhead` command: what tracing costs, the same workload with tracing off and on, alternating."""

from __future__ import annotations

from pathlib import Path

import typer

from servescope.cli.options import json_object, one_of, output_dir, positive


def register(app: typer.Typer) -> None:
    """Add the `overhead` command to the servescope command line."""
    app.command()(overhead)


def overhead(
    model: Path = typer.Option(..., "--model", help="Model directory (servescope model init)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Directory for overhead.json and the traced runs."),
    load: str = typer.Option("offline", "--load", callback=one_of("offline", "served"),
                             help="offline (one batch) or served (Poisson arrivals)."),
    method: str = typer.Option("toggle", "--method", callback=one_of("toggle", "restart"),
                               help="toggle: one engine, tracing switched off/on (offline); restart: an engine per arm."),
    repeats: int = typer.Option(3, "--repeats", callback=positive, help="Repeats of each arm (alternating off, on)."),
    num_requests: int = typer.Option(64, "--num-requests", callback=positive),
    prompt_len: int = typer.Option(256, "--prompt-len", callback=positive),
    output_len: int = typer.Option(64, "--output-len", callback=positive),
    rate: float = typer.Option(4.0, "--rate", callback=positive, help="Requests/s for --load served."),
    engine_args: str = typer.Option("{}", "--engine-args", callback=json_object,
                                    help="JSON object of vLLM engine arguments, e.g. '{\"max_num_seqs\": 8}'."),
) -> None:
    """Measure what tracing costs: the same workload with tracing off and on, alternating."""
    from servescope.overhead.harness import run_overhead

    if load == "served" and method == "toggle":
        method = "restart"
    report = run_overhead(str(model), engine_args=engine_args, load=load, method=method, repeats=repeats,
                          num_requests=num_requests, prompt_len=prompt_len, output_len=output_len, rate=rate,
                          out_dir=out)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Tracing off vs on ({load}, {method}, {repeats} repeats each; medians)")
    for col in ("metric", "off", "on", "change", "off spread"):
        table.add_column(col)
    for k, v in report["change"].items():
        table.add_row(k, f"{v['off_median']:.4g}", f"{v['on_median']:.4g}",
                      f"{100 * (v['relative_change'] or 0):+.2f}%", f"{100 * (v['off_spread'] or 0):.2f}%")
    Console().print(table)
    typer.echo(f"servescope: wrote {out / 'overhead.json'}")
