#!/usr/bin/env bash
# dgemma generate end to end on a random tiny model with the fixture tokenizer: both input forms, bad
# lines reported with their line numbers, results independent of rank count and batch size, resume of an
# interrupted run, and outputs never clobbered by a failed run.
# Usage: test_generate.sh /path/to/dgemma /path/to/tokenizer-dir
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
TOK=${2:?tokenizer dir}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"  # expect, check, passed/failed
MPI=(mpiexec --oversubscribe --bind-to none)

"$DGEMMA" init --preset tiny --out model --dtype f32 --seed 5 --tokenizer "$TOK" > /dev/null || { echo "init failed"; exit 1; }
cat > in.jsonl <<'JSONL'
{"id": "a", "prompt": "Hello there, how are you?"}
{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "max_tokens": 20}}

{"id": 7, "messages": [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "1 2 3"}, {"role": "user", "content": "Go on."}]}
not json
{"id": "a", "prompt": "a duplicate id"}
{"id": "d", "prompt": "last one", "max_tokens": 3}
{"id": "e", "messages": [{"role": "tool", "content": "?"}]}
JSONL
OPTS=(--model model --input in.jsonl --max-new-tokens 16 --max-denoising-steps 6 --seed 3)

expect 0 "6 results written" -- "$DGEMMA" generate "${OPTS[@]}" --output one.jsonl --batch-size 3
check "one line per request with an id, in input order" test "$(grep -o '"\(custom_\)\?id":[^,}]*' one.jsonl | tr '\n' ' ')" = '"id":"a" "custom_id":"b" "id":7 "id":"a" "id":"d" "id":"e" '
check "the duplicate is reported with its line" grep -q '"line":6,"message":"duplicate id a' one.jsonl
check "an unsupported role is an error record" grep -q '"id":"e"' one.jsonl
check "max_tokens 3 -> one canvas of 8" grep -q '"canvases":1,"completion_tokens":8.*"id":"d"' one.jsonl
expect 0 "malformed|parse error" -- "$DGEMMA" generate "${OPTS[@]}" --output two.jsonl --batch-size 1
check "batch size does not change the results" cmp -s one.jsonl two.jsonl
expect 0 "6 results written" -- "${MPI[@]}" -n 2 "$DGEMMA" generate "${OPTS[@]}" --output mpi.jsonl
check "2 ranks give the same results as 1" cmp -s one.jsonl mpi.jsonl

# Resume: an interrupted run left request 0's record in the parts directory.
mkdir -p res.jsonl.parts && head -1 one.jsonl | sed 's/^{/{"_index":0,/' > res.jsonl.parts/rank_00003.jsonl
expect 2 "interrupted run" -- "$DGEMMA" generate "${OPTS[@]}" --output res.jsonl
expect 0 "1 requests already done" -- "$DGEMMA" generate "${OPTS[@]}" --output res.jsonl --resume
check "a resumed run gives the same file" cmp -s one.jsonl res.jsonl
check "the parts directory is gone" test ! -e res.jsonl.parts

# Failures leave outputs alone.
expect 2 "already exists" -- "$DGEMMA" generate "${OPTS[@]}" --output one.jsonl
expect 2 "in.jsonl:5" -- "$DGEMMA" generate "${OPTS[@]}" --output strict.jsonl --on-error fail
check "no output from a failed strict run" test ! -e strict.jsonl -a ! -e strict.jsonl.parts
expect 2 "cannot read prompt file" -- "$DGEMMA" generate --model model --input missing.jsonl --output x.jsonl
expect 2 "t_max" -- "$DGEMMA" generate "${OPTS[@]}" --output x.jsonl --t-min 0.9
expect 2 "model directory|config.json" -- "$DGEMMA" generate --model nowhere --input in.jsonl --output x.jsonl
check "nothing written by the failed runs" test ! -e x.jsonl

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
