"""End-to-end tests of issue 16: trust-space tooling.

* WhitelistSignatureTests: the real ANS list (signed, tests/data/) verified by a running
  gateway against the real IGC-Santé anchors (config/igc-sante/); a tampered or unsigned
  file dropped in its place is refused with the reason, the last good list stays in force,
  and the metric and /readyz say so.
* CsrTests: `passerelle pki csr` writes a key (0600) and a request openssl verifies, with the
  subject in IGC-Santé's order, and prints the DN to declare.
"""

import os
import re
import shutil
import stat
import subprocess
import unittest

from harness import (PASSERELLE_BIN, REPO, E2ETestCase, free_port, gateway_config, http_get, listener,
                     relay_transport, wait_until)

SIGNED = os.path.join(REPO, "tests", "data", "listeblanchemssante-2025-02-28-signed.xml")
IGC = os.path.join(REPO, "config", "igc-sante", "igc-sante-elementaire.pem")
ANS_SIGNER = ("CN=alb.mssante.fr,OU=347976684200724,O=CAPGEMINI TECHNOLOGY SERVICES,"
              "ST=Hauts-de-Seine (92),C=FR")
MIPIH = "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR"


def signed_text():
    with open(SIGNED, encoding="utf-8") as f:
        return f.read()


def replace_file(path, text):
    """Atomic replacement, as a download tool would do it (a new inode, a new mtime)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class WhitelistSignatureTests(E2ETestCase):
    def start_gateway(self, **whitelist):
        wl = os.path.join(self.tmp, "listeblanchemssante.xml")
        shutil.copy(SIGNED, wl)
        w = {"file": wl, "reload": "1s", "signer_anchors": IGC, "signer_dns": [ANS_SIGNER],
             # The real list dates from 2025-02-28: no age limit for this test vector.
             "max_age": "0"}
        w.update(whitelist)
        port = free_port()
        cfg = gateway_config(
            self.tmp,
            [listener("etablissement", port, ["mssante", "others"])],
            [{"name": "mssante", "domains": ["@whitelist"], "transport": "t", "whitelist": True},
             {"name": "others", "domains": ["*"], "reject": "550 5.7.1 no"}],
            {"t": relay_transport(free_port())},
            whitelist=w)
        gw = self.gateway(cfg)
        return gw, wl

    def readyz(self, gw):
        code, body = http_get(*gw.admin, path="/readyz")
        return code, body.decode()

    def metrics(self, gw):
        return http_get(*gw.admin, path="/metrics")[1].decode()

    def test_real_list_verified_then_tampered_files_refused(self):
        gw, wl = self.start_gateway()
        gw.wait_log(r"whitelist loaded, signature verified.*domains=4944", 10)
        code, body = self.readyz(gw)
        self.assertEqual(code, 200, body)
        self.assertIn("whitelist: 4944 domains", body)
        self.assertIn("signed by " + ANS_SIGNER, body)
        self.assertIn("passerelle_whitelist_signature_verified 1", self.metrics(gw))

        # One DN changed: refused, the last good list stays in force.
        text = signed_text()
        replace_file(wl, text.replace(MIPIH, MIPIH.replace("GIP MIPIH", "GIP MIPIX"), 1))
        gw.wait_log(r"whitelist refused: .*content altered after signing.*keeping the last good whitelist "
                    r"\(4944 domains\)", 10)
        code, body = self.readyz(gw)
        self.assertEqual(code, 200, body)   # reported, not failing
        self.assertRegex(body, r"whitelist REFUSED .* ago, last good list kept: .*content altered")
        self.assertIn("whitelist: 4944 domains", body)
        self.assertIn('passerelle_whitelist_refused_total{reason="altered"} 1', self.metrics(gw))
        line = [l for l in gw.log().splitlines() if "whitelist refused" in l][-1]
        print("\n    log: " + line.strip())

        # The signature removed.
        start, end = text.index("<Signature "), text.index("</Signature>") + len("</Signature>")
        replace_file(wl, text[:start] + text[end:])
        gw.wait_log(r"whitelist refused: .*unsigned: no XML signature", 10)
        self.assertIn('passerelle_whitelist_refused_total{reason="unsigned"} 1', self.metrics(gw))

        # The CLI refuses it too, naming the reason; check-config as well.
        rc, out = gw.cli("whitelist", "show", "1001-services.mssante.fr")
        self.assertEqual(rc, 1, out)
        self.assertIn("refused: unsigned", out)

        # The genuine file again: accepted, the refusal note goes away.
        replace_file(wl, text + "\n")
        wait_until(lambda: "REFUSED" not in self.readyz(gw)[1], 10, what="refusal cleared")
        rc, out = gw.cli("whitelist", "show", "1001-services.mssante.fr")
        self.assertEqual(rc, 0, out)
        self.assertIn(MIPIH, out)
        self.assertIn("signature verified, signed by " + ANS_SIGNER, out)

    def test_stale_list_refused_at_start(self):
        # With the default max_age (7 days), the 2025 list is refused: no last good list, so
        # the gateway does not start, and check-config says why.
        wl = os.path.join(self.tmp, "listeblanchemssante.xml")
        shutil.copy(SIGNED, wl)
        gw, _ = self.start_gateway()
        gw.stop()
        cfg = dict(gw.config)
        cfg["whitelist"] = dict(cfg["whitelist"])
        del cfg["whitelist"]["max_age"]
        gw.set_config(cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"refused: stale: generated 2025-02-28T15:42:07Z, \d+ days ago, "
                              r"older than whitelist.max_age 7days")


class CsrTests(E2ETestCase):
    def test_csr_for_igc_sante(self):
        out = os.path.join(self.tmp, "csr")
        r = subprocess.run([PASSERELLE_BIN, "pki", "csr", "--cn", "passerelle.chu-exemple.mssante.fr",
                            "--ou", "750048886", "--o", "CH D'EXEMPLE", "--st", "Hauts-de-Seine (92)",
                            "--key", "rsa2048", "--out", out],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        text = r.stdout.decode()
        self.assertEqual(r.returncode, 0, text)
        dn = "CN=passerelle.chu-exemple.mssante.fr,OU=1750048886,O=CH D'EXEMPLE,ST=Hauts-de-Seine (92),C=FR"
        self.assertIn("\n" + dn + "\n", text)
        key = os.path.join(out, "passerelle.chu-exemple.mssante.fr.key")
        csr = os.path.join(out, "passerelle.chu-exemple.mssante.fr.csr")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        v = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-verify", "-subject",
                            "-nameopt", "RFC2253"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        vt = v.stdout.decode()
        self.assertEqual(v.returncode, 0, vt)
        self.assertIn("verify OK", vt)
        self.assertIn("subject=" + dn, vt)
        # Again without --force: refused, nothing replaced.
        before = open(key).read()
        r = subprocess.run([PASSERELLE_BIN, "pki", "csr", "--cn", "passerelle.chu-exemple.mssante.fr",
                            "--ou", "750048886", "--o", "X", "--st", "Paris (75)", "--out", out],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("exists (use --force", r.stdout.decode())
        self.assertEqual(open(key).read(), before)


if __name__ == "__main__":
    unittest.main()
