#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 20) with libFuzzer, on the stable
# toolchain: the instrumentation cargo-fuzz uses (SanitizerCoverage) without AddressSanitizer
# (safe Rust: what we look for is a panic, an overflow or a broken invariant), plus debug
# assertions and overflow checks.
#
#   tests/fuzz.sh              # 20 s per target (tests/run.sh, CI)
#   tests/fuzz.sh 3600         # the long run: one hour per target
#   tests/fuzz.sh 600 extract  # one target
#
# Corpora grow in target/fuzz/corpus/<target> (kept between runs), seeded from fuzz/seeds/.
# A crash leaves its input in target/fuzz/artifacts/<target>/ and fails the script; reproduce
# with target/release/<target> <file>, then add the input to the regression
# tests (tests beside the parser) and fuzz/seeds/<target>/.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-20}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(smtp_command data_reader whitelist_xml extract xmldsig receipt)

BIN=target/release
OUT=target/fuzz
echo "fuzz: building ${TARGETS[*]}"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
# The wrapper instruments our crates only; the dependencies are those of `cargo build --release`.
if ! RUSTC_WRAPPER="$PWD/tests/fuzz-rustc" cargo build --release --quiet -p passerelle-fuzz "${bins[@]}"; then
    echo "fuzz: build failed"
    exit 1
fi

failed=0
for t in "${TARGETS[@]}"; do
    corpus=$OUT/corpus/$t artifacts=$OUT/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null
    case $t in   # the shipped samples are seeds too
        whitelist_xml) cp -n config/listeblanchemssante.xml "$corpus"/sample.xml ;;
        extract) cp -n config/Extraction_Correspondance_MSSante.sample.txt "$corpus"/sample.txt ;;
    esac
    log=$OUT/$t.log
    # -rss_limit_mb: the parsers hold one input; 1 GiB means a leak or a blow-up.
    "$BIN/$t" "$corpus" -artifact_prefix="$artifacts/" \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=1024 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    cov=$(grep -a -o 'cov: [0-9]*' "$log" | tail -1)
    if [ $rc -eq 0 ]; then
        echo "fuzz: $t ok: ${runs:-?} runs in ${SECONDS_PER_TARGET}s, ${cov:-cov ?}, corpus $(ls "$corpus" | wc -l)"
    else
        failed=1
        echo "fuzz: $t FAILED (exit $rc); input in $artifacts/:"
        ls "$artifacts" | head -5
        grep -a -E "panicked|ERROR|SUMMARY" "$log" | head -10
    fi
done
exit $failed
