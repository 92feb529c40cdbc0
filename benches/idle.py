#!/usr/bin/env python3
"""Many concurrent idle SMTP sessions (issue 6): memory of the gateway per idle session.

  idle.py HOST:PORT [--sessions 10000] [--sources 4] [--ehlo] [--hold 5]
      opens the sessions (non-blocking connects in batches of 100 -- the gateway listens with a
      backlog of 128, a bigger burst overflows it and the kernel's SYN retransmissions then
      delay banners by seconds --, source addresses 127.0.0.2... so ephemeral ports never run
      out), waits for every banner, keeps them idle, prints
      how many are up; closes them on exit.
  idle.py --bench
      the run used by benches/idle.sh: passerelle with max_connections/client_connection_limit
      raised, VmRSS before, with 10,000 idle sessions, after closing them; Postfix with its
      default process limit (100 smtpd) for comparison (RSS and PSS of its smtpd processes).
"""

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import sys
import time


class Idle:
    """A set of idle SMTP sessions driven by one selector."""

    def __init__(self, host, port, sources=4, ehlo=False):
        self.host, self.port = host, port
        self.sources = ["127.0.0.%d" % (2 + i) for i in range(max(1, sources))]
        self.ehlo = ehlo
        self.sel = selectors.DefaultSelector()
        self.socks = {}      # fd -> [sock, state, buf]   state: connecting, banner, ehlo, idle, closed
        self.up = 0
        self.failed = 0
        self.errors = {}
        self.n = 0

    def _err(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def open(self, count, batch=100, timeout=60):
        deadline = time.monotonic() + timeout
        while self.n < count and time.monotonic() < deadline:
            k = min(batch, count - self.n)
            for _ in range(k):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.bind((self.sources[self.n % len(self.sources)], 0))
                    rc = s.connect_ex((self.host, self.port))
                except OSError as e:
                    s.close()
                    self.failed += 1
                    self._err("connect: " + errno.errorcode.get(e.errno, str(e.errno)))
                    self.n += 1
                    continue
                if rc not in (0, errno.EINPROGRESS):
                    s.close()
                    self.failed += 1
                    self._err("connect: " + errno.errorcode.get(rc, str(rc)))
                    self.n += 1
                    continue
                self.socks[s.fileno()] = [s, "banner", b""]
                self.sel.register(s, selectors.EVENT_READ)
                self.n += 1
            # wait until this batch is settled (all banners in) before the next one
            self.pump(lambda: self.pending() == 0, min(deadline, time.monotonic() + 20))
        return self.up

    def pending(self):
        return sum(1 for v in self.socks.values() if v[1] in ("banner", "ehlo"))

    def alive(self):
        return sum(1 for v in self.socks.values() if v[1] == "idle")

    def pump(self, done, deadline):
        while not done() and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=0.2):
                self._readable(key.fileobj)

    def _close(self, s, why):
        ent = self.socks.get(s.fileno())
        if ent is None:
            return
        if ent[1] == "idle":
            self.up -= 1
        self._err(why)
        self.sel.unregister(s)
        del self.socks[s.fileno()]
        s.close()
        self.failed += 1

    def _readable(self, s):
        ent = self.socks[s.fileno()]
        try:
            data = s.recv(4096)
        except OSError as e:
            self._close(s, "recv: " + errno.errorcode.get(e.errno, str(e.errno)))
            return
        if not data:
            self._close(s, "closed by server in state " + ent[1])
            return
        ent[2] += data
        while b"\r\n" in ent[2]:
            line, ent[2] = ent[2].split(b"\r\n", 1)
            if line[3:4] == b"-":
                continue
            code = line[:3]
            if ent[1] == "banner":
                if code != b"220":
                    self._close(s, "banner " + line[:60].decode(errors="replace"))
                    return
                if self.ehlo:
                    s.send(b"EHLO idle.bench.test\r\n")
                    ent[1] = "ehlo"
                else:
                    ent[1] = "idle"
                    self.up += 1
            elif ent[1] == "ehlo":
                if code != b"250":
                    self._close(s, "ehlo " + line[:60].decode(errors="replace"))
                    return
                ent[1] = "idle"
                self.up += 1
            else:
                self._err("unexpected: " + line[:60].decode(errors="replace"))

    def hold(self, seconds):
        """Stay idle (reading only, which notices sessions the server closes)."""
        self.pump(lambda: False, time.monotonic() + seconds)

    def close_all(self):
        for fd, ent in list(self.socks.items()):
            try:
                self.sel.unregister(ent[0])
            except (KeyError, ValueError):
                pass
            ent[0].close()
        self.socks.clear()
        self.up = 0


def listen_overflows():
    """TcpExt ListenOverflows of the whole machine (/proc/net/netstat)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
        for a, b in zip(lines[::2], lines[1::2]):
            if a.startswith("TcpExt:"):
                d = dict(zip(a.split()[1:], b.split()[1:]))
                return int(d.get("ListenOverflows", 0))
    except (OSError, ValueError):
        pass
    return 0


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want,
                                                        hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- --bench

def bench(a):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlib as B
    B.install_signal_handlers()
    nofile = raise_nofile(a.sessions + 1000)
    if nofile < a.sessions + 100:
        raise B.BenchError("RLIMIT_NOFILE is %d, need %d (ulimit -n)" % (nofile, a.sessions + 100))
    tmp = B.workdir("passerelle-bench-idle.")
    B.log("binaries: " + B.freeze_binaries(tmp))
    p = B.pki(tmp)
    B.log("idle bench: %d sessions%s, %d source addresses; %s; %s" % (
        a.sessions, " (after EHLO)" if a.ehlo else " (after the banner)", a.sources, B.machine(),
        time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    limit = a.sessions + 1000
    gw = B.bench_gateway(tmp, "gw", B.H.free_port(), p,
                         smtp={"max_connections": limit, "client_connection_limit": limit},
                         loglevel=os.environ.get("BENCH_GW_LOG", "warn"))
    pid = B.gw_pid(gw)
    problems = []
    time.sleep(1)
    rss0 = B.proc_status(pid, "VmRSS")
    idle = Idle("127.0.0.1", gw.listener()[1], sources=a.sources, ehlo=a.ehlo)
    ovf0 = listen_overflows()
    t0 = time.monotonic()
    up = idle.open(a.sessions, timeout=a.open_timeout)
    t_open = time.monotonic() - t0
    idle.hold(a.hold)
    alive = idle.alive()
    ovf = listen_overflows() - ovf0
    rss1 = B.proc_status(pid, "VmRSS")
    hwm = B.proc_status(pid, "VmHWM")
    threads = B.proc_status(pid, "Threads")
    fds = len(os.listdir("/proc/%d/fd" % pid))
    if alive < a.sessions:
        problems.append("passerelle: %d of %d sessions up after %.0f s hold (errors: %s)" % (
            alive, a.sessions, a.hold, idle.errors))
    idle.close_all()
    time.sleep(3)
    rss2 = B.proc_status(pid, "VmRSS")
    gw_alive = gw.running()
    if not gw_alive:
        problems.append("passerelle exited: %s" % B.H.tail(gw.log(), 20))
    res = {"sessions": a.sessions, "up": up, "alive_after_hold": alive, "open_seconds": t_open,
           "rss_before_kb": rss0, "rss_with_sessions_kb": rss1, "vmhwm_kb": hwm, "rss_after_close_kb": rss2,
           "threads": threads, "fds": fds, "errors": idle.errors,
           "listen_overflows": ovf}

    pf_res = None
    if a.postfix:
        pf = B.bench_postfix(tmp, "pf", B.H.free_port())
        marker = "MAIL_CONFIG=" + pf.etc
        n_pf = a.postfix_sessions
        idle_pf = Idle("127.0.0.1", pf.port, sources=a.sources, ehlo=a.ehlo)
        up_pf = idle_pf.open(n_pf, batch=50, timeout=60)
        idle_pf.hold(2)
        smtpd = B.procs_named("smtpd", marker)
        allp = B.procs_with_env(marker)
        rss = sum(B.proc_status(x, "VmRSS") or 0 for x in smtpd)
        pss = sum(B.proc_pss_kb(x) or 0 for x in smtpd)
        pss_all = sum(B.proc_pss_kb(x) or 0 for x in allp)
        pf_res = {"sessions": n_pf, "up": up_pf, "smtpd_processes": len(smtpd), "smtpd_rss_kb": rss,
                  "smtpd_pss_kb": pss, "all_postfix_pss_kb": pss_all, "processes": len(allp)}
        idle_pf.close_all()
        pf.stop()

    mb = lambda kb: kb / 1024.0  # noqa: E731
    print()
    print("Idle SMTP sessions; %s" % B.machine())
    print()
    print("| measure | result |")
    print("|---|---|")
    print("| passerelle sessions up (banner%s received, still open after %.0f s) | %d of %d (opened in %.1f s) |" % (
        " + EHLO" if a.ehlo else "", a.hold, alive, a.sessions, t_open))
    print("| listen queue overflows meanwhile (whole machine) | %d |" % ovf)
    print("| passerelle VmRSS idle, before | %.1f MB |" % mb(rss0))
    print("| passerelle VmRSS with %d idle sessions | %.1f MB (VmHWM %.1f MB, %d threads, %d fds) |" % (
        alive, mb(rss1), mb(hwm), threads, fds))
    if alive:
        print("| per idle session | %.1f KB |" % ((rss1 - rss0) / float(alive)))
    print("| passerelle VmRSS 3 s after closing them | %.1f MB |" % mb(rss2))
    if pf_res:
        per = pf_res["smtpd_pss_kb"] / float(max(1, pf_res["smtpd_processes"]))
        print("| postfix: %d idle sessions (default process limit 100) | %d smtpd processes, RSS sum %.1f MB, "
              "PSS sum %.1f MB (all Postfix processes PSS %.1f MB) |" % (
                  pf_res["up"], pf_res["smtpd_processes"], mb(pf_res["smtpd_rss_kb"]), mb(pf_res["smtpd_pss_kb"]),
                  mb(pf_res["all_postfix_pss_kb"])))
        print("| postfix: PSS per smtpd (one per session) | %.0f KB → 10,000 sessions would need ~%.1f GB "
              "and process_limit 10000 |" % (per, per * 10000 / 1024 / 1024))
    print()
    if a.sessions >= 10000:
        print("Target (issue 6): 10,000 idle sessions < 200 MB: %s (%.1f MB with %d sessions up)" % (
            "met" if alive >= 10000 and rss1 < 200 * 1024 else "NOT met", mb(rss1), alive))
    if a.json:
        print(json.dumps({"passerelle": res, "postfix": pf_res}))
    return B.report_problems(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", nargs="?")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sessions", type=int, default=int(os.environ.get("IDLE_SESSIONS", 10000)))
    ap.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2, 127.0.0.3, ...")
    ap.add_argument("--ehlo", action="store_true", default=os.environ.get("IDLE_EHLO") == "1",
                    help="send EHLO after the banner, then stay idle")
    ap.add_argument("--hold", type=float, default=float(os.environ.get("IDLE_HOLD", 5)))
    ap.add_argument("--open-timeout", type=float, default=120)
    ap.add_argument("--no-postfix", dest="postfix", action="store_false",
                    default=os.environ.get("IDLE_POSTFIX", "1") == "1")
    ap.add_argument("--postfix-sessions", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.bench:
        return bench(a)
    if not a.server:
        ap.error("HOST:PORT or --bench")
    raise_nofile(a.sessions + 100)
    host, port = a.server.rsplit(":", 1)
    idle = Idle(host, int(port), a.sources, a.ehlo)
    try:
        up = idle.open(a.sessions, timeout=a.open_timeout)
        idle.hold(a.hold)
        print(json.dumps({"up": up, "alive": idle.alive(), "errors": idle.errors}))
    finally:
        idle.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
