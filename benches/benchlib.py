"""Shared pieces of the benchmark scripts (Python 3 stdlib + tests/e2e/harness.py).

Everything runs on 127.0.0.1, every wait is bounded, and every process started here is
stopped on exit (harness.stop_everything is registered with atexit; the scripts also call
install_signal_handlers() so SIGTERM/SIGINT/SIGHUP stop everything too).

Pieces:
  SmtpSink      Postfix's smtp-sink with its -c counter written to a file: count() is the
                number of messages whose DATA completed at the sink.
  TlsPeer       the project's test peer (mss-peer) with STARTTLS and a required client
                certificate; count() = messages stored (files <n>.json).
  bench_gateway a passerelle relaying everything ("*") to one next hop.
  bench_postfix a private Postfix relaying everything to one relayhost.
  smtp_source   runs smtp-source with a time limit.
  wait_count    polls a counter until it reaches a target (bounded).
  proc_cpu / proc_rss   /proc readings.
"""

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

import harness as H  # noqa: E402

# Counting a busy gateway's lines must not wait for its log to settle (a few ms late is
# nothing over a measure of seconds; waiting up to 2 s per poll would be).
H.LOG_SETTLE = False

LOOPBACK = "127.0.0.1"
PASSERELLE_BIN = H.PASSERELLE_BIN
SENDER = "bench@chu-bench.mssante.fr"
RCPT = "rcpt@dest.mssante.fr"


class BenchError(Exception):
    pass


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def install_signal_handlers():
    """SIGTERM/SIGINT/SIGHUP: stop every component, then exit (atexit runs too)."""
    def handler(signum, frame):
        H.stop_everything()
        sys.exit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)


def workdir(prefix):
    """A fresh directory under /tmp, or under BENCH_TMP (e.g. a tmpfs, to measure without the
    disk), mode 755 (Postfix's unprivileged daemons enter it), removed on exit unless
    BENCH_KEEP=1."""
    d = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_TMP", "/tmp"))
    os.chmod(d, 0o755)
    if not os.environ.get("BENCH_KEEP"):
        atexit.register(shutil.rmtree, d, True)
    return d


def freeze_binaries(tmp):
    """Copy the gateway and test-peer binaries into tmp and use the copies: a concurrent
    `cargo build` must not swap the binary under a running benchmark."""
    global PASSERELLE_BIN
    info = []
    for attr in ("PASSERELLE_BIN", "MSS_PEER_BIN"):
        src = getattr(H, attr)
        if not os.access(src, os.X_OK):
            continue
        dst = os.path.join(tmp, "bin", os.path.basename(src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
        setattr(H, attr, dst)
        info.append("%s (built %s)" % (os.path.relpath(src, REPO) if src.startswith(REPO) else src,
                                       time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(src)))))
    PASSERELLE_BIN = H.PASSERELLE_BIN
    return ", ".join(info)


def need(*cmds):
    missing = [c for c in cmds if not (shutil.which(c) or os.path.exists("/usr/sbin/" + c))]
    if missing:
        raise BenchError("missing: %s (Debian: apt-get install postfix; the project's tests/install-deps.sh "
                         "installs it)" % " ".join(missing))
    if not os.access(PASSERELLE_BIN, os.X_OK):
        raise BenchError("gateway binary missing: %s (cargo build --release)" % PASSERELLE_BIN)


def machine():
    try:
        model = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except (OSError, IndexError):
        model = "?"
    return "%d cores (%s), load %s" % (os.cpu_count(), model, " ".join(open("/proc/loadavg").read().split()[:3]))


# --------------------------------------------------------------------------- PKI

def pki(tmp):
    """Dev PKI made by `passerelle pki dev`, plus a sink certificate (SAN 127.0.0.1/localhost).
    Returns a dict of paths."""
    d = os.path.join(tmp, "pki")
    r = subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", d], cwd=tmp, timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise BenchError("passerelle pki dev failed: %s" % r.stdout.decode(errors="replace"))
    r = subprocess.run([PASSERELLE_BIN, "pki", "issue", "--dir", d, "--name", "sink",
                        "--subject", "CN=sink.bench.test,O=BENCH,C=FR", "--ip", "127.0.0.1",
                        "--dns", "localhost", "--out", d], cwd=tmp, timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise BenchError("passerelle pki issue failed: %s" % r.stdout.decode(errors="replace"))
    for dirpath, _, files in os.walk(d):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644 if not f.endswith(".key") else 0o600)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    return dict(dir=d, ca=p("ca.pem"), crls=[p("ca.crl"), p("root.crl")],
                gw_cert=p("passerelle.crt"), gw_key=p("passerelle.key"),
                sink_cert=p("sink.crt"), sink_key=p("sink.key"))


# --------------------------------------------------------------------------- sinks

class SmtpSink:
    """smtp-sink -c on a free loopback port; count() reads the last `mesg=N` counter."""

    def __init__(self, tmp, name="sink", backlog=1024, extra=()):
        self.port = H.free_port()
        self.name = name
        self.out = os.path.join(tmp, "%s.out" % name)
        self.proc = None
        self.argv = ["smtp-sink", "-c", "-u", "nobody", "-m", "1000"] + list(extra) + \
                    ["%s:%d" % (LOOPBACK, self.port), str(backlog)]
        self.start()

    def start(self):
        f = open(self.out, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            f.close()
        H._register(self)
        H.wait_port(LOOPBACK, self.port, 10, proc=self.proc)
        return self

    def count(self):
        return last_counter(self.out)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        H.stop_process(self.proc, grace=5)
        H._unregister(self)


_counter_rx = re.compile(rb"mesg=(\d+)")


def last_counter(path):
    """The highest `mesg=N` counter among the last ones a sink printed to `path` (smtp-sink -c,
    mss-peer --discard). Not the last line's: mss-peer takes the number, then prints it, from
    several threads, so "mesg=5000" can come before "mesg=4999" (a bench then waited for
    the 5,000th message that had arrived)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 200))
            tailb = f.read()
    except FileNotFoundError:
        return 0
    m = _counter_rx.findall(tailb)
    return max(int(x) for x in m) if m else 0


class DiscardPeer:
    """mss-peer --discard: a plaintext sink that reads every message like the TLS peer does and
    counts it (`mesg=N` on stdout) without storing it. Faster than smtp-sink at 100 KiB, so a
    relay's own speed shows where smtp-sink would be the limit."""

    def __init__(self, tmp, name="fastsink"):
        self.peer = H.Peer(tmp, name=name, discard=True)
        self.port = self.peer.port
        self.proc = self.peer.proc

    def count(self):
        return last_counter(self.peer.outfile)


class TlsPeer:
    """mss-peer with STARTTLS required and a client certificate required (verified against
    the dev CA). Stores every message as <n>.eml + <n>.json (no fsync)."""

    def __init__(self, tmp, p, name="tlspeer", require_client_cert=True):
        opts = dict(cert=p["sink_cert"], key=p["sink_key"], require_tls=True)
        if require_client_cert:
            opts.update(client_ca=p["ca"], require_client_cert=True)
        self.peer = H.Peer(tmp, name=name, **opts)
        self.port = self.peer.port
        self.proc = self.peer.proc
        self.dir = self.peer.dir
        self.counter = PeerCounter(self.dir)
        self.count = self.counter.count

    def stop(self):
        self.peer.stop()


class PeerCounter:
    """Counts the messages an mss-peer stored in its directory. The peer numbers them 1, 2, ...
    (<n>.json written last), so polling only stats the next numbers: cheap even with many files."""

    def __init__(self, d):
        self.dir = d
        self.known = 0

    def count(self):
        while os.path.exists(os.path.join(self.dir, "%d.json" % (self.known + 1))):
            self.known += 1
        return self.known

    def full_count(self):
        n = 0
        with os.scandir(self.dir) as it:
            for e in it:
                if e.name.endswith(".json") and not e.name.startswith("."):
                    n += 1
        return n


# --------------------------------------------------------------------------- systems under test

def bench_gateway(tmp, name, next_hop_port, p, tls="none", smtp=None, queue=None, loglevel=None,
                  starttls="off", start=True, journal=None):
    """passerelle: one listener (clients 127.0.0.0/8, no STARTTLS), one route "*" to a relay
    transport towards 127.0.0.1:next_hop_port with the given TLS policy. journal: the
    [journal] kind ("none" to measure without it; the default is the SQLite journal)."""
    port = H.free_port()
    cfg = {
        "server": {"hostname": "passerelle.bench.test", "spool": os.path.join(tmp, name, "spool"),
                   "admin": "%s:%d" % (LOOPBACK, H.free_port())},
        "tls": {"certificate": p["gw_cert"], "private_key": p["gw_key"], "trust_anchors": p["ca"],
                "crls": p["crls"]},
        "listener": [{"name": "in", "address": "%s:%d" % (LOOPBACK, port), "clients": ["127.0.0.0/8"],
                      "starttls": starttls, "client_certificate": "off", "routes": ["all"]}],
        "directory": {"kind": "none"},
        "route": [{"name": "all", "domains": ["*"], "transport": "out"}],
        "transport": {"out": {"kind": "relay", "next_hop": "%s:%d" % (LOOPBACK, next_hop_port), "tls": tls}},
    }
    if queue:
        cfg["queue"] = dict(queue)
    if journal:
        cfg["journal"] = {"kind": journal}
    if smtp:
        cfg["smtp"] = dict(smtp)
    env = {"PASSERELLE_LOG": loglevel or os.environ.get("BENCH_GW_LOG", "info")}
    g = H.Gateway(tmp, cfg, env=env, name=name, start=False)
    if start:
        g.start()
    return g


def gw_pid(g):
    return g.proc.pid if g.proc is not None else None


def gw_metrics(g):
    """Metric lines of /metrics as {name{labels}: value}."""
    status, body = H.http_get(g.admin[0], g.admin[1], "/metrics", timeout=10)
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[k] = float(v)
    return out


_metrics_ok = {}


def gw_sent(g, transport="out", result="sent"):
    """Recipients delivered with `result` so far: from /metrics when the admin endpoint answers,
    else counted in the gateway's log (info level: one `status="sent"` line per recipient)."""
    if _metrics_ok.get(g.name, True):
        try:
            m = gw_metrics(g)
            _metrics_ok[g.name] = True
            return int(m.get('passerelle_deliveries_total{transport="%s",result="%s"}' % (transport, result), 0))
        except OSError:
            if g.name not in _metrics_ok:
                log("  (%s: admin endpoint not answering; counting deliveries in its log)" % g.name)
            _metrics_ok[g.name] = False
    return g.log().count('relay=%s status="%s"' % (transport, result))


def gw_other_results(g):
    """{result: count} of deliveries that were not `sent` (metrics, else the log)."""
    if _metrics_ok.get(g.name, True):
        with contextlib.suppress(OSError):
            m = gw_metrics(g)
            return {k: v for k, v in m.items()
                    if k.startswith("passerelle_deliveries_total") and 'result="sent"' not in k and v}
    res = {}
    for st in re.findall(r'status="(\w+)"', g.log()):
        if st != "sent":
            res[st] = res.get(st, 0) + 1
    return res


def gw_queue_count(g, timeout=120):
    rc, out = g.cli("queue", "list", timeout=timeout)
    m = re.search(r"--\s*(\d+)\s+message", out.strip().splitlines()[-1] if out.strip() else "")
    return int(m.group(1)) if m else None


def bench_postfix(tmp, name, relay_port, p=None, tls=False, extra=None):
    """A private Postfix (defaults: fsync'd queue files, default concurrency and connection
    cache) relaying every recipient to [127.0.0.1]:relay_port. tls=True: STARTTLS mandatory
    (smtp_tls_security_level = encrypt) with the gateway's certificate as client certificate."""
    main = {}
    if tls:
        main.update(smtp_tls_security_level="encrypt", smtp_tls_cert_file=p["gw_cert"],
                    smtp_tls_key_file=p["gw_key"], smtp_tls_CAfile=p["ca"])
    main.update(extra or {})
    return H.Postfix(tmp, name, relayhost="[%s]:%d" % (LOOPBACK, relay_port),
                     smtp_tls_security_level="encrypt" if tls else "none", extra_main_cf=main,
                     mydomain="chu-bench.mssante.fr")


def postfix_sent(pf):
    return len(re.findall(r" status=sent ", pf.log()))


def postfix_queue_empty(pf):
    return "Mail queue is empty" in pf.queue()


# --------------------------------------------------------------------------- load and waits

def smtp_source(port, n, sessions=20, length=4096, rcpts=1, reuse=False, timeout=600, host=LOOPBACK):
    """Run smtp-source; returns (rc, seconds, output)."""
    argv = ["smtp-source", "-s", str(sessions), "-m", str(n), "-l", str(length), "-f", SENDER,
            "-M", "client.bench.test"]
    if rcpts > 1:
        argv += ["-r", str(rcpts), "-N"]
    argv += ["-t", RCPT]
    if reuse:
        argv.append("-d")
    argv.append("%s:%d" % (host, port))
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        rc, out = r.returncode, r.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.output or b"").decode("utf-8", "replace") + "\n[smtp-source timed out]"
    return rc, time.monotonic() - t0, out


def wait_count(fn, target, timeout, interval=0.005, stall=None):
    """Poll fn() until >= target. Returns (monotonic time reached, last value).
    Raises TimeoutError on timeout, or when the value did not move for `stall` seconds."""
    deadline = time.monotonic() + timeout
    last, last_move = None, time.monotonic()
    while True:
        v = fn()
        now = time.monotonic()
        if v >= target:
            return now, v
        if v != last:
            last, last_move = v, now
        if now >= deadline:
            raise TimeoutError("timed out after %.0fs at %s of %s" % (timeout, v, target))
        if stall and now - last_move > stall:
            raise TimeoutError("stalled for %.0fs at %s of %s" % (stall, v, target))
        time.sleep(interval)


# --------------------------------------------------------------------------- /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def perf_record(out, pid):
    """Starts recording `pid`'s call graphs (999 Hz) into `out`; stop with perf_stop."""
    return subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", out, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_stop(perf):
    """Ends a perf_record (perf writes its file on SIGINT); None is nothing to stop."""
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(30)


def proc_cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


class CpuMeter:
    """CPU spent during one measured run: machine-wide (all processes, kernel threads, softirq:
    /proc/stat), by smtp-source (this process's reaped children) and by named processes, so a
    run can say who was the limit (a process near 100 % of a core) and what each message cost."""

    def __init__(self, pids):
        self.pids = {k: v for k, v in pids.items() if v}
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.child0 = self._children()
        self.ticks0 = {k: self._ticks(p) for k, p in self.pids.items()}

    @staticmethod
    def _busy():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq (not idle, iowait, steal)

    @staticmethod
    def _children():
        import resource
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def _ticks(pid):
        try:
            return proc_cpu_ticks(pid)
        except (OSError, ValueError):
            return None

    def stop(self, n):
        """{name: (ms CPU per message, % of one core over the run)} for machine, source and pids."""
        wall = max(time.monotonic() - self.t0, 1e-6)
        res = {"machine": (self._busy() - self.busy0) / CLK_TCK, "source": self._children() - self.child0}
        for k, p in self.pids.items():
            t = self._ticks(p)
            if t is not None and self.ticks0[k] is not None:
                res[k] = (t - self.ticks0[k]) / CLK_TCK
        return {k: (1000.0 * v / n, 100.0 * v / wall) for k, v in res.items()}


def proc_status(pid, key):
    """A kB value of /proc/PID/status (VmRSS, VmHWM, Threads...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def procs_named(name, env_marker=None):
    """PIDs whose comm is `name` (and whose environment contains env_marker, if given)."""
    res = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/comm") as f:
                if f.read().strip() != name:
                    continue
            if env_marker is not None:
                with open(d + "/environ", "rb") as f:
                    if env_marker.encode() not in f.read():
                        continue
            res.append(int(d[6:]))
        except OSError:
            continue
    return res


def env_has(pid, marker):
    """Whether process `pid` has `marker` (NAME=VALUE) in its environment."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def procs_with_env(marker):
    """PIDs whose environment holds `marker`: a private Postfix's master and every child it
    started carry MAIL_CONFIG=<its etc>."""
    return [int(x) for x in os.listdir("/proc") if x.isdigit() and env_has(int(x), marker)]


def fmt_rate(x):
    return "-" if x is None else "%.0f" % x


def report_problems(problems):
    """Prints what went wrong in a benchmark run, if anything; returns its exit status."""
    if not problems:
        return 0
    print("\nPROBLEMS:")
    for pr in problems:
        print("  - " + pr)
    return 1


def run_main(main):
    """Runs a benchmark's main(): its status, or 2 with one line when the bed cannot be set up."""
    try:
        sys.exit(main())
    except (BenchError, H.HarnessError) as e:
        print("error: %s" % e, file=sys.stderr)
        sys.exit(2)
