#!/usr/bin/env bash
# scripts/gpu_check.sh in its CPU dry-run form (--device cpu): every stage runs and the report is written.
# On a GPU the same script compares the device with the CPU; here it proves the script itself works.
# Usage: test_gpu_check.sh BUILD_DIR
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$(cd "${1:?build dir}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
expect 0 "gpu_check: wrote" -- env BUILD_DIR="$BUILD" WORK="$WORK/scratch" SFT_STEPS=20 bash "$HERE/../../scripts/gpu_check.sh" --device cpu --out "$WORK/report.md"
for stage in "CUDA op tables" "sft 20 steps, cpu vs cpu \| PASS" "generate held-out, cpu vs cpu \| PASS" \
             "bench --what ops .* \| PASS" "bench --what fsdp .* \| PASS" "bench --what ep .* \| PASS \| ratio ours/reference = 0.6667"; do
  check "report row: $stage" grep -qE "$stage" "$WORK/report.md"
done
check "report says it is the dry run" grep -q "CPU dry run" "$WORK/report.md"
echo "test_gpu_check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
