#!/usr/bin/env bash
# Runs one Criterion test binary for CTest and fails it when a sanitizer
# reported anything (Criterion runs each test in a forked process and counts
# it as passed even if LeakSanitizer or UBSan printed a report at its exit),
# or when an assertion failed in a suite's fini.
# The paytask processes an end-to-end test starts write their logs under
# PT_TEST_LOGDIR, which is checked too.
set -uo pipefail
bin=$1
shift
logdir=$(mktemp -d "${TMPDIR:-/tmp}/pt-test.XXXXXX")
export PT_TEST_LOGDIR=$logdir
out=$logdir/criterion.out
"$bin" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
pattern='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:'
if grep -rEl "$pattern" "$logdir" >/dev/null 2>&1; then
  echo "run-test: sanitizer report(s) found:" >&2
  grep -rE -B2 -A25 "$pattern" "$logdir" | head -200 >&2
  rc=1
fi
# Criterion reports an assertion that fails in a suite's .fini (e.g. "a
# process did not stop cleanly") but still counts every test as passed.
if [ "$rc" -eq 0 ] && grep -q 'Assertion Failed' "$out"; then
  echo "run-test: an assertion failed outside a test (a suite's fini)" >&2
  rc=1
fi
if [ "$rc" -eq 0 ]; then
  rm -rf "$logdir"
else
  echo "run-test: logs kept in $logdir" >&2
fi
exit "$rc"
