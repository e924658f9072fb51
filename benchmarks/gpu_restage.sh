#!/usr/bin/env bash
# Re-split the staged vLLM (../shared/gpu/stage-vllm: .gpu-stage/p1 + p2) into three parts
# .gpu-stage/q1..q3 of ~39 MB each, for when the working tree has grown too large to travel
# with p1 (60 MB) under the device tool's 64 MiB per call. Then, on one machine, back to back:
#   call 1, carry .gpu-stage/q1:  mkdir -p /tmp/stage && cp .gpu-stage/q1/* /tmp/stage/
#   call 2, carry .gpu-stage/q2:  cp .gpu-stage/q2/* /tmp/stage/
#   call 3, carry .gpu-stage/q3:  cp .gpu-stage/q3/* /tmp/stage/ && bash benchmarks/gpu_restage.sh --join
#   then the jobs, carrying .gpu-stage/p3 (bash benchmarks/h100_spec_study.sh ...).
set -euo pipefail
if [ "${1:-}" = "--join" ]; then  # on the GPU machine: rebuild the two parts setup-on-gpu.sh expects
    cd /tmp/stage
    cat vpart.0 vpart.1 vpart.2 > /tmp/vllm-all
    size=$(cat "$OLDPWD/.gpu-stage/q3/p1.size")
    head -c "$size" /tmp/vllm-all > vllm.tar.xz.00
    tail -c +"$((size + 1))" /tmp/vllm-all > vllm.tar.xz.01
    rm -f vpart.* /tmp/vllm-all
    ls -l /tmp/stage
    exit 0
fi
p1=.gpu-stage/p1/vllm.tar.xz.00
p2=.gpu-stage/p2/vllm.tar.xz.01
[ -f "$p1" ] && [ -f "$p2" ] || { echo "no staged vLLM: run bash ../shared/gpu/stage-vllm first"; exit 3; }
total=$(( $(stat -c %s "$p1") + $(stat -c %s "$p2") ))
part=$(( (total + 2) / 3 ))
mkdir -p .gpu-stage/q1 .gpu-stage/q2 .gpu-stage/q3
cat "$p1" "$p2" | split -b "$part" -d -a 1 - /tmp/vpart.
for i in 0 1 2; do mv "/tmp/vpart.$i" ".gpu-stage/q$((i + 1))/vpart.$i"; done
stat -c %s "$p1" > .gpu-stage/q3/p1.size
du -sh .gpu-stage/q*
