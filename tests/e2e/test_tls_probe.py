"""End-to-end tests of `passerelle tls probe` (issue 16): against the ANS audit cases of
test_trust_space (the operators as mss-peer instances, each on its own loopback address,
requiring STARTTLS and our client certificate), against a real Postfix requiring a client
certificate (one that trusts our CA, one that does not), and by MX lookup through the loopback
DNS responder. Each: the verdict, the exit code, the reason, and `--format json` parsed.
"""

import json
import os
import re
import unittest

from fakedns import FakeDNS
from test_trust_space import (CASE, CASES, MEMECN_DECLARED, PFOP_DOMAIN,
                              TrustTestCase, postfix_requiring_ccert)

# Expected probe verdicts per audit case (regex on the verdict line).
EXPECTED = {
    "valide": (0, r"^verdict: OK delivery to valide\.audit\.mssante\.fr via \S+ would succeed$"),
    "sanstls": (1, r"^verdict: REFUSED STARTTLS not offered; TLS is required, not sending in clear$"),
    "expire": (1, r"^verdict: REFUSED peer certificate refused: certificate expired$"),
    "revoque": (1, r"^verdict: REFUSED peer certificate refused: certificate revoked$"),
    "nonigc": (1, r"^verdict: REFUSED peer certificate refused: certificate not issued by a trusted authority"),
    "etranger": (1, r"^verdict: REFUSED peer certificate refused: certificate not issued by a trusted authority"),
    "autredn": (1, r'^verdict: REFUSED peer certificate DN ".*OPERATEUR INTRUS.*" is not declared in the '
                   r"MSSante whitelist for autredn\.audit\.mssante\.fr$"),
    "memecn": (1, r'^verdict: REFUSED peer certificate DN ".*OPERATEUR USURPATEUR.*" is not declared in the '
                  r"MSSante whitelist for memecn\.audit\.mssante\.fr$"),
}


class ProbeAuditTests(TrustTestCase):
    def setUp(self):
        super().setUp()
        self.ops = {c.key: self.operator_peer(c.key, c.ip, cert=c.peer_tls) for c in CASES}
        self.start_gateway(start=False)

    def probe(self, *args):
        return self.gw.cli("tls", "probe", *args, timeout=60)

    def test_audit_peers(self):
        for c in CASES:
            with self.subTest(case=c.key):
                target = "%s:%d" % (c.ip, self.ops[c.key].port)
                rc, out = self.probe(target, "--rcpt", c.rcpt)
                want_rc, verdict = EXPECTED[c.key]
                self.assertEqual(rc, want_rc, out)
                last = out.strip().splitlines()[-1]
                self.assertRegex(last, verdict, out)
                print("\n    %-8s %s" % (c.key, last))
                if c.key in ("valide", "memecn"):   # the full output, for the note
                    print("\n".join("      | " + l for l in out.splitlines()))
                # One line per step, with its timing.
                self.assertRegex(out, r"\[\s*\d+ ms\] connect\s+ok")
                rc2, js = self.probe(target, "--rcpt", c.rcpt, "--format", "json")
                self.assertEqual(rc2, want_rc, js)
                report = json.loads(js)
                self.assertEqual(report["ok"], want_rc == 0)
                self.assertEqual(report["domain"], c.domain)
                self.assertIn(report["verdict"], last)
                if c.peer_tls:
                    self.assertTrue(report["tls_version"].startswith("TLSv1."), report)
                    self.assertGreaterEqual(len(report["chain"]), 1)
                    self.assertTrue(report["chain"][0]["subject"])
                if c.key == "valide":
                    self.assertRegex(out, r"chain\[0\]\s+ok\s+CN=mx\.valide\.audit\.test,.*not revoked \(CRL of")
                    self.assertRegex(out, r"whitelist\s+ok\s+CN=mx\.valide\.audit\.test.* is declared")
                    self.assertRegex(out, r"mail\s+ok\s+250")
                    self.assertRegex(out, r"rcpt\s+ok\s+250")
                    self.assertRegex(out, r"rset\s+ok\s+250, nothing sent")
                    self.assertEqual(report["client_certificate"], "accepted (MAIL FROM answered 250)")
                    self.assertTrue(report["dn"]["declared"])
                if c.key == "revoque":
                    self.assertRegex(out, r"chain\[0\]\s+FAIL\s+.*REVOKED \(CRL of")
                if c.key == "memecn":
                    # the closest declared DN and what differs in it
                    self.assertEqual(report["dn"]["closest"], MEMECN_DECLARED)
                    self.assertEqual(sorted(report["dn"]["differs_in"]), ["O", "OU"])
                    self.assertIn("differs in OU, O", out)
        # nothing was ever delivered to any operator
        for c in CASES:
            self.assertEqual(self.ops[c.key].count(), 0, c.key)

    def test_usage_and_unreachable(self):
        rc, out = self.probe("127.0.0.1:1")
        self.assertEqual(rc, 2, out)
        self.assertIn("needs --domain or --rcpt", out)
        rc, out = self.probe("127.0.0.1:1", "--domain", CASE["valide"].domain, "--timeout", "3s")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"connect\s+FAIL")
        self.assertIn("verdict: REFUSED no host could be reached", out)


class ProbePostfixTests(TrustTestCase):
    """A real Postfix as the remote operator, requiring a client certificate."""

    def postfix_op(self, name, cafile):
        crt, key = self.pki.certs["pfop"]
        return self.postfix(name, mydomain="postfix-op.audit.test",
                            extra_main_cf=postfix_requiring_ccert(crt, key, cafile))

    def test_postfix_accepts_then_refuses_our_certificate(self):
        self.start_gateway(start=False)
        op = self.postfix_op("op", self.pki.ca_pem)
        rc, out = self.gw.cli("tls", "probe", "127.0.0.1:%d" % op.port, "--domain", PFOP_DOMAIN, timeout=60)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"mail\s+ok\s+250")
        self.assertIn("verdict: OK delivery to %s" % PFOP_DOMAIN, out)
        print("\n    postfix (trusts our CA): " + out.strip().splitlines()[-1])
        log = op.log()
        self.assertRegex(log, r"Trusted TLS connection established from \S*\[127\.0\.0\.1\]")
        self.assertNotIn("DATA", log.split("Trusted TLS")[-1].upper().replace("METADATA", ""))

        # A Postfix that does not trust our CA (the non-IGC one): our certificate is refused.
        op2 = self.postfix_op("op2", os.path.join(self.pki.other, "ca.pem"))
        rc, out = self.gw.cli("tls", "probe", "127.0.0.1:%d" % op2.port, "--domain", PFOP_DOMAIN, timeout=60)
        self.assertEqual(rc, 1, out)
        last = out.strip().splitlines()[-1]
        print("    postfix (refuses our CA): " + last)
        self.assertRegex(last, r"^verdict: REFUSED the peer refused our client certificate: "
                               r"421 4\.7\.1 .*Client certificate not trusted")
        js = json.loads(self.gw.cli("tls", "probe", "127.0.0.1:%d" % op2.port, "--domain", PFOP_DOMAIN,
                                    "--format", "json", timeout=60)[1])
        self.assertFalse(js["ok"])
        self.assertRegex(js["client_certificate"], r"^refused by the peer: 421 ")


class ProbeMxTests(TrustTestCase):
    def test_probe_by_mx_lookup(self):
        valide = CASE["valide"]
        op = self.operator_peer("valide", valide.ip)
        zone = {valide.domain: {"MX": [(10, "mx.valide.audit.test")]},
                "mx.valide.audit.test": {"A": [valide.ip]}}
        dns = FakeDNS(zone).start()
        self.addCleanup(dns.stop)
        self.start_gateway(start=False)
        cfg = dict(self.gw.config)
        cfg["dns"] = {"nameservers": ["127.0.0.1:%d" % dns.port]}
        self.gw.set_config(cfg)
        rc, out = self.gw.cli("tls", "probe", valide.domain, "--port", str(op.port), timeout=60)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"mx\s+ok\s+mx\.valide\.audit\.test \(%s:%d\)" % (re.escape(valide.ip), op.port))
        self.assertIn("verdict: OK delivery to %s via mx.valide.audit.test would succeed" % valide.domain, out)
        # Issue 24 C.3: without --port, the port of the transport delivery would use (it was 25
        # whatever the route said).
        cfg["transport"]["trust-space"] = {"kind": "mx", "port": op.port, "tls": "mutual"}
        self.gw.set_config(cfg)
        rc, out = self.gw.cli("tls", "probe", valide.domain, timeout=60)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"mx\s+ok\s+mx\.valide\.audit\.test \(%s:%d\)" % (re.escape(valide.ip), op.port))


if __name__ == "__main__":
    unittest.main()
