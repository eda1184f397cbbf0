#!/usr/bin/env bash
# Strict-device mode end to end (DGEMMA_STRICT_DEVICE=1: inside a step, host access to the model's
# tensors outside op implementations aborts): `dgemma sft` on the tiny model, 5 steps on 2 ranks with
# expert parallelism, runs to the end in that mode and gives bit-identical metrics to the normal CPU run;
# it reports its named host reads.
# Usage: test_strict.sh /path/to/dgemma
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1
losses() { sed -E 's/.*("ar_loss":[^,]*).*("diffusion_loss":[^,]*).*("grad_norm":[^,]*).*("loss":[^,]*).*("lr":[^,]*).*("step":[0-9]+).*/\6 \1 \2 \3 \4 \5/' "$1"; }

SFT=(sft --steps 5 --warmup 1 --micro-batch 2 --seq-len 64 --ep 2 --export false)
expect 0 "step +5/5" -- "${MPI[@]}" -n 2 "$DGEMMA" "${SFT[@]}" --out normal
expect 0 "strict-device mode: host reads in step 1: ar_loss=1 ar_tokens=1 diffusion_loss=1 diffusion_tokens=1 grad_norm=[0-9]+ moe_counts=[0-9]+" -- \
  env DGEMMA_STRICT_DEVICE=1 "${MPI[@]}" -n 2 "$DGEMMA" "${SFT[@]}" --out strict
check "sft: strict-device run == normal run, bit for bit" cmp -s <(losses normal/metrics.jsonl) <(losses strict/metrics.jsonl)

echo "test_strict: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
