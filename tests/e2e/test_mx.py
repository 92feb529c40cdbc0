"""End-to-end tests of the `mx` transport: real DNS packets from a test resolver
(tests/e2e/fakedns.py) on loopback, `[dns] nameservers`, MX preference order, the A fallback
when a domain has no MX, and a bounce for a domain that does not exist.

    swaks --> passerelle (transport kind = "mx", port = PEER_PORT)
              --> DNS 127.0.0.1:<port>: MX ch.mssante.fr -> mx1 (127.0.0.31, down), mx2 (127.0.0.32)
              --> mss-peer on 127.0.0.32:PEER_PORT
"""

import time

from fakedns import FakeDNS
from harness import E2ETestCase, free_port, gateway_config, listener, rcpts, relay_transport, swaks

SENDER = "sender@chu-test.mssante.fr"


class MxTransportTests(E2ETestCase):

    def start_bed(self, zone, queue=None):
        self.peer_port = free_port()
        self.up = self.peer("mx2", listen="127.0.0.32:%d" % self.peer_port)
        self.back = self.peer("etab")  # DSNs to the sender land here
        self.dns = FakeDNS(zone).start()
        self.addCleanup(self.dns.stop)
        self.gw_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["local", "mssante"])],
            routes=[
                {"name": "local", "domains": ["chu-test.mssante.fr"], "transport": "etab"},
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "mx"},
            ],
            transports={
                "mx": {"kind": "mx", "port": self.peer_port, "tls": "none"},
                "etab": relay_transport(self.back.port),
            },
            queue=queue,
            dns={"nameservers": ["127.0.0.1:%d" % self.dns.port]},
        )
        self.gw = self.gateway(cfg)

    def send(self, to, subject):
        rc, out = swaks("--server", "127.0.0.1:%d" % self.gw_port, "--from", SENDER, "--to", to,
                        "--h-Subject", subject, "--timeout", "30")
        self.assertEqual(rc, 0, out)
        return out

    def test_mx_preference_with_fallback_to_the_next_host(self):
        """MX 10 points at a host where nothing listens, MX 20 at the peer: delivered via MX 20,
        after asking our resolver for the MX and then the hosts' addresses."""
        self.start_bed({
            "ch.mssante.fr": {"MX": [(20, "mx2.ch.test"), (10, "mx1.ch.test")]},
            "mx1.ch.test": {"A": ["127.0.0.31"]},
            "mx2.ch.test": {"A": ["127.0.0.32"]},
        })
        self.send("dr.mx@ch.mssante.fr", "via-mx")
        meta, eml = self.up.wait_messages(1, 15)[0]
        self.assertEqual(rcpts(meta), ["dr.mx@ch.mssante.fr"])
        self.assertIn(b"Subject: via-mx", eml)
        names = [q for q in self.dns.queries]
        self.assertIn(("ch.mssante.fr", "MX"), names)
        self.assertIn(("mx2.ch.test", "A"), names)
        self.assertIn("127.0.0.31", self.gw.log(), "the preferred MX should have been tried first")

    def test_no_mx_falls_back_to_the_domain_address(self):
        self.start_bed({"nomx.mssante.fr": {"A": ["127.0.0.32"]}})
        self.send("x@nomx.mssante.fr", "implicit-mx")
        meta, _ = self.up.wait_messages(1, 15)[0]
        self.assertEqual(rcpts(meta), ["x@nomx.mssante.fr"])

    def test_nxdomain_bounces_at_once(self):
        """A domain that does not exist is a permanent failure: a DSN to the sender without
        waiting for the lifetime."""
        self.start_bed({}, queue={"lifetime": "1h"})
        self.send("x@absent.mssante.fr", "nowhere")
        meta, eml = self.back.wait_messages(1, 15)[0]
        self.assertEqual(rcpts(meta), [SENDER])
        self.assertEqual(meta.get("mail_from"), "")
        self.assertIn(b"Action: failed", eml)
        self.assertIn(b"Host or domain name not found", eml)
        time.sleep(1)
        self.assertEqual(self.up.count(), 0)
