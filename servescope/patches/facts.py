"""Engine-neutral facts an engine process records about itself: plain JSON values, the model, the host.

Each engine's ``engine_facts`` module reads its own configuration objects and uses these helpers,
so the manifest's ``model`` and ``host`` sections mean the same for every engine.
"""

from __future__ import annotations

import os
import platform
from typing import Any


def get_path(obj: Any, path: str) -> Any:
    """Return obj.a.b.c for path 'a.b.c', or None where an attribute is missing."""
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def plain(value: Any) -> Any:
    """Return value as a JSON value: enums by name, containers element-wise, anything else as str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def hf_model_facts(hf: Any, path: Any = None, use_mla: bool = False) -> dict[str, Any]:
    """Return a Hugging Face text config's architecture facts: layers, widths, heads, attention type, MoE, size."""
    heads = get_path(hf, "num_attention_heads")
    kv_heads = get_path(hf, "num_key_value_heads") or heads
    experts = get_path(hf, "num_local_experts") or get_path(hf, "num_experts") or get_path(hf, "n_routed_experts") or 0
    if use_mla:
        attention = "MLA"
    elif heads is None:
        attention = None
    else:
        attention = "MHA" if kv_heads == heads else ("MQA" if kv_heads == 1 else "GQA")
    facts = {
        "path": path,
        "architecture": (get_path(hf, "architectures") or [None])[0],
        "model_type": get_path(hf, "model_type"),
        "num_layers": get_path(hf, "num_hidden_layers"),
        "hidden_size": get_path(hf, "hidden_size"),
        "intermediate_size": get_path(hf, "intermediate_size"),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "attention": attention,
        "moe": bool(experts),
        "num_experts": experts or None,
        "num_experts_per_token": get_path(hf, "num_experts_per_tok"),
        "vocab_size": get_path(hf, "vocab_size"),
        "num_parameters": estimate_parameters(hf),
    }
    return {k: plain(v) for k, v in facts.items()}


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
