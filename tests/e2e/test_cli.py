"""End-to-end tests of issue 12, item 4: the command line as an administrator uses it.

- the queue verbs answer in sentences, running and stopped (`ID: held`, `ID: released,
  attempt now`, `N message(s) scheduled for an attempt now`, `ID: deleted`);
- `--format json` for `queue list/show`, `route test`, `whitelist show`, `directory lookup`,
  parsed as a tool would (stdout only);
- `queue show ID --headers` prints the stored header section; `--body` prints the body, only
  on that flag, and the read is logged at warn level with the OS user: by the gateway when it
  runs, by the command itself when it is stopped;
- `--help` of every verb.
"""

import json
import os
import re
import subprocess

from harness import PASSERELLE_BIN, REPO, E2ETestCase, free_port, gateway_config, listener, relay_transport, \
    smtp_session, wait_until

SENDER = "secretariat@chu-test.mssante.fr"
RCPT = "dr.cli@autre-ch.mssante.fr"
SUBJECT = "Compte rendu CLI-7731"
BODY_MARK = "BODY-MARK-4242 resultats confidentiels"


def cli(gw, *args, env=None):
    """(rc, stdout, stderr) of `passerelle ARGS --config <gw's config>`."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([PASSERELLE_BIN] + [str(a) for a in args] + ["--config", gw.config_path],
                       cwd=gw.root, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


class CliTestCase(E2ETestCase):

    def start(self, peer_port, **sections):
        self.gw_port = free_port()
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.gw_port, ["local", "mssante", "others"])],
            routes=[
                {"name": "local", "domains": ["chu-exemple.mssante.fr"], "transport": "trust", "directory": True},
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust", "whitelist": True},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"},
            ],
            transports={"trust": relay_transport(peer_port)},
            # The retries must not end the test's messages while it looks at them.
            queue={"retry": ["1h"]},
            whitelist={"file": os.path.join(REPO, "config", "listeblanchemssante.xml")},
            directory={"kind": "extract",
                       "file": os.path.join(REPO, "config", "Extraction_Correspondance_MSSante.sample.txt")},
            **sections,
        )
        self.gw = self.gateway(cfg)
        return self.gw

    def send(self, n=1):
        for i in range(n):
            msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s #%d\r\nMessage-ID: <cli-%d@t>\r\n\r\n%s\r\n"
                   % (SENDER, RCPT, SUBJECT, i, i, BODY_MARK)).encode()
            with smtp_session("127.0.0.1", self.gw_port) as s:
                s.sendmail(SENDER, [RCPT], msg)

    def ids(self):
        rc, out, err = cli(self.gw, "queue", "list", "--format", "json")
        self.assertEqual(rc, 0, out + err)
        return [m["id"] for m in json.loads(out)]


class QueueCliTests(CliTestCase):

    def test_sentences_json_and_message_reads(self):
        down = free_port()  # nothing listens: the messages stay queued
        gw = self.start(down)
        self.send(3)

        def deferred(qid):
            # A failed attempt, or one skipped because the destination rests after a failure.
            return len(re.findall(r'queue_id=%s .*status="?(?:deferred|postponed)' % qid, gw.log()))

        # Each message's first attempt has failed (nothing listens) and been written.
        wait_until(lambda: len(re.findall(r'status="?(?:deferred|postponed)', gw.log())) >= 3, 20,
                   what="the first attempt of each message")
        rc, out, err = cli(gw, "queue", "list", "--format", "json")
        self.assertEqual(rc, 0, err)
        items = json.loads(out)
        self.assertEqual(len(items), 3, out)
        for it in items:
            self.assertRegex(it["id"], r"^[0-9A-F]{16}$")
            self.assertEqual(it["sender"], SENDER)
            self.assertEqual([r["address"] for r in it["recipients"]], [RCPT])
            self.assertEqual(it["recipients"][0]["status"], "pending")
            self.assertGreater(it["next_attempt"], 0)
            self.assertFalse(it["held"])
        a, b, c = sorted(it["id"] for it in items)

        rc, out, err = cli(gw, "queue", "show", a, "--format", "json")
        self.assertEqual((rc, json.loads(out)["id"]), (0, a), out + err)
        # The envelope only: neither the subject nor the body.
        rc, out, err = cli(gw, "queue", "show", a)
        self.assertEqual(rc, 0, err)
        self.assertIn(a, out)
        self.assertNotIn("CLI-7731", out)
        self.assertNotIn("BODY-MARK", out)

        # --headers: the header section as stored (our Received on top), no body, no log line.
        rc, out, err = cli(gw, "queue", "show", a, "--headers")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith("Received: "), out)
        self.assertIn("Subject: %s" % SUBJECT, out)
        self.assertNotIn("BODY-MARK", out)
        self.assertTrue(out.endswith("\r\n\r\n"), repr(out[-20:]))
        self.assertNotIn("message body read", gw.log())

        # --body: the body only, and the gateway logs who read which message.
        rc, out, err = cli(gw, "queue", "show", a, "--body", env={"SUDO_USER": "alice", "USER": "root"})
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, BODY_MARK + "\r\n")
        line = gw.wait_log(r"message body read by an administrator.*", 5)
        self.assertIn("queue_id=%s" % a, line.group(0))
        self.assertRegex(line.group(0), r"reader=alice \(sudo as root, uid %d\)" % os.getuid())
        self.assertRegex(line.group(0), r"via=admin 127.0.0.1:\d+, socket of uid %d" % os.getuid())
        rc, out, err = cli(gw, "queue", "show", a, "--headers", "--body")
        self.assertIn("Subject: ", out)
        self.assertIn(BODY_MARK, out)
        rc, out, err = cli(gw, "queue", "show", "0000000000000000", "--body")
        self.assertEqual(rc, 1)
        self.assertIn("no such message", out)
        # JSON is for the envelope, not the message.
        rc, out, err = cli(gw, "queue", "show", a, "--body", "--format", "json")
        self.assertEqual(rc, 2, "usage error: " + err)

        # Changes, in sentences.
        self.assertEqual(cli(gw, "queue", "hold", a)[:2], (0, "%s: held\n" % a))
        rc, out, _ = cli(gw, "queue", "show", a)
        self.assertIn("on hold", out)
        self.assertEqual(cli(gw, "queue", "release", a)[:2], (0, "%s: released, attempt now\n" % a))
        self.assertEqual(cli(gw, "queue", "retry", b)[:2], (0, "%s: attempt now\n" % b))
        self.assertEqual(cli(gw, "queue", "delete", c)[:2], (0, "%s: deleted\n" % c))
        # The attempts started by release/retry fail at once (refused): wait for both.
        wait_until(lambda: deferred(a) >= 2 and deferred(b) >= 2, 20,
                   what="the attempts of the released and the retried message")
        rc, out, _ = cli(gw, "queue", "retry", "--all")
        self.assertEqual((rc, out), (0, "2 message(s) scheduled for an attempt now\n"))
        rc, out, err = cli(gw, "queue", "hold", "0000000000000000")
        self.assertEqual(rc, 1, out)
        self.assertIn("0000000000000000: no such message", out)
        rc, out, err = cli(gw, "queue", "retry")
        self.assertEqual(rc, 2, "retry needs an ID or --all: " + err)

        # Stopped: the same verbs on the spool, and the command itself logs a body read.
        gw.stop()
        rc, out, err = cli(gw, "queue", "list")
        self.assertEqual(rc, 0, err)
        self.assertIn("-- 2 message(s) in the queue (server not running)", out)
        rc, out, err = cli(gw, "queue", "show", b, "--body", env={"SUDO_USER": "bob"})
        self.assertEqual((rc, out), (0, BODY_MARK + "\r\n"), err)
        self.assertRegex(err, r"message body read by an administrator.*queue_id=%s.*reader=bob.*via=spool" % b)
        rc, out, err = cli(gw, "queue", "show", b, "--headers")
        self.assertIn("Subject: %s" % SUBJECT, out)
        self.assertEqual(err, "", "no log line for headers")
        # A change that the journal cannot record is refused and not done (issue 24 B.12): the
        # journal's database is down (nothing listens on its port).
        good = dict(gw.config)
        gw.set_config(dict(good, journal={"kind": "postgres",
                                          "url": "postgresql://passerelle@127.0.0.1:%d/x" % free_port()}))
        rc, out, err = cli(gw, "queue", "hold", b)
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(err, r"%s: refused: the (journal cannot record it|audit trail cannot be written).*nothing was done" % b)
        rc, out, err = cli(gw, "queue", "show", b)
        self.assertNotIn("on hold", out)
        rc, out, err = cli(gw, "queue", "delete", b)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("-- 2 message(s) in the queue", cli(gw, "queue", "list")[1])
        gw.set_config(good)
        self.assertEqual(cli(gw, "queue", "hold", b)[:2], (0, "%s: held (server not running)\n" % b))
        self.assertEqual(cli(gw, "queue", "delete", b)[:2], (0, "%s: deleted (server not running)\n" % b))
        rc, out, err = cli(gw, "queue", "list", "--format", "json")
        self.assertEqual([m["id"] for m in json.loads(out)], [a])


class ExplainCliTests(CliTestCase):

    def test_route_whitelist_directory_as_json(self):
        gw = self.start(free_port())
        rc, out, err = cli(gw, "route", "test", "dr.martin@chu-exemple.mssante.fr", "--format", "json")
        self.assertEqual(rc, 0, out + err)
        r = json.loads(out)
        self.assertEqual(r["verdict"], "accepted")
        self.assertEqual(r["route"], "local")
        self.assertEqual(r["bal_type"], "PER")
        self.assertEqual(r["listener"]["name"], "etablissement")
        self.assertEqual(r["routes"][0], {"route": "local", "matched": "chu-exemple.mssante.fr"})
        self.assertEqual(r["transport"]["name"], "trust")
        rc, out, err = cli(gw, "route", "test", "x@nulle-part.mssante.fr", "--format", "json")
        self.assertEqual(rc, 1)
        r = json.loads(out)
        self.assertEqual(r["verdict"], "refused")
        self.assertTrue(r["reply"].startswith("550 5.7.1"), r)
        self.assertEqual(r["whitelist"], {"domain": "nulle-part.mssante.fr", "declared": False, "dns": []})
        rc, out, err = cli(gw, "route", "test", "bob@gmail.com", "--format", "json")
        self.assertEqual((rc, json.loads(out)["reply"]), (1, "550 5.7.1 only MSSante destinations"))

        rc, out, err = cli(gw, "whitelist", "show", "autre-ch.mssante.fr", "--format", "json")
        self.assertEqual(rc, 0, err)
        w = json.loads(out)
        self.assertTrue(w["declared"])
        self.assertIn("CN=mx.autre-operateur.test,OU=999999999900002,O=OPERATEUR AUTRE DEV,ST=Rhone (69),C=FR",
                      [e["dn"] for e in w["entries"]])
        rc, out, err = cli(gw, "whitelist", "show", "nulle-part.mssante.fr", "--format", "json")
        self.assertEqual((rc, json.loads(out)["declared"]), (1, False))

        rc, out, err = cli(gw, "directory", "lookup", "j.dupont@chu-exemple.mssante.fr", "--format", "json")
        self.assertEqual(rc, 0, err)
        d = json.loads(out)
        self.assertEqual((d["known"], d["bal_type"]), (True, "PER"))
        rc, out, err = cli(gw, "directory", "lookup", "nobody@chu-exemple.mssante.fr", "--format", "json")
        self.assertEqual((rc, json.loads(out)["known"]), (1, False))
        # Text stays sentences.
        rc, out, err = cli(gw, "directory", "lookup", "nobody@chu-exemple.mssante.fr")
        self.assertRegex(out, r"^nobody@chu-exemple.mssante.fr: unknown to ")

    def test_every_verb_has_help(self):
        for verb in (["queue", "show"], ["queue", "hold"], ["queue", "release"], ["queue", "delete"],
                     ["queue", "retry"], ["route", "test"], ["whitelist", "show"], ["directory", "lookup"]):
            r = subprocess.run([PASSERELLE_BIN] + verb + ["--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
            out = r.stdout.decode()
            self.assertEqual(r.returncode, 0, out)
            # a description line, and every argument and option explained on the next line
            self.assertFalse(out.startswith("Usage:"), "%s: no description" % verb)
            lines = out.splitlines()
            for i, l in enumerate(lines):
                m = re.match(r"^ {2,6}[<-]\S*(?: <\w+>)?(.*)$", l)
                if m:
                    nxt = lines[i + 1] if i + 1 < len(lines) else ""
                    inline = m.group(1).strip()
                    below = nxt.startswith(" " * 10) and nxt.strip()
                    self.assertTrue(inline or below, "%s %r: no help text" % (verb, l))
