#!/usr/bin/env bash
# Shared state benchmark (issue 27), loopback only, bounded in time: two gateways on one
# private PostgreSQL, ST_ESTABLISHMENTS establishments; the time for a change to be in force
# on both, a reload at that size, /metrics with a label per establishment, and the console's
# establishments page. See benches/state.py.
#
# Usage: benches/state.sh
# Environment: ST_ESTABLISHMENTS=2000  ST_REPEAT=7  ST_TIMEOUT=1800  BENCH_KEEP=1
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || sh tests/install-deps.sh
exec timeout --foreground -k 10 "${ST_TIMEOUT:-1800}" python3 benches/state.py
