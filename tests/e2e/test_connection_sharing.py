"""End-to-end tests of issue 17: trust-space connections shared across domains by the verified
peer DN, and TLS session resumption.

    smtplib --> passerelle (transport kind = "mx", tls = "mutual")
                --> DNS 127.0.0.1:<port>: MX a/b/c.partage.mssante.fr -> mx.operateur-partage.test
                --> mss-peer on 127.0.0.41 (STARTTLS + client certificate), certificate DN = SHARE_DN

The whitelist declares SHARE_DN for a.partage and b.partage (b also declares another DN), and
only a different DN for c.partage: a and b may share one connection and one transaction; c
must never use it, and is refused by its pin on a connection of its own.
"""

import re

from fakedns import FakeDNS
from harness import free_port, rcpts, wait_until
from test_trust_space import SENDER, TrustTestCase, base_whitelist_entries, op_dn, simple_message

SHARE_IP = "127.0.0.41"
SHARE_DN = op_dn("mx.operateur-partage.test", "999999999900041", o="OPERATEUR PARTAGE")
OTHER_DN = op_dn("mx.autre-operateur.test", "999999999900042", o="AUTRE OPERATEUR")
DOM_A, DOM_B, DOM_C = ("%s.partage.mssante.fr" % k for k in "abc")
RCPT_A, RCPT_B, RCPT_C = ("dr.%s@%s" % (k, d) for k, d in zip("abc", (DOM_A, DOM_B, DOM_C)))


class ConnectionSharingTests(TrustTestCase):

    def start_bed(self):
        self.pki.issue("partage", SHARE_DN, ip=SHARE_IP)
        port = free_port(SHARE_IP)
        self.op = self.operator_peer("partage", SHARE_IP, port=port)
        self.dns = FakeDNS({d: {"MX": [(10, "mx.operateur-partage.test")]} for d in (DOM_A, DOM_B, DOM_C)}
                           | {"mx.operateur-partage.test": {"A": [SHARE_IP]}}).start()
        self.addCleanup(self.dns.stop)
        self.write_whitelist(base_whitelist_entries() + [
            (DOM_A, SHARE_DN), (DOM_B, OTHER_DN), (DOM_B, SHARE_DN), (DOM_C, OTHER_DN)])
        routes = [{"name": "partage", "domains": [DOM_A, DOM_B, DOM_C], "transport": "partage-mx",
                   "whitelist": True, "directory": False}]
        gw = self.start_gateway(routes_extra=routes,
                                transports={"partage-mx": {"kind": "mx", "port": port, "tls": "mutual"}},
                                queue={"connection_cache_time": "60s", "retry": ["1h"]}, start=False)
        cfg = dict(gw.config)
        cfg["dns"] = {"nameservers": ["127.0.0.1:%d" % self.dns.port]}
        gw.set_config(cfg)
        gw.start()

    def handshakes(self):
        """The peer's `tls ok` lines: (full or resumed) per TLS session it accepted."""
        return re.findall(r"(?m)^tls ok .* handshake=(\w+) ", self.op.log())

    def test_shared_when_declared_never_when_not(self):
        self.start_bed()
        # One message to a, b and c.
        self.send(self.etab_port, SENDER, [RCPT_A, RCPT_B, RCPT_C],
                  simple_message("partage-1", SENDER, RCPT_A))
        meta, _ = self.op.wait_messages(1, 20)[0]
        # a and b, whose declared DNs include the peer's, went in one transaction.
        self.assertEqual(sorted(rcpts(meta)), sorted([RCPT_A, RCPT_B]))
        # c declares another DN: refused by its pin, on a connection of its own, never sent.
        wait_until(lambda: any(RCPT_C in l and "deferred" in l
                               and "is not declared in the MSSante whitelist for %s" % DOM_C in l
                               for l in self.gw.log().splitlines()), 20, what="c.partage refused by its pin")
        self.assertEqual(len(self.handshakes()), 2, self.op.log())

        # More mail for a, then for b alone, one after the other (two at once would rightly
        # open a second connection): the cached connection carries it, no new handshake.
        for i, r in enumerate([RCPT_A, RCPT_B, RCPT_A]):
            self.send(self.etab_port, SENDER, [r], simple_message("partage-%d" % (i + 2), SENDER, r))
            msgs = self.op.wait_messages(i + 2, 20)
        self.assertEqual([rcpts(m) for m, _ in msgs[1:]], [[RCPT_A], [RCPT_B], [RCPT_A]])
        # Every delivery finished on the gateway's side (a and b of the first message, then the
        # three): no attempt is still under way that could open a connection.
        wait_until(lambda: len(re.findall(r'status="?sent', self.gw.log())) >= 5, 20,
                   what="the gateway's five deliveries")
        self.assertEqual(len(self.handshakes()), 2, "a and b reuse the connection:\n" + self.op.log())
        self.assertEqual(len(re.findall(r"(?m)^connect ", self.op.log())), 2, self.op.log())
        # c never reached RCPT on any connection.
        self.assertFalse(any(RCPT_C in rcpts(m) for m, _ in msgs))
        self.assertEqual(self.op.log().count("cmd RCPT"), 5, self.op.log())

    def test_sessions_resume_with_the_pin(self):
        """A new connection to the same operator resumes the TLS session, and the pin still
        applies: a later connection for c (another DN declared) is refused though resumed."""
        self.start_bed()
        self.send(self.etab_port, SENDER, [RCPT_A], simple_message("reprise-1", SENDER, RCPT_A))
        self.op.wait_messages(1, 20)
        # c cannot use the cached connection (another DN declared): a second connection, which
        # resumes the first one's TLS session and is refused by c's pin all the same.
        self.send(self.etab_port, SENDER, [RCPT_C], simple_message("reprise-2", SENDER, RCPT_C))
        wait_until(lambda: len(self.handshakes()) >= 2, 20, what="a second TLS session")
        self.assertEqual(self.handshakes()[:2], ["full", "resumed"], self.op.log())
        wait_until(lambda: any(RCPT_C in l and "is not declared in the MSSante whitelist for %s" % DOM_C in l
                               for l in self.gw.log().splitlines()), 20, what="pin refusal on resumption")
        self.assertEqual(self.op.count(), 1)


if __name__ == "__main__":
    import unittest
    unittest.main()
