"""A user's transformers continuous-batching script (no servescope import): writes request id -> generated ids.

usage: hf_generate.py MODEL_DIR OUT_JSON NUM_REQUESTS MAX_TOKENS TOKEN_BUDGET NUM_BLOCKS PAGE_SIZE MODE [SHARING]
MODE: 'batch' (model.generate_batch) or 'manager' (ContinuousBatchingManager: add_request, streamed results).
SHARING: 'share' (default: transformers' prefix sharing of complete KV blocks) or 'noshare'.
HF_DEVICE (environment): where the model runs, 'cpu' (default) or 'cuda' (then in bfloat16).
The model is the directory's config with random weights from a fixed seed; greedy decoding, EOS off; the
prompts are those of offline_generate.py (vLLM), so the two engines' runs share their workload.
"""

import inspect
import json
import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

model_dir, out_json = sys.argv[1], sys.argv[2]
num_requests, max_tokens, budget, num_blocks, page_size = (int(x) for x in sys.argv[3:8])
mode = sys.argv[8]
sharing = (sys.argv[9] if len(sys.argv) > 9 else "share") == "share"

torch.manual_seed(0)
device = os.environ.get("HF_DEVICE", "cpu")
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="sdpa",
                                         dtype=torch.float32 if device == "cpu" else torch.bfloat16).to(device)
prompts = [[(7 * i + j) % 1000 + 10 for j in range(20 + 9 * i)] for i in range(num_requests)]  # offline_generate.py's
generation = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1)
page = "page_size" if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters else "block_size"  # < 5.18
batching = ContinuousBatchingConfig(max_batch_tokens=budget, num_blocks=num_blocks, max_requests_per_batch=8,
                                    allow_block_sharing=sharing, **{page: page_size})
if mode == "batch":
    results = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching)
    outputs = {rid: r.generated_tokens for rid, r in results.items()}
else:
    outputs = {}
    with model.continuous_batching_context_manager(generation_config=generation,
                                                   continuous_batching_config=batching) as manager:
        for i, prompt in enumerate(prompts):
            manager.add_request(prompt, request_id=f"user-{i}", max_new_tokens=max_tokens, streaming=True)
        while len(outputs) < num_requests:
            result = manager.get_result(timeout=60)
            if result is None:
                raise SystemExit("no result within 60 s")
            if result.is_finished():
                outputs[result.request_id] = result.generated_tokens
ids = [f"req_{i}" if mode == "batch" else f"user-{i}" for i in range(num_requests)]  # generate_batch's own ids
with open(out_json, "w") as f:
    json.dump({"outputs": outputs, "prompt_tokens": dict(zip(ids, map(len, prompts)))}, f)
