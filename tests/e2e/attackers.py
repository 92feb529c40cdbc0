"""Attackers shared by the listener-abuse test (test_listener_abuse.py) and the attack
benchmark (benches/attacks.py): connections held open and dripping, the source addresses they
come from, and a percentile of latencies."""

import selectors
import socket
import threading
import time


class SlowConnections:
    """`addresses` x `per_address` connections held open from one thread: each drips one byte
    every few seconds and is reopened when the server closes it. `data`, a pair (sender domain,
    recipient domain): each first says EHLO, MAIL, RCPT and DATA (pipelined after the greeting)
    and drips inside DATA."""

    def __init__(self, port, addresses, per_address, data=None, drip=3.0, host="127.0.0.1"):
        self.port, self.addresses, self.per_address = port, addresses, per_address
        self.data, self.drip, self.host = data, drip, host
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.in_data = 0
        self.live = 0
        self.t = threading.Thread(target=self.run, daemon=True)

    def open(self, i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((self.addresses[i], 0))
            s.connect_ex((self.host, self.port))
        except OSError:
            s.close()
            return False
        self.sel.register(s, selectors.EVENT_READ, [i, 0])
        self.opened += 1
        self.live += 1
        return True

    def run(self):
        want = {i: self.per_address for i in range(len(self.addresses))}
        last_drip = time.monotonic()
        while not self.stop.is_set():
            budget = 2000
            for i in list(want):
                while want[i] > 0 and budget > 0:
                    if not self.open(i):
                        break
                    want[i] -= 1
                    budget -= 1
            for key, _ in self.sel.select(timeout=0.05):
                s, st = key.fileobj, key.data
                try:
                    got = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    got = b""
                closed = not got or got.startswith(b"421") or b"\n421" in got
                if not closed and self.data and st[1] == 0 and got.startswith(b"220"):
                    st[1] = 1
                    try:
                        s.send(b"EHLO slow.bench.test\r\nMAIL FROM:<atk@%s>\r\n"
                               b"RCPT TO:<dr.y@%s>\r\nDATA\r\n" % (self.data[0].encode(), self.data[1].encode()))
                    except OSError:
                        closed = True
                elif not closed and self.data and st[1] == 1 and b"354" in got:
                    st[1] = 2
                    self.in_data += 1
                if closed:
                    self.sel.unregister(s)
                    s.close()
                    self.live -= 1
                    self.closed_by_server += 1
                    want[st[0]] += 1
            now = time.monotonic()
            if now - last_drip > self.drip:
                last_drip = now
                for key in list(self.sel.get_map().values()):
                    # A command that never ends, or (slow DATA) message bytes once inside DATA.
                    if self.data and key.data[1] < 2:
                        continue
                    try:
                        key.fileobj.send(b"x" if self.data else b"E")
                    except OSError:
                        pass
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()

    def start(self):
        self.t.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.finish()

    def ready(self):
        """Every connection opened once."""
        return self.opened >= self.per_address * len(self.addresses)

    def finish(self):
        self.stop.set()
        self.t.join(timeout=30)

    def describe(self, seconds):
        held = "%d held" % self.live
        if self.data:
            held += ", %d reached DATA" % self.in_data
        return "%s, %d opened, %d closed by the server" % (held, self.opened, self.closed_by_server)


def addresses(n, base=100, per_24=False):
    """n loopback source addresses; per_24: one /24 each (127.B.x.1), else one /24 for all."""
    if per_24:
        return ["127.%d.%d.1" % (base + i // 200, i % 200) for i in range(n)]
    return ["127.%d.0.%d" % (base, 10 + i) for i in range(n)]


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("inf")
