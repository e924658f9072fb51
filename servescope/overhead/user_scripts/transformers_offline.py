"""A plain transformers continuous-batching offline script, as a user would write it (no servescope import).

The transformers counterpart of vLLM's offline user script: the same workload from the same
environment variables (AB_REQUESTS prompts of AB_PROMPT random token ids, AB_OUTPUT tokens each,
EOS off, sampling at temperature 1), generated BATCHES times with ``model.generate_batch``, and the
same last line: ``BATCH_TIMES [s, ...]``, the wall time of each whole batch.

    python transformers_offline.py MODEL_DIR [BATCHES]

MODEL_DIR's weights are loaded when it has some (``*.safetensors``), else the weights are random
from its config.json (seed 0). On a GPU the continuous-batching config is transformers' own
default (cache sized from free memory, CUDA graphs and async batching as transformers decides for
the attention implementation); AB_ATTN picks the attention implementation (default sdpa) and
AB_NUM_BLOCKS / AB_MAX_BATCH_TOKENS / AB_MAX_SEQS fix the cache size, the token budget and the
requests per step (default on the CPU: 512 blocks, since transformers would otherwise size the
cache from the host's free memory).
"""

import json
import os
import random
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig


def _int_env(name, default):
    value = os.environ.get(name)
    return int(value) if value else default


if __name__ == "__main__":
    model_dir, batches = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attn = os.environ.get("AB_ATTN", "sdpa")
    if any(name.endswith(".safetensors") for name in os.listdir(model_dir)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", attn_implementation=attn,
                                                     device_map=device)
    else:
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=config.dtype, attn_implementation=attn)
    n, plen, olen = (_int_env(k, d) for k, d in (("AB_REQUESTS", 256), ("AB_PROMPT", 512), ("AB_OUTPUT", 128)))
    hi = min(30000, model.config.vocab_size)
    rng = random.Random(0)
    prompts = [[rng.randrange(min(1000, hi // 2), hi) for _ in range(plen)] for _ in range(n)]
    generation = GenerationConfig(max_new_tokens=olen, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  eos_token_id=-1)
    batching = ContinuousBatchingConfig(num_blocks=_int_env("AB_NUM_BLOCKS", None if device == "cuda" else 512),
                                        max_batch_tokens=_int_env("AB_MAX_BATCH_TOKENS", None),
                                        max_requests_per_batch=_int_env("AB_MAX_SEQS", None))
    times = []
    for i in range(batches):
        t = time.perf_counter()
        outs = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching,
                                    persistent_manager=True)
        times.append(time.perf_counter() - t)
        assert len(outs) == n and all(len(o.generated_tokens) == olen for o in outs.values())
    model.destroy_cached_continuous_batching_manager()
    print("BATCH_TIMES", json.dumps(times))
