#!/usr/bin/env bash
# dgemma convert keeps a sharded HF directory's files exactly (tests/fixtures/sharded, written by
# save_pretrained with max_shard_size 12KB: 5 shards and an index; scripts/fixtures/make_shard_fixtures.py):
#   - HF -> H5 on 1 and on 3 ranks, H5 -> HF on 2 ranks: every shard and the index byte for byte;
#   - a layout save_pretrained would not write (other file names and assignment, extra __metadata__ and
#     index metadata) is kept as it is;
#   - without the original layout (--max-shard-size given, as for a model trained by dgemma sft) the files
#     are those save_pretrained wrote for the same model: tensor order, split, names, total_size and
#     total_parameters (parameters only, not the layer_scalar buffers);
#   - --dtype f32 keeps the file names and the assignment of tensors to files.
# Usage: test_convert_shards.sh /path/to/dgemma /path/to/tests/fixtures/sharded
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
FIX=${2:?fixture dir}
SRC=$FIX/hf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"  # expect, check
MPI=(mpiexec --oversubscribe --bind-to none)

# same_files A B: the same safetensors files and index in both directories, byte for byte.
same_files() {
  local a=$1 b=$2 f
  [[ "$(cd "$a" && ls *.safetensors *.index.json 2>/dev/null)" == "$(cd "$b" && ls *.safetensors *.index.json 2>/dev/null)" ]] ||
    { echo "  files differ: $(cd "$a" && ls) / $(cd "$b" && ls)"; return 1; }
  for f in $(cd "$a" && ls *.safetensors *.index.json 2>/dev/null); do
    cmp "$a/$f" "$b/$f" || return 1
  done
}

check "the fixture is sharded (5 shards and an index)" test "$(ls "$SRC"/model-0000?-of-00005.safetensors | wc -l)" = 5 -a -f "$SRC/model.safetensors.index.json"

expect 0 "convert: 67 tensors" -- "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck1
expect 0 "convert: 67 tensors" -- "${MPI[@]}" -n 3 "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck3
check "the manifest records the layout" grep -q '"hf_layout"' ck1/step_00000000/manifest.json
expect 0 "convert: 67 tensors" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck1 --out back1
check "HF -> H5 (1 rank) -> HF (2 ranks): the same shards and index" same_files "$SRC" back1
expect 0 "convert: 67 tensors" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck3 --out back3
check "HF -> H5 (3 ranks) -> HF (2 ranks): the same shards and index" same_files "$SRC" back3
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path back3 --list false

# A layout of another writer: kept as it is.
expect 0 "convert" -- "$DGEMMA" convert --from hf --to h5 --in "$FIX/foreign" --out ckf
expect 0 "convert" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ckf --out backf
check "a foreign layout (names, assignment, __metadata__, index metadata) is kept" same_files "$FIX/foreign" backf

# No original layout: save_pretrained's rule gives save_pretrained's files, from either checkpoint.
expect 0 "convert" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck1 --out hfrule --max-shard-size 12KB
check "exported as save_pretrained would: its very files" same_files "$SRC" hfrule
expect 0 "convert" -- "$DGEMMA" convert --from h5 --to hf --in ckf --out hfrule_f --max-shard-size 12KB
check "the foreign model re-split as save_pretrained would: save_pretrained's files" same_files "$SRC" hfrule_f
check "total_parameters counts parameters, not the layer_scalar buffers" \
  grep -q "\"total_parameters\": $(grep -o '"num_parameters": [0-9]*' "$FIX/save_order.json" | grep -o '[0-9]*$')," hfrule/model.safetensors.index.json
expect 0 "convert" -- "$DGEMMA" convert --from h5 --to hf --in ck1 --out onefile --max-shard-size 50GB
check "under the limit: one model.safetensors, no index" test -f onefile/model.safetensors -a ! -e onefile/model.safetensors.index.json

# Another dtype: the same files and assignment, headers and total_size recomputed.
expect 0 "convert" -- "${MPI[@]}" -n 2 "$DGEMMA" convert --from h5 --to hf --in ck1 --out f32 --dtype f32
check "--dtype f32 keeps the file names" test "$(cd f32 && ls *.safetensors)" = "$(cd "$SRC" && ls *.safetensors)"
check "--dtype f32 keeps the weight map" diff <(grep -v total_size "$SRC/model.safetensors.index.json") <(grep -v total_size f32/model.safetensors.index.json)
check "--dtype f32 recomputes total_size" test "$(grep total_size f32/model.safetensors.index.json)" != "$(grep total_size "$SRC/model.safetensors.index.json")"
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path f32 --list false

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
