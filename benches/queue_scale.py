#!/usr/bin/env python3
"""Queue at scale (issue 6): fill a spool, restart, measure recovery and the idle-but-full cost.

1. passerelle with its next hop down (a loopback port nobody listens on) and the default retry
   intervals; QS_N small messages are pushed in as fast as possible: several processes x
   sessions, each pipelining MAIL + RCPT + BDAT LAST (RFC 3030 allows pipelining BDAT) with up
   to QS_WINDOW transactions in flight. Every 250 means fsync'd (group commit).
2. SIGTERM, then start again: recovery time = from spawn to the "queue recovered" log line
   (its timestamp; messages=N is checked), and to "listening".
3. CPU% of the full, idle gateway (next hop still down) over QS_CPU_WINDOWS consecutive windows
   of 10 s right after the restart, from /proc/PID/stat (utime+stime), with its RSS and the
   delivery attempts (result="deferred" in /metrics) made in each window: a window without
   attempts is the pure scheduling cost; windows with attempts show what retrying a full queue
   against a dead next hop costs.

Called by benches/queue_scale.sh (see it for the environment knobs).
"""

import datetime
import multiprocessing
import os
import re
import selectors
import socket
import sys
import time

import benchlib as B

ENV = os.environ
N = int(ENV.get("QS_N", 200000))
PROCS = int(ENV.get("QS_PROCS", 2))
SESSIONS = int(ENV.get("QS_SESSIONS", 8))          # per process
WINDOW = int(ENV.get("QS_WINDOW", 64))             # transactions in flight per session
SIZE = int(ENV.get("QS_SIZE", 400))                # message bytes
CPU_WINDOWS = int(ENV.get("QS_CPU_WINDOWS", 6))
FILL_TIMEOUT = float(ENV.get("QS_FILL_TIMEOUT", 1200))
RECOVERY_TIMEOUT = float(ENV.get("QS_RECOVERY_TIMEOUT", 300))


def message(size):
    hdr = b"From: <fill@chu-bench.mssante.fr>\r\nTo: <rcpt@dest.mssante.fr>\r\nSubject: queue fill\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(hdr))]
    body = body[: body.rfind(b"\r\n") + 2] if b"\r\n" in body else b""
    return hdr + body


def filler(host, port, count, sessions, window, size, deadline, out):
    """One process: `sessions` pipelined sessions sharing `count` messages."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # not the parent's stop-everything
        signal.signal(sig, signal.SIG_DFL)
    msg = message(size)
    txn = (b"MAIL FROM:<fill@chu-bench.mssante.fr>\r\nRCPT TO:<rcpt@dest.mssante.fr>\r\nBDAT %d LAST\r\n"
           % len(msg)) + msg
    sel = selectors.DefaultSelector()
    per = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    st = {}
    for i in range(sessions):
        s = socket.create_connection((host, port), timeout=30)
        f = s.makefile("rb")
        if not f.readline().startswith(b"220"):
            raise RuntimeError("no banner")
        s.sendall(b"EHLO fill.bench.test\r\n")
        while True:
            l = f.readline()
            if l[3:4] != b"-":
                break
        s.setblocking(False)
        st[s] = {"todo": per[i], "inflight": 0, "replies": 0, "buf": b"", "out": b""}
        sel.register(s, selectors.EVENT_READ)
    ok = bad = 0
    badcodes = {}

    def top_up(s, d):
        room = window - d["inflight"]
        if room >= window // 2 and d["todo"] > 0:
            k = min(room, d["todo"])
            d["out"] += txn * k
            d["todo"] -= k
            d["inflight"] += k
        if d["out"]:
            try:
                n = s.send(d["out"])
                d["out"] = d["out"][n:]
            except BlockingIOError:
                pass
            sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if d["out"] else 0))

    for s, d in st.items():
        top_up(s, d)
    while any(d["todo"] or d["inflight"] for d in st.values()) and time.time() < deadline:
        for key, ev in sel.select(timeout=1):
            s = key.fileobj
            d = st[s]
            if ev & selectors.EVENT_WRITE:
                top_up(s, d)
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("connection closed by the gateway (ok=%d)" % ok)
                buf = d["buf"] + data
                lines = buf.split(b"\r\n")
                d["buf"] = lines.pop()
                for l in lines:
                    if l[3:4] == b"-":
                        continue
                    d["replies"] += 1
                    if d["replies"] % 3 == 0:       # the BDAT LAST reply: queued or not
                        d["inflight"] -= 1
                        if l.startswith(b"250"):
                            ok += 1
                        else:
                            bad += 1
                            c = l[:40].decode(errors="replace")
                            badcodes[c] = badcodes.get(c, 0) + 1
                    elif not l.startswith(b"250"):
                        c = l[:40].decode(errors="replace")
                        badcodes[c] = badcodes.get(c, 0) + 1
                top_up(s, d)
    for s in st:
        try:
            s.setblocking(True)
            s.sendall(b"QUIT\r\n")
            s.close()
        except OSError:
            pass
    out.put((ok, bad, badcodes))


def log_ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    s = m.group(1)
    if "." in s:
        a, b = s.split(".")
        s = a + "." + (b + "000000")[:6]
        fmt = "%Y-%m-%dT%H:%M:%S.%f"
    else:
        fmt = "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(s, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()


def du_mb(path):
    total = 0
    for dp, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dp, f)).st_blocks * 512
            except OSError:
                pass
    return total / 1048576.0


def main():
    B.install_signal_handlers()
    tmp = B.workdir("passerelle-bench-queue.")
    B.log("binaries: " + B.freeze_binaries(tmp))
    p = B.pki(tmp)
    B.log("queue scale bench: N=%d messages of %d B, %d processes x %d sessions x %d in flight; %s; %s" % (
        N, SIZE, PROCS, SESSIONS, WINDOW, B.machine(), time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    down = B.H.free_port()     # reserved, never listened on: connection refused
    lvl = ENV.get("BENCH_GW_LOG", "warn,passerelle::server=info")
    gw = B.bench_gateway(tmp, "gw", down, p, loglevel=lvl, start=False)
    gw.start(timeout=60)
    port = gw.listener()[1]
    problems = []

    # ---- 1. fill
    q = multiprocessing.Queue()
    deadline = time.time() + FILL_TIMEOUT
    shares = [N // PROCS + (1 if i < N % PROCS else 0) for i in range(PROCS)]
    t0 = time.monotonic()
    procs = [multiprocessing.Process(target=filler, args=("127.0.0.1", port, shares[i], SESSIONS, WINDOW, SIZE,
                                                          deadline, q), daemon=True) for i in range(PROCS)]
    for pr in procs:
        pr.start()
    ok = bad = 0
    codes = {}
    for _ in procs:
        try:
            a, b, c = q.get(timeout=FILL_TIMEOUT + 30)
        except Exception:  # noqa: BLE001
            problems.append("a fill process did not report (timeout or crash)")
            break
        ok += a
        bad += b
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
    t_fill = time.monotonic() - t0
    for pr in procs:
        pr.join(timeout=10)
        if pr.is_alive():
            pr.terminate()
    if ok != N:
        problems.append("fill: %d of %d queued (%d refused; replies %s)" % (ok, N, bad, codes))
    pid = B.gw_pid(gw)
    rss_full_running = B.proc_status(pid, "VmRSS")
    cpu_fill = B.proc_cpu_ticks(pid) / B.CLK_TCK
    B.log("  filled: %d messages in %.1f s = %.0f msg/s (gateway CPU %.1f s, RSS %.0f MB)" % (
        ok, t_fill, ok / t_fill, cpu_fill, rss_full_running / 1024.0))
    deferred_fill = B.gw_sent(gw, result="deferred")

    # ---- 2. stop, restart
    t0 = time.monotonic()
    rc = gw.stop(grace=120)
    t_stop = time.monotonic() - t0
    if rc not in (0, None):
        problems.append("gateway exited with %s on SIGTERM" % rc)
    spool_mb = du_mb(os.path.join(gw.root, "spool"))
    B.log("  stopped in %.2f s (exit %s); spool on disk %.0f MB" % (t_stop, rc, spool_mb))
    with open(gw.logfile, "ab") as f:
        f.write(b"==== restart ====\n")
    log_off = os.path.getsize(gw.logfile)
    t_spawn = time.time()
    try:
        gw.start(timeout=RECOVERY_TIMEOUT)
    except B.H.HarnessError as e:
        problems.append("restart failed: %s" % e)
        return report(problems, locals())
    pid = B.gw_pid(gw)
    t_port = time.time() - t_spawn
    text = B.H.read_text(gw.logfile)[log_off:]
    rec = re.search(r"^(\S+).*queue recovered.*?messages=(\d+)", text, re.M)
    lis = re.search(r"^(\S+).*listening", text, re.M)
    t_rec = (log_ts(rec.group(1)) - t_spawn) if rec else None
    t_lis = (log_ts(lis.group(1)) - t_spawn) if lis else None
    recovered = int(rec.group(2)) if rec else None
    if recovered != ok:
        problems.append("recovered messages=%s, expected %d" % (recovered, ok))
    rss_restart = B.proc_status(pid, "VmRSS")
    B.log("  restart: queue recovered after %s s (messages=%s), listening after %s s, port accepting after %.2f s" % (
        "%.2f" % t_rec if t_rec is not None else "?", recovered, "%.2f" % t_lis if t_lis is not None else "?", t_port))

    # ---- 3. idle-but-full CPU
    windows = []
    for w in range(CPU_WINDOWS):
        c0, d0, w0 = B.proc_cpu_ticks(pid), B.gw_sent(gw, result="deferred"), time.monotonic()
        time.sleep(10)
        c1, d1, w1 = B.proc_cpu_ticks(pid), B.gw_sent(gw, result="deferred"), time.monotonic()
        windows.append((100.0 * (c1 - c0) / B.CLK_TCK / (w1 - w0), d1 - d0, B.proc_status(pid, "VmRSS")))
        B.log("  window %d: CPU %.1f%%, %d delivery attempts (deferred), RSS %.0f MB" % (
            w + 1, windows[-1][0], d1 - d0, windows[-1][2] / 1024.0))
    count_after = None
    if ENV.get("QS_VERIFY_LIST", "1") == "1":
        try:
            count_after = B.gw_queue_count(gw, timeout=600)
        except Exception as e:  # noqa: BLE001
            problems.append("queue list: %s" % e)
        if count_after != ok:
            problems.append("queue list after restart: %s messages, expected %d" % (count_after, ok))
    gw.stop(grace=120)
    return report(problems, locals())


def report(problems, v):
    g = v.get
    print()
    print("Queue at scale (%d messages of %d B, next hop down, default retry intervals); %s" % (
        N, SIZE, B.machine()))
    print()
    print("| measure | result |")
    print("|---|---|")
    if g("t_fill"):
        print("| fill (pipelined BDAT, %d x %d sessions) | %d queued in %.1f s = %.0f msg/s; gateway CPU %.0f s; "
              "%d delivery attempts deferred meanwhile |" % (PROCS, SESSIONS, g("ok"), g("t_fill"),
                                                              g("ok") / g("t_fill"), g("cpu_fill"),
                                                              g("deferred_fill") or 0))
        print("| RSS full, before restart | %.0f MB |" % (g("rss_full_running") / 1024.0))
    if g("t_stop") is not None:
        print("| stop (SIGTERM) | %.2f s; spool %.0f MB on disk |" % (g("t_stop"), g("spool_mb")))
    if g("t_rec") is not None:
        print("| restart → \"queue recovered\" (messages=%s) | **%.2f s** |" % (g("recovered"), g("t_rec")))
    if g("t_lis") is not None:
        print("| restart → listeners bound | %.2f s (port accepting after %.2f s) |" % (g("t_lis"), g("t_port")))
    if g("rss_restart"):
        print("| RSS right after recovery | %.0f MB |" % (g("rss_restart") / 1024.0))
    for i, (cpu, att, rss) in enumerate(g("windows") or []):
        print("| full gateway after restart, %d-%d s | CPU %.1f%% of one core; %d delivery attempts; RSS %.0f MB |" % (
            10 * i, 10 * i + 10, cpu, att, rss / 1024.0))
    quiet = [w for w in (g("windows") or []) if w[1] == 0]
    if g("windows"):
        print("| → CPU in windows without delivery attempts (pure scheduling cost) | %s |" % (
            ", ".join("%.1f%%" % w[0] for w in quiet) if quiet else "none: every window retried messages"))
    if g("count_after") is not None:
        print("| `passerelle queue list` after restart | %d message(s) |" % g("count_after"))
    if g("t_rec") is not None:
        print()
        print("Target (issue 6): recovery of 1,000,000 messages < 10 s: %s" % (
            ("%s (%.2f s)" % ("met" if g("t_rec") < 10 and g("recovered") == N else "NOT met", g("t_rec")))
            if N >= 1000000 else "not measured by this run (N=%d; run QS_N=1000000)" % N))
    return B.report_problems(problems)


if __name__ == "__main__":
    B.run_main(main)
