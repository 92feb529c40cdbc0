"""A tiny authoritative DNS responder for the end-to-end tests (UDP, loopback only).

Answers A, AAAA (empty) and MX from a dict, NXDOMAIN for unknown names, so the gateway's
`mx` transport can be tested against real DNS packets: `[dns] nameservers = ["127.0.0.1:PORT"]`.

    dns = FakeDNS({"ch.mssante.fr": {"MX": [(10, "mx1.ch.test")]},
                   "mx1.ch.test": {"A": ["127.0.0.21"]}})
    dns.start(); ...; dns.stop()
"""

import socket
import struct
import threading

TYPES = {1: "A", 28: "AAAA", 15: "MX"}


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def _decode_name(data, off):
    labels = []
    while True:
        n = data[off]
        off += 1
        if n == 0:
            return ".".join(labels), off
        labels.append(data[off:off + n].decode("ascii", "replace"))
        off += n


class FakeDNS:
    def __init__(self, zone, host="127.0.0.1", port=0):
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(data), addr)
            except Exception:  # a malformed query is simply not answered
                continue

    def answer(self, q):
        (qid, flags, qd, _, _, _) = struct.unpack("!HHHHHH", q[:12])
        name, off = _decode_name(q, 12)
        qtype, qclass = struct.unpack("!HH", q[off:off + 4])
        question = q[12:off + 4]
        name_l = name.lower()
        self.queries.append((name_l, TYPES.get(qtype, str(qtype))))
        records = self.zone.get(name_l)
        answers = b""
        count = 0
        rcode = 0
        if records is None:
            rcode = 3  # NXDOMAIN
        else:
            for value in records.get(TYPES.get(qtype, ""), []):
                if qtype == 1:
                    rdata = socket.inet_aton(value)
                elif qtype == 15:
                    pref, exchange = value
                    rdata = struct.pack("!H", pref) + _encode_name(exchange)
                else:
                    continue
                answers += b"\xc0\x0c" + struct.pack("!HHIH", qtype, qclass, 60, len(rdata)) + rdata
                count += 1
        # QR, AA, RD copied, RA; rcode.
        rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        header = struct.pack("!HHHHHH", qid, rflags, 1, count, 0, 0)
        return header + question + answers
