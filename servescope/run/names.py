"""Every name a record carries, in one place: tables, request events, step phases, worker regions.

A patch writes these strings, the tables store them, and the analysis, report, Perfetto trace and
OpenTelemetry spans read them from here, so a name cannot drift between producer and reader.
Each family is a class of plain ``str`` constants (cheap on the hot path, and what Parquet
stores) with ``ALL`` listing its members in a stable order.
"""

from __future__ import annotations


class Table:
    """Tables of a run directory (their columns: schema.py; their rows: rows.py)."""

    REQUEST_EVENTS = "request_events"
    TOKEN_EMISSIONS = "token_emissions"
    STEPS = "steps"
    FRONTEND_STEPS = "frontend_steps"
    WORKER_REGIONS = "worker_regions"
    GPU_SAMPLES = "gpu_samples"
    CLIENT_REQUESTS = "client_requests"
    CLIENT_CHUNKS = "client_chunks"
    ALL = (REQUEST_EVENTS, TOKEN_EMISSIONS, STEPS, FRONTEND_STEPS, WORKER_REGIONS, GPU_SAMPLES,
           CLIENT_REQUESTS, CLIENT_CHUNKS)


class RequestEvent:
    """Lifecycle events of a request (request_events.event)."""

    ARRIVAL = "arrival"  # the front end accepted it
    QUEUED = "queued"  # the scheduler added it to its waiting queue
    SCHEDULED = "scheduled"  # first (or resumed) scheduling
    PREEMPTED = "preempted"
    FINISHED = "finished"
    ALL = (ARRIVAL, QUEUED, SCHEDULED, PREEMPTED, FINISHED)


class StepPhase:
    """Host phases of one engine step in the EngineCore (steps.<phase>_start_ns .. <phase>_end_ns).

    ``execute`` is the launch: the executor's execute_model (and, under async scheduling, the
    non-blocking sample_tokens) returning; with the worker inside the EngineCore process and a
    synchronous step it also holds the worker's own wait for the GPU. ``wait`` is the EngineCore
    blocked until the step's model output reaches the host.
    """

    SCHEDULE = "schedule"
    EXECUTE = "execute"
    WAIT = "wait"
    UPDATE = "update"
    ALL = (SCHEDULE, EXECUTE, WAIT, UPDATE)
    DISPLAY = {
        SCHEDULE: "schedule",
        EXECUTE: "execute (launch)",
        WAIT: "wait for the GPU's output",
        UPDATE: "update (emit tokens)",
    }

    @staticmethod
    def columns(phase: str) -> tuple[str, str]:
        """Return the (start, end) column names of a phase in the steps table."""
        return f"{phase}_start_ns", f"{phase}_end_ns"


class Region:
    """Timed regions of a step inside a worker (worker_regions.region)."""

    EXECUTE_MODEL = "execute_model"  # the model runner's whole execute_model
    FORWARD = "forward"  # the model's forward (CUDA events or host clock)
    FORWARD_GPU = "forward_gpu"  # the forward's GPU interval from globaltimer stamps (inside CUDA graphs)
    SAMPLE_TOKENS = "sample_tokens"  # the runner's sample_tokens (async scheduling's second half)
    SAMPLE = "sample"  # the sampler (or rejection sampler under speculation)
    REJECTION_SAMPLE = "rejection_sample"  # the rejection sampler verifying a step's drafted tokens (inside sample)
    DRAFT = "draft"  # the speculative proposer: all its forwards and draft sampling for one step
    DRAFT_DECODE = "draft_decode"  # the proposer's drafts after the first (k - 1 one-token forwards; inside draft)
    BOOKKEEP = "bookkeep"  # Model Runner V1's bookkeeping (holds the host's wait for the GPU)
    PREPARE_INPUTS = "prepare_inputs"  # building a batch's input tensors on the host (transformers; host time only)
    COLLECTIVE = "collective"  # one all-reduce / all-gather / reduce-scatter between ranks (inside forward; opt-in)
    ALL = (EXECUTE_MODEL, FORWARD, FORWARD_GPU, SAMPLE_TOKENS, SAMPLE, REJECTION_SAMPLE, DRAFT, DRAFT_DECODE,
           BOOKKEEP, PREPARE_INPUTS, COLLECTIVE)


class FinishReason:
    """Finish reasons written on 'finished' events (vLLM writes its own: stop, length, abort)."""

    STOP = "stop"  # an end-of-sequence token
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the caller
    ERROR = "error"  # the engine failed the request


class Observer:
    """Who recorded a number: the engine's own tracer, or servescope's streaming client outside it."""

    ENGINE = "engine"  # request_events, token_emissions, steps, ... written inside the engine's processes
    CLIENT = "client"  # client_requests, client_chunks: what a client of the server saw
    ALL = (ENGINE, CLIENT)


class ClientStatus:
    """How a request ended for the client (client_requests.status)."""

    OK = "ok"  # the stream ended with every token the server counted
    ERROR = "error"  # an HTTP error, an error event, a refused connection, a short stream
    TIMEOUT = "timeout"  # the request's time limit passed
    CANCELLED = "cancelled"  # Ctrl-C or the run's end
    ALL = (OK, ERROR, TIMEOUT, CANCELLED)


class ProfileEvent:
    """Kinds of profiler events in a profile window's file (RUN/profile/, record/profile_window.py)."""

    DIR = "profile"  # RUN/profile/: one Parquet file (and its .json facts) per profiled worker
    KERNEL = "kernel"  # a GPU kernel (CUPTI, through torch.profiler)
    MEMCPY = "memcpy"  # a GPU copy
    MEMSET = "memset"  # a GPU memset
    LAUNCH = "launch"  # the host's CUDA runtime / driver call that launched GPU work (same correlation id)
    CPU_OP = "cpu_op"  # a host operator (the CPU build's "kernels")
    ALL = (KERNEL, MEMCPY, MEMSET, LAUNCH, CPU_OP)
    DEVICE_WORK = (KERNEL, MEMCPY, MEMSET)  # what occupies a GPU
