#!/usr/bin/env bash
# dgemma generate on an OpenAI batch input file answers in the OpenAI batch output form. Every result line is
# checked against the schema of the pinned openai package's types (fixtures/openai/batch_output.schema.json:
# ChatCompletion in response.body, BatchError in error) and for its values against the input
# (tests/tools/check_openai_batch.cpp): usage totals, max_tokens as a hard limit, finish_reason, stop strings
# (the text cut before the first one), seed (the same text on any line), temperature (mapped onto the
# schedule, 0 refused), refused fields and values (an error record naming the field, with the line), a
# line that is not JSON (custom_id null, known by error.line), custom_id order; then the same file from 2
# ranks and batch size 1, and from a resumed run. The checker itself must reject broken lines.
# Usage: test_generate_openai.sh /path/to/dgemma /path/to/check_openai_batch /path/to/tests/fixtures
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
CHECK=${2:?check_openai_batch}
FIX=${3:?fixtures dir}
SCHEMA=$FIX/openai/batch_output.schema.json
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)

"$DGEMMA" init --preset tiny --out model --dtype f32 --seed 5 --tokenizer "$FIX/tokenizer" > /dev/null || { echo "init failed"; exit 1; }
GEN=(generate --model model --max-new-tokens 16 --max-denoising-steps 6 --seed 3 --created 1700000000)
# line ID BODY-FIELDS: an OpenAI batch line asking "Name a colour." with the given extra body fields
line() {
  printf '{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "dgemma-tiny", "messages": [{"role": "user", "content": "Name a colour."}]%s}}\n' "$1" "${2:+, $2}"
}

# A first run gives a seeded request's text; two of its characters make a stop string that occurs in it.
line s1 '"max_tokens": 16, "seed": 11' > probe.jsonl
expect 0 "1 results written" -- "$DGEMMA" "${GEN[@]}" --input probe.jsonl --output probe.out
STOP=$("$CHECK" stop-probe probe.out s1)
check "a stop string from the seeded text ($STOP)" test -n "$STOP"

{
  line s1 '"max_tokens": 16, "seed": 11'
  line s1b '"max_tokens": 16, "seed": 11'                       # the same request on another line
  line s2 "\"max_tokens\": 16, \"seed\": 11, \"stop\": [$STOP, \"never here\"]"
  line m5 '"max_tokens": 5'                                     # a hard limit inside the first canvas
  echo
  line mc3 '"max_completion_tokens": 3, "temperature": 1'
  line t05 '"max_tokens": 16, "seed": 11, "temperature": 0.5, "top_p": 1, "n": 1, "user": "u"'
  echo 'not json'
  line t0 '"temperature": 0'
  line t3 '"temperature": 3'
  line tp '"top_p": 0.5'
  echo '{"custom_id": "url", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}'
  echo '{"custom_id": "get", "method": "GET", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}}'
  line tools '"tools": [{"type": "function", "function": {"name": "f"}}]'
  line s1 '"max_tokens": 4'                                     # a duplicate custom_id
  echo '{"custom_id": 7, "body": {"messages": [{"role": "user", "content": "x"}]}}'
  line sx '"seed": "11"'
  line se '"stop": [""]'
  echo '{"custom_id": "role", "body": {"messages": [{"role": "tool", "content": "x"}]}}'
  line plain ''                                                 # the job's limit: 16 tokens
} > batch.jsonl
expect 0 "19 results written" -- "$DGEMMA" "${GEN[@]}" --input batch.jsonl --output one.jsonl --batch-size 3
"$CHECK" validate "$SCHEMA" batch.jsonl one.jsonl > digest.txt 2> check.log
rc=$?
check "every line valid against the openai schema and the input (exit $rc: $(head -c 2000 check.log))" test $rc -eq 0
check "19 lines checked" grep -q "19 lines valid" digest.txt
has() { grep -qE "^$1\$" digest.txt || { echo "  no digest line /$1/ in:"; cat digest.txt; return 1; }; }
check "s1: a result, usage counted" has '1 custom_id=s1 ok finish=(length|stop) prompt=[0-9]+ completion=[0-9]+ model=model created=1700000000'
check "s2: cut at the stop string" has '3 custom_id=s2 ok finish=stop .*'
check "m5: max_tokens 5 is a hard limit" has '4 custom_id=m5 ok finish=length prompt=[0-9]+ completion=5 .*'
check "mc3: max_completion_tokens 3" has '6 custom_id=mc3 ok finish=length prompt=[0-9]+ completion=3 .*'
check "t05: temperature 0.5 (with top_p 1, n 1)" has '7 custom_id=t05 ok .*'
check "not json: custom_id null, its line" has '8 custom_id=null error code=invalid_json_line param=null'
check "temperature 0 refused" has '9 custom_id=t0 error code=unsupported_value param=body.temperature'
check "temperature 3 out of range" has '10 custom_id=t3 error code=invalid_value param=body.temperature'
check "top_p 0.5 refused" has '11 custom_id=tp error code=unsupported_value param=body.top_p'
check "url /v1/completions refused" has '12 custom_id=url error code=unsupported_value param=url'
check "method GET refused" has '13 custom_id=get error code=unsupported_value param=method'
check "tools refused" has '14 custom_id=tools error code=unsupported_parameter param=body.tools'
check "a duplicate custom_id" has '15 custom_id=s1 error code=duplicate_custom_id param=custom_id'
check "an integer custom_id" has '16 custom_id=null error code=invalid_type param=custom_id'
check "a string seed" has '17 custom_id=sx error code=invalid_type param=body.seed'
check "an empty stop string" has '18 custom_id=se error code=invalid_value param=body.stop'
check "an unsupported role" has '19 custom_id=role error code=unsupported_value param=body.messages'
check "no max_tokens: the job's 16" has '20 custom_id=plain ok finish=length prompt=[0-9]+ completion=16 .*'
check "the messages name the field" grep -q "batch.jsonl:9: 'body.temperature' 0 (greedy decoding) is not supported" <("$DGEMMA" "${GEN[@]}" --input batch.jsonl --output msg.jsonl 2>&1)

# Rank count and batch size change nothing; neither does a resume (the "not json" line included).
expect 0 "19 results written" -- "${MPI[@]}" -n 2 "$DGEMMA" "${GEN[@]}" --input batch.jsonl --output mpi.jsonl --batch-size 1
check "2 ranks, batch 1: the same file" cmp -s one.jsonl mpi.jsonl
mkdir res.jsonl.parts && head -8 one.jsonl | awk '{sub(/^\{/, "{\"_index\":" NR - 1 ","); print}' > res.jsonl.parts/rank_00001.jsonl
expect 0 "resuming, 8 requests already done" -- "$DGEMMA" "${GEN[@]}" --input batch.jsonl --output res.jsonl --resume
check "a resumed run: the same file" cmp -s one.jsonl res.jsonl
# --model-name, and the job's start time without --created.
expect 0 "1 results written" -- "$DGEMMA" generate --model model/ --max-new-tokens 8 --max-denoising-steps 2 --input probe.jsonl --output now.jsonl --model-name tiny-dg
check "--model-name, created = now" test "$(grep -o '"model":"[^"]*","object"' now.jsonl)" = '"model":"tiny-dg","object"' -a "$(grep -o '"created":[0-9]*' now.jsonl | cut -d: -f2)" -ge "$(($(date +%s) - 600))"

# The checker rejects what the schema or the input rules out.
broken() {  # broken NAME SED-EXPRESSION: one.jsonl edited must fail the check
  sed "$2" one.jsonl > "broken_$1.jsonl"
  if "$CHECK" validate "$SCHEMA" batch.jsonl "broken_$1.jsonl" > /dev/null 2> "broken_$1.log"; then return 1; fi
  grep -q "check_openai_batch: " "broken_$1.log"
}
check "checker: an unknown finish_reason" broken finish '1s/"finish_reason":"[a-z]*"/"finish_reason":"done"/'
check "checker: another object type" broken object '1s/"object":"chat.completion"/"object":"chat"/'
check "checker: no status_code" broken status '1s/,"status_code":200//'
check "checker: a wrong total" broken total '1s/"total_tokens":[0-9]*/"total_tokens":1/'
check "checker: too many tokens" broken max '4s/"completion_tokens":5/"completion_tokens":6/'
check "checker: lines out of order" broken order '1{h;d};2{G}'
check "checker: another text for the same seed" broken seed '2s/"content":"/"content":"x/'
check "checker: an error without its line" broken line '7s/"line":8/"line":7/'

echo "test_generate_openai: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
