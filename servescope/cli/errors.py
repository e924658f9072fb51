"""The CLI-wide error handler: every failure is one line `servescope: ...`, never a traceback (unless --debug).

Exit codes: 0 done; 1 the command ran but its result is not sound (a bench whose requests
failed or whose server went away) or servescope hit an internal error; 2 a failure the user can
fix (an option, a file, a run directory, an endpoint, a missing package); 130 interrupted.
``--debug`` (a global option) or ``SERVESCOPE_DEBUG=1`` lets the exception and its traceback
through instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

import typer

# the command-line parser's exceptions (click's, or those of the copy of click that newer typer carries)
_parser_errors = importlib.import_module(typer.BadParameter.__module__)
ParserError = _parser_errors.ClickException
NoArgsIsHelpError = getattr(_parser_errors, "NoArgsIsHelpError", ())

EXIT_UNSOUND = 1
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SERVESCOPE_DEBUG"

# a missing module -> what to install (the first dotted part decides)
INSTALL_HINT = {
    "vllm": "vllm (the engine; see docs/install.md)",
    "matplotlib": "matplotlib",
    "opentelemetry": "opentelemetry-sdk opentelemetry-exporter-otlp",
    "google": "protobuf",
    "pynvml": "nvidia-ml-py (servescope[gpu])",
    "transformers": "transformers",
    "torch": "torch",
}


class CommandError(Exception):
    """A failure a command reports as it is: the message (one line) and the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


_debug = False


def set_debug(enabled: bool) -> None:
    """Let exceptions through with their traceback (the global --debug option)."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    """Return whether --debug or SERVESCOPE_DEBUG=1 asked for tracebacks."""
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(message: str) -> str:
    """Return the first line of message (a server's log tail and the like stay in their files)."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


USER_ERRORS = (  # (module, class): failures a user causes (bad input, a damaged run, an unreachable endpoint)
    ("servescope.run.directory", "RunDirError"),
    ("servescope.bench.workloads.workload", "WorkloadError"),
    ("servescope.bench.load.client", "EndpointError"),
    ("servescope.bench.load.server", "ServerError"),
    ("servescope.export.otel_export", "OtlpExportError"),
)


def _is_user_error(exc: BaseException) -> bool:
    """Return whether exc is a failure the user can fix (ValueError, or one of USER_ERRORS)."""
    if isinstance(exc, ValueError):
        return True
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)  # a module never imported raised nothing
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def _os_error_text(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


def describe(exc: BaseException) -> tuple[str, int]:
    """Return (the one-line message, the exit code) for an exception that ended a command."""
    if isinstance(exc, CommandError):
        return one_line(str(exc)), exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] != "servescope":
        top = exc.name.split(".")[0]
        return f"this command needs the Python package {top!r}: pip install {INSTALL_HINT.get(top, top)}", EXIT_USAGE
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})", EXIT_USAGE
    if isinstance(exc, OSError):
        return _os_error_text(exc), EXIT_USAGE
    if _is_user_error(exc):
        return one_line(str(exc)) or type(exc).__name__, EXIT_USAGE
    return (f"internal error: {type(exc).__name__}: {one_line(str(exc))} (a bug in servescope: rerun with "
            f"--debug for the traceback, and report it)", EXIT_INTERNAL)


def usage_line(exc: Exception) -> str:
    """Return a click usage error as one line naming the command and the option."""
    command = ""
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path:
        command = ctx.command_path.replace(ctx.find_root().info_name or "", "").strip()
    prefix = f"{command}: " if command else ""
    hint = f" (see servescope {command} --help)" if command else " (see servescope --help)"
    return f"{prefix}{one_line(exc.format_message())}{hint}"


def run_cli(invoke: Callable[[], object]) -> int:
    """Run invoke (the command line, parsed with standalone_mode=False); return its exit code, any failure one line on stderr."""
    set_debug(False)  # until the global --debug option is parsed
    try:
        result = invoke()
        return result if isinstance(result, int) else 0
    except NoArgsIsHelpError:  # the help was printed
        return 0
    except ParserError as exc:
        if debug_enabled():
            raise
        _say(usage_line(exc))
        return EXIT_USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else _said(str(exc.code), EXIT_USAGE)
    except BaseException as exc:  # noqa: BLE001 - the one place every failure is turned into a line
        if debug_enabled():
            raise
        message, code = describe(exc)
        _say(message)
        return code


def _say(message: str) -> None:
    typer.secho(f"servescope: {message}", fg="red", err=True)


def _said(message: str, code: int) -> int:
    if message.startswith("servescope"):  # already says who speaks (servescope run: ...)
        typer.secho(one_line(message), fg="red", err=True)
    else:
        _say(one_line(message))
    return code
