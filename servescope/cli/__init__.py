"""The servescope command line (`servescope --help`); docs/cli.md explains each command."""

from servescope.cli.main import main

__all__ = ["main"]
