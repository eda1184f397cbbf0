#!/usr/bin/env bash
# dgemma generate stopped and damaged mid-run, on the tiny task's 200 held-out prompts (50 batches of 4):
#   - SIGUSR1 or SIGTERM: the batch in progress finishes, the results so far stay in OUT.parts/, exit 42
#     (the run used to ignore both signals and run to the end); --resume then completes a file equal to
#     an uninterrupted run's. On 1 rank (USR1 and TERM) and on 2 ranks under mpirun (USR1).
#   - the parts damaged under a running job (its file replaced, so the records written after that are
#     lost; a record written twice): exit 1 naming the requests without a result and the one with two,
#     no output, the parts kept (the run used to exit 0 with a short or duplicated output); --resume then
#     drops the extra record, generates the lost ones and completes the same file.
# Usage: test_generate_stop.sh /path/to/dgemma /path/to/heldout.jsonl
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
PROMPTS=${2:?prompts}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  OMPI_MCA_btl_vader_single_copy_mechanism=none OPENBLAS_NUM_THREADS=1
WORK=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"
MPI=(mpiexec --oversubscribe --bind-to none)

expect 0 "" -- "$DGEMMA" init --preset tiny --out model --dtype f32 --seed 5
GEN=(generate --model model --input "$PROMPTS" --max-new-tokens 8 --max-denoising-steps 12 --batch-size 4)
expect 0 "200 results written" -- "$DGEMMA" "${GEN[@]}" --output ref.jsonl

# start NAME [launcher...]: runs generate --output NAME.jsonl in the background (pid in $pid, output in
# NAME.log) and returns once its first results are in NAME.jsonl.parts/ (1 when it never gets there).
start() {
  local name=$1; shift
  "$@" "$DGEMMA" "${GEN[@]}" --output "$name.jsonl" >"$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do
    [[ -s $name.jsonl.parts/rank_00000.jsonl ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
# finish: waits for the background run; its exit code in $rc
finish() { wait "$pid"; rc=$?; pid=; }

# stopped SIGNAL NAME [launcher...]: a run stopped by SIGNAL after its first results, then resumed.
stopped() {
  local sig=$1 name=$2; shift 2
  start "$name" "$@"
  kill -s "$sig" "$pid"
  finish
  check "$name: SIG$sig -> exit 42 (got $rc)" test "$rc" -eq 42
  check "$name: the stop is reported" grep -q "generate: stopped on a signal after .*rerun with --resume to continue (exit 42)" "$name.log"
  check "$name: no output yet" test ! -e "$name.jsonl"
  local kept
  kept=$(cat "$name.jsonl.parts"/*.jsonl | wc -l)
  check "$name: the results so far are kept ($kept of 200)" test "$kept" -gt 0 -a "$kept" -lt 200
  expect 0 "resuming, $kept requests already done" -- "$@" "$DGEMMA" "${GEN[@]}" --output "$name.jsonl" --resume
  check "$name: the resumed output equals the uninterrupted run's" cmp -s ref.jsonl "$name.jsonl"
  check "$name: the parts directory is gone" test ! -e "$name.jsonl.parts"
}
stopped USR1 usr1
stopped TERM term
stopped USR1 mpi_usr1 "${MPI[@]}" -n 2

# Damage under a running job: sed -i writes a new rank_00000.jsonl without its first record (the job
# keeps writing to the old, unlinked file), and a record is appended a second time.
start dmg
part=dmg.jsonl.parts/rank_00000.jsonl
sed -i 1d "$part"
head -n 1 "$part" >>"$part"
twice=$(head -n 1 "$part" | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
finish
lost=$((200 - $(sort -u "$part" | wc -l)))
check "damaged parts: exit 1 (got $rc)" test "$rc" -eq 1
check "damaged parts: the lost results are named" grep -q "error: generate: .*dmg.jsonl.parts/ does not hold one result per request: no result for $lost requests: .*heldout-" dmg.log
check "damaged parts: the record written twice is named" grep -qE "1 request with more than one result: .*\(id $twice\) in " dmg.log
check "damaged parts: no output" test ! -e dmg.jsonl
check "damaged parts: the parts are kept" test -s "$part"
run_resume() { "$DGEMMA" "${GEN[@]}" --output dmg.jsonl --resume >dmg_resume.log 2>&1; }
run_resume; rc=$?
check "damaged parts: --resume completes (exit $rc)" test "$rc" -eq 0
check "damaged parts: --resume drops the second record" grep -q "rank_00000.jsonl: dropped [0-9]* bytes: line [0-9]*: a second record" dmg_resume.log
check "damaged parts: the repaired output equals the uninterrupted run's" cmp -s ref.jsonl dmg.jsonl

echo "test_generate_stop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
