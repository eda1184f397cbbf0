#!/usr/bin/env bash
# End-to-end checks of the dgemma command: exit codes, messages, help, and that a failed run leaves
# existing output files untouched. Usage: test_cli.sh /path/to/dgemma
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?usage: test_cli.sh /path/to/dgemma}
source "$HERE/lib.sh"  # expect, check, passed/failed
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
expect 2 "Usage: dgemma <job>" -- "$DGEMMA"
expect 0 "Exit codes" -- "$DGEMMA" --help
expect 0 "^dgemma [0-9]" -- "$DGEMMA" --version
expect 2 "unknown job 'train'" -- "$DGEMMA" train
for job in sft generate convert init inspect bench; do
  expect 0 "Usage: dgemma $job" -- "$DGEMMA" $job --help
done
expect 2 "--steps must be positive" -- "$DGEMMA" sft --steps 0 --out never
[[ ! -e never ]] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: a refused sft left files"; }
expect 2 "unrecognised option '--bogus'|unrecognized option '--bogus'" -- "$DGEMMA" bench --bogus
expect 2 "cannot read job file missing.ini" -- "$DGEMMA" bench --config missing.ini
printf 'm = 8\nwhat = nonsense\n' > bad.ini
expect 2 "--what must be gemm, comm, ops or all" -- "$DGEMMA" bench --config bad.ini
printf 'm = 8\nn = 8\nk = 8\niters = 1\nwhat = gemm\n' > ok.ini
expect 0 "gemm NN f32" -- "$DGEMMA" bench --config ok.ini --json out.jsonl
expect 0 "m = 8    # job file" -- "$DGEMMA" bench --config ok.ini
[[ -s out.jsonl ]] && grep -q '"benchmark":"gemm NN f32"' out.jsonl && passed=$((passed + 1)) || {
  failed=$((failed + 1)); echo "FAIL: bench --json wrote no result"; }
echo "keep me" > keep.jsonl
expect 2 "must be positive" -- "$DGEMMA" bench --what gemm --m 0 --json keep.jsonl
[[ "$(cat keep.jsonl)" == "keep me" ]] && passed=$((passed + 1)) || {
  failed=$((failed + 1)); echo "FAIL: a failed run changed an existing output"; }

# init and inspect
expect 0 "init: wrote model" -- "$DGEMMA" init --preset tiny --out model --dtype f32 --seed 3
expect 2 "already exists" -- "$DGEMMA" init --preset tiny --out model
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path model --list false
expect 0 "moe.experts.gate_and_up_projs" -- "$DGEMMA" inspect --path model
[[ -f model/config.json && -f model/generation_config.json && -f model/model.safetensors && ! -e model.tmp ]] \
  && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: init output incomplete"; }
expect 2 "exactly one of --model-config and --preset" -- "$DGEMMA" init --out other
expect 2 "unknown model preset 'huge'" -- "$DGEMMA" init --preset huge --out other
[[ ! -e other && ! -e other.tmp ]] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: failed init left files"; }
# A config.json that does not match the tensors: inspect names the problems and exits 2.
mkdir -p wrong && cp model/model.safetensors wrong/ && sed 's/"hidden_size": 64/"hidden_size": 32/' model/config.json > wrong/config.json
expect 2 "problem" -- "$DGEMMA" inspect --path wrong --list false
expect 2 "does not exist" -- "$DGEMMA" inspect --path nowhere

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
