#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the main job on the built-in
# tiny default, end to end:
#   1. dgemma init      a random tiny model (preset tiny, built-in tokenizer) as a Hugging Face directory
#   2. dgemma generate  on the held-out prompts of the tiny task: the untrained model scores ~0%
#   3. dgemma sft       fine-tunes it on jobs/examples/tiny-task/train.jsonl ("Add one to each digit:
#                       3 8 1" -> "4 9 2"), checkpoints, exports OUT/sft/hf-final
#   4. dgemma generate  on the same held-out prompts with the fine-tuned model: >= 90% exact match
# Re-running resumes the fine-tuning from its last checkpoint instead of starting again.
# Answers are at most 11 tokens, so generation is capped at 16 new tokens (two canvases).
# Environment: BUILD_DIR (default build), DEMO_DIR (default demo-output), SFT_STEPS (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_TARGET=dgemma scripts/build.sh "$@"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OPENBLAS_NUM_THREADS=1
DGEMMA="${BUILD_DIR:-build}/app/dgemma"
OUT=${DEMO_DIR:-demo-output}
TASK=jobs/examples/tiny-task
mkdir -p "$OUT"
start=$(date +%s)

[[ -d "$OUT/tiny-init" ]] || "$DGEMMA" init --preset tiny --out "$OUT/tiny-init" --dtype f32 --seed 0

echo "=== held-out accuracy before fine-tuning"
"$DGEMMA" generate --model "$OUT/tiny-init" --input "$TASK/heldout.jsonl" --output "$OUT/heldout-before.jsonl" \
  --max-new-tokens 16 --overwrite --progress-seconds 60 2>&1 | grep -E "exact match|error" || true

echo "=== fine-tuning (progress every step; metrics in $OUT/sft/metrics.jsonl)"
resume=()
[[ -f "$OUT/sft/checkpoints/latest" ]] && resume=(--resume)
"$DGEMMA" sft --model "$OUT/tiny-init" --data "$TASK/train.jsonl" --out "$OUT/sft" --steps "${SFT_STEPS:-600}" \
  --export-dtype f32 "${resume[@]}"

echo "=== held-out accuracy after fine-tuning"
"$DGEMMA" generate --model "$OUT/sft/hf-final" --input "$TASK/heldout.jsonl" --output "$OUT/heldout-after.jsonl" \
  --max-new-tokens 16 --overwrite --progress-seconds 60 2>&1 | grep -E "exact match|error"
echo "=== examples ($OUT/heldout-after.jsonl)"
head -n 5 "$OUT/heldout-after.jsonl"
echo "=== done in $(($(date +%s) - start)) s (build excluded)"
