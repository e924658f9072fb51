"""Is the server still there? Stop a load when it is gone instead of sending into nothing.

A run against a server that died keeps failing at once (connection refused) or mid-stream
(connection reset); without a watch it would go on sending until its plan ran out and call
the run complete. ``ServerWatch`` decides that the server is gone when

* the server process servescope started has exited (checked every ``POLL_S``), or
* a request failed on its connection (refused, reset, cut mid-stream) and, from then on,
  ``gone_after_s`` seconds passed (``SERVER_GONE_AFTER_S``, 3 s by default) in which every
  probe of the server (a GET of /v1/models, one per ``POLL_S``) failed to connect.

Any answer from the server (even an HTTP error) means it is there: a refused request or two
under overload does not stop a run. ``wait_gone()`` returns the reason when the server is gone;
the arrival loop (``driver_http.run_load``) then cancels the requests in flight and raises
``ServerGoneError``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiohttp

from servescope.bench.load.client import MODELS_PATH, RequestResult

SERVER_GONE_AFTER_S = 3.0
POLL_S = 0.25
PROBE_TIMEOUT_S = 1.0


class ServerGoneError(RuntimeError):
    """The server stopped answering mid-run; ``results`` holds what ended before the run was stopped."""

    def __init__(self, reason: str, results: list):
        super().__init__(reason)
        self.results = results


class ServerWatch:
    """Watches one server (its base URL, and its process when servescope started it) while a load runs."""

    def __init__(self, base_url: str, process: subprocess.Popen | None = None, *,
                 gone_after_s: float = SERVER_GONE_AFTER_S):
        self.base_url = base_url
        self.process = process
        self.gone_after_s = gone_after_s
        self.failing_since_ns: int | None = None  # first connection failure not followed by an answer

    def on_result(self, result: RequestResult) -> None:
        """Note one ended request: a connection failure starts the clock, a received token stops it."""
        if result.connection_lost:
            if self.failing_since_ns is None:
                self.failing_since_ns = result.end_ns or time.monotonic_ns()
        elif result.chunk_times_ns:
            self.failing_since_ns = None

    def process_exit_reason(self) -> str | None:
        """Return why the started server counts as gone (its exit code), or None while it runs."""
        if self.process is None:
            return None
        code = self.process.poll()
        return None if code is None else f"the server servescope started exited (code {code}) mid-run"

    async def _answers(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.base_url + MODELS_PATH) as response:
                await response.read()
                return True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def wait_gone(self) -> str:
        """Return, once the server is gone, a one-line reason naming its URL; runs until cancelled otherwise."""
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                reason = self.process_exit_reason()
                if reason is not None:
                    return reason
                if self.failing_since_ns is not None:
                    if await self._answers(session):
                        self.failing_since_ns = None
                    elif (time.monotonic_ns() - self.failing_since_ns) / 1e9 >= self.gone_after_s:
                        return (f"{self.base_url} stopped answering: connections refused or reset for "
                                f"{self.gone_after_s:g} s")
                await asyncio.sleep(POLL_S)
