"""Trust-space mix, Postfix and passerelle side by side in one run (issue 17).

Bed (loopback only):
  - 20 operators: mss-peer --discard on 127.0.0.(OP_BASE+i), one port for all, STARTTLS and a
    client certificate required (dev CA); each with its own certificate DN. Their --log counts
    TLS sessions: `tls ok ... handshake=full|resumed`.
  - 1,000 recipient domains dNNNN.bench.mssante.fr. Whitelist (unsigned, as the tests load
    it): operator 0's DN declared for domains 0-499, the other 500 spread round-robin over
    operators 1-19 (the real list: one DN for 2,742 of 4,944 domains).
  - passerelle: transport kind = "mx", tls = "mutual" (chain, CRLs and DN pin), MX answers from
    a local DNS server (tests/e2e/fakedns.py on 127.0.0.1): MX dNNNN -> mx.opII.bench.test -> A.
  - Postfix: smtp_tls_security_level = encrypt with our certificate, tlsproxy with
    smtp_tls_connection_reuse = yes, a TLS session cache, connection cache on demand (default).
    Postfix cannot ask a DNS server on another port than 53 and the test template disables
    DNS, so its routes are a transport map dNNNN -> smtp:[127.0.0.x]:port: the same hosts the
    MX records give, and one next hop per operator, which lets Postfix's connection cache
    share connections across all the domains of an operator (the best case for it).
  - Load: LOAD_PROCS processes, SESSIONS SMTP sessions in all, each sending its messages one
    after the other (pipelined MAIL/RCPT/DATA); 4 KiB messages, one recipient each, domain
    drawn uniformly over the 1,000 domains (fixed seed: both systems get the same sequence).

Measures per system: msg/s end to end (N / time from the first message until the N-th is at
the operators), new TLS sessions at the operators per 100 messages after warm-up (full and
resumed), and CPU per message (machine-wide busy time minus load client and operators).
"""

import asyncio
import json
import multiprocessing
import os
import random
import re
import sys
import time

import benchlib as B
from fakedns import FakeDNS
from test_trust_space import whitelist_xml

H = B.H


def env_int(k, d):
    return int(os.environ.get(k, d))


N = env_int("TS_N", 4000)
WARMUP = env_int("TS_WARMUP", 1000)
SESSIONS = env_int("TS_SESSIONS", 20)
LOAD_PROCS = env_int("TS_LOAD_PROCS", 2)
REPEAT = env_int("TS_REPEAT", 1)
# A steady load instead of saturation: messages a second in all, spread evenly over the
# sessions (0 = each session sends as fast as the gateway answers).
RATE = float(os.environ.get("TS_RATE", "0"))
OPS = 20
PERF = os.environ.get("TS_PERF")   # a directory: perf record the gateway during the measure
DOMAINS = 1000
OP_BASE = 60          # operators on 127.0.0.60-79
SYSTEMS = [s for s in os.environ.get("TS_SYSTEMS", "postfix,passerelle,nojournal").split(",") if s]
SENDER = "bench@chu-bench.mssante.fr"
# Connection age past which both systems open a new one (passerelle's connection_reuse_time
# default, Postfix's smtp_connection_reuse_time_limit): what renews a steady pool.
REUSE_TIME = 300


def domain(i):
    return "d%04d.bench.mssante.fr" % i


def op_of(i):
    return 0 if i < DOMAINS // 2 else 1 + (i % (OPS - 1))


def op_ip(k):
    return "127.0.0.%d" % (OP_BASE + k)


def op_dn(k):
    return "CN=mx.op%02d.bench.test,OU=9999999999%05d,O=OPERATEUR BENCH %02d,C=FR" % (k, k, k)


def body(i):
    head = ("From: <%s>\r\nTo: <x@bench.mssante.fr>\r\nSubject: bench %d\r\nMessage-ID: <%d.%f@bench>\r\n\r\n"
            % (SENDER, i, i, time.time()))
    line = ("x" * 74 + "\r\n").encode()
    data = head.encode()
    while len(data) + len(line) <= 4096:
        data += line
    return data + b"y" * (4096 - len(data) - 2) + b"\r\n"


# --------------------------------------------------------------------------- load client

async def _reply(reader):
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _session(port, rcpts, msg, pace):
    """pace: (when the first message is due, seconds between two messages) or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    code, _ = await _reply(reader)
    writer.write(b"EHLO client.bench.test\r\n")
    code, _ = await _reply(reader)
    for i, r in enumerate(rcpts):
        if pace:
            delay = pace[0] + i * pace[1] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        writer.write(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (SENDER.encode(), r.encode()))
        for want in (250, 250, 354):
            code, line = await _reply(reader)
            if code != want:
                raise RuntimeError("%s: %r" % (r, line))
        writer.write(msg + b".\r\n")
        code, line = await _reply(reader)
        if code != 250:
            raise RuntimeError("DATA %s: %r" % (r, line))
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


def _load_proc(port, per_session, paces):
    msg = body(0)

    async def run():
        await asyncio.gather(*(_session(port, rcpts, msg, pace) for rcpts, pace in zip(per_session, paces)))
    asyncio.run(run())


def load(port, rcpts):
    """Sends one message per recipient over SESSIONS sessions in LOAD_PROCS processes."""
    sessions = [rcpts[i::SESSIONS] for i in range(SESSIONS)]
    # Paced: session i sends its messages SESSIONS/RATE apart, offset by i/RATE from the others.
    t0 = time.time() + 0.5
    paces = [(t0 + i / RATE, SESSIONS / RATE) if RATE > 0 else None for i in range(SESSIONS)]
    procs = []
    for p in range(LOAD_PROCS):
        mine = sessions[p::LOAD_PROCS]
        pr = multiprocessing.Process(target=_load_proc, args=(port, mine, paces[p::LOAD_PROCS]))
        pr.start()
        procs.append(pr)
    return procs


def draws(n, seed):
    rnd = random.Random(seed)
    return ["r%d@%s" % (i, domain(rnd.randrange(DOMAINS))) for i in range(n)]


# --------------------------------------------------------------------------- bed

class Operators:
    def __init__(self, tmp, p):
        self.port = self._port()
        self.peers = []
        for k in range(OPS):
            crt, key = issue(tmp, p, "op%02d" % k, op_dn(k), op_ip(k))
            self.peers.append(H.Peer(tmp, listen="%s:%d" % (op_ip(k), self.port), name="op%02d" % k,
                                     cert=crt, key=key, require_tls=True, client_ca=p["ca"],
                                     require_client_cert=True, discard=True))

    @staticmethod
    def _port():
        for _ in range(50):
            port = H.free_port()
            if all(not H.port_open(op_ip(k), port, 0.05) for k in range(OPS)):
                return port
        raise B.BenchError("no common free port on the operators' addresses")

    def count(self):
        return sum(B.last_counter(p.outfile) for p in self.peers)

    def sessions(self):
        """(full, resumed, connections) TLS sessions / TCP connections seen by all operators."""
        full = resumed = conns = 0
        for p in self.peers:
            log = p.log()
            full += len(re.findall(r"(?m)^tls ok .*handshake=full", log))
            resumed += len(re.findall(r"(?m)^tls ok .*handshake=resumed", log))
            conns += len(re.findall(r"(?m)^connect ", log))
        return full, resumed, conns

    def open_now(self):
        """TCP connections established to the operators at this moment (the systems' pools)."""
        r = B.subprocess.run(["ss", "-Htn", "state", "established", "( dport = :%d )" % self.port],
                             stdout=B.subprocess.PIPE, stderr=B.subprocess.DEVNULL, text=True)
        return sum(1 for line in r.stdout.splitlines()
                   if any(line.split()[-1].startswith(op_ip(k) + ":") for k in range(OPS)))

    def pids(self):
        return {"op%02d" % k: p.proc.pid for k, p in enumerate(self.peers)}


def issue(tmp, p, name, dn, ip):
    d = os.path.join(tmp, "pki", "ops")
    r = B.subprocess.run([B.PASSERELLE_BIN, "pki", "issue", "--dir", p["dir"], "--name", name, "--subject", dn,
                          "--ip", ip, "--dns", "localhost", "--out", d], cwd=tmp, timeout=60,
                         stdout=B.subprocess.PIPE, stderr=B.subprocess.STDOUT)
    if r.returncode != 0:
        raise B.BenchError("pki issue %s: %s" % (name, r.stdout.decode(errors="replace")))
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    os.chmod(d, 0o755)
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


def gateway(tmp, p, ops, dns_port, wl, name, journal):
    port = H.free_port()
    cfg = {
        "server": {"hostname": "passerelle.chu-bench.mssante.fr", "spool": os.path.join(tmp, name, "spool"),
                   "admin": "127.0.0.1:%d" % H.free_port()},
        "tls": {"certificate": p["gw_cert"], "private_key": p["gw_key"], "trust_anchors": p["ca"],
                "crls": p["crls"]},
        "listener": [{"name": "in", "address": "127.0.0.1:%d" % port, "clients": ["127.0.0.0/8"],
                      "starttls": "off", "client_certificate": "off", "routes": ["ts"]}],
        "directory": {"kind": "none"},
        "route": [{"name": "ts", "domains": ["*.bench.mssante.fr"], "transport": "ts", "whitelist": True,
                   "directory": False}],
        "transport": {"ts": {"kind": "mx", "port": ops.port, "tls": "mutual"}},
        "whitelist": {"file": wl},
        "dns": {"nameservers": ["127.0.0.1:%d" % dns_port]},
    }
    if journal:
        cfg["journal"] = journal
    env = {"PASSERELLE_LOG": os.environ.get("BENCH_GW_LOG", "info")}
    return H.Gateway(tmp, cfg, env=env, name=name)


def postfix(tmp, p, ops):
    lines = ["%s smtp:[%s]:%d" % (domain(i), op_ip(op_of(i)), ops.port) for i in range(DOMAINS)]
    main = dict(smtp_tls_security_level="encrypt", smtp_tls_cert_file=p["gw_cert"], smtp_tls_key_file=p["gw_key"],
                smtp_tls_CAfile=p["ca"], smtp_tls_connection_reuse="yes",
                smtp_tls_session_cache_database="btree:$data_directory/smtp_scache",
                smtp_tls_loglevel="0", smtp_connection_cache_on_demand="yes")
    pf = H.Postfix(tmp, "ts", transport_map_lines=lines, smtp_tls_security_level="encrypt", extra_main_cf=main,
                   mydomain="chu-bench.mssante.fr", start=False)
    with open(os.path.join(pf.etc, "master.cf"), "a") as f:
        f.write("tlsproxy  unix  -       -       n       -       0       tlsproxy\n")
    return pf.start()


# --------------------------------------------------------------------------- runs

def tree_ticks(root):
    """CPU ticks of a process tree (Postfix: master and all its daemons): utime + stime of
    every live process under `root`, plus what the reaped ones left in their parents' cutime +
    cstime. A daemon that exits between two readings moves from one term to the other."""
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        stats[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    inside, total, changed = {root}, 0, True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in inside and pid not in inside:
                inside.add(pid)
                changed = True
    return sum(stats[p][1] for p in inside if p in stats)


def run(system, port, ops, warm, rcpts, pids, verify, tree=None):
    """One run: the warm-up messages then the measured ones in ONE continuous load, so the
    measure starts with the connections and TLS sessions the warm-up left, as in steady
    traffic. The measure starts when the operators have counted the warm-up messages.
    Returns (msg/s end to end, CPU dict, the bench process's own ms/msg, (full, resumed,
    connections) during the measure)."""
    n = len(rcpts)
    before = ops.count()
    procs = load(port, warm + rcpts)
    deadline = time.monotonic() + 600

    def wait(target):
        while ops.count() - before < target:
            if time.monotonic() > deadline:
                raise B.BenchError("%s: %d of %d delivered after 600 s" % (system, ops.count() - before, target))
            if not any(p.is_alive() for p in procs) and any(p.exitcode for p in procs):
                raise B.BenchError("%s: a load client failed" % system)
            time.sleep(0.02)
    wait(len(warm))
    perf = None
    if PERF and pids.get("gateway"):
        # A profile of the gateway over the measure (call graphs, 999 Hz), reported at the end.
        perf = B.perf_record(os.path.join(PERF, "%s.perf.data" % system), pids["gateway"])
    tree0 = tree_ticks(tree) if tree else None
    s0 = ops.sessions()
    self0 = sum(os.times()[:2])
    cpu = B.CpuMeter(pids)
    t0 = time.monotonic()
    # The pools as the measure ends, while the load still runs (the last messages in flight).
    wait(len(warm) + n - max(1, n // 50))
    pool = ops.open_now()
    wait(len(warm) + n)
    t_end = time.monotonic()
    B.perf_stop(perf)
    for p in procs:
        p.join(60)
    c = cpu.stop(n)
    if tree:
        c["tree"] = (1000.0 * (tree_ticks(tree) - tree0) / B.CLK_TCK / n, 0)
    own_ms = 1000.0 * (sum(os.times()[:2]) - self0) / n
    s1 = ops.sessions()
    verify()
    return n / (t_end - t0), c, own_ms, tuple(b - a for a, b in zip(s0, s1)), pool


def main():
    B.install_signal_handlers()
    B.need("postfix")
    tmp = B.workdir("passerelle-bench-trustspace.")
    B.log("trust-space bench: N=%d warm-up=%d sessions=%d (%d load processes), %s, %s" % (
        N, WARMUP, SESSIONS, LOAD_PROCS, B.machine(), time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    B.log("binaries: " + B.freeze_binaries(tmp))
    p = B.pki(tmp)
    ops = Operators(tmp, p)
    zone = {domain(i): {"MX": [(10, "mx.op%02d.bench.test" % op_of(i))]} for i in range(DOMAINS)}
    zone.update({"mx.op%02d.bench.test" % k: {"A": [op_ip(k)]} for k in range(OPS)})
    dns = FakeDNS(zone).start()
    wl = os.path.join(tmp, "listeblanchemssante.xml")
    with open(wl, "w") as f:
        f.write(whitelist_xml([(domain(i), op_dn(op_of(i))) for i in range(DOMAINS)]))
    beds = {}
    if "postfix" in SYSTEMS:
        pf = postfix(tmp, p, ops)

        def pf_verify(expect):
            def v():
                H.wait_until(lambda: B.postfix_queue_empty(pf), 30, interval=0.2, what="postfix queue empty")
            return v
        beds["postfix"] = (pf.port, lambda: {}, pf_verify, lambda: pf.master_pid)

    def add_gateway(system, journal):
        gw = gateway(tmp, p, ops, dns.port, wl, system, journal)

        def gw_verify(expect):
            def v():
                H.wait_until(lambda: B.gw_queue_count(gw) == 0, 30, interval=0.5, what="gateway queue empty")
                bad = B.gw_other_results(gw)
                if bad:
                    raise B.BenchError("%s: non-sent deliveries: %s" % (system, bad))
            return v
        beds[system] = (gw.listener()[1], lambda: {"gateway": B.gw_pid(gw)}, gw_verify, lambda: None)
    if "passerelle" in SYSTEMS:
        # TS_JOURNAL='{"batch_size": 10000}': [journal] settings of the journal-on gateway.
        add_gateway("passerelle", json.loads(os.environ.get("TS_JOURNAL", "{}")) or None)
    if "nojournal" in SYSTEMS:
        add_gateway("nojournal", {"kind": "none"})

    results = {}
    for rep in range(REPEAT):
        for system, (port, pids, verify, tree) in beds.items():
            r = run(system, port, ops, draws(WARMUP, 1000 + rep), draws(N, rep), dict(pids(), **ops.pids()),
                    verify(N), tree())
            e2e, cpu, own_ms, (full, resumed, conns), pool = r
            peers_ms = sum(v[0] for k, v in cpu.items() if k.startswith("op"))
            # The system's own processes: the gateway process, or Postfix's process tree.
            sys_ms = cpu.get("gateway", cpu.get("tree", (float("nan"),)))[0]
            minutes = N / e2e / 60.0
            row = dict(e2e=e2e, full=100.0 * full / N, resumed=100.0 * resumed / N,
                       conns=100.0 * conns / N, sys_ms=sys_ms, machine_ms=cpu["machine"][0],
                       per_op_min=conns / OPS / minutes, pool=pool,
                       # At a steady load the pools stay and only their age renews them:
                       # passerelle's connection_reuse_time (300 s, Postfix's own default).
                       renew_op_min=pool / OPS / (REUSE_TIME / 60.0))
            results.setdefault(system, []).append(row)
            B.log("  %-10s %6.0f msg/s end to end; per 100 msgs: %.2f full + %.2f resumed TLS, "
                  "%.2f connections (%.2f per operator per minute), %d open at the end; CPU ms/msg: system %.3f, machine %.3f (load client %.3f, operators %.3f, "
                  "bench %.3f, the rest is other work on the machine)" % (
                      system, e2e, row["full"], row["resumed"], row["conns"], row["per_op_min"], pool, sys_ms,
                      cpu["machine"][0],
                      cpu["source"][0], peers_ms, own_ms))
            time.sleep(3)   # idle cached connections close before the next system
    dns.stop()

    def rng(system, key, fmt="%.0f"):
        v = [r[key] for r in results.get(system, [])]
        if not v:
            return "-"
        return fmt % v[0] if len(v) == 1 else (fmt + "-" + fmt) % (min(v), max(v))

    print()
    print("Trust-space mix: %d messages of 4 KiB, 1 recipient each over %d domains, %d operators, %d sessions "
          "in, %d run(s) after a %d-message warm-up, %s; %s" % (
              N, DOMAINS, OPS, SESSIONS, REPEAT, WARMUP,
              "paced at %g msg/s" % RATE if RATE > 0 else "as fast as answered", B.machine()))
    print()
    print("| system | msg/s end to end | new TLS sessions /100 msgs (full + resumed) | connections /100 msgs "
          "| new connections /operator/minute | open at the end (renewals /operator/minute at %d s) "
          "| CPU ms/msg (its own processes) |" % REUSE_TIME)
    print("|---|---|---|---|---|---|---|")
    for system in results:
        print("| %s | %s | %s + %s | %s | %s | %s (%s) | %s |" % (
            system, rng(system, "e2e"), rng(system, "full", "%.2f"), rng(system, "resumed", "%.2f"),
            rng(system, "conns", "%.2f"), rng(system, "per_op_min", "%.2f"), rng(system, "pool"),
            rng(system, "renew_op_min", "%.2f"), rng(system, "sys_ms", "%.3f")))
    if "postfix" in results and "passerelle" in results:
        rs = [g["e2e"] / p["e2e"] for g, p in zip(results["passerelle"], results["postfix"])]
        print()
        print("passerelle/postfix end to end: %s" % (
            "%.1fx" % rs[0] if len(rs) == 1 else "%.1fx-%.1fx" % (min(rs), max(rs))))
        # The issue's second yardstick: CPU per message against Postfix's, round by round.
        cs = [p["sys_ms"] / g["sys_ms"] for g, p in zip(results["passerelle"], results["postfix"])]
        print("postfix CPU / passerelle CPU per message, same round: %s" % (
            "%.1fx" % cs[0] if len(cs) == 1 else "%.1fx-%.1fx" % (min(cs), max(cs))))
    if "nojournal" in results and "passerelle" in results:
        rs = [g["e2e"] / p["e2e"] for g, p in zip(results["passerelle"], results["nojournal"])]
        print("journal on / journal off: %s" % (
            "%.0f%%" % (100 * rs[0]) if len(rs) == 1 else "%.0f%%-%.0f%%" % (100 * min(rs), 100 * max(rs))))
    return 0


if __name__ == "__main__":
    B.run_main(main)
