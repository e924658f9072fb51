"""What a transformers continuous-batching process knows of its configuration, written into RUN/engine/.

Read from the batch processor at its first step: the continuous-batching config as transformers
resolved it (defaults, workload hints, the cache's own sizing), the cache, the scheduler and the
model, never the arguments the user passed. Parameters that mean what a vLLM parameter means carry
vLLM's name (max_num_batched_tokens, max_num_seqs, block_size, num_gpu_blocks, ...), so a
comparison of the two engines lines them up; the rest carry transformers' names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servescope.patches.facts import get_path, hf_model_facts, host_facts, plain
from servescope.record.recorder import _role
from servescope.run.directory import write_json


def _cuda_graphs(cb_config: Any) -> str:
    """Return which paths replay CUDA graphs: 'varlen and decode', 'varlen', 'decode' or 'off'."""
    try:
        varlen, decode = cb_config.cuda_graph_booleans
    except Exception:
        return "unknown"
    return {(True, True): "varlen and decode", (True, False): "varlen", (False, True): "decode"}.get(
        (bool(varlen), bool(decode)), "off")


def engine_parameters(processor: Any) -> dict[str, Any]:
    """Return every performance-critical parameter of a ContinuousBatchProcessor in effect, as plain JSON values."""
    cb = get_path(processor, "cb_config")
    cache = get_path(processor, "cache")
    runner = get_path(processor, "model_runner")
    compiled = {path: get_path(cb, f"{path}_compile_config") is not None for path in ("varlen", "decode")}
    graphs = _cuda_graphs(cb)
    quantization = get_path(processor, "config.quantization_config")
    params = {
        "max_num_batched_tokens": get_path(cache, "max_batch_tokens"),
        "max_num_seqs": get_path(cb, "max_requests_per_batch"),
        "enable_chunked_prefill": True,  # a prompt over the token budget is always split
        "scheduling_policy": get_path(cb, "scheduler_type"),
        "scheduler_class": type(get_path(processor, "scheduler")).__name__,
        "async_scheduling": get_path(processor, "use_async_batching"),
        "block_size": get_path(cb, "page_size") or get_path(cache, "block_size"),
        "num_gpu_blocks": get_path(cache, "num_blocks"),
        "enable_prefix_caching": get_path(cache, "use_prefix_sharing"),
        "dtype": get_path(processor, "model_dtype"),
        "kv_cache_dtype": get_path(cache, "dtype"),
        "quantization": get_path(quantization, "quant_method") if quantization is not None else None,
        "attention_implementation": get_path(processor, "config._attn_implementation"),
        "cuda_graphs": graphs,
        "torch_compile": compiled,
        "enforce_eager": graphs == "off" and not any(compiled.values()),
        "q_padding_interval_size": get_path(cb, "q_padding_interval_size"),
        "kv_padding_interval_size": get_path(cb, "kv_padding_interval_size"),
        "max_blocks_per_request": get_path(cb, "max_blocks_per_request"),
        "max_memory_percent": get_path(cb, "max_memory_percent"),
        "safety_margin": get_path(processor, "scheduler.safety_margin"),
        "cpu_offload_space_gib": get_path(cb, "cpu_offload_space"),
        "tensor_parallel_size": get_path(processor, "distributed_helper.tp_size") or 1,
        "speculative_config": None,  # transformers' continuous batching does not speculate
        "device": get_path(processor, "model_device.type"),
        "model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}" if runner is not None else None,
    }
    return {k: plain(v) for k, v in params.items()}


def write_engine_facts(run_dir: str | os.PathLike, processor: Any) -> None:
    """Write RUN/engine/<role>-<pid>.json with the engine's parameters, model and host facts."""
    try:
        import transformers

        version = transformers.__version__
    except Exception:
        version = None
    config = get_path(processor, "config")
    write_json(
        Path(run_dir) / "engine" / f"{_role()}-{os.getpid()}.json",
        {
            "role": _role(),
            "pid": os.getpid(),
            "engine": {"name": "transformers", "version": version, "parameters": engine_parameters(processor)},
            "model": hf_model_facts(config, plain(get_path(config, "_name_or_path")) or None),
            "host": host_facts(),
        },
    )
