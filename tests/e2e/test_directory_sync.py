"""End-to-end tests of issue 18: `passerelle directory sync` keeps a real slapd in step with the
national extract by delta.

- a first sync of a 20,000-line extract into an empty slapd gives exactly what `directory
  import` + slapadd gives; a second run changes nothing;
- a later extract with entries added, removed and changed applies exactly those (the summary's
  counts, and each entry checked in slapd); --dry-run shows them and writes nothing;
- a truncated extract is refused by the deletion bound, an empty one by the minimum: slapd
  untouched; an unreachable LDAP or a wrong password fails clearly and changes nothing;
- a run killed half-way is finished by the next one;
- --url: the zip downloaded over HTTP (a corrupt one is refused);
- [directory.sync] in the gateway: the first run at start, and its metrics.
"""

import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest
import zipfile

from harness import (E2ETestCase, PASSERELLE_BIN, dev_pki, free_port, gateway_config, http_get, listener,
                     relay_transport, wait_until)
from slapd import SUFFIX, Slapd
import gen_extract

BASE = "ou=mssante," + SUFFIX
ADMIN = "cn=admin," + SUFFIX
N = 20000
SUMMARY = re.compile(r"added (\d+), modified (\d+), deleted (\d+), unchanged (\d+)")


def ldif_entries(text):
    """{dn lowercased: sorted attribute lines} from ldapsearch -LLL output (lines unfolded)."""
    text = text.replace("\n ", "")
    out = {}
    for block in text.strip().split("\n\n"):
        lines = [l for l in block.splitlines() if l and not l.startswith("#")]
        if not lines:
            continue
        dn = lines[0]
        out[dn.lower()] = sorted(lines[1:])
    return out


class DirectorySyncTests(E2ETestCase):

    def setUp(self):
        super().setUp()
        self.rows = gen_extract.base_rows(N)
        self.addresses = list(dict.fromkeys(r[1] for r in self.rows))
        self.assertEqual(len(self.addresses), N)
        self.e1 = os.path.join(self.tmp, "Extraction_Correspondance_MSSante_202611210300.txt")
        gen_extract.write(self.e1, self.rows)
        self.pw = os.path.join(self.tmp, "ldap.password")
        with open(self.pw, "w") as f:
            f.write("secret\n")
        # Without a disk sync per write (test data): slapd's default costs ~3.6 ms per
        # operation on a VM disk, the whole of a 20,000-entry first sync (72 s).
        self.slapd = Slapd(self.tmp, extra_conf="dbnosync")
        self.slapd.load("")  # the suffix only: an empty directory
        self.slapd.start()
        self.addCleanup(self.slapd.stop)

    def sync(self, *args, ldap=None, timeout=120):
        """Runs the command; returns (rc, stdout, stderr, summary counts or None)."""
        argv = [PASSERELLE_BIN, "--config", os.path.join(self.tmp, "absent.toml"), "directory",
                "sync", "--ldap", ldap or self.slapd.url, "--base", BASE, "--bind-dn", ADMIN,
                "--bind-password-file", self.pw] + list(args)
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           text=True, stdin=subprocess.DEVNULL)
        m = SUMMARY.search(r.stdout)
        counts = tuple(int(x) for x in m.groups()) if m else None
        return r.returncode, r.stdout, r.stderr, counts

    def dump(self, slapd=None):
        r = subprocess.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", (slapd or self.slapd).url,
                            "-b", BASE, "(objectClass=*)"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, text=True)
        if "No such object" in r.stdout:
            return {}
        self.assertEqual(r.returncode, 0, r.stdout[-2000:])
        return ldif_entries(r.stdout)

    def present(self, address):
        return ("dn: mail=" + address.lower()) in self.slapd.search("(mail=%s)" % address).lower()

    def load_by_import(self, extract):
        """The documented import: directory import + slapadd (fast set-up of a synced state)."""
        self.slapd.stop()
        shutil.rmtree(os.path.join(self.slapd.root, "db"))
        os.makedirs(os.path.join(self.slapd.root, "db"))
        ldif = os.path.join(self.tmp, "import.ldif")
        subprocess.run([PASSERELLE_BIN, "directory", "import", extract, "--ldif", ldif, "--base", BASE],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        with open(ldif) as f:
            self.slapd.load(f.read().replace("version: 1\n\n", "", 1))
        self.slapd.start()

    def test_first_sync_equals_a_fresh_import_and_a_second_run_changes_nothing(self):
        rc, out, err, counts = self.sync("--file", self.e1)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (N, 0, 0, 0), out)
        synced = self.dump()
        # The same extract the import way, into a second slapd.
        other = Slapd(os.path.join(self.tmp, "other"))
        ldif = os.path.join(self.tmp, "import.ldif")
        subprocess.run([PASSERELLE_BIN, "directory", "import", self.e1, "--ldif", ldif, "--base", BASE],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        with open(ldif) as f:
            other.load(f.read().replace("version: 1\n\n", "", 1))
        other.start()
        self.addCleanup(other.stop)
        imported = self.dump(other)
        self.assertEqual(len(imported), N + 1)  # + the ou= container
        self.assertEqual(set(synced), set(imported))
        diff = [dn for dn in imported if imported[dn] != synced[dn]]
        self.assertEqual(diff, [], "entries differ, e.g. %s:\n%s\n%s" % (
            diff[:1], imported[diff[0]] if diff else "", synced[diff[0]] if diff else ""))
        # Idempotent.
        rc, out, err, counts = self.sync("--file", self.e1)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (0, 0, 0, N), out)

    def test_delta_applies_exactly_the_changes(self):
        self.load_by_import(self.e1)
        new, delta = gen_extract.variant(self.rows, adds=150, removes=120, changes=180)
        e2 = os.path.join(self.tmp, "Extraction_Correspondance_MSSante_202611220300.txt")
        gen_extract.write(e2, new)
        # Dry run: the counts and samples, nothing written.
        rc, out, err, counts = self.sync("--file", e2, "--dry-run")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (150, 180, 120, N - 300), out)
        self.assertIn("dry run", out)
        self.assertRegex(out, r"(?m)^  add mail=.*,%s$" % BASE)
        self.assertRegex(out, r"(?m)^  modify mail=.* \(title\)$")
        self.assertRegex(out, r"(?m)^  delete mail=")
        self.assertTrue(self.present(delta["removed"][0]), "dry run must not delete")
        self.assertFalse(self.present(delta["added"][0]), "dry run must not add")
        # The real run, batches in LDAP transactions (RFC 5805).
        rc, out, err, counts = self.sync("--file", e2, "--transactions")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (150, 180, 120, N - 300), out)
        entries = self.dump()
        mails = {dn[len("dn: mail="):].split(",")[0] for dn in entries if dn.startswith("dn: mail=")}
        self.assertEqual(len(mails), N - 120 + 150)
        for a in delta["removed"]:
            self.assertNotIn(a.lower(), mails)
        for a in delta["added"]:
            self.assertIn(a.lower(), mails)
        changed = set(a.lower() for a in delta["changed"])
        for dn, lines in entries.items():
            mail = dn[len("dn: mail="):].split(",")[0]
            if mail in changed:
                self.assertTrue(any(l.startswith("title::") or l.startswith("title:") for l in lines))
                # The new label has accents: base64 in LDIF; compare decoded.
                import base64
                titles = [base64.b64decode(l.split(":: ", 1)[1]).decode() if "::" in l else l.split(": ", 1)[1]
                          for l in lines if l.startswith("title:")]
                self.assertEqual(titles, ["Médecin généraliste (changé)"], mail)
        # And again: nothing left to do.
        rc, out, err, counts = self.sync("--file", e2)
        self.assertEqual(counts, (0, 0, 0, N - 120 + 150), out + err)

    def test_truncated_or_empty_extract_is_refused_and_ldap_untouched(self):
        self.load_by_import(self.e1)
        before = self.dump()
        with open(self.e1, "rb") as f:
            data = f.read()
        cut = os.path.join(self.tmp, "cut.txt")
        with open(cut, "wb") as f:
            f.write(data[: len(data) // 2])  # a download cut half-way (mid-line, too)
        rc, out, err, counts = self.sync("--file", cut)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("refused", err)
        self.assertIn("nothing was written", err)
        self.assertIsNotNone(counts)
        self.assertGreater(counts[2], N // 3, "the summary says what it would have deleted")
        self.assertIn("refused: nothing written", out)
        # Header only: refused by the minimum before the LDAP is even read.
        empty = os.path.join(self.tmp, "empty.txt")
        gen_extract.write(empty, [])
        rc, out, err, _ = self.sync("--file", empty)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("fewer than the minimum", err)
        # --max-delete 100 would let the cut one through, but not the empty one (min entries).
        self.assertEqual(self.dump(), before, "slapd must be untouched")

    def test_unreachable_ldap_and_wrong_password_fail_clearly(self):
        port = free_port()
        rc, out, err, counts = self.sync("--file", self.e1, ldap="ldap://127.0.0.1:%d" % port, timeout=60)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("cannot connect to ldap://127.0.0.1:%d" % port, err)
        self.assertIn("nothing was written", err)
        self.assertIsNone(counts)
        with open(self.pw, "w") as f:
            f.write("wrong\n")
        rc, out, err, counts = self.sync("--file", self.e1)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("bind as " + ADMIN, err)
        self.assertEqual(self.dump(), {}, "nothing written")

    def test_killed_half_way_then_finished_by_the_next_run(self):
        argv = [PASSERELLE_BIN, "--config", os.path.join(self.tmp, "absent.toml"), "directory", "sync",
                "--file", self.e1, "--ldap", self.slapd.url, "--base", BASE, "--bind-dn", ADMIN,
                "--bind-password-file", self.pw, "--connections", "1"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        first = self.addresses[0]
        try:
            wait_until(lambda: self.present(first) or p.poll() is not None, timeout=60, interval=0.02,
                       what="the first batch in slapd")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        self.assertEqual(p.returncode, -signal.SIGKILL, "the run ended before it could be killed")
        partial = len(self.dump())
        self.assertGreater(partial, 1)
        self.assertLess(partial, N + 1, "killed before the end")
        rc, out, err, counts = self.sync("--file", self.e1)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (N + 1 - partial, 0, 0, partial - 1), out)
        rc, out, err, counts = self.sync("--file", self.e1)
        self.assertEqual(counts, (0, 0, 0, N), out + err)

    def test_starttls_is_verified(self):
        pki = dev_pki()
        tls = Slapd(os.path.join(self.tmp, "tls"), extra_conf="dbnosync",
                    tls=(pki["certificate"], pki["private_key"], pki["trust_anchors"]))
        tls.load("")
        tls.start()
        self.addCleanup(tls.stop)
        small = os.path.join(self.tmp, "small.txt")
        gen_extract.write(small, gen_extract.base_rows(1200))
        other = os.path.join(self.tmp, "other-pki")
        subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", other], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        rc, out, err, _ = self.sync("--file", small, "--starttls", "--ca", os.path.join(other, "ca.pem"),
                                    ldap=tls.url)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("cannot connect to " + tls.url, err)
        self.assertRegex(err, r"(?i)certificate|UnknownIssuer")
        rc, out, err, counts = self.sync("--file", small, "--starttls", "--ca", pki["trust_anchors"],
                                         ldap=tls.url)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (1200, 0, 0, 0), out)

    def test_url_download_zip_and_corrupt_zip(self):
        small = gen_extract.base_rows(1500)
        txt = os.path.join(self.tmp, "Extraction_Correspondance_MSSante_202611230300.txt")
        gen_extract.write(txt, small)
        www = os.path.join(self.tmp, "www")
        os.makedirs(www)
        good = os.path.join(www, "Extraction_Correspondance_MSSante.zip")
        with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(txt, os.path.basename(txt))
        data = bytearray(open(good, "rb").read())
        data[len(data) // 2] ^= 0xFF  # one byte of the compressed text
        with open(os.path.join(www, "corrupt.zip"), "wb") as f:
            f.write(data)
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=www, **kw)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.shutdown)
        url = "http://127.0.0.1:%d/" % httpd.server_address[1]

        rc, out, err, counts = self.sync("--url", url + "corrupt.zip")
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(err, r"(?i)checksum|invalid|corrupt|deflate|read error")
        self.assertEqual(self.dump(), {})
        rc, out, err, counts = self.sync("--url", url + "absent.zip")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("404", err)
        rc, out, err, counts = self.sync("--url", url + "Extraction_Correspondance_MSSante.zip")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(counts, (1500, 0, 0, 0), out)

    def test_scheduled_by_the_gateway_with_metrics(self):
        gw_cfg = gateway_config(
            self.tmp, listeners=[listener("l", free_port(), ["r"])],
            routes=[{"name": "r", "domains": ["*"], "reject": "550 5.7.1 no"}],
            transports={"t": relay_transport(9)},
            directory={"kind": "none", "sync": {
                "file": self.e1, "ldap": self.slapd.url, "base": BASE, "bind_dn": ADMIN,
                "bind_password_file": self.pw, "every": "24h"}})
        gw = self.gateway(gw_cfg)
        rc, out = gw.cli("check-config")
        self.assertEqual(rc, 0, out)

        def metrics():
            return http_get(*gw.admin, path="/metrics")[1].decode()
        wait_until(lambda: 'passerelle_directory_sync_runs_total{result="ok"} 1' in metrics(),
                   timeout=90, interval=0.5, what="the first scheduled sync")
        m = metrics()
        self.assertIn('passerelle_directory_sync_entries{change="added"} %d' % N, m)
        self.assertRegex(m, r"passerelle_directory_sync_last_success_timestamp_seconds \d")
        self.assertRegex(m, r"passerelle_directory_sync_duration_seconds \d")
        self.assertEqual(len(self.dump()), N + 1)
        self.assertIn("directory sync: added %d" % N, gw.log())
        # A truncated extract at the next start: refused, counted, LDAP untouched.
        gw.stop()
        with open(self.e1, "rb") as f:
            data = f.read()
        with open(self.e1, "wb") as f:
            f.write(data[: len(data) // 3])
        gw.start()
        wait_until(lambda: 'passerelle_directory_sync_runs_total{result="refused"} 1' in metrics(),
                   timeout=90, interval=0.5, what="the refused run")
        self.assertEqual(len(self.dump()), N + 1)
        self.assertIn("refused", gw.log())


if __name__ == "__main__":
    unittest.main()
