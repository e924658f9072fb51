"""The `servescope export` command: a finished run as OpenTelemetry spans (OTLP or OTLP-JSON lines) or a Perfetto trace."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from servescope.cli.options import one_of, output_file
from servescope.cli.run_warnings import STRICT_HELP, echo_run_warnings


def register(app: typer.Typer) -> None:
    """Add the `export` command to the servescope command line."""
    app.command()(export)


def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    otlp: Optional[str] = typer.Option(None, "--otlp", help="OTLP endpoint, e.g. http://127.0.0.1:4318"),
    protocol: Optional[str] = typer.Option(None, "--protocol", callback=one_of("http/protobuf", "grpc"),
                                           help="http/protobuf (default) or grpc"),
    perfetto: Optional[Path] = typer.Option(None, "--perfetto", callback=output_file,
                                            help="Write a Perfetto/Chrome trace JSON file."),
    include_request_ids: bool = typer.Option(False, "--include-request-ids",
                                             help="Put request ids in the spans / trace (they carry the client's "
                                                  "X-Request-Id; left out by default)."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Export a finished run as OpenTelemetry spans (OTLP, or OTLP-JSON lines in RUN) or a Perfetto trace."""
    from servescope.run.directory import check_run_dir

    check_run_dir(run_dir)
    warnings: list[str] = []
    try:
        if perfetto is not None:
            from servescope.export.perfetto import write_perfetto_trace

            n = write_perfetto_trace(run_dir, perfetto, include_request_ids=include_request_ids, strict=strict,
                                     warnings=warnings)
            typer.echo(f"servescope: wrote {n} trace events to {perfetto} (open it at ui.perfetto.dev)")
        if perfetto is None or otlp is not None:
            from servescope.export.otel_export import export_run

            n = export_run(run_dir, endpoint=otlp, protocol=protocol, include_request_ids=include_request_ids,
                           strict=strict, warnings=warnings)
            where = otlp or str(Path(run_dir) / "otlp" / "spans.jsonl")
            typer.echo(f"servescope: exported {n} spans to {where}")
    finally:
        echo_run_warnings(warnings)
