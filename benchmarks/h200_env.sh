# Sourced by the H200 scripts that run on vLLM staged into /tmp/site (benchmarks/h200_overhead.sh setup): the
# environment every step runs in, the staged models and the folder whose files the device tool brings back.
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
MODELS=/tmp/models
MODEL=$MODELS/llama3-8b
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
