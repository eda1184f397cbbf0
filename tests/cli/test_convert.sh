#!/usr/bin/env bash
# dgemma convert end to end on the HF fixture (which has a tiny vision tower to carry): HF -> H5 on 1 and
# 2 ranks, H5 -> HF on 2 ranks and 1 rank (with sharding), byte-identical safetensors after the round trip,
# the model loads, and bad inputs fail cleanly without clobbering outputs.
# Usage: test_convert.sh /path/to/dgemma /path/to/fixture-hf-dir
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
SRC=${2:?fixture dir}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"  # expect, check, passed/failed
MPI=(mpiexec --oversubscribe --bind-to none)


expect 0 "convert: 159 tensors" -- "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck1 --step 5
check "latest points at step 5" grep -q step_00000005 ck1/latest
expect 0 "over 2 rank" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck2
check "two rank files" test -f ck2/step_00000000/rank_00001.h5
expect 0 "convert: 159 tensors" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck1 --out back
check "HF -> H5 -> HF reproduces model.safetensors byte for byte" cmp -s "$SRC/model.safetensors" back/model.safetensors
expect 0 "convert: 159 tensors" -- "$DGEMMA" convert --from h5 --to hf --in ck2/step_00000000 --out back2
check "H5 written by 2 ranks, read by 1: same bytes" cmp -s "$SRC/model.safetensors" back2/model.safetensors
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path back --list false
expect 0 "convert" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck1 --out sharded --max-shard-size 400KB
check "sharded output has an index and several shards" test -f sharded/model.safetensors.index.json -a "$(ls sharded/model-0000*-of-*.safetensors | wc -l)" -gt 1
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path sharded --list false
expect 0 "convert" -- "$DGEMMA" convert --from h5 --to hf --in ck1 --out bf16 --dtype bf16
expect 0 "BF16" -- "$DGEMMA" inspect --path bf16

# Bad inputs: clear errors, nothing clobbered.
expect 2 "already exists" -- "$DGEMMA" convert --from h5 --to hf --in ck1 --out back
check "existing output untouched" cmp -s "$SRC/model.safetensors" back/model.safetensors
expect 2 "already exists|exists" -- "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck1 --step 5
expect 2 "does not exist" -- "$DGEMMA" convert --from hf --to h5 --in nowhere --out x
expect 2 "must be hf/h5 or h5/hf" -- "$DGEMMA" convert --from hf --to hf --in "$SRC" --out x
mkdir -p broken && cp "$SRC"/*.json broken/ && cp "$SRC/model.safetensors" broken/ && truncate -s -100 broken/model.safetensors
expect 2 "broken/model.safetensors" -- "$DGEMMA" convert --from hf --to h5 --in broken --out x
check "no output left by failed runs" test ! -e x -a ! -e x.tmp

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
