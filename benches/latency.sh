#!/usr/bin/env bash
# Latency benchmark (issue 6): an open-loop client offers 1,000 msg/s of 4 KiB over 20 reused
# sessions for 10 s (+1 s warm-up) to smtp-sink (the client's own floor), to passerelle
# relaying to smtp-sink, and to Postfix relaying to smtp-sink; prints the time from the final
# dot to the 250 (p50/p99/p99.9/max) and the achieved rate, and checks that every accepted
# message reached the sink.
#
# Usage: benches/latency.sh [--rate 1000] [--duration 10] [--sessions 20] [--size 4096] [--json]
#   (or LAT_RATE, LAT_DURATION, LAT_SESSIONS, LAT_SIZE, LAT_WARMUP in the environment)
# The load client alone: python3 benches/latency.py HOST:PORT --rate 1000 --duration 10
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
exec timeout --foreground -k 10 "${LAT_TIMEOUT:-900}" python3 benches/latency.py --bench "$@"
