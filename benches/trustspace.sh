#!/usr/bin/env bash
# Trust-space mix (issue 17): Postfix and passerelle side by side in ONE run, each relaying
# 4 KiB messages to recipients drawn over 1,000 domains served by 20 mutual-TLS operators
# (mss-peer on 127.0.0.60-79), whitelist shaped like the real one, MX from a local DNS server.
# Prints msg/s end to end, new TLS sessions (full + resumed) and connections per 100 messages
# after warm-up, new connections per operator per minute, and CPU per message (with the
# ratio to Postfix's in the same round). See benches/trustspace.py for the bed.
#
# Usage: benches/trustspace.sh        (about 2-4 minutes on 2 cores)
# Environment:
#   TS_N=4000 TS_WARMUP=1000 TS_SESSIONS=20 TS_LOAD_PROCS=2 TS_REPEAT=1
#   TS_RATE=0     a steady load of R msg/s in all (0: as fast as answered, i.e. saturation)
#   TS_SYSTEMS=postfix,passerelle,nojournal (journal kind = "none")   BENCH_GW_LOG=info   BENCH_KEEP=1
#   TS_JOURNAL={"batch_size":10000}   [journal] settings of the journal-on gateway (JSON)
#   TS_PERF=DIR   perf record the gateway during each measure into DIR/SYSTEM.perf.data
# Needs: postfix (root: private instance), the release gateway and test peer.
# Loopback only; every wait is bounded; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ensure_binaries
exec timeout --foreground -k 10 "${TS_TIMEOUT:-1800}" python3 benches/trustspace.py
