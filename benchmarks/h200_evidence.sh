#!/usr/bin/env bash
# Independent evidence on the GPU machine (docs/gpu-validation.md), one device command, after
# `bash benchmarks/h200_overhead.sh setup` on the same machine:
#   kernel time by region and step (a torch.profiler window joined to globaltimer-stamped regions) under
#   CUDA graphs (FULL decode steps, PIECEWISE prefill steps), eager, and two speculative engines (draft against
#   verify: draft_model on Model Runner V1, EAGLE-3 on Model Runner V2); then acceptance observed twice
#   (servescope's records vs the caller's deliveries) with draft_model speculation.
# Raw JSON under $OUT; commit it under benchmarks/results/. STEPS="graphs eager" runs only those steps
# (graphs eager draft-kt eagle3-kt spec).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
MODELS=/tmp/models
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
status=0
kernel_time() {  # NAME ENGINE_ARGS [FIRST:COUNT]
  rm -rf "/tmp/kt-$1"
  SERVESCOPE_PROFILE_STEPS=${3:-${PROFILE_STEPS:-66:12}} python3 -m servescope run --parts default,gpu_stamps --out "/tmp/kt-$1" \
    --no-export -- python3 servescope/overhead/user_scripts/offline.py "$MODELS/llama3-8b" "/tmp/kt-$1.json" \
    --num-requests 64 --prompt-len 512 --output-len 64 --batches 1 --warmup-batches 1 --engine-args "$2" \
    > "/tmp/kt-$1.log" 2>&1 || { tail -40 "/tmp/kt-$1.log"; status=1; return; }
  python3 -m servescope.studies.kernel_time "/tmp/kt-$1" --out "$OUT/h200-kernel-time-$1.json" || status=1
}
STEPS=${STEPS:-graphs eager draft-kt eagle3-kt spec}  # a subset saves device time (spec repeated its counts exactly: h200-spec-acceptance-2.json)
case " $STEPS " in *" graphs "*) kernel_time graphs '{"max_model_len": 2048}' ;; esac
case " $STEPS " in *" eager "*) kernel_time eager '{"max_model_len": 2048, "enforce_eager": true}' ;; esac
# speculative engines, draft against verify: a batch is ~29 steps at acceptance 2.5 (64 tokens / 2.5 + prefill), so
# steps 36-47 lie in the measured batch. draft_model runs on Model Runner V1, EAGLE-3 on Model Runner V2.
synthetic='"rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2.5'
case " $STEPS " in *" draft-kt "*) kernel_time draft-model '{"max_model_len": 2048, "speculative_config": {"method":
  "draft_model", "model": "'"$MODELS"'/llama3-1b", "num_speculative_tokens": 4, '"$synthetic"'}}' 36:12 ;; esac
case " $STEPS " in *" eagle3-kt "*) kernel_time eagle3 '{"max_model_len": 2048, "speculative_config": {"method":
  "eagle3", "model": "'"$PWD"'/benchmarks/models/llama3-8b-eagle3", "num_speculative_tokens": 4, '"$synthetic"'}}' 36:12 ;; esac
case " $STEPS " in *" spec "*) ;; *) exit $status ;; esac
python3 -m servescope.studies.spec_check --target "$MODELS/llama3-8b" --draft "$MODELS/llama3-1b" --method draft_model \
  --k 4 --acceptance-length 2.5 --num-requests 64 --prompt-len 512 --output-len 128 --run-dir /tmp/spec-run \
  --out "$OUT/h200-spec-acceptance.json" > /tmp/spec.log 2>&1 || { tail -40 /tmp/spec.log; status=1; }
exit $status
