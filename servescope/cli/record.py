"""Recording commands: `servescope run` (record every vLLM process a command starts) and `split` (a phased run into runs)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from servescope.cli.errors import CommandError
from servescope.cli.options import output_dir


def register(app: typer.Typer) -> None:
    """Add `run` and `split` to the servescope command line."""
    app.command(context_settings={"allow_interspersed_args": False})(run)
    app.command()(split)


def recording_parts(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Check a --parts list (run.config.parse_parts) while the command line is parsed."""
    if value is None:
        return None
    from servescope.run.config import ConfigError, parse_parts

    try:
        parse_parts(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx, param=param)
    return value


PARTS_HELP = ("Recording parts, a comma list: default, all, none, or frontend, scheduler, tokens, regions, gpu_events, "
              "nvml, thread, gpu_stamps, collectives; -NAME removes one (default,-nvml). docs/overhead.md says what each costs.")


def run(
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir, help="Run directory to record into (created)."),
    parts: Optional[str] = typer.Option(None, "--parts", callback=recording_parts,
                                        help=PARTS_HELP + " Not given: default, plus what SERVESCOPE_THREAD_USAGE=1 / "
                                                          "SERVESCOPE_GPU_STAMPS=1 / SERVESCOPE_NVML_INTERVAL_S=0 say."),
    self_timing: bool = typer.Option(False, "--self-timing",
                                     help="Diagnostic: charge each hook's own host time to it (hook_cost per process "
                                          "in the manifest); adds two clock reads per hook call."),
    export_spans: bool = typer.Option(True, "--export/--no-export",
                                      help="Afterwards, export OpenTelemetry spans (OTEL_EXPORTER_OTLP_* endpoint, "
                                           "else OTLP-JSON lines in RUN/otlp/)."),
    command: Optional[List[str]] = typer.Argument(None, metavar="[--] COMMAND...",
                                                  help="The command to run; options after its first word are its own."),
) -> None:
    """Run COMMAND (after --) and record every vLLM process it starts into the run directory."""
    if not command:
        raise CommandError("no command given: servescope run --out RUN -- python script.py")
    from servescope.record.launcher import run_command
    from servescope.run.config import Config

    # options not given (None, False) leave the single SERVESCOPE_* variables to the configuration (docs/cli.md)
    config = Config.from_options(str(out.absolute()), parts=parts, **({"self_timing": True} if self_timing else {}))
    code = run_command(list(command), config)
    if export_spans:
        _export_spans_of(out)
    typer.echo(f"servescope: recorded into {out} (command exit code {code}); next: servescope analyze {out}", err=True)
    raise typer.Exit(code)


def _export_spans_of(run_dir: Path) -> None:
    """Export the run's spans (OTLP endpoint from the environment, else OTLP-JSON lines); warn on failure."""
    try:
        from servescope.export.otel_export import export_run

        if any((run_dir / "tables").glob("*/*.parquet")):
            export_run(run_dir)
    except Exception as exc:  # the run is recorded; exporting it can be repeated with `servescope export`
        typer.echo(f"servescope: spans not exported ({exc}); retry with: servescope export {run_dir}", err=True)


def split(
    run_dir: Path = typer.Argument(..., help="A run directory whose driver recorded phases (RUN/phases.json)."),
    out: Optional[Path] = typer.Option(None, "--out", callback=output_dir,
                                       help="Where the phase runs go (default RUN/phases/)."),
) -> None:
    """Cut a run recorded in phases (a warm-up, several loads on one engine) into one run directory per phase."""
    from servescope.run.phases import split_run

    for name, path in split_run(run_dir, out).items():
        typer.echo(f"{name}: {path}")
