#!/usr/bin/env bash
# vLLM against transformers' continuous batching on the H200, in one call of the device tool (< 10 min):
# llama3-8b with random weights that both engines load from the same files; offline, 128 requests x
# (512 prompt, 128 output) tokens, 2 batches per engine (the second measured); served at 4 and 16 req/s,
# 96 requests each after 16 warm-up requests; the same token budget (8192) on both engines.
# Needs vLLM staged as ../shared/gpu/README.md says (carry .gpu-stage/p3 after p1 and p2); transformers
# 5.17 is in the machine's image. Options after the script name override the study's (e.g. --arch llama3-1b,
# --rates 2,8, --skip-served); python3 -m servescope.studies.engine_vs_engine --help lists them.
# Writes $OUT/engine-vs-engine/: engine-vs-engine.json (machine, settings, every stage's results, compare
# and audit per pair; rewritten after each stage), runs.tar.gz (every run directory) and report-*/ (HTML + PNG).
#
# The two halves ran on separate leases of 2026-12-02: the offline half with the plain command
# (benchmarks/results/h200-engine-vs-engine-1.json; its served-transformers stage was skipped by the budget), the
# served half with
#     SERVESCOPE_COMMIT=afb8f0c bash benchmarks/h200_engine_vs_engine.sh --skip-offline
# (benchmarks/results/h200-engine-vs-engine-2.json: model 47 s, served-vllm 234 s on a fresh machine that compiled the
# model, served-transformers 194 s, compare-rate4 18 s, compare-rate16 14 s; 536 s in the device call). The first
# run's served prompts repeated across its bench calls (one seed); each call now has its own seed
# (engine_vs_engine.bench_seed), so its vLLM served runs are not comparable with the second's.
set -u
bash .gpu-stage/p3/setup-on-gpu.sh || exit 3
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 4
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
out=${OUT:-/tmp/out}/engine-vs-engine
timeout 575 python3 -m servescope.studies.engine_vs_engine --arch llama3-8b --device cuda --out "$out" \
    --model-dir /tmp/engine-vs-engine-model --requests 128 --prompt 512 --output 128 --batches 2 \
    --token-budget 8192 --offline-max-seqs 256 --served-max-seqs 1024 --rates 4,16 --served-requests 96 \
    --served-prompt 511 --warmup-requests 16 --max-model-len 4096 --offline-needs-s 90 --served-needs-s 120 \
    --budget-s 545 "$@" 2>&1 | grep -v -i warn | tail -40
ls -la "$out"
