"""The servescope command line: the app, its global options, and every command module registered explicitly.

Each command group is a module of this package with ``register(app)``; its commands import what
they need (vLLM, matplotlib, OpenTelemetry) when they run, so every command is always listed and
one whose package is missing says what to install. The app's group runs every command inside
the CLI-wide error handler (errors.py), however it is invoked: the console script,
``python -m servescope``, or a test's CliRunner. docs/cli.md explains each command.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from servescope.cli import analysis, bench, demo, export, model, overhead, record, report
from servescope.cli.errors import DEBUG_ENV, run_cli, set_debug

COMMAND_MODULES = (record, analysis, report, export, bench, model, overhead, demo)


class ServescopeGroup(TyperGroup):
    """The root command: parses and runs a command, turning every failure into one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = run_cli(lambda: super(ServescopeGroup, self).main(
            args=args, prog_name=prog_name or "servescope", complete_var=complete_var, standalone_mode=False, **extra))
        if standalone_mode:
            sys.stdout.flush()
            sys.exit(code)
        return code


app = typer.Typer(
    name="servescope",
    cls=ServescopeGroup,
    help="Measure LLM serving engines from the inside: record every request, token and engine step, "
    "then evaluate them as 'On Evaluating Performance of LLM Inference Systems' asks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def global_options(
    debug: bool = typer.Option(False, "--debug", help=f"On a failure, print the traceback instead of one line "
                                                      f"(also {DEBUG_ENV}=1)."),
) -> None:
    """Measure LLM serving engines from the inside."""
    set_debug(debug)


for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Entry point of the `servescope` console script and `python -m servescope`: run the CLI, exit with its code."""
    app()
