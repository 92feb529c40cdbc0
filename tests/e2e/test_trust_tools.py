"""End-to-end tests of issue 16: trust-space tooling.

* WhitelistSignatureTests: the real ANS list (signed, tests/data/) verified by a running
  gateway against the real IGC-Santé anchors (config/igc-sante/); a tampered or unsigned
  file dropped in its place is refused with the reason, the last good list stays in force,
  and the metric and /readyz say so.
* FetchTests: the gateway downloads the whitelist and its CRLs itself from a local HTTP
  server (conditional GET: 304s), verifies them before they replace the files, keeps the last
  good file when a download is refused, and /readyz reports it; an expired certificate of
  ours makes /readyz fail.
* CsrTests: `passerelle pki csr` writes a key (0600) and a request openssl verifies, with the
  subject in IGC-Santé's order, and prints the DN to declare.
"""

import os
import re
import http.server
import hashlib
import threading
import time
import functools
import shutil
import signal
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

    def test_hostile_files_are_bounded_before_parsing(self):
        """Files crafted from the real list (issue 24 B.15, B.17): each refused before the XML
        parser runs, quickly, by check-config and by the running gateway, which keeps the last
        good list; a comment inside signed text reads as what was signed."""
        gw, wl = self.start_gateway()
        gw.wait_log(r"whitelist loaded, signature verified.*domains=4944", 10)
        text = signed_text()
        cut = text.index("<ListeDomaines>")
        shapes = {
            "4,000 deep": text[:cut] + "<a>" * 4000 + "</a>" * 4000 + text[cut:],
            "12,400 deep": text[:cut] + "<a>" * 12400 + "</a>" * 12400 + text[cut:],
            "400,000 CDATA": text[:cut] + "<a>" + "x<![CDATA[y]]>" * 400000 + "</a>" + text[cut:],
        }
        for n, (name, bad) in enumerate(shapes.items(), 1):
            replace_file(wl, bad)
            t0 = time.monotonic()
            rc, out = gw.cli("check-config")
            self.assertEqual(rc, 1, "%s: %s" % (name, out))
            self.assertIn("refused before parsing", out, name)
            self.assertLess(time.monotonic() - t0, 10, name)
            gw.wait_log(r"whitelist refused: .*refused before parsing.*keeping the last good whitelist "
                        r"\(4944 domains\)", 20)
            wait_until(lambda: 'passerelle_whitelist_refused_total{reason="over_bounds"} %d' % n
                       in self.metrics(gw), 20, what="%s refused" % name)
            self.assertTrue(gw.running(), name)
            self.assertEqual(self.readyz(gw)[0], 200)
        # A comment inside a signed <Nom>: the signature still verifies (c14n drops comments),
        # and the domain reads as signed, not as "1001- services.mssante.fr".
        replace_file(wl, text.replace("<Nom>1001-services.mssante.fr</Nom>",
                                      "<Nom>1001-<!--x-->services.mssante.fr</Nom>", 1))
        wait_until(lambda: "REFUSED" not in self.readyz(gw)[1], 20, what="the commented list accepted")
        rc, out = gw.cli("whitelist", "show", "1001-services.mssante.fr")
        self.assertEqual(rc, 0, out)
        self.assertIn(MIPIH, out)
        # --strict: the weak default (no signer_dns) is refused, the configured one passes.
        rc, out = gw.cli("check-config", "--strict")
        self.assertEqual(rc, 0, out)
        cfg = dict(gw.config)
        cfg["whitelist"] = {k: v for k, v in cfg["whitelist"].items() if k != "signer_dns"}
        gw.set_config(cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"warning: .*whitelist.signer_dns: empty: any certificate")
        rc, out = gw.cli("check-config", "--strict")
        self.assertEqual(rc, 1, out)
        self.assertIn("refused under --strict", out)

    def test_files_over_their_size_bound_are_refused(self):
        """Every file from outside has a configurable size bound checked before it is parsed
        (issue 24 B.17): the whitelist (`whitelist.max_size`), a CRL (`tls.crl_max_size`) and
        the national extract (`directory.max_size`). Over it: check-config names the key and
        the limit, a reload is refused, and a running gateway keeps the last good file."""
        gw, wl = self.start_gateway()
        gw.wait_log(r"whitelist loaded, signature verified.*domains=4944", 10)
        good = dict(gw.config)

        # The real list is 3.6 MB: a 3 MiB bound refuses it, at check-config and at reload.
        cfg = dict(good)
        cfg["whitelist"] = dict(cfg["whitelist"], max_size=3 * 1024 * 1024)
        gw.set_config(cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertIn("larger than the limit of 3 MiB", out)
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log(r"reload refused, keeping the running configuration: .*larger than the limit of 3 MiB", 20)
        self.assertTrue(gw.running())
        self.assertEqual(self.readyz(gw)[0], 200)
        # Zero is no bound: refused with the range.
        cfg["whitelist"] = dict(cfg["whitelist"], max_size=0)
        gw.set_config(cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertIn("whitelist.max_size", out)
        self.assertIn("between 1024", out)
        gw.set_config(good)

        # A CRL grown over its bound while the gateway runs: the last good copy stays in force.
        crl = gw.config["tls"]["crls"][0]
        with open(crl, "rb") as f:
            crl_good = f.read()
        cfg = dict(good)
        cfg["tls"] = dict(cfg["tls"], crl_max_size=64 * 1024)
        gw.set_config(cfg)
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log(r"configuration reloaded", 20)
        with open(crl + ".new", "wb") as f:
            f.write(crl_good + b"\n" + b"# padding\n" * 8000)
        os.replace(crl + ".new", crl)
        gw.wait_log(r"CRL unusable; keeping the last good copy.*larger than the limit of 64 KiB", 60)
        self.assertTrue(gw.running())
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertIn("larger than the limit of 64 KiB", out)
        with open(crl, "wb") as f:
            f.write(crl_good)

        # The national extract: refused before it is read.
        extract = os.path.join(self.tmp, "extract.txt")
        with open(os.path.join(REPO, "tests", "data", "extraction-header-31-columns.txt"), "rb") as f:
            header = f.read()
        with open(extract, "wb") as f:
            f.write(header + b"x|" * 1000 + b"\n")
        cfg = dict(good, directory={"kind": "extract", "file": extract, "max_size": 1024})
        gw.set_config(cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"extract.txt: larger than the limit of 1 KiB \(directory.max_size\)")
        gw.set_config(good)

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


class FileServer:
    """A local HTTP server for a directory (Last-Modified, If-Modified-Since -> 304), logging
    each request's status."""

    def __init__(self, directory):
        self.statuses = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                outer.statuses.append((self.path, int(code) if str(code).isdigit() else code))

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name):
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class FetchTests(E2ETestCase):
    def setUp(self):
        super().setUp()
        self.pki = os.path.join(self.tmp, "pki")
        r = subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", self.pki], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        shutil.copy(SIGNED, os.path.join(self.www, "listeblanchemssante.xml"))
        for n in ("ca.crl", "root.crl"):
            shutil.copy(os.path.join(self.pki, n), os.path.join(self.www, n))
        self.srv = FileServer(self.www)
        self.addCleanup(self.srv.stop)
        self.var = os.path.join(self.tmp, "var")

    def config(self, certificate=None):
        p = self.pki
        port = free_port()
        return gateway_config(
            self.tmp,
            [listener("etablissement", port, ["mssante", "others"])],
            [{"name": "mssante", "domains": ["@whitelist"], "transport": "t", "whitelist": True},
             {"name": "others", "domains": ["*"], "reject": "550 5.7.1 no"}],
            {"t": relay_transport(free_port())},
            pki={"certificate": certificate or os.path.join(p, "passerelle.crt"),
                 "private_key": os.path.join(p, "passerelle.key"),
                 "trust_anchors": os.path.join(p, "ca.pem"), "crl": os.path.join(p, "ca.crl")},
            whitelist={"file": os.path.join(self.var, "listeblanchemssante.xml"), "reload": "1s",
                       "url": self.srv.url("listeblanchemssante.xml"), "refresh": "2s",
                       "signer_anchors": IGC, "max_age": "0"})

    def with_crl_downloads(self, cfg):
        cfg["tls"]["crls"] = [os.path.join(self.var, "crl", "ca.crl"), os.path.join(self.var, "crl", "root.crl")]
        cfg["tls"]["crl_urls"] = [self.srv.url("ca.crl"), self.srv.url("root.crl")]
        cfg["tls"]["crl_refresh"] = "2s"
        return cfg

    def readyz(self, gw):
        code, body = http_get(*gw.admin, path="/readyz")
        return code, body.decode()

    def test_downloads_verified_conditional_and_last_good_kept(self):
        gw = self.gateway(self.with_crl_downloads(self.config()))
        wl = os.path.join(self.var, "listeblanchemssante.xml")
        # First start: the missing files were downloaded before they were loaded.
        self.assertEqual(sha(wl), sha(SIGNED))
        gw.wait_log(r"whitelist loaded, signature verified.*domains=4944", 10)
        wait_until(lambda: ("/listeblanchemssante.xml", 304) in self.srv.statuses, 15,
                   what="a conditional GET answered 304")
        code, body = self.readyz(gw)
        self.assertEqual(code, 200, body)
        self.assertRegex(body, r"fetch whitelist http://127.0.0.1:\d+/listeblanchemssante.xml: ok")
        self.assertRegex(body, r"fetch crl http://127.0.0.1:\d+/ca.crl: ok")
        self.assertRegex(body, r"crl .*ca.crl: next update in")
        metrics = http_get(*gw.admin, path="/metrics")[1].decode()
        self.assertIn('passerelle_fetch_last_success_timestamp_seconds{what="whitelist"', metrics)
        self.assertIn("passerelle_fetch_age_seconds", metrics)

        # The publication is tampered with: downloaded, refused, the file on disk unchanged.
        good = sha(wl)
        with open(SIGNED, encoding="utf-8") as f:
            text = f.read()
        # If-Modified-Since has a one-second resolution: a change within the same second as
        # the last download would be answered 304 (http.server sends no ETag).
        time.sleep(1.1)
        replace_file(os.path.join(self.www, "listeblanchemssante.xml"),
                     text.replace(MIPIH, MIPIH.replace("GIP MIPIH", "GIP MIPIX"), 1))
        wait_until(lambda: "FAILING" in self.readyz(gw)[1], 20, what="/readyz reports the refused download")
        code, body = self.readyz(gw)
        self.assertEqual(code, 200, body)     # reported, not failing: the last good list serves
        self.assertRegex(body, r"fetch whitelist .*: FAILING \(download refused, last good file kept: "
                               r".*content altered after signing")
        self.assertEqual(sha(wl), good)
        self.assertIn('passerelle_fetch_failures_total{what="whitelist"',
                      http_get(*gw.admin, path="/metrics")[1].decode())
        print("\n    readyz: " + [l for l in body.splitlines() if "FAILING" in l][0])

        # A new CRL is published (a certificate revoked): downloaded, verified, TLS reloaded.
        peer = subprocess.run([PASSERELLE_BIN, "pki", "issue", "--dir", self.pki, "--name", "peer",
                               "--subject", "CN=mx.op.test,O=OP,C=FR", "--out", self.tmp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(peer.returncode, 0, peer.stdout)
        time.sleep(1.1)   # a thisUpdate one second later than the CRL in force
        rv = subprocess.run([PASSERELLE_BIN, "pki", "revoke", "--dir", self.pki, os.path.join(self.tmp, "peer.crt")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(rv.returncode, 0, rv.stdout)
        replace_file_bytes(os.path.join(self.www, "ca.crl"), os.path.join(self.pki, "ca.crl"))
        gw.wait_log(r"downloaded, verified and installed.*what=\"crl\"|what=\"crl\".*downloaded, verified and installed", 20)
        wait_until(lambda: sha(os.path.join(self.var, "crl", "ca.crl")) == sha(os.path.join(self.pki, "ca.crl")),
                   10, what="new CRL installed")
        gw.wait_log(r"CRLs in force reloaded", 10)

        # A CRL from another PKI is refused; the installed one stays.
        other = os.path.join(self.tmp, "other-pki")
        subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", other], stdout=subprocess.PIPE, timeout=60)
        installed = sha(os.path.join(self.var, "crl", "ca.crl"))
        time.sleep(1.1)
        replace_file_bytes(os.path.join(self.www, "ca.crl"), os.path.join(other, "ca.crl"))
        wait_until(lambda: re.search(r"fetch crl \S+/ca.crl: FAILING \(download refused.*CRL", self.readyz(gw)[1]),
                   20, what="foreign CRL refused")
        self.assertEqual(sha(os.path.join(self.var, "crl", "ca.crl")), installed)

        # passerelle fetch (cron users): one line per file, exit 1 since one is refused.
        rc, out = gw.cli("fetch")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"/listeblanchemssante.xml -> .*: FAILED: download refused")
        self.assertRegex(out, r"/root.crl -> .*root.crl: (not modified|unchanged)")

    def test_expired_certificate_fails_readiness(self):
        r = subprocess.run([PASSERELLE_BIN, "pki", "issue", "--dir", self.pki, "--name", "old",
                            "--subject", "CN=passerelle.chu-test.mssante.fr,O=T,C=FR", "--expired",
                            "--out", self.pki], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        cfg = self.config(certificate=os.path.join(self.pki, "old.crt"))
        cfg["tls"]["private_key"] = os.path.join(self.pki, "old.key")
        gw = self.gateway(cfg)
        code, body = self.readyz(gw)
        self.assertEqual(code, 503, body)
        self.assertIn("not ready: our certificate (tls.certificate) expired", body)


def replace_file_bytes(dest, src):
    tmp = dest + ".tmp"
    shutil.copy(src, tmp)
    os.replace(tmp, dest)


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
