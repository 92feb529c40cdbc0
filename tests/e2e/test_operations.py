"""End-to-end tests of issue 5: operating the gateway like Postfix.

- `passerelle queue list|show|retry|hold|release|delete` against a running server (through
  the admin endpoint) and against a stopped one (on the spool directly);
- the admin endpoint: /healthz, /readyz, /metrics, and the queue routes refusing a client
  without the token;
- SIGHUP reload under traffic: no session dropped, no message lost; a broken config refused
  with check-config's words while the old one keeps serving; listeners added and removed;
- check-config: file:line, unknown keys, exit codes.
"""

import os
import re
import signal
import smtplib
import threading
import time
import urllib.error
import urllib.request

from harness import E2ETestCase, free_port, gateway_config, listener, relay_transport, smtp_session, toml_dumps

SENDER = "sender@chu-test.mssante.fr"
RCPT = "dr.ops@autre.mssante.fr"


def write_toml(path, cfg):
    with open(path, "w") as f:
        f.write(toml_dumps(cfg) + "\n")


def http(url, method="GET", token=None):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("X-Passerelle-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class OperationsTestCase(E2ETestCase):

    def config(self, peer_port, reject="550 5.7.1 only MSSante destinations are relayed here", extra_listeners=()):
        self.admin_port = getattr(self, "admin_port", None) or free_port()
        self.gw_port = getattr(self, "gw_port", None) or free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["mssante", "others"])] + list(extra_listeners),
            routes=[
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust"},
                {"name": "others", "domains": ["*"], "reject": reject},
            ],
            transports={"trust": relay_transport(peer_port)},
        )
        cfg["server"]["admin"] = "127.0.0.1:%d" % self.admin_port
        return cfg

    def send(self, subject, to=RCPT):
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.sendmail(SENDER, [to], ("Subject: %s\r\nMessage-ID: <%s@t>\r\n\r\nbody\r\n" % (subject, subject)).encode())

    def queue(self, *args):
        return self.gw.cli("queue", *args)


class QueueVerbTests(OperationsTestCase):

    def test_verbs_while_running_and_stopped(self):
        peer = self.peer("a", start=False)
        self.gw = self.gateway(self.config(peer.port))
        for i in range(3):
            self.send("q%d" % i)
        time.sleep(1.5)
        rc, out = self.queue("list")
        self.assertEqual(rc, 0, out)
        ids = re.findall(r"^([0-9A-F]{16}) ", out, re.M)
        self.assertEqual(len(ids), 3, out)
        self.assertIn("pending", out)
        self.assertIn("Connection refused", out, "list shows each recipient's last error")
        self.assertIn("-- 3 message(s)", out)
        a, b, c = ids
        self.assertEqual(self.queue("hold", a)[0], 0)
        rc, out = self.queue("show", a)
        self.assertIn("on hold", out)
        self.assertEqual(self.queue("delete", b)[0], 0)
        rc, out = self.queue("show", b)
        self.assertEqual(rc, 1, out)
        self.assertEqual(self.queue("show", "0000000000000000")[0], 1)
        # The next hop comes up: retry --all delivers c at once; a stays held.
        peer.start()
        self.assertEqual(self.queue("retry", "--all")[0], 0)
        peer.wait_messages(1, 10)
        time.sleep(1.0)
        self.assertEqual(peer.count(), 1, "the held message must not be delivered")
        rc, out = self.queue("list")
        self.assertIn(a, out)
        self.assertIn("on hold", out)
        # Stopped server: list and release work on the spool directly.
        self.gw.stop()
        rc, out = self.queue("list")
        self.assertEqual(rc, 0, out)
        self.assertIn("server not running", out)
        self.assertIn(a, out)
        self.assertEqual(self.queue("release", a)[0], 0)
        self.gw.start()
        peer.wait_messages(2, 15)
        rc, out = self.queue("list")
        self.assertIn("-- 0 message(s)", out)

    def test_admin_endpoint_bounds_its_clients(self):
        """Issue 26 moved the admin endpoint onto axum and the console's bounded server: a
        client that never finishes its headers is cut after the header deadline (10 s), one
        with oversized headers is refused without the server growing, and a query string or
        an unknown route gets a plain answer; the endpoint answers throughout."""
        import socket
        peer = self.peer("a")
        self.gw = self.gateway(self.config(peer.port))
        base = "http://127.0.0.1:%d" % self.admin_port
        slow = socket.create_connection(("127.0.0.1", self.admin_port), timeout=20)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        self.assertEqual(http(base + "/healthz")[0], 200, "answers while a client is slow")
        huge = socket.create_connection(("127.0.0.1", self.admin_port), timeout=20)
        try:
            huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
        except OSError:
            pass  # closed by the server before all of it was sent: refused
        answer = b""
        try:
            answer = huge.recv(100)
        except OSError:
            pass
        self.assertFalse(answer.startswith(b"HTTP/1.1 200"), answer)
        huge.close()
        self.assertEqual(http(base + "/nowhere?x=" + "y" * 5000)[0], 404)
        self.assertEqual(http(base + "/healthz")[0], 200)
        self.assertEqual(slow.recv(100), b"", "the slow client is cut")
        self.assertLess(time.monotonic() - t0, 15)
        slow.close()

    def test_admin_endpoint(self):
        peer = self.peer("a")
        self.gw = self.gateway(self.config(peer.port))
        base = "http://127.0.0.1:%d" % self.admin_port
        self.assertEqual(http(base + "/healthz")[0], 200)
        code, body = http(base + "/readyz")
        self.assertEqual(code, 200, body)
        self.assertTrue(body.startswith("ready\n"), body)
        self.send("m1")
        peer.wait_messages(1, 10)
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.mail(SENDER)
            self.assertEqual(s.rcpt("bob@example.com")[0], 550)
        code, text = http(base + "/metrics")
        self.assertEqual(code, 200)
        for series in ('passerelle_messages_accepted_total{listener="etablissement"} 1',
                       'passerelle_deliveries_total{transport="trust",result="sent"} 1',
                       'passerelle_smtp_rejected_total{listener="etablissement",reply="550 5.7.1"} 1',
                       "passerelle_queue_messages 0", "passerelle_accept_seconds_bucket",
                       "passerelle_sessions_total"):
            self.assertIn(series, text)
        self.assertEqual(http(base + "/queue")[0], 403, "queue routes need the token")
        self.assertEqual(http(base + "/queue/retry-all", "POST", token="wrong")[0], 403)
        with open(os.path.join(self.tmp, "gw", "spool", "admin.token")) as f:
            token = f.read().strip()
        self.assertEqual(oct(os.stat(os.path.join(self.tmp, "gw", "spool", "admin.token")).st_mode & 0o777), "0o600")
        self.assertEqual(http(base + "/queue", token=token), (200, "[]"))


class ReloadTests(OperationsTestCase):

    def test_reload_under_traffic_loses_nothing(self):
        peer = self.peer("a")
        cfg = self.config(peer.port)
        self.gw = self.gateway(cfg)
        sent, errors = [], []
        stop = threading.Event()

        def sender(k):
            n = 0
            while not stop.is_set():
                try:
                    with smtp_session("127.0.0.1", self.gw_port) as s:
                        for _ in range(5):  # several transactions per session
                            subj = "load-%d-%d" % (k, n)
                            s.sendmail(SENDER, [RCPT], ("Subject: %s\r\n\r\nx\r\n" % subj).encode())
                            sent.append(subj)
                            n += 1
                except (smtplib.SMTPException, OSError) as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(5):
                time.sleep(0.4)
                write_toml(self.gw.config_path, self.config(peer.port, reject="550 5.7.1 reload %d" % i))
                os.kill(self.gw.proc.pid, signal.SIGHUP)
            time.sleep(0.4)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(errors, [], "no session may be dropped by a reload")
        self.assertGreater(len(sent), 20)
        msgs = peer.wait_messages(len(sent), 30)
        got = sorted(re.search(rb"Subject: (\S+)", eml).group(1).decode() for _, eml in msgs)
        self.assertEqual(got, sorted(sent), "every accepted message delivered exactly once")
        self.assertEqual(self.gw.log().count("configuration reloaded"), 5)
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.mail(SENDER)
            code, msg = s.rcpt("bob@example.com")
        self.assertEqual((code, msg.decode()), (550, "5.7.1 reload 4"), "new sessions use the new config")

    def test_broken_config_refused_and_listeners_follow_the_config(self):
        peer = self.peer("a")
        self.gw = self.gateway(self.config(peer.port))
        # Broken: a route pointing at a missing transport. Refused with check-config's words.
        bad = self.config(peer.port)
        bad["route"][0]["transport"] = "nope"
        write_toml(self.gw.config_path, bad)
        rc, out = self.gw.cli("check-config")
        self.assertEqual(rc, 1)
        self.assertRegex(out, r"passerelle\.toml:\d+: route\[0\] \(mssante\)\.transport: no \[transport\.nope\]")
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        self.gw.wait_log("reload refused", 10)
        self.assertIn("no [transport.nope]", self.gw.log())
        self.send("still-serving")
        peer.wait_messages(1, 10)
        # A second listener appears, then the first one goes away.
        port2 = free_port()
        two = self.config(peer.port, extra_listeners=[listener("second", port2, ["mssante"])])
        write_toml(self.gw.config_path, two)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        self.gw.wait_log("listening listener=second", 10)
        with smtp_session("127.0.0.1", port2) as s:
            s.sendmail(SENDER, [RCPT], b"Subject: via-second\r\n\r\nx\r\n")
        peer.wait_messages(2, 10)
        only_second = self.config(peer.port)
        only_second["listener"] = [listener("second", port2, ["mssante"])]
        write_toml(self.gw.config_path, only_second)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        self.gw.wait_log("listener closed by reload", 10)
        time.sleep(0.5)
        with self.assertRaises(OSError):
            smtplib.SMTP("127.0.0.1", self.gw_port, timeout=5)

    def test_check_config_reports_unknown_keys(self):
        path = os.path.join(self.tmp, "typo.toml")
        cfg = self.config(free_port())
        cfg["queue"]["lifetme"] = "1d"
        write_toml(path, cfg)
        from harness import PASSERELLE_BIN
        import subprocess
        r = subprocess.run([PASSERELLE_BIN, "check-config", "--config", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stdout, r"warning: .*typo\.toml:\d+: queue\.lifetme: unknown key")
        self.assertRegex(r.stdout, r"tls\.certificate: CN=.*expires .*\(\d+ days\)")


class AdminRetryTests(OperationsTestCase):
    """`queue retry` after the next hop comes back: no wait for the retry interval (1 h here)
    nor for the destination's rest period, like Postfix's `postqueue -i` / `-f`."""

    def config_1h(self, peer_port):
        cfg = self.config(peer_port)
        cfg["queue"]["retry"] = ["1h"]
        return cfg

    def deferred_ids(self, n):
        def ready():
            rc, out = self.queue("list")
            ids = re.findall(r"^([0-9A-F]{16}) ", out, re.M)
            return (ids, out) if len(ids) == n and "Connection refused" in out else None
        return self.wait_until(ready, 15, "%d deferred messages" % n)

    def test_retry_one_then_all_after_recovery(self):
        peer = self.peer("a", start=False)
        self.gw = self.gateway(self.config_1h(peer.port))
        self.send("first")
        self.deferred_ids(1)
        # The destination now rests: a second message is postponed, not attempted.
        self.send("second")
        (ids, out) = self.deferred_ids(2)
        first, second = ids
        self.assertRegex(out, first + r".*attempts 1  next in (59m|1h)")
        self.assertRegex(out, second + r".*attempts 0 ", "a postponed try is not an attempt")
        code, metrics = http("http://127.0.0.1:%d/metrics" % self.admin_port)
        self.assertIn('passerelle_deliveries_total{transport="trust",result="deferred"} 1\n', metrics,
                      "one real attempt deferred, the postponed one not counted")
        peer.start()
        t0 = time.monotonic()
        rc, out = self.queue("retry", first)
        self.assertEqual(rc, 0, out)
        msgs = peer.wait_messages(1, 10)
        self.assertLess(time.monotonic() - t0, 5, "delivered within seconds of the retry")
        self.assertIn(b"Subject: first", msgs[0][1])
        time.sleep(0.5)
        self.assertEqual(peer.count(), 1, "only the message asked for")
        rc, out = self.queue("retry", "--all")
        self.assertEqual(rc, 0, out)
        msgs = peer.wait_messages(2, 10)
        self.assertIn(b"Subject: second", msgs[1][1])
        rc, out = self.queue("list")
        self.assertIn("-- 0 message(s)", out)

    def wait_until(self, pred, timeout, what):
        from harness import wait_until
        return wait_until(pred, timeout, interval=0.2, what=what)


WL_NS = "https://listeblanche.mssante.fr/schema"


def whitelist_xml(domains):
    items = "".join("<Domaine><Nom>%s</Nom><DNCertificatOperateur>CN=op,O=Op,C=FR</DNCertificatOperateur>"
                    "</Domaine>" % d for d in domains)
    return '<ListeBlancheMSSante xmlns="%s"><ListeDomaines>%s</ListeDomaines></ListeBlancheMSSante>' % (WL_NS, items)


class ReloadRaceTests(OperationsTestCase):
    wait_until = AdminRetryTests.wait_until

    """SIGHUP reloads while the whitelist refresher keeps loading a changing file: the routes
    of the last reload stay in force, and so does the last whitelist (one writer per cell)."""

    def test_reloads_while_the_whitelist_refreshes(self):
        peer = self.peer("a")
        wl = os.path.join(self.tmp, "liste.xml")
        with open(wl, "w") as f:
            f.write(whitelist_xml(["stable.example.fr"]))

        def cfg(blocking):
            c = self.config(peer.port)
            c["whitelist"] = {"file": wl, "reload": "200ms"}
            c["route"].insert(0, {"name": "declared", "domains": ["@whitelist"], "transport": "trust",
                                  "whitelist": True})
            order = ["declared", "mssante", "others"]
            if blocking:
                c["route"].insert(0, {"name": "blocked", "domains": ["blocked.example.fr"],
                                      "reject": "550 5.7.1 blocked by the last reload"})
                order = ["blocked"] + order
            c["listener"][0]["routes"] = order
            return c

        self.gw = self.gateway(cfg(False))
        rounds = 30
        for k in range(rounds):
            with open(wl + ".tmp", "w") as f:
                f.write(whitelist_xml(["stable.example.fr", "dom%d.example.fr" % k, "blocked.example.fr"]))
            os.replace(wl + ".tmp", wl)
            write_toml(self.gw.config_path, cfg(k % 2 == 1))
            os.kill(self.gw.proc.pid, signal.SIGHUP)
            time.sleep(0.07 + 0.05 * (k % 3))
        # Signals that arrive during a reload coalesce: end with one more, once all is quiet.
        time.sleep(1.0)
        before = self.gw.log().count("configuration reloaded")
        self.assertGreater(before, 5)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        self.wait_until(lambda: self.gw.log().count("configuration reloaded") > before, 10,
                        "the last reload")
        time.sleep(0.6)  # a refresh or two after the last reload
        self.assertTrue(self.gw.running())
        with smtp_session("127.0.0.1", self.gw_port) as s:
            s.mail(SENDER)
            code, msg = s.rcpt("x@blocked.example.fr")
            self.assertEqual((code, msg.decode()), (550, "5.7.1 blocked by the last reload"),
                             "the routes of the last reload are in force")
            last = "x@dom%d.example.fr" % (rounds - 1)
            self.assertEqual(s.rcpt(last)[0], 250, "the last whitelist is in force")
            self.assertEqual(s.rcpt("x@dom0.example.fr")[0], 550, "an older whitelist is not")
