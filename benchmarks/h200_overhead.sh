#!/usr/bin/env bash
# What tracing costs a user on the GPU machine (docs/overhead.md), one device command per step.
# First stage vLLM 0.26.0 (../shared/gpu/README.md, or benchmarks/gpu_restage.sh when the working tree is
# too large to travel with its first part); then, on the same machine, back to back:
#
#   carry .gpu-stage/p3:  bash benchmarks/h200_overhead.sh setup       # vLLM + wheels + servescope into /tmp/site
#   bash benchmarks/h200_overhead.sh offline     # 4 + 4 fresh-process arms, 256 x (512, 128), 6 batches after 1 warm-up
#   OUTPUTS=delta bash benchmarks/h200_overhead.sh offline   # the same with every step's tokens delivered: TTFT, TBT
#   bash benchmarks/h200_overhead.sh offline16   # the issue's small batch: 16 x (512, 256), delta outputs
#   bash benchmarks/h200_overhead.sh served      # 4 + 4 arms, 500 requests at 30/s (Poisson) after 64 warm-up requests
#                                                # (40/s saturated the H200 at 38/s: benchmarks/results/h200-overhead-served-1.json)
#   PARTS=frontend,scheduler,tokens bash benchmarks/h200_overhead.sh served   # the traced arms record only these
#                                                # parts (here: no worker regions): one part's share, by leaving it out
#   SUBSET_PARTS=frontend,scheduler,tokens ARMS=4 bash benchmarks/h200_overhead.sh served   # three kinds of arm in
#                                                # one comparison: untraced, traced (PARTS), traced with only SUBSET_PARTS;
#                                                # the left-out parts' share against the same untraced arms
#   SUBSET_ENV=SERVESCOPE_HELD_UPDATES=1 ARMS=4 bash benchmarks/h200_overhead.sh served   # the third kind traced as the
#                                                # second but with held updates (docs/overhead.md): does holding help?
#   bash benchmarks/h200_overhead.sh breakdown   # self-timing of every hook at batch 256 and 16 (one traced run each)
#   bash benchmarks/h200_overhead.sh served-breakdown   # the same for the served load at 30/s (one traced run)
#   bash benchmarks/h200_overhead.sh eagle3      # 4 + 4 arms with EAGLE-3 (k 4, synthetic acceptance 2.5, Model Runner V2):
#                                                # 64 x (512, 256) per batch, delta outputs (TTFT, TBT), 3 batches after 1
#
# Each writes its raw JSON under $OUT (the device tool brings it back): commit it under benchmarks/results/.
# SERVESCOPE_COMMIT names the commit in the results when the tree on the machine is no git checkout.
# A comparison starts no arm that would end after BUDGET_S seconds (default 540: a device call is 10 minutes) and
# then exits 3: call the same step again on the same machine, and it resumes (--resume) where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/h200_env.sh
OFFLINE_SHAPE=(--num-requests 256 --prompt-len 512 --output-len 128)
ENGINE_ARGS='{"max_model_len": 2048}'
BUDGET_S=${BUDGET_S:-540}
begun() { [ -f "$1/overhead.json" ] && echo --resume || true; }  # an earlier call's comparison: finish it

case "${1:-}" in
  setup)
    bash .gpu-stage/p3/setup-on-gpu.sh
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site .
    mkdir -p "$MODELS" && cp -r .gpu-stage/p3/models/* "$MODELS"/
    python3 -c "import vllm, servescope, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    ;;
  offline)
    dir=/tmp/oh-offline-${OUTPUTS:-final}
    python3 -m servescope overhead --model "$MODEL" --out "$dir" --summary-to "$OUT/h200-overhead-offline-${OUTPUTS:-final}.json" \
      --load offline --arms "${ARMS:-4}" "${OFFLINE_SHAPE[@]}" --batches 6 --warmup-batches 1 --engine-args "$ENGINE_ARGS" \
      --outputs "${OUTPUTS:-final}" --budget-s "$BUDGET_S" $(begun "$dir")
    # host-bound or GPU-bound? the EngineCore's phases per decode step, from the traced arms' own records
    python3 benchmarks/step_phases.py "$dir"/arms/*-on/run --out "$OUT/h200-offline-${OUTPUTS:-final}-step-phases.json"
    ;;
  offline16)
    python3 -m servescope overhead --model "$MODEL" --out /tmp/oh-offline16 --summary-to "$OUT/h200-overhead-offline16.json" \
      --load offline --arms "${ARMS:-4}" --num-requests 16 --prompt-len 512 --output-len 256 --batches 6 \
      --warmup-batches 1 --engine-args "$ENGINE_ARGS" --outputs delta --budget-s "$BUDGET_S" $(begun /tmp/oh-offline16)
    python3 benchmarks/step_phases.py /tmp/oh-offline16/arms/*-on/run --out "$OUT/h200-offline16-step-phases.json"
    ;;
  served)
    parts=${PARTS:-default}${SUBSET_PARTS:+-vs-$SUBSET_PARTS}${SUBSET_ENV:+-vs-${SUBSET_ENV%%=*}}
    dir=/tmp/oh-served-${parts//,/-}
    python3 -m servescope overhead --model "$MODEL" --out "$dir" --summary-to "$OUT/h200-overhead-served-${parts//,/-}.json" \
      --load served --arms "${ARMS:-4}" --num-requests 500 --rate "${RATE:-30}" --warmup-requests 64 \
      --prompt-len 512 --output-len 128 --engine-args "$ENGINE_ARGS" --parts "${PARTS:-default}" \
      ${SUBSET_PARTS:+--subset-parts "$SUBSET_PARTS"} ${SUBSET_ENV:+--subset-env "$SUBSET_ENV"} --budget-s "$BUDGET_S" $(begun "$dir")
    # every request's chunk times as the client saw them, both kinds of arm (no servescope record in them)
    tar czf "$OUT/h200-overhead-served-${parts//,/-}-client.tar.gz" -C "$dir" $(cd "$dir" && ls arms/*/result.json)
    # the EngineCore's phases per decode step in the traced arms: is the host's work hidden behind the GPU's?
    python3 benchmarks/step_phases.py $(ls -d "$dir"/arms/*-on/run "$dir"/arms/*-subset/run 2>/dev/null) \
      --out "$OUT/h200-served-${parts//,/-}-step-phases.json" || true
    ;;
  served-breakdown)
    rm -rf /tmp/sts
    python3 -m servescope run --out /tmp/sts --no-export --self-timing -- python3 servescope/overhead/user_scripts/served.py \
      "$MODEL" /tmp/sts.json --num-requests 500 --rate "${RATE:-30}" --warmup-requests 64 --engine-args "$ENGINE_ARGS" \
      > /tmp/sts.log 2>&1 || { tail -50 /tmp/sts.log; exit 1; }
    python3 benchmarks/hook_breakdown.py /tmp/sts --labels "served${RATE:-30}" --out "$OUT/h200-hook-breakdown-served.json" \
      --command "bash benchmarks/h200_overhead.sh served-breakdown"
    ;;
  eagle3)
    head=$PWD/benchmarks/models/llama3-8b-eagle3
    spec='{"method": "eagle3", "model": "'"$head"'", "num_speculative_tokens": 4, "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2.5}'
    python3 -m servescope overhead --model "$MODEL" --out /tmp/oh-eagle3 --summary-to "$OUT/h200-overhead-eagle3.json" \
      --load offline --arms "${ARMS:-4}" --num-requests 64 --prompt-len 512 --output-len 256 --batches 3 \
      --warmup-batches 1 --outputs delta --engine-args '{"max_model_len": 2048, "speculative_config": '"$spec"'}' \
      --budget-s "$BUDGET_S" $(begun /tmp/oh-eagle3)
    ;;
  breakdown)
    script=servescope/overhead/user_scripts/offline.py
    for n in 256 16; do
      rm -rf "/tmp/st$n"
      python3 -m servescope run --out "/tmp/st$n" --no-export --self-timing -- \
        python3 "$script" "$MODEL" "/tmp/st$n.json" --num-requests "$n" --prompt-len 512 --output-len 128 \
        --batches 3 --warmup-batches 1 --engine-args "$ENGINE_ARGS" > "/tmp/st$n.log" 2>&1 || { tail -50 "/tmp/st$n.log"; exit 1; }
    done
    python3 benchmarks/hook_breakdown.py /tmp/st256 /tmp/st16 --labels batch256,batch16 --out "$OUT/h200-hook-breakdown.json" \
      --command "bash benchmarks/h200_overhead.sh breakdown"
    ;;
  *)
    echo "usage: bash benchmarks/h200_overhead.sh setup|offline|offline16|served|eagle3|breakdown|served-breakdown" >&2
    exit 2
    ;;
esac
