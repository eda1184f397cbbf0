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
# Through the page cache instead of O_DIRECT (io/direct_write.h), both ways: the same bytes.
expect 0 "convert: 159 tensors" -- "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck3 --direct-io false
expect 0 "convert: 159 tensors" -- "$DGEMMA" convert --from h5 --to hf --in ck3 --out back3 --direct-io false
check "buffered writes: the same bytes after the round trip" cmp -s "$SRC/model.safetensors" back3/model.safetensors
expect 2 "direct-io" -- "$DGEMMA" convert --from hf --to h5 --in "$SRC" --out ck4 --direct-io sometimes
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


# Checksums (io/checkpoint.h): the manifest records one per shard; a byte flipped inside a dataset of a
# rank file is found by every read (convert h5 -> hf) and by inspect --verify, exit 2 naming the file and
# the tensor; the intact checkpoints verify.
check "the manifest records a checksum per shard" grep -q '"checksum": "xxh64:[0-9a-f]\{16\}"' ck1/step_00000005/manifest.json
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path ck1 --verify --list false
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path ck2 --verify --list false
cp -r ck1 flipped
python3 - "$SRC/model.safetensors" flipped/step_00000005/rank_00000.h5 <<'PY'
import json, struct, sys
st, h5 = sys.argv[1], sys.argv[2]
data = open(st, "rb").read()
n = struct.unpack("<Q", data[:8])[0]
b, e = json.loads(data[8:8 + n])["model.decoder.embed_tokens.weight"]["data_offsets"]
tensor = data[8 + n + b:8 + n + e]  # f32, not transposed: the dataset holds these very bytes
f = bytearray(open(h5, "rb").read())
at = f.find(tensor)
assert at >= 0 and f.find(tensor, at + 1) < 0, "the tensor's bytes are not in the rank file exactly once"
f[at + len(tensor) // 2] ^= 0x10
open(h5, "wb").write(f)
PY
expect 2 "flipped/step_00000005/rank_00000.h5.*'param/model.embed_tokens.weight'.*checksum" -- "$DGEMMA" convert --from h5 --to hf --in flipped --out flipped_hf
check "no model from a corrupt checkpoint" test ! -e flipped_hf
expect 2 "rank_00000.h5.*'param/model.embed_tokens.weight'.*checksum" -- "$DGEMMA" inspect --path flipped --verify --list false
# A checkpoint written before checksums existed (no "checksum" fields) still converts, unverified.
cp -r ck1 legacy && sed -i -e 's/"checksum": "xxh64:[0-9a-f]*", //' -e '/^ *"checksum": /d' legacy/step_00000005/manifest.json
check "the legacy manifest has no checksums" test "$(grep -c checksum legacy/step_00000005/manifest.json)" = 0
expect 0 "convert: 159 tensors" -- "$DGEMMA" convert --from h5 --to hf --in legacy --out legacy_hf
check "a legacy checkpoint converts byte for byte" cmp -s "$SRC/model.safetensors" legacy_hf/model.safetensors
expect 0 "no checksums" -- "$DGEMMA" inspect --path legacy --verify --list false

# A NaN in a model weight: inspect is an error naming the tensor and the element (exit 2); convert copies
# it losslessly both ways but warns naming the tensor.
mkdir -p nan && cp "$SRC"/*.json nan/
python3 - "$SRC/model.safetensors" nan/model.safetensors <<'PY'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
b, e = json.loads(data[8:8 + n])["model.decoder.norm.weight"]["data_offsets"]
at = 8 + n + b + 5 * 4  # element 5 (f32)
data[at:at + 4] = struct.pack("<I", 0x7FC00000)
open(dst, "wb").write(data)
PY
expect 2 "model.decoder.norm.weight: non-finite value nan at element 5" -- "$DGEMMA" inspect --path nan --list false
expect 0 "warning: .*model.decoder.norm.weight.*non-finite value nan at element 5" -- "$DGEMMA" convert --from hf --to h5 --in nan --out nan_ck
expect 2 "'param/model.norm.weight'.*non-finite value nan at element 5" -- "$DGEMMA" inspect --path nan_ck --verify --list false
expect 0 "warning: .*'param/model.norm.weight'.*non-finite" -- "$DGEMMA" convert --from h5 --to hf --in nan_ck --out nan_back
check "NaN round trip is lossless" cmp -s nan/model.safetensors nan_back/model.safetensors

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
