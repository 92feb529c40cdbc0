"""Robustness tests: crash consistency under kill -9, storage, next-hop and certificate faults, protocol
attacks (SMTP smuggling, STARTTLS command injection, open relay, resource limits) and the
hygiene of what the gateway itself sends.

The test bed (127.0.0.1 only, fresh per test):

    Python clients (smtplib / raw sockets) --> passerelle, listener "etablissement"
                      route local   chu-test.mssante.fr -> transport etablissement -> sink
                      route mssante *.mssante.fr        -> transport trust-space   -> sink
                      route others  *                   -> 550 5.7.1 only MSSante ...
    sink: an mss-peer standing for every next hop (or, in OutboundHygieneTests, a fake next
    hop written here that injects bytes after STARTTLS and checks every line it receives).

Knobs: CRASH_KILLS (default 20) = how many times CrashTests kill -9 the gateway; CRASH_SEED
replays a kill schedule; CRASH_SENDERS (4) concurrent senders; CRASH_RATE (0) messages per
second offered by all senders together (0 = as fast as they can: a flood that saturates the
machine); CRASH_INTERVAL ("0.05-0.6") seconds between kills, drawn uniformly;
CRASH_MAX_DUP_RATIO (unset) fails the test when all duplicates together exceed that fraction of
accepted messages (benches/crash.sh sets 0.001 for its steady-load run);
CRASH_SUMMARY=FILE writes the numbers as JSON. benches/crash.sh runs the long version.
E2E_VERBOSE=1 prints the fake next hop's transcript in OutboundHygieneTests.

Needs root for FaultTests (tmpfs mount, ext4 on a loop device); they skip otherwise.
"""

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest
import uuid

from harness import (TEST_TIMEOUT, E2ETestCase, RawSMTP, dev_pki, free_port, gateway_config, http_get,
                     listener, queued_id, rcpts, relay_transport, wait_until)

LOCAL_DOMAIN = "chu-test.mssante.fr"
SENDER = "robot@" + LOCAL_DOMAIN
RCPT = "dr.x@autre.mssante.fr"
REJECT = "550 5.7.1 only MSSante destinations are relayed here"

ROUTES = [
    {"name": "local", "domains": [LOCAL_DOMAIN], "transport": "etablissement", "directory": False},
    {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust-space",
     "whitelist": False, "directory": False},
    {"name": "others", "domains": ["*"], "reject": REJECT},
]

CRASH_KILLS = int(os.environ.get("CRASH_KILLS", "20"))
CRASH_SENDERS = int(os.environ.get("CRASH_SENDERS", "4"))
CRASH_RATE = float(os.environ.get("CRASH_RATE", "0"))
_lo, _, _hi = os.environ.get("CRASH_INTERVAL", "0.05-0.6").partition("-")
CRASH_INTERVAL = (float(_lo), float(_hi or _lo))   # "2-6" or a fixed "3"
CRASH_MAX_DUP_RATIO = float(os.environ["CRASH_MAX_DUP_RATIO"]) if os.environ.get("CRASH_MAX_DUP_RATIO") else None
DESTINATION_CONCURRENCY = 20  # [queue] destination_concurrency default: deliveries in flight to the sink


def log(msg):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- messages

_CHECK_RX = re.compile(rb"X-Check: sha256=([0-9a-f]{64}) len=(\d+)\r\n\Z")


def checked_message(msgid, body_len, rnd, subject="robustness", to=RCPT):
    """A message whose body is body_len bytes of CRLF lines (some starting with '.') followed by
    a trailing line `X-Check: sha256=<hex of the body before it> len=<n>`."""
    blob = base64.b64encode(rnd.randbytes(body_len)).decode()
    lines, n, pos = [], 0, 0
    while n < body_len:
        k = rnd.randint(0, 150)
        line = blob[pos:pos + k]
        pos = (pos + k) % max(1, len(blob) - 200)
        r = rnd.random()
        if r < 0.05:
            line = "." + line
        elif r < 0.07:
            line = "."
        lines.append(line + "\r\n")
        n += len(line) + 2
    body = "".join(lines).encode()
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\nX-Body-Length: %d\r\n\r\n"
            % (SENDER, to, subject, email.utils.formatdate(), msgid, len(body))).encode()
    tail = b"X-Check: sha256=%s len=%d\r\n" % (hashlib.sha256(body).hexdigest().encode(), len(body))
    return head + body + tail


def inspect_delivered(eml):
    """(message-id or None, gateway queue id or None, intact: bool, why) of a delivered copy."""
    head, sep, body = eml.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^Message-ID:\s*(<[^>\r\n]+>)", head)
    msgid = m.group(1).decode() if m else None
    q = re.search(rb"\bid ([A-Za-z0-9]+)", eml[:600])  # our Received: "... with ESMTP id QID"
    qid = q.group(1).decode() if q else None
    if not sep:
        return msgid, qid, False, "no header/body separator"
    c = _CHECK_RX.search(body)
    if not c:
        return msgid, qid, False, "checksum line missing (truncated?) ...%r" % body[-120:]
    content = body[:c.start()]
    if len(content) != int(c.group(2)):
        return msgid, qid, False, "body length %d != %s" % (len(content), c.group(2).decode())
    if hashlib.sha256(content).hexdigest().encode() != c.group(1):
        return msgid, qid, False, "sha256 mismatch"
    return msgid, qid, True, ""


def simple_message(subject, msgid=None, to=RCPT, body="Bonjour.\r\n"):
    msgid = msgid or "<%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n\r\n%s" % (
        SENDER, to, subject, email.utils.formatdate(), msgid, body)).encode()


def msgid_of(eml):
    m = re.search(rb"(?im)^Message-ID:\s*(<[^>\r\n]+>)", eml.partition(b"\r\n\r\n")[0])
    return m.group(1).decode() if m else None


class SinkReader:
    """Incremental reader of an mss-peer's directory (tens of thousands of messages in the long
    crash run): keeps inspect(eml) of each message, not the message."""

    def __init__(self, peer, inspect=inspect_delivered):
        self.peer = peer
        self.inspect = inspect
        self.seen = {}

    def poll(self):
        try:
            names = os.listdir(self.peer.dir)
        except FileNotFoundError:
            return self.seen
        for name in names:
            if not name.endswith(".json") or not name[:-5].isdigit():
                continue
            n = int(name[:-5])
            if n in self.seen:
                continue
            try:
                with open(os.path.join(self.peer.dir, "%d.eml" % n), "rb") as f:
                    self.seen[n] = self.inspect(f.read())
            except FileNotFoundError:
                continue
        return self.seen


def send_one(port, raw, frm=SENDER, to=(RCPT,), host="127.0.0.1", source=None, timeout=15):
    """One transaction on a fresh connection: returns (stage, code, text); stage is the command
    whose reply ended it ('data' with 250 = accepted)."""
    s = smtplib.SMTP(timeout=timeout, source_address=(source, 0) if source else None)
    try:
        s.connect(host, port)
        s.ehlo("client." + LOCAL_DOMAIN)
        code, msg = s.mail(frm)
        if code != 250:
            return "mail", code, msg.decode(errors="replace")
        for r in to:
            code, msg = s.rcpt(r)
            if code != 250:
                return "rcpt", code, msg.decode(errors="replace")
        try:
            code, msg = s.data(raw)
        except smtplib.SMTPDataError as e:
            return "data-cmd", e.smtp_code, e.smtp_error.decode(errors="replace")
        return "data", code, msg.decode(errors="replace")
    finally:
        with contextlib.suppress(Exception):
            s.quit()
        with contextlib.suppress(Exception):
            s.close()


def client_tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RobustCase(E2ETestCase):
    """The common bed: one sink for both transports, one listener (and optional extras)."""

    def bed(self, sink=True, sink_opts=None, smtp=None, spool=None, starttls="off", extra_listeners=(),
            transports=None, queue=None, env=None):
        self.sink = self.peer("sink", start=sink, **(sink_opts or {}))
        self.port = free_port()
        listeners = [listener("etablissement", self.port, ["local", "mssante", "others"], starttls=starttls)]
        listeners += list(extra_listeners)
        sections = {"smtp": smtp} if smtp else {}
        cfg = gateway_config(self.tmp, listeners, ROUTES,
                             transports or {"trust-space": relay_transport(self.sink.port),
                                            "etablissement": relay_transport(self.sink.port)},
                             queue=queue, **sections)
        if spool:
            cfg["server"]["spool"] = spool
        self.gw = self.gateway(cfg, env=env)
        return self.gw

    def assertDeliveredOnce(self, msgids, timeout=20.0, settle=2.0):
        """Every msgid arrives at the sink, each exactly once (after `settle` more seconds)."""
        want = set(msgids)

        def arrived():
            got = [msgid_of(eml) for _, eml in self.sink.messages()]
            return want <= set(got)
        try:
            wait_until(arrived, timeout, interval=0.2, what="%d message(s) at the sink" % len(want))
        except TimeoutError:
            pass
        time.sleep(settle)
        got = [msgid_of(eml) for _, eml in self.sink.messages()]
        missing = sorted(want - set(got))
        self.assertFalse(missing, "accepted (250) but never delivered: %s" % missing)
        dups = sorted(m for m in want if got.count(m) > 1)
        self.assertFalse(dups, "delivered more than once: %s" % dups)
        return got


# --------------------------------------------------------------------------- a. crash test

class CrashState:
    def __init__(self):
        self.lock = threading.Lock()
        self.accepted = {}       # msgid -> queue id of the 250
        self.data_sent = {}      # msgid -> number of DATA attempts (each may have been stored)
        self.generated = set()
        self.conn_errors = 0
        self.temp_replies = {}   # "code stage" -> count
        self.perm_replies = []   # unexpected 5xx: (stage, code, text)
        self.no_qid = []


class CrashTests(RobustCase):
    """kill -9 at random moments under a steady load: nothing acknowledged is lost or cut."""

    timeout = int(max(TEST_TIMEOUT, 120 + (3.5 + CRASH_INTERVAL[-1]) * CRASH_KILLS))

    def _sender(self, idx, stop, st):
        rnd = random.Random()
        s = None
        seq = 0
        # steady load: each sender offers CRASH_RATE / CRASH_SENDERS messages per second
        period = CRASH_SENDERS / CRASH_RATE if CRASH_RATE > 0 else 0.0
        t0 = time.monotonic()
        while not stop.is_set():
            seq += 1
            if period:
                stop.wait(max(0.0, t0 + seq * period - time.monotonic()))
            msgid = "<crash-%d-%d-%s@%s>" % (idx, seq, uuid.uuid4().hex[:12], LOCAL_DOMAIN)
            raw = checked_message(msgid, rnd.randint(200, 12000), rnd, subject="crash %d/%d" % (idx, seq))
            with st.lock:
                st.generated.add(msgid)
            while not stop.is_set():       # retry the same Message-ID until a 250
                try:
                    if s is None:
                        s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                        s.ehlo("sender%d.%s" % (idx, LOCAL_DOMAIN))
                    stage = "mail"
                    code, msg = s.mail(SENDER)
                    if code == 250:
                        stage = "rcpt"
                        code, msg = s.rcpt(RCPT)
                    if code == 250:
                        stage = "data"
                        with st.lock:
                            st.data_sent[msgid] = st.data_sent.get(msgid, 0) + 1
                        code, msg = s.data(raw)
                        if code == 250:
                            qid = queued_id(msg)
                            with st.lock:
                                st.accepted[msgid] = qid
                                if not qid:
                                    st.no_qid.append(msg)
                            break
                    with st.lock:
                        if code >= 500:
                            st.perm_replies.append((stage, code, msg.decode(errors="replace")))
                        else:
                            k = "%d at %s" % (code, stage)
                            st.temp_replies[k] = st.temp_replies.get(k, 0) + 1
                    with contextlib.suppress(Exception):
                        s.rset()
                except (OSError, smtplib.SMTPException) as e:
                    if isinstance(e, smtplib.SMTPResponseException) and e.smtp_code >= 500:
                        with st.lock:
                            st.perm_replies.append(("exception", e.smtp_code, str(e)))
                    with st.lock:
                        st.conn_errors += 1
                    with contextlib.suppress(Exception):
                        s.close()
                    s = None
                    stop.wait(0.02)
        if s is not None:
            with contextlib.suppress(Exception):
                s.quit()
            with contextlib.suppress(Exception):
                s.close()

    def test_crash_kill9_under_load(self):
        kills = CRASH_KILLS
        seed = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))
        rnd = random.Random(seed)
        self.bed()
        sink = SinkReader(self.sink)
        st = CrashState()
        stop = threading.Event()
        self.addCleanup(stop.set)
        senders = [threading.Thread(target=self._sender, args=(i, stop, st), daemon=True, name="sender%d" % i)
                   for i in range(CRASH_SENDERS)]
        t0 = time.monotonic()
        for t in senders:
            t.start()
        time.sleep(0.3)
        for k in range(kills):
            time.sleep(rnd.uniform(CRASH_INTERVAL[0], CRASH_INTERVAL[-1]))
            self.gw.kill9()
            self.gw.start()
        time.sleep(0.3)
        stop.set()
        for t in senders:
            t.join(30)
        load_time = time.monotonic() - t0
        self.assertTrue(self.gw.running(), "gateway not running after the last restart")

        # drain: every acknowledged message at the sink (bounded), then no more deliveries for 3 s
        accepted = dict(st.accepted)

        def all_in():
            got = {r[0] for r in sink.poll().values()}
            return set(accepted) <= got
        with contextlib.suppress(TimeoutError):
            wait_until(all_in, 90, interval=0.5, what="every accepted message at the sink")
        last = (-1, -1)
        stable_since = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = (len(sink.poll()), self.gw.log().count('status="sent"'))
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= 3.0:
                break
            time.sleep(0.3)

        # analysis
        copies = {}        # msgid -> {qid: n}
        truncated, foreign = [], []
        for n, (msgid, qid, ok, why) in sorted(sink.poll().items()):
            if msgid is None or msgid not in st.generated:
                foreign.append((n, msgid))
                continue
            if not ok:
                truncated.append((n, msgid, qid, why))
            per = copies.setdefault(msgid, {})
            per[qid] = per.get(qid, 0) + 1
        lost = sorted(m for m in accepted if m not in copies)
        lost_qid = sorted((m, q) for m, q in accepted.items() if m in copies and q not in copies[m])
        gw_dups = sum(n - 1 for per in copies.values() for n in per.values())
        retry_dups = sum(len(per) - 1 for per in copies.values())
        dup_ids = sorted(m for m, per in copies.items() if sum(per.values()) > 1)
        ambiguous = sorted(m for m in copies if m not in accepted)  # stored, but the 250 never arrived
        spool = self.gw.config["server"]["spool"]
        qdir = os.path.join(spool, "quarantine")
        quarantined = len(os.listdir(qdir)) if os.path.isdir(qdir) else 0
        starts = self.gw.log().count("==== start")
        n_delivered = sum(sum(per.values()) for per in copies.values())
        # Re-deliveries of one queue ID, by cause, from the gateway log (one section per start):
        #  - in flight: the next hop stored the copy but the crash came before the gateway had
        #    its 250 (no status="sent" logged): unavoidable for any MTA (RFC 1047), at most the
        #    deliveries in progress at each kill;
        #  - after a logged status="sent": the line is written after the record that ends the
        #    delivery, so this would be a spool or recovery bug;
        #  - resurrected: sent again after "removed" was logged: a recovery bug.
        sections = self.gw.log().split("==== start")[1:]
        sent_in, removed_in = {}, {}
        for i, sec in enumerate(sections):
            for q in re.findall(r'queue_id=(\S+) to=\S+ relay=\S+ status="sent"', sec):
                sent_in.setdefault(q, []).append(i)
            for q in re.findall(r"removed queue_id=(\S+)", sec):
                removed_in.setdefault(q, []).append(i)
        redelivered = {q: n for per in copies.values() for q, n in per.items() if n > 1}
        known_sent = sum(n - 1 for q, n in redelivered.items() if len(sent_in.get(q, [])) > 1)
        in_flight = gw_dups - known_sent
        resurrected = sorted(q for q, rm in removed_in.items()
                             if len(rm) > 1 or max(sent_in.get(q, [-1])) > min(rm))
        summary = {
            "kills": kills, "seed": seed, "rate": CRASH_RATE, "interval": "%g-%g" % CRASH_INTERVAL,
            "gateway starts": starts, "load seconds": round(load_time, 1),
            "accepted": len(accepted), "delivered": n_delivered, "delivered unique": len(copies),
            "lost": len(lost), "lost queue ids": len(lost_qid), "truncated": len(truncated),
            "duplicates": len(dup_ids), "gateway duplicates": gw_dups, "client-retry duplicates": retry_dups,
            "re-sent after a logged status=sent": known_sent, "re-sent, in flight at a kill": in_flight,
            "resurrected after removal": len(resurrected),
            "delivered without 250": len(ambiguous), "connection errors": st.conn_errors,
            "4xx replies": dict(st.temp_replies), "quarantined records": quarantined,
        }
        log("\ncrash summary: " + ", ".join("%s=%s" % kv for kv in summary.items()))
        if os.environ.get("CRASH_SUMMARY"):
            with open(os.environ["CRASH_SUMMARY"], "w") as f:
                json.dump(summary, f, indent=1)
        if dup_ids:
            log("duplicated message ids (first 10): %s" % [(m, copies[m]) for m in dup_ids[:10]])
        self.assertGreater(len(accepted), 50, "too little load to mean anything: %s" % summary)
        self.assertEqual(starts, kills + 1, "gateway starts")
        self.assertFalse(st.perm_replies, "5xx during crashes (must be 4xx or a dropped connection): %s"
                         % st.perm_replies[:10])
        self.assertFalse(st.no_qid, "250 without 'queued as ID': %s" % st.no_qid[:3])
        self.assertFalse(foreign, "messages at the sink that no sender generated: %s" % foreign[:5])
        self.assertFalse(lost, "%d acknowledged message(s) never delivered (first 10): %s"
                         % (len(lost), lost[:10]))
        self.assertFalse(lost_qid, "acknowledged queue IDs never delivered (the Message-ID came through "
                         "another submission only): %s" % lost_qid[:10])
        self.assertFalse(truncated, "truncated/corrupted deliveries: %s" % truncated[:10])
        self.assertFalse(resurrected, "queue IDs delivered again after their removal was logged: %s"
                         % resurrected[:10])
        # The gateway logs status="sent" only once the record that ends the delivery is written
        # (kill -9 cannot undo a write): a logged delivery is never made again.
        self.assertEqual(known_sent, 0,
                         "%d re-deliveries of messages whose next hop's 250 the gateway had already "
                         "logged (status=\"sent\") before the kill: %s"
                         % (known_sent, sorted(q for q, n in redelivered.items()
                                               if len(sent_in.get(q, [])) > 1)[:10]))
        self.assertLessEqual(in_flight, kills * DESTINATION_CONCURRENCY,
                             "more re-deliveries (%d) than deliveries that can be in flight at %d kills"
                             % (in_flight, kills))
        # a client that lost the 250 and re-sent made a second queue entry: SMTP's own duplicate
        # (RFC 1047); at most one per DATA attempt that did not get its 250
        for m in dup_ids:
            self.assertLessEqual(len(copies[m]), st.data_sent.get(m, 0),
                                 "%s: more distinct queue IDs than submissions: %s" % (m, copies[m]))
        if CRASH_MAX_DUP_RATIO is not None:
            dups = gw_dups + retry_dups
            self.assertLessEqual(dups, CRASH_MAX_DUP_RATIO * len(accepted),
                                 "%d duplicates (%d in flight at a kill, %d client retries after a lost "
                                 "250) > %g%% of %d accepted" % (dups, in_flight, retry_dups,
                                                                 100 * CRASH_MAX_DUP_RATIO, len(accepted)))


# --------------------------------------------------------------------------- b. faults

def _run(*argv, timeout=60):
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)


class FaultTests(RobustCase):

    def _unmount(self, path):
        # cleanups run before E2ETestCase's: stop the gateway (it holds files there) first
        with contextlib.suppress(Exception):
            self.gw.stop(grace=5)
        if _run("umount", path).returncode != 0:
            _run("umount", "-l", path)

    def need(self, *tools):
        missing = [t for t in tools if not shutil.which(t)]
        if missing:
            self.skipTest("missing tools: %s" % " ".join(missing))

    def mount_tmpfs(self, path, size):
        self.need("mount", "umount")
        os.makedirs(path, exist_ok=True)
        r = _run("mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here (need root and CAP_SYS_ADMIN): %s"
                          % r.stdout.decode(errors="replace").strip())
        self.addCleanup(self._unmount, path)

    def mount_ext4(self, path, size_mb=32):
        """A loop-mounted ext4 with errors=remount-ro; returns the loop device."""
        self.need("mount", "umount", "losetup", "mkfs.ext4", "e2fsck")
        img = path + ".img"
        os.makedirs(path, exist_ok=True)
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        r = _run("losetup", "-f", "--show", img)
        if r.returncode != 0:
            self.skipTest("no loop device available: %s" % r.stdout.decode(errors="replace").strip())
        dev = r.stdout.decode().strip()
        self.addCleanup(_run, "losetup", "-d", dev)
        r = _run("mkfs.ext4", "-q", dev)
        if r.returncode != 0:
            self.skipTest("mkfs.ext4 failed: %s" % r.stdout.decode(errors="replace"))
        r = _run("mount", "-o", "errors=remount-ro", dev, path)
        if r.returncode != 0:
            self.skipTest("cannot mount ext4 on a loop device: %s" % r.stdout.decode(errors="replace").strip())
        self.addCleanup(self._unmount, path)
        return dev

    def test_a_disk_full_then_space_returns(self):
        """Spool on a 2 MiB tmpfs that fills: 452/451 (never 250-then-lost, never 5xx); after a
        filler file is deleted new messages get 250; after a kill -9 and restart everything that
        got a 250 is delivered exactly once and nothing that got a 4xx is."""
        mnt = os.path.join(self.tmp, "spoolfs")
        self.mount_tmpfs(mnt, "2m")
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(os.urandom(1_400_000))
        self.bed(sink=False, spool=os.path.join(mnt, "spool"))
        rnd = random.Random(1)
        accepted, refused, replies = [], [], []
        consecutive = 0
        for i in range(60):
            msgid = "<full-%d-%s@%s>" % (i, uuid.uuid4().hex[:8], LOCAL_DOMAIN)
            stage, code, text = send_one(self.port, checked_message(msgid, 60_000, rnd, "full %d" % i))
            replies.append((stage, code, text))
            self.assertLess(code, 500, "5xx while the spool fills (must be 4xx): %s %d %s" % (stage, code, text))
            if stage == "data" and code == 250:
                accepted.append(msgid)
                consecutive = 0
            else:
                refused.append(msgid)
                consecutive += 1
                if consecutive >= 3:
                    break
        log("\ndisk full: %d accepted, then %s" % (len(accepted), sorted(set((s, c, t) for s, c, t in replies if c != 250))))
        self.assertTrue(refused, "60 x 60 kB accepted on a 2 MiB spool?")
        self.assertTrue(self.gw.running(), "gateway died on a full spool")
        for stage, code, text in replies:
            if code != 250:
                self.assertIn(code, (451, 452), "%s: %d %s" % (stage, code, text))
        with self.subTest("ENOSPC answers 452 4.3.1 (contract)"):
            full = [(s, c, t) for s, c, t in replies if c != 250]
            self.assertTrue(all(c == 452 and t.startswith("4.3.1") for s, c, t in full), full)

        os.unlink(filler)  # space returns
        t0 = time.monotonic()
        after = []
        for i in range(4):
            msgid = "<after-%d-%s@%s>" % (i, uuid.uuid4().hex[:8], LOCAL_DOMAIN)
            while True:
                stage, code, text = send_one(self.port, checked_message(msgid, 20_000, rnd, "after %d" % i))
                self.assertLess(code, 500, "%s %d %s" % (stage, code, text))
                if stage == "data" and code == 250:
                    after.append(msgid)
                    break
                if msgid not in refused:
                    refused.append(msgid)
                self.assertLess(time.monotonic() - t0, 10, "still refused 10 s after space returned: %d %s"
                                % (code, text))
                time.sleep(0.5)
        log("space back: first 250 after %.1fs" % (time.monotonic() - t0))
        refused = [m for m in refused if m not in after]

        # the spool written through ENOSPC must recover after a crash
        self.gw.kill9()
        self.gw.start()
        self.sink.start()
        self.assertDeliveredOnce(accepted + after, timeout=30, settle=3)
        got = [msgid_of(e) for _, e in self.sink.messages()]
        self.assertFalse(set(refused) & set(got), "messages refused with 4xx were delivered anyway "
                         "(the client will send them again): %s" % sorted(set(refused) & set(got)))
        for _, eml in self.sink.messages():
            self.assertTrue(inspect_delivered(eml)[2], inspect_delivered(eml))
        qdir = os.path.join(mnt, "spool", "quarantine")
        log("quarantined after ENOSPC + kill -9: %s" % (os.listdir(qdir) if os.path.isdir(qdir) else []))

    def test_b_read_only_spool(self):
        """The spool's filesystem turns read-only under the gateway (ext4 errors=remount-ro after an
        I/O error): 451 at the end of DATA, never 250, never 5xx; /readyz says not ready when it
        exists; what was accepted before is delivered once the filesystem is repaired.

        (A tmpfs cannot be remounted read-only while the gateway holds its segment open for
        writing -- mount says EBUSY -- so an ext4 loop device forced read-only is used.)"""
        if not os.path.isdir("/sys/fs/ext4"):
            self.skipTest("ext4 not available (no /sys/fs/ext4)")
        mnt = os.path.join(self.tmp, "rofs")
        dev = self.mount_ext4(mnt)
        trigger = "/sys/fs/ext4/%s/trigger_fs_error" % os.path.basename(dev)
        if not os.path.exists(trigger):
            self.skipTest("this kernel has no %s to force the filesystem read-only" % trigger)
        self.bed(sink=False, spool=os.path.join(mnt, "spool"))
        before = []
        for i in range(2):
            msgid = "<pre-ro-%d-%s@%s>" % (i, uuid.uuid4().hex[:8], LOCAL_DOMAIN)
            stage, code, text = send_one(self.port, simple_message("before ro %d" % i, msgid))
            self.assertEqual((stage, code), ("data", 250), text)
            before.append(msgid)
        ready_before = self._readyz()

        with open(trigger, "w") as f:
            f.write("passerelle robustness test: force read-only\n")
        with self.assertRaises(OSError, msg="filesystem still writable"):
            open(os.path.join(mnt, "probe"), "wb").close()

        refused = []
        for i in range(3):
            msgid = "<ro-%d-%s@%s>" % (i, uuid.uuid4().hex[:8], LOCAL_DOMAIN)
            stage, code, text = send_one(self.port, simple_message("during ro %d" % i, msgid))
            log("read-only spool, message %d: %s %d %s" % (i, stage, code, text))
            self.assertNotEqual(code, 250, "250 on a read-only spool: %s %s" % (stage, text))
            self.assertTrue(400 <= code < 500, "must be 4xx: %s %d %s" % (stage, code, text))
            if stage == "data":
                self.assertEqual(code, 451, text)
                self.assertTrue(text.startswith("4.3.0"), text)
            refused.append(msgid)
        self.assertTrue(self.gw.running(), "gateway died when its spool went read-only")
        if ready_before == 200:
            try:
                wait_until(lambda: self._readyz() not in (200,), 10, interval=0.3, what="/readyz not ready")
            except TimeoutError:
                self.fail("/readyz still answers 200 with a read-only spool")
            log("/readyz with a read-only spool: %s" % self._readyz())
        else:
            log("/readyz not checked (answered %r before the fault)" % (ready_before,))

        # repair: stop, fsck, mount read-write again, restart: the 250'd messages are delivered
        self.gw.stop(grace=10)
        self.assertEqual(_run("umount", mnt).returncode, 0, "umount after stopping the gateway")
        _run("e2fsck", "-fy", dev, timeout=120)
        r = _run("mount", "-o", "errors=remount-ro", dev, mnt)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.gw.start()
        self.sink.start()
        self.assertDeliveredOnce(before, timeout=20, settle=2)
        got = [msgid_of(e) for _, e in self.sink.messages()]
        self.assertFalse(set(refused) & set(got), "4xx'd messages delivered: %s" % (set(refused) & set(got)))

    def _readyz(self):
        host, port = self.gw.admin
        try:
            return http_get(host, port, "/readyz", timeout=3)[0]
        except OSError as e:
            return repr(e)

    def test_c_next_hop_down_then_up(self):
        self.bed(sink=False)
        msgid = "<down-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        stage, code, text = send_one(self.port, simple_message("next hop down", msgid))
        self.assertEqual((stage, code), ("data", 250), text)
        time.sleep(2.5)  # a couple of failed attempts (retry 1s)
        self.assertTrue(self.gw.running())
        self.sink.start()
        self.assertDeliveredOnce([msgid], timeout=15)

    def test_d_next_hop_4xx_then_250(self):
        """The next hop answers 451 at the end of DATA, then (restarted without it) 250:
        delivered exactly once."""
        self.bed(sink_opts={"data_reply": "451 4.3.0 later"})
        msgid = "<tempfail-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        stage, code, text = send_one(self.port, simple_message("tempfail then ok", msgid))
        self.assertEqual((stage, code), ("data", 250), text)
        self.sink.wait_log(r"(?m)^.*\bdata \d+", 10)   # the gateway got its 451
        time.sleep(1.5)
        self.assertEqual(self.sink.count(), 0)
        self.sink.stop()
        self.sink.opts.pop("data_reply")
        self.sink.start()
        self.assertDeliveredOnce([msgid], timeout=15, settle=3)
        self.assertRegex(self.gw.log(), r"451 4\.3\.0 later")

    def _served_certificate(self):
        """DER of the certificate the listener shows after STARTTLS (not verified)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            s.ehlo("cert-check." + LOCAL_DOMAIN)
            s.starttls(context=ctx)
            return s.sock.getpeercert(binary_form=True)

    def test_e_certificate_removed_before_reload(self):
        """The certificate file vanishes (a botched renewal) and SIGHUP comes: the reload is
        refused with the reason, the old certificate keeps being served, mail keeps flowing;
        once the file is back, the next reload is taken."""
        pki = dev_pki()
        certs = os.path.join(self.tmp, "renewal")
        os.makedirs(certs)
        cert = os.path.join(certs, "gateway.crt")
        shutil.copy(pki["certificate"], cert)
        shutil.copy(pki["private_key"], os.path.join(certs, "gateway.key"))
        self.bed(starttls="offer", env={"PASSERELLE__TLS__CERTIFICATE": cert,
                                        "PASSERELLE__TLS__PRIVATE_KEY": os.path.join(certs, "gateway.key")})
        with open(cert) as f:
            # the file may hold the chain: the leaf is the first block
            pem = f.read()
        end = "-----END CERTIFICATE-----"
        expected = ssl.PEM_cert_to_DER_cert(pem[:pem.index(end) + len(end)] + "\n")
        self.assertEqual(self._served_certificate(), expected)

        os.remove(cert)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        refused = self.gw.wait_log(r"reload refused.*", 10).group(0)
        self.assertIn("gateway.crt", refused)
        self.assertTrue(self.gw.running())
        self.assertEqual(self._served_certificate(), expected, "the old certificate is no longer served")
        msgid = "<cert-gone-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        stage, code, text = send_one(self.port, simple_message("certificate gone", msgid))
        self.assertEqual((stage, code), ("data", 250), text)
        self.assertDeliveredOnce([msgid], timeout=15, settle=0.5)

        shutil.copy(pki["certificate"], cert)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        self.gw.wait_log(r"configuration reloaded", 10)
        self.assertEqual(self._served_certificate(), expected)


# --------------------------------------------------------------------------- c. attacks

SMUGGLE_VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n.\r\r\n", b"\r\n\x00.\r\n"]


def open_relay_recipients(listener_name):
    ext, dom, lit = "nmap.scanme.org", LOCAL_DOMAIN, "[127.0.0.1]"
    mss = "autre.mssante.fr"
    rc = [
        # nmap smtp-open-relay's list
        "relaytest%%%s@%s" % (ext, lit), "relaytest%%%s@%s" % (ext, dom),
        '"relaytest@%s"' % ext, '"relaytest%%%s"' % ext,
        "relaytest@%s@%s" % (ext, lit), '"relaytest@%s"@%s' % (ext, lit), "relaytest@%s@%s" % (ext, dom),
        "@%s:relaytest@%s" % (lit, ext), "@%s:relaytest@%s" % (dom, ext),
        "%s!relaytest" % ext, "%s!relaytest@%s" % (ext, lit), "%s!relaytest@%s" % (ext, dom),
        "relaytest@%s" % ext, "relaytest@%s" % lit, "postmaster@%s" % lit,
        '"relaytest@%s"@%s' % (ext, dom),
        # the same tricks aimed into the trust space through our own domain
        "dr.x%%%s@%s" % (mss, dom), "%s!dr.x@%s" % (mss, dom), "@%s:dr.x@%s" % (dom, mss),
        "@%s,@%s:dr.x@%s" % (dom, mss, mss), '"dr.x@%s"@%s' % (mss, dom), "dr.x@%s@%s" % (mss, dom),
        "dr.x@[127.0.0.2]", "dr.x@[IPv6:::1]",
    ]
    if listener_name == "trust-space":
        rc.append("dr.x@" + mss)  # only our own domains there: never a relay into the trust space
    return rc


class AttackBase(RobustCase):
    """Raw-socket helpers shared by the attack and limit tests."""

    def raw(self, port=None, source=None):
        c = RawSMTP("127.0.0.1", port or self.port)
        self.addCleanup(c.close)
        code, text = c.reply()
        self.assertEqual(code, 220, c.dump())
        return c

    def read_until_eof(self, c, timeout=5.0):
        """Every reply until the server closes or `timeout`: ([(code, text)], closed)."""
        c.sock.settimeout(timeout)
        out = []
        try:
            while True:
                out.append(c.reply())
        except ConnectionError:
            return out, True
        except OSError:
            return out, False

    def normal_send_ok(self, what, port=None, source=None):
        msgid = "<normal-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        stage, code, text = send_one(port or self.port, simple_message("normal after %s" % what, msgid),
                                     source=source)
        self.assertEqual((stage, code), ("data", 250), "normal client after %s: %s" % (what, text))
        return msgid


class AttackTests(AttackBase):

    def start(self):
        self.trust_port = free_port()
        self.bed(starttls="offer",
                 extra_listeners=[listener("trust-space", self.trust_port, ["local"], starttls="off")])

    def test_a_smtp_smuggling(self):
        """Each non-CRLF end-of-data variant followed by a pipelined second transaction: one
        refusal (bare CR/LF/NUL), never a second message, nothing delivered at all."""
        self.start()
        for i, variant in enumerate(SMUGGLE_VARIANTS):
            with self.subTest(variant=variant):
                c = self.raw()
                self.assertEqual(c.cmd("EHLO attacker." + LOCAL_DOMAIN)[0], 250)
                self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
                self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250, c.dump())
                self.assertEqual(c.cmd("DATA")[0], 354, c.dump())
                c.send(b"From: <" + SENDER.encode() + b">\r\nSubject: carrier %d\r\n\r\nhello" % i + variant
                       + b"MAIL FROM:<evil@" + LOCAL_DOMAIN.encode() + b">\r\nRCPT TO:<victim@autre.mssante.fr>\r\n"
                       b"DATA\r\nFrom: <evil@chu-test.mssante.fr>\r\nSubject: smuggled %d\r\n\r\nSMUGGLED-%d\r\n"
                       b"\r\n.\r\nQUIT\r\n" % (i, i))
                replies, closed = self.read_until_eof(c)
                self.assertTrue(closed, "no close after QUIT: %s" % c.dump())
                codes = [r[0] for r in replies]
                self.assertTrue(codes and 500 <= codes[0] < 600,
                                "%r: expected a 5xx refusal of the message first, got %s\n%s"
                                % (variant, replies, c.dump()))
                self.assertEqual(codes[1:], [221], "%r: replies after the refusal: %s" % (variant, replies))
                c.close()
        self.normal_send_ok("smuggling attempts")
        time.sleep(2)
        msgs = self.sink.messages()
        smuggled = [eml[:300] for _, eml in msgs if b"SMUGGLED-" in eml or b"carrier" in eml]
        self.assertFalse(smuggled, "smuggling carriers/smuggled messages delivered: %s" % smuggled)
        self.assertEqual(len(msgs), 1, "only the normal message should be delivered")

    def test_b_starttls_command_injection(self):
        """`STARTTLS\\r\\nMAIL FROM:<x@y>\\r\\n` in one write: the MAIL is discarded with the
        plaintext buffer; after the handshake and EHLO, RCPT gets 503 (no MAIL)."""
        self.start()
        c = self.raw()
        self.assertEqual(c.cmd("EHLO attacker." + LOCAL_DOMAIN)[0], 250)
        c.send(b"STARTTLS\r\nMAIL FROM:<x@y.mssante.fr>\r\n")
        code, text = c.reply()
        self.assertEqual(code, 220, c.dump())
        self.assertEqual(c.buf, b"", "bytes after the 220 to STARTTLS: %r" % c.buf)
        c.sock.settimeout(0.7)
        try:
            extra = c.sock.recv(4096)
        except socket.timeout:
            extra = b""
        self.assertEqual(extra, b"", "the server answered the injected MAIL in clear: %r" % extra)
        c.sock.settimeout(20)
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname="localhost")
        code, text = c.cmd("EHLO attacker." + LOCAL_DOMAIN)
        self.assertEqual(code, 250, c.dump())
        self.assertNotIn("STARTTLS", text.upper(), "STARTTLS offered again inside TLS")
        code, text = c.cmd("RCPT TO:<%s>" % RCPT)
        self.assertEqual(code, 503, "injected MAIL was kept across STARTTLS: %s\n%s" % (text, c.dump()))
        # the session itself still works
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250, c.dump())
        self.assertEqual(c.cmd("DATA")[0], 354, c.dump())
        msgid = "<after-tls-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        c.send(simple_message("after starttls", msgid) + b".\r\n")
        code, text = c.reply()
        self.assertEqual(code, 250, c.dump())
        c.close()
        self.assertDeliveredOnce([msgid])

    def test_c_open_relay(self):
        """nmap smtp-open-relay style recipients: refused on the establishment listener and on a
        trust-space-like listener, DATA never reaches 354, nothing delivered."""
        self.start()
        accepted = []
        for lname, port in (("etablissement", self.port), ("trust-space", self.trust_port)):
            senders = [SENDER, "", "antispam@[127.0.0.1]"]
            for j, rcpt in enumerate(open_relay_recipients(lname)):
                frm = senders[j % len(senders)]
                with self.subTest(listener=lname, rcpt=rcpt, mail_from=frm):
                    c = self.raw(port)
                    self.assertEqual(c.cmd("EHLO relaytest.example")[0], 250)
                    code, text = c.cmd("MAIL FROM:<%s>" % frm)
                    if code != 250:  # refusing such a sender is fine; test the recipient anyway
                        self.assertTrue(500 <= code < 600, c.dump())
                        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
                    code, text = c.cmd("RCPT TO:<%s>" % rcpt)
                    if code < 300:
                        accepted.append((lname, frm, rcpt, code, text))
                    self.assertIn(code, (501, 550, 553, 554), "%s: RCPT TO:<%s> -> %d %s" % (lname, rcpt, code, text))
                    if code == 554:
                        self.assertTrue(text.startswith("5.7.1"), text)
                    code, text = c.cmd("DATA")
                    self.assertNotEqual(code, 354, "%s: DATA accepted after RCPT TO:<%s>\n%s" % (lname, rcpt, c.dump()))
                    c.close()
        self.normal_send_ok("open relay probes")
        time.sleep(1.5)
        self.assertEqual(self.sink.count(), 1, "only the normal message should be delivered")
        self.assertFalse(accepted, accepted)


class LimitTests(AttackBase):
    """[smtp] limits; in each case a concurrent normal client keeps getting 250s."""

    SMTP = {"timeout": "2s", "min_data_rate": 100, "client_connection_limit": 5,
            "message_size_limit": 200_000, "recipient_limit": 1000, "command_line_limit": 2048,
            "line_length_limit": 1000, "hard_error_limit": 20}

    def start(self):
        self.bed(smtp=self.SMTP)

    @contextlib.contextmanager
    def normal_traffic(self, source="127.0.0.1", min_sends=2, interval=0.25):
        """A client sending whole messages in a loop while the body of the with-block runs."""
        results, stop = [], threading.Event()

        def loop():
            i = 0
            while not stop.is_set() or len(results) < min_sends:
                i += 1
                msgid = "<normal-%d-%s@%s>" % (i, uuid.uuid4().hex[:8], LOCAL_DOMAIN)
                try:
                    r = send_one(self.port, simple_message("normal %d" % i, msgid), source=source, timeout=10)
                except (OSError, smtplib.SMTPException) as e:
                    r = ("exception", 0, repr(e))
                results.append((msgid, r))
                stop.wait(interval)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield results
        finally:
            stop.set()
            t.join(30)
        bad = [(m, r) for m, r in results if r[:2] != ("data", 250)]
        self.assertFalse(bad, "the concurrent normal client (from %s) was affected: %s" % (source, bad))
        self.assertGreaterEqual(len(results), min_sends)
        self.assertDeliveredOnce([m for m, _ in results], settle=0.5)

    def test_d_long_command_line(self):
        self.start()
        with self.normal_traffic():
            c = self.raw()
            self.assertEqual(c.cmd("EHLO big." + LOCAL_DOMAIN)[0], 250)
            for n in (3000, 200_000):
                code, text = c.cmd("MAIL FROM:<%s@%s>" % ("a" * n, LOCAL_DOMAIN))
                self.assertEqual(code, 500, c.dump())
                self.assertTrue(text.startswith("5.5.2"), text)
            # the session goes on
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
            self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250, c.dump())
            c.close()

    def test_e_long_data_line_and_size(self):
        self.start()
        rejected = []
        with self.normal_traffic():
            c = self.raw()
            self.assertEqual(c.cmd("EHLO big." + LOCAL_DOMAIN)[0], 250)
            # a 1500-octet line in DATA
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            mid = "<longline-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
            rejected.append(mid)
            c.send(simple_message("long line", mid, body="x" * 1500 + "\r\nend\r\n") + b".\r\n")
            code, text = c.reply()
            self.assertEqual(code, 550, c.dump())
            self.assertTrue(text.startswith("5.6.0"), text)
            # SIZE= above the limit
            code, text = c.cmd("MAIL FROM:<%s> SIZE=300000" % SENDER)
            self.assertEqual(code, 552, c.dump())
            # actually too big (no SIZE=)
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
            self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250, c.dump())
            self.assertEqual(c.cmd("DATA")[0], 354)
            mid = "<toobig-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
            rejected.append(mid)
            c.send(simple_message("too big", mid, body=("y" * 998 + "\r\n") * 300) + b".\r\n")
            code, text = c.reply()
            self.assertEqual(code, 552, c.dump())
            # the session still works
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250, c.dump())
            c.close()
        got = [msgid_of(e) for _, e in self.sink.messages()]
        self.assertFalse(set(rejected) & set(got))

    def test_f_recipient_limit(self):
        """1001 pipelined RCPTs: 1000 x 250, then 452; the message goes to the 1000."""
        self.start()
        with self.normal_traffic():
            c = self.raw()
            self.assertEqual(c.cmd("EHLO many." + LOCAL_DOMAIN)[0], 250)
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250)
            c.send(b"".join(b"RCPT TO:<dr.%d@autre.mssante.fr>\r\n" % i for i in range(1001)))
            codes = [c.reply()[0] for _ in range(1001)]
            self.assertEqual(codes[:1000], [250] * 1000, "first 1000 recipients: %s" % sorted(set(codes[:1000])))
            self.assertEqual(codes[1000], 452, c.dump()[-500:])
            self.assertEqual(c.cmd("DATA")[0], 354)
            mid = "<many-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
            c.send(simple_message("1000 recipients", mid) + b".\r\n")
            code, text = c.reply()
            self.assertEqual(code, 250, text)
            c.close()
        for meta, eml in self.sink.messages():
            if msgid_of(eml) == mid:
                self.assertEqual(len(rcpts(meta)), 1000)
                break
        else:
            self.fail("the 1000-recipient message was not delivered")

    def _trickle(self, chunks, pause, out, key):
        """DATA then `chunks` sent one every `pause` s: (reply after the cut, seconds to the cut)."""
        c = RawSMTP("127.0.0.1", self.port)
        try:
            c.reply()
            c.cmd("EHLO slow." + LOCAL_DOMAIN)
            c.cmd("MAIL FROM:<%s>" % SENDER)
            c.cmd("RCPT TO:<%s>" % RCPT)
            self.assertEqual(c.cmd("DATA")[0], 354)
            t0 = time.monotonic()
            c.sock.setblocking(False)
            got = b""
            for ch in chunks:
                try:
                    c.sock.send(ch)
                except OSError:
                    break
                end = time.monotonic() + pause
                while time.monotonic() < end:
                    try:
                        d = c.sock.recv(4096)
                        if not d:
                            break
                        got += d
                    except BlockingIOError:
                        time.sleep(0.05)
                    except OSError:
                        break
                if got:
                    break
                if time.monotonic() - t0 > 30:
                    break
            out[key] = (got.decode(errors="replace"), time.monotonic() - t0)
        finally:
            with contextlib.suppress(Exception):
                c.sock.close()

    def test_g_slow_trickle(self):
        """timeout 2s, min_data_rate 100 B/s: 1 byte/s in DATA, and a short line every second,
        are both cut with 421 within a few seconds."""
        self.start()
        out = {}
        with self.normal_traffic(interval=0.4):
            body = simple_message("slow") * 10
            ts = [threading.Thread(target=self._trickle, args=([body[i:i + 1] for i in range(len(body))], 1.0, out, "byte"), daemon=True),
                  threading.Thread(target=self._trickle, args=([b"line %d\r\n" % i for i in range(100)], 1.0, out, "line"), daemon=True)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(40)
        for key in ("byte", "line"):
            self.assertIn(key, out)
            text, took = out[key]
            log("trickle by %s: cut after %.1fs with %r" % (key, took, text.strip()))
            self.assertRegex(text, r"^421 4\.4\.2", "%s trickle: %r after %.1fs" % (key, text, took))
            self.assertLess(took, 8.0, "%s trickle not cut in time" % key)
        self.assertEqual([m for m, e in self.sink.messages() if b"Subject: slow" in e], [])

    def test_h_connection_flood(self):
        """client_connection_limit = 5: connections 6..12 from 127.0.0.1 get 421 4.7.0; a client
        bound to 127.0.0.2 still gets 220 and sends; the limit frees when they close."""
        self.start()
        held, refused = [], []
        with self.normal_traffic(source="127.0.0.2"):
            for i in range(12):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=("127.0.0.1", 0))
                self.addCleanup(s.close)
                f = s.makefile("rb")
                line = f.readline().decode(errors="replace")
                if line.startswith("220"):
                    held.append((s, f))
                else:
                    refused.append(line.strip())
                    self.assertEqual(f.read(), b"", "connection not closed after the 421")
                    s.close()
            self.assertEqual(len(held), 5, "connections held: %d, refused: %s" % (len(held), refused))
            self.assertEqual(len(refused), 7)
            for line in refused:
                self.assertRegex(line, r"^421 4\.7\.0 .*[Tt]oo many connections from your address")
            self.normal_send_ok("the flood, from 127.0.0.2", source="127.0.0.2")
            for s, f in held:
                s.sendall(b"QUIT\r\n")
                with contextlib.suppress(OSError):
                    f.read()
                s.close()
        def fresh_ok():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                return s.makefile("rb").readline().startswith(b"220")
        wait_until(fresh_ok, 5, interval=0.2, what="a 127.0.0.1 connection accepted after the flood")
        self.normal_send_ok("the flood, from 127.0.0.1")

    def test_i_too_many_errors(self):
        """hard_error_limit = 20: the 21st error gets 421 4.7.0 and the connection is closed."""
        self.start()
        with self.normal_traffic():
            c = self.raw()
            self.assertEqual(c.cmd("EHLO bad." + LOCAL_DOMAIN)[0], 250)
            for i in range(20):
                code, text = c.cmd("XYZZY %d" % i)
                self.assertTrue(500 <= code < 600, "bad command %d: %d %s" % (i + 1, code, text))
            c.send("XYZZY 21\r\n")
            rest, closed = self.read_until_eof(c)
            self.assertTrue(rest, c.dump())
            self.assertTrue(closed, "connection still open after the 421:\n" + c.dump())
            self.assertEqual(rest[-1][0], 421, c.dump())
            self.assertIn("4.7.0", rest[-1][1])
            self.assertIn("too many errors", rest[-1][1])
            self.assertTrue(all(500 <= code < 600 for code, _ in rest[:-1]), rest)
            self.assertLessEqual(len(rest), 2, rest)


# --------------------------------------------------------------------------- d. outbound hygiene

class FakeNextHop:
    """A next hop that answers STARTTLS with `220` plus injected bytes in the same write, then
    does TLS; it records every line the gateway sends and checks each ends with CRLF and has no
    bare CR/LF inside. After TLS it waits before answering EHLO to see whether the client takes
    the injected reply for the EHLO answer."""

    def __init__(self, certfile, keyfile, inject=b"250 injected\r\n", ehlo_delay=0.6):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.inject = inject
        self.ehlo_delay = ehlo_delay
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = free_port()
        self.srv.bind(("127.0.0.1", self.port))
        self.srv.listen(16)
        self.conns = []      # one dict per connection
        self.messages = []   # (tls: bool, unstuffed data bytes)
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        with contextlib.suppress(OSError):
            self.srv.close()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(s,), daemon=True).start()

    def _handle(self, sock):
        rec = {"pre": [], "post": [], "bad_lines": [], "tls": False, "tls_error": None,
               "early": b"", "pre_tls_leftover": b"", "log": []}
        with self.lock:
            self.conns.append(rec)
        sock.settimeout(20)
        buf = [b""]

        def send(data):
            rec["log"].append(b"S: " + data)
            sock.sendall(data)

        def line():
            while b"\n" not in buf[0]:
                d = sock.recv(65536)
                if not d:
                    raise ConnectionError("eof")
                buf[0] += d
            ln, buf[0] = buf[0].split(b"\n", 1)
            ln += b"\n"
            if not ln.endswith(b"\r\n") or b"\r" in ln[:-2]:
                rec["bad_lines"].append(ln[:200])
            rec["log"].append(b"C: " + ln[:200])
            return ln[:-2] if ln.endswith(b"\r\n") else ln[:-1]

        try:
            send(b"220 fake-hop.autre.mssante.fr ESMTP\r\n")
            while True:
                ln = line()
                (rec["post"] if rec["tls"] else rec["pre"]).append(ln)
                verb = ln.split(b" ", 1)[0].upper()
                if verb in (b"EHLO", b"HELO"):
                    if rec["tls"] and len([x for x in rec["post"] if x.upper().startswith(b"EHLO")]) == 1:
                        # first EHLO inside TLS: wait, and see whether the client goes on alone
                        sock.settimeout(self.ehlo_delay)
                        try:
                            early = sock.recv(65536)
                        except (socket.timeout, ssl.SSLWantReadError):
                            early = b""
                        sock.settimeout(20)
                        rec["early"] = early
                        buf[0] += early
                    ext = [b"fake-hop.autre.mssante.fr", b"PIPELINING", b"8BITMIME", b"SIZE 50000000"]
                    if not rec["tls"]:
                        ext.append(b"STARTTLS")
                    send(b"".join(b"250%s%s\r\n" % (b" " if i == len(ext) - 1 else b"-", e)
                                  for i, e in enumerate(ext)))
                elif verb == b"STARTTLS" and not rec["tls"]:
                    send(b"220 2.0.0 ready\r\n" + self.inject)
                    rec["pre_tls_leftover"] = buf[0]
                    buf[0] = b""
                    try:
                        sock = self.ctx.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError) as e:
                        rec["tls_error"] = repr(e)
                        return
                    rec["tls"] = True
                elif verb == b"MAIL" or verb == b"RCPT" or verb == b"RSET" or verb == b"NOOP":
                    send(b"250 2.0.0 ok\r\n")
                elif verb == b"DATA":
                    send(b"354 go ahead\r\n")
                    data = []
                    while True:
                        d = line()
                        if d == b".":
                            break
                        data.append(d[1:] if d.startswith(b".") else d)
                    with self.lock:
                        self.messages.append((rec["tls"], b"".join(x + b"\r\n" for x in data), list(data)))
                    send(b"250 2.0.0 fake queued\r\n")
                elif verb == b"QUIT":
                    send(b"221 2.0.0 bye\r\n")
                    return
                else:
                    send(b"502 5.5.1 unknown\r\n")
        except (OSError, ConnectionError, ssl.SSLError) as e:
            rec["log"].append(b"E: " + repr(e).encode())
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def dump(self):
        with self.lock:
            return "\n\n".join("\n".join(x.decode("latin-1").rstrip() for x in r["log"]) for r in self.conns)


class OutboundHygieneTests(RobustCase):

    def test_a_starttls_injection_and_line_hygiene(self):
        """The next hop injects `250 injected` after its 220 to STARTTLS: the gateway (tls =
        opportunistic) discards it, redoes EHLO inside TLS and waits for the real reply; every
        line it sends ends with CRLF, and dotted lines arrive correctly stuffed."""
        pki = dev_pki()
        hop = FakeNextHop(pki["certificate"], pki["private_key"])
        self.addCleanup(hop.close)
        self.sink = self.peer("sink")
        self.port = free_port()
        cfg = gateway_config(self.tmp, [listener("etablissement", self.port, ["local", "mssante", "others"],
                                                 starttls="off")], ROUTES,
                             {"trust-space": relay_transport(hop.port, tls="opportunistic"),
                              "etablissement": relay_transport(self.sink.port)})
        self.gw = self.gateway(cfg)

        long_plain = "L" * 990
        body = ("premiere ligne\r\n"
                ".ligne qui commence par un point\r\n"
                "..deux points\r\n"
                ".\r\n"
                ". \r\n"
                "." + "D" * 989 + "\r\n"
                + long_plain + "\r\n"
                + ("%s\r\n" % ("0123456789" * 99)) * 3 +
                "\r\n"
                ".\r\n"
                "fin\r\n")
        msgid = "<hygiene-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        raw = simple_message("hygiene", msgid, body=body)
        stage, code, text = send_one(self.port, raw)
        self.assertEqual((stage, code), ("data", 250), text)
        # and one by BDAT (no stuffing on the way in: the gateway must stuff on the way out)
        msgid2 = "<hygiene-bdat-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        raw2 = simple_message("hygiene bdat", msgid2, body=body)
        c = RawSMTP("127.0.0.1", self.port)
        self.addCleanup(c.close)
        c.reply()
        c.cmd("EHLO bdat." + LOCAL_DOMAIN)
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER)[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT)[0], 250)
        c.send(b"BDAT %d LAST\r\n" % len(raw2) + raw2)
        self.assertEqual(c.reply()[0], 250, c.dump())
        c.close()

        try:
            wait_until(lambda: len(hop.messages) >= 2, 20, interval=0.2, what="2 messages at the fake next hop")
        except TimeoutError:
            self.fail("not delivered to the fake next hop:\n%s\n--- gateway log:\n%s"
                      % (hop.dump(), "\n".join(self.gw.log().splitlines()[-30:])))
        time.sleep(2.5)  # let the cached connection QUIT
        transcript = hop.dump()
        if os.environ.get("E2E_VERBOSE"):
            log("fake next hop transcript:\n" + transcript)
        for rec in hop.conns:
            self.assertIsNone(rec["tls_error"], "TLS handshake failed after the injected bytes (the "
                              "gateway fed them to TLS?):\n" + transcript)
            self.assertEqual(rec["bad_lines"], [], "lines not ending in CRLF / with bare CR or LF:\n" + transcript)
            self.assertEqual(rec["pre_tls_leftover"], b"", "the gateway pipelined after STARTTLS:\n" + transcript)
            if rec["tls"]:
                self.assertTrue(rec["post"] and rec["post"][0].upper().startswith(b"EHLO"),
                                "first command inside TLS is not EHLO:\n" + transcript)
                self.assertEqual(rec["early"], b"", "the gateway went on before the EHLO reply inside TLS "
                                 "(it took the injected '250 injected' for it):\n" + transcript)
                verbs = [x.split(b" ", 1)[0].split(b":", 1)[0].upper() for x in rec["post"]]
                self.assertNotIn(b"STARTTLS", verbs, transcript)
        self.assertEqual(len(hop.messages), 2, "delivered more than once:\n" + transcript)
        for tls, data, lines in hop.messages:
            self.assertTrue(tls, "delivered in clear although STARTTLS was offered (opportunistic):\n" + transcript)
        received = {msgid_of(d): d for _, d, _ in hop.messages}
        for mid, original in ((msgid, raw), (msgid2, raw2)):
            self.assertIn(mid, received, transcript)
            d = received[mid]
            self.assertTrue(d.endswith(original), "relayed content differs from the original:\n%r" % d[-1500:])
            self.assertTrue(d.startswith(b"Received: "), d[:200])


if __name__ == "__main__":
    unittest.main()
