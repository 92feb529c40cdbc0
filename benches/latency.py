#!/usr/bin/env python3
"""Open-loop SMTP latency client (issue 6), Python stdlib (asyncio).

Offers a fixed rate of messages (default 1,000 msg/s of 4 KiB) for a fixed time over a pool
of reused SMTP sessions, whatever the server's speed (open loop: message i is due at
start + i/rate and goes out on the first idle session; when none is idle it waits, and that
wait is reported separately). Per message it measures the time from writing the final
"<CRLF>.<CRLF>" (with the body, one write) to the 250 reply: the server's acceptance latency,
which for passerelle and Postfix includes putting the message on stable storage (fsync).

  latency.py HOST:PORT [--rate 1000] [--duration 10] [--sessions 20] [--size 4096]
                       [--warmup 1] [--json]
      one measurement against any SMTP server; prints p50/p90/p99/p99.9/max and the
      achieved rate.
  latency.py --bench
      the side-by-side run used by benches/latency.sh: smtp-sink (the client's own floor),
      passerelle relaying to smtp-sink (with its journal, then without), Postfix relaying to
      smtp-sink, same load.
"""

import argparse
import asyncio
import json
import os
import sys
import time

PC = time.perf_counter


def make_body(size):
    """Headers + `size` bytes of text in 76-character lines (CRLF), ending with CRLF.CRLF."""
    hdr = ("From: <bench@chu-bench.mssante.fr>\r\nTo: <rcpt@dest.mssante.fr>\r\n"
           "Subject: latency probe\r\nMessage-ID: <{id}@bench>\r\n\r\n")
    line = ("0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:76] + "\r\n"
    body = (line * (size // len(line) + 1))[:size]
    body = body[: body.rfind("\r\n") + 2] if "\r\n" in body else body + "\r\n"
    return hdr, body.encode() + b".\r\n"


class Session(asyncio.Protocol):
    def __init__(self):
        self.buf = b""
        self.lines = []
        self.waiter = None
        self.closed = asyncio.get_running_loop().create_future()
        self.transport = None
        self.pending = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        t = PC()
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            self.lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                reply, self.lines = self.lines, []
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result((int(reply[0][:3]) if reply[0][:3].isdigit() else 0, reply, t))
                else:
                    self.pending.append((int(reply[0][:3]), reply, t))

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    async def reply(self, timeout=30):
        if self.pending:
            return self.pending.pop(0)
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None

    def write(self, data):
        self.transport.write(data)


async def open_session(host, port, timeout=30):
    loop = asyncio.get_running_loop()
    _, s = await asyncio.wait_for(loop.create_connection(Session, host, port), timeout)
    code, _, _ = await s.reply()
    if code != 220:
        raise ConnectionError("banner %d" % code)
    s.write(b"EHLO latency.bench.test\r\n")
    code, lines, _ = await s.reply()
    if code != 250:
        raise ConnectionError("EHLO %d" % code)
    s.pipelining = any(l[4:].upper().startswith(b"PIPELINING") for l in lines)
    return s


async def transaction(s, n, hdr, tail):
    """One message; returns (code, seconds from the final dot to the reply)."""
    env = b"MAIL FROM:<bench@chu-bench.mssante.fr>\r\nRCPT TO:<rcpt@dest.mssante.fr>\r\nDATA\r\n"
    if s.pipelining:
        s.write(env)
        replies = [await s.reply() for _ in range(3)]
    else:
        replies = []
        for c in env.split(b"\r\n")[:3]:
            s.write(c + b"\r\n")
            replies.append(await s.reply())
            if replies[-1][0] >= 400:
                break
    if [r[0] for r in replies] != [250, 250, 354]:
        if replies and replies[-1][0] == 354:
            s.write(b".\r\n")
            await s.reply()
        s.write(b"RSET\r\n")
        await s.reply()
        return replies[-1][0] if replies else 0, None
    data = hdr.replace("{id}", str(n)).encode() + tail
    t0 = PC()
    s.write(data)
    code, _, t1 = await s.reply()
    return code, t1 - t0


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


async def run_load(host, port, rate=1000, duration=10.0, sessions=20, size=4096, warmup=1.0):
    hdr, tail = make_body(size)
    pool = [await open_session(host, port) for _ in range(sessions)]
    idle = asyncio.Queue()
    for s in pool:
        idle.put_nowait(s)
    total = int(rate * (duration + warmup))
    lat, waits, codes = [], [], {}
    errors = []
    done_at = []
    tasks = set()
    start = PC() + 0.1

    async def one(s, i, due):
        try:
            code, dt = await transaction(s, i, hdr, tail)
            codes[code] = codes.get(code, 0) + 1
            if i >= rate * warmup:
                if dt is not None and code == 250:
                    lat.append(dt)
                done_at.append(PC())
        except Exception as e:  # noqa: BLE001 - reported, the session is dropped
            errors.append("%s: %s" % (type(e).__name__, e))
            return
        idle.put_nowait(s)

    for i in range(total):
        due = start + i / rate
        d = due - PC()
        if d > 0:
            await asyncio.sleep(d)
        try:
            s = await asyncio.wait_for(idle.get(), 30)
        except asyncio.TimeoutError:
            errors.append("no idle session for 30 s")
            break
        if i >= rate * warmup:
            waits.append(PC() - due)
        t = asyncio.ensure_future(one(s, i, due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    end_offer = start + total / rate
    for s in pool:
        try:
            s.write(b"QUIT\r\n")
            s.transport.close()
        except Exception:  # noqa: BLE001
            pass
    lat.sort()
    waits.sort()
    measured = len(done_at)
    t_first = start + warmup
    elapsed = (max(done_at) - t_first) if done_at else float("nan")
    return {
        "offered_rate": rate, "duration": duration, "sessions": sessions, "size": size,
        "messages": measured, "achieved_rate": measured / elapsed if done_at else 0.0,
        "p50_ms": 1000 * pct(lat, 50), "p90_ms": 1000 * pct(lat, 90), "p99_ms": 1000 * pct(lat, 99),
        "p999_ms": 1000 * pct(lat, 99.9), "max_ms": 1000 * (lat[-1] if lat else float("nan")),
        "wait_p99_ms": 1000 * pct(waits, 99), "wait_max_ms": 1000 * (waits[-1] if waits else float("nan")),
        "late_end_s": (max(done_at) - end_offer) if done_at else float("nan"),
        "codes": {str(k): v for k, v in sorted(codes.items())}, "errors": errors[:5], "error_count": len(errors),
        "sent_total": sum(codes.values()),
    }


def describe(r):
    return ("%d msgs measured, achieved %.0f msg/s of %d offered; dot->250 p50 %.2f ms, p90 %.2f ms, "
            "p99 %.2f ms, p99.9 %.2f ms, max %.2f ms; dispatch lag p99 %.2f ms (max %.1f ms); "
            "replies %s%s" % (r["messages"], r["achieved_rate"], r["offered_rate"], r["p50_ms"], r["p90_ms"],
                              r["p99_ms"], r["p999_ms"], r["max_ms"], r["wait_p99_ms"], r["wait_max_ms"],
                              r["codes"], (", %d errors: %s" % (r["error_count"], r["errors"])) if r["errors"] else ""))


# --------------------------------------------------------------------------- --bench

def bench(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlib as B
    B.install_signal_handlers()
    B.need("smtp-sink", "postfix")
    tmp = B.workdir("passerelle-bench-latency.")
    B.log("binaries: " + B.freeze_binaries(tmp))
    p = B.pki(tmp)
    B.log("latency bench: %d msg/s x %d B for %.0f s (+%.0f s warm-up), %d sessions; %s; %s" % (
        args.rate, args.size, args.duration, args.warmup, args.sessions, B.machine(),
        time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    sink = B.SmtpSink(tmp, "sink")
    gw = B.bench_gateway(tmp, "gw", sink.port, p)
    # The same without the message journal (issue 17: "within 10 % of journal off").
    gw_nj = B.bench_gateway(tmp, "gwnj", sink.port, p, journal="none")
    pf = B.bench_postfix(tmp, "pf", sink.port)
    targets = [("smtp-sink (client floor)", sink.port, None),
               ("passerelle", gw.listener()[1], "gw"),
               ("passerelle, journal off", gw_nj.listener()[1], "gw"),
               ("postfix", pf.port, "pf")]
    results = []
    problems = []
    total = int(args.rate * (args.duration + args.warmup))
    for name, port, kind in targets:
        base = sink.count()
        r = asyncio.run(run_load("127.0.0.1", port, args.rate, args.duration, args.sessions, args.size, args.warmup))
        B.log("  %-26s %s" % (name, describe(r)))
        results.append((name, r))
        if r["error_count"] or set(r["codes"]) != {"250"}:
            problems.append("%s: replies %s, errors %s" % (name, r["codes"], r["errors"]))
        if kind:  # everything accepted must reach the sink (bounded wait)
            accepted = r["codes"].get("250", 0)
            try:
                B.wait_count(lambda: sink.count() - base, accepted, timeout=180, interval=0.05, stall=30)
            except TimeoutError as e:
                problems.append("%s: delivery to the sink after the run: %s" % (name, e))
    print()
    print("Acceptance latency under an open-loop load of %d msg/s (%d B, %d reused sessions, %.0f s measured): "
          "time from the final dot to the 250; %s" % (args.rate, args.size, args.sessions, args.duration, B.machine()))
    print()
    print("| server | achieved msg/s | p50 ms | p99 ms | p99.9 ms | max ms | dispatch lag p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results:
        print("| %s | %.0f | %.2f | %.2f | %.2f | %.1f | %.2f |" % (name, r["achieved_rate"], r["p50_ms"], r["p99_ms"],
                                                             r["p999_ms"], r["max_ms"], r["wait_p99_ms"]))
    print()
    print("dispatch lag = how late a message went out after its due time (client late, or no idle session).")
    for name, r in results:
        if name == "passerelle":
            met = r["p99_ms"] <= 5 and r["achieved_rate"] >= 0.95 * args.rate
            print("Target (issue 6): p99 <= 5 ms at %d msg/s: %s (p99 %.2f ms, %.0f msg/s achieved)" % (
                args.rate, "met" if met else "NOT met", r["p99_ms"], r["achieved_rate"]))
    if args.json:
        print(json.dumps(dict(results)))
    return B.report_problems(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", nargs="?", help="HOST:PORT")
    ap.add_argument("--bench", action="store_true", help="side-by-side run (smtp-sink, passerelle, postfix)")
    ap.add_argument("--rate", type=int, default=int(os.environ.get("LAT_RATE", 1000)))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("LAT_DURATION", 10)))
    ap.add_argument("--sessions", type=int, default=int(os.environ.get("LAT_SESSIONS", 20)))
    ap.add_argument("--size", type=int, default=int(os.environ.get("LAT_SIZE", 4096)))
    ap.add_argument("--warmup", type=float, default=float(os.environ.get("LAT_WARMUP", 1)))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.bench:
        return bench(a)
    if not a.server:
        ap.error("HOST:PORT or --bench")
    host, port = a.server.rsplit(":", 1)
    r = asyncio.run(run_load(host, int(port), a.rate, a.duration, a.sessions, a.size, a.warmup))
    print(json.dumps(r) if a.json else describe(r))
    return 0 if not r["error_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
