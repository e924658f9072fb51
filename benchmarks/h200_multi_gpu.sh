#!/usr/bin/env bash
# Tensor parallelism on a two-GPU machine (nvidia-h200-x2; docs/multi-gpu.md): llama3-8b at TP=1 and TP=2, what
# tracing costs at each (`servescope overhead`), and one recorded run of each with per-rank regions and timed
# collectives for analyze / compare (skew, communication, GPU compute vs communication vs host time).
# First stage vLLM as for benchmarks/h200_overhead.sh (../shared/gpu/README.md, or benchmarks/gpu_restage.sh when
# the working tree is too large to travel with its first part); then, on the same machine, back to back:
#
#   carry .gpu-stage/p3:  bash benchmarks/h200_multi_gpu.sh setup   # vLLM + wheels + servescope into /tmp/site
#   bash benchmarks/h200_multi_gpu.sh overhead 1    # TP=1: 4 + 4 fresh-process arms, 256 x (512, 128), CUDA graphs
#   bash benchmarks/h200_multi_gpu.sh overhead 2    # TP=2: the same on both GPUs
#   bash benchmarks/h200_multi_gpu.sh overhead 2 collectives   # TP=2 eager, --parts default,collectives
#   bash benchmarks/h200_multi_gpu.sh ranks         # one eager run per TP with --parts default,collectives;
#                                                   # analyze --json of each, compare --json TP=1 vs TP=2
#
# NVLink multicast can put the host's shared GPUs out of service: NCCL_NVLS_ENABLE=0,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are exported here, so every process inherits them
# (servescope overhead's arms, `servescope run`, vLLM's EngineCore and its workers all pass the environment on);
# a watcher checks every python process this script started while a step runs and writes what it saw to
# $OUT/multicast-env-check.txt (a step fails if a process ran without them).
# Each step writes its raw JSON under $OUT (the device tool brings it back): commit it under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
MULTICAST_OFF=(NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1)
export "${MULTICAST_OFF[@]}"
source benchmarks/h200_env.sh
SHAPE=(--num-requests 256 --prompt-len 512 --output-len 128)

engine_args() {  # engine_args TP [EAGER]: the JSON object of vLLM engine arguments
    echo "{\"max_model_len\": 2048, \"tensor_parallel_size\": $1${2:+, \"enforce_eager\": true}}"
}

descendants() {  # the pids of every process this script started, at any depth
    ps -e -o pid=,ppid= | awk -v root=$$ '{parent[$1] = $2}
        END {for (pid in parent) {p = pid; while (p > 1 && p != root) p = parent[p]; if (p == root && pid != root) print pid}}'
}

watch_multicast_env() {  # in the background: every python process this script started must carry the variables
    local log=$OUT/multicast-env-check.txt
    while sleep 1; do
        for pid in $(descendants); do
            grep -q python "/proc/$pid/cmdline" 2>/dev/null || continue
            local vars; vars=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null) || continue
            for setting in "${MULTICAST_OFF[@]}"; do
                grep -qx "$setting" <<< "$vars" || echo "MISSING $setting in pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline")" >> "$log"
            done
            echo "$pid" >> "$log.seen"
        done
    done
}

with_env_check() {  # with_env_check COMMAND...: run it with the watcher on; fail if one of its processes lacked a variable
    watch_multicast_env & local watcher=$!
    local status=0
    "$@" || status=$?
    kill "$watcher"; wait "$watcher" 2>/dev/null || true
    echo "$*: python processes seen so far: $(sort -u "$OUT/multicast-env-check.txt.seen" 2>/dev/null | wc -l)" >> "$OUT/multicast-env-check.txt"
    if grep -q MISSING "$OUT/multicast-env-check.txt"; then grep MISSING "$OUT/multicast-env-check.txt" | head >&2; return 1; fi
    return "$status"
}

case "${1:-}" in
  setup)
    bash benchmarks/h200_overhead.sh setup
    python3 -c "import torch; print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
    nvidia-smi topo -m
    ;;
  overhead)
    tp=${2:?usage: overhead TP [collectives]}
    if [ "${3:-}" = collectives ]; then  # eager, collectives timed: the whole tracing cost with the part on
      name=tp$tp-eager-collectives parts=default,collectives args=$(engine_args "$tp" eager)
    else
      name=tp$tp parts=default args=$(engine_args "$tp")
    fi
    with_env_check python3 -m servescope overhead --model "$MODEL" --out "/tmp/oh-$name" --parts "$parts" \
      --summary-to "$OUT/h200x2-overhead-offline-$name.json" --load offline --arms "${ARMS:-4}" "${SHAPE[@]}" \
      --batches 6 --warmup-batches 1 --engine-args "$args"
    ;;
  ranks)
    script=servescope/overhead/user_scripts/offline.py
    for tp in 1 2; do
      rm -rf "/tmp/ranks-tp$tp"
      with_env_check python3 -m servescope run --out "/tmp/ranks-tp$tp" --no-export --parts default,collectives -- \
        python3 "$script" "$MODEL" "/tmp/ranks-tp$tp.json" "${SHAPE[@]}" --batches 3 --warmup-batches 1 \
        --engine-args "$(engine_args "$tp" eager)" > "/tmp/ranks-tp$tp.log" 2>&1 || { tail -50 "/tmp/ranks-tp$tp.log"; exit 1; }
      python3 -m servescope analyze /tmp/ranks-tp$tp --json > "$OUT/h200x2-ranks-tp$tp-analyze.json"
      cp "/tmp/ranks-tp$tp"/engine/*-worker.json "$OUT/" 2>/dev/null || true
    done
    python3 -m servescope compare /tmp/ranks-tp1 /tmp/ranks-tp2 --json > "$OUT/h200x2-ranks-compare-tp1-tp2.json"
    python3 -m servescope compare /tmp/ranks-tp1 /tmp/ranks-tp2 | tee "$OUT/h200x2-ranks-compare-tp1-tp2.txt"
    ;;
  *)
    echo "usage: bash benchmarks/h200_multi_gpu.sh setup|overhead TP [collectives]|ranks" >&2
    exit 2
    ;;
esac
