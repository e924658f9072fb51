"""instrument() into one run directory, generate, uninstrument(); instrument() into a second one, generate,
uninstrument(): the second run must start afresh (steps from 0, its own engine facts), the first must be
closed. One process (VLLM_ENABLE_V1_MULTIPROCESSING=0: the EngineCore lives here, as instrument() reaches it).

usage: instrument_twice.py MODEL_DIR RUN1 RUN2 OUT_JSON
"""

import json
import sys

if __name__ == "__main__":
    import servescope

    model_dir, run1, run2, out = sys.argv[1:5]
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": [10 + i + j for j in range(16)]} for i in range(4)]
    params = SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False, temperature=0.0)
    servescope.instrument(run1)
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, max_model_len=256, seed=0)
    first = llm.generate(prompts, params)
    servescope.uninstrument()
    servescope.instrument(run2)
    second = llm.generate(prompts, params)
    servescope.uninstrument()
    untraced = llm.generate(prompts, params)
    json.dump({"outputs": [[list(o.outputs[0].token_ids) for o in r] for r in (first, second, untraced)]},
              open(out, "w"))
