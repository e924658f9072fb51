"""The per-process recorder: append-only row buffers, flushed to Parquet by a background thread.

The hot path is ``Recorder.append(table, row)``: one bounded ``list.append`` of a tuple in the
table's column order (schema.py). A daemon thread moves rows out every ``flush_interval_s``
and writes one Parquet part per table per flush, so a process that dies loses at most one
interval. Memory is bounded: past ``max_buffered_rows`` per table, rows are dropped and counted
(the count is in processes/<pid>.json and in the manifest), never silently.

Fork: the child gets a fresh, empty recorder (its parent flushes its own rows); spawn children
build their own through the vLLM plugin. Exit: atexit (spawn, main process) and a
multiprocessing finalizer (forked children, which leave through os._exit) flush the rest.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servescope import __version__
from servescope.run.clock import clock_anchor
from servescope.run.directory import ensure_run_id, table_dir, write_json
from servescope.run.schema import TABLES

logger = logging.getLogger("servescope")

FAULT_INJECTION_ENV = "SERVESCOPE_INJECT_FAULTS"  # every append raises: proves faults stay inside servescope
DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_MAX_BUFFERED_ROWS = 1_000_000


class Recorder:
    """Buffers rows for every table of schema.py and writes them into one run directory."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = ensure_run_id(self.run_dir)
        self.flush_interval_s = flush_interval_s
        self.max_buffered_rows = max_buffered_rows
        self._reset_process_state()
        if os.environ.get(FAULT_INJECTION_ENV):
            self.append = self._append_raising  # type: ignore[method-assign]

    # ---- hot path -------------------------------------------------------------------------
    def append(self, table: str, row: tuple) -> None:
        """Buffer one row (a tuple in the table's column order); drop and count it when full."""
        buf = self._buffers[table]
        if len(buf) < self.max_buffered_rows:
            buf.append(row)
        else:
            self.dropped[table] += 1

    def _append_raising(self, table: str, row: tuple) -> None:
        raise RuntimeError(f"servescope fault injection ({FAULT_INJECTION_ENV}) on {table}")

    def error(self, where: str, exc: BaseException) -> None:
        """Count an exception raised inside servescope; log the first one of each site."""
        self.internal_errors += 1
        if where not in self._error_sites:
            self._error_sites.add(where)
            logger.warning("servescope: internal error in %s (counted, the engine unaffected): %r", where, exc)

    def flush_soon(self) -> None:
        """Ask the writer thread to flush now instead of at its next interval."""
        self._wake.set()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread and register the exit flush (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="servescope-writer", daemon=True)
        self._thread.start()
        if not self._exit_hooks_registered:
            self._exit_hooks_registered = True
            atexit.register(self.close)
            self._register_finalizer()
            # a multiprocessing child clears finalizers after fork, then runs these:
            multiprocessing.util.register_after_fork(self, Recorder._register_finalizer)

    def _register_finalizer(self) -> None:
        multiprocessing.util.Finalize(None, self.close, exitpriority=100)

    def close(self) -> None:
        """Stop the writer thread and flush everything still buffered."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self.flush()
        self._closed = True
        if any(self.rows_written.values()) or self.internal_errors or any(self.dropped.values()):
            self._write_process_record()

    def flush(self) -> None:
        """Write every buffered row to Parquet parts now."""
        with self._flush_lock:
            if self.pid != os.getpid():  # a forked copy not yet reset
                return
            wrote = False
            for name, buf in self._buffers.items():
                n = len(buf)
                if not n:
                    continue
                rows = buf[:n]
                del buf[:n]  # atomic under the GIL; rows appended meanwhile stay for the next flush
                try:
                    self._write_part(name, rows)
                    self.rows_written[name] += n
                    wrote = True
                except Exception as exc:  # disk full, bad row ...
                    self.dropped[name] += n
                    self.error(f"write {name}", exc)
            if wrote or self._counters_changed():
                self._write_process_record()

    # ---- internals --------------------------------------------------------------------------
    def _reset_process_state(self) -> None:
        self.pid = os.getpid()
        self._buffers: dict[str, list[tuple]] = {name: [] for name in TABLES}
        self.dropped: dict[str, int] = {name: 0 for name in TABLES}
        self.rows_written: dict[str, int] = {name: 0 for name in TABLES}
        self.internal_errors = 0
        self._error_sites: set[str] = set()
        self._seq = 0
        self._anchor = clock_anchor()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._exit_hooks_registered = False
        self._last_counters: tuple = ()
        self._flush_lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        """Forget the parent's rows and thread; start afresh in the child."""
        self._reset_process_state()
        self.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except Exception as exc:
                self.error("writer thread", exc)

    def _write_part(self, name: str, rows: list[tuple]) -> None:
        table = TABLES[name]
        columns = list(zip(*rows))
        arrays = [pa.array(col, type=c.type) for col, c in zip(columns, table.columns)]
        directory = table_dir(self.run_dir, name)
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = directory / f"{_role()}-{self.pid}-{self._seq:06d}.parquet"
        tmp = path.with_name("." + path.name + ".tmp")
        pq.write_table(pa.Table.from_arrays(arrays, schema=table.arrow_schema), tmp)
        os.replace(tmp, path)

    def _counters_changed(self) -> bool:
        counters = (self.internal_errors, tuple(self.dropped.values()))
        changed = counters != self._last_counters
        self._last_counters = counters
        return changed

    def _write_process_record(self) -> None:
        try:
            write_json(
                self.run_dir / "processes" / f"{self.pid}.json",
                {
                    "pid": self.pid,
                    "ppid": os.getppid(),
                    "role": _role(),
                    "argv": sys.argv,
                    **self._anchor,
                    "servescope_version": __version__,
                    "rows_written": self.rows_written,
                    "rows_dropped": self.dropped,
                    "rows_buffered": sum(len(b) for b in self._buffers.values()),
                    "internal_errors": self.internal_errors,
                    "closed": self._closed,
                },
            )
        except Exception as exc:
            self.internal_errors += 1
            logger.warning("servescope: cannot write process record: %r", exc)


def _role() -> str:
    """Return this process's role as vLLM names it (MainProcess, EngineCore, VllmWorker-0, ...)."""
    return multiprocessing.current_process().name.replace("/", "_").replace(" ", "_")


_recorder: Recorder | None = None


def get_recorder() -> Recorder | None:
    """Return this process's recorder, or None when nothing is being recorded."""
    return _recorder


def open_recorder(run_dir: str | os.PathLike, **options) -> Recorder:
    """Return this process's recorder for run_dir, creating and starting it on first use."""
    global _recorder
    if _recorder is None or _recorder.run_dir != Path(run_dir) or _recorder._closed:
        if _recorder is not None and not _recorder._closed:
            _recorder.close()
        _recorder = Recorder(run_dir, **options)
        _recorder.start()
    return _recorder


def close_recorder() -> None:
    """Flush and close this process's recorder."""
    global _recorder
    if _recorder is not None:
        _recorder.close()
        _recorder = None


def _after_fork_in_child() -> None:
    if _recorder is not None and not _recorder._closed:
        _recorder.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
