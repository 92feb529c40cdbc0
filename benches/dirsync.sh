#!/usr/bin/env bash
# Directory sync benchmark (issue 18), loopback only, bounded in time. A generated extract with
# the real 31-column header (tests/e2e/gen_extract.py), into a private slapd (stock schemas,
# mdb, its default durability: a disk sync per write transaction):
#   (1) first sync of N entries into the empty slapd, batches in LDAP transactions;
#   (2) the same run again: nothing to do (the daily run when nothing changed);
#   (3) a daily delta of 1 % of the entries (a third added, a third removed, a third changed),
#       default settings (one write per entry);
#   (4) the first N/25 entries without transactions, to show the cost of a sync per write;
#   (5) the delta of (3) backwards, batches in transactions.
# Each line: wall time, the tool's summary, peak RSS of the sync process.
# Usage: benches/dirsync.sh [N=535000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-535000}
command -v slapd >/dev/null || [ -x /usr/sbin/slapd ] || sh tests/install-deps.sh
cargo build --release -q
BIN=$PWD/target/release/passerelle
W=$(mktemp -d /tmp/passerelle-bench-dirsync.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

SUFFIX=dc=annuaire,dc=mssante,dc=fr
BASE=ou=mssante,$SUFFIX
python3 - "$N" "$W" <<'PY'
import sys
sys.path.insert(0, "tests/e2e")
import gen_extract as g
n, w = int(sys.argv[1]), sys.argv[2]
rows = g.base_rows(n)
g.write(w + "/e1.txt", rows)
k = max(1, n // 300)          # 1 % of n, in thirds
new, _ = g.variant(rows, adds=k, removes=k, changes=k)
g.write(w + "/e2.txt", new)
PY
echo secret > "$W/pw"
start_slapd() { # $1 = extra config line (or "")
  [ -n "${LP:-}" ] && { kill "$(cat "$W/slapd/run/slapd.pid")" 2>/dev/null || true; sleep 1; }
  rm -rf "$W/slapd"; mkdir -p "$W/slapd/db" "$W/slapd/run"
  sed -e "s|\${root}|$W/slapd|g" -e 's/^maxsize .*/maxsize 8589934592/' tests/ldap/slapd.conf.in > "$W/slapd/slapd.conf"
  [ -n "$1" ] && echo "$1" >> "$W/slapd/slapd.conf"
  printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: annuaire\no: bench\n\n' "$SUFFIX" > "$W/suffix.ldif"
  slapadd -q -f "$W/slapd/slapd.conf" -l "$W/suffix.ldif"
  LP=$(port)
  slapd -f "$W/slapd/slapd.conf" -h "ldap://127.0.0.1:$LP/" -d 0 >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$LP"
}
sync() { # label, extract, extra options...
  local label=$1 file=$2; shift 2
  local t0 t1 out rss
  t0=$(date +%s.%N)
  out=$(timeout 3600 /usr/bin/time -f 'RSS %M' "$BIN" --config "$W/none.toml" directory sync --file "$file" \
        --ldap "ldap://127.0.0.1:$LP" --base "$BASE" --bind-dn "cn=admin,$SUFFIX" --bind-password-file "$W/pw" "$@" 2>&1)
  t1=$(date +%s.%N)
  rss=$(printf '%s\n' "$out" | sed -n 's/^RSS //p')
  printf '%-44s %6.1fs  %s  (peak RSS %d MB)\n' "$label" "$(echo "$t1 - $t0" | bc)" \
    "$(printf '%s\n' "$out" | grep -E '^added' | sed 's/ in [0-9.]*s//')" "$((rss / 1024))"
}

echo "directory sync benchmark: $N entries, slapd $(slapd -VV 2>&1 | sed -n 's/.*slapd \([0-9.]*\).*/\1/p' | head -1), $(nproc) cores, $(date -u +%FT%TZ)"
start_slapd ""
sync "(1) first sync, --transactions:" "$W/e1.txt" --transactions
sync "(2) second run, nothing changed:" "$W/e1.txt"
sync "(3) daily delta of 1 % (default):" "$W/e2.txt"
sync "    (3) again: nothing left:" "$W/e2.txt"
sync "(5) the reverse delta, --transactions:" "$W/e1.txt" --transactions
M=$((N / 25))   # (4) last: it starts a new slapd
head -n $((M + 1)) "$W/e1.txt" > "$W/part.txt"
start_slapd ""
sync "(4) first $M entries, no transactions:" "$W/part.txt" --min-entries 1
