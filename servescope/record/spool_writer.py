"""Appending to this process's spool (the format: ``servescope/run/spool.py``).

``SpoolWriter.write(payload)`` copies one record into the current memory-mapped segment: a slice
copy and one 4-byte store, under a lock that serialises this process's threads. It never raises:
a record that cannot be stored (disk full when a segment is created, a record larger than a
segment) is dropped and counted in the segment's header, where the count survives a kill.

A segment's blocks are reserved with posix_fallocate when it is created, so a full disk is found
there and never as a SIGBUS inside the engine. Only the current segment is mapped: the process's
memory stays bounded by one segment whatever the run's length.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import threading
from pathlib import Path

from servescope.run.spool import (CLOSED_CLEANLY, CLOSED_FULL, END_OF_SEGMENT, HEADER_BYTES, MAGIC, VERSION,
                                  pack_header, segment_path)


class SpoolWriter:
    """Appends records (bytes) to this process's spool segments."""

    def __init__(self, directory: str | os.PathLike, role: str, *, segment_bytes: int) -> None:
        self.dir = Path(directory)
        self.role = role
        self.pid = os.getpid()
        self.instance = secrets.token_hex(4)  # two recorders of one process never share a spool
        self.segment_bytes = segment_bytes
        self.rows_dropped = 0
        self.internal_errors = 0
        self.steps_held = 0
        self.segment = -1
        self.paths: list[Path] = []
        self._mm: mmap.mmap | None = None
        self._pos = HEADER_BYTES
        self._records = 0
        self._closed = False
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._open_segment()

    # ---- hot path -------------------------------------------------------------------------
    def write(self, payload: bytes, rows: int = 1) -> bool:
        """Append one record holding `rows` rows; return False (and count them dropped) if not stored."""
        n = len(payload)
        need = 4 + ((n + 7) & ~7)
        with self._lock:
            pos = self._pos
            if pos + need > self.segment_bytes or self._mm is None:
                if not self._next_segment(need):
                    self.rows_dropped += rows
                    self._publish_counters()
                    return False
                pos = self._pos
            mm = self._mm
            mm[pos + 4:pos + 4 + n] = payload
            struct.pack_into("<I", mm, pos, n)  # publication: the length last
            self._pos = pos + need
            self._records += 1
        return True

    # ---- counters and lifecycle --------------------------------------------------------------
    def count_error(self) -> None:
        """Count one exception caught inside servescope (kept in the header: survives a kill)."""
        self.internal_errors += 1
        self._publish_counters()

    def count_dropped(self, rows: int) -> None:
        """Count rows that were not recorded for a reason outside the spool."""
        self.rows_dropped += rows
        self._publish_counters()

    def set_steps_held(self, steps: int) -> None:
        """Keep in the header how many engine steps are held, not written yet (one field: survives a kill)."""
        self.steps_held = steps
        mm = self._mm
        if mm is not None:
            try:
                pack_header(mm, "steps_held", steps)
            except (ValueError, TypeError):  # the segment was just unmapped by another thread
                pass

    def close(self) -> None:
        """Mark the spool closed cleanly (how the manifest tells a clean end from a kill) and unmap it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            mm = self._mm
            if mm is None:
                return
            self._mm = None
            try:
                pack_header(mm, "records", self._records)
                pack_header(mm, "closed", CLOSED_CLEANLY)
                self._publish_to(mm)
            finally:
                mm.close()

    def abandon(self) -> None:
        """Drop the mapping without touching the files (a forked child must not write its parent's spool)."""
        self._mm = None
        self._closed = True

    # ---- internals ---------------------------------------------------------------------------
    def _publish_counters(self) -> None:
        mm = self._mm
        if mm is not None:
            self._publish_to(mm)

    def _publish_to(self, mm) -> None:
        try:
            pack_header(mm, "rows_dropped", self.rows_dropped)
            pack_header(mm, "internal_errors", self.internal_errors)
            pack_header(mm, "steps_held", self.steps_held)
        except (ValueError, TypeError):
            pass

    def _next_segment(self, need: int) -> bool:
        if self._closed or need > self.segment_bytes - HEADER_BYTES:  # closed, or never storable
            return False
        old, self._mm = self._mm, None
        if old is not None:
            try:
                if self._pos + 4 <= self.segment_bytes:
                    struct.pack_into("<I", old, self._pos, END_OF_SEGMENT)
                pack_header(old, "records", self._records)
                pack_header(old, "closed", CLOSED_FULL)
                old.close()
            except (ValueError, OSError):
                pass
        return self._open_segment()

    def _open_segment(self) -> bool:
        self.segment += 1
        path = segment_path(self.dir, self.role, self.pid, self.instance, self.segment)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            self.internal_errors += 1
            return False
        try:
            try:
                os.posix_fallocate(fd, 0, self.segment_bytes)  # a full disk fails here, not in a write
            except OSError as exc:
                if exc.errno not in (95,):  # EOPNOTSUPP: a filesystem without fallocate; ftruncate below
                    raise
            os.ftruncate(fd, self.segment_bytes)
            mm = mmap.mmap(fd, self.segment_bytes)
        except OSError:
            self.internal_errors += 1
            os.close(fd)
            try:
                path.unlink()
            except OSError:
                pass
            return False
        os.close(fd)
        struct.pack_into("8s", mm, 0, MAGIC)
        pack_header(mm, "version", VERSION)
        pack_header(mm, "pid", self.pid)
        pack_header(mm, "segment", self.segment)
        pack_header(mm, "capacity", self.segment_bytes - HEADER_BYTES)
        pack_header(mm, "role", self.role.encode()[:64])
        pack_header(mm, "instance", self.instance.encode())
        self._mm = mm
        self._pos = HEADER_BYTES
        self._records = 0
        self.paths.append(path)
        self._publish_to(mm)
        return True
