"""The per-process bookkeeping shared by the transformers hooks, and the switch every hook reads first.

transformers runs continuous batching in one background thread per manager: scheduling, the
model runner and the output update of a step all happen there, one after another (with
``use_async_batching``, step k+1 is scheduled and launched before step k's update). A step gets
its id when ``prepare_next_batch`` returns a batch; the ids of launched steps wait in order for
their update, so every record of a step joins by step_id whatever the overlap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from servescope.record import recorder as _recorder_module

MAX_PENDING_STEPS = 64  # steps whose update never came (a stopped loop): the oldest are dropped


@dataclass(slots=True)
class PendingStep:
    """What the hooks learned of one step before its update: phase times (ns) and batch composition."""

    schedule: tuple[int, int]
    total_tokens: int
    prefill_reqs: int
    prefill_tokens: int
    decode_reqs: int
    decode_tokens: int
    running: int
    waiting: int
    kv_usage: float | None
    preempted: int
    execute: tuple[int, int] | None = None
    wait_start: int | None = None  # synchronous batching: where the wait for the step's output began


@dataclass(slots=True)
class UpdateInProgress:
    """One update_batch call: the wait for the step's output and each request's state before the update."""

    depth: int = 0  # prepare_batch_update nests (the async IOs call the host IOs' one)
    wait: tuple[int, int] | None = None
    before: list[tuple[Any, int, bool]] = field(default_factory=list)  # (RequestState, tokens generated, finished)


class TransformersState:
    """Bookkeeping between the hooks of one process."""

    def __init__(self) -> None:
        self.enabled = False
        self.next_step_id = 0
        self.scheduling = False  # inside a prepare_next_batch call
        self.schedule_batch_start_ns: int | None = None  # first schedule_batch of the current prepare_next_batch
        self.last_batch: list | None = None  # the FutureRequestStates the scheduler returned last
        self.preempted_while_scheduling = 0
        self.scheduled_step_id: int | None = None  # scheduled, not yet launched
        self.executing_step_id: int | None = None  # inside _generation_step of this step (worker regions)
        self.compute_start_ns: int | None = None  # ModelRunner.compute_batch of the executing step entered
        self.compute_end_ns: int | None = None  # ... and returned
        self.preparing = False  # inside prepare_batch_tensors (the async IOs nest the host IOs' one)
        self.finished_status = 3  # transformers' RequestStatus.FINISHED (read at patch time)
        self.pending: dict[int, PendingStep] = {}
        self.launched: deque[int] = deque(maxlen=MAX_PENDING_STEPS)  # launched, waiting for their update
        self.update: UpdateInProgress | None = None
        self.live: set[str] = set()  # requests queued and not finished (a requeue after preemption is not 'queued')
        self.scheduled: set[str] = set()  # live requests scheduled since they were queued or preempted
        self.dropped_pending = 0
        self.facts_written = False
        self.timer = None
        self.nvml = None
        self.forward_token = None
        self.forward_hooks: dict[int, list] = {}  # id(model) -> its forward hook handles

    def start_session(self) -> None:
        """Forget the requests and steps of an earlier instrumented period (step ids keep counting)."""
        self.pending.clear()
        self.launched.clear()
        self.live.clear()
        self.scheduled.clear()
        self.scheduled_step_id = self.executing_step_id = None
        self.update = None
        self.last_batch = None

    def forget(self, request_id: str) -> None:
        """Drop a finished request from the live sets."""
        self.live.discard(request_id)
        self.scheduled.discard(request_id)


STATE = TransformersState()


def active_recorder():
    """Return this process's recorder while the transformers hooks are on, else None (one check)."""
    return _recorder_module._recorder if STATE.enabled else None
