#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang + ASan + UBSan, in ${FUZZ_BUILD_DIR:-build-fuzz}) and runs each
# for a fixed time, one after another, then prints executions, crashes and coverage per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      SECONDS per target (default 600); all targets by default
#
# Targets: fuzz/targets.cmake. Each run starts from the committed corpus fuzz/corpus/<target>/ (read
# only) and grows a working corpus in $FUZZ_BUILD_DIR/work/<target>/corpus; crashing inputs land in
# $FUZZ_BUILD_DIR/work/<target>/artifacts/ and the log in .../fuzz.log (see docs/fuzzing.md for what to do
# with them). Environment:
#   FUZZ_NICE=10        nice level of the build and of the fuzzers
#   FUZZ_JOBS=2         build parallelism
#   FUZZ_NO_BUILD=1     do not (re)build
#   FUZZ_FORK=1         run under -fork=1 with crashes/timeouts/OOMs ignored, so a target keeps fuzzing the
#                       whole time and every crash is counted (0: stop at the first crash, libFuzzer's default)
#   FUZZ_FRESH=1        start from the committed corpus only (drop the working corpus of earlier runs)
#   FUZZ_TIMEOUT=10     seconds after which one input counts as a hang
#   FUZZ_ARGS="..."     extra libFuzzer flags (e.g. -max_len=4096)
# Exit status: 1 if any target crashed, else 0.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-600}
shift $(( $# > 0 ? 1 : 0 ))
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
NICE=${FUZZ_NICE:-10}
FORK=${FUZZ_FORK:-1}

all_targets=$(sed -n 's/^set(DGEMMA_FUZZ_TARGETS \(.*\))$/\1/p' fuzz/targets.cmake)
targets=${*:-$all_targets}

if [[ ${FUZZ_NO_BUILD:-0} != 1 ]]; then
  if ! command -v clang++ >/dev/null; then
    echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 2
  fi
  CC=${CC:-clang} CXX=${CXX:-clang++} cmake -S fuzz -B "$BUILD" >"$BUILD.configure.log" 2>&1 ||
    { cat "$BUILD.configure.log" >&2; exit 2; }
  nice -n "$NICE" cmake --build "$BUILD" -j "${FUZZ_JOBS:-2}" --target $(for t in $targets; do echo "fuzz_$t"; done)
fi

summary=()
any_crash=0
for t in $targets; do
  bin=$BUILD/fuzz_$t
  [[ -x $bin ]] || { echo "fuzz.sh: no $bin (unknown target '$t'?)" >&2; exit 2; }
  work=$BUILD/work/$t
  [[ ${FUZZ_FRESH:-0} == 1 ]] && rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  log=$work/fuzz.log
  flags=(-max_total_time="$SECONDS_PER_TARGET" -timeout=${FUZZ_TIMEOUT:-10} -rss_limit_mb=2048 -print_final_stats=1
         -artifact_prefix="$work/artifacts/")
  [[ $FORK == 1 ]] && flags+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  echo "== $t: ${SECONDS_PER_TARGET}s ($log)"
  before=$(find "$work/artifacts" -type f | wc -l)
  start=$(date +%s)
  set +e
  # shellcheck disable=SC2086
  nice -n "$NICE" "$bin" "${flags[@]}" ${FUZZ_ARGS:-} "$work/corpus" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  # Executions: the last "#N" status line (fork mode sums its jobs), or the final stats when printed.
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  [[ -z $execs ]] && execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
  crashes=$(( $(find "$work/artifacts" -type f | wc -l) - before ))
  if [[ $FORK == 1 ]]; then
    fc=$(grep -oE 'oom/timeout/crash: [0-9]+/[0-9]+/[0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
    [[ -n $fc ]] && echo "   ooms/timeouts/crashes: $fc"
  fi
  (( crashes > 0 || (FORK != 1 && rc != 0) )) && any_crash=1
  corpus=$(find "$work/corpus" -type f | wc -l)
  line=$(printf '%-20s %6ss  execs %10s  exec/s %6s  cov %6s  ft %6s  corpus %5s  crash files %3s  rc %s' \
    "$t" "$took" "${execs:-?}" "$(( ${execs:-0} / (took > 0 ? took : 1) ))" "${cov:-?}" "${ft:-?}" "$corpus" \
    "$crashes" "$rc")
  echo "   $line"
  summary+=("$line")
  if (( crashes > 0 )); then
    ls "$work/artifacts" | sed "s|^|   new artifact: $work/artifacts/|" | tail -n "$crashes"
  fi
done

echo
echo "fuzz.sh summary (${SECONDS_PER_TARGET}s per target):"
printf '  %s\n' "${summary[@]}"
exit $any_crash
