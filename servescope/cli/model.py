"""The `servescope model` commands: dummy-weight model directories for engines without a model hub."""

from __future__ import annotations

from pathlib import Path

import typer

from servescope.cli.options import output_dir


def register(app: typer.Typer) -> None:
    """Add `model init` to the servescope command line."""
    model_app = typer.Typer(help="Dummy-weight models for engines without a model hub.", no_args_is_help=True)
    model_app.command("init")(init)
    app.add_typer(model_app, name="model")


def init(
    directory: Path = typer.Argument(..., callback=output_dir, help="Directory to write (config.json + tokenizer)."),
    arch: str = typer.Option("tiny", "--arch", help="tiny | llama3-8b | llama2-7b | olmoe-1b-7b | llama3-1b"),
    no_tokenizer: bool = typer.Option(False, "--no-tokenizer", help="Write config.json only."),
) -> None:
    """Write a model directory that vLLM serves with --load-format dummy, no hub needed."""
    from servescope.bench.model_kit import ARCHS, init_model_dir

    if arch not in ARCHS:
        raise typer.BadParameter(f"{arch!r} is not one of {', '.join(ARCHS)}", param_hint="'--arch'")
    path = init_model_dir(directory, arch, with_tokenizer=not no_tokenizer)
    typer.echo(f"servescope: wrote {arch} to {path} (serve it with --load-format dummy)")
