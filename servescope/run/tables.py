"""Reading one table of a run back: its checked parts and the rows of spools not compacted yet.

``read_table(RUN, table)`` is what every reader that needs a single table calls (``run/data.py``'s
``load_run`` reads them all at once, with the same checks); ``report_warnings`` hands the problems a
read found to the caller's list, or to the "servescope" logger.
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa

from servescope.run.directory import RunDirError
from servescope.run.integrity import Problems, RunParts
from servescope.run.manifest import read_manifest

logger = logging.getLogger("servescope")


def read_table(run_dir: str | os.PathLike, table: str, *, dictionary_column: str | None = None,
               strict: bool = False, warnings: list[str] | None = None) -> pa.Table:
    """Return every part of one table that passes its checks, and the rows of spools not compacted yet.

    Each part is checked against the run's part index (run/integrity.py); a problem is one line
    appended to warnings (logged on the "servescope" logger when warnings is None), or, with
    strict, a RunDirError. dictionary_column: read this string column dictionary-encoded
    (Parquet's dictionary pages become Arrow dictionaries, no string materialised per row: what
    keeps per-token tables small). An empty table when nothing was recorded.
    """
    problems = Problems(strict, warnings)
    try:
        manifest = read_manifest(run_dir)
    except RunDirError as exc:
        problems.add(str(exc))
        manifest = {}
    data = RunParts(run_dir, manifest=manifest, problems=problems).read(table, dictionary_column=dictionary_column).data
    if warnings is None:
        report_warnings(problems.messages, None)
    return data


def report_warnings(messages: list[str], into: list[str] | None) -> None:
    """Append a read's warnings to into, or, when into is None, log each on the "servescope" logger; returns None."""
    if into is not None:
        into.extend(m for m in messages if m not in into)
        return
    for message in messages:
        logger.warning("servescope: warning: %s", message)
