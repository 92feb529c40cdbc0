#!/usr/bin/env bash
# Crash-consistency benchmark: the long version of test_robustness.CrashTests.
# A steady load of concurrent smtplib senders (unique Message-IDs, sha256-checked bodies) into
# passerelle relaying to an mss-peer sink; the gateway is kill -9'd N times at random moments
# (0.05-0.6 s apart) and restarted on the same spool; then the queue drains and every delivered
# copy is checked against what got a 250.
# Usage: benches/crash.sh [KILLS=100]      (CRASH_SEED=n to replay a kill schedule,
#                                          CRASH_SENDERS=n concurrent senders, default 4)
# Exit status: that of the test (0 = nothing acknowledged lost or truncated, nothing sent again
# after its removal, re-deliveries of messages the gateway knew were delivered within
# CRASH_MAX_DUP_RATIO of accepted, default 0.001).
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
    ("duplicated Message-IDs", s["duplicates"]),
    ("  same queue ID delivered again", "%d (%.3f%% of accepted)"
     % (s["gateway duplicates"], 100.0 * s["gateway duplicates"] / acc)),
    ("    after a logged status=sent", "%d (%.3f%% of accepted; the gateway's window)"
     % (s["re-sent after a logged status=sent"], 100.0 * s["re-sent after a logged status=sent"] / acc)),
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
