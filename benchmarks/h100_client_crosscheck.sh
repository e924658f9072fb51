#!/usr/bin/env bash
# servescope's client vs vLLM's own `vllm bench serve` client on one recorded `vllm serve` on the H100:
# llama3-8b target, draft_model llama3-1b (k=4, synthetic acceptance 2.5), 3 rounds of 48 requests,
# 4 in flight per client, 512-token prompts, 128 output tokens.
# Needs vLLM staged as ../shared/gpu/README.md says (carry .gpu-stage/p3 after p1 and p2).
# Writes $OUT/crosscheck-spec.json.
set -u
bash .gpu-stage/p3/setup-on-gpu.sh || exit 3
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 4
models=/tmp/models-with-tokenizer
for arch in llama3-8b llama3-1b; do python3 -m servescope model init "$models/$arch" --arch "$arch" >/dev/null || exit 5; done
spec='{"method": "draft_model", "model": "'$models'/llama3-1b", "num_speculative_tokens": 4, "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2.5}'
python3 -m servescope.studies.client_crosscheck --model "$models/llama3-8b" --out "${OUT:-/tmp/out}/crosscheck-spec.json" \
    --engine-args "--max-model-len 4096 --speculative-config '$spec'" --rounds 3 --requests 48 --concurrency 4 \
    --prompt-len 512 --output-len 128 "$@" 2>&1 | grep -v -i warning | tail -40
