#!/usr/bin/env bash
# Parser load times (issues 3, 4 and 17), release build, asserted against the targets:
#   the ANS whitelist, 5,000 domains / 7,000 entries: < 100 ms;
#   the directory extract, 200,000 lines: < 2 s;
#   the national extract, 535,000 lines, as the directory: < 1 s, RSS < 100 MB (extract_memory.sh).
# Run on a quiet machine: the figures are wall-clock times.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSERELLE_PERF_ASSERT=1 cargo test --release --lib -q -- --nocapture --test-threads=1 \
    perf_ 2>&1 \
    | grep -E 'parsed in|loaded in|lookups in|test result|panicked|too slow'

# The national extract at full size as the gateway's directory (issue 17): load time, RSS,
# reload peak (EXTRACT_LINES=0 skips it).
if [ "${EXTRACT_LINES:-535000}" != 0 ]; then
    benches/extract_memory.sh "${EXTRACT_LINES:-535000}"
fi
