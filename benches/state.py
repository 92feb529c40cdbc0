"""Shared state benchmark (issue 27): see benches/state.sh.

Two gateways on one private PostgreSQL ([state] kind = "postgres"), a region of
ST_ESTABLISHMENTS establishments (each with its own MTA address 127.1.x.y) imported with
`passerelle state import`, then, ST_REPEAT times each:
1. a change in force on both gateways: from the start of `passerelle establishment add` on
   gw-a to both gateways answering 220 to the new establishment's address (banner polled every
   10 ms), and the CLI's own time;
2. a reload at that size: SIGHUP to gw-a until its "configuration reloaded" line;
3. /metrics with per-establishment labels (one message sent from every establishment first),
   and its size;
4. the console's establishments page: the first page, a search, and the last page.
min / median / max, in milliseconds.
"""

import os
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
from browser import request as http  # noqa: E402

H = B.H
N = int(os.environ.get("ST_ESTABLISHMENTS", "2000"))
REPEAT = int(os.environ.get("ST_REPEAT", "7"))
PASSWORD = "bench password 1"


def ip_of(i):
    return "127.1.%d.%d" % (i // 250, i % 250 + 1)


def est_text(i, box_port):
    name = "est-%04d" % i
    return name, ('[establishment]\nname = "%s"\ndomains = ["%s.mssante.fr"]\nclients = ["%s/32"]\n'
                  'mailbox = "127.0.0.1:%d"\nmailbox_tls = "none"\n' % (name, name, ip_of(i), box_port))


def ms(xs):
    xs = [x * 1000 for x in xs]
    return "%.0f / %.0f / %.0f" % (min(xs), statistics.median(xs), max(xs))


def main():
    B.install_signal_handlers()
    tmp = B.workdir("passerelle-state-")
    bins = B.freeze_binaries(tmp)
    pg = H.Postgres(tmp)
    url = pg.createdb("passerelle")
    sink = B.SmtpSink(tmp)
    est_dir = os.path.join(tmp, "import", "establishments.d")
    os.makedirs(est_dir)
    for i in range(N):
        name, text = est_text(i, sink.port)
        with open(os.path.join(est_dir, name + ".toml"), "w") as f:
            f.write(text)
    p = B.pki(tmp)
    gws, ports = {}, {}
    for name in ("gw-a", "gw-b"):
        ports[name] = (H.free_port(), H.free_port())
        cfg = {
            "server": {"hostname": "passerelle.bench.test", "spool": os.path.join(tmp, name, "spool"),
                       "admin": "127.0.0.1:%d" % H.free_port(), "establishments_dir": est_dir},
            "tls": {"certificate": p["gw_cert"], "private_key": p["gw_key"], "trust_anchors": p["ca"],
                    "crls": p["crls"]},
            "listener": [{"name": "etablissements", "address": "127.0.0.1:%d" % ports[name][0], "clients": [],
                          "establishments": True, "starttls": "off", "client_certificate": "off",
                          "routes": ["establishments", "all"]}],
            "directory": {"kind": "none"},
            "route": [{"name": "all", "domains": ["*"], "transport": "out"}],
            "transport": {"out": {"kind": "relay", "next_hop": "127.0.0.1:%d" % sink.port, "tls": "none"}},
            "state": {"kind": "postgres", "url": url},
            "journal": {"kind": "postgres", "url": url, "gateway": name},
            "console": {"address": "127.0.0.1:%d" % ports[name][1]},
        }
        gws[name] = H.Gateway(tmp, cfg, env={"PASSERELLE_LOG": "info"}, name=name, start=False)
    a, b = gws["gw-a"], gws["gw-b"]
    t0 = time.monotonic()
    rc, out = a.cli("state", "import", timeout=300)
    t_import = time.monotonic() - t0
    if rc != 0:
        raise B.BenchError("state import: " + out)
    r = subprocess.run([H.PASSERELLE_BIN, "console", "user", "add", "admin", "--role", "operator",
                        "--password-stdin", "--config", a.config_path], input=(PASSWORD + "\n").encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise B.BenchError("console user add: " + r.stdout.decode())
    starts = {}
    for g in (a, b):
        t0 = time.monotonic()
        g.start(timeout=120)
        g.wait_log(r"console listening", timeout=60)
        starts[g.name] = time.monotonic() - t0

    print("shared state benchmark, %s" % time.strftime("%Y-%m-%d %H:%M"))
    print("machine: %s" % B.machine())
    print("binaries: %s" % bins)
    print("%d establishments, 2 gateways, one PostgreSQL (loopback); %d runs: min / median / max ms"
          % (N, REPEAT))
    print("state import of %d establishments: %.2f s" % (N, t_import))
    print("gateway start on the shared state: gw-a %.2f s, gw-b %.2f s" % (starts["gw-a"], starts["gw-b"]))

    # 1. A change in force on both gateways.
    in_force, cli_time = [], []
    for k in range(REPEAT):
        i = N + k
        name, _ = est_text(i, sink.port)
        t0 = time.monotonic()
        rc, out = a.cli("establishment", "add", name, "--domain", name + ".mssante.fr", "--clients",
                        ip_of(i) + "/32", "--mailbox", "127.0.0.1:%d" % sink.port, "--mailbox-tls", "none")
        cli_time.append(time.monotonic() - t0)
        if rc != 0:
            raise B.BenchError("establishment add: " + out)
        pending = {"gw-a", "gw-b"}
        deadline = t0 + 30
        while pending and time.monotonic() < deadline:
            for g in list(pending):
                if H.banner_of(ip_of(i), ports[g][0], timeout=5).startswith("220"):
                    pending.discard(g)
            if pending:
                time.sleep(0.01)
        if pending:
            raise B.BenchError("%s not in force on %s after 30 s" % (name, pending))
        in_force.append(time.monotonic() - t0)
    print("change in force on both gateways (establishment add on gw-a -> 220 on both): %s" % ms(in_force))
    print("  of which `establishment add` (check of the whole state, commit): %s" % ms(cli_time))

    # 2. A reload at this size.
    reloads = []
    for k in range(REPEAT):
        before = len(re.findall(r"configuration reloaded", a.log()))
        t0 = time.monotonic()
        os.kill(a.proc.pid, signal.SIGHUP)
        H.wait_until(lambda: len(re.findall(r"configuration reloaded", a.log())) > before, 60, interval=0.005,
                     what="reload")
        reloads.append(time.monotonic() - t0)
    print("reload (SIGHUP -> 'configuration reloaded') at %d establishments: %s" % (N + REPEAT, ms(reloads)))

    # 3. /metrics with a label per establishment: one message from each first.
    t0 = time.monotonic()
    for i in range(N):
        name, _ = est_text(i, sink.port)
        s = smtplib.SMTP(timeout=30, source_address=(ip_of(i), 0))
        s.connect("127.0.0.1", ports["gw-a"][0])
        s.sendmail("dr@%s.mssante.fr" % name, ["x@autre.mssante.fr"],
                   "From: dr@%s.mssante.fr\r\nSubject: b\r\n\r\nb\r\n" % name)
        s.quit()
    t_send = time.monotonic() - t0
    scrapes, size = [], 0
    for k in range(REPEAT):
        t0 = time.monotonic()
        status, body = H.http_get(a.admin[0], a.admin[1], "/metrics", timeout=30)
        scrapes.append(time.monotonic() - t0)
        size = len(body)
    lines = body.decode().count("\n")
    labelled = len(set(re.findall(rb'establishment="([^"]+)"', body)))
    print("/metrics with %d establishments labelled (%d bytes, %d lines): %s"
          % (labelled, size, lines, ms(scrapes)))
    print("  (one message from each establishment sent first: %.1f s)" % t_send)

    # 4. The console's establishments page.
    base = "http://127.0.0.1:%d" % ports["gw-b"][1]
    status, headers, _ = http(base, "POST", "/login", form={"username": "admin", "password": PASSWORD, "next": "/"})
    cookie = headers.get("set-cookie", "").split(";")[0]
    if status not in (302, 303) or not cookie:
        raise B.BenchError("console login on gw-b: %d" % status)
    for label, path in (("first page", "/establishments"),
                        ("search", "/establishments?q=est-1999"),
                        ("last page", "/establishments?page=%d" % ((N + REPEAT + 49) // 50))):
        times = []
        for k in range(REPEAT):
            t0 = time.monotonic()
            status, _, page = http(base, "GET", path, cookie=cookie)
            times.append(time.monotonic() - t0)
            if status != 200:
                raise B.BenchError("%s: %d" % (path, status))
        print("console %s (%s, %d bytes): %s" % (label, path, len(page), ms(times)))
    return 0


if __name__ == "__main__":
    B.run_main(main)
