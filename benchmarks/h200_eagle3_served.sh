#!/usr/bin/env bash
# EAGLE-3 under served loads on the H200 (the crossover load of issue 18): `ar` against EAGLE-3 configurations at
# replay rates and a closed loop, one engine per configuration (servescope.studies.spec_study, the H100 study's
# driver: Azure conversation trace scaled to each rate, fresh prompts per phase, speedup and crossover per rate).
#   SERVESCOPE_COMMIT=<commit> bash benchmarks/h200_eagle3_served.sh [CONFIGS] [spec_study options...]
# after the three staging commands of ../shared/gpu/README.md (carry .gpu-stage/p3 with this one). CONFIGS defaults
# to ar,eagle3-k4-a2.5; a configuration's engine is stopped after ENGINE_TIMEOUT_S (default 270 s), keeping its
# finished phases, so two configurations fit one device call.
# Options after CONFIGS override the defaults below (argparse keeps the last). To place the crossover above 32 req/s
# (h200-eagle3-served-1 found EAGLE-3 ahead at every rate up to 32, where 160 requests made a 5 s burst):
#   bash benchmarks/h200_eagle3_served.sh ar,eagle3-k4-a2.5 --rates 8,32,64 --num-requests 960 --closed-requests 160
# (15 s of arrivals at every rate, the closed loop kept at 160 requests; about 225 s per configuration.)
# Writes $OUT/eagle3-served-<CONFIGS>/study.json and $OUT/eagle3-served-<CONFIGS>.tar.gz (runs per phase).
# Checked on the CPU build (tiny model, benchmarks/models/tiny-eagle3, vLLM's own rejection sampler: acceptance 0
# with a random head), 110 s on 2026-12-02:
#   VLLM_CPU_KVCACHE_SPACE=1 python -m servescope.studies.spec_study --models-dir M --target tiny --out O \
#     --configs ar,eagle3-k3 --head benchmarks/models/tiny-eagle3 --rates 2 --concurrency 0 --repeats 1 \
#     --num-requests 8 --phase-seconds 4 --warmup 2 --max-model-len 512
set -u
configs=${1:-ar,eagle3-k4-a2.5}; shift || true
bash .gpu-stage/p3/setup-on-gpu.sh || exit 3
source benchmarks/h200_env.sh
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 4
out=$OUT/eagle3-served-${configs//,/_}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m servescope.studies.spec_study --models-dir "$PWD/.gpu-stage/p3/models" --out "$out" --configs "$configs" \
    --head "$PWD/benchmarks/models/llama3-8b-eagle3" --rates 2,8,32 --concurrency 8 --repeats 2 --num-requests 160 \
    --phase-seconds 15 --warmup 16 --max-model-len 4096 --engine-timeout "${ENGINE_TIMEOUT_S:-270}" "$@" \
    2>&1 | grep -E '^\{|Traceback|Error|error|not measured' | tail -60
rm -rf "$out"/engines/*/tables  # the phase runs hold every row; keep the engine's manifest and phases.json
tar -C "$out" -czf "$out.tar.gz" . && rm -rf "$out"/runs "$out"/engines  # the device tool brings back flat files
