#!/usr/bin/env bash
# EAGLE-3 on Model Runner V2 (async scheduling, CUDA graphs) on the H200, in ONE device command:
#   SERVESCOPE_COMMIT=<commit> bash benchmarks/h200_eagle3.sh [CONFIG,CONFIG,...]
#       after the three staging commands of ../shared/gpu/README.md (carry .gpu-stage/p3 with this one)
#   SERVESCOPE_COMMIT=<commit> EAGLE3_TARGET=mimo bash benchmarks/h200_eagle3.sh ar,mtp-k1-a1.5,mtp-k2-a1.5
#       MTP instead: the MiMo-7B-shaped target of benchmarks/models/mimo-7b-mtp drafts with its own MTP layer
#   bash benchmarks/h200_eagle3.sh --cpu-smoke
#       here, on the CPU build: the tiny model, ngram (SMOKE_CONFIGS=ngram-k3,eagle3-k3 adds EAGLE-3 with
#       benchmarks/models/tiny-eagle3, on the V1 runner, standard rejection sampling); what CI tests
#
# Default grid, run in this order while time is left (vLLM takes L in [1, k + 1], so k = 2 stops at L = 3):
#   ar  eagle3-k4-a2.5  eagle3-k2-a2.5  eagle3-k4-a1.5  eagle3-k4-a3.5  eagle3-k2-a1.5
# Each: llama3-8b (+ benchmarks/models/llama3-8b-eagle3), dummy weights, offline, one warm-up batch and 3
# measured batches of 64 requests x (512 prompt, 256 output) tokens, under `servescope run`.
# Estimated time (H200 facts in ../shared/gpu/README.md: engine start 48-52 s, 2 s per such batch):
# setup + install 40 s; ar 75 s; the first EAGLE-3 configuration of each k 90 s (compilation), the
# others ~55 s (vLLM's compile cache) -> about 7.5 min for all six. To stay under 9 minutes a
# configuration starts only while SECONDS + EAGLE3_CONFIG_S (80) <= EAGLE3_BUDGET_S (450), and each is
# cut at EAGLE3_BUDGET_S + 60 s: the last ones are skipped and named rather than run late (then run
# them in a second call, with ar again: `bash benchmarks/h200_eagle3.sh ar,eagle3-k2-a1.5`).
#
# $OUT gets (at most 8 files): <config>.json per configuration (servescope.studies.eagle3_study result),
# grid.json (each configuration against ar, times per configuration, skipped ones, the command) and
# runs.tar.gz (the run directories and the caller's deliveries). Exit 0: every configuration ran and
# passed its checks; 5: one was skipped for time (a failure code below wins over it); 6: a check failed (stderr lines EAGLE3-CHECK-FAILED say
# which: a missing region, GPU times missing, the acceptance observers disagreeing, ...); 7: a
# configuration's engine run failed. The JSONs are written in every case.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-/tmp/eagle3-out}
work=${EAGLE3_WORK:-/tmp/eagle3-work}
budget=${EAGLE3_BUDGET_S:-450}
per_config=${EAGLE3_CONFIG_S:-80}
rm -rf "$work" && mkdir -p "$out" "$work/runs" "$work/deliveries"

if [ "${1:-}" = "--cpu-smoke" ]; then
    py=${PYTHON:-python3}
    configs=${SMOKE_CONFIGS:-ngram-k3}
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    "$py" -m servescope model init "$work/tiny" --arch tiny >/dev/null || exit 3
    target=$work/tiny head=$here/models/tiny-eagle3
    batch_args=(--batches 1 --num-requests 4 --prompt-len 64 --output-len 24 --max-model-len 512)
    budget=${EAGLE3_BUDGET_S:-3600}  # no device clock here: a loaded CPU machine is slow, not out of time
else
    py=python3
    configs=${1:-ar,eagle3-k4-a2.5,eagle3-k2-a2.5,eagle3-k4-a1.5,eagle3-k4-a3.5,eagle3-k2-a1.5}
    bash .gpu-stage/p3/setup-on-gpu.sh || exit 3
    export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 4
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    target=$PWD/.gpu-stage/p3/models/llama3-8b head=$here/models/llama3-8b-eagle3
    [ "${EAGLE3_TARGET:-}" = mimo ] && target=$here/models/mimo-7b-mtp  # MTP: the target's own layer drafts
    batch_args=(--batches 3 --num-requests 64 --prompt-len 512 --output-len 256 --max-model-len 2048)
fi
IFS=, read -r -a names <<< "$configs"
if [ "${#names[@]}" -gt 6 ]; then echo "at most 6 configurations per call (8 files in \$OUT), got ${#names[@]}"; exit 2; fi

status=0 ran=() skipped=() seconds=()
for name in "${names[@]}"; do
    if (( SECONDS + per_config > budget )); then
        echo "EAGLE3-SKIPPED $name: $SECONDS s spent, budget $budget s"; skipped+=("$name"); [ $status -eq 0 ] && status=5; continue
    fi
    start=$SECONDS
    run=$work/runs/$name deliveries=$work/deliveries/$name.json
    timeout -k 20 $(( budget + 60 - SECONDS )) "$py" -m servescope run --out "$run" -- \
        "$py" -m servescope.studies.eagle3_study batch --config "$name" --target "$target" --head "$head" \
        "${batch_args[@]}" --out "$deliveries" > "$work/$name.log" 2>&1
    code=$?
    if [ $code -ne 0 ] || [ ! -s "$deliveries" ]; then
        echo "EAGLE3-RUN-FAILED $name (exit $code):"; tail -25 "$work/$name.log"; status=7
    elif ! "$py" -m servescope.studies.eagle3_study result "$run" --deliveries "$deliveries" --out "$out/$name.json"
    then
        [ $status -eq 0 ] && status=6
    fi
    [ -s "$out/$name.json" ] && ran+=("$out/$name.json")
    seconds+=("\"$name\": $(( SECONDS - start ))")
done

if [ "${#ran[@]}" -gt 0 ]; then
    "$py" -m servescope.studies.eagle3_study grid "${ran[@]}" --out "$work/grid-configs.json" > /dev/null
fi
"$py" - "$work/grid-configs.json" "$out/grid.json" "$0 $*" "${skipped[*]:-}" "{$(IFS=,; echo "${seconds[*]:-}")}" <<'EOF'
import json, os, sys
from servescope.run.machine import machine_facts
configs_path, out_path, command, skipped, seconds = sys.argv[1:6]
doc = json.load(open(configs_path)) if os.path.exists(configs_path) else {"configs": {}}
doc.update(skipped=skipped.split(), seconds_per_config=json.loads(seconds), machine=machine_facts(command.split()))
json.dump(doc, open(out_path, "w"), indent=1)
EOF
tar -C "$work" -czf "$out/runs.tar.gz" --exclude="*/phases" runs deliveries  # phases: servescope split RUN
echo "EAGLE3-DONE status $status: ran ${#ran[@]}, skipped ${#skipped[@]} in $SECONDS s; $(ls "$out" | wc -l) files in $out"
exit $status
