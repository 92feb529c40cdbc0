"""End-to-end tests of issue 4: the national directory.

- `passerelle directory import` turns an ANS extract into LDIF that a real slapd (private
  config, stock schemas) accepts; the gateway's RCPT checks then ask that slapd:
  known -> 250, unknown -> 550 5.1.1 naming the directory.
- slapd stopped mid-test -> 451 4.4.3 (never 550); slapd back -> 250/550 again without
  restarting the gateway.
- LDAP filter injection attempts (`*`, `(`, `)`, `\\`) are harmless.
- `directory.kind = "extract"`: the same checks from the file in memory.
"""

import os

from harness import E2ETestCase, REPO, free_port, gateway_config, listener, relay_transport, smtp_session
from slapd import Slapd

SAMPLE = os.path.join(REPO, "config", "Extraction_Correspondance_MSSante.sample.txt")
KNOWN = "dr.martin@chu-exemple.mssante.fr"
KNOWN_UPPER_DOMAIN = "dr.martin@CHU-Exemple.MSSante.fr"
UNKNOWN = "nobody@chu-exemple.mssante.fr"


class DirectoryTestCase(E2ETestCase):

    def start_gateway(self, directory):
        self.sink = self.peer("etab")
        self.gw_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["local", "others"])],
            routes=[
                {"name": "local", "domains": ["chu-exemple.mssante.fr"], "transport": "etab",
                 "directory": True},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante"},
            ],
            transports={"etab": relay_transport(self.sink.port)},
            directory=directory,
        )
        # Both CRL levels, as the README asks (a missing one fails closed).
        root_crl = os.path.join(os.path.dirname(cfg["tls"]["crls"][0]), "root.crl")
        if os.path.exists(root_crl):
            cfg["tls"]["crls"] = cfg["tls"]["crls"] + [root_crl]
        self.gw = self.gateway(cfg)

    def rcpt(self, address):
        with smtp_session("127.0.0.1", self.gw_port) as s:
            code, msg = s.mail("sender@chu-exemple.mssante.fr")
            self.assertEqual(code, 250, msg)
            code, msg = s.rcpt(address)
            return code, msg.decode("utf-8", "replace")

    def assertKnownAndUnknown(self, describe):
        code, msg = self.rcpt(KNOWN)
        self.assertEqual(code, 250, msg)
        code, msg = self.rcpt(KNOWN_UPPER_DOMAIN)
        self.assertEqual(code, 250, "domain part must match case-insensitively: " + msg)
        code, msg = self.rcpt(UNKNOWN)
        self.assertEqual(code, 550, msg)
        self.assertIn("5.1.1", msg)
        self.assertIn(describe, msg, "the 550 should name the directory")


class LdapDirectoryTests(DirectoryTestCase):

    def setUp(self):
        super().setUp()
        self.ldif = os.path.join(self.tmp, "annuaire.ldif")
        # The import command the README documents, on the shipped sample extract.
        import subprocess
        from harness import PASSERELLE_BIN
        r = subprocess.run([PASSERELLE_BIN, "directory", "import", SAMPLE, "--ldif", self.ldif,
                            "--base", "ou=mssante,dc=annuaire,dc=mssante,dc=fr"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        with open(self.ldif) as f:
            text = f.read()
        # slapadd wants the entries without the "version: 1" line's blank separator issues.
        self.slapd = Slapd(self.tmp)
        self.slapd.load(text.replace("version: 1\n\n", "", 1))
        self.slapd.start()
        self.addCleanup(self.slapd.stop)
        self.start_gateway({"kind": "ldap", "url": self.slapd.url, "base": "dc=annuaire,dc=mssante,dc=fr",
                            "filter": "(&(objectClass=inetOrgPerson)(mail={address}))",
                            "timeout": "2s", "cache_ttl": "1s", "negative_ttl": "1s"})

    def test_import_is_accepted_by_slapd_and_answers_rcpt(self):
        self.assertIn("dn: mail=" + KNOWN, self.slapd.search("(mail=%s)" % KNOWN))
        self.assertKnownAndUnknown(self.slapd.url)
        self.assertIn("bal_type=PER", self.gw.log().replace('"', ""))
        # A message to a known recipient goes through.
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.sendmail("sender@chu-exemple.mssante.fr", [KNOWN], b"Subject: annuaire\r\n\r\nok\r\n")
        meta, _ = self.sink.wait_messages(1, 10)[0]
        self.assertEqual(meta["rcpt_to"], [KNOWN])

    def test_slapd_outage_gives_451_and_recovers_without_restart(self):
        self.assertKnownAndUnknown(self.slapd.url)
        self.slapd.stop()
        import time
        time.sleep(1.2)  # past the cache TTLs
        for a in (KNOWN, UNKNOWN):
            code, msg = self.rcpt(a)
            self.assertEqual(code, 451, "%s while LDAP is down: %s %s" % (a, code, msg))
            self.assertIn("4.4.3", msg)
        self.slapd.start()
        deadline = time.monotonic() + 15
        while True:
            code, msg = self.rcpt(KNOWN)
            if code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(code, 250, "after slapd came back: %s" % msg)
        self.assertKnownAndUnknown(self.slapd.url)
        self.assertTrue(self.gw.running())

    def test_filter_injection_is_harmless(self):
        # Each would match an entry if it reached the LDAP filter unescaped. Sent raw (smtplib
        # would take "(...)" for a comment); the quoted forms are valid SMTP and reach LDAP.
        for a in ("*@chu-exemple.mssante.fr", "dr.martin*@chu-exemple.mssante.fr",
                  '"*)(mail=*"@chu-exemple.mssante.fr', '"dr.martin\\\\*"@chu-exemple.mssante.fr',
                  "x\\2a@chu-exemple.mssante.fr", "*)(|(mail=*@chu-exemple.mssante.fr"):
            with smtp_session("127.0.0.1", self.gw_port) as s:
                s.mail("sender@chu-exemple.mssante.fr")
                code, msg = s.docmd("RCPT TO:<%s>" % a)
            self.assertIn(code, (550, 501), "%s must be refused: %s %s" % (a, code, msg))
            if a.startswith('"'):
                self.assertEqual(code, 550, "%s should reach the directory and be unknown: %s" % (a, msg))


class ExtractDirectoryTests(DirectoryTestCase):

    def test_extract_in_memory(self):
        self.start_gateway({"kind": "extract", "file": SAMPLE})
        self.assertKnownAndUnknown("Extraction_Correspondance_MSSante.sample.txt")

    def test_extract_reloaded_when_the_file_changes(self):
        import shutil
        import time
        path = os.path.join(self.tmp, "Extraction_Correspondance_MSSante_202611220300.txt")
        shutil.copy(SAMPLE, path)
        self.start_gateway({"kind": "extract", "file": path})
        newcomer = "nouvelle.interne@chu-exemple.mssante.fr"
        self.assertEqual(self.rcpt(newcomer)[0], 550)
        with open(SAMPLE, encoding="utf-8") as f:
            line = f.read().splitlines()[1].replace("dr.martin@", "nouvelle.interne@")
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write(open(SAMPLE, encoding="utf-8").read() + line + "\r\n")
        os.replace(path + ".new", path)  # the way a cron job should swap it in
        deadline = time.monotonic() + 15
        while self.rcpt(newcomer)[0] != 250 and time.monotonic() < deadline:
            time.sleep(0.5)
        code, msg = self.rcpt(newcomer)
        self.assertEqual(code, 250, msg)
        # A broken replacement keeps the directory in force.
        with open(path + ".new", "w") as f:
            f.write("not|an|extract\n")
        os.replace(path + ".new", path)
        time.sleep(6)
        self.assertEqual(self.rcpt(newcomer)[0], 250)
        self.assertIn("keeping the current one", self.gw.log())


class LdapStartTlsTests(DirectoryTestCase):
    """`directory.starttls = true`: the LDAP server is verified against [tls].trust_anchors."""

    def start_bed(self, trust_other_ca=False):
        import subprocess
        from harness import PASSERELLE_BIN, dev_pki
        pki = dev_pki()
        ldif = os.path.join(self.tmp, "annuaire.ldif")
        subprocess.run([PASSERELLE_BIN, "directory", "import", SAMPLE, "--ldif", ldif], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.slapd = Slapd(self.tmp, tls=(pki["certificate"], pki["private_key"], pki["trust_anchors"]))
        self.slapd.load(open(ldif).read().replace("version: 1\n\n", "", 1))
        self.slapd.start()
        self.addCleanup(self.slapd.stop)
        directory = {"kind": "ldap", "url": self.slapd.url, "base": "dc=annuaire,dc=mssante,dc=fr",
                     "starttls": True, "timeout": "3s"}
        if trust_other_ca:
            other = os.path.join(self.tmp, "other-pki")
            subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", other], check=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.other_ca = os.path.join(other, "ca.pem")
        self.start_gateway(directory)
        if trust_other_ca:
            # Same config, but the gateway trusts another CA: the LDAP server must be refused.
            self.gw.stop()
            cfg = dict(self.gw.config)
            cfg["tls"] = dict(cfg["tls"], trust_anchors=self.other_ca, crls=[os.path.join(other, "ca.crl"), os.path.join(other, "root.crl")])
            self.gw.set_config(cfg)
            self.gw.start()

    def test_starttls_to_ldap(self):
        self.start_bed()
        self.assertKnownAndUnknown(self.slapd.url)

    def test_untrusted_ldap_server_is_an_outage_not_unknown(self):
        self.start_bed(trust_other_ca=True)
        code, msg = self.rcpt(KNOWN)
        self.assertEqual(code, 451, msg)
        self.assertIn("4.4.3", msg)
