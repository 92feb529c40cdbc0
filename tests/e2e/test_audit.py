"""End-to-end tests of issue 29: the console's second factor and the administrators' audit trail.

- A user created with `console user add --totp` (and one of a role `[console] second_factor`
  lists) logs in with a code `oathtool` computes from the printed URI: over HTTP (a wrong code
  refused, the same code replayed refused) and in headless Chromium.
- Every console form, every admin endpoint action and every CLI verb that changes state is one
  audit entry: the routes are read from the console's router and the endpoint's dispatcher,
  the verbs from the CLI's own help, so a new one without an entry fails the test.
- The trail in SQLite altered, a middle entry deleted, one inserted, the tail truncated:
  `audit verify` exits 1 naming the first bad entry (the tail with `--expect-head`).
- With the trail's database unwritable, an operator's action is refused, never done
  unrecorded.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import urllib.parse

from browser import request
from harness import PASSERELLE_BIN, REPO, free_port, hold_sqlite_lock, http_get
from test_console import PASSWORDS, ConsoleTestCase

HEAD = re.compile(r"audit trail intact: (\d+) entries, head ([0-9a-f]{64})")


def oathtool(secret):
    r = subprocess.run(["oathtool", "--totp", "-b", secret], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=10)
    assert r.returncode == 0, r.stdout
    return r.stdout.decode().strip()


class AuditTestCase(ConsoleTestCase):

    def totp_user(self, name, role, password, flag=True):
        args = [PASSERELLE_BIN, "console", "user", "add", name, "--role", role, "--password-stdin",
                "--config", self.gw.config_path] + (["--totp"] if flag else [])
        r = subprocess.run(args, input=(password + "\n").encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out)
        m = re.search(r"otpauth://totp/\S+", out)
        self.assertTrue(m, out)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(m.group(0)).query)
        self.assertEqual((q["digits"], q["period"], q["algorithm"]), (["6"], ["30"], ["SHA1"]))
        return q["secret"][0]

    def entries(self, *args):
        rc, out = self.gw.cli("audit", "list", "--format", "json", *args)
        self.assertEqual(rc, 0, out)
        return json.loads(out)

    def verify(self, *args):
        return self.gw.cli("audit", "verify", *args)

    def password_step(self, user, password):
        st, h, body = request(self.base, "POST", "/login", form={"username": user, "password": password})
        self.assertEqual(st, 200, body[:500])
        m = re.search(r'name="ticket" value="([^"]+)"', body)
        self.assertTrue(m and 'name="code"' in body, body[:800])
        return m.group(1)

    def code_step(self, ticket, code):
        return request(self.base, "POST", "/login", form={"ticket": ticket, "code": code})


class SecondFactorTests(AuditTestCase):

    def test_login_with_a_code_wrong_and_replayed_codes_refused_and_each_attempt_recorded(self):
        self.start(console_extra={"second_factor": ["operator"]})
        secret = self.totp_user("dr.totp", "auditor", "second factor pw 1")
        # A user of a listed role gets a secret without asking for it.
        op_secret = self.totp_user("op2", "operator", "operator two pw", flag=False)
        self.assertNotEqual(secret, op_secret)
        # A password alone does not open a session.
        ticket = self.password_step("dr.totp", "second factor pw 1")
        st, h, body = self.code_step(ticket, "000000" if oathtool(secret) != "000000" else "111111")
        self.assertEqual(st, 401, body[:300])
        self.assertIn("Wrong code", body)
        code = oathtool(secret)
        st, h, body = self.code_step(ticket, code)
        self.assertEqual(st, 303, body[:300])
        self.assertIn("passerelle_session=", h.get("set-cookie", ""))
        # The same code again, after the password again: refused.
        ticket = self.password_step("dr.totp", "second factor pw 1")
        st, h, body = self.code_step(ticket, code)
        self.assertEqual(st, 401, body[:300])
        self.assertIn("already used", body)
        # An operator (second_factor lists the role) was enrolled when added: a code is asked.
        self.password_step("admin", PASSWORDS["admin"])
        # A reset gives a new secret: the old one's codes stop working.
        rc, out = self.gw.cli("console", "user", "totp", "dr.totp", "--reset")
        self.assertEqual(rc, 0, out)
        self.assertNotIn(secret, out)
        # Every attempt is one entry, with its outcome; no secret and no code in the trail.
        logins = [e for e in self.entries("--action", "login") if e["user"] == "dr.totp"]
        outcomes = [(e["outcome"], e["reason"]) for e in logins]
        self.assertEqual(outcomes, [
            ("ok", "password right, code asked"), ("refused", "refused: wrong code"),
            ("ok", "password and code"), ("ok", "password right, code asked"),
            ("refused", "refused: code already used")], outcomes)
        everything = json.dumps(self.entries()) + self.gw.log()
        self.assertNotIn(secret, everything)
        self.assertNotIn(op_secret, everything)

    def test_the_browser_logs_in_with_a_code(self):
        self.start()
        secret = self.totp_user("dr.browser", "operator", "browser second pw")
        b = self.browser()
        b.login("dr.browser", "browser second pw")
        self.assertEqual(b.path(), "/login")
        self.assertTrue(b.css("#code"))
        b.shot("login-code")
        b.fill("#code", oathtool(secret))
        b.click("form.login button")
        self.assertEqual(b.path(), "/")
        b.get("/audit")
        self.assertEqual(b.h1(), "Audit trail")
        b.wait_text("main", "dr.browser")
        b.shot("audit")
        self.assertIn("password and code", b.text("main"))
        # An operator enrols a new user in the console: its secret shown once, as a QR code
        # drawn by the server and its URI; the new user logs in with a code from it.
        b.get("/users")
        b.fill("#name", "dr.new")
        b.fill("#role", "auditor")
        b.fill("#password", "new user password 1")
        b.css("input[name=totp]").click()
        b.click("form.add button")
        self.assertEqual(b.h1(), "Second factor for dr.new")
        self.assertTrue(b.css("div.qr svg"), "the QR code")
        b.shot("enrolment")
        uri = b.text("code.uri")
        new_secret = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]
        rc, out = self.gw.cli("console", "user", "list")
        self.assertIn("dr.new", out)
        b2 = self.browser()
        b2.login("dr.new", "new user password 1")
        b2.fill("#code", oathtool(new_secret))
        b2.click("form.login button")
        self.assertEqual(b2.path(), "/")
        self.assertNotIn(new_secret, self.gw.log())
        adds = [e for e in self.entries("--action", "console user add") if e["target"] == "dr.new"]
        self.assertEqual([(e["via"], e["user"], e["outcome"]) for e in adds], [("console", "dr.browser", "ok")])


class TrailTests(AuditTestCase):

    def test_altered_removed_inserted_and_truncated_entries_are_found(self):
        self.start()
        for i in range(4):
            st, _, _ = request(self.base, "POST", "/login", form={"username": "admin", "password": "wrong %d" % i})
            self.assertEqual(st, 401)
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)
        n, head = HEAD.search(out).groups()
        self.assertGreaterEqual(int(n), 7)   # 3 users added, 4 refused logins
        # The head is outside the database too: the service log and /readyz.
        self.gw.wait_log(r"audit entry.*head=%s" % head, 10)
        _, body = http_get(*self.gw.admin, "/readyz")
        self.assertRegex(body.decode(), r"audit: \d+ entries, head [0-9a-f]{64}")
        path = os.path.join(self.gw.config["server"]["spool"], "journal.sqlite")
        self.gw.stop()
        pristine = path + ".pristine"
        shutil.copy(path, pristine)

        def tampered(sql, *params):
            shutil.copy(pristine, path)
            for f in (path + "-wal", path + "-shm"):
                if os.path.exists(f):
                    os.remove(f)
            c = sqlite3.connect(path)
            c.execute(sql, params)
            c.commit()
            c.close()
            return self.verify()

        rc, out = tampered("UPDATE audit SET target = 'someone-else' WHERE seq = 5")
        self.assertEqual((rc, out.strip()), (1, "audit trail broken: entry 5 does not match its hash: it was altered, or inserted"))
        rc, out = tampered("DELETE FROM audit WHERE seq = 4")
        self.assertEqual(rc, 1, out)
        self.assertIn("entry 4 was removed (entry 5 follows entry 3)", out)
        # Inserted: the later entries renumbered and a forged one put at 3.
        shutil.copy(pristine, path)
        c = sqlite3.connect(path)
        c.execute("UPDATE audit SET seq = seq + 1000 WHERE seq >= 3")
        c.execute("UPDATE audit SET seq = seq - 999 WHERE seq >= 1000")
        cols = [r[1] for r in c.execute("PRAGMA table_info(audit)")]
        row = dict(zip(cols, c.execute("SELECT * FROM audit WHERE seq = 2").fetchone()))
        row.update(seq=3, action="queue delete", target="000000000000", prev=row["hash"], hash="ab" * 32)
        c.execute("INSERT INTO audit (%s) VALUES (%s)" % (", ".join(row), ", ".join("?" * len(row))), list(row.values()))
        c.commit()
        c.close()
        rc, out = self.verify()
        self.assertEqual(rc, 1, out)
        self.assertIn("entry 3 does not match its hash", out)
        # The tail cut: intact in itself, found against the head noted earlier.
        rc, out = tampered("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
        self.assertEqual(rc, 0, out)
        rc, out = self.verify("--expect-head", head)
        self.assertEqual(rc, 1, out)
        self.assertIn("the head noted earlier (%s) is not in the trail" % head, out)
        shutil.copy(pristine, path)
        rc, out = self.verify("--expect-head", head)
        self.assertEqual(rc, 0, out)
        rc, out = self.verify("--expect-head", "not-a-hash")
        self.assertEqual(rc, 2, out)

    def test_an_action_that_cannot_be_recorded_is_refused(self):
        """The trail's database read-only under an operator: the CLI verb and the console's
        form are refused, and nothing is done."""
        self.start()
        path = os.path.join(self.gw.config["server"]["spool"], "journal.sqlite")
        rc, out = self.gw.cli("audit", "verify")
        before = HEAD.search(out).group(1)
        # Another process holds the database's write lock for longer than an entry waits.
        holder = hold_sqlite_lock(self, path, 40)
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "add", "late", "--role", "auditor",
                            "--password-stdin", "--config", self.gw.config_path],
                           input=b"late user password\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(b"refused", r.stdout)
        holder.kill()
        holder.wait()
        rc, out = self.gw.cli("console", "user", "list")
        self.assertNotIn("late", out, "the refused verb was done")
        rc, out = self.gw.cli("audit", "verify")
        self.assertEqual(HEAD.search(out).group(1), before, "an entry was written for a refused verb")


def cli_leaves(prefix=()):
    """Every leaf verb of the CLI, from its own help (`passerelle [verb...] --help`)."""
    r = subprocess.run([PASSERELLE_BIN] + list(prefix) + ["--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    text = r.stdout.decode()
    if "Commands:" not in text:
        return [" ".join(prefix)]
    block = text.split("Commands:", 1)[1].split("\n\n", 1)[0]
    names = [l.split()[0] for l in block.splitlines() if l.strip() and l.startswith("  ") and not l.startswith("   ")]
    out = []
    for n in names:
        if n == "help":
            continue
        out += cli_leaves(tuple(prefix) + (n,))
    return out


def console_routes():
    """(method, path) of every route of the console's router, read from its source."""
    src = open(os.path.join(REPO, "src", "console", "mod.rs")).read()
    body = src.split("pub fn router(", 1)[1].split("\n}\n", 1)[0]
    routes = []
    for path, handlers in re.findall(r'\.route\(\s*"([^"]+)",\s*(.*?)\)\s*(?=\.route|\.fallback)', body, re.S):
        for m in ("get", "post"):
            if re.search(r"\b%s\(" % m, handlers):
                routes.append((m.upper(), path))
    return routes


def admin_routes():
    """(method, pattern) of the admin endpoint's dispatcher arms, read from its source."""
    src = open(os.path.join(REPO, "src", "admin", "mod.rs")).read()
    body = src.split("async fn serve_inner(", 1)[1].split("\n#[cfg(test)]", 1)[0]
    return sorted(set(re.findall(r'\("(GET|POST)", (\[[^\]]*\]|"[^"]*")\)', body)))


# What each CLI verb is: recorded (with arguments that run it here) or only reading/making files.
CLI_AUDITED = {
    "fetch": ["fetch", "--missing"],
    "establishment add": ["establishment", "add", "chu-new", "--domain", "chu-new.mssante.fr",
                          "--clients", "127.0.0.77/32", "--mailbox", "127.0.0.1:2"],
    "establishment remove": ["establishment", "remove", "chu-new"],
    "console user add": None,          # with the password on stdin, below
    "console user remove": ["console", "user", "remove", "late"],
    "console user totp": ["console", "user", "totp", "audit", "--reset"],
    "state import": ["state", "import"],
    "state export": ["state", "export", "/nonexistent/export"],
    "directory sync": ["directory", "sync", "--file", "/nonexistent/extract.txt", "--ldap", "ldap://127.0.0.1:1",
                       "--base", "ou=x,dc=test"],
    "queue retry": ["queue", "retry", "QID"],
    "queue hold": ["queue", "hold", "QID"],
    "queue release": ["queue", "release", "QID"],
    "queue delete": ["queue", "delete", "QID"],
}
CLI_READS = {
    "serve": None, "check-config": ["check-config"], "tls probe": None, "pki dev": None,
    "pki issue": None, "pki csr": None, "pki revoke": None,   # files at paths given, for tests
    "route test": ["route", "test", "dr.x@chu-exemple.mssante.fr"], "queue list": ["queue", "list"],
    "queue show": ["queue", "show", "QID"], "whitelist show": ["whitelist", "show", "x.mssante.fr"],
    "directory lookup": ["directory", "lookup", "dr.martin@chu-exemple.mssante.fr"],
    "directory import": None,          # writes an LDIF file where told
    "establishment list": ["establishment", "list"], "establishment show": ["establishment", "show", "chu-a"],
    "establishment test": None, "track": ["track", "--since", "1h"], "stats": ["stats", "--by", "day"],
    "console user list": ["console", "user", "list"], "state status": ["state", "status"],
    "audit list": ["audit", "list"], "audit verify": ["audit", "verify"],
}


class EveryActionTests(AuditTestCase):

    def count(self):
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)
        return int(HEAD.search(out).group(1))

    def one_entry(self, what, act):
        before = self.count()
        act()
        after = self.count()
        self.assertEqual(after - before, 1, "%s wrote %d audit entries" % (what, after - before))

    def test_every_console_form_admin_action_and_cli_verb_is_one_entry(self):
        self.start()
        qid = self.send()
        self.wait_deferred(qid)
        # --- the CLI: every verb classified; those that change state write one entry each.
        leaves = set(cli_leaves())
        unknown = leaves - set(CLI_AUDITED) - set(CLI_READS)
        self.assertFalse(unknown, "CLI verbs neither audited nor known to only read: %s" % sorted(unknown))
        self.assertFalse((set(CLI_AUDITED) | set(CLI_READS)) - leaves, "verbs listed here are gone")
        for verb, args in CLI_READS.items():
            if args:
                before = self.count()
                self.gw.cli(*[qid if a == "QID" else a for a in args])
                self.assertEqual(self.count(), before, "%s wrote an audit entry" % verb)

        def add_user():
            r = subprocess.run([PASSERELLE_BIN, "console", "user", "add", "late", "--role", "auditor",
                                "--password-stdin", "--config", self.gw.config_path],
                               input=b"late user password\n", stdout=subprocess.PIPE, timeout=30)
            self.assertEqual(r.returncode, 0)
        order = ["console user add"] + [v for v in CLI_AUDITED if v not in ("console user add", "queue delete")] \
            + ["queue delete"]
        for verb in order:
            args = CLI_AUDITED[verb]
            act = add_user if args is None else (lambda a=args: self.gw.cli(*[qid if x == "QID" else x for x in a]))
            self.one_entry(verb, act)
        entries = self.entries()
        self.assertEqual(entries[-1]["action"], "queue delete")
        self.assertEqual((entries[-1]["via"], entries[-1]["target"]), ("admin", qid))
        # --- the admin endpoint: every arm of its dispatcher.
        arms = admin_routes()
        expected = {("GET", '"/healthz"'), ("GET", '"/readyz"'), ("GET", '"/metrics"'), ("POST", '"/reload"'),
                    ("GET", '[id, what @ ("headers" | "message")]'),
                    ("POST", '[_, "retry" | "hold" | "release" | "delete"]'), ("GET", '[""]'), ("GET", "[id]"),
                    ("POST", '["retry-all"]'), ("POST", '[id, "retry"]'), ("POST", '[id, "hold"]'),
                    ("POST", '[id, "release"]'), ("POST", '[id, "delete"]')}
        self.assertEqual(set(arms), expected, "the admin endpoint changed: classify its new routes here")
        qid = self.send()
        token = open(os.path.join(self.gw.config["server"]["spool"], "admin.token")).read().strip()
        base = "http://%s:%d" % self.gw.admin

        def admin(method, path):
            return lambda: request(base, method, path, headers={"X-Passerelle-Token": token})
        for method, path in [("POST", "/reload"), ("POST", "/queue/retry-all"), ("GET", "/queue/%s/headers" % qid),
                             ("GET", "/queue/%s/message" % qid)] + \
                [("POST", "/queue/%s/%s" % (qid, v)) for v in ("retry", "hold", "release", "delete")]:
            self.one_entry("%s %s (admin)" % (method, path), admin(method, path))
        for method, path in [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/queue")]:
            before = self.count()
            admin(method, path)()
            self.assertEqual(self.count(), before, "%s %s wrote an entry" % (method, path))
        # --- the console: every form, and the message page (a header read).
        qid = self.send()
        b = self.browser()
        b.login("admin", PASSWORDS["admin"])
        cookie, csrf = b.cookie_header(), None
        b.get("/queue")
        csrf = b.csrf()
        values = {"id": qid, "name": "chu-a", "action": "hold"}
        routes = console_routes()
        self.assertIn(("POST", "/config/apply"), routes)
        posts = [p for m, p in routes if m == "POST"]
        posts.sort(key=lambda p: (p in ("/logout",), "delete" in p))
        for path in posts:
            concrete = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
            form = {"csrf": csrf}
            if path == "/login":
                form = {"username": "audit", "password": PASSWORDS["audit"]}
            self.one_entry("POST " + path, lambda: request(self.base, "POST", concrete, form=form, cookie=cookie))
        reads = [p for m, p in routes if m == "GET" and p == "/messages/{id}"]
        self.assertEqual(reads, ["/messages/{id}"])
        qid2 = self.send()
        b2 = self.browser()
        b2.login("admin", PASSWORDS["admin"])
        self.one_entry("GET /messages/ID", lambda: b2.get("/messages/%s" % qid2))
        for path in [p for m, p in routes if m == "GET" and "{" not in p and p != "/login"]:
            before = self.count()
            request(self.base, "GET", path, cookie=b2.cookie_header())
            self.assertEqual(self.count(), before, "GET %s wrote an entry" % path)


class AuditPageTests(AuditTestCase):

    def test_the_audit_pages_refuse_bad_filters_with_400(self):
        """Every filter of /audit and /audit.csv is bounded: a bad one is a 400 saying which,
        never a panic or an unbounded query; good ones still answer."""
        self.start()
        st, h, body = request(self.base, "POST", "/login",
                              form={"username": "admin", "password": PASSWORDS["admin"]})
        self.assertEqual(st, 303, body[:300])
        cookie = h.get("set-cookie", "").split(";")[0]
        self.assertIn("passerelle_session=", cookie)
        bad = {"page=0": "page", "page=x": "page", "page=1000001": "page",
               "since=not-a-time": "since", "until=2026-13-45T99:00:00Z": "until",
               "user=" + "u" * 201: "user", "action=" + "a" * 201: "action"}
        for path in ("/audit", "/audit.csv"):
            for q, name in bad.items():
                st, _, body = request(self.base, "GET", "%s?%s" % (path, q), cookie=cookie)
                self.assertEqual(st, 400, (path, q, body[:300]))
                self.assertIn(name, body)
            st, _, body = request(self.base, "GET", path + "?page=2&user=admin&since=1h", cookie=cookie)
            self.assertEqual(st, 200, (path, body[:300]))
        self.assertTrue(self.gw.running())


class PostgresTrailTests(AuditTestCase):

    def test_two_gateways_one_chain_and_an_entry_altered_with_psql(self):
        """The journal in PostgreSQL, two gateways: their entries make one chain (appends
        serialized between them); an entry changed with psql is found."""
        pg = self.postgres()
        url = pg.createdb("passerelle")

        def journal(cfg):
            cfg["journal"] = {"kind": "postgres", "url": url, "gateway": "gw-a"}
        self.start(shape=journal)
        other = dict(self.gw.config)
        other["journal"] = {"kind": "postgres", "url": url, "gateway": "gw-b"}
        other["server"] = dict(other["server"], spool=os.path.join(self.tmp, "gw-b-spool"),
                               admin="127.0.0.1:%d" % free_port())
        other["console"] = dict(other["console"], address="127.0.0.1:%d" % free_port())
        other["listener"] = [dict(l, address="127.0.0.1:%d" % free_port())
                             for l in other["listener"]]
        gw_b = self.gateway(other, name="gw-b")
        b_console = "http://%s" % other["console"]["address"]
        # Wrong passwords on both consoles at once: each one entry, one chain.
        def tries(base):
            for i in range(5):
                request(base, "POST", "/login", form={"username": "admin", "password": "wrong %d" % i})
        ts = [threading.Thread(target=tries, args=(b,)) for b in (self.base, b_console)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        rc, out = gw_b.cli("audit", "verify")
        self.assertEqual(rc, 0, out)
        n = int(HEAD.search(out).group(1))
        self.assertEqual(n, 3 + 10, out)   # 3 users added, 10 refused logins
        gateways = {e["gateway"] for e in self.entries()}
        self.assertEqual(gateways, {"gw-a", "gw-b"})
        pg.psql("UPDATE audit SET outcome = 'ok', reason = NULL WHERE seq = 6", db="passerelle")
        rc, out = self.gw.cli("audit", "verify")
        self.assertEqual((rc, out.strip()), (1, "audit trail broken: entry 6 does not match its hash: it was altered, or inserted"))
