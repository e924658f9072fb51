"""Build vLLM's engine configuration for draft heads and construct each draft model on the meta device (no
weights, no memory): the EAGLE-3 head of a target, or a target's own MTP layers. Prints one JSON line per head.

usage: draft_heads.py eagle3:TARGET_DIR:HEAD_DIR mtp:TARGET_DIR ...
"""

import json
import sys
import tempfile


def build(method: str, target: str, head: str | None) -> dict:
    import torch
    from vllm.config import replace, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models.registry import ModelRegistry

    spec = {"method": method, "num_speculative_tokens": 2, **({"model": head} if head else {})}
    config = EngineArgs(model=target, load_format="dummy", skip_tokenizer_init=True, max_model_len=4096,
                        speculative_config=spec).create_engine_config()
    draft = config.speculative_config.draft_model_config
    if not model_parallel_is_initialized():
        with set_current_vllm_config(config):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"file://{tempfile.mktemp()}")
            initialize_model_parallel(1, 1)
    model_class, _ = ModelRegistry.resolve_model_cls(draft.architectures, draft)
    # an EAGLE-3 head reads the target's config from vllm_config.model_config; MTP layers read their own
    vllm_config = config if method == "eagle3" else replace(config, model_config=draft)
    with set_current_vllm_config(vllm_config), torch.device("meta"):
        model = model_class(vllm_config=vllm_config)
    return {"method": config.speculative_config.method, "class": type(model).__name__,
            "draft_architectures": draft.architectures, "draft_max_model_len": draft.max_model_len,
            "target_is_moe": config.model_config.is_moe,
            "shapes": {name: list(p.shape) for name, p in model.named_parameters()}}


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        method, target, *head = spec.split(":")
        print(json.dumps(build(method, target, head[0] if head else None)), flush=True)
