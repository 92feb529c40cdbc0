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
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postfix swaks slapd ldap-utils openssl \
    libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl ca-certificates \
    chromium chromium-driver fonts-dejavu-core >/dev/null
