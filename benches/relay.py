#!/usr/bin/env python3
"""Relay throughput, end to end, Postfix and passerelle side by side in one run (issue 6).

For each case the same smtp-source load goes (a) straight into the sink, (b) through a private
Postfix (default settings: queue files fsync'd, 20 parallel deliveries per destination,
connection cache) and (c) through passerelle (spool fsync'd before 250, group commit,
destination_concurrency 20, connection cache 2 s). Rate = N / (time from starting smtp-source
until the sink has received the N-th message). Called by benches/relay.sh; see it for usage.
"""

import os
import sys
import time

import benchlib as B

ENV = os.environ


def env_int(k, d):
    return int(ENV.get(k, d))


N = env_int("RELAY_N", 3000)
SESSIONS = env_int("RELAY_SESSIONS", 20)
REPEAT = env_int("RELAY_REPEAT", 1)
WARMUP = env_int("RELAY_WARMUP", 200)
GW_TLS = ENV.get("RELAY_GW_TLS", "required")          # or "opportunistic"
TLS_SINK_CHECK = ENV.get("RELAY_TLS_SINK_CHECK", "1") == "1"
ONLY = [c for c in ENV.get("RELAY_CASES", "").split(",") if c]
# A/B runs of the gateway alone need not wait for Postfix each round (direct stays: the ratio).
SYSTEMS = [s for s in ENV.get("RELAY_SYSTEMS", "direct,postfix,passerelle").split(",") if s]
# The plain gateway's [journal] kind ("none" measures without it); default: the SQLite journal.
JOURNAL = ENV.get("RELAY_JOURNAL") or None
PERF = ENV.get("RELAY_PERF")   # a directory: perf record the gateway during each measure

CASES = [
    # name, label, smtp-source args, sink: None = smtp-sink, "tls" = mss-peer with STARTTLS and
    # client certificates required, "fast" = mss-peer --discard (plaintext, stores nothing)
    ("4k", "%d sessions x 4 KiB" % SESSIONS, dict(length=4096), None),
    ("100k", "%d sessions x 100 KiB" % SESSIONS, dict(length=102400), None),
    ("rcpt10", "10 recipients/message, 4 KiB", dict(length=4096, rcpts=10), None),
    ("tls", "STARTTLS + client cert out, 4 KiB", dict(length=4096), "tls"),
    ("100k-fast", "%d sessions x 100 KiB, sink mss-peer --discard" % SESSIONS, dict(length=102400), "fast"),
]


class Check:
    problems = []

    @classmethod
    def fail(cls, what):
        cls.problems.append(what)
        B.log("  !! " + what)


def run_one(label, system, port, counter, n, args, expect_msgs, verify=None, pids=None):
    """One measured run: returns (end-to-end msg/s or None on failure, injection msg/s, CPU use
    as B.CpuMeter.stop gives it, measured from the start of smtp-source to the N-th message)."""
    base = counter()
    perf = None
    if PERF and (pids or {}).get("gateway"):
        # A profile of the gateway alone over the measure (call graphs, 999 Hz).
        perf = B.perf_record(os.path.join(PERF, "%s-%s.perf.data" % (label, system)), pids["gateway"])
    meter = B.CpuMeter(pids or {})
    rc, inj, out = B.smtp_source(port, n, sessions=SESSIONS, timeout=max(120, n / 20), **args)
    if rc != 0 or out.strip():
        Check.fail("%s/%s: smtp-source rc=%s output: %s" % (label, system, rc, out.strip()[:500]))
    t0_end = time.monotonic() - inj  # start of smtp-source
    try:
        t_done, _ = B.wait_count(lambda: counter() - base, expect_msgs, timeout=max(120, n / 10), stall=30)
    except TimeoutError as e:
        Check.fail("%s/%s: %s" % (label, system, e))
        return None, inj, None
    cpu = meter.stop(n)
    B.perf_stop(perf)
    e2e = t_done - t0_end
    time.sleep(0.3)
    got = counter() - base
    if got != expect_msgs:
        Check.fail("%s/%s: sink received %d messages, expected %d" % (label, system, got, expect_msgs))
    if verify:
        verify()
    return n / e2e, n / inj, cpu


def main():
    B.install_signal_handlers()
    B.need("smtp-source", "smtp-sink", "postfix")
    tmp = B.workdir("passerelle-bench-relay.")
    cases = [c for c in CASES if not ONLY or c[0] in ONLY]
    want_tls = any(c[3] == "tls" for c in cases)
    want_fast = any(c[3] == "fast" for c in cases)
    B.log("relay bench: N=%d sessions=%d repeat=%d, %s, %s" % (N, SESSIONS, REPEAT, B.machine(),
                                                               time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    B.log("binaries: " + B.freeze_binaries(tmp))
    p = B.pki(tmp)
    sink = B.SmtpSink(tmp, "sink")
    pf = B.bench_postfix(tmp, "plain", sink.port)
    # smtp-source opens a connection per message from one address: more sessions than the
    # shipped per-client limit (50, Postfix's) need room for the closing ones.
    smtp = {"client_connection_limit": 2 * SESSIONS} if 2 * SESSIONS > 50 else None
    gw = B.bench_gateway(tmp, "gw", sink.port, p, tls="none", journal=JOURNAL, smtp=smtp)
    if want_tls:
        tsink = B.TlsPeer(tmp, p, "tlssink")
        psink = B.H.Peer(tmp, name="plainpeer")     # same store code, plaintext: the sink's ceiling
        psink_count = B.PeerCounter(psink.dir).count
        pf_tls = B.bench_postfix(tmp, "tls", tsink.port, p, tls=True)
        gw_tls = B.bench_gateway(tmp, "gwtls", tsink.port, p, tls=GW_TLS, smtp=smtp)
        # sink check: passerelle without TLS into the same kind of mss-peer (does the sink limit?)
        gw_pp = B.bench_gateway(tmp, "gwpeer", psink.port, p, tls="none", smtp=smtp)
    # Per sink: (port, count, pid) for direct, then (system, count, sink pid) for each relay.
    beds = {None: ((sink.port, sink.count, sink.proc.pid), (pf, sink.count), (gw, sink.count), sink.proc.pid)}
    if want_tls:
        beds["tls"] = ((psink.port, psink_count, psink.proc.pid), (pf_tls, tsink.count), (gw_tls, tsink.count),
                       tsink.proc.pid)
    if want_fast:
        fsink = B.DiscardPeer(tmp, "fastsink")
        pf_fast = B.bench_postfix(tmp, "fast", fsink.port)
        gw_fast = B.bench_gateway(tmp, "gwfast", fsink.port, p, tls="none", smtp=smtp)
        beds["fast"] = ((fsink.port, fsink.count, fsink.proc.pid), (pf_fast, fsink.count), (gw_fast, fsink.count),
                        fsink.proc.pid)

    results = {}   # (case, system) -> [e2e rates]
    injects = {}

    cpus = {}      # (case, system) -> [B.CpuMeter.stop() dicts]

    def record(case, system, rates):
        e2e, inj, cpu = rates
        if e2e is not None:
            results.setdefault((case, system), []).append(e2e)
            injects.setdefault((case, system), []).append(inj)
            cpus.setdefault((case, system), []).append(cpu)
            B.log("  %-8s %-10s %7.0f msg/s end to end (injection %5.0f msg/s); CPU ms/msg %s" % (
                case, system, e2e, inj, ", ".join("%s %.3f (%.0f%% of a core)" % (k, v[0], v[1])
                                                  for k, v in sorted(cpu.items()))))

    def pf_verify(pfx, before, expect):
        def v():
            try:
                B.H.wait_until(lambda: B.postfix_sent(pfx) - before >= expect, 10, what="postfix log")
                B.H.wait_until(lambda: B.postfix_queue_empty(pfx), 10, what="postfix queue empty")
            except TimeoutError as e:
                Check.fail("postfix %s: %s (status=sent lines %d, expected %d)" % (
                    pfx.name, e, B.postfix_sent(pfx) - before, expect))
        return v

    def gw_verify(g, before, expect):
        def v():
            try:
                B.H.wait_until(lambda: B.gw_sent(g) - before >= expect, 10, what="gateway sent metric")
                B.H.wait_until(lambda: B.gw_queue_count(g) == 0, 20, interval=0.5, what="gateway queue empty")
            except TimeoutError as e:
                Check.fail("passerelle %s: %s (sent %d of %d, queue %s)" % (
                    g.name, e, B.gw_sent(g) - before, expect, B.gw_queue_count(g)))
            bad = B.gw_other_results(g)
            if bad:
                Check.fail("passerelle %s: non-sent deliveries: %s" % (g.name, bad))
        return v

    # warm-up: process start-up, page cache, TLS session set-up
    if WARMUP:
        B.log("warm-up (%d messages each)" % WARMUP)
        B.smtp_source(sink.port, WARMUP, sessions=SESSIONS)
        for (_, _, _), (pfx, _), (g, _), _ in beds.values():
            for port in (pfx.port, g.listener()[1]):
                B.smtp_source(port, WARMUP, sessions=SESSIONS)
        B.H.wait_until(lambda: all(B.postfix_queue_empty(b[1][0]) for b in beds.values()),
                       60, interval=0.2, what="warm-up delivered by postfix")
        time.sleep(1)

    for rep in range(REPEAT):
        for case, label, args, kind in cases:
            rcpts = args.get("rcpts", 1)
            (dport, dcount, dpid), (pfx, pcount), (g, gcount), spid = beds[kind]
            if "direct" in SYSTEMS:
                record(case, "direct", run_one(case, "direct", dport, dcount, N, args, N, pids={"sink": dpid}))
            if "postfix" in SYSTEMS:
                before = B.postfix_sent(pfx)
                record(case, "postfix", run_one(case, "postfix", pfx.port, pcount, N, args, N,
                                                pf_verify(pfx, before, N * rcpts), pids={"sink": spid}))
            if "passerelle" in SYSTEMS:
                before = B.gw_sent(g)
                record(case, "passerelle", run_one(case, "passerelle", g.listener()[1], gcount, N, args, N,
                                                   gw_verify(g, before, N * rcpts),
                                                   pids={"sink": spid, "gateway": B.gw_pid(g)}))
            if kind == "tls" and TLS_SINK_CHECK:
                before = B.gw_sent(gw_pp)
                record(case, "sinkcheck", run_one(case, "sinkcheck", gw_pp.listener()[1], psink_count, N, args,
                                                  N, gw_verify(gw_pp, before, N * rcpts),
                                                  pids={"sink": psink.proc.pid, "gateway": B.gw_pid(gw_pp)}))

    def cell(case, system):
        v = results.get((case, system))
        if not v:
            return "-" if system in ("direct", "postfix", "passerelle") and system not in SYSTEMS else "FAILED"
        return "%.0f" % v[0] if len(v) == 1 else "%.0f-%.0f" % (min(v), max(v))

    def ratio(case, a, b, pct=False):
        va, vb = results.get((case, a)), results.get((case, b))
        if not va or not vb:
            return "-"
        rs = [x / y for x, y in zip(va, vb)]
        f = (lambda r: "%.0f%%" % (100 * r)) if pct else (lambda r: "%.1fx" % r)
        return f(rs[0]) if len(rs) == 1 else "%s-%s" % (f(min(rs)), f(max(rs)))

    print()
    print("End-to-end relay throughput, msg/s (N=%d per run, %d sessions, one connection per message, "
          "%d run(s)); %s" % (N, SESSIONS, REPEAT, B.machine()))
    print()
    print("| case | smtp-source→smtp-sink | postfix | passerelle | passerelle/postfix | passerelle/direct |")
    print("|---|---|---|---|---|---|")
    for case, label, args, kind in cases:
        direct = cell(case, "direct") + {None: "", "tls": " (mss-peer, plaintext)",
                                         "fast": " (mss-peer --discard)"}[kind]
        print("| %s | %s | %s | %s | %s | %s |" % (label, direct, cell(case, "postfix"), cell(case, "passerelle"),
                                                 ratio(case, "passerelle", "postfix"),
                                                 ratio(case, "passerelle", "direct", pct=True)))
    print()
    print("Injection rates (smtp-source done), msg/s: " + "; ".join(
        "%s %s %s" % (c, s, "/".join("%.0f" % x for x in v)) for (c, s), v in sorted(injects.items())))
    print()
    print("CPU per message, ms (min-max over runs; 'machine' = every process and kernel thread on all cores; "
          "'relay cost' = machine - direct of the same round; 'sink %' = the sink's share of one core):")
    print()
    print("| case | system | machine | relay cost | smtp-source | sink | sink % of a core | passerelle process |")
    print("|---|---|---|---|---|---|---|---|")

    def span(vals, fmt="%.3f"):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        lo, hi = min(vals), max(vals)
        return fmt % lo if fmt % lo == fmt % hi else (fmt + "-" + fmt) % (lo, hi)

    for case, label, args, kind in cases:
        direct = cpus.get((case, "direct"), [])
        for system in ("direct", "postfix", "passerelle", "sinkcheck"):
            runs = cpus.get((case, system))
            if not runs:
                continue
            cost = [r["machine"][0] - d["machine"][0] for r, d in zip(runs, direct)] if system != "direct" else []
            print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                case, system, span([r["machine"][0] for r in runs]), span(cost) if cost else "-",
                span([r["source"][0] for r in runs]), span([r.get("sink", (None,))[0] for r in runs]),
                span([r.get("sink", (None, None))[1] for r in runs], "%.0f%%"),
                span([r.get("gateway", (None,))[0] for r in runs])))
    print()
    print("Targets (issue 6): end to end >= 5x Postfix and >= 40% of smtp-source->smtp-sink; with TLS >= 5x Postfix "
          "with TLS.")
    for case, label, args, kind in cases:
        a, b, c = results.get((case, "passerelle")), results.get((case, "postfix")), results.get((case, "direct"))
        if not a or not b:
            print("  %-8s no result" % case)
            continue
        r_pf = min(x / y for x, y in zip(a, b))
        line = "  %-8s %.1fx Postfix: %s" % (case, r_pf, "met" if r_pf >= 5 else "NOT met")
        if kind != "tls" and c:
            r_d = min(x / y for x, y in zip(a, c))
            line += "; %.0f%% of direct: %s" % (100 * r_d, "met" if r_d >= 0.4 else "NOT met")
        print(line + (" (worst of %d runs)" % len(a) if len(a) > 1 else ""))
    if want_fast:
        print("100k-fast: the same load into mss-peer --discard (reads every message, stores nothing) instead "
              "of smtp-sink, for all three: at 100 KiB smtp-sink is the limit of every system that can keep it "
              "busy (see its share of a core above), this shows the relays' own speed.")
    if want_tls:
        print("TLS case: sink = mss-peer (STARTTLS required, client certificate required); postfix "
              "smtp_tls_security_level=encrypt with a client certificate; passerelle tls=\"%s\"; "
              "direct = smtp-source into a plaintext mss-peer (the sink's own ceiling)." % GW_TLS)
        if results.get(("tls", "sinkcheck")):
            print("Sink check: passerelle with tls=\"none\" into a plaintext mss-peer: %s msg/s (if the TLS figure "
                  "is close to it, the sink, not TLS, is the limit)." % cell("tls", "sinkcheck"))
    if Check.problems:
        print("\nPROBLEMS (%d):" % len(Check.problems))
        for pr in Check.problems:
            print("  - " + pr)
        return 1
    print("All runs verified: every message reached the sink exactly once, Postfix and passerelle queues empty.")
    return 0


if __name__ == "__main__":
    B.run_main(main)
