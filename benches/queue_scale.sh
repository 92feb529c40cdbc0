#!/usr/bin/env bash
# Queue-at-scale benchmark (issue 6): fills a spool with QS_N small messages (pipelined BDAT
# into a gateway whose next hop is down), stops it, restarts it and measures the recovery time
# ("queue recovered" log line, messages=N checked; listeners bound), then the CPU% of the full
# but idle gateway over 10 s windows (next hop still down, default retry intervals).
#
# Usage: benches/queue_scale.sh                 (200,000 messages, about 2-4 minutes)
#        QS_N=1000000 benches/queue_scale.sh    (the issue's 1M; ~1 GB of spool under /tmp)
# Environment:
#   QS_N=200000  QS_SIZE=400 (bytes/message)  QS_PROCS=2  QS_SESSIONS=8 (per process)
#   QS_WINDOW=64 (pipelined transactions in flight per session)  QS_CPU_WINDOWS=6 (10 s each)
#   QS_VERIFY_LIST=1 (count with `passerelle queue list` after the restart)
#   QS_FILL_TIMEOUT=1200  QS_RECOVERY_TIMEOUT=300  QS_TIMEOUT=3600 (whole script)
#   BENCH_GW_LOG="warn,passerelle::server=info"   BENCH_KEEP=1 (keep /tmp/passerelle-bench-queue.*)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
need_mb=$(( ${QS_N:-200000} * 2 / 1000 + 200 ))
avail_mb=$(df -Pm /tmp | awk 'NR==2{print $4}')
[ "$avail_mb" -gt "$need_mb" ] || { echo "need ~${need_mb} MB free in /tmp, have ${avail_mb}" >&2; exit 2; }
exec timeout --foreground -k 10 "${QS_TIMEOUT:-3600}" python3 benches/queue_scale.py
