# Shared by the end-to-end scripts in tests/cli: pass/fail counters and the two assertion helpers.
# Source it after cd-ing into the work directory; end the script with `finish NAME`.
passed=0 failed=0

# expect CODE PATTERN -- command...: exit code must be CODE and stdout+stderr must match PATTERN
# (extended regex). On failure the command, the expectation and the last 40 output lines are printed.
expect() {
  local code=$1 pattern=$2; shift 3
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [[ $rc -eq $code ]] && grep -qE -- "$pattern" <<<"$out"; then passed=$((passed + 1)); else
    failed=$((failed + 1))
    printf 'FAIL: %s\n  expected exit %s and /%s/, got exit %s:\n%s\n' "$*" "$code" "$pattern" "$rc" "$(tail -n 40 <<<"$out")"
  fi
}

# check "description" command...: the command must succeed.
check() {
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $what"; fi
}
