"""A private OpenLDAP (Debian's slapd) for the end-to-end tests, from tests/ldap/slapd.conf.in.

    s = Slapd(tmpdir); s.load(ldif_text); s.start(); ...; s.stop(); s.start()

The database survives stop/start (tests stop it to simulate an outage)."""

import os
import shutil
import signal
import string
import subprocess
import time

from harness import REPO, free_port, wait_port

SUFFIX = "dc=annuaire,dc=mssante,dc=fr"
SUFFIX_LDIF = ("dn: %s\nobjectClass: dcObject\nobjectClass: organization\n"
               "dc: annuaire\no: Annuaire MSSante (tests)\n\n" % SUFFIX)


class Slapd:
    def __init__(self, tmpdir, port=None, tls=None, extra_conf=""):
        """tls: optional (certificate chain PEM, key PEM, CA PEM) enabling StartTLS.
        extra_conf: lines appended to the config, i.e. to the mdb database section
        (e.g. "dbnosync")."""
        self.root = os.path.join(tmpdir, "slapd")
        self.port = port or free_port()
        self.url = "ldap://127.0.0.1:%d" % self.port
        os.makedirs(os.path.join(self.root, "db"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "run"), exist_ok=True)
        with open(os.path.join(REPO, "tests", "ldap", "slapd.conf.in")) as f:
            conf = string.Template(f.read()).substitute(root=self.root)
        self.conf = os.path.join(self.root, "slapd.conf")
        if tls:
            cert, key, ca = tls
            conf = ("TLSCertificateFile %s\nTLSCertificateKeyFile %s\nTLSCACertificateFile %s\n" % (cert, key, ca)) + conf
        conf += extra_conf + "\n" if extra_conf else ""
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    def load(self, ldif_text, with_suffix=True):
        """Offline load with slapadd (the way an establishment bulk-loads the extract)."""
        path = os.path.join(self.root, "load.ldif")
        with open(path, "w") as f:
            f.write((SUFFIX_LDIF if with_suffix else "") + ldif_text)
        subprocess.run(["slapadd", "-q", "-f", self.conf, "-l", path], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)

    def start(self):
        log = open(os.path.join(self.root, "slapd.out"), "a")
        self.proc = subprocess.Popen(["slapd", "-f", self.conf, "-h", self.url + "/", "-d", "0"],
                                     stdout=log, stderr=log, start_new_session=True)
        if not wait_port("127.0.0.1", self.port, 10):
            raise RuntimeError("slapd did not start: " + open(os.path.join(self.root, "slapd.out")).read())
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def search(self, filt):
        r = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", self.url, "-b", SUFFIX, filt, "dn"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, text=True)
        return r.stdout


def have_slapd():
    return shutil.which("slapd") is not None or os.path.exists("/usr/sbin/slapd")
