"""The hand-written draft configs of benchmarks/models/ (EAGLE-3 head for llama3-8b, MiMo-7B-shaped MTP
target) parse with transformers, pass vLLM's engine configuration and construct on the meta device; the
shapes vLLM builds are checked against the ones the target's config implies (recomputed here)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from engine_fixtures import engine_env

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "benchmarks" / "models"
TESTS = Path(__file__).parent
pytestmark = pytest.mark.engine  # imports vLLM in a child process (about 40 s)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The two heads as vLLM builds them, from one process (one vLLM import): method -> facts and shapes."""
    from servescope.bench.model_kit import init_model_dir

    llama3_8b = init_model_dir(tmp_path_factory.mktemp("llama3-8b"), "llama3-8b", with_tokenizer=False)
    # vLLM takes a draft model whose path contains "eagle3" or "eagle-" for an EAGLE head (config/speculative.py,
    # method detection): the MTP target comes from a path of our own, so a checkout under such a folder does not
    # change the model vLLM builds
    mtp = shutil.copytree(MODELS / "mimo-7b-mtp", tmp_path_factory.mktemp("draft") / "mimo-7b-mtp")
    proc = subprocess.run([sys.executable, str(TESTS / "engine_scripts" / "draft_heads.py"),
                           f"eagle3:{llama3_8b}:{MODELS / 'llama3-8b-eagle3'}", f"mtp:{mtp}"],
                          env=engine_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    heads = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"llama3_8b": json.loads((llama3_8b / "config.json").read_text()), **{h["method"]: h for h in heads}}


def test_the_eagle3_head_is_the_one_vllm_builds_for_llama3_8b(built):
    head = AutoConfig.from_pretrained(MODELS / "llama3-8b-eagle3")
    target = built["llama3_8b"]
    assert head.num_hidden_layers == 1 and head.vocab_size == target["vocab_size"]
    eagle3 = built["eagle3"]
    assert eagle3["class"] == "Eagle3LlamaForCausalLM"
    assert eagle3["draft_max_model_len"] == 4096  # the target's, not capped by the head
    hidden, head_dim = target["hidden_size"], target["head_dim"]
    qkv_rows = (target["num_attention_heads"] + 2 * target["num_key_value_heads"]) * head_dim
    shapes = eagle3["shapes"]
    assert shapes["model.layers.0.self_attn.qkv_proj.weight"] == [qkv_rows, 2 * hidden]  # embedding + fused state
    assert shapes["model.fc.weight"] == [hidden, 3 * hidden]  # three auxiliary hidden states of the target
    assert shapes["model.layers.0.mlp.down_proj.weight"] == [hidden, target["intermediate_size"]]
    assert shapes["lm_head.weight"] == [32000, hidden]
    assert not any(name.startswith("model.layers.1.") for name in shapes)


def test_the_mtp_target_gives_one_mtp_layer_on_a_dense_model(built):
    target = json.loads((MODELS / "mimo-7b-mtp" / "config.json").read_text())
    mtp = built["mtp"]
    assert mtp["draft_architectures"] == ["MiMoMTPModel"]
    assert mtp["target_is_moe"] is False  # dense: vLLM 0.26 runs it on Model Runner V2 by default
    hidden = target["hidden_size"]
    shapes = mtp["shapes"]
    layers = {name.split(".")[2] for name in shapes if name.startswith("model.mtp_layers.")}
    assert len(layers) == target["num_nextn_predict_layers"] == 1
    layer = f"model.mtp_layers.{layers.pop()}"
    assert shapes[f"{layer}.input_proj.weight"] == [hidden, 2 * hidden]
    assert shapes[f"{layer}.mtp_block.mlp.down_proj.weight"] == [hidden, target["intermediate_size"]]
    assert shapes["lm_head.weight"] == [target["vocab_size"], hidden]
