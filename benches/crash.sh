#!/usr/bin/env bash
# Crash-consistency benchmark: the long version of test_robustness.CrashTests.
# A steady load of concurrent smtplib senders (unique Message-IDs, sha256-checked bodies) into
# passerelle relaying to an mss-peer sink; the gateway is kill -9'd N times at random moments
# and restarted on the same spool; then the queue drains and every delivered copy is checked
# against what got a 250.
# Usage: benches/crash.sh [KILLS=100]
#   CRASH_RATE=200        messages/s offered by all senders together (0 = flood, as in CI)
#   CRASH_INTERVAL=2-6    seconds between kills, uniform
#   CRASH_MAX_DUP_RATIO=0.001  the duplicate target (issue 7: 0.1% of accepted)
#   CRASH_SEED=n replays a kill schedule; CRASH_SENDERS=n concurrent senders (4)
# Exit status: that of the test (0 = nothing acknowledged lost or truncated, nothing delivered
# again after a logged delivery or removal, all duplicates within CRASH_MAX_DUP_RATIO).
# Duplicates come from the two windows no SMTP relay can close (RFC 1047): the next hop stored
# the copy but the gateway died before reading its 250, or the gateway stored a message but
# died before its 250 reached the client, which sends it again. Each lasts about a millisecond,
# so their rate is roughly window / time between kills: a flood with kills every 0.3 s (the CI
# variant) shows a few percent, one kill every few seconds about 0.05%.
set -uo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-100}
BIN=${PASSERELLE_BIN:-target/release/passerelle}
PEER=${MSS_PEER_BIN:-target/testpeer/release/mss-peer}
[ -x "$BIN" ] || cargo build --release -q || exit 1
[ -x "$PEER" ] || cargo build --release -q --manifest-path testpeer/Cargo.toml --target-dir target/testpeer || exit 1
SUMMARY=$(mktemp /tmp/passerelle-crash.XXXXXX.json)
trap 'rm -f "$SUMMARY"' EXIT
echo "crash benchmark: $KILLS kills, $(nproc) cores, $(date -u +%FT%TZ)"
export CRASH_RATE=${CRASH_RATE:-200} CRASH_INTERVAL=${CRASH_INTERVAL:-2-6} CRASH_MAX_DUP_RATIO=${CRASH_MAX_DUP_RATIO:-0.001}
echo "load: ${CRASH_RATE} msg/s (0 = flood), kills every ${CRASH_INTERVAL} s, duplicate target ${CRASH_MAX_DUP_RATIO}"
CRASH_KILLS=$KILLS CRASH_SUMMARY=$SUMMARY python3 tests/e2e/run_all.py -q test_robustness.CrashTests.test_crash_kill9_under_load \
    > "$SUMMARY.log" 2>&1
rc=$?
grep -a -E "^(FAIL|ERROR|AssertionError|e2e:)" "$SUMMARY.log" | cut -c1-400
if [ -s "$SUMMARY" ]; then
    python3 - "$SUMMARY" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
acc = s["accepted"] or 1
rows = [
    ("kills (gateway starts)", "%d (%d)" % (s["kills"], s["gateway starts"])),
    ("seed", s["seed"]),
    ("load duration", "%.1f s" % s["load seconds"]),
    ("accepted (250)", s["accepted"]),
    ("delivered copies / unique", "%d / %d" % (s["delivered"], s["delivered unique"])),
    ("lost (250 but never delivered)", s["lost"]),
    ("truncated or corrupted", s["truncated"]),
    ("offered load", "%s msg/s%s, kills every %s s" % (s["rate"], " (flood)" if not s["rate"] else "", s["interval"])),
    ("duplicated Message-IDs", "%d (%.3f%% of accepted, %.2f per kill)"
     % (s["duplicates"], 100.0 * s["duplicates"] / acc, s["duplicates"] / max(1, s["kills"]))),
    ("  same queue ID delivered again", "%d (%.3f%% of accepted)"
     % (s["gateway duplicates"], 100.0 * s["gateway duplicates"] / acc)),
    ("    after a logged status=sent", "%d (must be 0)" % s["re-sent after a logged status=sent"]),
    ("    in flight at a kill", "%d (next hop stored it, its 250 not processed)" % s["re-sent, in flight at a kill"]),
    ("    after a logged removal", s["resurrected after removal"]),
    ("  client retry after a lost 250", s["client-retry duplicates"]),
    ("delivered without a 250 seen", s["delivered without 250"]),
    ("connection errors seen by senders", s["connection errors"]),
    ("4xx replies", s["4xx replies"] or "none"),
    ("quarantined spool records", s["quarantined records"]),
]
for k, v in rows:
    print("%-36s %s" % (k, v))
PY
else
    echo "no summary (the test did not get that far); log:"; tail -50 "$SUMMARY.log"
fi
# a failed test keeps its directory (sink + spool: hundreds of MB after a long run)
kept=$(grep -a -o "kept in /tmp/pe2e-[A-Za-z0-9_]*" "$SUMMARY.log" | head -1 | cut -d' ' -f3)
if [ -n "$kept" ] && [ -z "${CRASH_KEEP:-}" ]; then
    echo "(removing $kept; CRASH_KEEP=1 keeps it)"; rm -rf "$kept"
fi
rm -f "$SUMMARY.log"
exit $rc
