"""A user's script: vLLM's offline LLM with tensor / pipeline parallelism across worker processes (CPU build).

usage: parallel_generate.py MODEL_DIR OUT_JSON TP PP [EAGER] [NUM_REQUESTS] [MAX_TOKENS]

On the CPU build every worker binds its OpenMP threads to cores of its own (VLLM_CPU_OMP_THREADS_BIND,
one '|'-separated list per worker: the caller sets it; 'auto' needs a NUMA node per worker).
"""

import json
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model_dir, out_json = sys.argv[1], sys.argv[2]
    tp, pp = int(sys.argv[3]), int(sys.argv[4])
    eager = len(sys.argv) > 5 and sys.argv[5] == "eager"
    num_requests = int(sys.argv[6]) if len(sys.argv) > 6 else 6
    max_tokens = int(sys.argv[7]) if len(sys.argv) > 7 else 8
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, max_model_len=512,
              max_num_batched_tokens=128, max_num_seqs=4, seed=0, tensor_parallel_size=tp,
              pipeline_parallel_size=pp, distributed_executor_backend="mp", enforce_eager=eager)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 1000 + 10 for j in range(20 + 9 * i)]}
               for i in range(num_requests)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False, temperature=0.0)
    outputs = llm.generate(prompts, params)
    json.dump({o.request_id: list(o.outputs[0].token_ids) for o in outputs}, open(out_json, "w"))
