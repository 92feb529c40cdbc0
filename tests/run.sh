#!/usr/bin/env bash
# The whole test suite: dependencies, release build, test peer, unit tests, end-to-end tests,
# and a short run of every fuzz target (tests/fuzz.sh).
# Runnable from any directory; ends with one line "N passed, M failed" and exits non-zero
# when anything failed.
#
#   tests/run.sh                      everything
#   E2E_ARGS="-k bdat" tests/run.sh   pass arguments to tests/e2e/run_all.py
#   E2E_TIMEOUT=1200                  bound (seconds) on the end-to-end run
#   SKIP_INSTALL=1                    do not install (the components are still verified)
#   FUZZ_SECONDS=15                   seconds per fuzz target (0 = skip the fuzz step)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOGDIR="$ROOT/target/test-logs"
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$LOGDIR"

passed=0
failed=0
summary() {
    echo
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
step_failed() { # a step that produced no per-test count counts as one failure
    echo "FAILED: $*" >&2
    failed=$((failed + 1))
}

echo "== dependencies"
# A missing component stops the run here, with one line naming it: it never turns into test
# errors further down (the console's browser tests used to ERROR on a missing chromedriver).
if [ -z "${SKIP_INSTALL:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        sh tests/install-deps.sh || true
    elif command -v sudo >/dev/null 2>&1; then
        sudo sh tests/install-deps.sh || true
    else
        echo "not root and no sudo: cannot run tests/install-deps.sh" >&2
    fi
fi
if ! sh tests/install-deps.sh --check; then
    step_failed "test components missing (see the line above): nothing was run"
    summary
    exit 1
fi

echo "== cargo build --release"
if ! cargo build --release; then
    step_failed "cargo build --release"
    summary
    exit 1
fi

echo "== test peer (mss-peer)"
if ! CARGO_TARGET_DIR=target/testpeer cargo build --release --manifest-path testpeer/Cargo.toml; then
    step_failed "building testpeer"
fi

echo "== unit tests: cargo test --release"
set +e
cargo test --release 2>&1 | tee "$LOGDIR/cargo-test.log"
rc=${PIPESTATUS[0]}
set -e
read -r up uf < <(awk '/^test result: /{
        for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
    } END { print p + 0, f + 0 }' "$LOGDIR/cargo-test.log")
passed=$((passed + up))
failed=$((failed + uf))
if [ "$rc" -ne 0 ] && [ "$uf" -eq 0 ]; then
    step_failed "cargo test --release (exit $rc, see $LOGDIR/cargo-test.log)"
fi
echo "unit tests: $up passed, $uf failed"

echo "== end-to-end tests (tests/e2e)"
counts="$LOGDIR/e2e-counts"
rm -f "$counts"
set +e
# shellcheck disable=SC2086
timeout --kill-after=30 "${E2E_TIMEOUT:-1200}" python3 tests/e2e/run_all.py --counts "$counts" ${E2E_ARGS:-} 2>&1 \
    | tee "$LOGDIR/e2e.log"
rc=${PIPESTATUS[0]}
set -e
ep=0; ef=0
if [ -s "$counts" ]; then
    read -r ep ef _ < "$counts"
fi
passed=$((passed + ep))
failed=$((failed + ef))
if [ "$rc" -ne 0 ] && [ "$ef" -eq 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        step_failed "end-to-end tests timed out after ${E2E_TIMEOUT:-1200}s"
    else
        step_failed "end-to-end tests (exit $rc, see $LOGDIR/e2e.log)"
    fi
fi

if [ "${FUZZ_SECONDS:-15}" != 0 ]; then
    echo "== fuzzing (tests/fuzz.sh ${FUZZ_SECONDS:-15}: seconds per target)"
    set +e
    tests/fuzz.sh "${FUZZ_SECONDS:-15}" 2>&1 | tee "$LOGDIR/fuzz.log"
    rc=${PIPESTATUS[0]}
    set -e
    fp=$(grep -c '^fuzz: .* ok:' "$LOGDIR/fuzz.log" || true)
    ff=$(grep -c '^fuzz: .* FAILED' "$LOGDIR/fuzz.log" || true)
    passed=$((passed + fp))
    failed=$((failed + ff))
    if [ "$rc" -ne 0 ] && [ "$ff" -eq 0 ]; then
        step_failed "tests/fuzz.sh (exit $rc, see $LOGDIR/fuzz.log)"
    fi
fi

summary
