#!/usr/bin/env bash
# The speculative-decoding study on the H100, one call of the device tool per configuration list.
# Needs vLLM staged as ../shared/gpu/README.md says (carry .gpu-stage/p3 after p1 and p2).
#   bash benchmarks/h100_spec_study.sh CONFIGS [spec_study options...]
# Writes $OUT/study-<CONFIGS>/study.json and $OUT/study-<CONFIGS>.tar.gz (study.json, runs/<config>/<phase>/,
# engines/<config>/).
set -u
configs=$1; shift
bash .gpu-stage/p3/setup-on-gpu.sh || exit 3
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 4
out=${OUT:-/tmp/out}/study-${configs//,/_}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m servescope.studies.spec_study --models-dir "$PWD/.gpu-stage/p3/models" --out "$out" --configs "$configs" \
    --rates 0.25,1,4,16 --concurrency 8 --repeats 3 --num-requests 48 --phase-seconds 30 --warmup 16 "$@" \
    2>&1 | grep -E '^\{|Traceback|Error|error|not measured' | tail -60
rm -rf "$out"/engines/*/tables  # the phase runs hold every row; keep the engine's manifest and phases.json
tar -C "$out" -czf "$out.tar.gz" . && rm -rf "$out"/runs "$out"/engines  # the device tool brings back flat files
