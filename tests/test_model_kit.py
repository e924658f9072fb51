"""Dummy-model kit: configs that transformers loads, a tokenizer that round-trips ids.

No vLLM engine is started here (fast); the kit's directories were served by
``python -m vllm.entrypoints.openai.api_server --load-format dummy`` and driven by
``vllm.benchmarks.serve`` by hand (see docs/workloads.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from servescope.bench.model_kit import ARCHS, init_model_dir, model_config, special_token_ids
from servescope.bench.workloads.prompts import SyntheticPrompts
from servescope.bench.workloads.synthetic_tokenizer import build_synthetic_tokenizer, ids_to_text

SHARED_MODELS = ("llama3-8b", "llama2-7b", "olmoe-1b-7b", "llama3-1b")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_model_dir(tmp_path_factory.mktemp("models") / "tiny", "tiny")


def test_tiny_config_is_a_small_llama(tiny_dir):
    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 128, 4)
    assert (config.num_key_value_heads, config.intermediate_size) == (2, 256)
    assert config.vocab_size >= 1024 and config.max_position_embeddings == 4096
    # vLLM's CPU attention supports head size 32 among others.
    assert config.hidden_size // config.num_attention_heads == config.head_dim == 32
    assert json.loads((tiny_dir / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("arch", SHARED_MODELS)
def test_shared_configs_load_with_transformers(tmp_path, arch):
    model_dir = init_model_dir(tmp_path / arch, arch, with_tokenizer=False)
    config = AutoConfig.from_pretrained(model_dir)
    shipped = model_config(arch)
    assert config.vocab_size == shipped["vocab_size"]
    assert config.num_hidden_layers == shipped["num_hidden_layers"]
    assert config.architectures == shipped["architectures"]
    assert not (model_dir / "tokenizer.json").exists()


def test_shipped_configs_equal_the_h100_models():
    from pathlib import Path

    shared = Path("/work/shared/gpu/models")
    if not shared.is_dir():
        pytest.skip("shared model configs not present on this machine")
    for arch in SHARED_MODELS:
        assert model_config(arch) == json.loads((shared / arch / "config.json").read_text())


def test_tokenizer_round_trips_every_id(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    vocab_size = model_config("tiny")["vocab_size"]
    assert tokenizer.vocab_size == len(tokenizer) == vocab_size
    every_id = list(range(vocab_size))
    text = tokenizer.decode(every_id, skip_special_tokens=False)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == every_id
    random_ids = np.random.default_rng(0).integers(0, vocab_size, 5000).tolist()
    text = tokenizer.decode(random_ids, skip_special_tokens=False)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == random_ids
    assert text == ids_to_text(random_ids)


def test_tokenizer_special_tokens_follow_the_config(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = model_config("tiny")
    assert tokenizer.bos_token_id == config["bos_token_id"]
    assert tokenizer.eos_token_id == config["eos_token_id"]
    assert sorted(tokenizer.all_special_ids) == special_token_ids("tiny") == [1, 2]
    # Like a Llama tokenizer, encoding with special tokens prepends BOS.
    assert tokenizer("<t5> <t6>")["input_ids"] == [1, 5, 6]
    assert tokenizer.num_special_tokens_to_add() == 1
    assert tokenizer.decode([1, 5, 6, 2], skip_special_tokens=True) == "<t5> <t6>"
    generation = GenerationConfig.from_pretrained(tiny_dir)
    assert (generation.bos_token_id, generation.eos_token_id) == (1, 2)


def test_prompts_for_the_kit_round_trip_through_its_tokenizer(tiny_dir):
    from servescope.bench.workloads.workload import Request

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    maker = SyntheticPrompts(model_config("tiny")["vocab_size"], special_token_ids("tiny"), seed=1)
    ids = maker.token_ids(Request(0.0, 300, 10), index=4)
    # Default decode skips special tokens: prompts have none, so nothing is lost.
    assert tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_tokenizer_without_bos_adds_nothing():
    tokenizer = build_synthetic_tokenizer(64, bos_token_id=None, eos_token_id=63, pad_token_id=1)
    assert tokenizer("<t5> <t6>")["input_ids"] == [5, 6]
    assert tokenizer.pad_token_id == 1 and tokenizer.eos_token_id == 63
    with pytest.raises(ValueError):
        build_synthetic_tokenizer(64, bos_token_id=64, eos_token_id=1)


def test_olmoe_dir_has_no_bos_and_keeps_its_pad(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(init_model_dir(tmp_path / "olmoe", "olmoe-1b-7b"))
    assert tokenizer.bos_token_id is None
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (50279, 1)
    assert tokenizer.vocab_size == 50304


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        init_model_dir(tmp_path / "x", "gpt-5")
    assert set(ARCHS) == {"tiny", *SHARED_MODELS}
