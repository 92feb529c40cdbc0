"""End-to-end tests of issue 2: routing, refusal at RCPT, durable queue, retries, DSNs,
byte-exact relaying, restarts, and the SMTP protocol guards.

The test bed (all on 127.0.0.1, fresh per test):

    swaks/smtplib --> Postfix "mta" (the establishment MTA, relayhost = the gateway)
                  --> passerelle, listener "etablissement"
                        route local   chu-test.mssante.fr -> transport etablissement -> peer B
                        route mssante *.mssante.fr        -> transport trust-space   -> peer A
                        route others  *                   -> 550 5.7.1 only MSSante ...
    peer A / peer B: mss-peer sinks (A stands for the MSSante trust space, B for the
    establishment's mailbox server).
"""

import base64
import email.utils
import io
import os
import re
import time
import unittest
import uuid
import zipfile

from harness import (E2ETestCase, RawSMTP, addr, free_port, gateway_config, listener, parse_eml,
                     queued_id, rcpts, relay_transport, smtp_session, swaks)

LOCAL_DOMAIN = "chu-test.mssante.fr"
SENDER = "sender@" + LOCAL_DOMAIN
LOCAL_RCPT = "secretariat@" + LOCAL_DOMAIN
MSS_RCPT = "dr.x@autre.mssante.fr"
OUTSIDE_RCPT = "bob@example.com"
REJECT = "550 5.7.1 only MSSante destinations are relayed here"

ROUTES = [
    {"name": "local", "domains": [LOCAL_DOMAIN], "transport": "etablissement", "directory": False},
    {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust-space",
     "whitelist": False, "directory": False},
    {"name": "others", "domains": ["*"], "reject": REJECT},
]


def simple_message(subject, to=MSS_RCPT, frm=SENDER, msgid=None, body="Bonjour.\r\n"):
    msgid = msgid or "<%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n\r\n%s" % (
        frm, to, subject, email.utils.formatdate(), msgid, body)).encode()


def xdm_zip():
    """A small IHE XDM-like zip (binary content)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("INDEX.HTM", "<html><body>IHE XDM</body></html>\r\n")
        z.writestr("README.TXT", "Echange MSSante - document CDA\r\n")
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", '<?xml version="1.0" encoding="UTF-8"?>\n<SubmitObjectsRequest/>\n')
        z.writestr("IHE_XDM/SUBSET01/DOC0001.XML",
                   '<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument>Compte rendu: '
                   'écho abdominale, RAS.</ClinicalDocument>\n'.encode("utf-8") + bytes(range(256)))
    return buf.getvalue()


def rich_message(msgid):
    """Raw bytes (CRLF) with X-MSS-* headers, Disposition-Notification-To, 8-bit UTF-8 text,
    lines starting with '.', a folded header, trailing blanks and a base64 zip attachment."""
    zipdata = xdm_zip()
    b64 = base64.encodebytes(zipdata).decode().replace("\n", "\r\n")
    text = ("Bonjour Docteur,\r\n"
            "Veuillez trouver ci-joint le compte rendu d'échographie de Mme Hélène Dupré-Œuvray.\r\n"
            "Température: 37,5 °C — tension 12/8 — « normal ».\r\n"
            ".Une ligne qui commence par un point\r\n"
            "..deux points\r\n"
            ".\r\n"
            ". \r\n"
            "ligne avec espaces en fin   \r\n"
            "\tligne avec tabulation\r\n"
            "\r\n"
            "Cordialement,\r\n"
            "-- \r\n"
            "Dr Sender\r\n")
    msg = ("Return-Receipt-To: <" + SENDER + ">\r\n"
           "From: \"Dr Sender\" <" + SENDER + ">\r\n"
           "To: <" + MSS_RCPT + ">\r\n"
           "Subject: =?UTF-8?Q?Compte_rendu_=C3=A9chographie?=\r\n"
           "Date: " + email.utils.formatdate() + "\r\n"
           "Message-ID: " + msgid + "\r\n"
           "MIME-Version: 1.0\r\n"
           "X-MSS-Sender-Mssante-Id: 810001234567/sender\r\n"
           "X-MSS-Type-Message: CR-ECHO\r\n"
           "X-Mss-Custom-Folded: premiere partie\r\n"
           "\tseconde partie   \r\n"
           "Disposition-Notification-To: \"Dr Sender\" <" + SENDER + ">\r\n"
           "Content-Type: multipart/mixed;\r\n boundary=\"=_MSS_BOUNDARY_42\"\r\n"
           "\r\n"
           "This is a multi-part message in MIME format.\r\n"
           "--=_MSS_BOUNDARY_42\r\n"
           "Content-Type: text/plain; charset=UTF-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n"
           "\r\n" + text +
           "--=_MSS_BOUNDARY_42\r\n"
           "Content-Type: application/zip; name=\"IHE_XDM.ZIP\"\r\n"
           "Content-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=\"IHE_XDM.ZIP\"\r\n"
           "\r\n" + b64 +
           "--=_MSS_BOUNDARY_42--\r\n")
    return msg.encode("utf-8"), zipdata


def split_header_fields(block):
    """b'Name: v\\r\\n\\tcont\\r\\nName2: ...' -> [b'Name: v\\r\\n\\tcont\\r\\n', ...]."""
    fields = []
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


class RelayTestCase(E2ETestCase):
    """Builds the test bed; each test says which parts run at first."""

    def start_bed(self, peer_a=True, peer_b=True, postfix=False, queue=None, env=None,
                  postfix_tls="none", starttls="offer", **sections):
        self.pa = self.peer("a", start=peer_a)   # MSSante side (trust space)
        self.pb = self.peer("b", start=peer_b)   # the establishment's mailbox server
        self.gw_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["local", "mssante", "others"],
                                starttls=starttls)],
            routes=ROUTES,
            transports={"trust-space": relay_transport(self.pa.port),
                        "etablissement": relay_transport(self.pb.port)},
            queue=queue, **sections)
        self.gw = self.gateway(cfg, env=env)
        self.gw_addr = "127.0.0.1:%d" % self.gw_port
        if postfix:
            self.mta = self.postfix("mta", relayhost="[127.0.0.1]:%d" % self.gw_port,
                                    smtp_tls_security_level=postfix_tls)
            self.mta_addr = "127.0.0.1:%d" % self.mta.port

    def swaks_ok(self, server, *args):
        rc, out = swaks("--server", server, "--ehlo", "poste1." + LOCAL_DOMAIN, "--timeout", "30", *args)
        self.assertEqual(rc, 0, "swaks failed:\n" + out)
        return out

    def send_direct(self, raw, to=(MSS_RCPT,), frm=SENDER, mail_options=()):
        """DATA through smtplib straight to the gateway; returns the queue ID of the 250."""
        with smtp_session("127.0.0.1", self.gw_port) as s:
            code, msg = s.mail(frm, list(mail_options))
            self.assertEqual(code, 250, msg)
            for r in to:
                code, msg = s.rcpt(r)
                self.assertEqual(code, 250, "RCPT %s: %s %s" % (r, code, msg))
            code, msg = s.data(raw)
            self.assertEqual(code, 250, msg)
            qid = queued_id(msg)
            self.assertTrue(qid, "250 after DATA lacks 'queued as ID': %r" % msg)
            return qid

    def assertOnlyReceivedPrepended(self, eml, original, n_received=1):
        self.assertTrue(eml.endswith(original),
                        "relayed message is not the original with headers prepended:\n%r" % eml[:2000])
        prefix = eml[:len(eml) - len(original)]
        fields = split_header_fields(prefix)
        self.assertEqual(len(fields), n_received, "prepended fields: %r" % prefix)
        for f in fields:
            self.assertTrue(f.startswith(b"Received: from "), "prepended field: %r" % f)
        return fields


class RoutingTests(RelayTestCase):

    def test_a_routing_by_domain_through_postfix(self):
        """swaks -> Postfix -> passerelle: *.mssante.fr to peer A, the local domain to peer B,
        and one message to both is split per route."""
        self.start_bed(postfix=True)
        self.swaks_ok(self.mta_addr, "--from", SENDER, "--to", MSS_RCPT, "--h-Subject", "route-to-A")
        self.swaks_ok(self.mta_addr, "--from", SENDER, "--to", LOCAL_RCPT, "--h-Subject", "route-to-B")
        meta_a, eml_a = self.pa.wait_messages(1)[0]
        meta_b, eml_b = self.pb.wait_messages(1)[0]
        self.assertEqual(rcpts(meta_a), [MSS_RCPT])
        self.assertEqual(addr(meta_a["mail_from"]), SENDER)
        self.assertIn(b"Subject: route-to-A", eml_a)
        self.assertEqual(rcpts(meta_b), [LOCAL_RCPT])
        self.assertEqual(addr(meta_b["mail_from"]), SENDER)
        self.assertIn(b"Subject: route-to-B", eml_b)
        for eml in (eml_a, eml_b):
            self.assertTrue(eml.startswith(b"Received: from "), eml[:300])  # the gateway's own
            self.assertIn(b"by mta.chu-test.mssante.fr (Postfix)", eml)     # Postfix's, kept
        # Postfix really handed both to the gateway (no shortcut)
        sent = re.findall(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d, .*status=sent \(250 .*queued as (\S+)\)"
                          % self.gw_port, self.mta.log())
        self.assertEqual(len(sent), 2, self.mta.log())

        # one message, one recipient per route: split by the gateway
        self.swaks_ok(self.mta_addr, "--from", SENDER, "--to", "%s,%s" % (MSS_RCPT, LOCAL_RCPT),
                      "--h-Subject", "route-split")
        meta_a2, eml_a2 = self.pa.wait_messages(2)[1]
        meta_b2, eml_b2 = self.pb.wait_messages(2)[1]
        self.assertEqual(rcpts(meta_a2), [MSS_RCPT])
        self.assertEqual(rcpts(meta_b2), [LOCAL_RCPT])
        self.assertIn(b"Subject: route-split", eml_a2)
        self.assertIn(b"Subject: route-split", eml_b2)
        self.assertNoNewMessages(self.pa, 2)
        self.assertEqual(self.pb.count(), 2)

    def test_b1_non_mssante_refused_postfix_bounces(self):
        """Postfix gets the route's 550 at RCPT and bounces to the sender, via the gateway, to peer B."""
        self.start_bed(postfix=True)
        self.swaks_ok(self.mta_addr, "--from", SENDER, "--to", OUTSIDE_RCPT, "--h-Subject", "to-outside")
        self.mta.wait_log(r"to=<bob@example\.com>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=bounced "
                          r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.7\.1 only MSSante destinations "
                          r"are relayed here \(in reply to RCPT TO command\)\)" % self.gw_port, 20)
        meta, eml = self.pb.wait_messages(1, 20)[0]
        self.assertEqual(addr(meta["mail_from"]), "", "a bounce has the null sender")
        self.assertEqual(rcpts(meta), [SENDER])
        msg = parse_eml(eml)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertIn(b"bob@example.com", eml)
        self.assertIn(b"only MSSante destinations are relayed here", eml)
        self.assertNoNewMessages(self.pa, 0)
        self.assertEqual(self.pb.count(), 1)

    def test_b2_non_mssante_refused_direct_session_continues(self):
        """Straight at the gateway: RCPT to a non-MSSante domain -> the route's 550, and the
        same transaction goes on with a valid recipient."""
        self.start_bed()
        with smtp_session("127.0.0.1", self.gw_port) as s:
            code, msg = s.mail(SENDER)
            self.assertEqual(code, 250, msg)
            code, msg = s.rcpt(OUTSIDE_RCPT)
            self.assertEqual(code, 550, msg)
            self.assertEqual(msg, b"5.7.1 only MSSante destinations are relayed here")
            code, msg = s.rcpt(MSS_RCPT)
            self.assertEqual(code, 250, msg)
            code, msg = s.data(simple_message("mixed-rcpts", to="%s, %s" % (OUTSIDE_RCPT, MSS_RCPT)))
            self.assertEqual(code, 250, msg)
            self.assertTrue(queued_id(msg), msg)
        meta, eml = self.pa.wait_messages(1)[0]
        self.assertEqual(rcpts(meta), [MSS_RCPT])
        self.assertIn(b"Subject: mixed-rcpts", eml)

        rc, out = swaks("--server", self.gw_addr, "--from", SENDER, "--to", OUTSIDE_RCPT, "--timeout", "30")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("<** 550 5.7.1 only MSSante destinations are relayed here", out)
        self.assertNoNewMessages(self.pa, 1)
        self.assertEqual(self.pb.count(), 0)


class QueueTests(RelayTestCase):

    def test_c_retry_while_next_hop_down(self):
        """Next hop down: 250 (queued), nothing lost; delivered within seconds once it is up."""
        self.start_bed(peer_a=False)
        out = self.swaks_ok(self.gw_addr, "--from", SENDER, "--to", MSS_RCPT, "--h-Subject", "retry-me")
        m = re.search(r"<-  250 .*queued as (\S+)", out)
        self.assertTrue(m, out)
        qid = m.group(1)
        time.sleep(2.5)  # a couple of failed attempts (retry = 1s)
        self.assertEqual(self.pb.count(), 0, "no DSN expected (lifetime 1h, delay_warning 0)")
        self.assertTrue(self.gw.running(), "gateway died while the next hop was down")
        self.assertIn(qid, self.gw.log(), "the queue ID of the 250 reply should appear in the gateway log")
        self.pa.start()
        t0 = time.monotonic()
        meta, eml = self.pa.wait_messages(1, 10)[0]
        self.assertLess(time.monotonic() - t0, 8.0)
        self.assertEqual(rcpts(meta), [MSS_RCPT])
        self.assertIn(b"Subject: retry-me", eml)
        self.assertNoNewMessages(self.pa, 1, msg="delivered more than once")

    def test_d_bounce_after_lifetime(self):
        """Next hop down past the queue lifetime: an RFC 3464 DSN goes to the sender (peer B),
        from <>, and the message leaves the queue."""
        self.start_bed(peer_a=False, queue={"lifetime": "4s"})
        msgid = "<doomed-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        t0 = time.monotonic()
        self.send_direct(simple_message("doomed", msgid=msgid))
        meta, eml = self.pb.wait_messages(1, 30)[0]
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, 3.0, "bounced before the 4s lifetime")
        self.assertEqual(addr(meta["mail_from"]), "", "DSN must be sent from the null sender")
        self.assertEqual(rcpts(meta), [SENDER])
        msg = parse_eml(eml)
        self.assertEqual(msg.get_content_type(), "multipart/report", eml[:1500])
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertIn(SENDER, str(msg["To"]))
        parts = {p.get_content_type(): p for p in msg.walk()}
        self.assertIn("message/delivery-status", parts, [*parts])
        text = eml.decode("utf-8", "replace")
        self.assertRegex(text, r"(?im)^Action:\s*failed\s*$")
        self.assertRegex(text, r"(?im)^Final-Recipient:\s*rfc822;\s*dr\.x@autre\.mssante\.fr\s*$")
        self.assertRegex(text, r"(?im)^Status:\s*[45]\.\d{1,3}\.\d{1,3}")
        self.assertIn(msgid, text, "the DSN should return the original headers (Message-ID)")
        # gone from the queue: no late delivery once the next hop comes back, no second DSN
        self.pa.start()
        time.sleep(3)
        self.assertEqual(self.pa.count(), 0, "bounced message was still delivered")
        self.assertEqual(self.pb.count(), 1, "more than one DSN")

    def dsn_of(self, eml):
        """Checks common to every DSN; returns (message, text of the whole DSN)."""
        msg = parse_eml(eml)
        self.assertEqual(msg.get_content_type(), "multipart/report", eml[:1500])
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertIn("message/delivery-status", [p.get_content_type() for p in msg.walk()])
        return msg, eml.decode("utf-8", "replace")

    def test_d2_permanent_failure_dsn_per_recipient(self):
        """The next hop refuses one of two recipients with 550: the other is delivered, and a
        DSN for the refused one only goes to the sender at once (no waiting for the lifetime)."""
        self.start_bed(peer_a=False)
        self.pa.opts["rcpt_reply"] = ["nobody=550 5.1.1 no such user here"]
        self.pa.start()
        msgid = "<partial-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        self.send_direct(simple_message("partial", msgid=msgid), to=[MSS_RCPT, "nobody@autre.mssante.fr"])
        meta, eml = self.pa.wait_messages(1)[0]
        self.assertEqual(rcpts(meta), [MSS_RCPT])
        meta, eml = self.pb.wait_messages(1, 15)[0]
        self.assertEqual(addr(meta["mail_from"]), "")
        self.assertEqual(rcpts(meta), [SENDER])
        msg, text = self.dsn_of(eml)
        self.assertRegex(text, r"(?im)^Final-Recipient:\s*rfc822;\s*nobody@autre\.mssante\.fr\s*$")
        self.assertNotRegex(text, r"(?im)^Final-Recipient:\s*rfc822;\s*dr\.x@")
        self.assertRegex(text, r"(?im)^Action:\s*failed\s*$")
        self.assertRegex(text, r"(?im)^Status:\s*5\.1\.1\s*$")
        self.assertRegex(text, r"(?im)^Diagnostic-Code:\s*smtp;.*550 5\.1\.1 no such user here")
        self.assertIn(msgid, text)
        self.assertNoNewMessages(self.pa, 1)
        self.assertEqual(self.pb.count(), 1)

    def test_d3_no_dsn_to_null_sender(self):
        """A bounce (MAIL FROM:<>) that fails is never answered with a DSN."""
        self.start_bed(peer_a=False)
        self.pa.opts["rcpt_reply"] = ["nobody=550 5.1.1 no such user here"]
        self.pa.start()
        self.send_direct(simple_message("bounce of a bounce", frm="MAILER-DAEMON@" + LOCAL_DOMAIN,
                                        to="nobody@autre.mssante.fr"),
                         to=["nobody@autre.mssante.fr"], frm="")
        self.pa.wait_log(r"cmd RCPT", 10)  # the gateway tried
        time.sleep(3)
        self.assertEqual(self.pa.count(), 0)
        self.assertEqual(self.pb.count(), 0, "a DSN was sent for a null-sender message")
        self.assertTrue(self.gw.running())
        # MAIL, RCPT and DATA went in one pipelined group; with no recipient accepted the
        # transaction was abandoned cleanly and the cached connection still carries mail.
        self.send_direct(simple_message("after the refusal"), to=[MSS_RCPT])
        meta, eml = self.pa.wait_messages(1, 15)[0]
        self.assertEqual(rcpts(meta), [MSS_RCPT])
        self.assertIn(b"after the refusal", eml)

    def test_d4_delay_warning_then_delivery(self):
        """delay_warning: one 'delayed' DSN while the next hop is down, then normal delivery."""
        self.start_bed(peer_a=False, queue={"delay_warning": "2s", "lifetime": "1h"})
        msgid = "<late-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        self.send_direct(simple_message("late", msgid=msgid))
        meta, eml = self.pb.wait_messages(1, 20)[0]
        self.assertEqual(addr(meta["mail_from"]), "")
        self.assertEqual(rcpts(meta), [SENDER])
        msg, text = self.dsn_of(eml)
        self.assertRegex(text, r"(?im)^Action:\s*delayed\s*$")
        self.assertRegex(text, r"(?im)^Final-Recipient:\s*rfc822;\s*dr\.x@autre\.mssante\.fr\s*$")
        self.assertRegex(text, r"(?im)^Status:\s*4\.\d{1,3}\.\d{1,3}")
        self.pa.start()
        meta, eml = self.pa.wait_messages(1, 10)[0]
        self.assertIn(msgid.encode(), eml)
        self.assertNoNewMessages(self.pb, 1, msg="only one delay warning expected")
        self.assertEqual(self.pa.count(), 1)

    def test_d5_lifetime_from_environment(self):
        """PASSERELLE__QUEUE__LIFETIME overrides [queue] lifetime of the file."""
        self.start_bed(peer_a=False, queue={"lifetime": "1h"}, env={"PASSERELLE__QUEUE__LIFETIME": "3s"})
        self.send_direct(simple_message("env-lifetime"))
        meta, eml = self.pb.wait_messages(1, 20)[0]
        msg, text = self.dsn_of(eml)
        self.assertRegex(text, r"(?im)^Action:\s*failed\s*$")

    def _restart_with_queue(self, kill):
        self.start_bed(peer_a=False)
        expected = set()
        with smtp_session("127.0.0.1", self.gw_port) as s:
            for i in range(5):
                msgid = "<restart-%d-%s@%s>" % (i, uuid.uuid4().hex, LOCAL_DOMAIN)
                expected.add(msgid)
                self.assertEqual(s.mail(SENDER)[0], 250)
                self.assertEqual(s.rcpt(MSS_RCPT)[0], 250)
                code, msg = s.data(simple_message("restart %d" % i, msgid=msgid))
                self.assertEqual(code, 250, msg)
        if kill:
            self.gw.kill9()  # right after the last 250: it must already be on disk
        else:
            time.sleep(1.5)  # let delivery attempts fail first
            rc = self.gw.stop()
            self.assertEqual(rc, 0, "SIGTERM should be a clean exit (status 0), got %s" % rc)
        self.gw.start()
        self.pa.start()
        msgs = self.pa.wait_messages(5, 20)
        time.sleep(3)
        msgs = self.pa.messages()
        ids = [parse_eml(eml)["Message-ID"] for _, eml in msgs]
        self.assertEqual(sorted(ids), sorted(expected), "each message exactly once")
        self.assertEqual(len(msgs), 5)
        self.assertEqual(self.pb.count(), 0)

    def test_f1_restart_sigterm_keeps_queue(self):
        self._restart_with_queue(kill=False)

    def test_f2_restart_kill9_keeps_queue(self):
        self._restart_with_queue(kill=True)


class ContentTests(RelayTestCase):

    def test_e1_byte_exact_direct(self):
        """smtplib straight to the gateway: the peer gets exactly Received + the original bytes."""
        self.start_bed()
        msgid = "<exact-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        raw, zipdata = rich_message(msgid)
        self.send_direct(raw, mail_options=["BODY=8BITMIME"])
        meta, eml = self.pa.wait_messages(1)[0]
        self.assertOnlyReceivedPrepended(eml, raw)
        self.assertIn("8BITMIME", str(meta.get("mail_params")).upper(),
                      "8-bit content relayed without BODY=8BITMIME: %r" % meta.get("mail_params"))
        self._check_content(eml, zipdata)

    def test_e2_byte_exact_through_postfix(self):
        """Same message through Postfix: Postfix's and the gateway's Received headers prepended,
        everything else byte-identical."""
        self.start_bed(postfix=True)
        msgid = "<exactpf-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        raw, zipdata = rich_message(msgid)
        with smtp_session("127.0.0.1", self.mta.port) as s:
            s.sendmail(SENDER, [MSS_RCPT], raw, mail_options=["BODY=8BITMIME"])
        meta, eml = self.pa.wait_messages(1, 20)[0]
        fields = self.assertOnlyReceivedPrepended(eml, raw, n_received=2)
        self.assertIn(b"by mta.chu-test.mssante.fr (Postfix)", fields[1])
        self._check_content(eml, zipdata)

    def test_e3_large_message_byte_exact(self):
        """6 MiB of base64 with long and dotted lines, straight at the gateway: exact copy."""
        self.start_bed()
        blob = base64.encodebytes(os.urandom(4_500_000)).replace(b"\n", b"\r\n")
        body = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + blob + b"." * 900 + b"\r\n.\r\n..\r\n")
        raw = simple_message("big").split(b"\r\n\r\n", 1)[0] + b"\r\nMIME-Version: 1.0\r\n" + body
        self.send_direct(raw)
        meta, eml = self.pa.wait_messages(1, 30)[0]
        self.assertGreater(len(raw), 6_000_000)
        self.assertOnlyReceivedPrepended(eml, raw)

    def _check_content(self, eml, zipdata):
        msg = parse_eml(eml)
        self.assertEqual(msg["X-MSS-Sender-Mssante-Id"], "810001234567/sender")
        self.assertIn(SENDER, msg["Disposition-Notification-To"])
        att = [p for p in msg.iter_attachments() if p.get_filename() == "IHE_XDM.ZIP"]
        self.assertEqual(len(att), 1)
        data = att[0].get_payload(decode=True)
        self.assertEqual(data, zipdata)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            self.assertIsNone(z.testzip())
            self.assertIn("IHE_XDM/SUBSET01/DOC0001.XML", z.namelist())
        self.assertIn("Hélène Dupré-Œuvray".encode("utf-8"), eml)
        self.assertIn(b"\r\n.Une ligne qui commence par un point\r\n..deux points\r\n.\r\n. \r\n", eml)


class ProtocolTests(RelayTestCase):

    def test_g1_ehlo_extensions(self):
        self.start_bed()
        with smtp_session("127.0.0.1", self.gw_port) as s:
            for kw in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                       "chunking", "starttls", "dsn"):
                self.assertTrue(s.has_extn(kw), "EHLO lacks %s:\n%s" % (kw.upper(), s.ehlo_resp.decode()))
            self.assertIn(b"passerelle.chu-test.mssante.fr", s.ehlo_resp)

    def _open_transaction(self, rcpt=MSS_RCPT):
        c = RawSMTP("127.0.0.1", self.gw_port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO raw." + LOCAL_DOMAIN)[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
        self.assertEqual(c.cmd("RCPT TO:<%s>" % rcpt)[0], 250, c.dump())
        return c

    def test_g2_bare_lf_and_cr_refused(self):
        """Bare LF / bare CR in content -> 5xx, nothing delivered; '\\n.\\r\\n' never ends DATA
        (no SMTP smuggling)."""
        self.start_bed()
        bodies = {
            "bare LF": b"Subject: bare lf\r\n\r\nline one\nline two\r\n.\r\n",
            "bare CR": b"Subject: bare cr\r\n\r\nline one\rline two\r\n.\r\n",
            "smuggling": (b"Subject: smuggle\r\n\r\nhello\n.\r\nMAIL FROM:<evil@" + LOCAL_DOMAIN.encode() +
                          b">\r\nRCPT TO:<victim@autre.mssante.fr>\r\nDATA\r\nSubject: smuggled\r\n\r\n"
                          b"owned\r\n.\r\n"),
        }
        for name, body in bodies.items():
            with self.subTest(name):
                c = self._open_transaction()
                self.assertEqual(c.cmd("DATA")[0], 354)
                c.send(body)
                code, text = c.reply()
                self.assertTrue(500 <= code < 600, "%s: expected 5xx, got %d %s\n%s" % (name, code, text, c.dump()))
                # exactly one reply: nothing after the bogus end was taken as commands
                c.sock.settimeout(1.0)
                try:
                    extra = c.sock.recv(4096)
                except OSError:
                    extra = b""
                self.assertNotRegex(extra.decode("latin-1"), r"(?m)^(250|354)", "%s: extra replies %r" % (name, extra))
                c.close()
        # a bare LF inside a command line
        c = RawSMTP("127.0.0.1", self.gw_port)
        self.addCleanup(c.close)
        c.reply()
        c.cmd("EHLO raw." + LOCAL_DOMAIN)
        code, text = c.cmd(b"MAIL FROM:<" + SENDER.encode() + b">\nRCPT TO:<x@autre.mssante.fr>")
        self.assertTrue(500 <= code < 600, "bare LF in a command: %d %s" % (code, text))
        self.assertNoNewMessages(self.pa, 0)
        self.assertEqual(self.pb.count(), 0)

    def test_g3_open_relay_address_forms_refused(self):
        self.start_bed()
        with smtp_session("127.0.0.1", self.gw_port) as s:
            self.assertEqual(s.mail(SENDER)[0], 250)
            for a in ("a%b@chu-test.mssante.fr", "@x,@y:a@autre.mssante.fr", '"a@b"@autre.mssante.fr',
                      "a!b@autre.mssante.fr", "a@[127.0.0.1]", "a%autre.mssante.fr@chu-test.mssante.fr",
                      "@chu-test.mssante.fr:a@autre.mssante.fr", "a@autre.mssante.fr@chu-test.mssante.fr"):
                code, msg = s.docmd("RCPT TO:<%s>" % a)
                self.assertTrue(500 <= code < 600, "RCPT TO:<%s> got %d %s" % (a, code, msg))
            code, msg = s.docmd("DATA")
            self.assertNotEqual(code, 354, "DATA accepted without any valid recipient")
        self.assertNoNewMessages(self.pa, 0)
        self.assertEqual(self.pb.count(), 0)

    def test_g4_mail_loop_hop_count(self):
        """50 Received headers -> 554 5.4.0 (mail loop), nothing relayed."""
        self.start_bed()
        hops = b"".join(b"Received: from hop%d.example by hop%d.example; %s\r\n"
                        % (i, i + 1, email.utils.formatdate().encode()) for i in range(50))
        with smtp_session("127.0.0.1", self.gw_port) as s:
            self.assertEqual(s.mail(SENDER)[0], 250)
            self.assertEqual(s.rcpt(MSS_RCPT)[0], 250)
            code, msg = s.data(hops + simple_message("looping"))
            self.assertEqual(code, 554, msg)
            self.assertTrue(msg.startswith(b"5.4.0"), msg)
        self.assertNoNewMessages(self.pa, 0)

    def test_g5_bdat(self):
        """CHUNKING: BDAT n LAST, and BDAT n + BDAT n LAST, over a raw socket."""
        self.start_bed()
        c = self._open_transaction()
        one = simple_message("bdat single", body=".dot line, no stuffing with BDAT\r\nbye\r\n")
        c.send(b"BDAT %d LAST\r\n" % len(one) + one)
        code, text = c.reply()
        self.assertEqual(code, 250, c.dump())
        self.assertTrue(queued_id(text), text)
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
        self.assertEqual(c.cmd("RCPT TO:<%s>" % LOCAL_RCPT)[0], 250, c.dump())
        two = simple_message("bdat chunked", to=LOCAL_RCPT, body="premier morceau\r\n.\r\nsecond\r\n")
        part1, part2 = two[:37], two[37:]
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        self.assertEqual(c.reply()[0], 250, c.dump())
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        code, text = c.reply()
        self.assertEqual(code, 250, c.dump())
        c.close()
        meta, eml = self.pa.wait_messages(1)[0]
        self.assertOnlyReceivedPrepended(eml, one)
        meta, eml = self.pb.wait_messages(1)[0]
        self.assertEqual(rcpts(meta), [LOCAL_RCPT])
        self.assertOnlyReceivedPrepended(eml, two)

    def test_g7_size_and_recipient_limits(self):
        """[smtp] limits: SIZE= above the limit -> 552 at MAIL, oversized DATA -> 552,
        one recipient too many -> 452; nothing relayed from the refused transactions."""
        self.start_bed(smtp={"message_size_limit": 100_000, "recipient_limit": 3})
        with smtp_session("127.0.0.1", self.gw_port) as s:
            self.assertTrue(s.has_extn("size"))
            self.assertEqual(s.esmtp_features["size"].strip(), "100000")
            code, msg = s.mail(SENDER, ["SIZE=200000"])
            self.assertEqual(code, 552, msg)
            s.rset()
            self.assertEqual(s.mail(SENDER)[0], 250)
            self.assertEqual(s.rcpt(MSS_RCPT)[0], 250)
            code, msg = s.data(simple_message("too big", body="y" * 998 + "\r\n") + (b"y" * 998 + b"\r\n") * 150)
            self.assertEqual(code, 552, msg)
            self.assertEqual(s.mail(SENDER)[0], 250)
            for i in range(3):
                self.assertEqual(s.rcpt("dr.%d@autre.mssante.fr" % i)[0], 250)
            code, msg = s.rcpt("dr.3@autre.mssante.fr")
            self.assertEqual(code, 452, msg)
            code, msg = s.data(simple_message("three recipients"))
            self.assertEqual(code, 250, msg)
        meta, eml = self.pa.wait_messages(1)[0]
        self.assertEqual(sorted(rcpts(meta)), ["dr.%d@autre.mssante.fr" % i for i in range(3)])
        self.assertIn(b"Subject: three recipients", eml)
        self.assertNoNewMessages(self.pa, 1)

    def test_g6_starttls_from_postfix_and_swaks(self):
        """Postfix with smtp_tls_security_level = encrypt relays through the gateway's STARTTLS."""
        self.start_bed(postfix=True, postfix_tls="encrypt")
        self.swaks_ok(self.mta_addr, "--from", SENDER, "--to", MSS_RCPT, "--h-Subject", "over-tls")
        meta, eml = self.pa.wait_messages(1, 20)[0]
        self.assertIn(b"Subject: over-tls", eml)
        self.assertRegex(self.mta.log(), r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d"
                         % self.gw_port)
        out = self.swaks_ok(self.gw_addr, "--tls", "--from", SENDER, "--to", LOCAL_RCPT, "--h-Subject", "swaks-tls")
        self.assertIn("TLS started", out)
        meta, eml = self.pb.wait_messages(1)[0]
        self.assertIn(b"Subject: swaks-tls", eml)


if __name__ == "__main__":
    unittest.main()
