#!/usr/bin/env bash
# Journal benchmark (issue 14), loopback only, bounded in time:
#   1. the writer's rate through the gateway's own path (channel, writer thread, batches);
#   2. a journal of 10 million events (a year of synthetic traffic between 20 establishments
#      and 50 operators, bulk-loaded with the writer's batches), then the typical `track`
#      queries (--to, --id, --message-id, --from --since) and a monthly
#      `stats --by establishment`, each timed as a whole command, min / median / max.
# SQLite, then PostgreSQL (a private server started from a temporary data directory).
#
# Usage: benches/journal.sh
# Environment:
#   JB_EVENTS=10000000  JB_WRITER_EVENTS=300000  JB_REPEAT=5  JB_BACKENDS=sqlite,postgres
#   JB_FILL_TIMEOUT=1800 (per fill)  JB_TIMEOUT=5400 (whole script)  BENCH_KEEP=1
# Needs ~10 GB free in /tmp for 10M events per backend (removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
if [ "${BENCH_BUILD:-0}" = 1 ] || [ ! -x target/release/examples/journal_fill ]; then
  _wait_no_cargo && timeout 1800 cargo build --release -q --example journal_fill
fi
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || sh tests/install-deps.sh
need_mb=$(( ${JB_EVENTS:-10000000} / 1000 + 500 ))
avail_mb=$(df -Pm /tmp | awk 'NR==2{print $4}')
[ "$avail_mb" -gt "$need_mb" ] || { echo "need ~${need_mb} MB free in /tmp, have ${avail_mb}" >&2; exit 2; }
exec timeout --foreground -k 10 "${JB_TIMEOUT:-5400}" python3 benches/journal.py
