#!/usr/bin/env bash
# dgemma sft against PyTorch: reruns the 20-step reference run recorded in FIXTURES/train/reference_run.json
# (dgemma init + dgemma sft with the JSON's init_args / sft_args; fixed seeds, built-in tiny preset, tokenizer and
# task) and checks every step's diffusion, AR and total loss and grad norm against the PyTorch replay of the same
# batches and noise stored there (scripts/sft_reference_check.py made it; no Python here):
#   |cpp - pytorch| / |pytorch| <= rtol (losses) and <= gnorm_rtol (grad norm), per step from the JSON.
# The tolerances grow with the step: steps 1-2 run on identical weights (fp32 summation order only), later steps
# drift apart chaotically (docs/sft-reference-check.md has the measurements and the reasoning).
# Usage: test_sft_reference.sh /path/to/dgemma /path/to/tests/fixtures
set -euo pipefail
DGEMMA=${1:?dgemma}
FIXTURES=${2:?fixtures dir}
REF=$FIXTURES/train/reference_run.json
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OPENBLAS_NUM_THREADS=1  # the fixture's C++ run used one BLAS thread (any count is within tolerance)

[[ -f $REF ]] || { echo "FAIL: $REF is missing"; exit 1; }
# "key": ["a", "b", ...] on one line -> the words a b ... (the arguments hold no spaces, quotes or commas)
json_words() { sed -n -E "s/^ *\"$1\": *\[(.*)\],? *$/\1/p" "$REF" | tr -d '",'; }
read -r -a INIT_ARGS <<<"$(json_words init_args)"
read -r -a SFT_ARGS <<<"$(json_words sft_args)"
if [[ ${#INIT_ARGS[@]} -eq 0 || ${#SFT_ARGS[@]} -eq 0 ]]; then
  echo "FAIL: no init_args / sft_args in $REF"
  exit 1
fi

run() {  # run LOG command...: quiet unless it fails
  local log=$1 rc=0; shift
  "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: $* (exit $rc)"
    tail -n 30 "$log"
    exit 1
  fi
}
echo "dgemma init ${INIT_ARGS[*]}"
run "$WORK/init.log" "$DGEMMA" init "${INIT_ARGS[@]}" --out "$WORK/model"
want_sha=$(sed -n -E 's/^ *"model_sha256": *"([0-9a-f]*)".*/\1/p' "$REF")
got_sha=$(sha256sum "$WORK/model/model.safetensors" | cut -d' ' -f1)
if [[ $want_sha != "$got_sha" ]]; then
  echo "NOTE: the initial model differs from the fixture's (sha256 $got_sha, fixture $want_sha): if step 1 fails"
  echo "      too, dgemma init changed; regenerate the fixture (docs/sft-reference-check.md)"
fi
echo "dgemma sft ${SFT_ARGS[*]}"
run "$WORK/sft.log" "$DGEMMA" sft --model "$WORK/model" "${SFT_ARGS[@]}" --out "$WORK/run"

# First file: the C++ metrics (one JSON object per line); second: the fixture's step lines.
awk '
function num(line, key,   s) {
  if (!match(line, "\"" key "\": *-?[0-9][0-9.eE+-]*")) return "none"
  s = substr(line, RSTART, RLENGTH); sub(/^"[^"]*": */, "", s); return s
}
function reldiff(a, b,   d) { d = a - b; if (d < 0) d = -d; if (b < 0) b = -b; return d / b }
FNR == NR { s = num($0, "step"); if (s != "none") { n_cpp++; line[s + 0] = $0 }; next }
/"step": *[0-9]+, *"rtol"/ {
  s = num($0, "step") + 0; n_ref++
  tol = num($0, "rtol") + 0; gtol = num($0, "gnorm_rtol") + 0
  if (!(s in line)) { printf "step %2d: missing from the C++ metrics  FAIL\n", s; bad++; next }
  verdict = ""; worst = 0
  split("diffusion_loss ar_loss loss grad_norm", keys, " ")
  for (k = 1; k <= 4; k++) {
    c = num(line[s], keys[k]); p = num($0, keys[k])
    if (c == "none" || p == "none") { verdict = verdict " " keys[k] "-unreadable"; continue }
    r[k] = reldiff(c + 0, p + 0); cv[k] = c + 0; pv[k] = p + 0
    if (r[k] > (k == 4 ? gtol : tol) || r[k] != r[k]) verdict = verdict " " keys[k]
  }
  printf "step %2d: diffusion %.7f vs %.7f (%.1e)  ar %.7f vs %.7f (%.1e)  loss %.1e  grad norm %.5f vs %.5f (%.1e)  tol %.0e/%.0e%s\n",
         s, cv[1], pv[1], r[1], cv[2], pv[2], r[2], r[3], cv[4], pv[4], r[4], tol, gtol, verdict == "" ? "" : "  FAIL:" verdict
  if (verdict != "") bad++
}
END {
  if (n_ref == 0) { print "FAIL: no step lines in the fixture"; exit 1 }
  if (n_cpp != n_ref) { printf "FAIL: %d C++ steps, %d fixture steps\n", n_cpp, n_ref; exit 1 }
  if (bad > 0) { printf "test_sft_reference: %d of %d steps outside the tolerance (C++ first, PyTorch second)\n", bad, n_ref; exit 1 }
  printf "test_sft_reference: %d steps within tolerance\n", n_ref
}' "$WORK/run/metrics.jsonl" "$REF"
