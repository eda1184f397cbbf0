#!/usr/bin/env bash
# `dgemma bench --what model` on the tiny preset, one timed run: exit 0, the four rows of its table, its
# JSON lines, and a refused bad shape. Usage: test_bench_model.sh /path/to/dgemma
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=$(realpath "${1:?usage: test_bench_model.sh /path/to/dgemma}")
source "$HERE/lib.sh"  # expect, check, passed/failed
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
out=$("$DGEMMA" bench --what model --preset tiny --iters 1 --batch 2 --prompt-len 16 --json model.jsonl 2>&1)
rc=$?
check "bench --what model exits 0 (got $rc)" test "$rc" -eq 0
for row in "encoder forward" "decoder forward" "generation step" "sft step"; do
  if grep -qE "(^|\] )$row +[0-9]+x.* ms .* ms" <<<"$out"; then passed=$((passed + 1)); else
    failed=$((failed + 1)); printf 'FAIL: no "%s" row in:\n%s\n' "$row" "$out"; fi
done
check "4 JSON lines" test "$(grep -c '"median_s"' model.jsonl 2>/dev/null)" -eq 4
expect 2 "--batch and --prompt-len must be positive" -- "$DGEMMA" bench --what model --batch 0
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
