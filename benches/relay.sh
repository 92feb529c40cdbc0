#!/usr/bin/env bash
# Relay throughput benchmark (issue 6): ONE run measures smtp-source -> smtp-sink directly,
# through a private Postfix and through passerelle, with the same load and the same sink,
# end to end (N / time from the first connection until the N-th message is at the sink).
#
# Usage: benches/relay.sh            (about 2-4 minutes on 2 cores)
# Environment:
#   RELAY_N=3000          messages per measured run
#   RELAY_SESSIONS=20     smtp-source sessions (-s); above 25 the gateway's client_connection_limit
#                         (50) is raised to twice this (one address opens them all)
#   RELAY_REPEAT=1        repeat every case R times (the table then shows min-max)
#   RELAY_SYSTEMS=direct,postfix,passerelle   subset of the systems (A/B runs of the gateway alone)
#   RELAY_CASES=4k,100k,rcpt10,tls,100k-fast   subset of the cases (100k-fast: sink mss-peer --discard)
#   RELAY_GW_TLS=required passerelle's TLS policy in the TLS case (or "opportunistic")
#   RELAY_WARMUP=200      warm-up messages per system before measuring (0 = none)
#   RELAY_TLS_SINK_CHECK=1  also run passerelle (tls=none) into a plaintext mss-peer: is the TLS sink the limit?
#   BENCH_GW_LOG=info     passerelle log level (PASSERELLE_LOG); Postfix logs every message too
#   BENCH_KEEP=1          keep the temporary directory (/tmp/passerelle-bench-relay.*)
#   RELAY_PERF=DIR        perf record the gateway during each measure into DIR/CASE-SYSTEM.perf.data
#   RELAY_JOURNAL=none    the plain gateway without its journal (default: SQLite, as shipped)
#   BENCH_TMP=DIR         the temporary directory's parent (a tmpfs measures without the disk)
#   PASSERELLE_BIN, MSS_PEER_BIN   binaries (default target/release/passerelle,
#                         target/testpeer/release/mss-peer)
# Needs: postfix (smtp-source, smtp-sink), root (private Postfix instances, smtp-sink -u nobody).
# Loopback only; every wait is bounded; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
exec timeout --foreground -k 10 "${RELAY_TIMEOUT:-1800}" python3 benches/relay.py
