"""Option checks that run while the command line is parsed, so a bad value stops a command before any work.

Each is a click callback: ``typer.Option(..., callback=positive)``. A bad value raises
typer.BadParameter, which the CLI-wide handler (errors.py) prints as one line naming the option.
``NUMERIC_CHECKS`` lists them; tests/test_cli_errors.py checks that every numeric option of every
command has one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import typer


def _number_check(test, requirement: str):
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and not test(v):
                raise typer.BadParameter(f"{v!r} is not {requirement}", ctx=ctx, param=param)
        return value

    check.requirement = requirement
    return check


positive = _number_check(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative = _number_check(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = _number_check(lambda v: math.isfinite(v) and 0 <= v <= 1, "a fraction in [0, 1]")
percentile = _number_check(lambda v: math.isfinite(v) and 0 < v <= 100, "a percentile in (0, 100]")
any_finite = _number_check(math.isfinite, "a finite number")
at_least_two = _number_check(lambda v: math.isfinite(v) and v >= 2, "a number >= 2")
NUMERIC_CHECKS = (positive, non_negative, fraction, percentile, any_finite, at_least_two)


def engine_args(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> tuple[str, ...] | None:
    """Return the engine arguments split as a shell would; refuse an unterminated quote."""
    if value is None:
        return None
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} does not split into arguments ({exc})", ctx=ctx, param=param)


def json_object(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> dict | None:
    """Return the option's JSON object; refuse anything else (a list, a number, broken JSON)."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{value!r} is not JSON ({exc.msg} at character {exc.pos})", ctx=ctx, param=param)
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"{value!r} is not a JSON object {{\"name\": value, ...}}", ctx=ctx, param=param)
    return parsed


def environment_variables(ctx: typer.Context, param: typer.CallbackParam, value: list[str] | None) -> dict[str, str]:
    """Return NAME=VALUE items as {NAME: VALUE}; refuse an item without '=' or with a name a shell could not set."""
    variables = {}
    for item in value or ():
        name, sep, text = item.partition("=")
        if not sep or not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE (NAME: letters, digits, _)", ctx=ctx, param=param)
        variables[name] = text
    return variables


def _writable_place(path: Path) -> str | None:
    """Return why nothing can be created at path (a parent is a file, or unwritable), or None."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def output_dir(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Return a directory to write into: an existing writable directory, or one that can be created."""
    if value is None:
        return None
    if value.exists():
        if not value.is_dir():
            raise typer.BadParameter(f"{value} exists and is not a directory", ctx=ctx, param=param)
        if not os.access(value, os.W_OK | os.X_OK):
            raise typer.BadParameter(f"{value} is not writable", ctx=ctx, param=param)
        return value
    why = _writable_place(value)
    if why is not None:
        raise typer.BadParameter(f"cannot create {value}: {why}", ctx=ctx, param=param)
    return value


def output_file(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Return a file to write: not a directory, in a directory that exists or can be created, writable."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory, not a file", ctx=ctx, param=param)
    if value.exists() and not os.access(value, os.W_OK):
        raise typer.BadParameter(f"{value} is not writable", ctx=ctx, param=param)
    why = _writable_place(value)
    if why is not None:
        raise typer.BadParameter(f"cannot write {value}: {why}", ctx=ctx, param=param)
    return value


def key_value_pairs(ctx: typer.Context, param: typer.CallbackParam, value) -> tuple[tuple[str, str], ...]:
    """Return KEY=VALUE items as pairs; refuse an item without '=' or without a key."""
    pairs = []
    for item in value or ():
        key, sep, rest = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", ctx=ctx, param=param)
        pairs.append((key, rest))
    return tuple(pairs)


def one_of(*choices: str):
    """Return a check that the value is one of choices (None passes)."""
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", ctx=ctx, param=param)
        return value

    return check
