"""An offline vLLM script whose worker takes a profile window (record/profile_window.py).

usage: profile_generate.py MODEL_DIR RUN_DIR FIRST_STEP NUM_STEPS

Until the worker hooks call ProfileWindow.on_step themselves, this script installs the call
through vLLM's collective_rpc: each worker's model_runner.execute_model is wrapped (on the
instance, so servescope's own execute_model region runs inside it) to call on_step(step id)
before the step's regions start, as the hooks will.
"""

import sys


def install_window(worker, run_dir, first_step, num_steps):
    from pathlib import Path

    from servescope.patches.vllm.engine_core_hooks import step_id_of
    from servescope.record.profile_window import ProfileWindow
    from servescope.run.names import ProfileEvent

    window = ProfileWindow(Path(run_dir) / ProfileEvent.DIR, first_step, num_steps)
    runner = worker.model_runner
    original = runner.execute_model

    def execute_model(scheduler_output, *args, **kwargs):
        window.on_step(step_id_of(scheduler_output))
        return original(scheduler_output, *args, **kwargs)

    runner.execute_model = execute_model
    worker.servescope_profile_window = window
    return True


def close_window(worker):
    window = worker.servescope_profile_window
    window.close()
    return {"path": str(window.path) if window.path else None, "error": window.error}


if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model_dir, run_dir, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, max_model_len=1024,
              max_num_batched_tokens=128, max_num_seqs=8, seed=0)
    llm.collective_rpc(install_window, args=(run_dir, first, count))
    prompts = [{"prompt_token_ids": [(7 * i + j) % 1000 + 10 for j in range(20 + 9 * i)]} for i in range(12)]
    llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, detokenize=False, temperature=0.0))
    print(llm.collective_rpc(close_window))
