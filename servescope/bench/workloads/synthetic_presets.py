"""Synthetic workloads whose length distributions match published statistics.

The raw Azure 2024 and Mooncake data are not shipped; "On Evaluating Performance
of LLM Inference Systems" (Table 1) publishes their prefill (prompt) and decode
(output) median, IQR and P99. Each preset fits one ``QuantileLengthDistribution``
per length to those figures (see ``length_distribution``). Prompt and output
lengths are drawn independently: no correlation between them is published.

'chat' and 'summarization' are illustrative shapes, not fitted to any trace:
chat has moderate prompts and long answers, summarization long prompts and short
answers.

A preset workload has no arrival times (all 0, ``has_arrival_times=False``): pair
it with an arrival process, ``workload.with_arrivals(poisson_arrivals(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servescope.bench.workloads.length_distribution import QuantileLengthDistribution, fit_published
from servescope.bench.workloads.workload import Request, Workload, WorkloadError


@dataclass(frozen=True)
class PublishedLengths:
    """Median, IQR and P99 of one length column, in tokens, and where they come from."""

    median: float
    iqr: float
    p99: float


@dataclass(frozen=True)
class Preset:
    """A named pair of target length statistics (prompt, output) and their provenance."""

    name: str
    prompt: PublishedLengths
    output: PublishedLengths
    provenance: str

    def prompt_distribution(self) -> QuantileLengthDistribution:
        """Returns the fitted prompt-length distribution, in tokens."""
        return fit_published(self.prompt.median, self.prompt.iqr, self.prompt.p99)

    def output_distribution(self) -> QuantileLengthDistribution:
        """Returns the fitted output-length distribution, in tokens."""
        return fit_published(self.output.median, self.output.iqr, self.output.p99)


_TABLE1 = '"On Evaluating Performance of LLM Inference Systems", Table 1'

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("azure-code-2024", PublishedLengths(1928, 2393, 7685), PublishedLengths(8, 15, 276),
               f"Azure Code 2024 length statistics from {_TABLE1}"),
        Preset("azure-conv-2024", PublishedLengths(928, 1811, 6683), PublishedLengths(41, 94, 694),
               f"Azure Conv 2024 length statistics from {_TABLE1}"),
        Preset("mooncake", PublishedLengths(6345, 4243, 61616), PublishedLengths(30, 343, 898),
               f"Mooncake length statistics from {_TABLE1}"),
        Preset("chat", PublishedLengths(512, 768, 4096), PublishedLengths(256, 320, 1024),
               "illustrative chat shape (not fitted to a trace)"),
        Preset("summarization", PublishedLengths(3072, 3072, 12288), PublishedLengths(192, 192, 640),
               "illustrative summarization shape (not fitted to a trace)"),
    )
}


def preset_names() -> list[str]:
    """Returns the names of the synthetic presets."""
    return list(PRESETS)


def sample_lengths(name: str, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (prompt, output) int64 arrays of ``count`` lengths drawn from preset ``name``, in tokens."""
    preset = _preset(name)
    rng = np.random.default_rng(seed)
    prompt = preset.prompt_distribution().sample(count, rng)
    output = preset.output_distribution().sample(count, rng)
    return prompt, output


def sample_preset(name: str, count: int = 1000, seed: int = 0) -> Workload:
    """Returns a Workload of ``count`` requests with preset lengths (tokens) and no arrival times (all 0 s)."""
    if count < 1:
        raise WorkloadError(f"preset {name!r}: count must be >= 1, got {count}")
    preset = _preset(name)
    prompt, output = sample_lengths(name, count, seed)
    requests = [Request(0.0, p, o) for p, o in zip(prompt.tolist(), output.tolist())]
    return Workload(
        name=name,
        requests=requests,
        source=f"synthetic preset '{name}' ({preset.provenance}), seed {seed}",
        has_arrival_times=False,
    )


def _preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise WorkloadError(f"unknown preset {name!r}; known: {preset_names()}") from None
