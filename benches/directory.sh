#!/usr/bin/env bash
# Directory benchmark (issue 4), loopback only, bounded in time. Prints side by side:
#   (1) RCPT checks/s answered from the gateway's cache,
#   (2) RCPT checks/s that each go to LDAP (cache disabled),
#   (3) raw ldapsearch lookups/s on one connection (the floor LDAP itself gives).
# Usage: benches/directory.sh [N_ADDRESSES=20000] [CHECKS=40000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; CHECKS=${2:-40000}
command -v slapd >/dev/null || [ -x /usr/sbin/slapd ] || sh tests/install-deps.sh
cargo build --release -q
BIN=target/release/passerelle
W=$(mktemp -d /tmp/passerelle-bench-dir.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# A generated extract of N addresses, imported the documented way.
python3 - "$N" > "$W/extract.txt" <<'PY'
import sys
sys.path.insert(0, "tests/e2e")
n = int(sys.argv[1])
cols = open("config/Extraction_Correspondance_MSSante.sample.txt", encoding="utf-8").read().splitlines()
print(cols[0])
tmpl = cols[1].split("|")
for i in range(n):
    t = list(tmpl)
    t[1] = "user%d@dom%d.mssante.fr" % (i, i % 10)
    t[9] = "NOM%d" % i
    print("|".join(t))
PY
python3 -c "
n=$N
import random; random.seed(7)
for _ in range(5000): print('user%d@dom%d.mssante.fr' % ((k:=random.randrange(n)), k % 10))" > "$W/addrs.txt"
$BIN directory import "$W/extract.txt" --ldif "$W/data.ldif" 2>/dev/null
mkdir -p "$W/slapd/db" "$W/slapd/run"
sed "s|\${root}|$W/slapd|g" tests/ldap/slapd.conf.in > "$W/slapd/slapd.conf"
{ printf 'dn: dc=annuaire,dc=mssante,dc=fr\nobjectClass: dcObject\nobjectClass: organization\ndc: annuaire\no: bench\n\n'; sed '1,2d' "$W/data.ldif"; } > "$W/all.ldif"
slapadd -q -f "$W/slapd/slapd.conf" -l "$W/all.ldif"
LP=$(port)
slapd -f "$W/slapd/slapd.conf" -h "ldap://127.0.0.1:$LP/" -d 0 >/dev/null 2>&1 & PIDS+=($!)
wait_port "$LP"

gateway() { # name cache_size -> starts a gateway on port $GP (not in a subshell: its PID must reach the trap)
  local gp; gp=$(port); GP=$gp
  cat > "$W/$1.toml" <<TOML
[server]
hostname = "bench.test"
spool = "$W/$1-spool"
[[listener]]
name = "l"
address = "127.0.0.1:$gp"
clients = ["127.0.0.0/8"]
starttls = "off"
routes = ["mss"]
[[route]]
name = "mss"
domains = ["*.mssante.fr"]
transport = "t"
directory = true
[transport.t]
kind = "relay"
next_hop = "127.0.0.1:9"
tls = "none"
[directory]
kind = "ldap"
url = "ldap://127.0.0.1:$LP"
base = "dc=annuaire,dc=mssante,dc=fr"
cache_size = $2
cache_ttl = "10m"
negative_ttl = "1m"
[smtp]
recipient_limit = 1000
hard_error_limit = 1000000
junk_command_limit = 1000000
TOML
  PASSERELLE_LOG=warn $BIN serve --config "$W/$1.toml" >"$W/$1.log" 2>&1 & PIDS+=($!)
  wait_port "$gp"
}

echo "directory benchmark: $N entries in slapd, $CHECKS RCPT checks, $(nproc) cores, $(date -u +%FT%TZ)"
gateway cached 1000000; GC=$GP
timeout 300 python3 benches/rcpt_load.py "127.0.0.1:$GC" "$W/addrs.txt" --sessions 8 --total 5000 >/dev/null  # warm the cache
printf '%-44s ' "(1) RCPT checks from the cache:"
timeout 300 python3 benches/rcpt_load.py "127.0.0.1:$GC" "$W/addrs.txt" --sessions 8 --total "$CHECKS"
gateway ldap 0; GL=$GP
printf '%-44s ' "(2) RCPT checks each asking LDAP:"
timeout 300 python3 benches/rcpt_load.py "127.0.0.1:$GL" "$W/addrs.txt" --sessions 8 --total "$CHECKS"
printf '%-44s ' "(3) raw ldapsearch, one connection:"
t0=$(date +%s.%N)
found=$(ldapsearch -x -H "ldap://127.0.0.1:$LP" -b dc=annuaire,dc=mssante,dc=fr -LLL -f "$W/addrs.txt" "(mail=%s)" dn | grep -c '^dn:')
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$(wc -l < "$W/addrs.txt")" -v f="$found" 'BEGIN{printf "%d lookups in %.2fs = %.0f lookups/s (found %d)\n", n, b-a, n/(b-a), f}'
