"""One entry point for every workload: shipped traces, synthetic presets, or a file.

``load_workload(name_or_path)`` resolves, in order:

* a shipped trace: 'azure-code-2023', 'azure-conv-2023' (Azure LLM inference trace
  2023, Azure Public Dataset, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024));
* a synthetic preset: 'azure-code-2024', 'azure-conv-2024', 'mooncake', 'chat',
  'summarization' (see ``synthetic_presets``);
* a file path, whose format is sniffed from its first line: a JSON object with
  ``input_length`` is Mooncake, with ``arrival_s`` the generic format; a CSV header
  with ``TIMESTAMP``/``ContextTokens`` is Azure, with ``Request tokens``/``Response
  tokens`` BurstGPT, with ``arrival_s``/``prompt_tokens`` the generic format.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from servescope.bench.workloads.azure_trace import load_azure_trace
from servescope.bench.workloads.burstgpt_trace import load_burstgpt_trace
from servescope.bench.workloads.generic_trace import load_generic_trace
from servescope.bench.workloads.mooncake_trace import load_mooncake_trace
from servescope.bench.workloads.synthetic_presets import preset_names, sample_preset
from servescope.bench.workloads.trace_reading import first_line
from servescope.bench.workloads.workload import Workload, WorkloadError

AZURE_2023_CREDIT = (
    "Azure LLM inference trace 2023, Azure Public Dataset, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024)"
)

SHIPPED_TRACES: dict[str, str] = {
    "azure-code-2023": "AzureLLMInferenceTrace_code.csv.gz",
    "azure-conv-2023": "AzureLLMInferenceTrace_conv.csv.gz",
}

DEFAULT_PRESET_COUNT = 1000


def shipped_trace_path(name: str) -> Path:
    """Returns the filesystem path of the shipped trace ``name`` inside the package."""
    return Path(str(resources.files("servescope").joinpath("data", "traces", SHIPPED_TRACES[name])))


def available_workloads() -> list[str]:
    """Returns the names load_workload resolves without a path: shipped traces, then presets."""
    return [*SHIPPED_TRACES, *preset_names()]


def sniff_trace_format(path: str | Path) -> str:
    """Returns 'azure', 'burstgpt', 'mooncake' or 'generic' from the file's first line; raises if none fits."""
    line = first_line(path)
    if not line:
        raise WorkloadError(f"{path}: empty file")
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError; an integer of too many digits; deep nesting
            raise WorkloadError(f"{path}, line 1: malformed JSON") from None
        if not isinstance(record, dict):
            raise WorkloadError(f"{path}, line 1: malformed row, expected a JSON object")
        keys = set(record)
        if "input_length" in keys:
            return "mooncake"
        if "arrival_s" in keys:
            return "generic"
        raise WorkloadError(f"{path}, line 1: unknown JSONL trace, keys {sorted(keys)}")
    header = {name.strip().strip('"') for name in line.split(",")}
    for fmt, needed in CSV_HEADERS.items():
        if needed <= header:
            return fmt
    closest, needed = max(CSV_HEADERS.items(), key=lambda item: len(item[1] & header))
    if needed & header:
        raise WorkloadError(f"{path}, line 1: unknown CSV trace header {sorted(header)}: a {closest} trace "
                            f"header lacks field(s) {sorted(needed - header)}")
    raise WorkloadError(f"{path}, line 1: unknown CSV trace header {sorted(header)}")


# CSV format -> the header fields that identify it (in sniffing order).
CSV_HEADERS = {
    "azure": {"TIMESTAMP", "ContextTokens", "GeneratedTokens"},
    "burstgpt": {"Request tokens", "Response tokens"},
    "generic": {"arrival_s", "prompt_tokens", "output_tokens"},
}

_LOADERS = {
    "azure": load_azure_trace,
    "burstgpt": load_burstgpt_trace,
    "mooncake": load_mooncake_trace,
    "generic": load_generic_trace,
}


def load_workload(name_or_path: str | Path, count: int | None = None, seed: int = 0) -> Workload:
    """Returns the named or stored workload; ``count`` requests (presets: sampled, default 1000; traces: the first, default all)."""
    name = str(name_or_path)
    if name in SHIPPED_TRACES:
        workload = load_azure_trace(
            shipped_trace_path(name), name=name, source=f"{AZURE_2023_CREDIT}: {SHIPPED_TRACES[name]}"
        )
    elif name in preset_names():
        return sample_preset(name, DEFAULT_PRESET_COUNT if count is None else count, seed)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise WorkloadError(
                f"{name!r} is neither a known workload {available_workloads()} nor an existing file"
            )
        workload = _LOADERS[sniff_trace_format(path)](path)
    return workload if count is None else workload.first(count)
