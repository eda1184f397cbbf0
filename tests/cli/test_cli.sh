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
# --threads: set once, printed; automatic = OPENBLAS_NUM_THREADS, else the rank's share of the cores.
expect 0 "3 CPU threads per rank \(--threads\)" -- "$DGEMMA" bench --what gemm --m 8 --n 8 --k 8 --iters 1 --threads 3
expect 0 "1 CPU thread per rank \(OPENBLAS_NUM_THREADS\)" -- env OPENBLAS_NUM_THREADS=1 "$DGEMMA" bench --what gemm --m 8 --n 8 --k 8 --iters 1
expect 0 "CPU threads? per rank \([0-9]+ cores / 1 ranks on the node|the [0-9]+ cores this rank is bound to\)" -- env -u OPENBLAS_NUM_THREADS "$DGEMMA" bench --what gemm --m 8 --n 8 --k 8 --iters 1
expect 2 "--threads must be in \[0, 4096\]" -- "$DGEMMA" bench --threads -1
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

# config.json / generation_config.json values of the wrong type or out of range: exit 2 naming the file,
# the key and what is expected (never a bare JSON library message, never a silently narrowed value).
variant() {  # variant DIR FILE SED-EXPRESSION: a copy of model with one JSON file edited
  rm -rf "$1" && mkdir -p "$1" && cp model/* "$1"/ && sed -i -e "$3" "$1/$2"
  cmp -s "model/$2" "$1/$2" && echo "FAIL: the edit '$3' of $2 changed nothing"
}
variant big config.json 's/"vocab_size": 2048/"vocab_size": 4294969344/'
expect 2 "big/config.json: 'text_config.vocab_size' must be an integer in \[1, 2147483647\], got 4294969344" -- "$DGEMMA" inspect --path big --list false
variant neg config.json 's/"hidden_size": 64/"hidden_size": -1/'
expect 2 "neg/config.json: 'text_config.hidden_size' must be an integer in \[1, 2147483647\], got -1" -- "$DGEMMA" inspect --path neg --list false
variant float config.json 's/"num_experts": 8/"num_experts": 1e3/'
expect 2 "float/config.json: 'text_config.num_experts' must be an integer in \[1, 2147483647\], got 1000.0" -- "$DGEMMA" inspect --path float --list false
variant eos config.json 's/"eos_token_id": 1,/"eos_token_id": 2147483648,/'
expect 2 "eos/config.json: 'text_config.eos_token_id' must be an integer in \[0, 2147483647\]" -- "$DGEMMA" inspect --path eos --list false
variant mtype config.json 's/"model_type": "diffusion_gemma",/"model_type": 5,/'
expect 2 "mtype/config.json: 'model_type' must be a string, got 5" -- "$DGEMMA" inspect --path mtype --list false
variant tie config.json 's/"canvas_length": 8,/"canvas_length": 8, "tie_word_embeddings": "no",/'
expect 2 "tie/config.json: 'tie_word_embeddings' must be a boolean, got \"no\"" -- "$DGEMMA" inspect --path tie --list false
variant rope config.json 's/"rope_theta": 10000\.0/"rope_theta": "10000"/'
expect 2 "rope/config.json: 'text_config.rope_parameters.sliding_attention.rope_theta' must be a number, got \"10000\"" -- "$DGEMMA" inspect --path rope --list false
variant gen generation_config.json 's/"max_new_tokens": 256/"max_new_tokens": "256"/'
expect 2 "gen/generation_config.json: 'max_new_tokens' must be an integer in \[1, 2147483647\], got \"256\"" -- "$DGEMMA" inspect --path gen --list false
expect 2 "gen/generation_config.json: 'max_new_tokens' must be an integer" -- "$DGEMMA" convert --from hf --to h5 --in gen --out gen_ckpt
echo '{"id": 1, "prompt": "hello"}' > prompts.jsonl
expect 2 "gen/generation_config.json: 'max_new_tokens' must be an integer in \[1, 2147483647\], got \"256\"" -- "$DGEMMA" generate --model gen --input prompts.jsonl --output gen_out.jsonl
variant genbig generation_config.json 's/"max_denoising_steps": 48/"max_denoising_steps": 4294967344/'
expect 2 "genbig/generation_config.json: 'max_denoising_steps' must be an integer in \[1, 2147483647\], got 4294967344" -- "$DGEMMA" inspect --path genbig --list false
variant gennest generation_config.json 's/"entropy_bound": 0.1/"entropy_bound": [0.1]/'
expect 2 "gennest/generation_config.json: 'sampler_config.entropy_bound' must be a number, got \[0.1\]" -- "$DGEMMA" inspect --path gennest --list false

# Model weights must be F32, BF16 or F16 (the dtype rule generate and sft apply): an I32 norm weight is
# reported by inspect, exit 2.
python3 - model/model.safetensors i32/model.safetensors <<'PY'
import json, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
header["model.decoder.norm.weight"]["dtype"] = "I32"  # same element size: the offsets stay valid
text = json.dumps(header, separators=(",", ":")).encode()
assert len(text) <= n
os.makedirs(os.path.dirname(dst), exist_ok=True)
open(dst, "wb").write(data[:8] + text + b" " * (n - len(text)) + data[8 + n:])
PY
cp model/*.json i32/
expect 2 "model.decoder.norm.weight: dtype I32; model weights must be F32, BF16 or F16" -- "$DGEMMA" inspect --path i32 --list false
expect 2 "model.decoder.norm.weight' has dtype I32; model weights must be F32, BF16 or F16" -- "$DGEMMA" generate --model i32 --input prompts.jsonl --output i32_out.jsonl

# An Inf in a model weight: loading it for compute (generate) is refused naming the file, the tensor and the
# element; inspect reports it too (both exit 2).
mkdir -p inf && cp model/*.json inf/
python3 - model/model.safetensors inf/model.safetensors <<'PY'
import json, struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", data[:8])[0]
b, e = json.loads(data[8:8 + n])["model.decoder.norm.weight"]["data_offsets"]
data[8 + n + b + 3 * 4:8 + n + b + 4 * 4] = struct.pack("<f", float("inf"))  # element 3 (f32)
open(sys.argv[2], "wb").write(data)
PY
expect 2 "inf/model.safetensors: tensor 'model.decoder.norm.weight': non-finite value inf at element 3" -- "$DGEMMA" generate --model inf --input prompts.jsonl --output inf_out.jsonl
expect 2 "model.decoder.norm.weight: non-finite value inf at element 3" -- "$DGEMMA" inspect --path inf --list false

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
