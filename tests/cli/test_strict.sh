#!/usr/bin/env bash
# Strict-device mode end to end (DGEMMA_STRICT_DEVICE=1: inside a step, host access to the model's
# tensors outside op implementations aborts): `dgemma sft` on the tiny model, 5 steps on 2 ranks with
# expert parallelism, runs to the end in that mode and gives bit-identical metrics to the normal CPU run;
# it reports its named host reads. `dgemma generate` on the tiny task's held-out prompts, on 1 and 2 ranks
# and with the stopping rule firing, runs to the end in that mode and writes byte-identical results; it
# reports its host reads per batch (the stop flags of every step, the argmax canvas of every canvas).
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

# Activation recompute: the layers' forward runs again before their backward, from the saved inputs:
# bit-identical results (in strict-device mode too).
expect 0 "step +5/5" -- env DGEMMA_STRICT_DEVICE=1 "${MPI[@]}" -n 2 "$DGEMMA" "${SFT[@]}" --out recompute --recompute true
check "sft --recompute true == normal run, bit for bit" cmp -s <(losses normal/metrics.jsonl) <(losses recompute/metrics.jsonl)

# No allocation in the steady-state step: tensors of a step come from the host pool (layers/tensor.h);
# after the first step has warmed it, a step takes nothing from the system (1 rank, and 2 ranks without
# EP; with EP the exchanged row counts vary with the routing, so a step still allocates when a routing
# needs more buffers of one size class than any step before: a few per step at first, rarer later).
expect 0 "step +12/12" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --steps 12 --warmup 1 --micro-batch 2 --seq-len 64 --export false --out alloc
allocs=$(sed -E 's/.*"host_allocations":([0-9]+).*/\1/' alloc/metrics.jsonl | tr '\n' ' ')
check "steady state allocates nothing (host allocations per step: $allocs)" \
  awk -v a="$allocs" 'BEGIN {n = split(a, v, " "); if (n != 12 || v[1] == 0) exit 1; for (i = 2; i <= n; i++) if (v[i] != 0) exit 1}'

# generate: the tiny model with the built-in tokenizer, 6 held-out prompts in batches of 4 (2 batches).
"$DGEMMA" init --preset tiny --out gmodel --dtype f32 --seed 5 > /dev/null || { echo "init failed"; exit 1; }
head -6 "$HERE/../../jobs/examples/tiny-task/heldout.jsonl" > prompts.jsonl
GEN=(generate --model gmodel --input prompts.jsonl --max-new-tokens 16 --max-denoising-steps 6 --seed 3 --token-ids
     --batch-size 4)
expect 0 "6 results written" -- "$DGEMMA" "${GEN[@]}" --output gen_normal.jsonl
expect 0 "strict-device mode: host reads per batch: batch 1 \(4 requests, 12 decoder steps\): canvas=2 stop_flags=12" -- \
  env DGEMMA_STRICT_DEVICE=1 "$DGEMMA" "${GEN[@]}" --output gen_strict.jsonl
check "generate: strict-device run == normal run, byte for byte" cmp -s gen_normal.jsonl gen_strict.jsonl
expect 0 "6 results written" -- env DGEMMA_STRICT_DEVICE=1 "${MPI[@]}" -n 2 "$DGEMMA" "${GEN[@]}" --output gen_strict2.jsonl
check "generate: strict-device run on 2 ranks == normal run" cmp -s gen_normal.jsonl gen_strict2.jsonl
# Every row stops after its first step (stability threshold 0, any entropy confident): 1 step per canvas.
STOP=(--stability-threshold 0 --confidence-threshold 1e9)
expect 0 "6 results written" -- "$DGEMMA" "${GEN[@]}" "${STOP[@]}" --output stop_normal.jsonl
expect 0 "host reads per batch: batch 2 \(2 requests, 2 decoder steps\): canvas=2 stop_flags=2" -- \
  env DGEMMA_STRICT_DEVICE=1 "$DGEMMA" "${GEN[@]}" "${STOP[@]}" --output stop_strict.jsonl
check "generate with early stops: strict-device run == normal run" cmp -s stop_normal.jsonl stop_strict.jsonl
check "the results carry token ids" grep -q '"token_ids":\[' gen_strict.jsonl

echo "test_strict: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
