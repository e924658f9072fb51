"""What an engine process knows of its own configuration, written into RUN/engine/.

Reads vLLM's resolved VllmConfig (the values actually in effect, after vLLM's own defaults
and platform overrides), never the arguments the user passed.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from servescope.record.recorder import _role
from servescope.run.directory import write_json


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


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
    "use_v2_model_runner": "use_v2_model_runner",
    "device": "device_config.device_type",
}


SPECULATIVE_FIELDS = ("speculative_method", "num_speculative_tokens", "speculative_model",
                      "rejection_sample_method", "synthetic_acceptance_length")


def engine_parameters(vllm_config: Any) -> dict[str, Any]:
    """Return every performance-critical engine parameter in effect, as plain JSON values."""
    params = {name: _plain(_get(vllm_config, path)) for name, path in ENGINE_PARAMETERS.items()}
    # one value that says "speculation off" (None) or how it is configured, for comparisons and the audit
    params["speculative_config"] = ({k: params[k] for k in SPECULATIVE_FIELDS}
                                    if _get(vllm_config, "speculative_config") is not None else None)
    return params


def model_facts(vllm_config: Any) -> dict[str, Any]:
    """Return the model's architecture facts: layers, widths, heads, attention type, MoE, size."""
    model_config = _get(vllm_config, "model_config")
    hf = _get(model_config, "hf_text_config") or _get(model_config, "hf_config")
    heads = _get(hf, "num_attention_heads")
    kv_heads = _get(hf, "num_key_value_heads") or heads
    use_mla = bool(_get(model_config, "use_mla"))
    experts = _get(hf, "num_local_experts") or _get(hf, "num_experts") or _get(hf, "n_routed_experts") or 0
    if use_mla:
        attention = "MLA"
    elif heads is None:
        attention = None
    else:
        attention = "MHA" if kv_heads == heads else ("MQA" if kv_heads == 1 else "GQA")
    facts = {
        "path": _plain(_get(model_config, "model")),
        "architecture": _plain((_get(hf, "architectures") or [None])[0]),
        "model_type": _plain(_get(hf, "model_type")),
        "num_layers": _get(hf, "num_hidden_layers"),
        "hidden_size": _get(hf, "hidden_size"),
        "intermediate_size": _get(hf, "intermediate_size"),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "attention": attention,
        "moe": bool(experts),
        "num_experts": experts or None,
        "num_experts_per_token": _get(hf, "num_experts_per_tok"),
        "vocab_size": _get(hf, "vocab_size"),
        "num_parameters": estimate_parameters(hf),
    }
    return {k: _plain(v) for k, v in facts.items()}


def estimate_parameters(hf: Any) -> int | None:
    """Return the parameter count of a decoder-only transformer from its config (dense or MoE)."""
    try:
        h, layers, vocab = hf.hidden_size, hf.num_hidden_layers, hf.vocab_size
        heads = hf.num_attention_heads
        kv = getattr(hf, "num_key_value_heads", None) or heads
        head_dim = getattr(hf, "head_dim", None) or h // heads
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        experts = getattr(hf, "num_local_experts", None) or getattr(hf, "num_experts", None) or 1
        inter = getattr(hf, "moe_intermediate_size", None) if experts > 1 else None
        inter = inter or hf.intermediate_size
        mlp = 3 * h * inter * experts + (h * experts if experts > 1 else 0)
        embed = vocab * h * (1 if getattr(hf, "tie_word_embeddings", False) else 2)
        return int(layers * (attn + mlp + 2 * h) + embed + h)
    except Exception:
        return None


def host_facts() -> dict[str, Any]:
    """Return this host's facts: OS, CPU count, Python, torch and GPU names when present."""
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["cuda"] = torch.version.cuda
    except Exception:
        pass
    return facts


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


def write_worker_facts(run_dir: str | os.PathLike, model_runner: Any, rank: int) -> None:
    """Write RUN/engine/<role>-<pid>-worker.json naming the model runner class in use."""
    cls = type(model_runner)
    write_json(
        Path(run_dir) / "engine" / f"{_role()}-{os.getpid()}-worker.json",
        {"role": _role(), "pid": os.getpid(), "rank": rank,
         "model_runner": f"{cls.__module__}.{cls.__qualname__}"},
    )
