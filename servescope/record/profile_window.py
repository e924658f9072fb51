"""A short torch.profiler window over a few engine steps, its events put on CLOCK_MONOTONIC.

``ProfileWindow(out_dir, first_step, num_steps)``: call ``on_step(step_id)`` at the start of every
step's execute_model in a worker (before the step's regions start). At ``first_step`` it starts
``torch.profiler`` (CUDA activity on a GPU, plus host operators); at the start of step
``first_step + num_steps`` it stops it and writes every GPU kernel, copy and memset and the host
calls that launched them (on the CPU build: the host operators) as rows of one Parquet file in
``out_dir`` (``RUN/profile/``), with the window's facts beside it as JSON. Outside the window,
``on_step`` is one comparison. ``close()`` ends a window that is still open (engine shutdown).
Engine-neutral: nothing here knows vLLM. The run configuration's ``profile_steps``
(``SERVESCOPE_PROFILE_STEPS=FIRST:COUNT``; ``profile_window_for``) asks for one.

Rows (``PROFILE_SCHEMA``): kind (run.names.ProfileEvent), name, device_index (GPU; null on the
host), lane (CUDA stream id for GPU work, OS thread id for host events), start_ns / end_ns on the
host's CLOCK_MONOTONIC (``time.monotonic_ns``, the clock of every servescope table),
correlation_id (a kernel and the launch call that enqueued it share it), profiler_start_ns (the
profiler's own timestamp, kept for audit).

**Mapping the profiler's clock onto CLOCK_MONOTONIC.** torch.profiler (Kineto) stamps host events
with an approximate clock (TSC) that it converts to Unix time (CLOCK_REALTIME ns; measured on
torch 2.13), and Kineto puts CUPTI's GPU timestamps on that same clock. servescope does not
assume which clock it is: at the start and at the end of the window it takes ``CLOCK_MARKS``
brackets, ``monotonic_ns()`` read just before and just after a trivial host operator
(``aten::empty`` of 0 elements, inside a ``servescope.clock_marks`` annotation that identifies
them). The operator's profiler start lies between the two reads, so ``offset = profiler -
monotonic`` lies in ``[p - after, p - before]``; the intersection of a group's brackets is the
estimate and its half-width the uncertainty (clock_calibration.estimate_offset). Events are mapped
through the line between the start and end estimates (``drift_ppm`` in the facts). Measured on the 2-core CPU
machine (``benchmarks/results/cpu-kernel-time.json``): an uncertainty under 1 us at both ends, and
an offset equal to ``time_ns() - monotonic_ns()`` to within 2 us. What the brackets do not see: Kineto's
alignment of CUPTI's GPU timestamps with its host clock (checked on a GPU by causality, a kernel
never starting before the call that launched it: kernel_attribution.launch_to_start_ns).

**Cost.** Starting the profiler (first use: Kineto's set-up) and stopping it plus writing the rows
are paid by the step at which the window opens and the one at which it closes; inside the window
every operator and launch is slower by the profiler's own overhead, which stretches launch gaps
(a launch-bound region's "gap" under the profiler is an upper bound of its gap without it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from servescope.run.names import ProfileEvent

log = logging.getLogger("servescope")

CLOCK_MARKS = 16  # brackets per calibration (start and end of the window)
MARKS_ANNOTATION = "servescope.clock_marks"
MARK_OPERATOR = "aten::empty"

PROFILE_SCHEMA = pa.schema([
    pa.field("kind", pa.string()),
    pa.field("name", pa.string()),
    pa.field("device_index", pa.int32()),
    pa.field("lane", pa.int64()),
    pa.field("start_ns", pa.int64()),
    pa.field("end_ns", pa.int64()),
    pa.field("correlation_id", pa.int64()),
    pa.field("profiler_start_ns", pa.int64()),
])

# Kineto activity type -> kind of row (others, e.g. python functions or the profiler's overhead, are left out)
ACTIVITY_KINDS = {
    "kernel": ProfileEvent.KERNEL,
    "gpu_memcpy": ProfileEvent.MEMCPY,
    "gpu_memset": ProfileEvent.MEMSET,
    "cuda_runtime": ProfileEvent.LAUNCH,
    "cuda_driver": ProfileEvent.LAUNCH,
    "cpu_op": ProfileEvent.CPU_OP,
}
# GPU activities of CUPTI that are no work of the GPU's (torch without activity_type, kind_from_device_and_name)
GPU_SYNC_NAMES = frozenset({"Context Sync", "Stream Sync", "Event Sync", "Stream Wait Event", "Device Sync"})


def on_gpu(event) -> bool:
    """Whether a Kineto event happened on a CUDA device (a kernel, copy, memset, sync or annotation projection)."""
    return str(event.device_type()) == "DeviceType.CUDA"


def activity_kind(event, annotations: frozenset = frozenset()) -> str | None:
    """Return the row kind (ACTIVITY_KINDS) of a Kineto event, or None for an event left out.

    torch 2.13 names each event's Kineto activity (``activity_type()``); torch 2.11, the GPU machine's, has no such
    method (a window there was lost to the AttributeError, 2026-12-02), and the kind is read as
    kind_from_device_and_name does (annotations: the names of the window's host annotations)."""
    activity_type = getattr(event, "activity_type", None)
    if activity_type is None:
        return kind_from_device_and_name(event, annotations)
    return ACTIVITY_KINDS.get(str(activity_type()))


def kind_from_device_and_name(event, annotations: frozenset = frozenset()) -> str | None:
    """The row kind of a Kineto event from what every torch version has: the device, the user-annotation flag and
    the name Kineto gives each activity (CUPTI's "Memcpy HtoD (...)", "Memset (Device)", "cudaLaunchKernel",
    "cuLaunchKernelEx", "INVALID" for a runtime call CUPTI cannot name; Kineto's own overhead events carry no
    device index). A GPU event named as one of the host's annotations is that annotation's projection onto the
    GPU, never a kernel, whatever its flag says: counted as a kernel it would double the busy time under it."""
    if event.is_user_annotation():
        return None
    name = event.name()
    if on_gpu(event):
        if name in annotations:
            return None
        if name.startswith("Memcpy"):
            return ProfileEvent.MEMCPY
        if name.startswith("Memset"):
            return ProfileEvent.MEMSET
        return None if name in GPU_SYNC_NAMES else ProfileEvent.KERNEL
    if event.device_index() < 0:
        return None
    if name.startswith("cuda") or (name.startswith("cu") and name[2:3].isupper()) or name == "INVALID":
        return ProfileEvent.LAUNCH
    return ProfileEvent.CPU_OP


def profile_window_for(config, *, rank: int = 0) -> "ProfileWindow | None":
    """Return the ProfileWindow a run's configuration asks for (Config.profile_steps; it writes into
    RUN/profile/), or None when none was asked for."""
    if config.profile_steps is None:
        return None
    first, count = config.profile_steps
    return ProfileWindow(Path(config.run_dir) / ProfileEvent.DIR, first, count, rank=rank)


class ProfileWindow:
    """Profiles num_steps engine steps from first_step; writes their kernels (or host ops) on CLOCK_MONOTONIC."""

    def __init__(self, out_dir: str | os.PathLike, first_step: int, num_steps: int, *, rank: int = 0,
                 activities: list | None = None):
        if first_step < 0 or num_steps < 1:
            raise ValueError(f"profile window: first_step {first_step} must be >= 0 and num_steps {num_steps} >= 1")
        self.out_dir = Path(out_dir)
        self.first_step, self.num_steps, self.rank = int(first_step), int(num_steps), rank
        self.activities = activities
        self.done = False
        self.path: Path | None = None  # the Parquet file, once written
        self.error: str | None = None
        self._profiler = None
        self._opened_at_step: int | None = None
        self._steps: list[int] = []
        self._start_brackets: list[tuple[int, int]] = []
        self._opened_ns = self._closed_ns = 0

    def on_step(self, step_id: int | None) -> None:
        """Open the window at first_step, close it num_steps steps later; call at each step's start."""
        if self.done or step_id is None:
            return
        if self._profiler is None:
            if step_id >= self.first_step:
                self._open(step_id)
            return
        if step_id >= self._opened_at_step + self.num_steps:
            self._close()
        else:
            self._steps.append(step_id)

    def close(self) -> None:
        """End a window that is still open (fewer steps than asked: the facts say how many)."""
        if self._profiler is not None and not self.done:
            self._close()

    # ------------------------------------------------------------------ inside

    def _open(self, step_id: int) -> None:
        try:
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = self.activities
            if activities is None:
                activities = [ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(activities=activities)
            self._profiler.start()
            self._start_brackets = clock_marks()
            self._opened_ns = time.monotonic_ns()
            self._opened_at_step = step_id
            self._steps = [step_id]
        except Exception as exc:  # never raised into the engine
            self._fail(f"starting torch.profiler: {exc!r}")

    def _close(self) -> None:
        try:
            self._closed_ns = time.monotonic_ns()
            end_brackets = clock_marks()
            self._profiler.stop()
            events = self._profiler.profiler.kineto_results.events()
            self._write(events, self._start_brackets, end_brackets)
        except Exception as exc:
            self._fail(f"writing the profile: {exc!r}")
        finally:
            self._profiler = None
            self.done = True

    def _fail(self, message: str) -> None:
        self.error = message
        self.done = True
        self._profiler = None
        log.warning("servescope: profile window (steps %d+%d) not taken: %s", self.first_step, self.num_steps,
                    message)

    def _write(self, events: list, start_brackets: list, end_brackets: list) -> None:
        marks_start, marks_end, rows = split_marks(events)
        start = calibrate(start_brackets, marks_start)
        end = calibrate(end_brackets, marks_end)
        mapping = ClockMap(start, end)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"kernels-rank{self.rank}-pid{os.getpid()}-steps{self._steps[0]}-{self._steps[-1]}"
        columns = {name: [] for name in PROFILE_SCHEMA.names}
        for kind, e in rows:
            p0 = e.start_ns()
            columns["kind"].append(kind)
            columns["name"].append(e.name())
            gpu = kind in ProfileEvent.DEVICE_WORK
            columns["device_index"].append(int(e.device_index()) if gpu else None)
            columns["lane"].append(int(e.device_resource_id()))
            columns["start_ns"].append(mapping.to_monotonic(p0))
            columns["end_ns"].append(mapping.to_monotonic(e.end_ns()))
            columns["correlation_id"].append(int(e.correlation_id()))
            columns["profiler_start_ns"].append(p0)
        table = pa.Table.from_pydict(columns, schema=PROFILE_SCHEMA)
        tmp = self.out_dir / f".{stem}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.out_dir / f"{stem}.parquet")
        import torch

        facts = {
            "first_step": self.first_step, "num_steps": self.num_steps, "steps": self._steps,
            "rank": self.rank, "pid": os.getpid(), "torch": torch.__version__,
            "profiled_from_ns": self._opened_ns, "profiled_to_ns": self._closed_ns,
            "rows": {k: columns["kind"].count(k) for k in ProfileEvent.ALL},
            "clock": mapping.facts(),
        }
        (self.out_dir / f"{stem}.json").write_text(json.dumps(facts, indent=1))
        self.path = self.out_dir / f"{stem}.parquet"


def clock_marks(count: int = CLOCK_MARKS) -> list[tuple[int, int]]:
    """Run count marker operators inside the marks annotation; return (monotonic before, after) ns of each."""
    import torch
    from torch.profiler import record_function

    brackets = []
    with record_function(MARKS_ANNOTATION):
        for _ in range(count):
            before = time.monotonic_ns()
            torch.empty(0)
            brackets.append((before, time.monotonic_ns()))
    return brackets


def split_marks(events: list) -> tuple[list[int], list[int], list[tuple[str, Any]]]:
    """Return (profiler start ns of the first group's marker ops, of the last group's, the other events with
    their kind): marker ops are the MARK_OPERATOR events inside a MARKS_ANNOTATION on the same thread."""
    groups = sorted(((e.start_ns(), e.end_ns(), e.start_thread_id()) for e in events
                     if e.name() == MARKS_ANNOTATION and not on_gpu(e)), key=lambda g: g[0])
    marks: list[list[int]] = [[] for _ in groups]
    rows = []
    annotations = frozenset(e.name() for e in events if e.is_user_annotation() and not on_gpu(e))
    for e in events:
        kind = activity_kind(e, annotations)
        if e.name() == MARK_OPERATOR:
            t = e.start_ns()
            inside = [i for i, (a, b, tid) in enumerate(groups) if a <= t <= b and tid == e.start_thread_id()]
            if inside:
                marks[inside[0]].append(t)
                continue
        if kind is not None and e.name() != MARKS_ANNOTATION:
            rows.append((kind, e))
    if len(groups) < 2:
        raise ValueError(f"found {len(groups)} clock-mark groups in the profile, expected 2 (start and end)")
    return sorted(marks[0]), sorted(marks[-1]), rows


def calibrate(brackets: list[tuple[int, int]], profiler_ns: list[int]) -> dict:
    """Return {offset_ns (profiler - monotonic), uncertainty_ns, estimator, at_profiler_ns} from paired brackets."""
    from servescope.kernels.clock_calibration import estimate_offset

    if len(profiler_ns) != len(brackets) or not brackets:
        raise ValueError(f"{len(profiler_ns)} marker operators in the profile for {len(brackets)} brackets")
    offset, uncertainty, estimator, tightest = estimate_offset(
        [(before, p, after) for (before, after), p in zip(brackets, profiler_ns)])
    return {"offset_ns": offset, "uncertainty_ns": uncertainty, "estimator": estimator,
            "tightest_bracket_ns": tightest, "at_profiler_ns": int(sorted(profiler_ns)[len(profiler_ns) // 2])}


class ClockMap:
    """Profiler ns -> CLOCK_MONOTONIC ns through the line between two calibrations."""

    def __init__(self, start: dict, end: dict):
        self.start, self.end = start, end
        span = end["at_profiler_ns"] - start["at_profiler_ns"]
        self.rate = (end["offset_ns"] - start["offset_ns"]) / span if span > 0 else 0.0

    def to_monotonic(self, profiler_ns: int) -> int:
        """Return the monotonic ns of a profiler timestamp (ns)."""
        return int(profiler_ns - (self.start["offset_ns"] + self.rate * (profiler_ns - self.start["at_profiler_ns"])))

    def facts(self) -> dict:
        """Return both calibrations, the drift between them (ppm) and what the offset says about the clock."""
        realtime_minus_monotonic = time.time_ns() - time.monotonic_ns()
        return {"start": self.start, "end": self.end, "drift_ppm": self.rate * 1e6,
                "offset_minus_realtime_offset_ns": self.start["offset_ns"] - realtime_minus_monotonic,
                "method": f"brackets of {MARK_OPERATOR} operators inside {MARKS_ANNOTATION} (time.monotonic_ns)"}


def read_profile(run_dir: str | os.PathLike) -> tuple[pa.Table, list[dict]]:
    """Return every profile window of a run: the rows of all its files (PROFILE_SCHEMA plus a `file`
    column) and the facts of each window (a list of dicts); empty when none was taken."""
    directory = Path(run_dir) / ProfileEvent.DIR
    tables, facts = [], []
    for path in sorted(directory.glob("kernels-*.parquet")) if directory.is_dir() else []:
        t = pq.read_table(path, schema=PROFILE_SCHEMA)
        tables.append(t.append_column("file", pa.array([path.name] * t.num_rows, pa.string())))
        side = path.with_suffix(".json")
        facts.append({"file": path.name, **(json.loads(side.read_text()) if side.exists() else {})})
    if not tables:
        return PROFILE_SCHEMA.empty_table().append_column("file", pa.array([], pa.string())), []
    return pa.concat_tables(tables), facts
