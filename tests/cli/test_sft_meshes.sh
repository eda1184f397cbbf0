#!/usr/bin/env bash
# dgemma sft on every (world, ep) mesh computes what 1 rank computes, over whole runs:
#   - 10 steps on the tiny preset (8 experts, top-2, sliding and full layers) on meshes (1,1) (2,1) (2,2)
#     (4,1) (4,2) (4,4) with the same global batch of 4 examples: every step's diffusion, AR and total
#     loss, every step's grad norm and every final master parameter equal the (1,1) run's;
#   - a control on 1 rank that changes only the summation order (4 micro-batches of 1 accumulated instead
#     of one of 4) passes the same tolerances: they are what fp32 summation order alone produces;
#   - resume across meshes: saved at step 5 on (4,2), resumed on (2,1) and on (1,1) (the global batch is
#     kept: on 1 rank by accumulating 2 micro-batches of 2), steps 6-10 and the final parameters match the
#     uninterrupted run; resumed on the same mesh (4,2) they are bit-identical; a world size that cannot
#     make the saved global batch is refused with exit 2 naming both numbers;
#   - mesh errors: --ep that does not divide the world or the experts is exit 2 naming the numbers.
# Tolerances. The runs use --adam-eps 0.1 and lr 1e-3: with the recipe's eps = 1e-8 Adam turns gradient
# elements near zero (whose sign is decided by summation order) into ±lr updates, and the MoE top-k then
# flips routes, so two runs that differ only in summation order drift apart by ~1% in grad norm within
# 10 steps (measured: the 1-rank control does too). With eps = 0.1 the update stays proportional to the
# gradient and the runs stay at fp32 rounding distance. Measured worst differences over the six meshes and
# the control: 7.1e-7 on losses, 4.6e-5 on grad norms, 5.6e-7 of a tensor's max on parameters (the
# control alone: 4.5e-7, 3.7e-5, 4.8e-7). Tolerances, ~10-20x those: losses 1e-5, grad norm 5e-4,
# parameters 1e-5 of the tensor's max. A real sharding error (a lost or doubled slice, a wrong expert
# owner, a frozen tensor updated) moves the step-1 grad norm or the parameters by far more.
# Usage: test_sft_meshes.sh /path/to/dgemma /path/to/compare_runs
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
COMPARE=${2:?compare_runs}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1
COMMON=(--seq-len 64 --lr 1e-3 --min-lr 1e-4 --adam-eps 0.1 --export false)
TEN=(--steps 10 --warmup 2 --checkpoint-every 5 "${COMMON[@]}")
TOL=(--loss-rtol 1e-5 --norm-rtol 5e-4 --param-rtol 1e-5)

# run WORLD EP OUT [options...]: the global batch is 4 examples on every mesh.
run() {
  local n=$1 ep=$2 out=$3; shift 3
  expect 0 "step +10/10" -- "${MPI[@]}" -n "$n" "$DGEMMA" sft --out "$out" --ep "$ep" --micro-batch $((4 / n)) "${TEN[@]}" "$@"
}
same() {
  expect 0 "SAME" -- "$COMPARE" "$@" "${TOL[@]}"
  echo "$1 vs $2: $("$COMPARE" "$@" "${TOL[@]}" | head -n 2 | tr '\n' ' ')"
}

run 1 1 m11
expect 0 "step +10/10" -- "$DGEMMA" sft --out control --micro-batch 1 --accumulation 4 "${TEN[@]}"
same m11 control
for mesh in "2 1" "2 2" "4 1" "4 2" "4 4"; do
  set -- $mesh
  run "$1" "$2" "m$1$2"
  same m11 "m$1$2"
done
expect 0 "mesh world 4 = fsdp 4 \(dense units\), ep 2 x expert replicas 2" -- "${MPI[@]}" -n 4 "$DGEMMA" sft --out meshline --ep 2 --micro-batch 1 --steps 1 --warmup 0 --seq-len 64 --export false

# Resume across meshes: stop at step 5 on (4,2), resume on (4,2), (2,1), (1,1).
expect 42 "stopped at step 5" -- "${MPI[@]}" -n 4 "$DGEMMA" sft --out s42 --ep 2 --micro-batch 1 "${TEN[@]}" --stop-after 5
for target in "4 2 1 resumed" "2 1 2 resumed" "1 1 2 --accumulation 2 instead of 1"; do
  set -- $target
  cp -r s42 "r$1$2"
  expect 0 "${*:4}" -- "${MPI[@]}" -n "$1" "$DGEMMA" sft --out "r$1$2" --ep "$2" --micro-batch "$3" "${TEN[@]}" --resume
  same m42 "r$1$2" --from-step 6
done
# The fields of metrics.jsonl that must match bit for bit (elapsed time and throughput excluded).
losses() { sed -E 's/.*("ar_loss":[^,]*).*("diffusion_loss":[^,]*).*("grad_norm":[^,]*).*("loss":[^,]*).*("lr":[^,]*).*("step":[0-9]+).*/\6 \1 \2 \3 \4 \5/' "$1"; }
check "resume on the same mesh (4,2) is bit-exact" cmp -s <(losses m42/metrics.jsonl) <(losses r42/metrics.jsonl)
cp -r s42 bad
expect 2 "global batch of 4 examples.*--micro-batch 3 on 1 ranks" -- "$DGEMMA" sft --out bad --micro-batch 3 "${TEN[@]}" --resume

# Starting from a Hugging Face directory: every rank reads only its slices of the safetensors files (the
# expert tensors are stored transposed there, and a rank's slice may start and end inside an expert).
expect 0 "OK|wrote" -- "$DGEMMA" init --preset tiny --out hfmodel --dtype bf16 --seed 3
expect 0 "step +3/3" -- "$DGEMMA" sft --out h11 --model hfmodel --micro-batch 4 --steps 3 --warmup 1 "${COMMON[@]}"
expect 0 "step +3/3" -- "${MPI[@]}" -n 4 "$DGEMMA" sft --out h42 --model hfmodel --ep 2 --micro-batch 1 --steps 3 --warmup 1 "${COMMON[@]}"
same h11 h42

# Conversion reads the sliced checkpoint layout on any rank count: the (4,2) run's final checkpoint
# converted on 1 and on 3 ranks gives the same bytes.
expect 0 "wrote|MB" -- "$DGEMMA" convert --from h5 --to hf --in m42/checkpoints --out c1 --dtype bf16
expect 0 "wrote|MB" -- "${MPI[@]}" -n 3 "$DGEMMA" convert --from h5 --to hf --in m42/checkpoints --out c3 --dtype bf16
check "convert of a sliced checkpoint: 1 rank == 3 ranks" cmp -s c1/model.safetensors c3/model.safetensors

# Mesh errors.
expect 2 "--ep 3 does not divide the world size 2" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out e1 --ep 3 "${COMMON[@]}"
expect 2 "--ep 3 does not divide the model's 8 experts" -- "${MPI[@]}" -n 3 "$DGEMMA" sft --out e2 --ep 3 "${COMMON[@]}"
expect 2 "--ep 0 must be at least 1" -- "$DGEMMA" sft --out e3 --ep 0 "${COMMON[@]}"

echo "test_sft_meshes: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
