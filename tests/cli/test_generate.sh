#!/usr/bin/env bash
# dgemma generate end to end on a random tiny model with the fixture tokenizer: both input forms, bad
# lines reported with their line numbers (one output line per input line, lines without a readable id
# included), integers of request bodies type- and range-checked, results independent of rank count and
# batch size, resume of an interrupted run (also after a torn last line in a partial output), and outputs
# never clobbered by a failed run. Signals and damaged parts: test_generate_stop.sh.
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
# (--created: the OpenAI-form results of two runs are then the same bytes)
BASE=(--model model --max-new-tokens 16 --max-denoising-steps 6 --seed 3 --created 1700000000)
OPTS=("${BASE[@]}" --input in.jsonl)
# run LOG command...: runs the command with its output in LOG, its exit code in $rc
run() { local log=$1; shift; "$@" >"$log" 2>&1; rc=$?; }

expect 0 "7 results written" -- "$DGEMMA" generate "${OPTS[@]}" --output one.jsonl --batch-size 3
# (the OpenAI-form result of "b" also holds its own ids: batch_req_..., chatcmpl-...)
check "one line per request, in input order" test "$(grep -o '"\(custom_\)\?id":[^,}]*' one.jsonl | grep -v '"id":"\(batch_req_\|chatcmpl-\)' | tr '\n' ' ')" = '"id":"a" "custom_id":"b" "id":7 "id":null "id":"a" "id":"d" "id":"e" '
check "the line that is not JSON has an error record with its line" grep -q '^{"error":{"line":5,"message":"invalid JSON: .*parse error.*"},"id":null}$' one.jsonl
check "the duplicate is reported with its line" grep -q '"line":6,"message":"duplicate id a' one.jsonl
check "an unsupported role is an error record" grep -q '"id":"e"' one.jsonl
check "max_tokens 3 -> one canvas of 8" grep -q '"canvases":1,"completion_tokens":8.*"id":"d"' one.jsonl
expect 0 "malformed|parse error" -- "$DGEMMA" generate "${OPTS[@]}" --output two.jsonl --batch-size 1
check "batch size does not change the results" cmp -s one.jsonl two.jsonl
expect 0 "7 results written" -- "${MPI[@]}" -n 2 "$DGEMMA" generate "${OPTS[@]}" --output mpi.jsonl
check "2 ranks give the same results as 1" cmp -s one.jsonl mpi.jsonl
# Unpacked weights (OpenBLAS packs per call): another fp32 rounding than packed ones, batch-invariant too.
expect 0 "pack-weights false" -- "$DGEMMA" generate "${OPTS[@]}" --output np3.jsonl --batch-size 3 --pack-weights false
expect 0 "7 results written" -- "$DGEMMA" generate "${OPTS[@]}" --output np1.jsonl --batch-size 1 --pack-weights false
check "unpacked weights: batch size does not change the results" cmp -s np3.jsonl np1.jsonl
expect 2 "pack-weights" -- "$DGEMMA" generate "${OPTS[@]}" --output x.jsonl --pack-weights maybe

# Resume: an interrupted run left request 0's record in the parts directory.
mkdir -p res.jsonl.parts && head -1 one.jsonl | sed 's/^{/{"_index":0,/' > res.jsonl.parts/rank_00003.jsonl
expect 2 "interrupted run" -- "$DGEMMA" generate "${OPTS[@]}" --output res.jsonl
expect 0 "1 requests already done" -- "$DGEMMA" generate "${OPTS[@]}" --output res.jsonl --resume
check "a resumed run gives the same file" cmp -s one.jsonl res.jsonl
check "the parts directory is gone" test ! -e res.jsonl.parts

# Every input line gets one output line, in order: a line without a readable id (invalid JSON, invalid
# UTF-8 inside a string or as raw bytes, a NUL byte, a JSON array, no id, an id of the wrong type, a key
# given twice) gets {"id": null, "error": {"line", "message"}}; a duplicate id gets an error record under
# its id. (Those without an id used to get no line at all.)
{
  echo '{"id": "g1", "prompt": "good one"}'
  echo 'not json at all'
  printf '{"id": "g2", "prompt": "caf\xc3\x28 au lait"}\n'
  echo '[1, 2, 3]'
  echo '{"id": "g1", "prompt": "a duplicate id"}'
  echo '{"prompt": "no id"}'
  echo '{"id": {"x": 1}, "prompt": "an object id"}'
  echo '{"id": "g3", "prompt": "one id too many", "id": "g4"}'
  printf '\xfe\xff raw bytes\n'
  printf '{"id": "g6", "prompt": "a NUL after the object"}\x00 trailing\n'
  echo '{"id": "g5", "prompt": "good two"}'
} > bad.jsonl
run bad.log "$DGEMMA" generate "${BASE[@]}" --input bad.jsonl --output bad_out.jsonl
check "bad lines: exit 0 (got $rc)" test $rc -eq 0
check "bad lines: 11 results" grep -q "11 results written" bad.log
check "bad lines: reported with their line numbers" grep -q "bad.jsonl:3: invalid JSON: .*UTF-8.* (skipped)" bad.log
check "one record per input line, bad lines keyed by their line number" python3 - bad_out.jsonl <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]  # also: the file is valid UTF-8
got = [(r.get("id", r.get("custom_id")), r["error"]["line"] if "error" in r else None) for r in recs]
want = [("g1", None), (None, 2), (None, 3), (None, 4), ("g1", 5), (None, 6), (None, 7), (None, 8), (None, 9), (None, 10),
        ("g5", None)]
assert got == want, got
msg = {r["error"]["line"]: r["error"]["message"] for r in recs if "error" in r}
for line, words in {2: "invalid JSON", 3: "UTF-8", 4: "JSON object", 5: "duplicate id g1 (first on line 1)", 6: "no 'id'",
                    7: "string or an integer", 8: 'duplicate key "id"', 9: "invalid JSON", 10: "NUL byte"}.items():
    assert words in msg[line], (line, msg[line])
PY

# Integers of request bodies are type- and range-checked, never narrowed: 4294967304 used to run as 8
# tokens; a bad value is an error record naming the line (error.line) and the field. null = not set.
cat > ints.jsonl <<'JSONL'
{"id": "t1", "prompt": "p", "max_tokens": 4294967304}
{"id": "t2", "prompt": "p", "max_tokens": "12"}
{"id": "t3", "prompt": "p", "max_tokens": 12.0}
{"id": "t4", "prompt": "p", "max_tokens": 0}
{"id": "t5", "prompt": "p", "max_tokens": -3}
{"custom_id": "t6", "body": {"messages": [{"role": "user", "content": "p"}], "max_completion_tokens": 18446744073709551615}}
{"custom_id": "t7", "body": {"messages": [{"role": "user", "content": "p"}], "max_tokens": true}}
{"id": "t8", "prompt": "p", "max_new_tokens": 2147483648}
{"id": "t9", "prompt": "p", "max_tokens": 3}
{"custom_id": "t10", "body": {"messages": [{"role": "user", "content": "p"}], "max_tokens": null}}
JSONL
expect 0 "ints.jsonl:1: 'max_tokens' must be an integer in \[1, 1048576\], got 4294967304" -- "$DGEMMA" generate "${BASE[@]}" --input ints.jsonl --output ints_out.jsonl
check "bad integers are error records naming the line and the field" python3 - ints_out.jsonl <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == 10, len(recs)
want = {1: "'max_tokens' must be an integer in [1, 1048576], got 4294967304",
        2: "'max_tokens' must be an integer, got a string: \"12\"",
        3: "'max_tokens' must be an integer, got a float: 12.0",
        4: "'max_tokens' must be an integer in [1, 1048576], got 0",
        5: "'max_tokens' must be an integer in [1, 1048576], got -3",
        6: "'body.max_completion_tokens' must be an integer in [1, 1048576], got 18446744073709551615",
        7: "'body.max_tokens' must be an integer, got a boolean: true",
        8: "'max_new_tokens' must be an integer in [1, 1048576], got 2147483648"}
for i, r in enumerate(recs[:8]):
    assert "error" in r and r["error"]["line"] == i + 1 and r["error"]["message"] == want[i + 1], r
assert recs[8]["id"] == "t9" and recs[8]["canvases"] == 1, recs[8]  # 3 -> one canvas of 8
assert recs[9]["custom_id"] == "t10" and recs[9]["error"] is None, recs[9]  # null: --max-new-tokens
PY

# Resume after a torn last line in a partial output (disk full, a kill during a write): the next record
# used to be appended to the broken line, which the merge then dropped: exit 0 with a result missing. The
# broken tail is cut off (reported with its file and size) and its request generated again.
for i in 0 1 2 3 4 5; do echo "{\"id\": \"h$i\", \"prompt\": \"Add one to each digit: $i 2 $((i + 3)) 8 1\"}"; done > few.jsonl
FEW=(--model model --max-new-tokens 8 --max-denoising-steps 6 --seed 3)
expect 0 "6 results written" -- "$DGEMMA" generate "${FEW[@]}" --input few.jsonl --output few_ref.jsonl --batch-size 2
awk '{sub(/^\{/, "{\"_index\":" NR - 1 ","); print > ("rec" NR - 1)}' few_ref.jsonl  # rec0..rec5, as in a part
mkdir torn.jsonl.parts
cat rec0 rec1 rec2 > torn.jsonl.parts/rank_00000.jsonl && head -c 50 rec3 >> torn.jsonl.parts/rank_00000.jsonl
run torn.log "$DGEMMA" generate "${FEW[@]}" --input few.jsonl --output torn.jsonl --resume --batch-size 2
check "torn write: exit 0 (got $rc)" test $rc -eq 0
check "torn write: the cut is reported" grep -q "torn.jsonl.parts/rank_00000.jsonl: dropped 50 bytes" torn.log
check "torn write: 3 requests done before" grep -q "resuming, 3 requests already done" torn.log
check "torn write: every id once, same file as the uninterrupted run" cmp -s few_ref.jsonl torn.jsonl
# Parts of 2 ranks: a broken line in the middle (a torn record with the next one glued on, as the old
# resume wrote it) and a complete but broken last line; resumed on 2 ranks.
mkdir torn2.jsonl.parts
{ cat rec0; head -c 70 rec1; cat rec2 rec3; } > torn2.jsonl.parts/rank_00000.jsonl
{ cat rec4; head -c 30 rec5; echo; } > torn2.jsonl.parts/rank_00001.jsonl
run torn2.log "${MPI[@]}" -n 2 "$DGEMMA" generate "${FEW[@]}" --input few.jsonl --output torn2.jsonl --resume --batch-size 2
check "torn lines of 2 ranks: exit 0 (got $rc)" test $rc -eq 0
check "torn lines of 2 ranks: both cuts reported" grep -q "rank_00000.jsonl: dropped $((70 + $(wc -c <rec2))) bytes" torn2.log
check "torn lines of 2 ranks: both cuts reported" grep -q "rank_00001.jsonl: dropped 31 bytes" torn2.log
check "torn lines of 2 ranks: 3 requests done before" grep -q "resuming, 3 requests already done" torn2.log
check "torn lines of 2 ranks: same file as the uninterrupted run" cmp -s few_ref.jsonl torn2.jsonl
# Ranks with different numbers of batches (3 and 2) agree on every stop check and finish together.
head -5 few.jsonl > five.jsonl
expect 0 "5 results written" -- "${MPI[@]}" -n 2 "$DGEMMA" generate "${FEW[@]}" --input five.jsonl --output five.jsonl.out --batch-size 1
check "uneven ranks: same results as 1 rank" cmp -s <(head -5 few_ref.jsonl) five.jsonl.out

# Failures leave outputs alone.
expect 2 "already exists" -- "$DGEMMA" generate "${OPTS[@]}" --output one.jsonl
expect 2 "in.jsonl:5" -- "$DGEMMA" generate "${OPTS[@]}" --output strict.jsonl --on-error fail
check "no output from a failed strict run" test ! -e strict.jsonl -a ! -e strict.jsonl.parts
expect 2 "cannot read prompt file" -- "$DGEMMA" generate --model model --input missing.jsonl --output x.jsonl
expect 2 "t_max" -- "$DGEMMA" generate "${OPTS[@]}" --output x.jsonl --t-min 0.9
expect 2 "--max-length must be positive, not 0" -- "$DGEMMA" generate "${OPTS[@]}" --output x.jsonl --max-length 0
expect 2 "batch-invariant" -- "$DGEMMA" generate "${OPTS[@]}" --output x.jsonl --batch-invariant maybe
expect 2 "model directory|config.json" -- "$DGEMMA" generate --model nowhere --input in.jsonl --output x.jsonl
check "nothing written by the failed runs" test ! -e x.jsonl

# Without an eos_token_id in generation_config.json (or without the file) Hugging Face's generate stops on
# no EOS, whatever config.json says (tests/fixtures/generation_rules/rules.json); so does dgemma, and says so.
mkdir -p noeos && cp model/config.json model/model.safetensors model/tokenizer*.json noeos/
cp model/chat_template.jinja noeos/ 2>/dev/null
expect 0 "sets no eos_token_id" -- "$DGEMMA" generate --model noeos --input in.jsonl --output noeos.jsonl --max-new-tokens 8 --max-denoising-steps 4
check "no EOS set: no result ends on a stop" bash -c "! grep -q '\"finish_reason\":\"stop\"' noeos.jsonl"
# max_length in generation_config.json applies while max_new_tokens is the default 256: max_length 1 leaves
# no room after any prompt, so no canvas is generated.
cp -r noeos maxlen && cp model/generation_config.json maxlen/
sed -i 's/"max_new_tokens": 256,/"max_new_tokens": 256, "max_length": 1,/' maxlen/generation_config.json
# (A request's own max_tokens is not 256, so the rule leaves it alone: in.jsonl's "b" and "d" have one.)
sed -n '1p;4p;8p' in.jsonl > maxlen_in.jsonl
expect 0 "3 results written" -- "$DGEMMA" generate --model maxlen --input maxlen_in.jsonl --output maxlen.jsonl --max-denoising-steps 4
check "max_length 1: no canvases generated (the third line is an error record)" test "$(grep -c '"canvases":0,' maxlen.jsonl)" -eq 2
sed -n '1p;2p' in.jsonl > maxlen_own.jsonl
expect 0 "2 results written" -- "$DGEMMA" generate --model maxlen --input maxlen_own.jsonl --output maxlen_own.jsonl.out --max-denoising-steps 4
check "max_length 1: a request's own max_tokens still generates" test "$(grep -c '"canvases":0,' maxlen_own.jsonl.out)" -eq 1

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
