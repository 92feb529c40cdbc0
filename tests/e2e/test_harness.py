"""Self-tests of the harness itself (no gateway needed): when these fail, the test bed is
broken (Postfix/swaks/mss-peer missing or misconfigured), not passerelle."""

import os
import tomllib
import unittest

from harness import E2ETestCase, Postfix, addr, rcpts, smtp_session, swaks, toml_dumps


class HarnessSelfTest(E2ETestCase):

    def test_two_private_postfix_instances_relay_to_peer(self):
        """swaks -> Postfix 1 -> Postfix 2 (transport_maps) -> mss-peer; both instances at once,
        each with its own queue, data directory, log file and syslog_name."""
        peer = self.peer("sink")
        pf2 = self.postfix("second", relayhost="[127.0.0.1]:%d" % peer.port)
        pf1 = self.postfix("first", relayhost="[127.0.0.1]:9",  # relayhost unused: transport map wins
                           transport_map_lines=["mssante.fr smtp:[127.0.0.1]:%d" % pf2.port,
                                                ".mssante.fr smtp:[127.0.0.1]:%d" % pf2.port])
        self.assertTrue(pf1.running() and pf2.running())
        self.assertNotEqual(pf1.master_pid, pf2.master_pid)
        rc, out = swaks("--server", "127.0.0.1:%d" % pf1.port, "--from", "a@chu-test.mssante.fr",
                        "--to", "b@autre.mssante.fr", "--h-Subject", "harness-selftest")
        self.assertEqual(rc, 0, out)
        meta, eml = peer.wait_messages(1, 20)[0]
        self.assertEqual(addr(meta["mail_from"]), "a@chu-test.mssante.fr")
        self.assertEqual(rcpts(meta), ["b@autre.mssante.fr"])
        self.assertIn(b"Subject: harness-selftest", eml)
        self.assertIn(b"by first.chu-test.mssante.fr (Postfix)", eml)
        self.assertIn(b"by second.chu-test.mssante.fr (Postfix)", eml)
        self.assertRegex(pf1.log(), r"pf-e2e-first-\d+/smtp\[\d+\]: \w+: to=<b@autre\.mssante\.fr>, "
                                    r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent" % pf2.port)
        self.assertNotIn("pf-e2e-first", pf2.log())
        pf1.stop()
        pf2.stop()
        self.assertFalse(pf1.running() or pf2.running())

    def test_peer_restart_and_smtplib(self):
        peer = self.peer("p")
        with smtp_session("127.0.0.1", peer.port) as s:
            s.sendmail("x@chu-test.mssante.fr", ["y@autre.mssante.fr"], b"Subject: one\r\n\r\n.dot\r\n")
        self.assertEqual(peer.wait_messages(1)[0][1], b"Subject: one\r\n\r\n.dot\r\n")
        peer.stop()
        peer.start()
        with smtp_session("127.0.0.1", peer.port) as s:
            s.sendmail("", ["y@autre.mssante.fr"], b"Subject: two\r\n\r\nbody\r\n")
        msgs = peer.wait_messages(2)
        self.assertEqual(len(msgs), 2)
        self.assertEqual(addr(msgs[1][0]["mail_from"]), "")

    def test_toml_writer(self):
        cfg = {"server": {"spool": "/tmp/x", "admin": "127.0.0.1:1"},
               "listener": [{"name": "a", "routes": ["r1", "r2"]}, {"name": "b", "routes": []}],
               "transport": {"trust-space": {"kind": "relay", "tls": "none"}},
               "queue": {"retry": ["1s", "5s"], "lifetime": "4s"},
               "route": [{"name": "r", "domains": ["*"], "reject": "550 5.7.1 \"quoted\" é"}]}
        self.assertEqual(tomllib.loads(toml_dumps(cfg)), cfg)


if __name__ == "__main__":
    unittest.main()
