"""The servescope command line. `servescope --help` lists the commands; docs/cli.md explains them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="servescope",
    help="Measure LLM serving engines from the inside: record every request, token and engine step, "
    "then evaluate them as 'On Evaluating Performance of LLM Inference Systems' asks.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.secho(f"servescope: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to record into (created)."),
) -> None:
    """Run COMMAND (after --) and record every vLLM process it starts into the run directory."""
    command = list(ctx.args)
    if not command:
        _fail("no command given: servescope run --out RUN -- python script.py")
    from servescope.launcher import run_command

    code = run_command(command, out)
    typer.echo(f"servescope: recorded into {out} (command exit code {code}); next: servescope analyze {out}",
               err=True)
    raise typer.Exit(code)


@app.command()
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document {requests, summary}."),
    tbt_slo: Optional[float] = typer.Option(None, "--tbt-slo", help="TBT deadline in seconds (adds fluidity)."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", help="TTFT deadline in seconds for fluidity."),
) -> None:
    """Print the run's per-request metrics and their distributions."""
    from servescope.analysis.summary import analyze_run, summary_text
    from servescope.tracer.rundir import RunDirError

    try:
        result = analyze_run(run_dir, tbt_slo_s=tbt_slo, ttft_slo_s=ttft_slo)
    except RunDirError as exc:
        _fail(str(exc))
    if as_json:
        json.dump(result, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        typer.echo(summary_text(result))


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    otlp: Optional[str] = typer.Option(None, "--otlp", help="OTLP endpoint, e.g. http://127.0.0.1:4318"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="http/protobuf (default) or grpc"),
    perfetto: Optional[Path] = typer.Option(None, "--perfetto", help="Write a Perfetto/Chrome trace JSON file."),
) -> None:
    """Export a finished run as OpenTelemetry spans (OTLP, or OTLP-JSON lines in RUN) or a Perfetto trace."""
    from servescope.tracer.rundir import RunDirError, check_run_dir

    try:
        check_run_dir(run_dir)
        if perfetto is not None:
            from servescope.analysis.perfetto import write_perfetto_trace

            n = write_perfetto_trace(run_dir, perfetto)
            typer.echo(f"servescope: wrote {n} trace events to {perfetto} (open it at ui.perfetto.dev)")
        if perfetto is None or otlp is not None:
            from servescope.tracer.otel_export import export_run

            n = export_run(run_dir, endpoint=otlp, protocol=protocol)
            where = otlp or str(Path(run_dir) / "otlp" / "spans.jsonl")
            typer.echo(f"servescope: exported {n} spans to {where}")
    except RunDirError as exc:
        _fail(str(exc))


def main() -> None:
    """Entry point of the `servescope` console script."""
    app()


if __name__ == "__main__":
    main()
