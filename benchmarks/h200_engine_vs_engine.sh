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
# Next lease: the served half only. The run of 2026-12-02 (benchmarks/results/h200-engine-vs-engine-1.json)
# finished the offline half; its served-transformers stage was skipped by the budget (97 s left, needs ~120 s),
# so no served pair was compared. Run
#     bash benchmarks/h200_engine_vs_engine.sh --skip-offline
# (model, served-vllm, served-transformers, compare-rate4, compare-rate16). Time, from the recorded stages:
# model 38 s and served-vllm 177 s (h200-engine-vs-engine-1.json, stage_s; that vLLM server loaded its
# torch.compile artifacts from the offline run's cache: "torch.compile took 5.84 s" in runs/vllm-server.log
# against 23.39 s in runs/vllm-offline.log of h200-engine-vs-engine-1/runs.tar.gz, so count ~20 s more on a
# fresh machine), served-transformers 195 s (h200-engine-vs-engine-attempt-1.json, same settings) and
# compare-offline's 18.5 s as a guide for each compare: ~470 s of the 545 s budget. The served
# prompts of that run repeated across its bench calls (one seed); each call now has its own seed
# (engine_vs_engine.bench_seed), so its vLLM served runs are not comparable with the next lease's.
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
