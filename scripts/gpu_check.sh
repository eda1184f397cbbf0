#!/usr/bin/env bash
# The GPU check: one prepared script for one H100/H200 (at most 8 minutes), which records what it measured
# in docs/gpu-results.md. Every stage runs even when an earlier one failed; each is reported as PASS, FAIL
# or NOT READY (the job refused --device cuda because its device-resident runtime is not complete yet).
#
#   1. the CUDA op tables: ctest -R cuda (every CUDA op against the CPU op)
#   2. sft, 20 steps on the tiny model, --device cuda vs --device cpu: per-step losses within 3e-2
#      relative (bf16 compute copies and activations against fp32: ~8 significant bits, over 20 steps)
#   3. generate on the tiny task's held-out prompts, cuda vs cpu, with a fine-tuned tiny model: committed
#      tokens agree on >= 99% of positions, exact match >= 90% on cuda
#   4. bench at the 26B-A4B layer shapes with random bf16 weights: the model ops (bench --what ops),
#      FSDP and EP traffic (bench --what fsdp / ep)
#
# Usage: scripts/gpu_check.sh [--device cuda|cpu] [--out FILE]
#   --device cpu is the dry run: the same stages with both sides on the CPU and small settings, so that the
#   script itself is tested on machines without a GPU (tests/cli/test_gpu_check.sh runs it).
# Environment: BUILD_DIR (default build), WORK (scratch, default a temporary directory), SFT_STEPS (the
# fine-tuning of stage 3; default 600 on cuda, 40 in the dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUT_MD=docs/gpu-results.md
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT_MD=$2; shift 2 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { echo "gpu_check: --device must be cuda or cpu" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OPENBLAS_NUM_THREADS=1
BUILD=${BUILD_DIR:-build}
DGEMMA="$BUILD/app/dgemma"
[[ -x $DGEMMA ]] || { echo "gpu_check: $DGEMMA not built (scripts/build.sh)" >&2; exit 2; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
TASK=jobs/examples/tiny-task
DRY=$([[ $DEVICE == cpu ]] && echo 1 || echo 0)
start=$(date +%s)
report=()
row() { report+=("| $1 | $2 | $3 |"); echo "gpu_check: $1: $2 ($3)"; }
# status of a job that may refuse --device cuda (exit 2 with "not complete yet")
job_status() { if [[ $1 -eq 0 ]]; then echo PASS; elif grep -q "not complete yet" "$2"; then echo "NOT READY"; else echo FAIL; fi; }

# 1. CUDA op tables
(cd "$BUILD" && ctest -R cuda --output-on-failure) >"$WORK/ctest.log" 2>&1
rc=$?
summary=$(grep -E "tests passed|tests failed" "$WORK/ctest.log" | tail -n 1)
skipped=$(grep -c '\*\*\*Skipped' "$WORK/ctest.log")
if [[ $rc -ne 0 ]]; then row "CUDA op tables (ctest -R cuda)" FAIL "$summary"
elif [[ $skipped -gt 0 ]]; then row "CUDA op tables (ctest -R cuda)" "SKIPPED" "$summary; $skipped skipped: no usable GPU"
else row "CUDA op tables (ctest -R cuda)" PASS "$summary"; fi

# 2. sft 20 steps, device vs cpu
SFT=(sft --steps 20 --warmup 2 --micro-batch 8 --seq-len 64 --export false --checkpoint-every 0)
"$DGEMMA" "${SFT[@]}" --device cpu --out "$WORK/sft-cpu" >"$WORK/sft-cpu.log" 2>&1
"$DGEMMA" "${SFT[@]}" --device "$DEVICE" --out "$WORK/sft-dev" >"$WORK/sft-dev.log" 2>&1
rc=$?
st=$(job_status $rc "$WORK/sft-dev.log")
if [[ $st == PASS ]]; then
  worst=$(paste -d' ' <(sed -E 's/.*"loss":([^,}]*).*/\1/' "$WORK/sft-cpu/metrics.jsonl") \
                      <(sed -E 's/.*"loss":([^,}]*).*/\1/' "$WORK/sft-dev/metrics.jsonl") |
          awk '{d=$1-$2; if (d<0) d=-d; r=d/$1; if (r>w) w=r} END {printf "%.3g", w}')
  awk -v w="$worst" 'BEGIN {exit !(w <= 3e-2)}' || st=FAIL
  row "sft 20 steps, $DEVICE vs cpu" "$st" "worst per-step loss difference $worst relative (tolerance 3e-2)"
else
  row "sft 20 steps, $DEVICE vs cpu" "$st" "$(tail -n 1 "$WORK/sft-dev.log")"
fi

# 3. generate held-out prompts with a fine-tuned tiny model, device vs cpu
steps=${SFT_STEPS:-$([[ $DRY == 1 ]] && echo 40 || echo 600)}
nheld=$([[ $DRY == 1 ]] && echo 20 || echo 200)
head -n "$nheld" "$TASK/heldout.jsonl" >"$WORK/heldout.jsonl"
"$DGEMMA" init --preset tiny --out "$WORK/tiny" --dtype f32 --seed 0 >/dev/null 2>&1
"$DGEMMA" sft --model "$WORK/tiny" --data "$TASK/train.jsonl" --out "$WORK/ft" --steps "$steps" --warmup $((steps / 10)) --export-dtype f32 \
  --device "$DEVICE" >"$WORK/ft.log" 2>&1 ||
  "$DGEMMA" sft --model "$WORK/tiny" --data "$TASK/train.jsonl" --out "$WORK/ft" --steps "$steps" --warmup $((steps / 10)) --export-dtype f32 \
    --device cpu >"$WORK/ft.log" 2>&1
GEN=(generate --model "$WORK/ft/hf-final" --input "$WORK/heldout.jsonl" --max-new-tokens 16 --overwrite)
"$DGEMMA" "${GEN[@]}" --device cpu --output "$WORK/gen-cpu.jsonl" >"$WORK/gen-cpu.log" 2>&1
"$DGEMMA" "${GEN[@]}" --device "$DEVICE" --output "$WORK/gen-dev.jsonl" >"$WORK/gen-dev.log" 2>&1
rc=$?
st=$(job_status $rc "$WORK/gen-dev.log")
acc=$(grep -oE "exact match [0-9]+/[0-9]+" "$WORK/gen-dev.log" | tail -n 1)
if [[ $st == PASS ]]; then
  same=$(paste -d'\t' "$WORK/gen-cpu.jsonl" "$WORK/gen-dev.jsonl" | awk -F'\t' '{n++; if ($1 == $2) s++} END {printf "%d/%d", s, n}')
  row "generate held-out, $DEVICE vs cpu" "$st" "identical result lines $same; $acc on $DEVICE (fine-tuned $steps steps)"
else
  row "generate held-out, $DEVICE vs cpu" "$st" "$(tail -n 1 "$WORK/gen-dev.log")"
fi

# 4. bench at the 26B-A4B shapes (ops), FSDP and EP traffic
if [[ $DRY == 1 ]]; then OPS=(--hidden 256 --vocab 4096 --tokens 256 --iters 2); else OPS=(--iters 10); fi
"$DGEMMA" bench --what ops --device "$DEVICE" "${OPS[@]}" >"$WORK/bench-ops.log" 2>&1
rc=$?
row "bench --what ops ($([[ $DRY == 1 ]] && echo small shapes || echo 26B-A4B shapes))" \
  "$([[ $rc -eq 0 ]] && echo PASS || echo FAIL)" "$(grep -c " ms " "$WORK/bench-ops.log") timings"
"$DGEMMA" bench --what fsdp --world 8 --ep 8 >"$WORK/bench-fsdp.log" 2>&1
row "bench --what fsdp (26B-A4B, world 8, ep 8)" "$([[ $? -eq 0 ]] && echo PASS || echo FAIL)" "bytes per unit"
"$DGEMMA" bench --what ep --world 8 --ep 8 --dtype bf16 >"$WORK/bench-ep.log" 2>&1
row "bench --what ep (26B-A4B, world 8, ep 8)" "$([[ $? -eq 0 ]] && echo PASS || echo FAIL)" \
  "$(grep -oE "ratio ours/reference = [0-9.]+" "$WORK/bench-ep.log" | head -n 1)"
# batch-invariant GEMM cost (generate --batch-invariant): decode-sized and prompt-sized rows, both modes
if [[ $DRY == 1 ]]; then GM=(8 256); GK=(--n 512 --k 256 --iters 2); else GM=(8 64 2048); GK=(--n 2816 --k 2816 --iters 20); fi
: >"$WORK/bench-gemm.log"; rc=0
for m in "${GM[@]}"; do
  "$DGEMMA" bench --what gemm --m "$m" "${GK[@]}" >>"$WORK/bench-gemm.log" 2>&1 || rc=1
done
row "bench --what gemm, plain vs batch-invariant (M = ${GM[*]})" "$([[ $rc -eq 0 ]] && echo PASS || echo FAIL)" \
  "$(grep -c "batch-invariant" "$WORK/bench-gemm.log") batch-invariant timings (table below)"
# Still to add once the jobs run on the device: canvas-forward latency, generation tokens/s at batch 1/8/32,
# SFT TFLOP/s and MFU on a reduced-layer 26B-A4B config.

elapsed=$(($(date +%s) - start))
{
  echo "# GPU check results"
  echo
  echo "Written by \`scripts/gpu_check.sh --device $DEVICE\` on $(date -u +%Y-%m-%d) in ${elapsed} s"
  echo "($(hostname); device: $(grep -m1 -oE "device [^|]*" "$WORK/sft-dev.log" || echo unknown))."
  [[ $DRY == 1 ]] && echo "This is the CPU dry run (both sides on the CPU, small settings): it checks the script, not a GPU."
  echo
  echo "| stage | result | details |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${report[@]}"
  echo
  echo "## bench --what gemm (plain and batch-invariant)"
  echo
  echo '```'
  grep -E "gemm " "$WORK/bench-gemm.log" | sed -E 's/^\[[^]]*\] //' | head -n 40
  echo '```'
  echo
  echo "## bench --what ops"
  echo
  echo '```'
  grep -E " ms |benchmark " "$WORK/bench-ops.log" | sed -E 's/^\[[^]]*\] //' | head -n 60
  echo '```'
} >"$OUT_MD"
echo "gpu_check: wrote $OUT_MD (${elapsed} s)"
grep -q "| FAIL |" "$OUT_MD" && exit 1
exit 0
