"""A user's script: vLLM's offline LLM over token-id prompts. servescope reaches it only
through the environment (`servescope run`), exactly as it reaches any user's script.

usage: offline_generate.py MODEL_DIR OUT_JSON [NUM_REQUESTS] [MAX_TOKENS] [MAX_NUM_BATCHED_TOKENS]
"""

import json
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model_dir, out_json = sys.argv[1], sys.argv[2]
    num_requests = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    token_budget = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    # A small KV cache and token budget force chunked prefill and queueing.
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, max_model_len=1024,
              max_num_batched_tokens=token_budget, max_num_seqs=8, seed=0)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 1000 + 10 for j in range(20 + 9 * i)]}
               for i in range(num_requests)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False, temperature=0.0)
    outputs = llm.generate(prompts, params)
    json.dump({o.request_id: list(o.outputs[0].token_ids) for o in outputs}, open(out_json, "w"))
