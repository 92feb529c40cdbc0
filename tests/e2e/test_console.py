"""End-to-end tests of issue 15 (first part): the admin web console in a real browser.

A gateway with `[console]` on loopback, its users made by `passerelle console user add`, and
headless Chromium driven by selenium:
- the operator logs in, finds a deferred message in the queue, opens it (envelope, header
  section with the Subject hidden, never the body), retries it once the next hop is back,
  and sees it delivered and gone from the queue;
- route test, whitelist and directory lookups show what the CLI shows;
- the configuration editor shows problems at their lines, applies a valid edit through a
  reload, and rolls back;
- an auditor sees everything and may act on nothing (403); a POST without the CSRF token is
  refused (403); an establishment user gets 404 outside its establishment; repeated wrong
  passwords are rate-limited; HTTPS sets Secure cookies.
Screenshots of each page go to target/console-screenshots/.
"""

import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import time

from browser import Browser, request
from harness import (PASSERELLE_BIN, REPO, E2ETestCase, dev_pki, free_port, gateway_config, hold_sqlite_lock,
                     listener, queued_id, relay_transport, smtp_session, wait_until)

SENDER = "secretariat@chu-exemple.mssante.fr"
RCPT = "dr.martin@chu-exemple.mssante.fr"
PASSWORDS = {"admin": "operator password 1", "audit": "auditor password 1", "chua": "establishment pw 1",
             "chub": "establishment pw 2"}


class ConsoleTestCase(E2ETestCase):

    def start(self, console_extra=None, retry="1h", shape=None):
        """shape(cfg), if given, changes the gateway's configuration before it starts."""
        self.peer_ = self.peer("mailbox", start=False)
        self.gw_port = free_port()
        self.console_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["local", "mssante", "others"])],
            routes=[
                {"name": "local", "domains": ["chu-exemple.mssante.fr"], "transport": "etablissement",
                 "directory": True},
                {"name": "mssante", "domains": ["*.mssante.fr", "@whitelist"], "transport": "etablissement",
                 "whitelist": True},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations are relayed here"},
            ],
            transports={"etablissement": relay_transport(self.peer_.port)},
            queue={"retry": [retry]},
            whitelist={"file": os.path.join(REPO, "config", "listeblanchemssante.xml")},
            directory={"kind": "extract",
                       "file": os.path.join(REPO, "config", "Extraction_Correspondance_MSSante.sample.txt")},
            console=dict({"address": "127.0.0.1:%d" % self.console_port,
                          "users_file": os.path.join(self.tmp, "users.toml")}, **(console_extra or {})),
        )
        cfg["server"]["establishments_dir"] = os.path.join(self.tmp, "establishments.d")
        # A regional side: one establishment declared in the file, its MTAs on their listener.
        cfg["listener"].append(listener("etablissements", free_port(), ["establishments", "mssante", "others"],
                                        clients=[], establishments=True))
        cfg["establishment"] = [{"name": "chu-a", "domains": ["chu-a.mssante.fr"], "clients": ["127.0.0.21/32"],
                                 "mailbox": "127.0.0.1:%d" % self.peer_.port}]
        if shape:
            shape(cfg)
        self.gw = self.gateway(cfg, start=False)
        for name, role in (("admin", "operator"), ("audit", "auditor"), ("chua", "establishment:chu-a")):
            self.user_add(name, role, PASSWORDS[name])
        self.gw.start()
        scheme = "https" if console_extra and "certificate" in console_extra else "http"
        self.base = "%s://127.0.0.1:%d" % (scheme, self.console_port)
        self.gw.wait_log(r"console listening", timeout=10)
        return self.gw

    def user_add(self, name, role, password):
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "add", name, "--role", role, "--password-stdin",
                            "--config", self.gw.config_path], input=(password + "\n").encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())
        return r.stdout.decode()

    def browser(self):
        b = Browser(self.base)
        self.addCleanup(b.quit)
        return b

    def send(self):
        """One message to RCPT, deferred while the mailbox server (the peer) is down."""
        with smtp_session("127.0.0.1", self.gw_port) as s:
            msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: patient Jean Secret, results\r\n"
                   "Message-ID: <console-1@chu-exemple.mssante.fr>\r\nX-MSS-Test: console\r\n\r\n"
                   "BODY-NEVER-SHOWN\r\n" % (SENDER, RCPT))
            s.mail(SENDER)
            s.rcpt(RCPT)
            code, text = s.data(msg.encode())
        self.assertEqual(code, 250, text)
        qid = queued_id(text)
        self.assertTrue(qid, text)
        return qid

    def wait_deferred(self, qid):
        def deferred():
            rc, out = self.gw.cli("queue", "show", qid)
            return rc == 0 and re.search(r"attempts [1-9]", out)
        wait_until(deferred, 20, what="message %s deferred once" % qid)


class OperatorTests(ConsoleTestCase):

    def test_operator_finds_a_deferred_message_retries_it_and_sees_it_delivered(self):
        self.start()
        qid = self.send()
        self.wait_deferred(qid)
        b = self.browser()
        b.get("/")
        self.assertEqual(b.path(), "/login", "not logged in: the login page")
        b.shot("login")
        b.login("admin", PASSWORDS["admin"])
        self.assertEqual(b.h1(), "Dashboard")
        self.assertIn("Queue", b.text())
        self.assertIn("Certificates, lists and directory", b.text())
        b.shot("dashboard")

        b.get("/queue")
        self.assertTrue(b.all("a[href='/messages/%s']" % qid), "the deferred message is listed")
        self.assertIn("deferred", b.text("table.messages"))
        self.assertIn("chu-exemple.mssante.fr", b.text("table.shape"), "qshape lists the domain")
        b.shot("queue")
        b.get("/queue?status=held")
        self.assertNotIn(qid, b.text(), "the filter keeps held messages only")
        b.get("/queue?domain=chu-exemple.mssante.fr&status=deferred")
        self.assertIn(qid, b.text())

        b.get("/queue")
        b.click("a[href='/messages/%s']" % qid)
        self.assertEqual(b.h1(), "Message %s" % qid)
        page = b.text()
        self.assertIn(SENDER, page)
        self.assertIn("X-MSS-Test", page)
        self.assertIn("(hidden: may carry health data)", page)
        self.assertNotIn("Jean Secret", b.driver.page_source, "the subject is never shown")
        self.assertNotIn("BODY-NEVER-SHOWN", b.driver.page_source, "the body is never shown")
        # The journal's timeline: accepted, then the failed attempt (written within a second).
        b.wait_text("#h-timeline + *", "deferred", refresh=True)
        timeline = b.text("#h-timeline + *")
        self.assertIn("accepted", timeline)
        self.assertIn("1 recipient(s)", timeline)
        b.shot("message")

        self.peer_.start()
        b.click("form[action='/messages/%s/retry'] button" % qid)
        self.assertIn("retry scheduled now", b.text("p.flash"))
        self.peer_.wait_messages(1, timeout=15)
        b.wait_text("main", "There is no message", refresh=True)
        b.get("/queue")
        self.assertEqual(b.all("a[href='/messages/%s']" % qid), [], "delivered: gone from the queue")
        self.assertRegex(self.gw.log(), r'user="?admin"? role="?operator"? client=127.0.0.1 action="?retry"? target="?%s' % qid,
                         "the action is logged with its user")
        # Track: the same timeline as `passerelle track`, with the retry by the console user
        # and the delivery.
        b.get("/track?id=%s" % qid)
        b.wait_text("main", "250 2.0.0", refresh=True)
        page = b.text()
        self.assertIn("delivered", page)
        self.assertIn("retried", page)
        self.assertIn("console:admin", page)
        rc, cli = self.gw.cli("track", "--id", qid)
        self.assertEqual(rc, 0, cli)
        self.assertIn("console:admin", cli)
        b.shot("track")
        # C.4: words, not column names; a chart of the last 30 days; no sideways scrolling on
        # a 1366 px screen.
        b.driver.set_window_size(1366, 900)
        b.get("/indicators?by=day")
        table = b.text("table.indicators")
        self.assertIn("total", table)
        self.assertIn("From establishments", table)
        self.assertNotIn("received_from_establishments", table)
        self.assertIn("Messages per day, last 30 days", b.text())
        self.assertEqual(len(b.all("svg")) >= 1, True, "the chart is drawn")
        self.assertTrue(b.driver.execute_script(
            "const s = document.querySelector('table.indicators').parentElement;"
            "return s.scrollWidth <= s.clientWidth;"), "the table fits 1366 px")
        b.shot("indicators")
        self.assertEqual([l for l in b.severe_logs() if "status of 404" not in l["message"]], [],
                         "no browser error (missing resources, blocked styles)")

    def test_lookups_and_the_other_pages(self):
        self.start()
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/route-test")
        b.fill("#address", RCPT)
        b.click("form.inline button")
        result = b.text("#route-result")
        self.assertIn("Accepted", result)
        self.assertIn("route local: matched by pattern chu-exemple.mssante.fr", result)
        self.assertIn("directory BAL type PER", result)
        rc, cli = self.gw.cli("route", "test", RCPT)
        for line in cli.splitlines()[1:]:
            self.assertIn(line, result, "the page shows what `passerelle route test` prints")
        b.shot("route-test")
        b.get("/route-test?address=someone%40gmail.com")
        self.assertIn("Refused", b.text("#route-result"))
        self.assertIn("550 5.7.1 only MSSante", b.text("#route-result"))

        b.get("/whitelist?domain=chu-exemple.mssante.fr")
        self.assertIn("is declared", b.text("#whitelist-result"))
        self.assertIn("CN=passerelle.chu-exemple.mssante.fr", b.text("#whitelist-result"))
        b.shot("whitelist")
        b.get("/directory?address=" + RCPT)
        self.assertIn("is known", b.text("#directory-result"))
        b.shot("directory")
        b.get("/directory?address=nobody%40chu-exemple.mssante.fr")
        self.assertIn("is unknown", b.text("#directory-result"))

        b.get("/establishments")
        self.assertIn("chu-a.mssante.fr", b.text("table.establishments"), "/establishments")
        self.assertEqual(b.severe_logs(), [])

    def test_configuration_check_apply_and_roll_back(self):
        self.start()
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/config")
        self.assertIn("In force", b.text())
        original = open(self.gw.config_path).read()
        area = b.css("#config-text")
        self.assertEqual(area.get_attribute("value").replace("\r\n", "\n"), original)
        b.shot("config")

        # A typo and a dangling reference: both shown at their lines, nothing applied.
        broken = original.replace('transport = "etablissement"', 'transport = "nowhere"', 1) + "\n[queue2]\nx = 1\n"
        b.driver.execute_script("arguments[0].value = arguments[1]", area, broken)
        b.click("button[formaction='/config/apply']")
        self.assertIn("error(s)", b.text("#check-verdict"))
        line = broken.splitlines().index('transport = "nowhere"') + 1
        problem_row = b.css("tr#L%d + tr.problem" % line)
        self.assertIn('no [transport.nowhere]', problem_row.text)
        self.assertIn("unknown key", b.text("table.listing"))
        self.assertIn('+transport = "nowhere"', b.text("pre.diff"))
        b.shot("config-check")
        self.assertEqual(open(self.gw.config_path).read(), original, "nothing written")

        # A valid edit is written and reloaded.
        edited = original.replace('retry = ["1h"]', 'retry = ["2h"]')
        self.assertNotEqual(edited, original)
        b.driver.execute_script("arguments[0].value = arguments[1]", b.css("#config-text"), edited)
        b.click("button[formaction='/config/apply']")
        self.assertEqual(b.path(), "/config")
        self.assertIn("in force", b.text("p.flash"))
        self.assertEqual(open(self.gw.config_path).read(), edited)
        self.gw.wait_log(r"configuration reloaded", timeout=10)
        self.assertIn('retry = ["2h"]', b.text("#h-running + *"))

        # A reload refused (the whitelist file is gone) puts the file back.
        refused = edited.replace("listeblanchemssante.xml", "missing.xml")
        b.driver.execute_script("arguments[0].value = arguments[1]", b.css("#config-text"), refused)
        b.click("button[formaction='/config/apply']")
        self.assertIn("refused the new configuration", b.text("main"))
        self.assertEqual(open(self.gw.config_path).read(), edited, "the file is put back")

        b.get("/config")
        b.click("form[action='/config/rollback'] button")
        self.assertIn("previous configuration is back", b.text("p.flash"))
        self.assertEqual(open(self.gw.config_path).read(), original)
        self.assertIn('retry = ["1h"]', b.text("#h-running + *"))


class AccessTests(ConsoleTestCase):

    def test_auditor_sees_but_cannot_act_and_posts_need_the_csrf_token(self):
        self.start()
        qid = self.send()
        self.wait_deferred(qid)

        b = self.browser().login("audit", PASSWORDS["audit"])
        b.get("/messages/%s" % qid)
        self.assertEqual(b.h1(), "Message %s" % qid)
        self.assertEqual(b.all(".actions"), [], "no action offered to an auditor")
        b.get("/config")
        self.assertEqual(b.all("#config-text"), [], "no editor for an auditor")
        b.get("/queue")
        self.assertEqual(b.all("form.bulk"), [], "no bulk action for an auditor")
        # Forged by hand with the auditor's own valid token: still not allowed.
        status, _, body = request(self.base, "POST", "/messages/%s/retry" % qid,
                                  form={"csrf": b.csrf()}, cookie=b.cookie_header())
        self.assertEqual(status, 403, body)
        status, _, _ = request(self.base, "POST", "/config/apply", form={"csrf": b.csrf(), "text": "x"},
                               cookie=b.cookie_header())
        self.assertEqual(status, 403)

        op = self.browser().login("admin", PASSWORDS["admin"])
        op.get("/messages/%s" % qid)
        cookie = op.cookie_header()
        token = op.csrf()
        # The operator's session, without the token, or with a wrong one: 403, nothing done.
        for form in ({}, {"csrf": "0" * 64}):
            status, _, body = request(self.base, "POST", "/messages/%s/hold" % qid, form=form, cookie=cookie)
            self.assertEqual(status, 403, body)
        # In the browser: the form with its token field removed.
        op.driver.execute_script(
            "document.querySelector(\"form[action='/messages/%s/hold'] input[name=csrf]\").remove()" % qid)
        op.click("form[action='/messages/%s/hold'] button" % qid)
        self.assertEqual(op.h1(), "Not allowed")
        self.assertIn("security token", op.text())
        op.shot("csrf-refused")
        rc, out = self.gw.cli("queue", "show", qid)
        self.assertNotIn("on hold", out, "nothing was done")
        # A cross-site form post is refused whatever it carries.
        status, _, _ = request(self.base, "POST", "/messages/%s/hold" % qid, form={"csrf": token},
                               cookie=cookie, headers={"Origin": "http://evil.example"})
        self.assertEqual(status, 403)
        # With the token, the operator can.
        status, _, _ = request(self.base, "POST", "/messages/%s/hold" % qid, form={"csrf": token},
                               cookie=cookie, headers={"Origin": self.base})
        self.assertEqual(status, 303)
        wait_until(lambda: "on hold" in self.gw.cli("queue", "show", qid)[1], 5, what="held")

    def test_establishment_user_gets_404_outside_its_establishment(self):
        self.start()
        qid = self.send()
        b = self.browser().login("chua", PASSWORDS["chua"])
        self.assertEqual(b.path(), "/establishments/chu-a", "an establishment user lands on its page")
        b.shot("establishment")
        nav = b.text("header nav")
        for hidden in ("Dashboard", "Route test", "Configuration", "Whitelist"):
            self.assertNotIn(hidden, nav)
        cookie = b.cookie_header()
        for path in ("/messages/%s" % qid, "/config", "/route-test", "/whitelist", "/directory",
                     "/establishments", "/establishments/chu-b"):
            status, _, _ = request(self.base, "GET", path, cookie=cookie)
            self.assertEqual(status, 404, path)
        # B.4: another establishment's message answers exactly as one that does not exist.
        missing = "0" * (len(qid) - 1) + "1"
        seen = [request(self.base, "GET", "/messages/%s" % q, cookie=cookie) for q in (qid, missing)]
        self.assertEqual(seen[0][0], seen[1][0])
        self.assertEqual(seen[0][2].replace(qid, "ID"), seen[1][2].replace(missing, "ID"))
        b.get("/messages/%s" % qid)
        self.assertNotIn(SENDER, b.driver.page_source, "nothing of another's message")
        b.get("/queue")
        self.assertEqual(b.all("a[href='/messages/%s']" % qid), [], "not in its queue")
        status, _, _ = request(self.base, "POST", "/messages/%s/retry" % qid, form={"csrf": b.csrf()},
                               cookie=cookie)
        self.assertEqual(status, 404)

    def test_two_establishments_on_one_shared_domain_see_only_their_own(self):
        """B.7: who owns a message is the establishment intake attributed it to (its sending
        server, the mailbox a recipient was routed to), never a domain guessed from an address:
        chu-a and chu-b share ght.mssante.fr, and a client may write any sender address."""
        inbound_port = free_port()

        def shape(cfg):
            cfg["establishment"][0]["domains"].append("ght.mssante.fr")
            cfg["establishment"][0]["addresses"] = ["a1@ght.mssante.fr"]
            cfg["establishment"].append({"name": "chu-b", "domains": ["chu-b.mssante.fr", "ght.mssante.fr"],
                                         "clients": ["127.0.0.22/32"], "addresses": ["b1@ght.mssante.fr"],
                                         "mailbox": "127.0.0.1:%d" % self.peer_.port})
            # Mail coming in from another operator (plain SMTP here: ownership is the point).
            cfg["listener"].append(listener("entrant", inbound_port, ["establishments", "others"]))

        self.start(shape=shape)
        self.user_add("chub", "establishment:chu-b", PASSWORDS["chub"])
        est_port = int(self.gw.config["listener"][1]["address"].rsplit(":", 1)[1])

        def send(port, sender, rcpt, source=None):
            s = smtplib.SMTP(timeout=20, source_address=(source, 0) if source else None)
            try:
                s.connect("127.0.0.1", port)
                s.ehlo("mta.example")
                s.mail(sender)
                code, text = s.rcpt(rcpt)
                self.assertEqual(code, 250, text)
                code, text = s.data(("From: <%s>\r\nTo: <%s>\r\nSubject: s\r\n\r\nb\r\n"
                                     % (sender, rcpt)).encode())
                self.assertEqual(code, 250, text)
                return queued_id(text.decode() if isinstance(text, bytes) else text)
            finally:
                s.quit()

        sent_by_a = send(est_port, "a1@ght.mssante.fr", RCPT, source="127.0.0.21")
        inbound_b = send(inbound_port, SENDER, "b1@ght.mssante.fr")
        forged_b = send(self.gw_port, "b1@ght.mssante.fr", RCPT)
        cookies = {}
        for user in ("chua", "chub"):
            status, headers, body = request(self.base, "POST", "/login",
                                            form={"username": user, "password": PASSWORDS[user]})
            self.assertEqual(status, 303, body)
            cookies[user] = headers["set-cookie"].split(";", 1)[0]
        sees = {"chua": {sent_by_a}, "chub": {inbound_b}}
        for user, own in sees.items():
            status, _, queue = request(self.base, "GET", "/queue", cookie=cookies[user])
            self.assertEqual(status, 200)
            for qid in (sent_by_a, inbound_b, forged_b):
                status, _, _ = request(self.base, "GET", "/messages/%s" % qid, cookie=cookies[user])
                mine = qid in own
                self.assertEqual(status, 200 if mine else 404, "%s on %s" % (user, qid))
                self.assertEqual(qid in queue, mine, "%s's queue page and %s" % (user, qid))
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/messages/%s" % forged_b)
        self.assertIn(forged_b, b.text(), "the operator sees a message no establishment owns")

    def test_login_rate_limit_users_file_and_logout(self):
        self.start()
        for _ in range(5):
            status, _, _ = request(self.base, "POST", "/login", form={"username": "admin", "password": "wrong"})
            self.assertEqual(status, 401)
        status, _, body = request(self.base, "POST", "/login",
                                  form={"username": "admin", "password": PASSWORDS["admin"]})
        self.assertEqual(status, 429, "even the right password waits")
        self.assertIn("Too many failed attempts", body)
        # Another user from the same address is not locked out.
        status, h, _ = request(self.base, "POST", "/login", form={"username": "audit", "password": PASSWORDS["audit"]})
        self.assertEqual(status, 303)
        cookie = h["set-cookie"]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        self.assertNotIn("Secure", cookie, "plain HTTP on loopback")
        session = cookie.split(";")[0]
        self.assertEqual(request(self.base, "GET", "/queue", cookie=session)[0], 200)
        # Removing the user ends its sessions at once.
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "remove", "audit", "--config", self.gw.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout)
        status, h, _ = request(self.base, "GET", "/queue", cookie=session)
        self.assertEqual(status, 303)
        self.assertTrue(h["location"].startswith("/login"))
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "list", "--config", self.gw.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.stdout.decode().split(), ["admin", "operator", "chua", "establishment:chu-a"])
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "add", "x", "--role", "root", "--password-stdin",
                            "--config", self.gw.config_path], input=b"0123456789\n",
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is not a role", r.stdout.decode())

    def test_https_with_its_own_certificate_sets_secure_cookies(self):
        pki = dev_pki()
        self.start(console_extra={"certificate": pki["certificate"], "private_key": pki["private_key"]})
        ctx = ssl.create_default_context(cafile=pki["trust_anchors"])
        ctx.check_hostname = False
        import http.client
        import urllib.parse
        c = http.client.HTTPSConnection("127.0.0.1", self.console_port, context=ctx, timeout=15)
        c.request("POST", "/login", body=urllib.parse.urlencode({"username": "admin", "password": PASSWORDS["admin"]}),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 303)
        cookie = r.getheader("Set-Cookie")
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)
        self.assertIn("max-age=", r.getheader("Strict-Transport-Security") or "", "HSTS over HTTPS (B.14)")
        c.close()
        # Plain HTTP to the HTTPS port gets nothing useful.
        with self.assertRaises(Exception):
            request("http://127.0.0.1:%d" % self.console_port, "GET", "/login")


class ReceiptPagesTests(ConsoleTestCase):

    def test_a_read_receipt_in_the_timeline_and_the_printable_proof(self):
        """Issue 28: an MDN for a message shows in its timeline on /track; the proof of sending
        opens from there (headless Chromium) with the message's SHA-256; an establishment's
        administrator gets 404 for a message that is not its own."""
        self.start()
        qid = self.send()
        mdn = ("From: <%s>\r\nTo: <%s>\r\nSubject: Read\r\nMessage-ID: <mdn-1@chu-exemple.mssante.fr>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=disposition-notification; "
               "boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\nDisplayed.\r\n--R\r\n"
               "Content-Type: message/disposition-notification\r\n\r\nReporting-UA: webmail.test\r\n"
               "Final-Recipient: rfc822; %s\r\nOriginal-Message-ID: <console-1@chu-exemple.mssante.fr>\r\n"
               "Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--R--\r\n" % (RCPT, SENDER, RCPT))
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.sendmail("", [RCPT], mdn.encode())  # the directory knows RCPT
        b = self.browser().login("admin", PASSWORDS["admin"])

        def shown():
            b.get("/track?id=" + qid)
            return "displayed" in b.text()
        wait_until(shown, 15, interval=0.5, what="the read receipt in the message's timeline")
        b.shot("track-receipt")
        b.click("p.proof a")
        self.assertEqual(b.h1(), "Proof of sending")
        self.assertRegex(b.text("table.proof"), r"[0-9a-f]{64}")
        self.assertIn("displayed", b.text("table.timeline"))
        self.assertNotIn("Jean Secret", b.driver.page_source)
        b.shot("proof")
        e = self.browser().login("chua", PASSWORDS["chua"])
        status, _, _ = request(self.base, "GET", "/track/%s/proof" % qid, cookie=e.cookie_header())
        self.assertEqual(status, 404, "another establishment's proof does not exist for it")


class EstablishmentPagesTests(ConsoleTestCase):

    def fill_form(self, b, name, domain, client):
        b.get("/establishments/new")
        b.fill("#name", name)
        b.fill("#domains", domain)
        b.fill("#clients", client)
        b.fill("#mailbox", "127.0.0.1:%d" % self.peer_.port)
        b.click("form.establishment button[type=submit]")

    def test_add_an_establishment_through_the_form_and_test_its_mailbox(self):
        self.start()
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/establishments")
        b.click("a[href='/establishments/new']")
        self.assertEqual(b.h1(), "Add an establishment")
        b.shot("establishment-add")
        self.fill_form(b, "chu-c", "chu-c.mssante.fr", "127.0.0.23/32")
        self.assertEqual(b.path(), "/establishments/chu-c", b.text())
        self.assertIn("is added", b.text("p.flash"))
        self.assertIn("chu-c.mssante.fr", b.text("table.kv"))
        paste = b.text("#paste")
        self.assertIn("transport_maps = hash:/etc/postfix/transport_mssante", paste)
        self.assertIn("New-SendConnector", paste)
        rc, out = self.gw.cli("establishment", "list")
        self.assertIn("chu-c", out, "the CLI sees what the form wrote")
        self.assertIn("configuration reloaded", self.gw.log())

        # Edit: a limit changed through the form, in force after the reload; a broken value
        # refused with the file left as it was.
        b.click("a[href='/establishments/chu-c/edit']")
        self.assertEqual(b.h1(), "Edit establishment chu-c")
        self.assertEqual(b.css("#mailbox").get_attribute("value"), "127.0.0.1:%d" % self.peer_.port)
        b.fill("#max_queued", "5")
        b.click("form.establishment button[type=submit]")
        self.assertEqual(b.path(), "/establishments/chu-c", b.text())
        self.assertIn("is changed", b.text("p.flash"))
        self.assertIn("queued at most: 5", b.text("table.kv"))
        rc, out = self.gw.cli("establishment", "show", "chu-c")
        self.assertIn("max_queued 5", out)
        path = os.path.join(self.tmp, "establishments.d", "chu-c.toml")
        before = open(path).read()
        b.get("/establishments/chu-c/edit")
        b.fill("#mailbox", "pas une adresse")
        b.click("form.establishment button[type=submit]")
        self.assertIn("mailbox", b.text("#problems"))
        self.assertEqual(open(path).read(), before, "a refused edit leaves the file as it was")
        b.shot("establishment-edit-refused")

        # The same validation as `establishment add`: a second claim of the domain is refused
        # and nothing is written.
        self.fill_form(b, "chu-d", "chu-a.mssante.fr", "127.0.0.24/32")
        self.assertIn("chu-a.mssante.fr", b.text("#problems"))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "establishments.d", "chu-d.toml")))
        b.shot("establishment-refused")

        # The mailbox test: down, then up.
        b.get("/establishments/chu-c")
        b.click("form[action='/establishments/chu-c/test'] button")
        self.assertIn("NOT ready", b.text("p.flash"))
        self.peer_.start()
        b.click("form[action='/establishments/chu-c/test'] button")
        self.assertIn("Mailbox ready", b.text("p.flash"))
        self.assertIn("RCPT", b.text("#mailbox-test"))
        self.assertEqual(self.peer_.count(), 0, "the test sends no message")
        b.shot("establishment")

        # Its administrator sees its page, not the list nor another's.
        e = self.browser().login("chua", PASSWORDS["chua"])
        e.get("/establishments/chu-a")
        self.assertEqual(e.h1(), "Establishment chu-a")
        status, _, _ = request(self.base, "GET", "/establishments/chu-c", cookie=e.cookie_header())
        self.assertEqual(status, 404, "another establishment's page does not exist for it")
        status, _, _ = request(self.base, "GET", "/establishments/new", cookie=e.cookie_header())
        self.assertIn(status, (403, 404))


class HostileRequestTests(ConsoleTestCase):
    """What an attack on the console tried (issue 24 B), with a plain HTTP client."""

    def plain_login(self, name):
        status, headers, body = request(self.base, "POST", "/login",
                                        form={"username": name, "password": PASSWORDS[name]})
        self.assertEqual(status, 303, body)
        return headers["set-cookie"].split(";", 1)[0]

    def test_absurd_periods_are_refused_and_mail_keeps_flowing(self):
        """B.1: `/track?to=ADDRESS&since=99999999999d` once aborted the whole gateway."""
        self.start()
        for name in ("chua", "admin"):
            cookie = self.plain_login(name)
            for path in ("/track?to=%s&since=99999999999d" % RCPT,
                         "/track?from=%s&until=99999999999d" % SENDER,
                         "/track?message_id=x&since=1969-12-31",
                         "/indicators?since=99999999999d",
                         "/indicators.csv?until=-5d"):
                status, _, body = request(self.base, "GET", path, cookie=cookie)
                self.assertEqual(status, 400, "%s %s: %s" % (name, path, body[-300:]))
            # A long but sane period is looked up as a range of days: answered.
            status, _, body = request(self.base, "GET", "/track?to=%s&since=36500d" % RCPT, cookie=cookie)
            self.assertEqual(status, 200, body[-300:])
        self.assertTrue(self.gw.running())
        self.send()  # mail still flows
        rc, out = self.gw.cli("track", "--to", RCPT, "--since", "99999999999d")
        self.assertEqual(rc, 2, out)
        self.assertIn("100 years", out)

    def test_delete_through_its_confirmation_form(self):
        """B.6: the confirmation form's POST answered 405: delete had never worked."""
        self.start()
        qid = self.send()
        self.wait_deferred(qid)
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/messages/%s/delete" % qid)
        self.assertEqual(b.h1(), "Delete a message")
        b.click("form[action='/messages/%s/delete'] button" % qid)
        wait_until(lambda: b.h1() == "Queue", 20, what="back on the queue")
        self.assertIn("%s: deleted" % qid, b.text("body"))
        rc, out = self.gw.cli("queue", "show", qid)
        self.assertNotEqual(rc, 0, out)

    def test_login_next_stays_on_this_site(self):
        """B.9: a TAB in `next=` made `/<TAB>/evil.example` a redirect to another host."""
        self.start()
        for nxt in ("/\t/evil.example", "//evil.example", "/\\evil.example"):
            status, headers, body = request(self.base, "POST", "/login",
                                            form={"username": "admin", "password": PASSWORDS["admin"],
                                                  "next": nxt})
            self.assertEqual(status, 303, body)
            self.assertEqual(headers["location"], "/", nxt)

    def test_sessions_end_when_the_password_changes_or_the_user_goes(self):
        """B.3: a password reset kept the sessions opened with the old password."""
        self.start()
        admin, audit = self.plain_login("admin"), self.plain_login("audit")
        for cookie in (admin, audit):
            self.assertEqual(request(self.base, "GET", "/queue", cookie=cookie)[0], 200)
        self.user_add("admin", "operator", "a-new-password-for-admin")
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "remove", "audit", "--config",
                            self.gw.config_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())
        for cookie in (admin, audit):
            wait_until(lambda: request(self.base, "GET", "/queue", cookie=cookie)[0] == 303, 10,
                       what="the old session ended")
            status, headers, _ = request(self.base, "GET", "/queue", cookie=cookie)
            self.assertTrue(headers["location"].startswith("/login"), headers)
        # The new password opens a new session.
        status, _, body = request(self.base, "POST", "/login",
                                  form={"username": "admin", "password": "a-new-password-for-admin"})
        self.assertEqual(status, 303, body)

    def test_parallel_wrong_logins_are_bounded(self):
        """B.2: 200 parallel wrong passwords all ran Argon2 (19 MiB each): RSS grew by GBs."""
        from concurrent.futures import ThreadPoolExecutor
        self.start()

        def rss():
            with open("/proc/%d/status" % self.gw.proc.pid) as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) // 1024

        before = rss()

        def wrong(i):
            return request(self.base, "POST", "/login",
                           form={"username": "admin", "password": "wrong-%d" % i})[0]

        with ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(wrong, range(200)))
        grown = rss() - before
        print("\n    200 parallel wrong logins: %s; RSS +%d MiB"
              % ({s: statuses.count(s) for s in set(statuses)}, grown))
        self.assertEqual(set(statuses) - {401, 429}, set(), statuses)
        self.assertLessEqual(statuses.count(401), 5, "at most PER_USER verified")
        self.assertLess(grown, 200)
        # Another user from the same address is not locked out.
        status, _, body = request(self.base, "POST", "/login",
                                  form={"username": "audit", "password": PASSWORDS["audit"]})
        self.assertEqual(status, 303, body)

    def test_actions_are_recorded_or_refused_when_the_journal_is_full(self):
        """B.12, and issue 29: with the journal's database unable to take a write (another
        process holds its lock longer than an entry waits), an operator's action cannot be
        recorded in the audit trail (which lives there): the console refuses it (503, nothing
        done), the message page too (a header read), the CLI through the admin endpoint as
        well; once the database is free the same action is done and recorded, in the trail and
        in the message's timeline."""
        self.start()
        cookie = self.plain_login("admin")
        _, _, page = request(self.base, "GET", "/queue", cookie=cookie)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        qid = self.send()
        path = os.path.join(self.gw.config["server"]["spool"], "journal.sqlite")
        holder = hold_sqlite_lock(self, path, 60)
        status, _, body = request(self.base, "POST", "/messages/%s/hold" % qid, form={"csrf": token},
                                  cookie=cookie, headers={"Origin": self.base}, timeout=40)
        self.assertEqual(status, 503, body[:500])
        self.assertIn("cannot be recorded in the audit trail", body)
        self.assertNotIn("on hold", self.gw.cli("queue", "show", qid)[1], "the refused hold was done")
        status, _, body = request(self.base, "GET", "/messages/%s" % qid, cookie=cookie, timeout=40)
        self.assertEqual(status, 503, "a header read that cannot be recorded is not shown")
        rc, out = self.gw.cli("queue", "hold", qid, timeout=60)
        self.assertEqual(rc, 1, out)
        self.assertIn("nothing was done", out)
        self.assertNotIn("on hold", self.gw.cli("queue", "show", qid)[1], "the refused CLI hold was done")
        holder.kill()
        holder.wait()
        status, _, body = request(self.base, "POST", "/messages/%s/hold" % qid, form={"csrf": token},
                                  cookie=cookie, headers={"Origin": self.base})
        self.assertEqual(status, 303, body[:500])
        self.assertIn("on hold", self.gw.cli("queue", "show", qid)[1])
        rc, out = self.gw.cli("audit", "list", "--action", "hold", "--format", "json")
        self.assertEqual([(e["user"], e["target"], e["outcome"]) for e in json.loads(out)],
                         [("admin", qid, "ok")], out)

        def recorded():
            rc, out = self.gw.cli("track", "--id", qid)
            return rc == 0 and "console:admin" in out
        wait_until(recorded, 30, what="the hold in the message's timeline")

    def test_connections_are_capped_and_slow_headers_cut(self):
        """B.14: the console had no connection cap and no header timeout."""
        self.start()
        held = []
        try:
            for _ in range(300):
                held.append(socket.create_connection(("127.0.0.1", self.console_port), timeout=5))
            closed = []

            def over_the_cap_closed():
                for s in held[256:]:
                    if s not in closed:
                        s.settimeout(0.01)
                        try:
                            if s.recv(1) == b"":
                                closed.append(s)
                        except socket.timeout:
                            pass
                        except OSError:
                            closed.append(s)
                return len(closed) >= 40
            wait_until(over_the_cap_closed, 5, what="connections over 256 closed at once")
            # A request whose headers never end is cut after 10 s.
            slow = held[0]
            slow.settimeout(20)
            slow.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            try:
                while slow.recv(4096):
                    pass
            except OSError:
                pass
            self.assertLess(time.monotonic() - t0, 15, "headers not finished within 10 s: closed")
        finally:
            for s in held:
                s.close()
        wait_until(lambda: request(self.base, "GET", "/login")[0] == 200, 20, what="the console serves again")

    def test_behind_a_tls_proxy_with_public_url(self):
        """B.14: behind a TLS-terminating proxy the browser's origin is the public address;
        every POST used to be refused. With public_url, that origin is the one accepted and
        cookies are Secure with HSTS."""
        public = "https://console.example.fr"
        self.start(console_extra={"public_url": public + "/"})
        form = {"username": "admin", "password": PASSWORDS["admin"]}
        status, _, _ = request(self.base, "POST", "/login", form=form, headers={"Origin": self.base})
        self.assertEqual(status, 403, "the console's own address is not the origin browsers use")
        status, headers, body = request(self.base, "POST", "/login", form=form,
                                        headers={"Origin": public, "Host": "console.example.fr"})
        self.assertEqual(status, 303, body)
        self.assertIn("Secure", headers["set-cookie"])
        self.assertIn("max-age=", headers.get("strict-transport-security", ""))
        rc, out = self.gw.cli("check-config")
        self.assertEqual(rc, 0, out)

    def test_secrets_are_never_shown_and_survive_an_edit(self):
        """B.10: an auditor read the directory's bind_password on /config."""
        self.start()
        self.gw.stop()
        cfg = dict(self.gw.config)
        cfg["directory"] = dict(cfg["directory"], bind_password="Sup3r-s3cret")
        self.gw.set_config(cfg)
        self.gw.start()
        self.gw.wait_log(r"console listening", timeout=10)
        for name in ("audit", "admin"):
            status, _, body = request(self.base, "GET", "/config", cookie=self.plain_login(name))
            self.assertEqual(status, 200)
            self.assertNotIn("Sup3r-s3cret", body, name)
            self.assertIn("********", body, name)
        # The operator edits another line of the redacted text: the stored secret is kept.
        b = self.browser().login("admin", PASSWORDS["admin"])
        b.get("/config")
        text = b.driver.find_element("css selector", "#config-text").get_property("value")
        self.assertNotIn("Sup3r-s3cret", text)
        b.driver.execute_script("document.querySelector('#config-text').value = arguments[0]",
                                text + "\n# edited\n")
        b.click("button[formaction='/config/apply']")
        wait_until(lambda: "# edited" in open(self.gw.config_path).read(), 20, what="applied")
        self.assertIn('bind_password = "Sup3r-s3cret"', open(self.gw.config_path).read())
