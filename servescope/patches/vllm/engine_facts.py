"""What an engine process knows of its own configuration, written into RUN/engine/.

Reads vLLM's resolved VllmConfig (the values actually in effect, after vLLM's own defaults
and platform overrides), never the arguments the user passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servescope.patches.facts import get_path as _get
from servescope.patches.facts import hf_model_facts, host_facts
from servescope.patches.facts import plain as _plain
from servescope.record.recorder import _role
from servescope.run.directory import write_json


ENGINE_PARAMETERS = {
    "max_num_seqs": "scheduler_config.max_num_seqs",
    "max_num_batched_tokens": "scheduler_config.max_num_batched_tokens",
    "enable_chunked_prefill": "scheduler_config.enable_chunked_prefill",
    "long_prefill_token_threshold": "scheduler_config.long_prefill_token_threshold",
    "max_num_partial_prefills": "scheduler_config.max_num_partial_prefills",
    "scheduling_policy": "scheduler_config.policy",
    "async_scheduling": "scheduler_config.async_scheduling",
    "max_model_len": "model_config.max_model_len",
    "dtype": "model_config.dtype",
    "enforce_eager": "model_config.enforce_eager",
    "quantization": "model_config.quantization",
    "block_size": "cache_config.block_size",
    "gpu_memory_utilization": "cache_config.gpu_memory_utilization",
    "kv_cache_dtype": "cache_config.cache_dtype",
    "enable_prefix_caching": "cache_config.enable_prefix_caching",
    "num_gpu_blocks": "cache_config.num_gpu_blocks",
    "num_cpu_blocks": "cache_config.num_cpu_blocks",
    "tensor_parallel_size": "parallel_config.tensor_parallel_size",
    "pipeline_parallel_size": "parallel_config.pipeline_parallel_size",
    "data_parallel_size": "parallel_config.data_parallel_size",
    "distributed_executor_backend": "parallel_config.distributed_executor_backend",
    "compilation_mode": "compilation_config.mode",
    "compilation_level": "compilation_config.level",
    "cudagraph_mode": "compilation_config.cudagraph_mode",
    "cudagraph_capture_sizes": "compilation_config.cudagraph_capture_sizes",
    "speculative_method": "speculative_config.method",
    "num_speculative_tokens": "speculative_config.num_speculative_tokens",
    "speculative_model": "speculative_config.model",
    "rejection_sample_method": "speculative_config.rejection_sample_method",
    "synthetic_acceptance_length": "speculative_config.synthetic_acceptance_length",
    "synthetic_acceptance_rates": "speculative_config.synthetic_acceptance_rates",
    "use_v2_model_runner": "use_v2_model_runner",
    "device": "device_config.device_type",
}


SPECULATIVE_FIELDS = ("speculative_method", "num_speculative_tokens", "speculative_model",
                      "rejection_sample_method", "synthetic_acceptance_length", "synthetic_acceptance_rates")


def engine_parameters(vllm_config: Any) -> dict[str, Any]:
    """Return every performance-critical engine parameter in effect, as plain JSON values."""
    params = {name: _plain(_get(vllm_config, path)) for name, path in ENGINE_PARAMETERS.items()}
    rates = params.get("synthetic_acceptance_rates")
    if params.get("synthetic_acceptance_length") is None and isinstance(rates, list) and rates:
        # vLLM (0.26 to 0.32 at least) turns a configured length L into per-position rates summing to L - 1 and
        # forgets L: give it back, so the manifest and the audit see the acceptance the run asked for
        try:
            params["synthetic_acceptance_length"] = 1.0 + float(sum(rates))
        except TypeError:
            pass
    # one value that says "speculation off" (None) or how it is configured, for comparisons and the audit
    params["speculative_config"] = ({k: params[k] for k in SPECULATIVE_FIELDS}
                                    if _get(vllm_config, "speculative_config") is not None else None)
    return params


def model_facts(vllm_config: Any) -> dict[str, Any]:
    """Return the model's architecture facts: layers, widths, heads, attention type, MoE, size."""
    model_config = _get(vllm_config, "model_config")
    hf = _get(model_config, "hf_text_config") or _get(model_config, "hf_config")
    return hf_model_facts(hf, _plain(_get(model_config, "model")), bool(_get(model_config, "use_mla")))


def write_engine_facts(run_dir: str | os.PathLike, vllm_config: Any, extra: dict | None = None) -> None:
    """Write RUN/engine/<role>-<pid>.json with the engine's parameters, model and host facts."""
    try:
        import vllm

        version = vllm.__version__
    except Exception:
        version = None
    write_json(
        Path(run_dir) / "engine" / f"{_role()}-{os.getpid()}.json",
        {
            "role": _role(),
            "pid": os.getpid(),
            "engine": {"name": "vllm", "version": version, "parameters": engine_parameters(vllm_config),
                       **(extra or {})},
            "model": model_facts(vllm_config),
            "host": host_facts(),
        },
    )


def write_worker_facts(run_dir: str | os.PathLike, model_runner: Any, rank: int, extra: dict | None = None) -> None:
    """Write RUN/engine/<role>-<pid>-worker.json naming the model runner class in use (and extra facts: placement)."""
    cls = type(model_runner)
    write_json(
        Path(run_dir) / "engine" / f"{_role()}-{os.getpid()}-worker.json",
        {"role": _role(), "pid": os.getpid(), "rank": rank,
         "model_runner": f"{cls.__module__}.{cls.__qualname__}", **(extra or {})},
    )
