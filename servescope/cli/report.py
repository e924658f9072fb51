"""The `servescope report` command: HTML + PNG of one or more runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from servescope.cli.options import output_dir, positive
from servescope.cli.run_warnings import STRICT_HELP, echo_run_warnings


def register(app: typer.Typer) -> None:
    """Add the `report` command to the servescope command line."""
    app.command()(report)


def report(
    run_dirs: List[Path] = typer.Argument(..., metavar="RUN...",
                                          help="One or more run directories (overlaid, one color each)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Directory to write index.html and figures/*.png into."),
    tbt_slo: Optional[float] = typer.Option(None, "--tbt-slo", callback=positive,
                                            help="TBT SLO in seconds: adds the fluidity index and is the "
                                                 "stall threshold unless --stall-threshold is given."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", callback=positive,
                                             help="TTFT SLO in seconds (the fluidity index's first-token "
                                                  "deadline; needs --tbt-slo)."),
    stall_threshold: Optional[float] = typer.Option(None, "--stall-threshold", callback=positive,
                                                    help="A stall is a gap above this many seconds."),
    stall_multiple: Optional[float] = typer.Option(None, "--stall-multiple", callback=positive,
                                                   help="A stall is a gap above this multiple of the "
                                                        "request's median gap (default 3 without an SLO)."),
    include_request_ids: bool = typer.Option(False, "--include-request-ids",
                                             help="Name requests by their ids (they carry the client's "
                                                  "X-Request-Id) instead of their position in the run."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Write an HTML report (figures embedded, also as PNG files) of one or more runs."""
    from servescope.report.build import write_report

    run_warnings: dict[str, list[str]] = {}
    index = write_report(run_dirs, out, tbt_slo_s=tbt_slo, ttft_slo_s=ttft_slo,
                         stall_threshold_s=stall_threshold, stall_median_multiple=stall_multiple,
                         include_request_ids=include_request_ids, strict=strict, run_warnings=run_warnings)
    echo_run_warnings(run_warnings)
    typer.echo(f"servescope: wrote {index} (open it in a browser; figures also in {index.parent / 'figures'})")
