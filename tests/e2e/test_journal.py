"""End-to-end tests of issue 14: the message journal, `passerelle track` and `stats`.

- SQLite (the default, a file beside the spool): a message sent by hand is tracked with its
  timeline and counted; a refusal at RCPT is journaled with its reply and reason; deferral,
  hold, release and delete by the administrator; no subject or body in the journal file;
  the journal's health on /metrics.
- PostgreSQL (a real server started by the test): two gateways writing to one journal, each
  one's `track` finding both gateways' messages; the server stopped and restarted under
  traffic: mail keeps flowing, events are buffered up to `journal.buffer` then dropped and
  counted, and writing resumes by itself.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid

from harness import (PASSERELLE_BIN, E2ETestCase, free_port, gateway_config, http_get, listener, queued_id, relay_transport,
                     smtp_session, swaks, toml_dumps, wait_until)

DOMAIN = "chu-test.mssante.fr"
SENDER = "secretariat@" + DOMAIN
RCPT = "dr.martin@" + DOMAIN
REJECT = "550 5.7.1 only MSSante destinations are relayed here"


def config(tmp, peer_port, name="gw", journal=None, hostname="passerelle.chu-test.mssante.fr"):
    cfg = gateway_config(
        tmp,
        listeners=[listener("etablissement", free_port(), ["local", "others"])],
        routes=[
            {"name": "local", "domains": [DOMAIN], "transport": "etablissement"},
            {"name": "others", "domains": ["*"], "reject": REJECT},
        ],
        transports={"etablissement": relay_transport(peer_port)},
        name=name,
        hostname=hostname,
    )
    cfg["journal"] = dict(journal or {})
    cfg["journal"].setdefault("flush_interval", "200ms")
    return cfg


def message(subject, body, msgid=None):
    msgid = msgid or "<%s@%s>" % (uuid.uuid4().hex, DOMAIN)
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: %s\r\n\r\n%s\r\n" % (
        SENDER, RCPT, subject, msgid, body)).encode(), msgid.strip("<>")


def send(gw, to=RCPT, subject="test", body="Bonjour."):
    data, msgid = message(subject, body)
    host, port = gw.listener()
    with smtp_session(host, port) as s:
        s.sendmail(SENDER, [to], data)
    return msgid


def metric(gw, name):
    _, body = http_get(*gw.admin, "/metrics")
    m = re.search(r"^%s(?:\{[^}]*\})? ([0-9.e+]+)$" % re.escape(name), body.decode(), re.M)
    return float(m.group(1)) if m else None


def track(gw, *args):
    return gw.cli("track", *args)


def track_json(gw, *args):
    rc, out = gw.cli("track", "--format", "json", *args)
    return rc, (json.loads(out) if rc == 0 else [])


def wait_tracked(gw, pred, *args, timeout=20):
    """Polls `track --format json ARGS` until pred(messages) holds; returns the messages."""
    last = []

    def ok():
        nonlocal last
        _, last = track_json(gw, *args)
        return last if last and pred(last) else None
    try:
        return wait_until(ok, timeout, interval=0.3, what="track %s" % " ".join(args))
    except TimeoutError as e:
        raise AssertionError("%s; last answer: %s" % (e, json.dumps(last, indent=1)[:3000]))


class JournalSqliteTests(E2ETestCase):

    def test_message_by_hand_is_tracked_and_counted(self):
        """The README's "Sending a message by hand", then track --to and stats --by day."""
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port))
        host, port = gw.listener()
        rc, out = swaks("--server", "%s:%d" % (host, port), "--from", SENDER, "--to", RCPT,
                        "--h-X-MSS-Test", "yes")
        self.assertEqual(rc, 0, out)
        peer.wait_messages(1)
        rc, out = swaks("--server", "%s:%d" % (host, port), "--to", "bob@gmail.com")
        self.assertIn("550 5.7.1", out)

        msgs = wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--to", RCPT)
        self.assertEqual(len(msgs), 1)
        m = msgs[0]
        for key in ("queue_id", "message_id", "from", "to", "establishment", "status", "events"):
            self.assertIn(key, m)
        self.assertRegex(m["queue_id"], r"^[0-9A-F]{16}$")
        self.assertEqual(m["from"], SENDER)
        self.assertEqual(m["to"], [RCPT])
        self.assertEqual([e["kind"] for e in m["events"]], ["accepted", "delivered"])
        for e in m["events"]:
            self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        d = m["events"][1]
        self.assertEqual(d["reply"]["code"], 250)
        self.assertEqual(d["next_hop"], "127.0.0.1:%d" % peer.port)
        self.assertEqual(d["destination"], "mailbox")

        rc, text = track(gw, "--to", RCPT)
        self.assertEqual(rc, 0, text)
        self.assertIn(m["queue_id"], text)
        self.assertRegex(text, r"accepted .*1 recipient")
        self.assertRegex(text, r"delivered <%s> via etablissement to 127\.0\.0\.1:%d .*250 2\.0\.0"
                         % (re.escape(RCPT), peer.port))
        rc, text = track(gw, "--id", m["queue_id"].lower())
        self.assertEqual(rc, 0, text)

        # The refusal of bob@gmail.com is journaled by the writer on its own schedule, possibly
        # after the delivery that wait_tracked saw: wait for it rather than read once.
        def day_stats():
            rc, out = gw.cli("stats", "--by", "day", "--format", "json")
            self.assertEqual(rc, 0, out)
            st = json.loads(out)
            return st if st["rows"] and st["rows"][0]["refused"] >= 1 else None

        st = wait_until(day_stats, timeout=10, what="the refusal counted by stats")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual([r["key"] for r in st["rows"]], [today])
        row = st["rows"][0]
        self.assertEqual(row["received_from_establishments"], 1)
        self.assertEqual(row["delivered_to_mailboxes"], 1)
        self.assertEqual(row["refused"], 1)
        self.assertEqual(row["refused_by_reason"], {"route-reject": 1})
        rc, text = gw.cli("stats", "--by", "day")
        self.assertEqual(rc, 0, text)
        self.assertRegex(text, r"(?m)^%s\s+1\s+0\s+0\s+1\s" % today)
        rc, csv = gw.cli("stats", "--by", "establishment", "--since", today, "--format", "csv")
        self.assertEqual(rc, 0, csv)
        self.assertTrue(csv.startswith("establishment,received_from_establishments,"), csv)
        self.assertIn("\ntotal,1,", csv)

    def test_proof_of_sending_names_the_sha256_of_the_message_as_sent(self):
        """Issue 28 item 4: `track --id QID --proof` in text, JSON and HTML; the SHA-256 is
        the one `sha256sum` gives of the message the client sent, and no subject or body."""
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port))
        data, msgid = message("Patient Secret, resultats",
                              "BODY-NEVER-KEPT\r\n..a line starting with a dot")
        path = os.path.join(self.tmp, "sent.eml")
        with open(path, "wb") as f:
            f.write(data)
        host, port = gw.listener()
        with smtp_session(host, port) as s:
            s.mail(SENDER)
            s.rcpt(RCPT)
            code, text = s.data(data)
        self.assertEqual(code, 250)
        qid = queued_id(text.decode())
        peer.wait_messages(1)
        wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--id", qid)
        expected = subprocess.run(["sha256sum", path], stdout=subprocess.PIPE, check=True,
                                  timeout=10).stdout.split()[0].decode()
        rc, out = gw.cli("track", "--id", qid, "--proof", "--format", "json")
        self.assertEqual(rc, 0, out)
        proof = json.loads(out)
        self.assertEqual(proof["sha256"], expected)
        self.assertEqual(proof["message_id"], msgid)
        self.assertEqual(proof["to"], [RCPT])
        self.assertIn("delivered", [e["kind"] for e in proof["events"]])
        rc, text_proof = gw.cli("track", "--id", qid, "--proof")
        self.assertEqual(rc, 0, text_proof)
        self.assertIn("sha-256         " + expected, text_proof)
        rc, page = gw.cli("track", "--id", qid, "--proof", "--format", "html")
        self.assertIn("<h1>Proof of sending</h1>", page)
        for out in (text_proof, page, json.dumps(proof)):
            self.assertNotIn("Secret", out)
            self.assertNotIn("BODY-NEVER-KEPT", out)
        rc, _ = gw.cli("track", "--proof")
        self.assertEqual(rc, 2, "--proof needs --id")

    def test_receipts_are_joined_to_the_message_and_relayed_unchanged(self):
        """Issue 28 items 1-3: a success DSN, a failure DSN and an MDN (built by Python's email
        package as a mail client does) for a relayed message are recorded against it and its
        recipient, shown by `track`, and delivered byte for byte; an MDN for a message never
        relayed is relayed and counted as unmatched."""
        import email.message
        import email.utils
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port))
        other = "dr.autre@" + DOMAIN
        data, msgid = message("x", "y")
        data = data.replace(b"To: " + RCPT.encode(), b"To: %s, %s" % (RCPT.encode(), other.encode()))
        host, port = gw.listener()
        with smtp_session(host, port) as s:
            s.mail(SENDER)
            s.rcpt(RCPT)
            s.rcpt(other)
            code, text = s.data(data)
        qid = queued_id(text.decode())
        peer.wait_messages(1)

        def dsn(rcpt, action, status):
            return ("From: MAILER-DAEMON@op.test\r\nTo: %s\r\nMessage-ID: <%s@op.test>\r\n"
                    "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n"
                    "\tboundary=\"B1\"\r\n\r\n--B1\r\nContent-Type: text/plain\r\n\r\nReport.\r\n\r\n"
                    "--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.op.test\r\n\r\n"
                    "Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\n\r\n"
                    "--B1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: %s\r\nMessage-ID: <%s>\r\n"
                    "Subject: secret\r\n\r\n--B1--\r\n" % (SENDER, uuid.uuid4().hex, rcpt, action, status,
                                                          SENDER, msgid)).encode()

        def mdn(original_id):
            m = email.message.EmailMessage()
            m["From"] = RCPT
            m["To"] = SENDER
            m["Subject"] = "Read: x"
            m["Message-ID"] = email.utils.make_msgid(domain="op.test")
            m.set_content("Your message was displayed.")
            part = email.message.Message()
            part["Content-Type"] = "message/disposition-notification"
            part.set_payload("Reporting-UA: webmail.op.test; Webmail\r\nFinal-Recipient: rfc822; %s\r\n"
                             "Original-Message-ID: <%s>\r\nDisposition: manual-action/MDN-sent-manually; "
                             "displayed\r\n" % (RCPT, original_id))
            m.make_mixed()
            m.attach(part)
            m.replace_header("Content-Type", m.get("Content-Type").replace("multipart/mixed", "multipart/report"))
            m.set_param("report-type", "disposition-notification")
            return m.as_bytes(policy=email.policy.SMTP)

        # Without a client ENVID the gateway set its own, which names the message exactly.
        self.assertIn("ENVID=passerelle-" + qid, peer.messages()[0][0]["mail_params"])
        by_envid = ("From: MAILER-DAEMON@op.test\r\nTo: %s\r\nMIME-Version: 1.0\r\n"
                    "Content-Type: multipart/report; report-type=delivery-status; boundary=E\r\n\r\n"
                    "--E\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.op.test\r\n"
                    "Original-Envelope-Id: passerelle-%s\r\n\r\nFinal-Recipient: rfc822; %s\r\n"
                    "Action: delayed\r\nStatus: 4.4.1\r\n\r\n--E--\r\n" % (SENDER, qid, other)).encode()
        notes = [dsn(RCPT, "delivered", "2.0.0"), dsn(other, "failed", "5.1.1"), mdn(msgid), mdn("never@elsewhere"),
                 by_envid]
        for n in notes:
            with smtp_session(host, port) as s:
                s.sendmail("", [SENDER], n)
        peer.wait_messages(1 + len(notes))

        def joined(m):
            kinds = {(e["kind"], e.get("to")) for e in m[0]["events"]}
            return {("remote-delivered", RCPT), ("remote-failed", other), ("displayed", RCPT),
                    ("remote-delayed", other)} <= kinds
        wait_tracked(gw, joined, "--id", qid)
        rc, out = gw.cli("track", "--id", qid)
        self.assertIn("read by <%s> with webmail.op.test" % RCPT, out)
        self.assertIn("reported by mx.op.test: 2.0.0", out)
        rc, out = gw.cli("track", "--id", qid, "--proof")
        self.assertIn("displayed", out)
        # Each notification reaches its addressee unchanged (after our Received header).
        got = [eml for _, eml in peer.messages()[1:]]
        for n in notes:
            self.assertTrue(any(g.endswith(n) for g in got), "a notification changed on the way")
        wait_until(lambda: metric(gw, 'passerelle_receipts_total{type="mdn",matched="false"}') == 1, 10,
                   what="the unmatched MDN counted")
        self.assertEqual(metric(gw, 'passerelle_receipts_total{type="dsn",matched="true"}'), 3)

    def test_refusal_at_rcpt_is_journaled_with_reply_and_reason(self):
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port))
        host, port = gw.listener()
        with smtp_session(host, port) as s:
            s.mail(SENDER)
            code, text = s.rcpt("someone@example.org")
            self.assertEqual(code, 550)
        msgs = wait_tracked(gw, lambda m: True, "--to", "someone@example.org")
        m = msgs[0]
        self.assertIsNone(m["queue_id"])
        self.assertEqual(m["status"], "refused")
        self.assertEqual(m["from"], SENDER)
        ev = m["events"][0]
        self.assertEqual(ev["kind"], "refused")
        self.assertEqual(ev["stage"], "rcpt")
        self.assertEqual(ev["reason"], "route-reject")
        self.assertEqual((ev["reply"]["code"], ev["reply"]["status"]), (550, "5.7.1"))
        self.assertIn("only MSSante destinations", ev["reply"]["text"])
        rc, text = track(gw, "--status", "refused")
        self.assertEqual(rc, 0)
        self.assertIn("at rcpt: 550 5.7.1 only MSSante destinations are relayed here [route-reject]", text)

    def test_deferred_held_released_deleted_and_nothing_matches(self):
        peer = self.peer("mailbox", start=False)  # down: deliveries are deferred
        gw = self.gateway(config(self.tmp, peer.port))
        send(gw)
        msgs = wait_tracked(gw, lambda m: m[0]["status"] == "deferred", "--to", RCPT)
        qid = msgs[0]["queue_id"]
        ev = [e for e in msgs[0]["events"] if e["kind"] == "deferred"][0]
        self.assertIn("connect to", ev["diagnostic"])
        for verb, status in (("hold", "held"), ("release", None), ("delete", "deleted")):
            rc, out = gw.cli("queue", verb, qid)
            # `release` starts an attempt at once: a delete that lands during it is asked to
            # come back (exit 1, "delivery in progress"), as the CLI says; so does this test.
            deadline = time.time() + 10
            while rc != 0 and "delivery in progress" in out and time.time() < deadline:
                time.sleep(0.2)
                rc, out = gw.cli("queue", verb, qid)
            self.assertEqual(rc, 0, out)
            if status:
                wait_tracked(gw, lambda m, s=status: m[0]["status"] == s, "--id", qid)
        msgs = wait_tracked(gw, lambda m: True, "--status", "deleted")
        kinds = [e["kind"] for e in msgs[0]["events"]]
        for k in ("accepted", "deferred", "held", "released", "deleted"):
            self.assertIn(k, kinds)
        held = [e for e in msgs[0]["events"] if e["kind"] == "held"][0]
        self.assertEqual(held["user"], "cli")
        rc, out = track(gw, "--to", "nobody@" + DOMAIN)
        self.assertEqual(rc, 1, out)
        rc, out = track(gw, "--since", "not-a-date")
        self.assertEqual(rc, 2, out)

    def test_queue_verb_on_a_stopped_server_is_journaled(self):
        peer = self.peer("mailbox", start=False)
        gw = self.gateway(config(self.tmp, peer.port))
        send(gw)
        msgs = wait_tracked(gw, lambda m: m[0]["status"] == "deferred", "--to", RCPT)
        qid = msgs[0]["queue_id"]
        gw.stop()
        rc, out = gw.cli("queue", "hold", qid)
        self.assertEqual(rc, 0, out)
        msgs = wait_tracked(gw, lambda m: m[0]["status"] == "held", "--id", qid, timeout=5)
        self.assertEqual(msgs[0]["events"][-1]["user"], "cli")

    def test_refusal_at_connect_is_journaled_once_a_minute(self):
        peer = self.peer("mailbox")
        cfg = config(self.tmp, peer.port)
        cfg["listener"][0]["clients"] = ["192.0.2.0/24"]  # not us
        gw = self.gateway(cfg)
        host, port = gw.listener()
        for _ in range(3):
            with socket.create_connection((host, port), timeout=10) as c:
                self.assertTrue(c.recv(512).startswith(b"554 5.7.1"))
        msgs = wait_tracked(gw, lambda m: True, "--status", "refused")
        self.assertEqual(len(msgs), 1, "one event per client and reply per minute")
        ev = msgs[0]["events"][0]
        self.assertEqual((ev["stage"], ev["reason"]), ("connect", "client-not-allowed"))
        self.assertEqual(msgs[0]["client"], "127.0.0.1")

    def test_no_subject_or_body_in_the_journal_and_health_on_metrics(self):
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port))
        secret = "DIAGNOSTIC-" + uuid.uuid4().hex
        msgid = send(gw, subject="Subject " + secret, body="Body " + secret)
        peer.wait_messages(1)
        wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--message-id", msgid)
        gw.stop()  # flushes the journal and checkpoints nothing away: read every file
        spool = gw.config["server"]["spool"]
        blob = b""
        for f in os.listdir(spool):
            if f.startswith("journal.sqlite"):
                with open(os.path.join(spool, f), "rb") as fh:
                    blob += fh.read()
        self.assertIn(msgid.encode(), blob, "the Message-ID is journaled")
        self.assertNotIn(secret.encode(), blob, "no subject, no body")
        gw.start()
        rc, out = track(gw, "--message-id", "<%s>" % msgid)
        self.assertEqual(rc, 0, out)
        send(gw)
        wait_until(lambda: (metric(gw, "passerelle_journal_events_written_total") or 0) >= 2, 10,
                   what="journal events written")
        self.assertEqual(metric(gw, "passerelle_journal_events_dropped_total"), 0)
        self.assertEqual(metric(gw, "passerelle_journal_write_errors_total"), 0)
        self.assertGreaterEqual(metric(gw, "passerelle_journal_batches_total"), 1)
        self.assertIsNotNone(metric(gw, "passerelle_journal_lag_seconds"))


class JournalPostgresTests(E2ETestCase):

    def test_two_gateways_share_one_journal(self):
        pg = self.postgres()
        url = pg.createdb("passerelle")
        peer = self.peer("mailbox")
        gws = []
        for name in ("gw-a", "gw-b"):
            gws.append(self.gateway(config(self.tmp, peer.port, name=name,
                                           journal={"kind": "postgres", "url": url, "gateway": name}),
                                    name=name))
        ids = {}
        for g in gws:
            ids[g.name] = send(g)
        peer.wait_messages(2)
        for g in gws:
            msgs = wait_tracked(g, lambda m: len(m) == 2 and all(x["status"] == "delivered" for x in m),
                                "--to", RCPT)
            self.assertEqual(sorted(x["gateway"] for x in msgs), ["gw-a", "gw-b"])
            self.assertEqual(sorted(x["message_id"] for x in msgs), sorted(ids.values()))
        rc, out = gws[1].cli("stats", "--by", "day", "--format", "json")
        self.assertEqual(rc, 0, out)
        self.assertEqual(json.loads(out)["total"]["received_from_establishments"], 2)
        self.assertEqual(pg.psql("SELECT count(*) FROM gateways"), "2")

    def test_the_journal_connection_is_encrypted_and_checked(self):
        """Issue 24 B.8: a PostgreSQL that refuses clear connections (ssl = on, hostnossl
        rejected); libpq's sslmode and sslrootcert are honoured: verify-full checks the CA and
        the host name, a wrong CA or a clear connection is refused with the reason."""
        pki = os.path.join(self.tmp, "pg-pki")
        os.makedirs(pki)

        def ssl(*args):
            r = subprocess.run(["openssl"] + list(args), cwd=pki, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout.decode())

        for ca in ("ca", "other-ca"):
            ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj", "/CN=journal " + ca)
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            "server.key", "-out", "server.csr", "-subj", "/CN=journal.example")
        with open(os.path.join(pki, "san.ext"), "w") as f:
            f.write("subjectAltName = DNS:journal.example, IP:127.0.0.1\n")
        ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
        pg = self.postgres(start=False)
        for f in ("server.pem", "server.key"):
            dst = os.path.join(pg.data, f)
            shutil.copy(os.path.join(pki, f), dst)
            os.chmod(dst, 0o600)
            if os.geteuid() == 0:
                shutil.chown(dst, "postgres", "postgres")
        with open(os.path.join(pg.data, "postgresql.conf"), "a") as f:
            f.write("ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n")
        hba = os.path.join(pg.data, "pg_hba.conf")
        with open(hba) as f:
            rules = f.read()
        with open(hba, "w") as f:
            f.write("hostnossl all all 0.0.0.0/0 reject\n" + rules)
        pg.start()
        url = pg.createdb("passerelle")
        ca = os.path.join(pki, "ca.pem")
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port, journal={
            "kind": "postgres", "url": url + "?sslmode=verify-full&sslrootcert=" + ca}))
        send(gw)
        wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--to", RCPT)
        self.assertEqual(pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                 "WHERE a.application_name = 'passerelle' AND NOT s.ssl"), "0")
        self.assertNotEqual(pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                                    "USING (pid) WHERE a.application_name = 'passerelle' AND s.ssl"), "0",
                            "the gateway's journal connection is encrypted")

        def cli_with(url):
            cfg = dict(gw.config)
            cfg["journal"] = {"kind": "postgres", "url": url}
            path = os.path.join(self.tmp, "other.toml")
            with open(path, "w") as f:
                f.write(toml_dumps(cfg))
            r = subprocess.run([PASSERELLE_BIN, "track", "--to", RCPT, "--config", path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            return r.returncode, r.stdout.decode()

        rc, out = cli_with(url + "?sslmode=verify-full&sslrootcert=" + os.path.join(pki, "other-ca.pem"))
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"(?i)certificate|issuer", "a server signed by another CA is refused")
        rc, out = cli_with(url.replace("127.0.0.1", "localhost") + "?sslmode=verify-full&sslrootcert=" + ca)
        self.assertNotEqual(rc, 0, "verify-full: localhost is not a name of the certificate:\n" + out)
        rc, out = cli_with(url.replace("127.0.0.1", "localhost") + "?sslmode=verify-ca&sslrootcert=" + ca)
        self.assertEqual(rc, 0, "verify-ca: the CA is enough:\n" + out)
        rc, out = cli_with(url + "?sslmode=disable")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("no encryption", out, "the server refuses clear connections")
        rc, out = cli_with(url + "?sslmode=verify-full")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("verify-full need sslrootcert=FILE", out)

    def test_a_version_1_journal_is_upgraded_in_place(self):
        """A PostgreSQL journal of the first release (no `day`, lookups by address alone):
        the gateway upgrades it when it starts, and `track --to` finds the old message and a
        new one."""
        pg = self.postgres()
        url = pg.createdb("passerelle")
        old = int(time.time() * 1000) - 3600 * 1000
        pg.psql("""
            CREATE TABLE journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO journal_meta VALUES ('schema_version', '1');
            CREATE TABLE gateways (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
            INSERT INTO gateways (name) VALUES ('gw-old');
            CREATE TABLE messages (
                qid TEXT NOT NULL, gw INTEGER NOT NULL, queued BOOLEAN NOT NULL,
                time BIGINT NOT NULL, updated BIGINT NOT NULL, status TEXT NOT NULL,
                origin TEXT, listener TEXT, establishment TEXT, client_ip TEXT, client_dn TEXT,
                tls TEXT, sender TEXT, message_id TEXT, size BIGINT, nrcpt INTEGER NOT NULL,
                PRIMARY KEY (qid, gw));
            CREATE INDEX messages_updated ON messages (updated);
            CREATE INDEX messages_sender ON messages (sender, time);
            CREATE INDEX messages_message_id ON messages (message_id);
            CREATE TABLE recipients (
                qid TEXT NOT NULL, gw INTEGER NOT NULL, idx INTEGER NOT NULL,
                address TEXT NOT NULL, route TEXT, transport TEXT, bal_type TEXT,
                destination TEXT, status TEXT NOT NULL, PRIMARY KEY (qid, gw, idx));
            CREATE INDEX recipients_address ON recipients (address);
            CREATE TABLE events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qid TEXT NOT NULL,
                gw INTEGER NOT NULL, time BIGINT NOT NULL, kind TEXT NOT NULL, rcpt TEXT,
                origin TEXT, destination TEXT, establishment TEXT, mailbox TEXT, peer TEXT,
                reason TEXT, tls_failure TEXT, bal_type TEXT, details TEXT NOT NULL);
            INSERT INTO messages VALUES ('0006000000000001', 1, true, %(t)d, %(t)d, 'delivered',
                'establishment', 'etablissement', NULL, '127.0.0.1', NULL, NULL, '%(s)s',
                'old1@%(d)s', 100, 1);
            INSERT INTO recipients VALUES ('0006000000000001', 1, 0, '%(r)s', 'local',
                'etablissement', NULL, 'mailbox', 'delivered');
            INSERT INTO events (qid, gw, time, kind, details)
                VALUES ('0006000000000001', 1, %(t)d, 'accepted', '{}');
        """ % {"t": old, "s": SENDER, "r": RCPT, "d": DOMAIN})
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port,
                                 journal={"kind": "postgres", "url": url, "gateway": "gw-new"}))
        send(gw)
        peer.wait_messages(1)
        for args in (("--to", RCPT), ("--from", SENDER)):
            msgs = wait_tracked(gw, lambda m: len(m) == 2 and m[1]["status"] == "delivered", *args)
            self.assertEqual([x["gateway"] for x in msgs], ["gw-old", "gw-new"], args)
        rc, out = track(gw, "--message-id", "old1@" + DOMAIN)
        self.assertEqual(rc, 0, out)
        self.assertEqual(pg.psql("SELECT value FROM journal_meta WHERE key = 'schema_version'"), "2")
        self.assertEqual(pg.psql("SELECT day FROM recipients WHERE qid = '0006000000000001'"),
                         str(old // 86400000))
        indexes = pg.psql("SELECT indexname FROM pg_indexes WHERE tablename IN "
                          "('messages', 'recipients') ORDER BY 1").split()
        self.assertIn("recipients_day_address", indexes)
        self.assertNotIn("recipients_address", indexes)
        self.assertNotIn("messages_updated", indexes)
        # The IF NOT EXISTS of every start are not worth a log line each.
        self.assertNotIn("already exists, skipping", gw.log())

    def test_events_kept_on_disk_survive_a_kill_9(self):
        """Issue 27: what the spill holds is on disk (fsync'd per batch): a gateway killed with
        SIGKILL while PostgreSQL is down loses none of it."""
        pg = self.postgres()
        url = pg.createdb("passerelle")
        peer = self.peer("mailbox")
        gw = self.gateway(config(self.tmp, peer.port,
                                 journal={"kind": "postgres", "url": url, "batch_size": 10}))
        send(gw)
        wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--to", RCPT)
        pg.stop()
        sent = 1
        for _ in range(20):
            send(gw)
            sent += 1
        peer.wait_messages(sent, timeout=30)
        # Every event of the outage on disk (accepted + delivered per message) before the kill.
        wait_until(lambda: (metric(gw, "passerelle_journal_spilled_events") or 0) >= 2 * (sent - 1),
                   30, what="the outage's events to be on disk")
        gw.kill9()
        pg.start()
        gw.start()
        self.assertIn("events kept on disk by a previous run", gw.log())
        wait_until(lambda: metric(gw, "passerelle_journal_spilled_events") == 0
                   and metric(gw, "passerelle_journal_up") == 1, 60, what="the journal to catch up")
        self.assertEqual(int(pg.psql("SELECT count(*) FROM events")), 2 * sent)

    def test_postgres_stopped_and_restarted_under_traffic(self):
        """Issue 27: the database stopped under traffic, and the gateway restarted while it is
        down. Mail flows; what the database cannot take goes to SPOOL/journal-spill (fsync'd)
        instead of a memory buffer that overflows; `/readyz` says since when; when the database
        returns every event is written, none dropped, none lost by the restart."""
        pg = self.postgres()
        url = pg.createdb("passerelle")
        peer = self.peer("mailbox")
        # A small buffer and batch: before issue 27 an outage of a few seconds overflowed them
        # (3,334 events of 3,000 messages dropped with buffer = 500).
        gw = self.gateway(config(self.tmp, peer.port,
                                 journal={"kind": "postgres", "url": url, "buffer": 40,
                                          "batch_size": 10}))
        sent = 0
        for _ in range(5):
            send(gw)
            sent += 1
        wait_tracked(gw, lambda m: len(m) == 5 and all(x["status"] == "delivered" for x in m),
                     "--to", RCPT)
        pg.stop()
        # Mail keeps flowing while the journal is away: each message is accepted at once.
        # At most 100 messages a second (200 events): still 120 events in 0.6 s where the
        # channel holds 40 + 10, but not 120 events within the ~20 ms the writer's first
        # failed write takes (on a fast machine the 60 sends took 25 ms, and 10 events were
        # dropped while that write was under way: no memory buffer can hold a burst faster
        # than a failure is noticed).
        slowest = 0.0
        for _ in range(60):
            t = time.monotonic()
            send(gw)
            slowest = max(slowest, time.monotonic() - t)
            sent += 1
            time.sleep(max(0.0, t + 0.01 - time.monotonic()))  # pacing the load, not waiting for a condition
        peer.wait_messages(sent, timeout=30)
        self.assertLess(slowest, 2.0, "a message waited on the journal")
        wait_until(lambda: (metric(gw, "passerelle_journal_write_errors_total") or 0) >= 1, 15,
                   what="the journal to notice the outage")
        self.assertEqual(metric(gw, "passerelle_journal_up"), 0)
        # 60 messages x 2 events: far more than 40 + 10, all kept on disk.
        wait_until(lambda: (metric(gw, "passerelle_journal_spilled_events") or 0) >= 100, 15,
                   what="the events to be kept on disk")
        self.assertEqual(metric(gw, "passerelle_journal_events_dropped_total") or 0, 0)
        spill = os.path.join(gw.config["server"]["spool"], "journal-spill")
        self.assertTrue([f for f in os.listdir(spill) if f.endswith(".jsonl")], spill)
        _, ready = http_get(*gw.admin, "/readyz")
        self.assertIn("events kept on disk since", ready.decode())
        self.assertIn("kept on disk under the spool", gw.log())
        # The gateway restarted while the database is still down: nothing is lost.
        gw.restart()
        self.assertIn("events kept on disk by a previous run", gw.log())
        for _ in range(10):
            send(gw)
            sent += 1
        peer.wait_messages(sent, timeout=30)
        pg.start()
        # Writing resumes by itself, the events on disk first.
        expected = sent * 2  # accepted + delivered
        wait_until(lambda: metric(gw, "passerelle_journal_spilled_events") == 0
                   and metric(gw, "passerelle_journal_pending_events") == 0
                   and metric(gw, "passerelle_journal_up") == 1, 60, what="the journal to catch up")
        self.assertEqual(int(pg.psql("SELECT count(*) FROM events")), expected)
        self.assertEqual(metric(gw, "passerelle_journal_events_dropped_total") or 0, 0)
        self.assertIn("every event kept on disk is in the database", gw.log())
        self.assertFalse([f for f in os.listdir(spill) if f.endswith(".jsonl")])
        _, ready = http_get(*gw.admin, "/readyz")
        self.assertNotIn("kept on disk", ready.decode())
        # Every message has its acceptance and its delivery, once.
        rc, msgs = track_json(gw, "--to", RCPT, "--limit", "1000")
        self.assertEqual(rc, 0)
        self.assertEqual(len(msgs), sent)
        self.assertTrue(all(m["status"] == "delivered" for m in msgs), msgs[:3])
        # And new traffic is journaled as before.
        msgid = send(gw)
        wait_tracked(gw, lambda m: m[0]["status"] == "delivered", "--message-id", msgid)
