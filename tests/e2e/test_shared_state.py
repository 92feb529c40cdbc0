"""End-to-end tests of issue 27: a region on several gateways sharing one state in PostgreSQL.

    Postfix "chu-c" (127.0.0.23) --relayhost: gw-b, gw-a--> passerelle gw-a --\\
    Postfix "chu-a" (127.0.0.21) --relayhost: gw-a, gw-b--> passerelle gw-b ----> "op" (the
                                                                               trust space)
    both gateways: [state] kind = "postgres" and [journal] kind = "postgres" on one private
    PostgreSQL (started as the `postgres` user), each with its console.

- an establishment added through gw-a's console (headless Chromium) sends through gw-b within
  2 s; removed with gw-b's CLI, it is refused on gw-a within 2 s; each gateway logs the change;
- a console session opened on gw-a works on gw-b; logging out on gw-b ends it on gw-a;
- PostgreSQL stopped under traffic: mail of every known establishment flows, nothing lost,
  writes refused with the reason, /readyz and the console say since when; gw-b restarted
  meanwhile still knows every establishment; PostgreSQL back: a change is applied on both,
  and every message sent during the outage is found by `track`;
- two operators editing one establishment at once: one wins, the other is told.
"""

import os
import re
import subprocess
import time
import urllib.parse

from browser import Browser, request
from harness import (PASSERELLE_BIN, E2ETestCase, banner_of, free_port, gateway_config, listener,
                     relay_transport, swaks, wait_until)

IP = {"chu-a": "127.0.0.21", "chu-c": "127.0.0.23", "chu-d": "127.0.0.24"}
PASSWORD = "operator password 1"
OP_RCPT = "dr.y@autre.mssante.fr"


def login(base, user=None, password=PASSWORD):
    """A console session (its cookie header) opened with a plain POST /login."""
    status, headers, body = request(base, "POST", "/login",
                                    form={"username": user or "admin", "password": password, "next": "/"})
    if status not in (302, 303):
        return None, status, body
    cookie = headers.get("set-cookie", "").split(";")[0]
    return cookie, status, body


def form_fields(page):
    """The hidden and text inputs of the first form with a csrf token, as a dict."""
    fields = {}
    for m in re.finditer(r'<input([^>]*)>', page):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if "name" in attrs:
            fields[attrs["name"]] = attrs.get("value", "")
    for m in re.finditer(r'<textarea[^>]*name="(\w+)"[^>]*>([^<]*)</textarea>', page):
        fields[m.group(1)] = m.group(2)
    for m in re.finditer(r'<select[^>]*name="(\w+)"[^>]*>(.*?)</select>', page, re.S):
        sel = re.search(r'<option value="([^"]*)" selected', m.group(2))
        fields[m.group(1)] = sel.group(1) if sel else ""
    return {k: v.replace("&#x27;", "'").replace("&quot;", '"').replace("&amp;", "&")
            for k, v in fields.items()}


class SharedStateTest(E2ETestCase):

    def setUp(self):
        super().setUp()
        self.pg = self.postgres()
        self.url = self.pg.createdb("passerelle")
        self.op = self.peer("op")
        self.box = self.peer("box")
        self.gws = {}
        self.est_port, self.console_port = {}, {}
        for name in ("gw-a", "gw-b"):
            self.est_port[name], self.console_port[name] = free_port(), free_port()
            cfg = gateway_config(
                self.tmp,
                listeners=[listener("etablissements", self.est_port[name],
                                    ["establishments", "mssante", "others"], clients=(), establishments=True)],
                routes=[{"name": "mssante", "domains": ["*.mssante.fr"], "transport": "op"},
                        {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"}],
                transports={"op": relay_transport(self.op.port)},
                name=name,
                state={"kind": "postgres", "url": self.url},
                journal={"kind": "postgres", "url": self.url, "gateway": name, "buffer": 50,
                         "flush_interval": "1s"},
                console={"address": "127.0.0.1:%d" % self.console_port[name],
                         "users_file": os.path.join(self.tmp, name, "users-unused.toml")},
            )
            self.gws[name] = self.gateway(cfg, name=name, start=False)
        self.a, self.b = self.gws["gw-a"], self.gws["gw-b"]
        rc, out = self.user_add(self.a, "admin", "operator", PASSWORD)
        self.assertEqual(rc, 0, out)
        self.assertIn("shared state: user admin (operator) added", out)
        for g in self.gws.values():
            g.start()
            g.wait_log(r"console listening", timeout=10)

    def base(self, name):
        return "http://127.0.0.1:%d" % self.console_port[name]

    def user_add(self, gw, name, role, password):
        r = subprocess.run([PASSERELLE_BIN, "console", "user", "add", name, "--role", role, "--password-stdin",
                            "--config", gw.config_path], input=(password + "\n").encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return r.returncode, r.stdout.decode()

    def add_cli(self, gw, name, domain):
        return gw.cli("establishment", "add", name, "--domain", domain, "--clients", IP[name] + "/32",
                      "--mailbox", "127.0.0.1:%d" % self.box.port, "--mailbox-tls", "none")

    def mta(self, name, domain, first, second):
        """A real Postfix for `name` listing both gateways (the second used when the first
        refuses or is away)."""
        hosts = "[127.0.0.1]:%d, [127.0.0.1]:%d" % (self.est_port[first], self.est_port[second])
        return self.postfix(name, mydomain=domain, relayhost=hosts,
                            extra_main_cf={"smtp_bind_address": IP[name]})

    def send_through(self, pf, domain, n=1, tag="x"):
        for i in range(n):
            rc, out = swaks("--server", pf.host, "--port", pf.port, "--from", "dr.x@" + domain,
                            "--to", OP_RCPT, "--header", "Subject: %s %d" % (tag, i))
            self.assertEqual(rc, 0, out)

    def accepted_from(self, name, gw):
        return banner_of(IP[name], self.est_port[gw]).startswith("220")

    # ------------------------------------------------------------------ changes everywhere

    def test_a_change_on_one_gateway_is_in_force_on_the_other_within_two_seconds(self):
        self.assertFalse(self.accepted_from("chu-c", "gw-b"), "unknown at first")
        b = Browser(self.base("gw-a"))
        self.addCleanup(b.quit)
        b.login("admin", PASSWORD)
        b.get("/establishments/new")
        b.fill("#name", "chu-c")
        b.fill("#domains", "chu-c.mssante.fr")
        b.fill("#clients", IP["chu-c"] + "/32")
        b.fill("#mailbox", "127.0.0.1:%d" % self.box.port)
        b.css("#mailbox_tls").send_keys("none")
        b.click("form.establishment button[type=submit]")
        written = time.monotonic()
        self.assertEqual(b.path(), "/establishments/chu-c", b.text())
        self.assertIn("shared state version", b.text("p.flash"))
        wait_until(lambda: self.accepted_from("chu-c", "gw-b"), 2.0, interval=0.05,
                   what="chu-c accepted by gw-b within 2 s of the console's write on gw-a")
        took = time.monotonic() - written
        self.assertLess(took, 2.0)
        for g in (self.a, self.b):
            g.wait_log(r"state: version \d+ applied: establishment chu-c added by console:admin on gw-a")

        # A real Postfix of chu-c, gw-b listed first: its mail goes out through gw-b.
        pf = self.mta("chu-c", "chu-c.mssante.fr", "gw-b", "gw-a")
        self.send_through(pf, "chu-c.mssante.fr")
        self.op.wait_messages(1, timeout=30)
        wait_until(lambda: "gw-b" in self.b.cli("track", "--to", OP_RCPT, "--format", "json")[1], 10,
                   what="the message tracked as relayed by gw-b")

        # Removed with gw-b's CLI: refused on gw-a within 2 s.
        rc, out = self.b.cli("establishment", "remove", "chu-c")
        self.assertEqual(rc, 0, out)
        removed = time.monotonic()
        wait_until(lambda: banner_of(IP["chu-c"], self.est_port["gw-a"]).startswith("554"), 2.0,
                   interval=0.05, what="chu-c refused by gw-a within 2 s of its removal on gw-b")
        self.assertLess(time.monotonic() - removed, 2.0)
        self.a.wait_log(r"state: version \d+ applied: establishment chu-c removed by cli:")

    def test_a_session_opened_on_one_gateway_works_on_the_other_and_ends_everywhere(self):
        cookie, status, body = login(self.base("gw-a"))
        self.assertTrue(cookie, (status, body))
        status, _, page = request(self.base("gw-b"), "GET", "/establishments", cookie=cookie)
        self.assertEqual(status, 200, "the session of gw-a is valid on gw-b")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        self.assertEqual(self.pg.psql("SELECT count(*) FROM state_sessions"), "1")
        self.assertNotIn(cookie.split("=", 1)[1], self.pg.psql("SELECT encode(id_hash, 'hex') FROM state_sessions"),
                         "the session id is stored hashed, never in clear")
        status, _, _ = request(self.base("gw-b"), "POST", "/logout", form={"csrf": csrf}, cookie=cookie)
        self.assertIn(status, (302, 303))
        status, headers, _ = request(self.base("gw-a"), "GET", "/establishments", cookie=cookie)
        self.assertIn(status, (302, 303), "logged out on gw-b: the session ends on gw-a too")
        self.assertIn("/login", headers.get("location", ""))

    # ------------------------------------------------------------------ faults

    def test_database_stopped_under_traffic_then_back(self):
        rc, out = self.add_cli(self.a, "chu-a", "chu-a.mssante.fr")
        self.assertEqual(rc, 0, out)
        self.assertIn("written to the shared state", out)
        for g in ("gw-a", "gw-b"):
            wait_until(lambda g=g: self.accepted_from("chu-a", g), 5, what="chu-a known on " + g)
        cookie, _, _ = login(self.base("gw-a"))
        self.assertTrue(cookie)
        pf = self.mta("chu-a", "chu-a.mssante.fr", "gw-a", "gw-b")
        self.send_through(pf, "chu-a.mssante.fr", 5, tag="before")
        self.op.wait_messages(5, timeout=30)

        self.pg.stop()
        stopped = time.time()
        self.send_through(pf, "chu-a.mssante.fr", 60, tag="outage")
        # Writes refused, with the reason; nothing changed. The audit trail lives in the same
        # database (the journal's): the verb is refused before it starts (issue 29).
        rc, out = self.add_cli(self.a, "chu-d", "chu-d.mssante.fr")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"the audit trail cannot be written: .*Connection refused.*; nothing was done")

        def readyz(gw):
            import http.client
            c = http.client.HTTPConnection(*gw.admin, timeout=10)
            c.request("GET", "/readyz")
            r = c.getresponse()
            return r.status, r.read().decode()
        wait_until(lambda: "database unreachable since" in readyz(self.b)[1], 5,
                   what="gw-b's /readyz says the state's database is unreachable")
        self.assertEqual(readyz(self.b)[0], 200, "still ready: mail flows")
        status, _, page = request(self.base("gw-a"), "GET", "/establishments", cookie=cookie)
        self.assertEqual(status, 200, "a session already open keeps working")
        self.assertIn("Read-only", page)
        status, _, page = request(self.base("gw-a"), "POST", "/login",
                                  form={"username": "admin", "password": PASSWORD, "next": "/"})
        self.assertEqual(status, 503, "a new login cannot be shared, nor recorded: refused with the reason")
        self.assertRegex(page, r"unreachable|cannot be recorded in the audit trail")

        # gw-b restarted while the database is away: it starts on its local copy.
        self.b.restart()
        self.assertTrue(self.accepted_from("chu-a", "gw-b"), "gw-b still knows chu-a after a restart")
        self.b.wait_log(r"starting on the local copy, version \d+")
        self.send_through(pf, "chu-a.mssante.fr", 20, tag="after-restart")
        self.op.wait_messages(85, timeout=60)

        # The database back: a change made now is applied on both gateways.
        self.pg.start()
        wait_until(lambda: self.add_cli(self.a, "chu-d", "chu-d.mssante.fr")[0] == 0, 10,
                   what="chu-d added once the database is back")
        for g in ("gw-a", "gw-b"):
            wait_until(lambda g=g: self.accepted_from("chu-d", g), 3, what="chu-d in force on " + g)
        self.assertNotIn("Read-only", request(self.base("gw-a"), "GET", "/establishments", cookie=cookie)[2])

        # Nothing lost: every message is delivered, and the journal has each of them.
        self.assertEqual(self.op.count(), 85)

        def tracked():
            rc, out = self.a.cli("track", "--to", OP_RCPT, "--format", "json", "--limit", "1000")
            return rc == 0 and out.count('"status": "delivered"') >= 85
        wait_until(tracked, 30, what="the 85 messages in the journal, those of the outage included")
        self.assertGreater(time.time() - stopped, 1)

    def test_two_concurrent_edits_one_wins_the_other_is_told(self):
        rc, out = self.add_cli(self.a, "chu-a", "chu-a.mssante.fr")
        self.assertEqual(rc, 0, out)
        pages = {}
        for g in ("gw-a", "gw-b"):
            wait_until(lambda g=g: self.accepted_from("chu-a", g), 5, what="chu-a known on " + g)
            cookie, _, _ = login(self.base(g))
            status, _, page = request(self.base(g), "GET", "/establishments/chu-a/edit", cookie=cookie)
            self.assertEqual(status, 200, page)
            pages[g] = (cookie, form_fields(page))
        results = {}
        for g, queued in (("gw-a", "5"), ("gw-b", "7")):
            cookie, fields = pages[g]
            fields = dict(fields, max_queued=queued)
            status, headers, body = request(self.base(g), "POST", "/establishments/chu-a/edit",
                                            form=fields, cookie=cookie)
            results[g] = (status, body)
        self.assertIn(results["gw-a"][0], (302, 303), results["gw-a"][1][-2000:])
        self.assertEqual(results["gw-b"][0], 200)
        self.assertIn("changed by someone else since you opened it", results["gw-b"][1])
        text = self.pg.psql("SELECT toml FROM state_establishments WHERE name = 'chu-a'")
        self.assertIn("max_queued = 5", text, "the first edit stands, never silently overwritten")

        # The list is searchable and paginated; a bad page or an oversized search is a 400.
        cookie = pages["gw-b"][0]
        status, _, page = request(self.base("gw-b"), "GET", "/establishments?q=CHU-A.mssante", cookie=cookie)
        self.assertEqual(status, 200)
        self.assertIn("1 of 1 establishment(s)", page)
        status, _, page = request(self.base("gw-b"), "GET", "/establishments?q=nothing-like-it", cookie=cookie)
        self.assertIn("No establishment matches", page)
        for query in ("page=abc", "page=0", "q=" + "x" * 201):
            status, _, _ = request(self.base("gw-b"), "GET", "/establishments?" + query, cookie=cookie)
            self.assertEqual(status, 400, query)

    def test_a_change_this_gateway_refuses_is_taken_back_out_of_its_copy(self):
        """gw-b declares in its own main file an establishment with chu-c's domain: gw-a accepts
        chu-c, gw-b's reload refuses it, logs why, keeps running on what it had, and its local
        copy does not keep the refused file (a restart starts on what ran)."""
        self.b.stop()
        cfg = dict(self.b.config)
        cfg["establishment"] = [{"name": "local-x", "domains": ["chu-c.mssante.fr"], "clients": ["127.0.0.40/32"],
                                 "mailbox": "127.0.0.1:%d" % self.box.port, "mailbox_tls": "none"}]
        self.b.set_config(cfg)
        self.b.start()
        rc, out = self.add_cli(self.a, "chu-c", "chu-c.mssante.fr")
        self.assertEqual(rc, 0, out)
        wait_until(lambda: self.accepted_from("chu-c", "gw-a"), 3, what="chu-c in force on gw-a")
        self.b.wait_log(r"state: version \d+ \(establishment chu-c added by cli:[^)]*\) NOT applied")
        copy = os.path.join(self.b.config["server"]["spool"], "state", "establishments.d")
        wait_until(lambda: not os.path.exists(os.path.join(copy, "chu-c.toml")), 3,
                   what="the refused file taken back out of gw-b's local copy")
        self.assertFalse(self.accepted_from("chu-c", "gw-b"))
        # Restarted, it checks the database's state against its own configuration before
        # taking it, and starts on its copy.
        self.b.restart()
        self.b.wait_log(r"does not validate with this gateway's configuration")
        self.assertFalse(self.accepted_from("chu-c", "gw-b"))

    def test_state_import_export_and_status(self):
        est = os.path.join(self.tmp, "import", "establishments.d")
        os.makedirs(est)
        with open(os.path.join(est, "chu-a.toml"), "w") as f:
            f.write('[establishment]\nname = "chu-a"\ndomains = ["chu-a.mssante.fr"]\nclients = ["%s/32"]\n'
                    'mailbox = "127.0.0.1:%d"\nmailbox_tls = "none"\n' % (IP["chu-a"], self.box.port))
        cfg = dict(self.a.config)
        cfg["server"] = dict(cfg["server"], establishments_dir=est)
        from harness import toml_dumps
        path = os.path.join(self.tmp, "import.toml")
        with open(path, "w") as f:
            f.write(toml_dumps(cfg))

        def cli(*args):
            r = subprocess.run([PASSERELLE_BIN] + list(args) + ["--config", path], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30, stdin=subprocess.DEVNULL)
            return r.returncode, r.stdout.decode()
        rc, out = cli("state", "import")
        self.assertEqual(rc, 0, out)
        self.assertIn("imported 1 establishments, 0 users (1 and 0 changed", out)
        rc, out = cli("state", "import")
        self.assertIn("(0 and 0 changed", out, "idempotent")
        for g in ("gw-a", "gw-b"):
            wait_until(lambda g=g: self.accepted_from("chu-a", g), 3, what="imported chu-a on " + g)
        out_dir = os.path.join(self.tmp, "export")
        rc, out = cli("state", "export", out_dir)
        self.assertEqual(rc, 0, out)
        with open(os.path.join(out_dir, "establishments.d", "chu-a.toml")) as f:
            self.assertEqual(f.read(), open(os.path.join(est, "chu-a.toml")).read())
        self.assertIn("admin", open(os.path.join(out_dir, "users.toml")).read())
        self.assertEqual(os.stat(os.path.join(out_dir, "users.toml")).st_mode & 0o777, 0o600)
        rc, out = self.b.cli("state", "status")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"here: version \d+ applied")
        self.assertIn("database: reachable", out)
        self.assertNotIn("password", out)
        self.pg.stop()
        rc, out = self.b.cli("state", "status")
        self.assertEqual(rc, 1, out)
        self.assertIn("unreachable", out)
