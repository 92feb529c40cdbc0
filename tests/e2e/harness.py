"""End-to-end test harness for passerelle (Python 3 stdlib only).

Pieces reused by every e2e test:

* ``free_port``, ``wait_port``, ``wait_until``  -- bounded waits, loopback only
* ``Postfix``   -- a private Postfix instance (``postfix -c DIR start``) rendered from
                   tests/postfix/{main,master}.cf with its own queue/data/log directories
* ``Peer``      -- the project's SMTP test peer ``mss-peer`` (a sink standing for a next hop)
* ``Gateway``   -- ``passerelle serve --config FILE`` with its log in a file
* ``Postgres``  -- a private PostgreSQL server (initdb/pg_ctl as the postgres user)
* ``swaks``, ``smtp_session``, ``RawSMTP`` -- SMTP clients
* ``E2ETestCase`` -- unittest base class: one temporary directory per test, every process
                   started through it is stopped on teardown (even on failure), a per-test
                   time limit (SIGALRM), and the logs of all components printed on failure.

Environment knobs:
  PASSERELLE_BIN     gateway binary        (default <repo>/target/release/passerelle)
  MSS_PEER_BIN       test peer binary      (default <repo>/target/testpeer/release/mss-peer)
  E2E_TEST_TIMEOUT   seconds per test      (default 120)
  E2E_KEEP           1 = keep temporary directories even when the test passed
                     (they are always kept when a test fails; the path is printed)
"""

import atexit
import contextlib
import email
import email.policy
import glob
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import string
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POSTFIX_TEMPLATES = os.path.join(REPO, "tests", "postfix")
PASSERELLE_BIN = os.environ.get("PASSERELLE_BIN", os.path.join(REPO, "target", "release", "passerelle"))
MSS_PEER_BIN = os.environ.get("MSS_PEER_BIN", os.path.join(REPO, "target", "testpeer", "release", "mss-peer"))
TEST_TIMEOUT = int(os.environ.get("E2E_TEST_TIMEOUT", "120"))
LOOPBACK = "127.0.0.1"


class HarnessError(Exception):
    """A component of the test bed could not be started/stopped as expected."""


class TestTimeout(Exception):
    """Raised by the per-test SIGALRM guard."""


# --------------------------------------------------------------------------- waits

_used_ports = set()
_rnd = random.Random()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _port_range():
    """E2E_PORTS=LO-HI (set by run_all.py --jobs for each worker), or None."""
    v = os.environ.get("E2E_PORTS", "")
    if "-" not in v:
        return None
    lo, hi = (int(x) for x in v.split("-", 1))
    return (lo, hi) if 1024 <= lo < hi <= 65535 else None


_PORT_RANGE = _port_range()


def free_port(host=LOOPBACK):
    """A TCP port free on host right now, never the same one twice in this process, and
    outside the kernel's ephemeral range when possible (a port reserved for a peer started
    later must not be taken meanwhile as the local port of some outgoing connection)."""
    lo, _ = _ephemeral_range()
    candidates = []
    if _PORT_RANGE:
        # run_all.py --jobs: each worker process draws from its own slice of the range.
        candidates = [_rnd.randrange(*_PORT_RANGE) for _ in range(200)]
    elif lo > 12000:
        candidates = [_rnd.randrange(10000, lo) for _ in range(200)]
    candidates += [0] * 50
    for want in candidates:
        if want in _used_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, want))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise HarnessError("no free port found")


def port_open(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout=10.0, interval=0.05, what=None):
    """Poll pred() until it returns a truthy value (returned) or timeout (raises)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what or getattr(pred, "__name__", "condition")))
        time.sleep(interval)


def wait_port(host, port, timeout=10.0, proc=None):
    """Wait until host:port accepts TCP connections. If proc (a Popen) exits first, raise."""
    def ready():
        if proc is not None and proc.poll() is not None:
            raise HarnessError("process %s exited with %s before listening on %s:%s" % (proc.args, proc.returncode, host, port))
        return port_open(host, port)
    return wait_until(ready, timeout, what="%s:%s to listen" % (host, port))


def split_hostport(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def tail(text, n=60):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def wait_file_regex(path, regex, timeout, what=None):
    """Wait until the file's text matches regex; returns the match object."""
    rx = re.compile(regex, re.M)

    def found():
        return rx.search(read_text(path))
    return wait_until(found, timeout, interval=0.1, what=what or "/%s/ in %s" % (regex, path))


def _kill_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def stop_process(proc, grace=10.0, sig=signal.SIGTERM):
    """Signal a process (started in its own process group), wait, SIGKILL the group after grace."""
    if proc is None:
        return None
    if proc.poll() is None:
        _kill_group(proc, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    else:
        # reap leftovers of the group (children of a dead leader)
        with contextlib.suppress(Exception):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


_LIVE = []  # every component started and not yet stopped, for stop_everything()


def _register(c):
    if c not in _LIVE:
        _LIVE.append(c)


def _unregister(c):
    with contextlib.suppress(ValueError):
        _LIVE.remove(c)


def stop_everything():
    """Stop every process the harness started (atexit, SIGTERM of the runner)."""
    for c in reversed(list(_LIVE)):
        with contextlib.suppress(Exception):
            c.stop()
    del _LIVE[:]


atexit.register(stop_everything)


# --------------------------------------------------------------------------- TOML

def _toml_key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join("%s = %s" % (_toml_key(k), _toml_value(x)) for k, x in v.items()) + " }"
    raise TypeError("cannot write %r as TOML" % (v,))


def _is_table_array(v):
    return isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v)


def toml_dumps(data, _prefix=""):
    """Minimal TOML writer: nested dicts become [tables], lists of dicts [[arrays of tables]]."""
    out = []
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append("%s = %s" % (_toml_key(k), _toml_value(v)))
    for k, v in data.items():
        name = _prefix + _toml_key(k)
        if isinstance(v, dict):
            scalars = {a: b for a, b in v.items() if not isinstance(b, dict) and not _is_table_array(b)}
            if scalars or not v:
                out.append("\n[%s]" % name)
            out.append(toml_dumps(v, name + "."))
        elif _is_table_array(v):
            for item in v:
                out.append("\n[[%s]]" % name)
                out.append(toml_dumps(item, name + "."))
    return "\n".join(x for x in out if x != "")


# --------------------------------------------------------------------------- PKI

_pki_cache = {}


def dev_pki(base_dir=None):
    """Certificates for the gateway: passerelle.crt, passerelle.key, ca.pem, ca.crl.

    Made by ``passerelle pki dev --out DIR`` when the binary supports it, else with openssl
    (root CA -> intermediate -> leaf with serverAuth+clientAuth, SAN localhost/127.0.0.1).
    Cached for the whole test process; returns a dict of absolute paths (+ 'how')."""
    if "pki" in _pki_cache:
        return _pki_cache["pki"]
    d = base_dir
    if d is None:
        d = tempfile.mkdtemp(prefix="pe2e-pki-")
        atexit.register(shutil.rmtree, d, True)
    os.chmod(d, 0o755)
    names = ["passerelle.crt", "passerelle.key", "ca.pem", "ca.crl"]
    how = None
    if os.access(PASSERELLE_BIN, os.X_OK):
        out = os.path.join(d, "gw")
        try:
            r = subprocess.run([PASSERELLE_BIN, "pki", "dev", "--out", out], cwd=d, timeout=60,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode == 0 and all(os.path.exists(os.path.join(out, n)) for n in names):
                how = "passerelle pki dev"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if how is None:
        out = os.path.join(d, "openssl")
        _openssl_pki(out)
        how = "openssl"
    res = {n.replace(".", "_"): os.path.join(out, n) for n in names}
    res.update(certificate=res["passerelle_crt"], private_key=res["passerelle_key"],
               trust_anchors=res["ca_pem"], crl=res["ca_crl"], dir=out, how=how)
    _pki_cache["pki"] = res
    return res


def _openssl_pki(out):
    os.makedirs(out, exist_ok=True)

    def ossl(*args, stdin=None):
        r = subprocess.run(["openssl"] + list(args), cwd=out, input=stdin, timeout=60,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise HarnessError("openssl %s failed: %s" % (" ".join(args), r.stdout.decode(errors="replace")))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "root.key", "-out", "root.pem", "-days", "3650",
         "-subj", "/C=FR/O=Test IGC-Sante/CN=Test Root CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ossl("req", *ec, "-keyout", "int.key", "-out", "int.csr", "-subj", "/C=FR/O=Test IGC-Sante/CN=Test Intermediate CA")
    with open(os.path.join(out, "int.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ossl("x509", "-req", "-in", "int.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
         "-out", "int.pem", "-days", "3650", "-extfile", "int.ext")
    ossl("req", *ec, "-keyout", "passerelle.key", "-out", "leaf.csr",
         "-subj", "/C=FR/O=Test/CN=passerelle.chu-test.mssante.fr")
    with open(os.path.join(out, "leaf.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectAltName=DNS:passerelle.chu-test.mssante.fr,DNS:localhost,IP:127.0.0.1\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ossl("x509", "-req", "-in", "leaf.csr", "-CA", "int.pem", "-CAkey", "int.key", "-CAcreateserial",
         "-out", "leaf.pem", "-days", "825", "-extfile", "leaf.ext")
    with open(os.path.join(out, "passerelle.crt"), "wb") as f:
        for n in ("leaf.pem", "int.pem"):
            with open(os.path.join(out, n), "rb") as g:
                f.write(g.read())
    with open(os.path.join(out, "ca.pem"), "wb") as f:
        with open(os.path.join(out, "root.pem"), "rb") as g:
            f.write(g.read())
    # an (empty) CRL issued by the root, through a minimal `openssl ca` setup
    open(os.path.join(out, "index.txt"), "w").close()
    with open(os.path.join(out, "crlnumber"), "w") as f:
        f.write("01\n")
    with open(os.path.join(out, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca=CA_default\n[CA_default]\ndatabase=index.txt\ncrlnumber=crlnumber\n"
                "default_md=sha256\ndefault_crl_days=30\n")
    ossl("ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "root.key", "-cert", "root.pem", "-out", "ca.crl")
    os.chmod(os.path.join(out, "passerelle.key"), 0o600)


def relay_transport(port, host=LOOPBACK, tls="none", **extra):
    """[transport.X] table of a static next hop."""
    t = {"kind": "relay", "next_hop": "%s:%d" % (host, port), "tls": tls}
    t.update(extra)
    return t


def listener(name, port, routes, host=LOOPBACK, starttls="offer", client_certificate="off",
             clients=("127.0.0.0/8",), **extra):
    """One [[listener]] table."""
    l = {"name": name, "address": "%s:%d" % (host, port), "clients": list(clients),
         "starttls": starttls, "client_certificate": client_certificate, "routes": list(routes)}
    l.update(extra)
    return l


def gateway_config(tmpdir, listeners, routes, transports, queue=None, name="gw",
                   hostname="passerelle.chu-test.mssante.fr", directory=None, pki=None, **sections):
    """A complete gateway config as a dict (see CONTRACT.md), absolute paths under tmpdir.

    queue: overrides of the test defaults retry=["1s"], lifetime="1h", delay_warning="0".
    directory: the [directory] table (default kind = "none").  Extra keyword arguments
    become further top-level sections (e.g. whitelist={...}, dns={...}, smtp={...})."""
    pki = pki or dev_pki()
    q = {"retry": ["1s"], "lifetime": "1h", "delay_warning": "0"}
    q.update(queue or {})
    cfg = {
        "server": {"hostname": hostname, "spool": os.path.join(tmpdir, name, "spool"),
                   "admin": "%s:%d" % (LOOPBACK, free_port())},
        "tls": {"certificate": pki["certificate"], "private_key": pki["private_key"],
                "trust_anchors": pki["trust_anchors"], "crls": [pki["crl"]]},
        "listener": list(listeners),
        "directory": directory or {"kind": "none"},
        "route": list(routes),
        "transport": dict(transports),
        "queue": q,
    }
    cfg.update(sections)
    return cfg


# --------------------------------------------------------------------------- SMTP clients

def swaks(*args, timeout=60):
    """Run swaks with the given arguments; returns (returncode, combined output)."""
    try:
        r = subprocess.run(["swaks"] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 124, (e.output or b"").decode("utf-8", "replace") + "\n[swaks timed out]"
    return r.returncode, r.stdout.decode("utf-8", "replace")


def banner_of(source_ip, port, host=LOOPBACK, timeout=10):
    """The first reply a server gives a client connecting from `source_ip` ("" when the
    connection fails): an establishment's MTA known by its address, seen by the gateway."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((source_ip, 0))
        s.connect((host, port))
        return s.recv(512).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        s.close()


@contextlib.contextmanager
def smtp_session(host, port, helo="client.chu-test.mssante.fr", timeout=30, ehlo=True):
    """smtplib.SMTP connected (and EHLO'd) to host:port; closed on exit."""
    s = smtplib.SMTP(timeout=timeout)
    try:
        s.connect(host, port)
        if ehlo:
            s.ehlo(helo)
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.quit()
        with contextlib.suppress(Exception):
            s.close()


def queued_id(reply_text):
    """The queue ID of a `250 ... queued as ID` reply (bytes or str), or None."""
    if isinstance(reply_text, bytes):
        reply_text = reply_text.decode("utf-8", "replace")
    m = re.search(r"queued as ([^\s]+)", reply_text)
    return m.group(1) if m else None


class RawSMTP:
    """Byte-level SMTP client for protocol tests (bare LF, BDAT, odd addresses)."""

    def __init__(self, host, port, timeout=20):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.transcript = []

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(b"C: " + data[:300])
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by server; transcript:\n" + self.dump())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """Read one (possibly multi-line) reply: (code:int, text:str with lines joined by \\n)."""
        lines = []
        while True:
            line = self._line()
            self.transcript.append(b"S: " + line)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = int(lines[0][:3])
        return code, "\n".join(l[4:].decode("utf-8", "replace") for l in lines)

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def dump(self):
        return "\n".join(x.decode("utf-8", "replace") for x in self.transcript)

    def close(self):
        with contextlib.suppress(Exception):
            self.sock.sendall(b"QUIT\r\n")
        with contextlib.suppress(Exception):
            self.sock.close()


def http_get(host, port, path="/", timeout=10):
    """(status, body bytes) of a plain HTTP GET (the gateway's admin endpoint)."""
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# --------------------------------------------------------------------------- processes

# Gateway.log() waits for the log to settle (the gateway writes its lines up to 5 ms late);
# benches polling a busy gateway's log turn it off.
LOG_SETTLE = True


class _Proc:
    """Common bits: a subprocess in its own process group with output in a log file."""

    proc = None
    logfile = None   # what log() reads
    outfile = None   # where the process' stdout+stderr go (default: logfile)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return read_text(self.logfile)

    def wait_log(self, regex, timeout=10.0):
        return wait_file_regex(self.logfile, regex, timeout, what="/%s/ in %s" % (regex, self.logfile))

    def output(self):
        """The process' own stdout+stderr."""
        return read_text(self.outfile or self.logfile)

    def _spawn(self, argv, cwd, env=None):
        lf = open(self.outfile or self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            lf.close()
        _register(self)
        return self.proc


class Peer(_Proc):
    """The project's SMTP test peer (mss-peer) as a next-hop sink.

    Peer(tmpdir, "127.0.0.1:PORT", name="a", rcpt_reply=["bob=550 5.1.1 no"], require_tls=True)
    (listen defaults to a free loopback port; Peer(tmpdir, "a") is Peer(tmpdir, name="a"))
    Keyword options map to mss-peer flags: foo_bar=value -> --foo-bar value, True -> --foo-bar,
    a list -> the flag repeated.  start=False creates it stopped (its port is reserved)."""

    def __init__(self, tmpdir, listen=None, name=None, start=True, **opts):
        if listen and ":" not in listen and name is None:  # Peer(tmpdir, "a") names it
            name, listen = listen, None
        self.listen = listen or "%s:%d" % (LOOPBACK, free_port())
        self.host, self.port = split_hostport(self.listen)
        self.name = name = name or "p%d" % self.port
        self.root = os.path.join(tmpdir, "peer-" + name)
        self.dir = os.path.join(self.root, "mail")
        os.makedirs(self.dir, exist_ok=True)
        self.outfile = os.path.join(self.root, "stdout.log")
        self.logfile = os.path.join(self.root, "peer.log")  # --log: connect/cmd/tls/stored lines
        self.opts = opts
        if start:
            self.start()

    def argv(self):
        argv = [MSS_PEER_BIN, "--listen", self.listen, "--dir", self.dir, "--log", self.logfile]
        for k, v in self.opts.items():
            flag = "--" + k.replace("_", "-")
            if v is None or v is False:
                continue
            if v is True:
                argv.append(flag)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    argv += [flag, str(x)]
            else:
                argv += [flag, str(v)]
        return argv

    def start(self, timeout=10.0):
        if self.running():
            return self
        if not os.access(MSS_PEER_BIN, os.X_OK):
            raise HarnessError("test peer binary missing: %s (build: CARGO_TARGET_DIR=target/testpeer "
                               "cargo build --release --manifest-path testpeer/Cargo.toml)" % MSS_PEER_BIN)
        start_len = len(self.output())
        self._spawn(self.argv(), cwd=self.root)

        def banner():
            if self.proc.poll() is not None:
                raise HarnessError("mss-peer %s exited with %s:\n%s" % (self.name, self.proc.returncode, tail(self.output())))
            return "mss-peer listening on" in self.output()[start_len:]
        wait_until(banner, timeout, what="mss-peer %s banner" % self.name)
        return self

    def stop(self):
        stop_process(self.proc, grace=5)
        _unregister(self)

    def messages(self):
        """[(envelope dict, eml bytes)] of every complete message, in arrival order."""
        res = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return res
        nums = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
        for n in nums:
            with open(os.path.join(self.dir, "%d.json" % n), "rb") as f:
                meta = json.load(f)
            with open(os.path.join(self.dir, "%d.eml" % n), "rb") as f:
                eml = f.read()
            meta.setdefault("n", n)
            res.append((meta, eml))
        return res

    def count(self):
        return len(self.messages())

    def wait_messages(self, n, timeout=15.0):
        """Wait until at least n messages arrived; returns messages()."""
        def enough():
            m = self.messages()
            return m if len(m) >= n else None
        try:
            return wait_until(enough, timeout, interval=0.1, what="%d message(s) at peer %s" % (n, self.name))
        except TimeoutError as e:
            raise AssertionError("%s (got %d)" % (e, len(self.messages())))


def addr(a):
    """Bare address of an envelope address as the peer reports it ('<x>' -> 'x', None -> '')."""
    if a is None:
        return ""
    a = a.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    return a


def rcpts(meta):
    return [addr(r) for r in meta.get("rcpt_to", [])]


def parse_eml(eml):
    return email.message_from_bytes(eml, policy=email.policy.default)


class Postfix:
    """A private Postfix instance on loopback: postfix -c <root>/etc start.

    Postfix(tmpdir, "mta", listen="127.0.0.1:PORT", relayhost="[127.0.0.1]:2525",
            transport_map_lines=["example.org smtp:[127.0.0.1]:2600"], extra_main_cf={...})"""

    def __init__(self, tmpdir, name="mta", listen=None, relayhost="", transport_map_lines=(),
                 extra_main_cf=None, myhostname=None, mydomain="chu-test.mssante.fr",
                 smtp_tls_security_level="none", start=True):
        if not shutil.which("postfix") and not os.path.exists("/usr/sbin/postfix"):
            raise HarnessError("postfix is not installed (run tests/install-deps.sh)")
        self.name = name
        self.root = os.path.join(tmpdir, "postfix-" + name)
        self.etc = os.path.join(self.root, "etc")
        for d in ("etc", "spool", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        self.listen = listen or "%s:%d" % (LOOPBACK, free_port())
        self.host, self.port = split_hostport(self.listen)
        self.logfile = os.path.join(self.root, "log", "postfix.log")
        self.pidfile = os.path.join(self.root, "spool", "pid", "master.pid")
        self.master_pid = None
        values = dict(root=self.root, config_directory=self.etc, listen=self.listen,
                      syslog_name="pf-e2e-%s-%d" % (name, self.port),
                      myhostname=myhostname or "%s.%s" % (name, mydomain), mydomain=mydomain,
                      relayhost=relayhost, smtp_tls_security_level=smtp_tls_security_level)
        main_cf = self._render("main.cf", values)
        main_cf = self._override(main_cf, extra_main_cf or {})
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(self._render("master.cf", values))
        with open(os.path.join(self.etc, "transport"), "w") as f:
            f.write("".join(l + "\n" for l in transport_map_lines))
        if start:
            self.start()

    @staticmethod
    def _render(name, values):
        with open(os.path.join(POSTFIX_TEMPLATES, name)) as f:
            return string.Template(f.read()).substitute(values)

    @staticmethod
    def _override(main_cf, extra):
        if not extra:
            return main_cf
        keys = set(extra)
        lines = [l for l in main_cf.splitlines()
                 if not (re.match(r"^\s*([a-z0-9_]+)\s*=", l) and re.match(r"^\s*([a-z0-9_]+)", l).group(1) in keys)]
        lines.append("# --- per-test settings")
        lines += ["%s = %s" % (k, v) for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def _postfix(self, *args, timeout=60):
        r = subprocess.run(["postfix", "-c", self.etc] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           start_new_session=True)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def start(self, timeout=15.0):
        rc, out = self._postfix("check")
        if rc != 0:
            raise HarnessError("postfix -c %s check failed:\n%s" % (self.etc, out))
        _register(self)
        rc, out = self._postfix("start")
        if rc != 0:
            raise HarnessError("postfix -c %s start failed:\n%s\n%s" % (self.etc, out, tail(self.log())))
        try:
            self.master_pid = int(wait_until(lambda: read_text(self.pidfile).strip(), 5, what="postfix master.pid"))
        except TimeoutError:
            self.master_pid = None
        wait_port(self.host, self.port, timeout)
        return self

    def _is_our_master(self, pid):
        """pid is alive and is the master of this instance (not a recycled pid)."""
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        return ("MAIL_CONFIG=" + self.etc).encode() in env

    def running(self):
        return bool(self.master_pid) and self._is_our_master(self.master_pid)

    def stop(self):
        if not self.master_pid:  # start() failed half-way: the pid file may still name it
            with contextlib.suppress(ValueError):
                pid = int(read_text(self.pidfile).strip() or 0)
                self.master_pid = pid if pid and self._is_our_master(pid) else None
        if not self.master_pid:
            _unregister(self)
            return
        with contextlib.suppress(Exception):
            self._postfix("stop", timeout=20)
        try:
            wait_until(lambda: not self.running(), 10, what="postfix master to exit")
        except TimeoutError:
            # master started its own session: its pid is also its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if not self._is_our_master(self.master_pid):
                    raise ProcessLookupError
                os.killpg(self.master_pid, signal.SIGKILL)
        self.master_pid = None
        _unregister(self)

    def log(self):
        return read_text(self.logfile)

    def wait_log(self, regex, timeout=10.0):
        return wait_file_regex(self.logfile, regex, timeout, what="/%s/ in postfix %s log" % (regex, self.name))

    def flush(self):
        """Ask the queue manager to retry deferred mail now (postqueue -f)."""
        subprocess.run(["postqueue", "-c", self.etc, "-f"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    def queue(self):
        """postqueue -p output."""
        r = subprocess.run(["postqueue", "-c", self.etc, "-p"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return r.stdout.decode("utf-8", "replace")


class Gateway(_Proc):
    """passerelle serve --config <tmp>/gw/passerelle.toml (cwd = that directory).

    config: TOML text or a dict (written with toml_dumps).  env: extra environment
    (e.g. {"PASSERELLE__QUEUE__LIFETIME": "10s"}).  Listener addresses are read from
    the config to know when the gateway is up; self.config is the parsed config."""

    def log(self):
        """The log once it has settled: the gateway writes its lines in batches up to 5 ms
        after the event (src/cli/logsink.rs), so a line about what just happened may still be
        on its way. Waits until the file has not grown for 25 ms (deadline 2 s; a busy gateway
        is read as it is then). Benches, which poll the log under load, set LOG_SETTLE = False."""
        if not LOG_SETTLE:
            return read_text(self.logfile)
        deadline = time.monotonic() + 2.0
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.logfile)
            except OSError:
                size = None
            now = time.monotonic()
            if size != last:
                last, since = size, now
            elif now - since >= 0.025:
                break
            time.sleep(0.005)
        return read_text(self.logfile)

    def __init__(self, tmpdir, config, env=None, name="gw", start=True):
        self.name = name
        self.root = os.path.join(tmpdir, name)
        os.makedirs(self.root, exist_ok=True)
        self.config_path = os.path.join(self.root, "passerelle.toml")
        self.logfile = os.path.join(self.root, "passerelle.log")
        self.env = dict(env or {})
        self.set_config(config)
        if start:
            self.start()

    def set_config(self, config):
        """Write a new config (TOML text or dict); takes effect at the next start()."""
        text = config if isinstance(config, str) else toml_dumps(config)
        self.config = tomllib.loads(text)
        with open(self.config_path, "w") as f:
            f.write(text + "\n")
        self.listeners = [split_hostport(l["address"]) for l in self.config.get("listener", [])]
        admin = self.config.get("server", {}).get("admin")
        self.admin = split_hostport(admin) if admin else None

    def listener(self, name=None):
        """(host, port) of a listener by name (default: the first one)."""
        for l in self.config.get("listener", []):
            if name is None or l.get("name") == name:
                return split_hostport(l["address"])
        raise KeyError(name)

    @property
    def address(self):
        """'host:port' of the first listener."""
        return "%s:%d" % self.listener()

    def _env(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        return env

    def start(self, timeout=20.0):
        if self.running():
            return self
        if not os.access(PASSERELLE_BIN, os.X_OK):
            raise HarnessError("gateway binary missing: %s (cargo build --release)" % PASSERELLE_BIN)
        with open(self.logfile, "ab") as f:
            f.write(("==== start %s ====\n" % time.strftime("%H:%M:%S")).encode())
        self._spawn([PASSERELLE_BIN, "serve", "--config", self.config_path], cwd=self.root, env=self._env())
        try:
            for host, port in self.listeners:
                wait_port(host, port, timeout, proc=self.proc)
        except (HarnessError, TimeoutError) as e:
            raise HarnessError("gateway did not start: %s\n--- gateway log:\n%s" % (e, tail(self.log())))
        return self

    def stop(self, grace=10.0):
        """SIGTERM, wait up to grace seconds, then SIGKILL. Returns the exit status."""
        rc = stop_process(self.proc, grace=grace, sig=signal.SIGTERM)
        _unregister(self)
        return rc

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)
        _unregister(self)
        return self.proc.returncode if self.proc else None

    def restart(self, kill=False):
        self.kill9() if kill else self.stop()
        # the listening ports must be free again before we start (TIME_WAIT is fine with SO_REUSEADDR)
        return self.start()

    def cli(self, *args, timeout=30):
        """Run another passerelle command against the same config: (rc, output)."""
        r = subprocess.run([PASSERELLE_BIN] + [str(a) for a in args] + ["--config", self.config_path],
                           cwd=self.root, env=self._env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return r.returncode, r.stdout.decode("utf-8", "replace")


class Postgres:
    """A private PostgreSQL server on a loopback port, for the shared journal.

    PostgreSQL refuses to run as root: as root, initdb/pg_ctl run as the `postgres` user
    (runuser) on a data directory it owns under <tmpdir>/pg-NAME. Trust authentication on
    127.0.0.1 only; fsync off (a test database).
        pg = Postgres(tmpdir); pg.createdb("passerelle"); pg.url("passerelle")
        pg.stop(); pg.start()          # the same data and port"""

    def __init__(self, tmpdir, name="pg", port=None, start=True):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))
        if not bins:
            raise HarnessError("PostgreSQL is not installed (run tests/install-deps.sh)")
        self.bindir = os.path.dirname(bins[-1])
        self.name = name
        self.root = os.path.join(tmpdir, "pg-" + name)
        self.data = os.path.join(self.root, "data")
        self.sockdir = os.path.join(self.root, "sock")
        self.logfile = os.path.join(self.root, "postgres.log")
        self.port = port or free_port()
        self.started = False
        os.makedirs(self.sockdir, exist_ok=True)
        self._as_user = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            import pwd
            pw = pwd.getpwnam("postgres")
            for d in (self.root, self.sockdir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 50\nshared_buffers = 32MB\n" % (self.port, self.sockdir))
        if start:
            self.start()

    def _run(self, tool, *args, timeout=60, check=True):
        argv = self._as_user + [os.path.join(self.bindir, tool)] + list(args)
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, cwd=self.root)
        out = r.stdout.decode("utf-8", "replace")
        if check and r.returncode != 0:
            raise HarnessError("%s %s failed (%d):\n%s\n%s" % (tool, " ".join(args), r.returncode, out,
                                                             tail(self.log())))
        return r.returncode, out

    def start(self, timeout=30):
        _register(self)
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", str(timeout), "start",
                  timeout=timeout + 10)
        self.started = True
        wait_port(LOOPBACK, self.port, timeout)
        return self

    def stop(self, mode="fast"):
        """pg_ctl stop (fast: connections are cut, like a server going away)."""
        if self.started and os.path.exists(os.path.join(self.data, "postmaster.pid")):
            rc, _ = self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop",
                              timeout=40, check=False)
            if rc != 0:
                self._kill()
        self.started = False
        _unregister(self)

    def _kill(self):
        with contextlib.suppress(Exception):
            pid = int(read_text(os.path.join(self.data, "postmaster.pid")).split()[0])
            os.kill(pid, signal.SIGKILL)

    def running(self):
        return self.started and port_open(LOOPBACK, self.port)

    def log(self):
        return read_text(self.logfile)

    def url(self, db="passerelle"):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def psql(self, sql, db="passerelle"):
        """Runs SQL with psql; returns its unaligned, tuples-only output."""
        _, out = self._run("psql", "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        return out.strip()

    def createdb(self, db="passerelle"):
        self._run("createdb", "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", db)
        return self.url(db)


# --------------------------------------------------------------------------- test case base

def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit of %ds (E2E_TEST_TIMEOUT)" % TEST_TIMEOUT)


class E2ETestCase(unittest.TestCase):
    """Base class: self.tmp (chmod 755 so Postfix's unprivileged daemons can enter it),
    self.postfix()/self.peer()/self.gateway() start components that are always stopped,
    a SIGALRM per-test time limit, component logs printed when the test fails."""

    timeout = TEST_TIMEOUT

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="pe2e-")
        os.chmod(self.tmp, 0o755)
        self._components = []
        self.addCleanup(self._cleanup_tmp)
        self.addCleanup(self._stop_all)
        self.addCleanup(self._report_on_failure)
        self._old_alarm = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(self.timeout)
        self.addCleanup(self._cancel_alarm)

    def _cancel_alarm(self):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self._old_alarm or signal.SIG_DFL)

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return True
        if not getattr(outcome, "success", True):
            return True
        result = getattr(outcome, "result", None)
        if result is not None:
            for _, lst in (("f", getattr(result, "failures", [])), ("e", getattr(result, "errors", []))):
                # a failed subTest is recorded as (its _SubTest, exc): _SubTest.test_case is self
                if any(getattr(t, "test_case", t) is self for t, _ in lst):
                    return True
        return False

    def _report_on_failure(self):
        # runs first among cleanups (LIFO): components still have their files
        if not self._failed():
            return
        out = ["", "=" * 70, "logs of %s (kept in %s)" % (self.id(), self.tmp)]
        for c in self._components:
            label = "%s %s" % (type(c).__name__, getattr(c, "name", ""))
            out.append("--- %s: %s" % (label, getattr(c, "logfile", "")))
            out.append(tail(c.log(), 40))
            if getattr(c, "outfile", None) and c.output().strip():
                out.append("--- %s output: %s" % (label, c.outfile))
                out.append(tail(c.output(), 20))
        sys.stderr.write("\n".join(out) + "\n")

    def _stop_all(self):
        signal.alarm(0)
        for c in reversed(self._components):
            with contextlib.suppress(Exception):
                c.stop()

    def _cleanup_tmp(self):
        if self._failed() or os.environ.get("E2E_KEEP"):
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    def track(self, component):
        self._components.append(component)
        return component

    def postfix(self, name="mta", **kw):
        start = kw.pop("start", True)
        p = self.track(Postfix(self.tmp, name, start=False, **kw))
        return p.start() if start else p

    def peer(self, name="peer", **kw):
        start = kw.pop("start", True)
        p = self.track(Peer(self.tmp, name=name, start=False, **kw))
        return p.start() if start else p

    def postgres(self, name="pg", **kw):
        """A private PostgreSQL server (see Postgres), stopped at the end of the test."""
        return self.track(Postgres(self.tmp, name=name, **kw))

    def gateway(self, config, env=None, name="gw", start=True):
        g = self.track(Gateway(self.tmp, config, env=env, name=name, start=False))
        return g.start() if start else g

    def assertNoNewMessages(self, peer, count, wait=2.0, msg=None):
        """Wait `wait` seconds and check peer still holds exactly `count` messages."""
        time.sleep(wait)
        self.assertEqual(peer.count(), count, msg or "unexpected message(s) at peer %s" % peer.name)


def hold_sqlite_lock(case, path, seconds=60):
    """Another process holding `path`'s write lock (BEGIN EXCLUSIVE) for `seconds`: the
    database cannot take a write meanwhile. Killed at the end of the test; returns it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],timeout=30)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(float(sys.argv[2]))\n",
         path, str(seconds)],
        stdout=subprocess.PIPE)
    case.addCleanup(holder.kill)
    if holder.stdout.readline().strip() != b"locked":
        raise HarnessError("could not lock %s" % path)
    return holder
