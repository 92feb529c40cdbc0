"""End-to-end tests of issue 25: listeners an attacker cannot fill.

The attack that broke the gateway before: 10,500 slow connections from 210 addresses (50 each,
under the per-address cap) filled `max_connections` (10,000, one pool for everyone) and every
legitimate client got `421 Too many connections`. Here, with the default limits:

- on the establishments listener, the 210 addresses are in 210 different /24s (so the
  per-network limit alone cannot hold them) and none is an establishment's MTA; an
  establishment, known by its address, sends 50 messages per second meanwhile;
- on a trust-space listener (`starttls = "require"`, `client_certificate = "require"`), the same
  attack while an operator presenting a valid certificate sends 50 messages per second;

each time >= 95% of the legitimate mail is accepted with p99 < 5 s, the refusals appear in
`/metrics` by reason, the gateway's log stays bounded (the attack's lines, at most 10,000) and
its memory comes back to within 40 MiB of its idle level once the attack is over.
"""

import os
import re
import smtplib
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from attackers import SlowConnections, addresses, percentile
from harness import E2ETestCase, Gateway, free_port, gateway_config, http_get, listener, wait_until
from test_establishments import MTA_D_DN, OP_DN, OP_DOMAIN, message, pki, whitelist_xml

E2E_ALONE = True  # 10,500 connections and two load generators: nothing else at the same time

ADDRESSES = 210
PER_ADDRESS = 50
RATE = 50  # legitimate messages per second
SECONDS = 15
EST_IP = "127.0.0.11"
A_DOM, B_DOM = "chu-a.mssante.fr", "chu-b.mssante.fr"


class ListenerAbuseTests(E2ETestCase):
    timeout = 600

    def setUp(self):
        super().setUp()
        self.pki = pki()
        self.box = self.peer("box")
        wl = os.path.join(self.tmp, "liste.xml")
        with open(wl, "w") as f:
            f.write(whitelist_xml([(OP_DOMAIN, OP_DN)]))
        self.est_port, self.trust_port = free_port(), free_port()
        listeners = [
            # client_certificate = "request" and an establishment known by its certificate:
            # any address may come in to show a certificate, so the attackers hold sessions.
            listener("etablissements", self.est_port, ["establishments", "others"], clients=(),
                     establishments=True, client_certificate="request"),
            listener("trust-space", self.trust_port, ["establishments"], clients=(),
                     starttls="require", client_certificate="require"),
        ]
        routes = [{"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"}]
        mailbox = {"mailbox": "127.0.0.1:%d" % self.box.port, "mailbox_tls": "none"}
        ests = [dict(name="chu-a", domains=[A_DOM], clients=[EST_IP], **mailbox),
                dict(name="chu-b", domains=[B_DOM], clients=["127.0.0.12"], **mailbox),
                dict(name="chu-d", domains=["chu-d.mssante.fr"], client_dns=[MTA_D_DN], **mailbox)]
        cfg = gateway_config(self.tmp, listeners, routes, {}, pki=self.pki.gateway,
                             whitelist={"file": wl}, establishment=ests)
        cfg["tls"]["crls"] = self.pki.crls
        self.gw = self.track(Gateway(self.tmp, cfg, start=False)).start()

    def metrics(self):
        return http_get(*self.gw.admin, path="/metrics")[1].decode()

    def rss_mib(self):
        with open("/proc/%d/status" % self.gw.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        return 0

    def legit_traffic(self, send_one):
        """RATE messages per second for SECONDS: (accepted, total, p99 seconds)."""
        results = []
        lock = threading.Lock()

        def one(n):
            t0 = time.monotonic()
            try:
                ok = send_one(n)
            except (OSError, smtplib.SMTPException):
                ok = False
            with lock:
                results.append((ok, time.monotonic() - t0))

        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            for n in range(RATE * SECONDS):
                delay = start + n / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not waiting for a condition
                pool.submit(one, n)
        accepted = sum(1 for ok, _ in results if ok)
        return accepted, len(results), percentile([d for _, d in results], 0.99)

    def attack(self, port, send_one):
        log_before = len(self.gw.log())
        rss_idle = self.rss_mib()
        def sessions():
            m = re.findall(r'(?m)^passerelle_sessions_active\{[^}]*\} (\S+)', self.metrics())
            return sum(float(x) for x in m)
        with SlowConnections(port, addresses(ADDRESSES, 100, per_24=True), PER_ADDRESS) as atk:
            try:
                # Every connection opened once, and the gateway full of them: the share of
                # max_connections (10,000) left to unattributed clients, 50%. Shed ones are
                # reopened at once (how many are open on the attacker's side at a time depends
                # on how fast it is, not on the gateway).
                wait_until(lambda: atk.opened >= ADDRESSES * PER_ADDRESS and sessions() >= 4500,
                           timeout=60, what="the slow connections opened and the listener full")
            except TimeoutError as e:
                raise AssertionError("%s (live %d, opened %d, closed by the gateway %d)"
                                     % (e, atk.live, atk.opened, atk.closed_by_server))
            rss_attack = self.rss_mib()
            accepted, total, p99 = self.legit_traffic(send_one)
            opened = atk.opened

        wait_until(lambda: sessions() < 10, timeout=60, what="the attack's sessions closed")
        # The listener gives the sessions' memory back within its next tick (5 s).
        try:
            wait_until(lambda: self.rss_mib() <= rss_idle + 40, timeout=15, what="memory given back")
        except TimeoutError:
            pass
        rss_after = self.rss_mib()
        # The attack's own lines (the legitimate mail is logged in full, ~7 lines a message).
        lines = sum(1 for line in self.gw.log()[log_before:].splitlines()
                    if "127.100." in line or "127.101." in line or "flood:" in line)
        print("\n%s: %d/%d legitimate messages accepted, p99 %.2f s; %d attack connections opened; "
              "%d log lines; RSS %d MiB idle, %d MiB under attack, %d MiB after"
              % (self._testMethodName, accepted, total, p99, opened, lines, rss_idle, rss_attack,
                 rss_after))
        self.assertGreaterEqual(accepted, 0.95 * total, "legitimate mail refused under attack")
        self.assertLess(p99, 5.0)
        self.assertLessEqual(lines, 10000, "the log is flooded")
        self.assertLessEqual(rss_after, rss_idle + 40, "memory not given back after the attack")
        m = self.metrics()
        self.assertRegex(m, r'passerelle_connections_refused_total\{[^}]*reason="(stress|timeout)"')
        self.assertTrue(self.gw.running())
        return m

    def test_slow_connections_do_not_lock_establishments_out(self):
        def send_one(n):
            with smtplib.SMTP("127.0.0.1", self.est_port, timeout=20,
                              source_address=(EST_IP, 0)) as s:
                s.ehlo("mta.chu-a.test")
                s.sendmail("dr.x@" + A_DOM, ["dr.y@" + B_DOM],
                           message("dr.x@" + A_DOM, "dr.y@" + B_DOM))
            return True

        m = self.attack(self.est_port, send_one)
        self.assertRegex(m, r'passerelle_connections_refused_total\{listener="etablissements"')

    def test_slow_connections_do_not_lock_the_trust_space_out(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.ca)
        ctx.check_hostname = False
        ctx.load_cert_chain(*self.pki.op)

        def send_one(n):
            with smtplib.SMTP("127.0.0.1", self.trust_port, timeout=20) as s:
                s.ehlo("mx.autre-operateur.test")
                s.starttls(context=ctx)
                s.ehlo("mx.autre-operateur.test")
                s.sendmail("dr.z@" + OP_DOMAIN, ["dr.y@" + B_DOM],
                           message("dr.z@" + OP_DOMAIN, "dr.y@" + B_DOM))
            return True

        m = self.attack(self.trust_port, send_one)
        self.assertRegex(m, r'passerelle_connections_refused_total\{listener="trust-space"')
