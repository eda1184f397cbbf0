#!/usr/bin/env bash
# A full disk while writing a checkpoint (sft on 1 and 2 ranks) or `convert --to h5` (2 ranks): every rank
# reports "no space left on the device" and exits 1 (it used to segfault in HDF5's shutdown, exit 139), and
# the partial step_N.tmp is removed (it used to stay and keep the disk full). The disk is a 3 MB tmpfs;
# where mounting one is not allowed, the test is skipped (exit 77).
# Usage: test_disk_full.sh /path/to/dgemma /path/to/tiny6-fixture
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
FIXTURE=${2:?fixture}
WORK=$(mktemp -d)
SMALL="$WORK/small"
mkdir -p "$SMALL"
if ! mount -t tmpfs -o size=3M tmpfs "$SMALL" 2>/dev/null; then
  echo "test_disk_full: cannot mount a tmpfs here (needs root): skipped"
  rm -rf "$WORK"
  exit 77
fi
trap 'umount "$SMALL"; rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1
SFT=(sft --steps 4 --warmup 1 --seq-len 64 --checkpoint-every 2 --export false)

expect 1 "no space left on the device" -- "$DGEMMA" "${SFT[@]}" --micro-batch 2 --out "$SMALL/r1"
check "sft, 1 rank: no partial checkpoint left" test -z "$(ls "$SMALL/r1/checkpoints" 2>/dev/null)"
rm -rf "${SMALL:?}"/*
expect 1 "no space left on the device" -- "${MPI[@]}" -n 2 "$DGEMMA" "${SFT[@]}" --micro-batch 1 --out "$SMALL/r2"
check "sft, 2 ranks: no partial checkpoint left" test -z "$(ls "$SMALL/r2/checkpoints" 2>/dev/null)"
rm -rf "${SMALL:?}"/*
dd if=/dev/zero of="$SMALL/fill" bs=1k count=2900 2>/dev/null
expect 1 "no space left on the device" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from hf --to h5 --in "$FIXTURE" --out "$SMALL/ck"
check "convert --to h5, 2 ranks: no partial step left" test -z "$(ls "$SMALL/ck" 2>/dev/null)"

echo "test_disk_full: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
