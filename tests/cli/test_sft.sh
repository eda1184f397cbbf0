#!/usr/bin/env bash
# dgemma sft end to end on the built-in tiny default (preset tiny, built-in tokenizer and tiny task):
#   - a short run learns (the last steps' mean loss is well below the first steps'), writes metrics,
#     checkpoints and an HF export that `dgemma generate` and `dgemma inspect` accept;
#   - resume is bit-exact: N steps straight == K steps, stop (exit 42), --resume, N-K steps, compared
#     as the metrics' printed losses and grad norms (the same text means the same float bits), and the
#     final checkpoints hold identical parameters (via dgemma convert to HF, byte-compared);
#   - the same on 2 ranks (the optimizer state is sharded: resume reads the slices back);
#   - SIGUSR1 mid-run: the step finishes, a checkpoint is written, exit 42;
#   - bad data and bad options fail with exit 2 and a message naming the problem; nothing is clobbered.
# Usage: test_sft.sh /path/to/dgemma
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DGEMMA=${1:?dgemma}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$HERE/lib.sh"  # expect, check, passed/failed
MPI=(mpiexec --oversubscribe --bind-to none)
export OPENBLAS_NUM_THREADS=1

# The fields of metrics.jsonl that must match bit for bit (elapsed time and throughput excluded).
losses() { sed -E 's/.*("ar_loss":[^,]*).*("diffusion_loss":[^,]*).*("grad_norm":[^,]*).*("loss":[^,]*).*("lr":[^,]*).*("step":[0-9]+).*/\6 \1 \2 \3 \4 \5/' "$1"; }

SMALL=(--steps 8 --warmup 2 --seq-len 64 --checkpoint-every 0)

# --- a run that learns -----------------------------------------------------------------------------
expect 0 "step +40/40" -- "$DGEMMA" sft --out learn --steps 40 --warmup 5 --micro-batch 8 --checkpoint-every 20
check "metrics: 40 lines" test "$(wc -l <learn/metrics.jsonl)" -eq 40
check "checkpoints at 20 and 40" test -f learn/checkpoints/step_00000020/manifest.json -a -f learn/checkpoints/step_00000040/manifest.json
first=$(head -n 5 learn/metrics.jsonl | sed -E 's/.*"loss":([^,]*).*/\1/' | awk '{s+=$1} END {print s/NR}')
last=$(tail -n 5 learn/metrics.jsonl | sed -E 's/.*"loss":([^,]*).*/\1/' | awk '{s+=$1} END {print s/NR}')
check "loss falls: first 5 steps $first, last 5 $last (need last < 0.6 first)" awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.6 * a)}'
expect 0 "inspect: OK" -- "$DGEMMA" inspect --path learn/hf-final
head -n 3 "$HERE/../../jobs/examples/tiny-task/heldout.jsonl" >heldout.jsonl 2>/dev/null ||
  printf '{"id":"a","prompt":"Add one to each digit: 1 2 3","reference":"2 3 4"}\n' >heldout.jsonl
expect 0 "exact match [0-9]+/[0-9]+" -- "$DGEMMA" generate --model learn/hf-final --input heldout.jsonl --output gen.jsonl
check "every held-out line scored" test "$(grep -c '"exact_match"' gen.jsonl)" -eq "$(wc -l <heldout.jsonl)"

# --- resume is bit-exact (1 rank) ------------------------------------------------------------------
expect 0 "step +8/8" -- "$DGEMMA" sft --out straight "${SMALL[@]}" --micro-batch 4 --export false
expect 42 "stopped at step 3" -- "$DGEMMA" sft --out split "${SMALL[@]}" --micro-batch 4 --export false --stop-after 3
check "stopped run checkpointed step 3" grep -q step_00000003 split/checkpoints/latest
expect 2 "already holds checkpoints" -- "$DGEMMA" sft --out split "${SMALL[@]}" --micro-batch 4
expect 0 "resumed from .* at step 3" -- "$DGEMMA" sft --out split "${SMALL[@]}" --micro-batch 4 --export false --resume
check "metrics after resume: 8 lines" test "$(wc -l <split/metrics.jsonl)" -eq 8
if diff <(losses straight/metrics.jsonl) <(losses split/metrics.jsonl) >/dev/null; then passed=$((passed + 1)); else
  failed=$((failed + 1)); echo "FAIL: resumed losses differ"; diff <(losses straight/metrics.jsonl) <(losses split/metrics.jsonl); fi
expect 0 "convert" -- "$DGEMMA" convert --from h5 --to hf --in straight/checkpoints --out p1 --dtype f32
expect 0 "convert" -- "$DGEMMA" convert --from h5 --to hf --in split/checkpoints --out p2 --dtype f32
check "final parameters identical after resume" cmp -s p1/model.safetensors p2/model.safetensors

# --- 2 ranks: sharded optimizer state, resume on 2 ranks ---------------------------------------------
expect 0 "step +8/8" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out r2 "${SMALL[@]}" --micro-batch 2 --export false
expect 42 "stopped at step 5" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out r2s "${SMALL[@]}" --micro-batch 2 --export false --stop-after 5
check "two rank files" test -f r2s/checkpoints/step_00000005/rank_00001.h5
expect 0 "resumed" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out r2s "${SMALL[@]}" --micro-batch 2 --export false --resume
if diff <(losses r2/metrics.jsonl) <(losses r2s/metrics.jsonl) >/dev/null; then passed=$((passed + 1)); else
  failed=$((failed + 1)); echo "FAIL: 2-rank resumed losses differ"; diff <(losses r2/metrics.jsonl) <(losses r2s/metrics.jsonl); fi
# 2 ranks x 2 examples draw the same global batches and noise as 1 rank x 4 (randomness is keyed by the
# global sample index): the losses agree up to fp32 summation order (measured ~1e-7 relative at step 1;
# Adam amplifies later differences, so only the first step is held to 1e-5).
l1=$(head -n 1 straight/metrics.jsonl | sed -E 's/.*"loss":([^,]*).*/\1/')
l2=$(head -n 1 r2/metrics.jsonl | sed -E 's/.*"loss":([^,]*).*/\1/')
check "step-1 loss on 1 rank ($l1) == on 2 ranks ($l2) within 1e-5" awk -v a="$l1" -v b="$l2" 'BEGIN {d=a-b; if (d<0) d=-d; exit !(d <= 1e-5 * a)}'

# Gradient accumulation: 2 micro-batches of 2 are the same global batch as 1 of 4 (same normalisers).
expect 0 "step +8/8" -- "$DGEMMA" sft --out acc "${SMALL[@]}" --micro-batch 2 --accumulation 2 --export false
l3=$(head -n 1 acc/metrics.jsonl | sed -E 's/.*"loss":([^,]*).*/\1/')
check "step-1 loss with accumulation 2 ($l3) == micro-batch 4 ($l1) within 1e-5" awk -v a="$l1" -v b="$l3" 'BEGIN {d=a-b; if (d<0) d=-d; exit !(d <= 1e-5 * a)}'

# --- SIGUSR1: finish the step, checkpoint, exit 42 ---------------------------------------------------
"$DGEMMA" sft --out sig --steps 100000 --warmup 1 --micro-batch 2 --seq-len 64 --checkpoint-every 0 >sig.log 2>&1 &
pid=$!
for _ in $(seq 1 300); do [[ -s sig/metrics.jsonl ]] && break; sleep 0.1; done
kill -USR1 "$pid"
wait "$pid"; rc=$?
check "SIGUSR1 -> exit 42 (got $rc)" test "$rc" -eq 42
check "SIGUSR1 -> checkpoint" test -f sig/checkpoints/latest
check "SIGUSR1 -> message" grep -q "rerun with --resume" sig.log

# --- signals under mpirun (2 ranks) and at start-up --------------------------------------------------
# mpirun forwards SIGUSR1 to the ranks and passes their exit 42 on. On SIGTERM it forwards the signal,
# the ranks checkpoint and exit 42, but mpirun itself exits 1: the STOPPED marker is what a batch script
# can rely on (jobs/examples/sft.sbatch requeues on exit 42 or the marker).
# Open MPI's mpirun SIGKILLs the ranks 1 s after forwarding a SIGTERM (odls_base_sigkill_timeout), so
# under SIGTERM only the marker, written first at the step boundary, is certain; the checkpoint is, for
# SIGUSR1 (no kill follows). On an idle machine the SIGTERM checkpoint completes too (~0.1 s).
for sig in USR1 TERM; do
  "${MPI[@]}" -n 2 "$DGEMMA" sft --out "mpi$sig" --steps 100000 --warmup 1 --micro-batch 2 --seq-len 64 --checkpoint-every 0 >"mpi$sig.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do [[ -s "mpi$sig/metrics.jsonl" ]] && break; sleep 0.1; done
  kill -"$sig" "$pid"
  wait "$pid"; rc=$?
  check "mpirun + SIG$sig: STOPPED marker written" grep -q "^step [0-9]" "mpi$sig/STOPPED"
  [[ $sig == TERM ]] && continue
  check "mpirun + SIG$sig: both ranks checkpointed" test -f "mpi$sig/checkpoints/latest" -a -f "mpi$sig/checkpoints/$(cat "mpi$sig/checkpoints/latest" 2>/dev/null)/rank_00001.h5"
  check "mpirun + SIG$sig -> exit 42 (got $rc)" test "$rc" -eq 42
done
expect 0 "resumed" -- "${MPI[@]}" -n 2 "$DGEMMA" sft --out mpiUSR1 --steps "$(($(sed 's/step //' mpiUSR1/STOPPED) + 2))" --warmup 1 --micro-batch 2 --seq-len 64 --checkpoint-every 0 --export false --resume
check "a resumed run that finishes removes the marker" test ! -e mpiUSR1/STOPPED
# A signal during start-up (before MPI and the model are up) is a stop request, not a kill (was exit 138):
# the handlers are installed before anything slow, so SIGUSR1 is sent as soon as the process catches it
# (SigCgt in /proc), long before MPI start-up and the model are done.
"$DGEMMA" sft --out early --steps 50 --warmup 1 --micro-batch 2 --seq-len 64 --checkpoint-every 0 >early.log 2>&1 &
pid=$!
deadline=$((SECONDS + 30)); caught=0
while ((SECONDS < deadline)); do
  cgt=$(awk '/^SigCgt/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  if [[ -n $cgt ]] && (( (0x$cgt >> 9) & 1 )); then caught=1; break; fi
done
check "SIGUSR1 handler installed during start-up" test "$caught" -eq 1
kill -USR1 "$pid"
wait "$pid"; rc=$?
check "SIGUSR1 at start-up -> exit 42 after the first step's checkpoint (got $rc)" test "$rc" -eq 42

# --help shows defaults as written, not as binary doubles (was "--lr arg (=0.0030000000000000001)").
expect 0 "--lr arg \(=3e-3\)" -- "$DGEMMA" sft --help
check "no binary-double defaults in sft --help" bash -c "! \"$DGEMMA\" sft --help | grep -qE '=[0-9.]*0000000'"

# --- bad input ------------------------------------------------------------------------------------
printf '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]}\n{"messages": [\n' >bad.jsonl
expect 2 "bad.jsonl:2" -- "$DGEMMA" sft --out bad1 --data bad.jsonl --on-data-error fail
printf '{"messages":[{"role":"user","content":"hi"}]}\n' >noresp.jsonl
expect 2 "noresp.jsonl:1.*assistant" -- "$DGEMMA" sft --out bad2 --data noresp.jsonl
expect 2 "cannot|No such|not found" -- "$DGEMMA" sft --out bad3 --data missing.jsonl
expect 2 "--steps must be positive" -- "$DGEMMA" sft --out bad4 --steps 0
expect 2 "--warmup 50 must be in" -- "$DGEMMA" sft --out bad5 --steps 10 --warmup 50
expect 2 "--resume but .* holds no checkpoint" -- "$DGEMMA" sft --out bad6 --resume
expect 2 "lr" -- "$DGEMMA" sft --out bad7 --lr -1
expect 2 "micro-batch" -- "$DGEMMA" sft --out bad8 --micro-batch 0
expect 2 "unknown|unrecognised|unrecognized" -- "$DGEMMA" sft --out bad9 --no-such-option 1
expect 2 "config.json|model" -- "$DGEMMA" sft --out bad10 --model does-not-exist
# A '%placeholder%' in a value or key used to hang boost's error formatting forever (found by fuzzing).
printf 'seed = %%value%%\n' >placeholder.ini
printf '[model]\n%%canonical_option%% = 1\n' >placeholder2.ini
expect 2 "argument \('%value%'\) for option 'seed' is invalid" -- timeout 20 "$DGEMMA" sft --out bad13 --config placeholder.ini
expect 2 "unrecognised option 'model.%canonical_option%'" -- timeout 20 "$DGEMMA" sft --out bad15 --config placeholder2.ini
expect 2 "argument \('%value%'\) for option '--seed' is invalid" -- timeout 20 "$DGEMMA" sft --out bad14 --seed %value%
expect 2 "--ar-weight must be a finite number >= 0 \(got nan\)" -- "$DGEMMA" sft --out bad16 --ar-weight nan
expect 2 "--ar-weight must be a finite number >= 0 \(got -1\)" -- "$DGEMMA" sft --out bad17 --ar-weight -1
expect 2 "--checkpoint-every must be >= 0" -- "$DGEMMA" sft --out bad18 --checkpoint-every -5
expect 2 "option 'seed' must be a non-negative integer, not '-1'" -- "$DGEMMA" sft --out bad19 --seed -1
touch afile
expect 2 "--out afile exists and is not a directory" -- "$DGEMMA" sft --out afile
expect 2 "--device must be auto, cpu or cuda" -- "$DGEMMA" sft --out bad11 --device tpu
expect 2 "--device cuda, but" -- "$DGEMMA" sft --out bad12 --device cuda
check "failed runs left no checkpoints" test ! -e bad1/checkpoints -a ! -e bad4/checkpoints -a ! -e bad5/checkpoints

echo "test_sft: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
