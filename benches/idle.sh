#!/usr/bin/env bash
# Idle sessions benchmark (issue 6): opens 10,000 concurrent idle SMTP sessions to passerelle
# (after the banner), holds them, prints the gateway's VmRSS before/with/after them, and the
# same for Postfix with its default 100 smtpd processes (RSS/PSS) for comparison.
#
# Usage: benches/idle.sh
# Environment:
#   IDLE_SESSIONS=10000   sessions to open
#   IDLE_HOLD=5           seconds to hold them idle before reading VmRSS
#   IDLE_EHLO=1           send EHLO after the banner (default: stay idle right after the banner)
#   IDLE_POSTFIX=0        skip the Postfix comparison
#   BENCH_KEEP=1          keep /tmp/passerelle-bench-idle.*
# The gateway gets [smtp] max_connections and client_connection_limit = sessions + 1000; the
# client spreads its connections over 127.0.0.2-127.0.0.5. Needs RLIMIT_NOFILE > sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
want=$(( ${IDLE_SESSIONS:-10000} + 1000 ))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
  ulimit -Hn "$want" 2>/dev/null || echo "cannot raise the hard fd limit ($hard) to $want" >&2
fi
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "ulimit -n: $(ulimit -n)" >&2
exec timeout --foreground -k 10 "${IDLE_TIMEOUT:-600}" python3 benches/idle.py --bench "$@"
