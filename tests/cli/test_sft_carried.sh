#!/usr/bin/env bash
# dgemma sft keeps what the text model does not use. On the HF fixture with a vision tower (tiny6, made by
# transformers; a 44-token character tokenizer is added here, since tiny6 has a 96-token vocabulary):
#   - a run stopped at step 2 holds every carried tensor of the input in its checkpoint (raw bytes equal),
#     resumed on the same rank count it finishes and exports hf-final whose carried tensors are
#     byte-identical to the input's, and its last checkpoint (copied from the resumed one) holds them too;
#   - the same saved on 2 ranks and resumed on 1;
#   - a run on the tiny preset (no input model) exports the vision tower its config declares, initialised as
#     HF would: exactly the tensors transformers expects (FIXTURES/init/tiny_expected.json).
# Usage: test_sft_carried.sh /path/to/dgemma /path/to/tensor_check /path/to/tests/fixtures
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
CHECK=${2:?tensor_check}
FIX=${3:?fixtures}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1

mkdir model && cp "$FIX/model/tiny6/config.json" "$FIX/model/tiny6/generation_config.json" "$FIX/model/tiny6/model.safetensors" model/
cat >model/tokenizer.json <<'JSON'
{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"<pad>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":1,"content":"<eos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":2,"content":"<bos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":3,"content":"<unk>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":4,"content":"<|turn>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":5,"content":"<turn|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"<pad>":0,"<eos>":1,"<bos>":2,"<unk>":3,"<|turn>":4,"<turn|>":5,"\n":6," ":7,"0":8,"1":9,"2":10,"3":11,"4":12,"5":13,"6":14,"7":15,"8":16,"9":17,"a":18,"b":19,"c":20,"d":21,"e":22,"f":23,"g":24,"h":25,"i":26,"j":27,"k":28,"l":29,"m":30,"n":31,"o":32,"p":33,"q":34,"r":35,"s":36,"t":37,"u":38,"v":39,"w":40,"x":41,"y":42,"z":43},"merges":[]}}
JSON
for i in 1 2 3 4 5 6 7 8; do echo "{\"prompt\": \"add one to $i $((i + 1))\", \"response\": \"$((i + 1)) $(((i + 2) % 10))\"}"; done >data.jsonl
SFT=(--model model --data data.jsonl --steps 4 --warmup 1 --seq-len 64 --checkpoint-every 2)

# 1 rank: stop at step 2, resume, export.
expect 42 "stopped at step 2" -- "$DGEMMA" sft --out r1 "${SFT[@]}" --micro-batch 2 --stop-after 2
expect 0 "^OK$" -- "$CHECK" checkpoint-carried model r1/checkpoints/step_00000002
expect 0 "resumed from .* at step 2" -- "$DGEMMA" sft --out r1 "${SFT[@]}" --micro-batch 2 --resume
expect 0 "^OK$" -- "$CHECK" checkpoint-carried model r1/checkpoints/step_00000004
expect 0 "^OK$" -- "$CHECK" carried-equal model r1/hf-final
echo "1 rank: $("$CHECK" carried-equal model r1/hf-final | head -n 1)"
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path r1/hf-final --list false

# 2 ranks save, 1 rank resumes (the global batch of 2 kept by accumulating 2 micro-batches of 1).
expect 42 "stopped at step 2" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out r2 "${SFT[@]}" --micro-batch 1 --stop-after 2
check "two rank files" test -f r2/checkpoints/step_00000002/rank_00001.h5
expect 0 "^OK$" -- "$CHECK" checkpoint-carried model r2/checkpoints/step_00000002
expect 0 "resumed from .* at step 2" -- "$DGEMMA" sft --out r2 "${SFT[@]}" --micro-batch 1 --resume
expect 0 "^OK$" -- "$CHECK" checkpoint-carried model r2/checkpoints/step_00000004
expect 0 "^OK$" -- "$CHECK" carried-equal model r2/hf-final

# A run on the tiny preset: its export carries the vision tower init would write, complete for transformers.
expect 0 "step +2/2" -- "$DGEMMA" sft --out preset --steps 2 --warmup 1 --micro-batch 2 --seq-len 64 --checkpoint-every 0
expect 0 "^OK$" -- "$CHECK" expect preset/hf-final "$FIX/init/tiny_expected.json"

echo "test_sft_carried: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
