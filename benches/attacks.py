#!/usr/bin/env python3
"""Listeners under attack (issue 25), passerelle and Postfix side by side in one run.

While a legitimate client sends RATE messages per second (each in its own session, from
127.0.0.11: an establishment's MTA known by its address for passerelle, a `mynetworks` client
for Postfix), each attack runs against a fresh instance of each system, both with their
default limits:

  slowloris   3,000 connections from 60 addresses (50 each), one byte every 3 s, never a line
  slow DATA   500 connections from 10 addresses that reach DATA (they are allowed to relay:
              an establishment's network for passerelle, mynetworks for Postfix), then send
              one byte a second
  flood       new sessions as fast as ATTACK_WORKERS threads can open them (greeting, QUIT)
              from 200 addresses, one /24 each (from one /24, passerelle's per-network rate
              limit refuses nearly all of them at once)
  STARTTLS    TLS handshakes as fast as the threads can (greeting, EHLO, STARTTLS, handshake,
              close) from 200 addresses, one /24 each
  10,500      10,500 slow connections from 210 addresses, one /24 each (the attack that
              locked every establishment out before issue 25)

Printed per attack and system: the share of legitimate messages accepted, their p99 (whole
session), the attack's rate (sessions or handshakes per second, or connections held), and the
memory before, during and after (passerelle: its RSS; Postfix: the PSS of all its processes,
master and children, which is what they really cost together).

Usage: benches/attacks.sh [--seconds 15] [--rate 50] [--only NAME[,NAME]] [--no-postfix]
"""

import argparse
import os
import smtplib
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import benchlib as B

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from attackers import SlowConnections, addresses, percentile  # noqa: E402  (shared with the e2e test)

H = B.H
EST_IP = "127.0.0.11"
ATK_NET = "127.60.0.0/16"  # slow DATA attackers: allowed to relay (see the docstring)
A_DOM, B_DOM, ATK_DOM = "chu-a.mssante.fr", "chu-b.mssante.fr", "chu-atk.mssante.fr"


def message(sender, rcpt, n):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: bench %d\r\nMessage-ID: <atk-%d@bench>\r\n\r\n%s\r\n"
            % (sender, rcpt, n, n, ("x" * 76 + "\r\n") * 26)).encode()


# --------------------------------------------------------------------------- systems

class Passerelle:
    name = "passerelle"

    def __init__(self, tmp, p, sink_port, tag):
        self.port = H.free_port()
        box = {"mailbox": "%s:%d" % (B.LOOPBACK, sink_port), "mailbox_tls": "none"}
        cfg = {
            "server": {"hostname": "passerelle.bench.test", "spool": os.path.join(tmp, tag, "spool"),
                       "admin": "%s:%d" % (B.LOOPBACK, H.free_port())},
            "tls": {"certificate": p["gw_cert"], "private_key": p["gw_key"], "trust_anchors": p["ca"],
                    "crls": p["crls"]},
            # The establishments' listener, defaults for every limit: any address may come in,
            # since chu-d is known by its certificate (shown after STARTTLS); without such an
            # establishment every unknown address is refused at connect (`not_allowed`) and no
            # attacker ever holds a session.
            "listener": [{"name": "in", "address": "%s:%d" % (B.LOOPBACK, self.port), "clients": [],
                          "establishments": True, "starttls": "offer", "client_certificate": "request",
                          "routes": ["establishments", "others"]}],
            "directory": {"kind": "none"},
            "route": [{"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"}],
            "transport": {},
            "establishment": [
                dict(name="chu-a", domains=[A_DOM], clients=[EST_IP], **box),
                dict(name="chu-b", domains=[B_DOM], clients=["127.0.0.12"], **box),
                dict(name="chu-atk", domains=[ATK_DOM], clients=[ATK_NET], **box),
                dict(name="chu-d", domains=["chu-d.mssante.fr"], client_dns=["CN=mta.chu-d.fr,O=CHU D,C=FR"], **box),
            ],
        }
        self.g = H.Gateway(tmp, cfg, env={"PASSERELLE_LOG": "info"}, name=tag, start=False)
        self.g.start()

    def mem_kb(self):
        return B.proc_status(self.g.proc.pid, "VmRSS") or 0

    def log_lines(self):
        return self.g.log().count("\n")

    def refusals(self):
        """passerelle_connections_refused_total by reason (and TLS handshake failures)."""
        out = {}
        for k, v in B.gw_metrics(self.g).items():
            if k.startswith(("passerelle_connections_refused_total", "passerelle_tls_handshake_failures_total")):
                reason = k.split('reason="', 1)[-1].split('"', 1)[0]
                name = ("tls:" if "handshake" in k else "") + reason
                out[name] = out.get(name, 0) + int(v)
        return ", ".join("%s %d" % kv for kv in sorted(out.items(), key=lambda kv: -kv[1])) or "none"

    def stop(self):
        self.g.stop()


class Postfix:
    name = "postfix"

    def __init__(self, tmp, p, sink_port, tag):
        # Defaults for every limit (smtpd_client_connection_count_limit 50, process limit 100,
        # no postscreen); STARTTLS offered with the same certificate as passerelle's. No reverse
        # DNS lookup of clients: this machine's resolver answers 127.x slowly under load (5 s
        # stalls), which would measure the resolver, not Postfix; passerelle does none either.
        self.pf = B.bench_postfix(tmp, tag, sink_port, extra={
            "smtpd_tls_security_level": "may", "smtpd_tls_cert_file": p["gw_cert"],
            "smtpd_tls_key_file": p["gw_key"], "smtpd_peername_lookup": "no"})
        self.port = self.pf.port
        self.marker = "MAIL_CONFIG=" + self.pf.etc

    def mem_kb(self):
        return sum(B.proc_pss_kb(x) or 0 for x in B.procs_with_env(self.marker))

    def log_lines(self):
        return self.pf.log().count("\n")

    def refusals(self):
        return "-"

    def stop(self):
        self.pf.stop()


# --------------------------------------------------------------------------- attackers

class Flood:
    """Sessions (or STARTTLS handshakes) opened as fast as `workers` threads can, from
    `addresses` in turn."""

    def __init__(self, port, addresses, workers, tls=False):
        self.port, self.addresses, self.workers, self.tls = port, addresses, workers, tls
        self.stop = threading.Event()
        self.done = self.refused = self.failed = 0
        self.lock = threading.Lock()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(workers)]
        self.t0 = self.t1 = None

    def one(self, src):
        """"done", "refused" (a 4xx or 5xx greeting) or "failed"."""
        with socket.create_connection((B.LOOPBACK, self.port), timeout=5, source_address=(src, 0)) as s:
            f = s.makefile("rb")
            greeting = f.readline()
            if greeting[:1] in (b"4", b"5"):
                return "refused"
            if not greeting.startswith(b"220"):
                return "failed"
            if not self.tls:
                s.sendall(b"QUIT\r\n")
                return "done" if f.readline().startswith(b"221") else "failed"
            s.sendall(b"EHLO flood.bench.test\r\n")
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    break
            s.sendall(b"STARTTLS\r\n")
            if not f.readline().startswith(b"220"):
                return "failed"
            with self.ctx.wrap_socket(s, server_hostname="gw") as t:
                t.do_handshake()
            return "done"

    def run(self, w):
        n = w
        while not self.stop.is_set():
            src = self.addresses[n % len(self.addresses)]
            n += self.workers
            try:
                r = self.one(src)
            except (OSError, ssl.SSLError):
                r = "failed"
            with self.lock:
                setattr(self, r, getattr(self, r) + 1)

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def ready(self):
        return True

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.t1 = time.monotonic()

    def describe(self, seconds):
        what = "handshakes" if self.tls else "sessions"
        wall = max(0.001, (self.t1 or time.monotonic()) - self.t0)
        return "%.0f attempts/s: %.0f %s/s served, %.0f/s refused at once, %d failed or timed out" % (
            (self.done + self.refused + self.failed) / wall, self.done / wall, what, self.refused / wall,
            self.failed)


ATTACKS = {
    "slowloris": lambda port, w: SlowConnections(port, addresses(60, 70), 50),
    "slow-data": lambda port, w: SlowConnections(port, ["127.60.0.%d" % (10 + i) for i in range(10)], 50,
                                                 data=(ATK_DOM, B_DOM), drip=1.0),
    "flood": lambda port, w: Flood(port, addresses(200, 110, per_24=True), w),
    "starttls": lambda port, w: Flood(port, addresses(200, 120, per_24=True), w, tls=True),
    "10500": lambda port, w: SlowConnections(port, addresses(210, 100, per_24=True), 50),
}


# --------------------------------------------------------------------------- legitimate mail

def legit(port, rate, seconds):
    """rate messages per second for `seconds`, one session each: (accepted, total, p99 s)."""
    results = []
    lock = threading.Lock()

    def one(n):
        t0 = time.monotonic()
        ok = False
        try:
            with smtplib.SMTP(B.LOOPBACK, port, timeout=20, source_address=(EST_IP, 0)) as s:
                s.ehlo("mta.chu-a.test")
                s.sendmail("dr.x@" + A_DOM, ["dr.y@" + B_DOM], message("dr.x@" + A_DOM, "dr.y@" + B_DOM, n))
                ok = True
        except (OSError, smtplib.SMTPException):
            ok = False
        with lock:
            results.append((ok, time.monotonic() - t0))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for n in range(rate * seconds):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing an open-loop load, not waiting for a condition
            pool.submit(one, n)
    p99 = percentile([d for _, d in results], 0.99)
    return sum(1 for ok, _ in results if ok), len(results), p99


def settle_memory(system, idle_kb, timeout=20):
    """Memory after the attack: read when it is back within 10% of idle, or at `timeout`."""
    deadline = time.monotonic() + timeout
    kb = system.mem_kb()
    while time.monotonic() < deadline and kb > idle_kb * 1.1:
        time.sleep(0.5)  # polling a reading with a deadline
        kb = system.mem_kb()
    return kb


def run_one(tmp, p, sink, cls, attack, a):
    tag = "%s-%s" % (cls.name, attack)
    system = cls(tmp, p, sink.port, tag)
    try:
        H.wait_until(lambda: H.port_open(B.LOOPBACK, system.port), 20, what=tag + " listening")
        # Warm-up: one message, so that idle memory is that of a gateway that has worked.
        legit(system.port, 5, 1)
        idle = system.mem_kb()
        lines0 = system.log_lines()
        atk = ATTACKS[attack](system.port, a.workers).start()
        # Let the attack build up (slow connections open in a few seconds).
        H.wait_until(atk.ready, 60, what=tag + " attack open")
        during = system.mem_kb()
        accepted, total, p99 = legit(system.port, a.rate, a.seconds)
        during = max(during, system.mem_kb())
        atk.finish()
        desc = atk.describe(a.seconds)
        after = settle_memory(system, idle)
        lines = system.log_lines() - lines0
        refused = system.refusals()
        return dict(system=cls.name, attack=attack, accepted=accepted, total=total, p99=p99, attack_desc=desc,
                    idle_mib=idle / 1024.0, during_mib=during / 1024.0, after_mib=after / 1024.0, log_lines=lines,
                    refused=refused)
    finally:
        system.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("ATTACK_SECONDS", 15)))
    ap.add_argument("--rate", type=int, default=int(os.environ.get("ATTACK_RATE", 50)))
    ap.add_argument("--workers", type=int, default=int(os.environ.get("ATTACK_WORKERS", 16)))
    ap.add_argument("--only", default=",".join(ATTACKS))
    ap.add_argument("--no-postfix", action="store_true")
    a = ap.parse_args()
    for bound, name in ((a.seconds, "--seconds"), (a.rate, "--rate"), (a.workers, "--workers")):
        if not 1 <= bound <= 10000:
            print("error: %s must be between 1 and 10000" % name, file=sys.stderr)
            return 2
    only = [x for x in a.only.split(",") if x]
    unknown = [x for x in only if x not in ATTACKS]
    if unknown:
        print("error: unknown attack(s) %s; known: %s" % (", ".join(unknown), ", ".join(ATTACKS)), file=sys.stderr)
        return 2
    B.install_signal_handlers()
    B.need("smtp-sink", "postfix")
    tmp = B.workdir("bench-attacks-")
    print("binaries: " + B.freeze_binaries(tmp))
    print("machine: " + B.machine())
    print("legitimate load: %d msg/s for %d s, each in its own session, from %s" % (a.rate, a.seconds, EST_IP))
    p = B.pki(tmp)
    sink = B.SmtpSink(tmp)
    sink.start()
    systems = [Passerelle] + ([] if a.no_postfix else [Postfix])
    rows = []
    for attack in only:
        for cls in systems:
            B.log("== %s against %s" % (attack, cls.name))
            r = run_one(tmp, p, sink, cls, attack, a)
            B.log("   %d/%d accepted, p99 %.2f s; %s; memory %.0f / %.0f / %.0f MiB; %d log lines; refused: %s"
                  % (r["accepted"], r["total"], r["p99"], r["attack_desc"], r["idle_mib"], r["during_mib"],
                     r["after_mib"], r["log_lines"], r["refused"]))
            rows.append(r)
    print()
    print("| attack | system | legitimate accepted | p99 | attack | memory idle / during / after (MiB) "
          "| log lines | refused by reason |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %s | %d/%d (%.0f%%) | %.2f s | %s | %.0f / %.0f / %.0f | %d | %s |"
              % (r["attack"], r["system"], r["accepted"], r["total"], 100.0 * r["accepted"] / max(1, r["total"]),
                 r["p99"], r["attack_desc"], r["idle_mib"], r["during_mib"], r["after_mib"], r["log_lines"],
                 r["refused"]))
    sink.stop()
    return 0


if __name__ == "__main__":
    B.run_main(main)
