"""The per-process recorder: every append goes straight into this process's spool.

``Recorder.append(table, row)`` encodes one row (a tuple in the table's column order, e.g. a
``servescope.run.rows`` NamedTuple) with ``marshal`` and copies it into the process's memory-mapped
spool (``spool_writer.py``): from then on it survives the process being killed. The hot paths
record whole batches in one record: ``append_emissions`` (every request's tokens of one engine
step) and ``append_events`` (one event for many requests). No thread, no Parquet, no GIL held
for encoding inside the engine: the spool is compacted into Parquet parts outside it
(``servescope.run.compact``), and readers decode spools not compacted yet.

Never raises into the engine: a record that cannot be stored is counted as dropped; an exception
inside a hook is counted with ``error()`` (the first of each site is logged). Both counts live in
the spool's header, where they survive a kill.

Fork: the child gets a fresh recorder with its own spool (register_at_fork); spawn children build
theirs through the engine's plugin. Exit: atexit (spawn, main process) and a multiprocessing
finalizer (forked children, which leave through os._exit) mark the spool closed cleanly: a spool
never closed is how the manifest tells a killed process.
"""

from __future__ import annotations

import atexit
import logging
import marshal
import multiprocessing
import multiprocessing.util
import os
import sys
from pathlib import Path

from servescope import __version__
from servescope.record.spool_writer import SpoolWriter
from servescope.run.clock import clock_anchor
from servescope.run.config import Config
from servescope.run.directory import ensure_run_id, read_json, write_json
from servescope.run.spool import (EMISSIONS, EMISSIONS_SAME_IDS, EVENTS, REGION, REGION_GPU, ROW, TABLE_INDEX,
                                  spool_dir)

logger = logging.getLogger("servescope")

_dumps = marshal.dumps


class Recorder:
    """Records rows of every table of run/schema.py into this process's spool."""

    def __init__(self, config: Config | str | os.PathLike, *, role: str | None = None) -> None:
        self.config = config if isinstance(config, Config) else Config.from_options(str(config), environ={})
        self.run_dir = Path(self.config.run_dir)
        self.run_id = ensure_run_id(self.run_dir)
        self._role_override = role
        self.before_close: list = []  # callables run as the recorder closes (the self-timing ledger's snapshot)
        self.when_idle: list = []  # callables an engine hook runs when the engine has no work left (same)
        self._closed = False
        self._exit_hooks_registered = False
        self._start_deferred = False
        self._start_process()
        if self.config.inject_faults:
            self.append = self.append_events = self.append_emissions = self._append_raising  # type: ignore[method-assign]
            self.append_region = self.resolve_region = self._append_raising  # type: ignore[method-assign]

    # ---- hot path -------------------------------------------------------------------------
    def append(self, table: str, row: tuple) -> None:
        """Record one row (a tuple in the table's column order)."""
        self._write(_dumps((ROW, TABLE_INDEX[table], tuple(row))), 1)

    def append_events(self, event: str, time_ns: int, step_id: int | None, request_ids: list) -> None:
        """Record the same request event (no counts) for many requests at once."""
        if request_ids:
            self._write(_dumps((EVENTS, event, time_ns, step_id, request_ids)), len(request_ids))

    def append_emissions(self, step_id: int | None, time_ns: int, request_ids: list, counts: list,
                         drafted: list | None = None, accepted: list | None = None) -> None:
        """Record one engine step's token emissions: counts[i] tokens for request_ids[i] (0: none).

        When request_ids equal the previous call's (a decode batch from step to step), they are not written again."""
        if request_ids == self._last_emission_ids:
            self._write(_dumps((EMISSIONS_SAME_IDS, step_id, time_ns, counts, drafted, accepted)), len(request_ids))
        elif self._write(_dumps((EMISSIONS, step_id, time_ns, request_ids, counts, drafted, accepted)), len(request_ids)):
            self._last_emission_ids = list(request_ids)  # a copy: a caller may reuse its list

    def append_region(self, seq: int, row: tuple) -> None:
        """Record a worker region whose GPU time will follow in resolve_region(seq, ...)."""
        self._write(_dumps((REGION, seq, tuple(row))), 1)

    def resolve_region(self, seq: int, gpu_ns, gpu_start_ns, gpu_end_ns) -> None:
        """Record the GPU time of the region appended with seq."""
        self._write(_dumps((REGION_GPU, seq, gpu_ns, gpu_start_ns, gpu_end_ns)), 0)

    def append_record(self, record: tuple) -> None:
        """Record one spool record as it is (run/spool.py's kinds; the self-timing ledger uses it)."""
        self._write(_dumps(record), 0)

    def set_steps_held(self, steps: int) -> None:
        """Say in the spool's header how many engine steps are held, not written yet (a kill loses them)."""
        spool = self._spool
        if spool is not None:
            spool.set_steps_held(steps)

    def idle(self) -> None:
        """The engine has no work left (an engine's hook says so): run the when_idle callbacks (never raises)."""
        for hook in self.when_idle:
            try:
                hook()
            except Exception:
                pass

    def _append_raising(self, *args, **kwargs) -> None:
        raise RuntimeError("servescope fault injection (SERVESCOPE_INJECT_FAULTS) on an append")

    def error(self, where: str, exc: BaseException) -> None:
        """Count an exception raised inside servescope; log the first one of each site."""
        self.internal_errors += 1
        spool = self._spool
        if spool is not None:
            spool.count_error()
        if where not in self._error_sites:
            self._error_sites.add(where)
            logger.warning("servescope: internal error in %s (counted, the engine unaffected): %r", where, exc)

    # ---- lifecycle --------------------------------------------------------------------------
    @property
    def rows_dropped(self) -> int:
        """Rows not recorded in this process so far."""
        return self._spool.rows_dropped if self._spool is not None else 0

    def close(self) -> None:
        """Mark this process's spool closed cleanly and write the process record (idempotent)."""
        if self._closed or self.pid != os.getpid():
            return
        for hook in self.before_close:
            try:
                hook()
            except Exception:
                pass
        self._closed = True
        if self._spool is not None:
            self._spool.close()
        self._write_process_record()

    @property
    def closed(self) -> bool:
        return self._closed

    def after_fork_in_child(self) -> None:
        """Leave the parent's spool untouched; this (forked) process starts its own at its first row.

        Not at once: multiprocessing names a forked child (EngineCore, VllmWorker-0) after the fork
        handlers run, and the role is taken from that name when the spool is created."""
        if self._spool is not None:
            self._spool.abandon()
        self._spool = None
        self._last_emission_ids = None  # the parent's: a record in this spool must not refer to them
        self._closed = False
        self._start_deferred = True

    # ---- internals --------------------------------------------------------------------------
    def _write(self, payload: bytes, rows: int) -> bool:
        """Append one record to the spool; return whether it was stored."""
        spool = self._spool
        if spool is None:
            if self._start_deferred:  # a forked child's first row: its name is known by now
                self._start_deferred = False
                self._start_process()
                return self._write(payload, rows)
            self._rows_lost_without_spool += rows
            return False
        return spool.write(payload, rows)

    def _start_process(self) -> None:
        self.pid = os.getpid()
        self.role = self._role_override or _role()
        self.internal_errors = 0
        self._error_sites: set[str] = set()
        self._rows_lost_without_spool = 0
        self._last_emission_ids = None  # request ids of the last EMISSIONS record stored in this spool
        self._anchor = clock_anchor()
        try:
            self._spool: SpoolWriter | None = SpoolWriter(spool_dir(self.run_dir), self.role,
                                                          segment_bytes=self.config.segment_bytes)
        except OSError as exc:
            self._spool = None
            logger.warning("servescope: cannot create the spool in %s (%r); this process records nothing",
                           spool_dir(self.run_dir), exc)
        self._write_process_record()
        self._register_exit_hooks()

    def _register_exit_hooks(self) -> None:
        if self._exit_hooks_registered:
            return
        self._exit_hooks_registered = True
        atexit.register(self.close)
        self._register_finalizer()
        # a multiprocessing child clears its finalizers after fork, then runs these:
        multiprocessing.util.register_after_fork(self, Recorder._register_finalizer)

    def _register_finalizer(self) -> None:
        multiprocessing.util.Finalize(None, self.close, exitpriority=100)

    def _write_process_record(self) -> None:
        """Write this process's record, processes/<pid>.json: role, clock anchor, and this recorder's counters
        under its spool's name (a second recorder of the process adds its own entry; compaction adds the rest)."""
        path = self.run_dir / "processes" / f"{self.pid}.json"
        try:
            try:
                record = read_json(path) if path.exists() else {}
            except ValueError:
                record = {}
            record.update({
                "pid": self.pid,
                "ppid": os.getppid(),
                "role": self.role,
                "argv": sys.argv,
                **self._anchor,
                "servescope_version": __version__,
                "recording_parts": sorted(self.config.parts),
            })
            if self._spool is not None:
                spools = record.get("spools") if isinstance(record.get("spools"), dict) else {}
                spools.setdefault(self.spool_name, {}).update({
                    "closed": self._closed, "internal_errors": self.internal_errors,
                    "rows_dropped": self.rows_dropped + self._rows_lost_without_spool})
                record["spools"] = spools
            record.setdefault("internal_errors", 0)
            record["internal_errors"] = max(record["internal_errors"], self.internal_errors)
            record["rows_dropped"] = max(int(record.get("rows_dropped") or 0),
                                         self.rows_dropped + self._rows_lost_without_spool)
            write_json(path, record)
        except Exception as exc:
            self.internal_errors += 1
            logger.warning("servescope: cannot write the process record: %r", exc)

    @property
    def spool_name(self) -> str | None:
        """Return the name of this recorder's spool, <role>-<pid>-<instance> (its parts carry it), or None."""
        spool = self._spool
        return None if spool is None else f"{self.role}-{self.pid}-{spool.instance}"


def _role() -> str:
    """Return this process's role as the engine names it (MainProcess, EngineCore, VllmWorker-0, ...)."""
    return multiprocessing.current_process().name.replace("/", "_").replace(" ", "_")


_recorder: Recorder | None = None


def get_recorder() -> Recorder | None:
    """Return this process's recorder, or None when nothing is being recorded."""
    return _recorder


def open_recorder(config: Config | str | os.PathLike) -> Recorder:
    """Return this process's recorder for the configuration's run directory, creating it on first use."""
    global _recorder
    if not isinstance(config, Config):
        config = Config.from_options(str(config))
    if _recorder is None or _recorder.run_dir != Path(config.run_dir) or _recorder.closed:
        if _recorder is not None and not _recorder.closed:
            _recorder.close()
        _recorder = Recorder(config)
    return _recorder


def close_recorder() -> None:
    """Close this process's recorder (its spool stays, to be compacted)."""
    global _recorder
    if _recorder is not None:
        _recorder.close()
        _recorder = None


def _after_fork_in_child() -> None:
    if _recorder is not None and not _recorder.closed:
        _recorder.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
