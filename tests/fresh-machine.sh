#!/usr/bin/env bash
# Proves that the README's two commands work on a machine that has none of the test
# components: removes them, clones the repository into a new directory, and runs there
#   cargo run --release -- serve     (until the gateway answers /healthz, then SIGTERM)
#   tests/run.sh                     (which must install everything it needs, then pass)
#
#   tests/fresh-machine.sh           says what it removes, removes it, then runs both
#   tests/fresh-machine.sh --dry-run says what it would remove and stops
#   FRESH_DIR=/path                  where to clone (default: a new directory under /tmp)
#
# Run it before stopping whenever a test starts to need a new component (tests/install-deps.sh
# must then install it). Needs root (apt-get purge). Takes about as long as a CI run, plus the
# dependencies' first build (7 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)

# What a new machine lacks. Debian packages that tests/install-deps.sh installs (the ones the
# machine's image has, such as openssl, the PostgreSQL client and git, stay), the Python
# modules it installs with pip, and the cargo-deb it installs.
PACKAGES="chromium chromium-driver postfix slapd ldap-utils swaks oathtool python3-selenium libio-socket-ssl-perl"
PIP_MODULES="selenium"

installed=""
for p in $PACKAGES; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        installed="$installed $p"
    fi
done
pip_installed=""
for m in $PIP_MODULES; do
    python3 -m pip show -q "$m" >/dev/null 2>&1 && pip_installed="$pip_installed $m"
done

echo "fresh-machine: this removes, to stand for a new machine:"
echo "  Debian packages (apt-get purge):${installed:- none installed}"
echo "  Python modules (pip uninstall):${pip_installed:- none installed}"
echo "  cargo-deb: $(command -v cargo-deb || echo 'not installed') and /usr/local/lib/cargo-deb"
echo "  virtualenvs made by the tests: none (the tests use the default python3)"
echo "  then clones $SRC (HEAD $(git rev-parse --short HEAD); uncommitted changes are not part of it)"
if [ "${1:-}" = "--dry-run" ]; then
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine: must run as root (apt-get purge)" >&2; exit 2; }

export DEBIAN_FRONTEND=noninteractive
if [ -n "$installed" ]; then
    # shellcheck disable=SC2086
    apt-get purge -y -q $installed >/dev/null
    apt-get autoremove -y -q --purge >/dev/null
fi
for m in $pip_installed; do
    python3 -m pip uninstall -y -q --root-user-action=ignore "$m"
done
rm -rf /usr/local/lib/cargo-deb /usr/local/bin/cargo-deb
if tests/install-deps.sh --check >/dev/null 2>&1; then
    echo "fresh-machine: components still present after the purge" >&2
    exit 1
fi
echo "fresh-machine: removed; now: $(sh tests/install-deps.sh --check 2>&1 || true)"

DIR=${FRESH_DIR:-$(mktemp -d /tmp/passerelle-fresh.XXXXXX)}
echo "fresh-machine: cloning into $DIR"
git clone -q "$SRC" "$DIR"
cd "$DIR"

echo "== README command 1: cargo run --release -- serve"
log="$DIR/serve.log"
cargo run --release -- serve >"$log" 2>&1 &
serve=$!
ok=""
# The first build takes minutes: wait for the gateway's health endpoint, bounded.
deadline=$((SECONDS + 1800))
while [ $SECONDS -lt $deadline ] && kill -0 "$serve" 2>/dev/null; do
    if python3 - <<'PY' 2>/dev/null; then ok=1; break; fi
import urllib.request, sys
sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:8025/healthz", timeout=2).status == 200 else 1)
PY
    sleep 2
done
kill -TERM "$serve" 2>/dev/null || true
wait "$serve" 2>/dev/null || true
if [ -z "$ok" ]; then
    echo "fresh-machine: FAILED: serve did not answer /healthz; its log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "fresh-machine: serve answered /healthz on the embedded defaults (dev PKI made in $DIR/certs/dev)"

echo "== README command 2: tests/run.sh"
tests/run.sh
