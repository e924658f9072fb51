"""Problems found reading a run (RunData.warnings), printed as the commands print them: one line each, on stderr."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import typer

STRICT_HELP = "Treat every problem found reading a run (missing, changed, duplicated, foreign or unlisted parts, " \
              "recorder errors, an engine that never ran) as an error: exit 2."


def echo_run_warnings(warnings: Iterable[str] | Mapping[str, Iterable[str]]) -> None:
    """Print each warning as one 'servescope: warning: ...' line on stderr (a mapping: every run's, in order)."""
    messages = [m for ms in warnings.values() for m in ms] if isinstance(warnings, Mapping) else list(warnings)
    for message in dict.fromkeys(messages):
        typer.secho(f"servescope: warning: {message}", fg=typer.colors.YELLOW, err=True)
