#!/usr/bin/env bash
# A request's generation does not depend on its batch mates or the rank count (CPU backend): 200 requests
# (the tiny task's held-out prompts, prompts of different lengths) on a random tiny model, run with
# --batch-size 1, 7 and 32 on 1 rank, with --batch-size 7 on 3 ranks and with 2 GEMM threads, give
# byte-identical result files.
# Before the fix (GEMMs whose row count followed the batch), batch sizes 7 and 32 changed 2 of 200 texts.
# Usage: test_batch_invariance.sh /path/to/dgemma /path/to/heldout.jsonl
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
PROMPTS=${2:?prompts}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1

expect 0 "" -- "$DGEMMA" init --preset tiny --out model --dtype f32 --seed 5
GEN=(generate --model model --input "$PROMPTS" --max-new-tokens 16)
for bs in 1 7 32; do
  expect 0 "" -- "$DGEMMA" "${GEN[@]}" --batch-size "$bs" --output "b$bs.jsonl"
done
expect 0 "" -- "${MPI[@]}" -n 3 "$DGEMMA" "${GEN[@]}" --batch-size 7 --output r3.jsonl
expect 0 "2 CPU threads" -- "$DGEMMA" "${GEN[@]}" --batch-size 32 --threads 2 --output t2.jsonl
check "200 results" test "$(wc -l <b1.jsonl)" -eq 200
for f in b7 b32 r3 t2; do
  if cmp -s b1.jsonl "$f.jsonl"; then passed=$((passed + 1)); else
    failed=$((failed + 1))
    echo "FAIL: $f.jsonl differs from b1.jsonl in $(diff b1.jsonl "$f.jsonl" | grep -c '^<') lines"
  fi
done

echo "test_batch_invariance: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
