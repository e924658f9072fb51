"""What a benchmark sends: requests with arrival offsets and token lengths.

A ``Workload`` is the common output of every loader (real traces) and of the
synthetic presets. Arrival offsets are seconds from the workload's start; lengths
are token counts. Prompt text never exists here: ``servescope.bench.workloads.prompts`` turns a
``Request`` into token ids of the logged length.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from servescope.bench.workloads.arrivals import replay_arrivals, replay_window_mask


class WorkloadError(ValueError):
    """A workload file or argument that cannot be used; the message names file, line and field."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request: when it arrives (s from the workload start) and its token lengths."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    # Ids of the fixed-size prompt blocks this request's prompt starts with (Mooncake
    # hash_ids); requests that share an id share that block's tokens exactly.
    prefix_block_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class LengthStats:
    """Distribution summary of one length column, in tokens (percentiles: numpy 'linear')."""

    count: int
    mean: float
    p25: float
    median: float
    p75: float
    p99: float
    max: float

    @property
    def iqr(self) -> float:
        """Returns the interquartile range P75 - P25, in tokens."""
        return self.p75 - self.p25


def length_stats(lengths: np.ndarray) -> LengthStats:
    """Returns count, mean, P25, median, P75, P99 and max of token lengths, in tokens."""
    values = np.asarray(lengths, dtype=np.float64)
    if values.size == 0:
        nan = float("nan")
        return LengthStats(0, nan, nan, nan, nan, nan, nan)
    p25, p50, p75, p99 = np.percentile(values, [25, 50, 75, 99])
    return LengthStats(
        count=int(values.size),
        mean=float(values.mean()),
        p25=float(p25),
        median=float(p50),
        p75=float(p75),
        p99=float(p99),
        max=float(values.max()),
    )


@dataclass(frozen=True)
class Workload:
    """A named list of requests, where it came from, and how many source rows were skipped."""

    name: str
    requests: list[Request]
    source: str
    # False for synthetic presets: their arrival_s are all 0 and the arrivals must
    # come from an arrival process (servescope.bench.workloads.arrivals).
    has_arrival_times: bool = True
    skipped: int = 0
    prefix_block_tokens: int = 512
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.requests)

    @cached_property
    def arrival_s(self) -> np.ndarray:
        """Returns every request's arrival offset, in seconds (float64 array)."""
        return np.fromiter((r.arrival_s for r in self.requests), np.float64, len(self.requests))

    @cached_property
    def prompt_tokens(self) -> np.ndarray:
        """Returns every request's prompt length, in tokens (int64 array)."""
        return np.fromiter((r.prompt_tokens for r in self.requests), np.int64, len(self.requests))

    @cached_property
    def output_tokens(self) -> np.ndarray:
        """Returns every request's output length, in tokens (int64 array)."""
        return np.fromiter((r.output_tokens for r in self.requests), np.int64, len(self.requests))

    def tokens_needed(self) -> np.ndarray:
        """Returns each request's context as sent, prompt + output tokens (each at least 1), int64 array; builds no prompt."""
        return np.maximum(self.prompt_tokens, 1) + np.maximum(self.output_tokens, 1)

    def prompt_stats(self) -> LengthStats:
        """Returns the prompt-length distribution summary, in tokens."""
        return length_stats(self.prompt_tokens)

    def output_stats(self) -> LengthStats:
        """Returns the output-length distribution summary, in tokens."""
        return length_stats(self.output_tokens)

    def duration_s(self) -> float:
        """Returns the time from the first to the last arrival, in seconds."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.requests else 0.0

    def mean_rate_per_s(self) -> float:
        """Returns the mean arrival rate, (requests - 1) / duration, in requests per second."""
        duration = self.duration_s()
        return (len(self.requests) - 1) / duration if duration > 0 else float("nan")

    def with_arrivals(self, arrival_s: np.ndarray) -> Workload:
        """Returns this workload with arrival offsets (s) replaced, one per request, in order."""
        offsets = np.asarray(arrival_s, dtype=np.float64)
        if offsets.shape != (len(self.requests),):
            raise WorkloadError(
                f"{self.name}: got {offsets.size} arrival offsets for {len(self.requests)} requests"
            )
        if offsets.size and (np.any(np.diff(offsets) < 0) or offsets[0] < 0):
            raise WorkloadError(f"{self.name}: arrival offsets must be >= 0 and non-decreasing")
        requests = [replace(r, arrival_s=float(t)) for r, t in zip(self.requests, offsets.tolist())]
        return replace(self, requests=requests, has_arrival_times=True)

    def first(self, count: int) -> Workload:
        """Returns a workload of the first ``count`` requests (all if fewer); count < 1 raises WorkloadError."""
        try:
            whole = operator.index(count)  # an int or numpy integer, not 2.5
        except TypeError:
            whole = None
        if whole is None or isinstance(count, bool) or whole < 1:
            raise WorkloadError(f"{self.name}: the request count must be an integer >= 1, got {count!r}")
        return replace(self, requests=self.requests[:whole])

    def capped(self, max_prompt_tokens: int | None = None, max_output_tokens: int | None = None) -> Workload:
        """Returns this workload with lengths clipped to the given maxima, in tokens (e.g. to fit a small model)."""
        requests = [
            replace(
                r,
                prompt_tokens=r.prompt_tokens if max_prompt_tokens is None else min(r.prompt_tokens, max_prompt_tokens),
                output_tokens=r.output_tokens if max_output_tokens is None else min(r.output_tokens, max_output_tokens),
            )
            for r in self.requests
        ]
        note = f"lengths capped at prompt {max_prompt_tokens}, output {max_output_tokens} tokens"
        return replace(self, requests=requests, notes=self.notes + (note,))

    def replayed(self, time_scale: float = 1.0, start_s: float = 0.0, end_s: float | None = None) -> Workload:
        """Returns the requests arriving in [start_s, end_s) of this trace, offsets rebased to start_s and multiplied by time_scale (s)."""
        mask = replay_window_mask(self.arrival_s, start_s, end_s)
        offsets = replay_arrivals(self.arrival_s, time_scale, start_s, end_s)
        kept = [r for r, keep in zip(self.requests, mask.tolist()) if keep]
        requests = [replace(r, arrival_s=float(t)) for r, t in zip(kept, offsets.tolist())]
        note = f"replayed window [{start_s}, {end_s}) s at time_scale {time_scale}"
        return replace(self, requests=requests, notes=self.notes + (note,))
