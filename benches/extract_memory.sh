#!/usr/bin/env bash
# The national extract as the gateway's directory (issue 17, kind = "extract"), N lines
# generated with the real header (tests/e2e/gen_extract.py):
#   - `passerelle directory lookup`: wall time (load + one lookup) and peak RSS;
#   - `passerelle serve`: load time (from its log), RSS once loaded, and the peak (VmHWM)
#     after the file is replaced and reloaded (the old directory serves until the new one
#     is loaded).
# Targets: load < 1 s, RSS < 100 MB, reload without doubling the peak.
# Usage: benches/extract_memory.sh [N=535000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-535000}
cargo build --release -q
BIN=$PWD/target/release/passerelle
W=$(mktemp -d /tmp/passerelle-bench-extract.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
X="$W/Extraction_Correspondance_MSSante_202611210300.txt"
python3 -c "
import sys; sys.path.insert(0, 'tests/e2e')
import gen_extract as g
g.write('$X', g.base_rows($N))"
A=$(sed -n 2p "$X" | cut -d'|' -f2)
P=$(port)
cat > "$W/p.toml" <<TOML
[server]
hostname = "bench.test"
spool = "$W/spool"
[[listener]]
name = "l"
address = "127.0.0.1:$P"
clients = ["127.0.0.0/8"]
starttls = "off"
routes = ["r"]
[[route]]
name = "r"
domains = ["*"]
reject = "550 5.7.1 no"
[directory]
kind = "extract"
file = "$X"
TOML
echo "extract memory: $N lines ($(( $(stat -c %s "$X") / 1048576 )) MiB), $(nproc) cores, $(date -u +%FT%TZ)"
for i in 1 2 3; do
  /usr/bin/time -f "directory lookup: %e s wall, peak RSS %M KB" "$BIN" --config "$W/p.toml" directory lookup "$A" 2>&1 >/dev/null
done
kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
PASSERELLE_LOG=info "$BIN" --config "$W/p.toml" serve >"$W/serve.log" 2>&1 & PID=$!
for _ in $(seq 600); do grep -q "directory extract loaded" "$W/serve.log" && break; sleep 0.05; done
sleep 1
echo "serve: loaded in $(grep -o 'load_ms=[0-9]*' "$W/serve.log" | head -1 | cut -d= -f2) ms; RSS $(kb VmRSS) KB, peak $(kb VmHWM) KB"
cp "$X" "$X.new" && echo >> "$X.new" && mv "$X.new" "$X"   # a new file: reloaded within 5 s
for _ in $(seq 400); do [ "$(grep -c 'directory extract loaded' "$W/serve.log")" -ge 2 ] && break; sleep 0.05; done
sleep 1
echo "serve after a reload: RSS $(kb VmRSS) KB, peak during the reload $(kb VmHWM) KB"
