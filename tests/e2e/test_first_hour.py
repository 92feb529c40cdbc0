"""The administrator's first hour (issue 12): what a Postfix administrator reads in the log and
in `check-config`.

- one log line per session event: connect (client, listener), EHLO, STARTTLS (version, cipher,
  client DN), every refusal with its reply (530 before STARTTLS on a listener that requires it,
  554 at connect, an unknown command, an unknown recipient), and the disconnect summary with
  per-verb counts (`ehlo=1 mail=1 rcpt=1/2 ... commands=N/M`), values with spaces quoted;
- check-config: a `reject` reply that is not 4xx/5xx, two listeners on one address, a route no
  listener lists (a warning), an enum typo with FILE:LINE and the allowed values, a duration
  typo, information printed as information, a missing file reported once.
"""

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess

from harness import (REPO, E2ETestCase, PASSERELLE_BIN, RawSMTP, free_port, gateway_config, listener,
                     relay_transport, toml_dumps)

SENDER = "secretariat@chu-test.mssante.fr"
RCPT = "dr.log@autre.mssante.fr"


def line_of(log, needle):
    """The one log line containing needle (the test fails when there is none)."""
    for l in log.splitlines():
        if needle in l:
            return l
    raise AssertionError("no log line with %r in:\n%s" % (needle, log[-4000:]))


class SessionLogTests(E2ETestCase):

    def start(self):
        self.peer_ = self.peer("next")
        self.port = free_port()
        self.tls_port = free_port()
        self.closed_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[
                listener("etablissement", self.port, ["mssante", "others"]),
                listener("espace-confiance", self.tls_port, ["mssante"], starttls="require"),
                # Nobody on loopback may use this one: 554 at connect.
                listener("ferme", self.closed_port, ["mssante"], clients=["10.99.0.0/16"]),
            ],
            routes=[
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust"},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations are relayed here"},
            ],
            transports={"trust": relay_transport(self.peer_.port)},
        )
        self.gw = self.gateway(cfg)

    def test_a_session_from_connect_to_disconnect(self):
        self.start()
        s = RawSMTP("127.0.0.1", self.port)
        s.reply()
        self.assertEqual(s.cmd("EHLO client.chu-test.mssante.fr")[0], 250)
        self.assertEqual(s.cmd("XYZZY")[0], 500)
        self.assertEqual(s.cmd("MAIL FROM:<%s>" % SENDER)[0], 250)
        self.assertEqual(s.cmd("RCPT TO:<%s>" % RCPT)[0], 250)
        self.assertEqual(s.cmd("RCPT TO:<bob@gmail.com>")[0], 550)
        self.assertEqual(s.cmd("DATA")[0], 354)
        s.send(b"Subject: Patient Dupont\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(s.reply()[0], 250)
        self.assertEqual(s.cmd("QUIT")[0], 221)
        s.close()
        self.peer_.wait_messages(1)
        self.gw.wait_log(r"disconnect .*commands=", 10)
        log = self.gw.log()
        # The session of this test (the harness's readiness probe has its own).
        client = line_of(log, "disconnect ehlo=1").split("client=")[1].split()[0].strip('"')
        mine = [l for l in log.splitlines() if client in l]
        self.assertRegex(line_of("\n".join(mine), " connect "), r'listener="?etablissement"?')
        self.assertRegex(line_of("\n".join(mine), " EHLO "), r'helo="?client\.chu-test\.mssante\.fr"?')
        unknown = line_of("\n".join(mine), 'command="unknown"')
        self.assertIn("reject", unknown)
        self.assertIn('reply="500 5.5.2 Error: command not recognized"', unknown)
        refused = line_of("\n".join(mine), "bob@gmail.com")
        self.assertRegex(refused, r'command="?RCPT"?')
        self.assertIn('reply="550 5.7.1 only MSSante destinations are relayed here"', refused,
                      "the reply, quoted because it has spaces")
        self.assertIn("from=\"<%s>\"" % SENDER, refused)
        bye = line_of("\n".join(mine), "disconnect ")
        for count in ("ehlo=1", "unknown=0/1", "mail=1", "rcpt=1/2", "data=1", "quit=1", "commands=5/7"):
            self.assertIn(" %s " % count, bye + " ")
        self.assertNotIn("Dupont", log, "no subject in the log")

    def test_refusals_before_rcpt(self):
        self.start()
        # 530 on the listener that requires STARTTLS.
        s = RawSMTP("127.0.0.1", self.tls_port)
        s.reply()
        s.cmd("EHLO client.chu-test.mssante.fr")
        code, text = s.cmd("MAIL FROM:<%s>" % SENDER)
        self.assertEqual(code, 530, text)
        s.cmd("QUIT")
        s.close()
        # 554 at connect for a client outside the listener's networks.
        with socket.create_connection(("127.0.0.1", self.closed_port), timeout=10) as c:
            banner = c.makefile("rb").readline().decode()
        self.assertTrue(banner.startswith("554 5.7.1"), banner)
        # STARTTLS: one line with the version and cipher.
        with smtplib.SMTP("127.0.0.1", self.tls_port, timeout=20) as smtp:
            smtp.ehlo("tls.chu-test.mssante.fr")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            smtp.starttls(context=ctx)
            smtp.ehlo("tls.chu-test.mssante.fr")
        self.gw.wait_log("TLS established", 10)
        log = self.gw.log()
        l530 = line_of(log, "530 ")
        self.assertRegex(l530, r'command="?MAIL"?')
        self.assertRegex(l530, r'listener="?espace-confiance"?')
        l554 = line_of(log, "554 5.7.1")
        self.assertRegex(l554, r'listener="?ferme"?')
        self.assertIn("reject", l554)
        tls = line_of(log, "TLS established")
        self.assertRegex(tls, r"TLSv1\.[23]")
        self.assertRegex(tls, r"client_dn=\"?-")


def check_config(path):
    r = subprocess.run([PASSERELLE_BIN, "check-config", "--config", path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    return r.returncode, r.stdout


class CheckConfigTests(E2ETestCase):

    def base(self):
        port = free_port()
        return gateway_config(
            self.tmp,
            listeners=[listener("etablissement", port, ["mssante", "others"])],
            routes=[
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust"},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante"},
            ],
            transports={"trust": relay_transport(free_port())},
        )

    def write(self, cfg, name="passerelle.toml"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(toml_dumps(cfg) + "\n")
        return path

    def test_the_default_config_is_checked_without_writing_and_a_typo_is_named(self):
        """Issue 24 C.1, C.2: check-config on the README's default configuration, in a fresh
        directory, writes nothing (the development PKI is `serve`'s to make) and says ok; a
        typo in a required key names the unknown key and suggests it."""
        work = os.path.join(self.tmp, "fresh")
        shutil.copytree(os.path.join(REPO, "config"), os.path.join(work, "config"),
                        ignore=shutil.ignore_patterns("establishments.d"))
        before = sorted(os.listdir(work))
        r = subprocess.run([PASSERELLE_BIN, "check-config"], cwd=work, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("no development PKI yet", r.stdout)
        self.assertIn("config/passerelle.toml: ok", r.stdout)
        self.assertEqual(sorted(os.listdir(work)), before, "check-config wrote nothing")
        path = os.path.join(work, "config", "passerelle.toml")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(re.sub(r"(?m)^hostname = ", "hostnme = ", text, count=1))
        rc, out = check_config(path)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"server\.hostname: required \(is `server\.hostnme` a typo of it\?\)")
        self.assertRegex(out, r"passerelle\.toml:\d+: server\.hostnme: unknown key")

    def test_each_case(self):
        rc, out = check_config(self.write(self.base()))
        self.assertEqual(rc, 0, out)
        # Information is information: no FILE:LINE problem form.
        cert = line_of(out, "tls.certificate")
        self.assertNotRegex(cert, r"\.toml:\d+:")
        self.assertRegex(cert, r"expires")

        cfg = self.base()
        cfg["route"][1]["reject"] = "250 2.0.0 accepted?"
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"passerelle\.toml:\d+: .*reject.*4xx or 5xx")

        cfg = self.base()
        cfg["listener"].append(dict(cfg["listener"][0], name="double"))
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"passerelle\.toml:\d+: .*address.*(same address|already)")

        cfg = self.base()
        cfg["route"].append({"name": "orpheline", "domains": ["x.mssante.fr"], "transport": "trust"})
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"warning: .*passerelle\.toml:\d+: .*orpheline.*not in any listener's routes")

        cfg = self.base()
        cfg["transport"]["trust"]["tls"] = "mutal"
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r'passerelle\.toml:\d+: transport\.trust\.tls: "mutal" is not one of none, '
                              r'opportunistic, required, mutual')

        cfg = self.base()
        cfg["queue"]["lifetime"] = "5 jours"
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"passerelle\.toml:\d+: queue\.lifetime: ")

        cfg = self.base()
        cfg["tls"]["certificate"] = os.path.join(self.tmp, "absent.pem")
        rc, out = check_config(self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.count("absent.pem"), 1, "a missing file is reported once:\n" + out)
