"""End-to-end tests of issue 13: one gateway for a region's establishments.

The test bed (all on loopback, fresh per test):

    Postfix "chu-a" on 127.0.0.11 (smtp_bind_address too)  --\\
    Postfix "chu-b" on 127.0.0.12                           ---> passerelle "etablissements"
    (or smtplib bound to 127.0.0.1x: the MTA's address)     --/   (establishments = true)
                                                                  routes establishments, mssante, others
    trust space: an mss-peer requiring STARTTLS and our client certificate (tls = "mutual",
    its DN declared in the whitelist for autre.mssante.fr); inbound, smtplib with the
    operator's certificate on the "trust-space" listener (routes = ["establishments"]).
    mailboxes: one mss-peer sink per establishment.

Shared domain: ehpad.oc.mssante.fr claimed by "ehpad-1" (structure 310000001) and "ehpad-2"
(structure 310000002), the owners told by a directory extract.
"""

import atexit
import email.utils
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import unittest
import uuid

from harness import (PASSERELLE_BIN, E2ETestCase, HarnessError, banner_of, free_port, gateway_config,
                     listener, rcpts, relay_transport, swaks, wait_until)
import gen_extract

GW_HOST = "passerelle.region-test.mssante.fr"
OP_DOMAIN = "autre.mssante.fr"
OP_DN = "CN=mx.autre-operateur.test,OU=999999999900077,O=AUTRE OPERATEUR,C=FR"
MTA_D_DN = "CN=mta.chu-d.test,OU=999999999900044,O=CHU D,C=FR"
D_DOM = "chu-d.mssante.fr"
A_DOM, B_DOM, C_DOM = "chu-a.mssante.fr", "chu-b.mssante.fr", "chu-c.mssante.fr"
SHARED = "ehpad.oc.mssante.fr"
IP = {"chu-a": "127.0.0.11", "chu-b": "127.0.0.12", "chu-c": "127.0.0.13",
      "ehpad-1": "127.0.0.21", "ehpad-2": "127.0.0.22", "stranger": "127.0.0.99"}
BAL1, BAL2, NOBODY = "accueil.pins@" + SHARED, "accueil.chenes@" + SHARED, "inconnu@" + SHARED


class PKI:
    """The gateway's dev PKI and the trust-space operator's certificate (`passerelle pki`)."""

    def __init__(self, base):
        self.base = base
        os.chmod(base, 0o755)
        cfg = os.path.join(base, "pki.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nhostname = "%s"\n' % GW_HOST)
        self.dir = os.path.join(base, "igc")
        self.run("pki", "dev", "--out", self.dir, "--config", cfg)
        out = os.path.join(base, "certs")
        self.run("pki", "issue", "--dir", self.dir, "--name", "op", "--subject", OP_DN,
                 "--dns", "localhost", "--ip", "127.0.0.1", "--out", out)
        self.op = (os.path.join(out, "op.crt"), os.path.join(out, "op.key"))
        self.run("pki", "issue", "--dir", self.dir, "--name", "mta-d", "--subject", MTA_D_DN,
                 "--dns", "localhost", "--out", out)
        self.mta_d = (os.path.join(out, "mta-d.crt"), os.path.join(out, "mta-d.key"))
        self.ca = os.path.join(self.dir, "ca.pem")
        self.gateway = {"certificate": os.path.join(self.dir, "passerelle.crt"),
                        "private_key": os.path.join(self.dir, "passerelle.key"),
                        "trust_anchors": self.ca, "crl": os.path.join(self.dir, "ca.crl")}
        self.crls = [os.path.join(self.dir, "ca.crl"), os.path.join(self.dir, "root.crl")]

    def run(self, *args):
        r = subprocess.run([PASSERELLE_BIN] + list(args), cwd=self.base, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise HarnessError("passerelle %s: %s" % (" ".join(args), r.stdout.decode(errors="replace")))


_PKI = {}


def pki():
    if "pki" not in _PKI:
        if not os.access(PASSERELLE_BIN, os.X_OK):
            raise unittest.SkipTest("gateway binary missing: %s" % PASSERELLE_BIN)
        d = tempfile.mkdtemp(prefix="pe2e-estab-pki-")
        atexit.register(shutil.rmtree, d, True)
        _PKI["pki"] = PKI(d)
    return _PKI["pki"]


def whitelist_xml(entries):
    doms = "".join("<Domaine><Nom>%s</Nom><DNCertificatOperateur>%s</DNCertificatOperateur></Domaine>\n"
                   % (d, dn) for d, dn in entries)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
            "<ListeDomaines>\n%s</ListeDomaines></ListeBlancheMSSante>\n" % doms)


def message(frm, to, subject="test", headers="", msgid=None):
    msgid = msgid or "<%s@test>" % uuid.uuid4().hex
    return ("From: %s\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n%s\r\nBonjour.\r\n" % (
        frm, to, subject, email.utils.formatdate(), msgid, headers)).encode()


class Client:
    """An establishment MTA speaking from its own loopback address (smtplib bound to it)."""

    def __init__(self, gw_addr, source_ip):
        self.s = smtplib.SMTP(timeout=20, source_address=(source_ip, 0))
        self.banner = self.s.connect(*gw_addr)
        self.s.ehlo("mta.test")

    def mail(self, sender):
        return self.s.mail(sender)

    def send(self, sender, to, data):
        """(code, text) of the transaction's decisive reply (MAIL, RCPT or end of data)."""
        code, text = self.s.mail(sender)
        if code != 250:
            self.s.rset()
            return code, text.decode()
        for t in to:
            code, text = self.s.rcpt(t)
            if code not in (250, 251):
                self.s.rset()
                return code, text.decode()
        code, text = self.s.data(data)
        return code, text.decode()

    def close(self):
        try:
            self.s.quit()
        except Exception:
            self.s.close()


class EstablishmentsTest(E2ETestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki()
        self.box = {n: self.peer("box-" + n) for n in ("chu-a", "chu-b", "ehpad-1", "ehpad-2")}
        self.op = self.peer("op", cert=self.pki.op[0], key=self.pki.op[1], require_tls=True,
                            client_ca=self.pki.ca, require_client_cert=True,
                            rcpt_reply=["inconnu=550 5.1.1 no such user"])
        self.est_dir = os.path.join(self.tmp, "establishments.d")
        wl = os.path.join(self.tmp, "liste.xml")
        with open(wl, "w") as f:
            f.write(whitelist_xml([(OP_DOMAIN, OP_DN)]))
        extract = os.path.join(self.tmp, "extract.txt")
        rows = []
        for addr, structure in ((BAL1, "310000001"), (BAL2, "310000002")):
            r = [""] * 31
            r[0], r[1], r[5], r[6] = "ORG", addr, "1", structure
            rows.append(r)
        gen_extract.write(extract, rows)
        self.est_port, self.trust_port = free_port(), free_port()
        listeners = [
            listener("etablissements", self.est_port, ["establishments", "mssante", "others"],
                     clients=(), establishments=True, client_certificate="request"),
            listener("trust-space", self.trust_port, ["establishments"], clients=(),
                     starttls="require", client_certificate="require"),
        ]
        routes = [{"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust-space"},
                  {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"}]
        transports = {"trust-space": relay_transport(self.op.port, tls="mutual")}

        def est(name, domains, **kw):
            e = {"name": name, "domains": domains, "clients": [IP[name]],
                 "mailbox": "127.0.0.1:%d" % self.box[name].port, "mailbox_tls": "none"}
            e.update(kw)
            return e
        cfg = gateway_config(self.tmp, listeners, routes, transports, hostname=GW_HOST,
                             pki=self.pki.gateway,
                             whitelist={"file": wl},
                             directory={"kind": "extract", "file": extract},
                             establishment=[est("chu-a", [A_DOM]), est("chu-b", [B_DOM]),
                                            est("ehpad-1", [SHARED], structures=["310000001"]),
                                            est("ehpad-2", [SHARED], structures=["310000002"])])
        cfg["tls"]["crls"] = self.pki.crls
        cfg["server"]["establishments_dir"] = self.est_dir
        self.gw = self.gateway_start(cfg)

    def gateway_start(self, cfg):
        from harness import Gateway
        g = self.track(Gateway(self.tmp, cfg, start=False))
        return g.start()

    def client(self, name):
        c = Client(("127.0.0.1", self.est_port), IP[name])
        self.addCleanup(c.close)
        return c

    def trust_client(self):
        """The trust-space operator, with its certificate."""
        s = smtplib.SMTP("127.0.0.1", self.trust_port, timeout=20)
        self.addCleanup(lambda: s.close())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.ca)
        ctx.check_hostname = False
        ctx.load_cert_chain(*self.pki.op)
        s.ehlo("mx.autre-operateur.test")
        s.starttls(context=ctx)
        s.ehlo("mx.autre-operateur.test")
        return s

    def mta(self, name, domain):
        """A real Postfix for establishment `name`, sending from its own address (Postfix's
        `postfix check` wants inet_interfaces to be a configured address: it listens on
        127.0.0.1, and `smtp_bind_address` makes its connections come from 127.0.0.1x)."""
        return self.postfix(name, mydomain=domain, relayhost="[127.0.0.1]:%d" % self.est_port,
                            extra_main_cf={"smtp_bind_address": IP[name]})

    # ------------------------------------------------------------------ 1. own mail out

    def test_each_mta_relays_its_own_users_into_the_trust_space(self):
        for name, dom in (("chu-a", A_DOM), ("chu-b", B_DOM)):
            pf = self.mta(name, dom)
            rc, out = swaks("--server", pf.host, "--port", pf.port, "--from", "dr.x@" + dom,
                            "--to", "dr.y@" + OP_DOMAIN, "--header", "Subject: de " + name)
            self.assertEqual(rc, 0, out)
        msgs = self.op.wait_messages(2, timeout=30)
        senders = sorted(m["mail_from"].strip("<>") for m, _ in msgs)
        self.assertEqual(senders, ["dr.x@" + A_DOM, "dr.x@" + B_DOM])
        for m, _ in msgs:
            self.assertTrue(m.get("tls"), m)  # mutual TLS into the trust space
        log = self.gw.log()
        self.assertRegex(log, r"queued.*establishment=\"?chu-a")
        self.assertRegex(log, r"queued.*establishment=\"?chu-b")
        # The journal carries it: track --establishment.
        def tracked():
            rc, out = self.gw.cli("track", "--establishment", "chu-b", "--format", "json")
            return out if rc == 0 else None
        out = wait_until(tracked, 10, interval=0.5, what="the journal to hold chu-b's message")
        self.assertIn("dr.x@" + B_DOM, out)
        self.assertNotIn("dr.x@" + A_DOM, out)

    # ------------------------------------------------------------------ 2. other's domain

    def test_another_establishments_sender_is_refused_in_envelope_and_header(self):
        a = self.client("chu-a")
        code, text = a.send("dr.x@" + B_DOM, ["dr.y@" + OP_DOMAIN], message("dr.x@" + B_DOM, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.1", text)
        self.assertIn("not a domain of establishment chu-a", text)
        # Header: the envelope is its own, the From: is not.
        code, text = a.send("dr.x@" + A_DOM, ["dr.y@" + OP_DOMAIN],
                            message("Dr X <dr.x@%s>" % B_DOM, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        self.assertIn("From: header <dr.x@%s>: not a domain of establishment chu-a" % B_DOM, text)
        # Folded, encoded, several addresses: one foreign address is enough.
        code, text = a.send("dr.x@" + A_DOM, ["dr.y@" + OP_DOMAIN], message(
            "=?UTF-8?Q?Dr_=C3=89lise?= <elise@%s>,\r\n intrus@%s" % (A_DOM, B_DOM), "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        # No From: at all.
        data = ("To: <dr.y@%s>\r\nSubject: sans from\r\n\r\nx\r\n" % OP_DOMAIN).encode()
        code, text = a.send("dr.x@" + A_DOM, ["dr.y@" + OP_DOMAIN], data)
        self.assertEqual(code, 550, text)
        self.assertIn("without a From: header", text)
        # Its own: accepted.
        code, text = a.send("dr.x@" + A_DOM, ["dr.y@" + OP_DOMAIN],
                            message("=?UTF-8?Q?Dr_=C3=89lise?= <elise@%s>" % A_DOM, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 250, text)
        self.op.wait_messages(1, timeout=20)
        # The refusals were final at DATA: the queue is empty once the accepted one is sent,
        # so nothing else can still be on its way.
        wait_until(lambda: self.gw.cli("queue", "list", "--format", "json")[1].strip() == "[]", 20,
                   what="an empty queue")
        self.assertEqual(self.op.count(), 1, "nothing refused was relayed")
        # Through a real Postfix: the 550 reaches the MTA (and its bounce goes to the sender).
        pf = self.mta("chu-b", B_DOM)
        rc, out = swaks("--server", pf.host, "--port", pf.port, "--from", "dr.z@" + A_DOM,
                        "--to", "dr.y@" + OP_DOMAIN)
        self.assertEqual(rc, 0, out)
        pf.wait_log(r"said: 550 5\.7\.1 <dr\.z@chu-a\.mssante\.fr>: Sender address rejected: "
                    r"not a domain of establishment chu-b", timeout=20)

    def test_null_sender_mdn_and_dsn(self):
        a = self.client("chu-a")
        # An MDN: the reader's address (one of its own) in From:.
        mdn = message("lecteur@" + A_DOM, "dr.y@" + OP_DOMAIN, subject="Lu: x",
                      headers="Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n")
        code, text = a.send("", ["dr.y@" + OP_DOMAIN], mdn)
        self.assertEqual(code, 250, text)
        # A DSN of its own MTA.
        dsn = message("Mail Delivery System <MAILER-DAEMON@mta.chu-a.fr>", "dr.y@" + OP_DOMAIN,
                      subject="Undelivered Mail Returned to Sender")
        code, text = a.send("", ["dr.y@" + OP_DOMAIN], dsn)
        self.assertEqual(code, 250, text)
        # A "bounce" claiming another establishment's domain: refused.
        forged = message("MAILER-DAEMON@" + B_DOM, "dr.y@" + OP_DOMAIN)
        code, text = a.send("", ["dr.y@" + OP_DOMAIN], forged)
        self.assertEqual(code, 550, text)
        self.assertIn("establishment chu-b's domain", text)
        # An MDN written as another establishment's reader: refused.
        code, text = a.send("", ["dr.y@" + OP_DOMAIN], message("lecteur@" + B_DOM, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        self.op.wait_messages(2, timeout=20)

    # ------------------------------------------------------------------ 3. mail for them

    def test_trust_space_mail_lands_in_each_mailbox_and_a_to_b_goes_straight(self):
        s = self.trust_client()
        for dom in (A_DOM, B_DOM):
            s.sendmail("dr.y@" + OP_DOMAIN, ["dr.x@" + dom], message("dr.y@" + OP_DOMAIN, "dr.x@" + dom))
        self.assertEqual(rcpts(self.box["chu-a"].wait_messages(1)[0][0]), ["dr.x@" + A_DOM])
        self.assertEqual(rcpts(self.box["chu-b"].wait_messages(1)[0][0]), ["dr.x@" + B_DOM])
        # A -> B: straight to B's mailbox, never the trust space.
        a = self.client("chu-a")
        code, text = a.send("dr.x@" + A_DOM, ["dr.w@" + B_DOM], message("dr.x@" + A_DOM, "dr.w@" + B_DOM))
        self.assertEqual(code, 250, text)
        msgs = self.box["chu-b"].wait_messages(2)
        self.assertEqual(rcpts(msgs[1][0]), ["dr.w@" + B_DOM])
        self.assertEqual(self.op.count(), 0)
        rc, out = self.gw.cli("route", "test", "dr.w@" + B_DOM, "--listener", "etablissements")
        self.assertEqual(rc, 0, out)
        self.assertIn("establishment chu-b", out)
        # --from: who may send as the sender, and where its notifications go.
        rc, out = self.gw.cli("route", "test", "dr.w@" + B_DOM, "--listener", "etablissements",
                              "--from", "dr.x@" + A_DOM)
        self.assertEqual(rc, 0, out)
        self.assertIn("sender: <dr.x@%s> may be sent only by establishment chu-a" % A_DOM, out)
        self.assertRegex(out, r"sender: notifications to <dr\.x@%s> go by route establishments, "
                              r"transport establishment:chu-a" % re.escape(A_DOM))
        rc, out = self.gw.cli("route", "test", "dr.w@" + B_DOM, "--listener", "etablissements",
                              "--from", "usurpateur@" + OP_DOMAIN)
        self.assertIn("is no establishment's: MAIL FROM is refused on this listener (550 5.7.1)", out)

    def test_bounces_for_an_establishments_sender_go_to_its_mailbox(self):
        a = self.client("chu-a")
        code, text = a.send("dr.x@" + A_DOM, ["inconnu@" + OP_DOMAIN], message("dr.x@" + A_DOM, "inconnu@" + OP_DOMAIN))
        self.assertEqual(code, 250, text)
        meta, eml = self.box["chu-a"].wait_messages(1, timeout=20)[0]
        self.assertEqual(rcpts(meta), ["dr.x@" + A_DOM])
        self.assertEqual(meta["mail_from"].strip("<>"), "")
        self.assertIn(b"550 5.1.1 no such user", eml)
        self.assertEqual(self.box["chu-b"].count(), 0)

    def test_an_mta_known_by_its_certificate_is_attributed_at_mail(self):
        os.makedirs(self.est_dir, exist_ok=True)
        with open(os.path.join(self.est_dir, "chu-d.toml"), "w") as f:
            f.write('[establishment]\nname = "chu-d"\ndomains = ["%s"]\nclient_dns = ["%s"]\n'
                    'mailbox = "127.0.0.1:%d"\nmailbox_tls = "none"\n' % (D_DOM, MTA_D_DN, self.box["chu-b"].port))
        self.gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in self.gw.log(), 10, what="reload")
        # Without a certificate, an unknown address now gets in, and is refused at MAIL.
        anon = Client(("127.0.0.1", self.est_port), IP["stranger"])
        self.addCleanup(anon.close)
        code, text = anon.mail("dr@" + D_DOM)
        self.assertEqual(code, 554, text)
        self.assertIn(b"5.7.1", text)
        # With chu-d's certificate, from any address: chu-d, held to its domain.
        s = smtplib.SMTP("127.0.0.1", self.est_port, timeout=20, source_address=(IP["stranger"], 0))
        self.addCleanup(s.close)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pki.ca)
        ctx.check_hostname = False
        ctx.load_cert_chain(*self.pki.mta_d)
        s.ehlo("mta.chu-d.test")
        s.starttls(context=ctx)
        s.ehlo("mta.chu-d.test")
        code, text = s.mail("dr@" + A_DOM)
        self.assertEqual(code, 550, text)
        self.assertIn(b"not a domain of establishment chu-d", text)
        s.rset()
        s.sendmail("dr@" + D_DOM, ["dr.x@" + A_DOM], message("dr@" + D_DOM, "dr.x@" + A_DOM))
        meta, _ = self.box["chu-a"].wait_messages(1)[0]
        self.assertEqual(meta["mail_from"].strip("<>"), "dr@" + D_DOM)
        self.assertRegex(self.gw.log(), r"establishment recognised.*establishment=\"?chu-d")

    def test_an_unknown_client_is_refused_at_connect(self):
        banner = banner_of(IP["stranger"], self.est_port)
        self.assertTrue(banner.startswith("554 5.7.1"), banner)
        self.assertIn("access denied for 127.0.0.99", banner)

    # ------------------------------------------------------------------ 4. onboarding live

    def test_add_on_a_running_server_and_a_broken_file_is_refused_by_reload(self):
        box_c = self.peer("box-chu-c")
        rc, out = self.gw.cli("establishment", "add", "chu-c", "--domain", C_DOM, "--clients", IP["chu-c"],
                              "--mailbox", "127.0.0.1:%d" % box_c.port, "--mailbox-tls", "none")
        self.assertEqual(rc, 0, out)
        self.assertIn("running server reloaded", out)
        self.assertTrue(os.path.exists(os.path.join(self.est_dir, "chu-c.toml")))
        c = self.client("chu-c")
        code, text = c.send("dr.c@" + C_DOM, ["dr.x@" + A_DOM], message("dr.c@" + C_DOM, "dr.x@" + A_DOM))
        self.assertEqual(code, 250, text)
        self.box["chu-a"].wait_messages(1)
        # Trust-space mail for the new one's domain goes to its mailbox.
        s = self.trust_client()
        s.sendmail("dr.y@" + OP_DOMAIN, ["dr.c@" + C_DOM], message("dr.y@" + OP_DOMAIN, "dr.c@" + C_DOM))
        box_c.wait_messages(1)
        # add refuses a clash, and writes nothing.
        rc, out = self.gw.cli("establishment", "add", "chu-d", "--domain", A_DOM, "--clients", "127.0.0.14",
                              "--mailbox", "127.0.0.1:2")
        self.assertEqual(rc, 1, out)
        self.assertIn("chu-a.mssante.fr is also claimed by", out)
        self.assertFalse(os.path.exists(os.path.join(self.est_dir, "chu-d.toml")))
        rc, out = self.gw.cli("establishment", "list")
        self.assertIn("chu-c  domains chu-c.mssante.fr", out)
        rc, out = self.gw.cli("establishment", "show", "chu-c")
        self.assertIn("transport_maps", out)
        self.assertIn("New-SendConnector", out)
        self.assertIn("%s.   IN MX 10" % C_DOM, out)
        rc, out = self.gw.cli("establishment", "test", "chu-c")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"RCPT .*ok .*250")
        # A broken file: check-config names it, the reload is refused, mail keeps flowing.
        broken = os.path.join(self.est_dir, "casse.toml")
        with open(broken, "w") as f:
            f.write('[establishment]\nname = "casse"\ndomains = ["casse.mssante.fr"]\nmailbox = "pas-un-port"\n')
        rc, out = self.gw.cli("check-config")
        self.assertEqual(rc, 1, out)
        self.assertIn("casse.toml:4: establishment.mailbox", out)
        self.gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in self.gw.log(), 10, what="reload refused")
        code, text = c.send("dr.c@" + C_DOM, ["dr.x@" + A_DOM], message("dr.c@" + C_DOM, "dr.x@" + A_DOM))
        self.assertEqual(code, 250, text)
        self.box["chu-a"].wait_messages(2)
        # remove: gone after the reload (the broken file removed first).
        os.remove(broken)
        rc, out = self.gw.cli("establishment", "remove", "chu-c")
        self.assertEqual(rc, 0, out)
        self.assertIn("running server reloaded", out)
        self.assertTrue(banner_of(IP["chu-c"], self.est_port).startswith("554 5.7.1"))

    # ------------------------------------------------------------------ 5. limits

    def test_rate_and_queue_limits_answer_4xx_and_let_others_through(self):
        dead = free_port()  # nothing listens: its mail stays queued
        slow = os.path.join(self.est_dir, "chu-c.toml")
        os.makedirs(self.est_dir, exist_ok=True)
        with open(slow, "w") as f:
            f.write('[establishment]\nname = "chu-c"\ndomains = ["%s"]\nclients = ["%s"]\n'
                    'mailbox = "127.0.0.1:%d"\nmax_message_rate = 2\nmax_queued = 3\n'
                    % (C_DOM, IP["chu-c"], dead))
        self.gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in self.gw.log(), 10, what="reload")
        c = self.client("chu-c")
        for i in range(2):
            code, text = c.send("dr.c@" + C_DOM, ["dr.x@" + A_DOM], message("dr.c@" + C_DOM, "dr.x@" + A_DOM))
            self.assertEqual(code, 250, text)
        code, text = c.mail("dr.c@" + C_DOM)
        self.assertEqual(code, 450, text)
        self.assertIn(b"4.7.1", text)
        self.assertIn(b"establishment chu-c exceeds its message rate (2 per minute)", text)
        c.s.rset()
        # Another establishment is not held back.
        a = self.client("chu-a")
        code, text = a.send("dr.x@" + A_DOM, ["dr.w@" + B_DOM], message("dr.x@" + A_DOM, "dr.w@" + B_DOM))
        self.assertEqual(code, 250, text)
        # max_queued: mail from chu-c to chu-c's (dead) mailbox stays queued.
        with open(slow, "w") as f:
            f.write('[establishment]\nname = "chu-c"\ndomains = ["%s"]\nclients = ["%s"]\n'
                    'mailbox = "127.0.0.1:%d"\nmax_queued = 3\n' % (C_DOM, IP["chu-c"], dead))
        rc, out = self.gw.cli("establishment", "list")  # reload by the admin endpoint
        self.gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.gw.log().count("configuration reloaded") >= 2, 10, what="2nd reload")
        c = self.client("chu-c")
        for i in range(1):
            code, text = c.send("dr.c@" + C_DOM, ["dr.c2@" + C_DOM], message("dr.c@" + C_DOM, "dr.c2@" + C_DOM))
            self.assertEqual(code, 250, text)
        # Now 3 queued (2 to chu-a's... delivered quickly; the one to the dead mailbox stays):
        rc, out = self.gw.cli("queue", "list", "--establishment", "chu-c")
        self.assertEqual(rc, 0, out)
        n = out.count("establishment chu-c")
        self.assertGreaterEqual(n, 1, out)
        for i in range(3 - n):
            code, text = c.send("dr.c@" + C_DOM, ["dr.c2@" + C_DOM], message("dr.c@" + C_DOM, "dr.c2@" + C_DOM))
            self.assertEqual(code, 250, text)
        code, text = c.mail("dr.c@" + C_DOM)
        self.assertEqual(code, 452, text)
        self.assertIn(b"4.3.1", text)
        self.assertIn(b"max_queued 3", text)
        c.s.rset()
        code, text = a.send("dr.x@" + A_DOM, ["dr.w@" + B_DOM], message("dr.x@" + A_DOM, "dr.w@" + B_DOM))
        self.assertEqual(code, 250, text)
        rc, out = self.gw.cli("queue", "list", "--establishment", "chu-a")
        self.assertNotIn("establishment chu-c", out)
        metrics = self.admin_get("/metrics")
        self.assertRegex(metrics, r'passerelle_smtp_rejected_total\{[^}]*establishment="chu-c"')
        # Delivery is counted per sending establishment too (chu-a's mail to chu-b's mailbox),
        # and its log line names it.
        wait_until(lambda: re.search(r'passerelle_establishment_deliveries_total\{establishment="chu-a",'
                                     r'result="sent"\} [1-9]', self.admin_get("/metrics")), 15,
                   what="chu-a's deliveries counted")
        self.assertRegex(self.gw.log(), r'to=dr\.w@%s .*establishment="?chu-a"? .*status="sent"' % re.escape(B_DOM))

    def admin_get(self, path):
        from harness import http_get
        host, port = self.gw.admin
        _, body = http_get(host, port, path)
        return body.decode("utf-8", "replace")

    # ------------------------------------------------------------------ 6. shared domain

    def test_a_shared_domain_by_structure(self):
        e1, e2 = self.client("ehpad-1"), self.client("ehpad-2")
        code, text = e1.send(BAL1, ["dr.y@" + OP_DOMAIN], message(BAL1, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 250, text)
        code, text = e1.send(BAL2, ["dr.y@" + OP_DOMAIN], message(BAL2, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        self.assertIn("this address is establishment ehpad-2's", text)
        code, text = e2.send(BAL2, ["dr.y@" + OP_DOMAIN], message(BAL2, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 250, text)
        code, text = e2.send(NOBODY, ["dr.y@" + OP_DOMAIN], message(NOBODY, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        # Header: its envelope, the other's BAL in From:.
        code, text = e2.send(BAL2, ["dr.y@" + OP_DOMAIN], message(BAL1, "dr.y@" + OP_DOMAIN))
        self.assertEqual(code, 550, text)
        self.op.wait_messages(2)
        s = self.trust_client()
        s.sendmail("dr.y@" + OP_DOMAIN, [BAL1], message("dr.y@" + OP_DOMAIN, BAL1))
        s.sendmail("dr.y@" + OP_DOMAIN, [BAL2], message("dr.y@" + OP_DOMAIN, BAL2))
        self.assertEqual(rcpts(self.box["ehpad-1"].wait_messages(1)[0][0]), [BAL1])
        self.assertEqual(rcpts(self.box["ehpad-2"].wait_messages(1)[0][0]), [BAL2])
        s.mail("dr.y@" + OP_DOMAIN)
        code, text = s.rcpt(NOBODY)
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.1.1", text)
        s.rset()
        rc, out = self.gw.cli("route", "test", BAL2, "--listener", "trust-space")
        self.assertEqual(rc, 0, out)
        self.assertIn("establishment ehpad-2", out)
        self.assertIn("310000002", out)


if __name__ == "__main__":
    unittest.main()
