#!/usr/bin/env bash
# Parser load times (issues 3 and 4), release build, asserted against the targets:
#   the ANS whitelist, 5,000 domains / 7,000 entries: < 100 ms;
#   the directory extract, 200,000 lines: < 2 s.
# Run on a quiet machine: the figures are wall-clock times.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSERELLE_PERF_ASSERT=1 cargo test --release --lib -q -- --nocapture --test-threads=1 \
    perf_ 2>&1 \
    | grep -E 'parsed in|loaded in|lookups in|test result|panicked|too slow'
