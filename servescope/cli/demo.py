"""The `servescope demo` command: the main job, end to end on one machine (servescope/demo.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from servescope.cli.options import output_dir, positive


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the servescope command line."""
    app.command()(demo)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", callback=output_dir,
                             help="Run directory to record into (created; it must not hold a bench run yet)."),
    requests: int = typer.Option(200, "--requests", callback=positive, help="Requests from the start of the trace."),
    rate: float = typer.Option(3.0, "--rate", callback=positive,
                               help="Replay rate, requests/s (the trace's gaps are scaled)."),
    tbt_slo: float = typer.Option(0.1, "--tbt-slo", callback=positive, help="TBT deadline for the fluidity index, seconds."),
) -> None:
    """The main job: replay the Azure 2023 conversation trace against vLLM (CPU build, tiny dummy model),
    record it, analyse it, audit it and write the report."""
    from servescope.demo import run_demo

    run_demo(out, requests=requests, rate_per_s=rate, tbt_slo_s=tbt_slo, echo=typer.echo)
