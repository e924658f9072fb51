"""A plain vLLM offline script, as a user would write it (no servescope import): transformers_offline.py's twin.

The same workload from the same environment variables (AB_REQUESTS prompts of AB_PROMPT random
token ids, AB_OUTPUT tokens each, EOS ignored, temperature 1), generated BATCHES times with
``LLM.generate``; last line ``BATCH_TIMES [s, ...]``. MODEL_DIR's weights are loaded when it has
some (``*.safetensors``), else vLLM's dummy weights. AB_MAX_MODEL_LEN (default 2048) bounds the
context; AB_ENGINE_ARGS (a JSON dict) adds engine arguments.

    python vllm_offline.py MODEL_DIR [BATCHES]
"""

import json
import os
import random
import sys
import time

if __name__ == "__main__":  # vLLM starts its engine processes from here
    from vllm import LLM, SamplingParams

    model_dir, batches = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4
    has_weights = any(name.endswith(".safetensors") for name in os.listdir(model_dir))
    llm = LLM(model=model_dir, load_format="auto" if has_weights else "dummy", skip_tokenizer_init=True,
              max_model_len=int(os.environ.get("AB_MAX_MODEL_LEN", "2048")), seed=0,
              **json.loads(os.environ.get("AB_ENGINE_ARGS", "{}")))
    n, plen, olen = (int(os.environ.get(k, d)) for k, d in (("AB_REQUESTS", 256), ("AB_PROMPT", 512), ("AB_OUTPUT", 128)))
    with open(os.path.join(model_dir, "config.json")) as f:
        hi = min(30000, json.load(f)["vocab_size"])
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(min(1000, hi // 2), hi) for _ in range(plen)]} for _ in range(n)]
    params = SamplingParams(max_tokens=olen, ignore_eos=True, detokenize=False, temperature=1.0)
    times = []
    for i in range(batches):
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        times.append(time.perf_counter() - t)
        assert all(len(o.outputs[0].token_ids) == olen for o in outs)
    print("BATCH_TIMES", json.dumps(times))
