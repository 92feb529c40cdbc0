# Sourced by the benchmark scripts (from the repository root).
# ensure_binaries: the release gateway and the test peer must exist; they are built when
# missing (or always with BENCH_BUILD=1), but never while another cargo runs.
PASSERELLE_BIN=${PASSERELLE_BIN:-target/release/passerelle}
MSS_PEER_BIN=${MSS_PEER_BIN:-target/testpeer/release/mss-peer}
export PASSERELLE_BIN="$(realpath -m "$PASSERELLE_BIN")" MSS_PEER_BIN="$(realpath -m "$MSS_PEER_BIN")"

_wait_no_cargo() {
  local i
  for i in $(seq 1 120); do pgrep -x cargo >/dev/null || return 0; sleep 5; done
  echo "another cargo is still running after 10 minutes; giving up the build" >&2; return 1
}

ensure_binaries() {
  if [ "${BENCH_BUILD:-0}" = 1 ] || [ ! -x "$PASSERELLE_BIN" ]; then
    _wait_no_cargo && timeout 1800 cargo build --release -q
  fi
  if [ "${BENCH_BUILD:-0}" = 1 ] || [ ! -x "$MSS_PEER_BIN" ]; then
    _wait_no_cargo && CARGO_TARGET_DIR=target/testpeer timeout 1800 \
      cargo build --release -q --manifest-path testpeer/Cargo.toml
  fi
  [ -x "$PASSERELLE_BIN" ] || { echo "missing $PASSERELLE_BIN" >&2; exit 2; }
  command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || {
    echo "smtp-source missing: install postfix (tests/install-deps.sh does it)" >&2; exit 2; }
  export PATH="$PATH:/usr/sbin:/sbin"
}
