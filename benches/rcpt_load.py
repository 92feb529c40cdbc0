#!/usr/bin/env python3
"""RCPT-check load client: S sessions, each pipelining MAIL + batches of RCPT TO commands
(RFC 2920) from an address list, counting replies. Prints checks/s and reply classes.

    rcpt_load.py HOST:PORT ADDRESSES_FILE --sessions 8 --total 40000
"""
import argparse
import socket
import threading
import time


def session(host, port, addrs, n, batch, out):
    s = socket.create_connection((host, port), timeout=30)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return int(line[:3])

    reply()
    s.sendall(b"EHLO bench.test\r\n")
    reply()
    codes = {}
    done = 0
    i = 0
    while done < n:
        k = min(batch, n - done)
        cmds = [b"MAIL FROM:<bench@chu-exemple.mssante.fr>\r\n"]
        for _ in range(k):
            cmds.append(b"RCPT TO:<" + addrs[i % len(addrs)] + b">\r\n")
            i += 1
        cmds.append(b"RSET\r\n")
        s.sendall(b"".join(cmds))
        for _ in range(k + 2):
            c = reply()
            codes[c] = codes.get(c, 0) + 1
        done += k
    s.sendall(b"QUIT\r\n")
    s.close()
    out.append(codes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("addresses")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--total", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    host, port = a.server.rsplit(":", 1)
    addrs = [l.strip().encode() for l in open(a.addresses) if l.strip()]
    per = a.total // a.sessions
    out = []
    threads = [threading.Thread(target=session, args=(host, int(port), addrs[k::a.sessions] or addrs, per, a.batch, out))
               for k in range(a.sessions)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    codes = {}
    for c in out:
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
    rcpt_ok = codes.get(250, 0) - 2 * per * 0  # MAIL/RSET 250s are subtracted below
    checks = per * a.sessions
    print("%d RCPT checks in %.2fs = %.0f checks/s (replies: %s)" % (
        checks, dt, checks / dt, ", ".join("%d x%d" % kv for kv in sorted(codes.items()))))


if __name__ == "__main__":
    main()
