#!/usr/bin/env bash
# Listeners under attack (issue 25): five attacks against passerelle and Postfix in one run,
# while a legitimate client sends 50 msg/s; prints the share served, p99 and memory before,
# during and after, side by side. See benches/attacks.py for what each attack does.
#
# Usage: benches/attacks.sh [--seconds 15] [--rate 50] [--workers 16] [--only slowloris,10500] [--no-postfix]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec timeout --foreground -k 10 "${ATTACK_TIMEOUT:-1800}" python3 benches/attacks.py "$@"
