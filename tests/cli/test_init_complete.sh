#!/usr/bin/env bash
# dgemma init writes a complete model: exactly the tensors transformers' save_pretrained writes for the same
# config.json (the vision tower and its projector included; none missing, none unexpected, same shapes and
# dtypes), and the vision tensors initialised as HF's _init_weights does (constants exactly, random tensors
# with HF's mean and std within 6 standard errors). The expectations were made by transformers itself
# (scripts/fixtures/make_init_fixtures.py -> FIXTURES/init/*_expected.json); no Python runs here.
#   - the tiny preset (bf16; standardize buffers), whose config.json must still be the fixture's copy;
#   - a config whose vision tower has clipped linears (+-inf bound buffers), f32, and initializer_range
#     values that differ between the tower (0.05), the projector (0.03) and the text model (--init-std).
# Usage: test_init_complete.sh /path/to/dgemma /path/to/tensor_check /path/to/tests/fixtures
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
CHECK=${2:?tensor_check}
FIX=${3:?fixtures}/init
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"

expect 0 "init: wrote tiny" -- "$DGEMMA" init --preset tiny --out tiny --seed 7
check "init --preset tiny writes the config.json the fixture was made from ($FIX/tiny_config.json)" \
  cmp -s tiny/config.json "$FIX/tiny_config.json"
expect 0 "^OK$" -- "$CHECK" expect tiny "$FIX/tiny_expected.json"
echo "tiny: $("$CHECK" expect tiny "$FIX/tiny_expected.json" | head -n 1)"
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path tiny --list false

expect 0 "init: wrote clipped" -- "$DGEMMA" init --model-config "$FIX/clipped_config.json" --dtype f32 --out clipped
expect 0 "^OK$" -- "$CHECK" expect clipped "$FIX/clipped_expected.json"
echo "clipped: $("$CHECK" expect clipped "$FIX/clipped_expected.json" | head -n 1)"

# The check itself bites: a tensor dropped, or the tower's init scaled, is reported.
sed 's/"initializer_range": 0.05/"initializer_range": 0.1/' "$FIX/clipped_config.json" >wide.json
expect 0 "init: wrote wide" -- "$DGEMMA" init --model-config wide.json --dtype f32 --out wide
expect 1 "FAIL: model.encoder.vision_tower.*std" -- "$CHECK" expect wide "$FIX/clipped_expected.json"
expect 1 "MISSING model.encoder.vision_tower" -- "$CHECK" expect tiny "$FIX/clipped_expected.json"

echo "test_init_complete: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
