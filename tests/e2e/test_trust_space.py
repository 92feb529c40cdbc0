"""End-to-end tests of issue 3: the MSSante trust space (mutual TLS and the ANS whitelist).

One development PKI for the whole module (``passerelle pki dev`` + ``pki issue`` +
``pki revoke``), standing for IGC-Sante, plus a second, independent one (a "non-IGC" CA).
The audit operators, each with its own domain declared in the whitelist (the seven cases of
the audit, plus a second flavour of "not IGC"):

    case      domain                       certificate the operator presents          address
    valide    valide.audit.mssante.fr      IGC, DN = the declared DN (the only good one) .11
    sanstls   sanstls.audit.mssante.fr     none: the operator offers no STARTTLS         .12
    expire    expire.audit.mssante.fr      IGC, declared DN, validity ended yesterday    .13
    revoque   revoque.audit.mssante.fr     IGC, declared DN, listed in the CRL           .14
    nonigc    nonigc.audit.mssante.fr      declared DN, from a second `pki dev` (a CA    .15
                                           with the IGC's names but other keys)
    autredn   autredn.audit.mssante.fr     IGC, a DN declared nowhere                    .16
    memecn    memecn.audit.mssante.fr      IGC, declared CN but another O and OU         .17
    etranger  etranger.audit.mssante.fr    declared DN, from an unrelated openssl CA     .18

Outbound (OutboundAuditTests): each operator is an mss-peer on its own loopback address
127.0.0.N requiring STARTTLS and our client certificate; passerelle's relay transports use
tls = "mutual".  Inbound (InboundAuditTests): the same certificates as client certificates
against the trust-space listener (starttls = "require", client_certificate = "require").
Then TLS versions/suites, Postfix interop both ways, whitelist reload and `route test`.
"""

import atexit
import contextlib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
import email.utils

from harness import (PASSERELLE_BIN, E2ETestCase, HarnessError, RawSMTP, addr, free_port, gateway_config,
                     listener, parse_eml, queued_id, rcpts, relay_transport, smtp_session, wait_until)

LOCAL_DOMAIN = "chu-test.mssante.fr"
GW_HOST = "passerelle." + LOCAL_DOMAIN
GW_DN = "CN=%s,OU=999999999900001,O=PASSERELLE DEV,ST=Haute-Garonne (31),C=FR" % GW_HOST
SENDER = "secretariat@" + LOCAL_DOMAIN          # outbound: our establishment's sender
LOCAL_RCPT = "dr.local@" + LOCAL_DOMAIN         # inbound: a mailbox of the establishment


def op_dn(cn, ou, o="OPERATEUR AUDIT", st="Haute-Garonne (31)"):
    return "CN=%s,OU=%s,O=%s,ST=%s,C=FR" % (cn, ou, o, st)


class Case:
    def __init__(self, key, declared, cert_dn=None, ca="igc", expired=False, revoked=False,
                 peer_tls=True, out_reason=None, in_reply=None):
        self.key = key
        self.domain = "%s.audit.mssante.fr" % key
        self.declared = declared                  # DN declared in the whitelist for the domain
        self.cert_dn = cert_dn or declared        # DN of the certificate the operator presents
        self.ca, self.expired, self.revoked, self.peer_tls = ca, expired, revoked, peer_tls
        self.out_reason = out_reason              # regex: why outbound delivery is deferred
        self.in_reply = in_reply                  # (code, regex) of MAIL on the trust-space listener
        self.ip = None                            # loopback address of the outbound peer

    @property
    def rcpt(self):
        return "dr.%s@%s" % (self.key, self.domain)

    @property
    def sender(self):
        return "medecin.%s@%s" % (self.key, self.domain)


INTRUS_DN = op_dn("mx.intrus.audit.test", "999999999900099", o="OPERATEUR INTRUS", st="Rhone (69)")
MEMECN_DECLARED = op_dn("mx.memecn.audit.test", "999999999900017")
MEMECN_FAKE = op_dn("mx.memecn.audit.test", "999999999900098", o="OPERATEUR USURPATEUR")
VALIDE_OTHER_DN = op_dn("mx2.valide.audit.test", "999999999900011")   # the domain's 2nd declared DN


def _not_declared(dn, domain):
    # the DN is compared case-insensitively (RFC 4517 caseIgnoreMatch), and the gateway quotes
    # it in its normalised (case-folded) form: accept any case for the DN itself
    return '"(?i:%s)" is not declared in the MSSante whitelist for %s' % (re.escape(dn), re.escape(domain))


CASES = [
    Case("valide", op_dn("mx.valide.audit.test", "999999999900011")),
    Case("sanstls", op_dn("mx.sanstls.audit.test", "999999999900012"), peer_tls=False,
         out_reason=re.escape("STARTTLS not offered; TLS is required, not sending in clear"),
         in_reply=(530, r"^5\.7\.0 ")),
    Case("expire", op_dn("mx.expire.audit.test", "999999999900013"), expired=True,
         out_reason=re.escape("peer certificate refused: certificate expired"),
         in_reply=(550, r"^5\.7\.1 .*client certificate refused: certificate expired")),
    Case("revoque", op_dn("mx.revoque.audit.test", "999999999900014"), revoked=True,
         out_reason=re.escape("peer certificate refused: certificate revoked"),
         in_reply=(550, r"^5\.7\.1 .*client certificate refused: certificate revoked")),
    Case("nonigc", op_dn("mx.nonigc.audit.test", "999999999900015"), ca="other",
         out_reason=re.escape("peer certificate refused: certificate not issued by a trusted authority"),
         in_reply=(550, r"^5\.7\.1 .*client certificate refused: certificate not issued by a trusted authority")),
    Case("autredn", op_dn("mx.autredn.audit.test", "999999999900016"), cert_dn=INTRUS_DN,
         out_reason="peer certificate DN " + _not_declared(INTRUS_DN, "autredn.audit.mssante.fr"),
         in_reply=(550, r"^5\.7\.1 .*certificate " + _not_declared(INTRUS_DN, "autredn.audit.mssante.fr"))),
    Case("memecn", MEMECN_DECLARED, cert_dn=MEMECN_FAKE,
         out_reason="peer certificate DN " + _not_declared(MEMECN_FAKE, "memecn.audit.mssante.fr"),
         in_reply=(550, r"^5\.7\.1 .*certificate " + _not_declared(MEMECN_FAKE, "memecn.audit.mssante.fr"))),
    Case("etranger", op_dn("mx.etranger.audit.test", "999999999900018"), ca="foreign",
         out_reason=re.escape("peer certificate refused: certificate not issued by a trusted authority"),
         in_reply=(550, r"^5\.7\.1 .*client certificate refused: certificate not issued by a trusted authority")),
]
for _i, _c in enumerate(CASES):
    _c.ip = "127.0.0.%d" % (11 + _i)
CASE = {c.key: c for c in CASES}
VALIDE = CASE["valide"]
FAILING = [c for c in CASES if c.key != "valide"]

# Postfix as a remote operator (test 4a) and a domain added by the reload test (test 5)
PFOP_DOMAIN = "postfix-op.audit.mssante.fr"
PFOP_DN = op_dn("mx.postfix-op.audit.test", "999999999900021", o="OPERATEUR POSTFIX")
NOUVEAU_DOMAIN = "nouveau.audit.mssante.fr"
NOUVEAU_DN = op_dn("mx.nouveau.audit.test", "999999999900031", o="OPERATEUR NOUVEAU")
NOUVEAU_IP = "127.0.0.20"


# --------------------------------------------------------------------------- whitelist

def whitelist_xml(entries):
    """ANS whitelist text for [(domain, dn), ...] (a domain repeats once per DN)."""
    doms = []
    for dom, dn in entries:
        doms.append(
            "    <Domaine>\n"
            "      <Nom>%s</Nom>\n"
            "      <Description>audit %s</Description>\n"
            "      <DNCertificatOperateur>%s</DNCertificatOperateur>\n"
            "      <ResponsableContact>rssi@%s</ResponsableContact>\n"
            "      <SupportContact>support@%s</SupportContact>\n"
            "      <DateMAJ>2026-10-01T10:00:00</DateMAJ>\n"
            "    </Domaine>\n" % (dom, dom, dn.replace("&", "&amp;"), dom, dom))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">\n'
            '  <DateDeGeneration>2026-11-21T03:00:00</DateDeGeneration>\n'
            '  <ListeDomaines>\n%s  </ListeDomaines>\n</ListeBlancheMSSante>\n' % "".join(doms))


def base_whitelist_entries():
    entries = [(LOCAL_DOMAIN, GW_DN), (VALIDE.domain, VALIDE_OTHER_DN)]
    entries += [(c.domain, c.declared) for c in CASES]
    entries.append((PFOP_DOMAIN, PFOP_DN))
    return entries


def postfix_requiring_ccert(crt, key, cafile):
    """main.cf settings of a Postfix operator that requires a client certificate from cafile."""
    return {"smtpd_tls_security_level": "encrypt", "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_req_ccert": "yes", "smtpd_tls_CAfile": cafile,
            "smtpd_tls_chain_files": "%s, %s" % (key, crt), "smtpd_tls_loglevel": "1"}


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- PKI

class AuditPKI:
    """The dev PKI (IGC-Sante stand-in), an independent one (non-IGC), and the operators'
    certificates.  Made once per test process with the gateway's own `pki` commands."""

    def __init__(self, base):
        self.base = base
        os.chmod(base, 0o755)
        self.igc = os.path.join(base, "igc")
        self.other = os.path.join(base, "non-igc")
        self.out = os.path.join(base, "certs")
        cfg = os.path.join(base, "pki.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nhostname = "%s"\n' % GW_HOST)
        self._run("pki", "dev", "--out", self.igc, "--config", cfg)
        self._run("pki", "dev", "--out", self.other, "--config", cfg)
        self.certs = {}
        for c in CASES:
            if not c.peer_tls:
                continue
            if c.ca == "foreign":
                self.issue_foreign(c.key, c.cert_dn, ip=c.ip)
            else:
                self.issue(c.key, c.cert_dn, ip=c.ip, expired=c.expired,
                           ca_dir=self.other if c.ca == "other" else self.igc)
        self.issue("pfop", PFOP_DN, ip="127.0.0.1")
        self.issue("nouveau", NOUVEAU_DN, ip=NOUVEAU_IP)
        revoked = [self.certs[c.key][0] for c in CASES if c.revoked]
        self._run("pki", "revoke", "--dir", self.igc, *revoked)
        # Postfix's unprivileged daemons must read these (test material only)
        for d, _, files in os.walk(base):
            os.chmod(d, 0o755)
            for n in files:
                os.chmod(os.path.join(d, n), 0o644)
        self.ca_pem = os.path.join(self.igc, "ca.pem")
        self.gateway = {"certificate": os.path.join(self.igc, "passerelle.crt"),
                        "private_key": os.path.join(self.igc, "passerelle.key"),
                        "trust_anchors": self.ca_pem, "crl": os.path.join(self.igc, "ca.crl")}
        self.crls = [os.path.join(self.igc, "ca.crl"), os.path.join(self.igc, "root.crl")]

    def _run(self, *args):
        r = subprocess.run([PASSERELLE_BIN] + list(args), cwd=self.base, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0:
            raise HarnessError("passerelle %s failed (%d):\n%s" % (" ".join(args), r.returncode, out))
        return out

    def issue_foreign(self, name, subject, ip):
        """A certificate from a CA that has nothing in common with the IGC (other names, other
        keys), made with openssl: the plain "unknown issuer" case."""
        d = os.path.join(self.base, "foreign")
        os.makedirs(d, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def ossl(*args):
            r = subprocess.run(["openssl"] + list(args), cwd=d, stdin=subprocess.DEVNULL, timeout=60,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                raise HarnessError("openssl %s: %s" % (" ".join(args), r.stdout.decode(errors="replace")))
        if not os.path.exists(os.path.join(d, "root.crt")):
            ossl("req", "-x509", *ec, "-keyout", "root.key", "-out", "root.crt", "-days", "3650",
                 "-subj", "/C=FR/O=AUTORITE ETRANGERE/CN=AC RACINE ETRANGERE",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        # "/C=FR/ST=../O=../OU=../CN=.." reads "CN=..,OU=..,O=..,ST=..,C=FR" in RFC 4514 order
        rdns = [x.split("=", 1) for x in subject.split(",")]
        ossl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
             "-subj", "".join("/%s=%s" % (k, v) for k, v in reversed(rdns)))
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:%s\n" % ip)
        ossl("x509", "-req", "-in", name + ".csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
             "-out", name + ".crt", "-days", "30", "-extfile", name + ".ext")
        self.certs[name] = (os.path.join(d, name + ".crt"), os.path.join(d, name + ".key"))
        return self.certs[name]

    def issue(self, name, subject, ip=None, expired=False, ca_dir=None):
        args = ["pki", "issue", "--dir", ca_dir or self.igc, "--name", name, "--subject", subject,
                "--dns", "localhost", "--out", self.out]
        if ip:
            args += ["--ip", ip]
        if expired:
            args.append("--expired")
        self._run(*args)
        self.certs[name] = (os.path.join(self.out, name + ".crt"), os.path.join(self.out, name + ".key"))
        return self.certs[name]


_PKI = {}


def audit_pki():
    if "pki" not in _PKI:
        if not os.access(PASSERELLE_BIN, os.X_OK):
            raise unittest.SkipTest("gateway binary missing: %s" % PASSERELLE_BIN)
        d = tempfile.mkdtemp(prefix="pe2e-trust-pki-")
        atexit.register(shutil.rmtree, d, True)
        _PKI["pki"] = AuditPKI(d)
    return _PKI["pki"]


# --------------------------------------------------------------------------- helpers

def simple_message(subject, frm, to, msgid=None):
    msgid = msgid or "<%s@%s>" % (uuid.uuid4().hex, frm.split("@")[-1])
    return ("From: <%s>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n\r\nBonjour.\r\n" % (
        frm, to, subject, email.utils.formatdate(), msgid)).encode()


def norm_ws(s):
    return re.sub(r"\s+", " ", s)


def dsn_blocks(eml):
    """[(final recipient, action, diagnostic code)] of the per-recipient blocks of a DSN."""
    msg = parse_eml(eml)
    res = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for b in blocks:
            fr = b.get("Final-Recipient")
            if fr is None:
                continue
            fr = str(fr).split(";", 1)[-1].strip()
            res.append((addr(fr).lower(), norm_ws(str(b.get("Action", ""))).strip().lower(),
                        norm_ws(str(b.get("Diagnostic-Code", "")))))
    return res


def client_context(cert=None, verify=True, **kw):
    """An SSL client context: verifies the gateway against the dev root, optional client chain.
    kw: minimum_version/maximum_version (ssl.TLSVersion), ciphers (OpenSSL cipher string)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(audit_pki().ca_pem)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    if "ciphers" in kw:
        ctx.set_ciphers(kw["ciphers"])
    with warnings_ignored():
        if "minimum_version" in kw:
            ctx.minimum_version = kw["minimum_version"]
        if "maximum_version" in kw:
            ctx.maximum_version = kw["maximum_version"]
    return ctx


@contextlib.contextmanager
def warnings_ignored():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def tls_session(port, ctx=None, helo="mx.operateur.audit.test", starttls=True):
    """smtplib session to 127.0.0.1:port, STARTTLS done with ctx (unless starttls=False)."""
    s = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=20)  # sets _host for SNI/checks
    try:
        s.ehlo(helo)
        if starttls:
            code, msg = s.starttls(context=ctx or client_context())
            if code != 220:
                raise AssertionError("STARTTLS answered %d %r" % (code, msg))
            s.ehlo(helo)
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.quit()
        with contextlib.suppress(Exception):
            s.close()


def starttls_handshake(port, ctx):
    """Raw STARTTLS then the handshake with ctx: returns the SSLSocket (caller closes) or
    raises ssl.SSLError / OSError."""
    c = RawSMTP("127.0.0.1", port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO tls-probe.audit.test")[0] == 250
        code, text = c.cmd("STARTTLS")
        assert code == 220, (code, text)
        c.sock.settimeout(10)
        return ctx.wrap_socket(c.sock, server_hostname="127.0.0.1" if ctx.check_hostname else None)
    except BaseException:
        c.sock.close()
        raise


class TrustTestCase(E2ETestCase):
    """Builds the gateway with the audit PKI and whitelist."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pki = audit_pki()

    def write_whitelist(self, entries=None):
        self.wl_path = os.path.join(self.tmp, "listeblanchemssante.xml")
        write_atomic(self.wl_path, whitelist_xml(entries or base_whitelist_entries()))
        return self.wl_path

    def start_gateway(self, routes_extra=(), transports=None, queue=None, reload="1h", start=True,
                      sink=True):
        """Listeners: etablissement (offer STARTTLS, routes local + extra + mssante + others) and
        trust-space (require STARTTLS and a client certificate, route local only).
        Route local -> transport etablissement -> self.sink (an mss-peer)."""
        self.sink = self.peer("sink", start=sink)
        self.etab_port, self.trust_port = free_port(), free_port()
        if not getattr(self, "wl_path", None):
            self.write_whitelist()
        routes = [{"name": "local", "domains": [LOCAL_DOMAIN], "transport": "etablissement",
                   "directory": False}]
        routes += list(routes_extra)
        routes += [{"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust-space",
                    "whitelist": True, "directory": False},
                   {"name": "others", "domains": ["*"],
                    "reject": "550 5.7.1 only MSSante destinations are relayed here"}]
        tr = {"etablissement": relay_transport(self.sink.port),
              # never reached in these tests (declared domains have their own routes)
              "trust-space": relay_transport(free_port(), tls="mutual")}
        tr.update(transports or {})
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", self.etab_port, ["local"] + [r["name"] for r in routes_extra]
                                + ["mssante", "others"]),
                       listener("trust-space", self.trust_port, ["local"], starttls="require",
                                client_certificate="require")],
            routes=routes, transports=tr, queue=queue, hostname=GW_HOST, pki=self.pki.gateway,
            whitelist={"file": self.wl_path, "reload": reload})
        cfg["tls"]["crls"] = list(self.pki.crls)
        self.gw = self.gateway(cfg, start=start)
        return self.gw

    def operator_peer(self, case_key, ip, cert=True, port=None):
        """An mss-peer standing for a remote operator on its own loopback address, requiring
        STARTTLS and our client certificate (no TLS at all when cert is False)."""
        opts = {}
        if cert:
            crt, key = self.pki.certs[case_key]
            opts = dict(cert=crt, key=key, require_tls=True, client_ca=self.pki.ca_pem,
                        require_client_cert=True)
        listen = "%s:%d" % (ip, port or free_port(ip))
        return self.peer("op-" + case_key, listen=listen, **opts)

    def send(self, port, frm, to, raw):
        """smtplib straight to the gateway's etablissement listener; returns the queue ID."""
        with smtp_session("127.0.0.1", port) as s:
            code, msg = s.mail(frm)
            self.assertEqual(code, 250, msg)
            for r in to:
                code, msg = s.rcpt(r)
                self.assertEqual(code, 250, "RCPT %s: %s %s" % (r, code, msg))
            code, msg = s.data(raw)
            self.assertEqual(code, 250, msg)
            qid = queued_id(msg)
            self.assertTrue(qid, msg)
            return qid

    def deferral_lines(self, rcpt):
        return [l for l in self.gw.log().splitlines()
                if rcpt in l and re.search(r'status="?deferred', l)]


# --------------------------------------------------------------------------- 1. outbound

class OutboundAuditTests(TrustTestCase):

    def start_audit_bed(self, queue=None):
        self.ops = {}
        routes, transports = [], {}
        for c in CASES:
            self.ops[c.key] = self.operator_peer(c.key, c.ip, cert=c.peer_tls)
            routes.append({"name": "audit-" + c.key, "domains": [c.domain], "transport": "op-" + c.key,
                           "whitelist": True, "directory": False})
            transports["op-" + c.key] = relay_transport(self.ops[c.key].port, host=c.ip, tls="mutual")
        self.start_gateway(routes_extra=routes, transports=transports, queue=queue)

    def test_1_outbound_audit_peers_then_dsn(self):
        """Eight operators, one recipient domain each: only the valid one is delivered to (with
        our client certificate); the seven others are deferred before MAIL, each for its own
        reason, and once the lifetime is over the sender's DSNs give that reason per recipient.
        One message to all eight recipients (per-recipient outcomes) and one per domain."""
        self.start_audit_bed(queue={"retry": ["1s"], "lifetime": "5s"})
        multi_id = "<audit-multi-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        all_rcpts = [c.rcpt for c in CASES]
        self.send(self.etab_port, SENDER, all_rcpts,
                  simple_message("audit %d destinataires" % len(all_rcpts), SENDER, ", ".join(all_rcpts), msgid=multi_id))
        single_ids = {}
        for c in CASES:
            single_ids[c.key] = "<audit-%s-%s@%s>" % (c.key, uuid.uuid4().hex, LOCAL_DOMAIN)
            self.send(self.etab_port, SENDER, [c.rcpt],
                      simple_message("audit %s" % c.key, SENDER, c.rcpt, msgid=single_ids[c.key]))

        # (1) the valid operator: both messages, over mutual TLS with our certificate
        got = self.ops["valide"].wait_messages(2, 15)
        self.assertEqual(len(got), 2)
        for meta, eml in got:
            self.assertEqual(rcpts(meta), [VALIDE.rcpt], "only the valid recipient goes to this peer")
            self.assertEqual(addr(meta["mail_from"]), SENDER)
            tls = meta.get("tls")
            self.assertTrue(tls, "delivered without TLS: %r" % meta)
            self.assertIn(tls.get("version"), ("TLSv1_2", "TLSv1_3"), tls)
            self.assertEqual(tls.get("client_dn"), GW_DN, "the gateway must present its own certificate")
        self.assertEqual({parse_eml(e)["Message-ID"] for _, e in got}, {multi_id, single_ids["valide"]})

        # (2..8) deferred, each with its own reason, before any MAIL
        for c in FAILING:
            with self.subTest(case=c.key):
                try:
                    wait_until(lambda: self.deferral_lines(c.rcpt), 10, what="deferral of %s" % c.rcpt)
                except TimeoutError as e:
                    self.fail("%s: %s" % (c.key, e))
                lines = self.deferral_lines(c.rcpt)
                self.assertTrue(any(re.search(c.out_reason, l) for l in lines),
                                "%s: no deferral with /%s/ in:\n%s" % (c.key, c.out_reason, "\n".join(lines[:4])))
                for other in FAILING:
                    if other is not c and other.out_reason != c.out_reason:
                        self.assertFalse(any(re.search(other.out_reason, l) for l in lines),
                                         "%s deferred for the reason of %s:\n%s" % (c.key, other.key, lines[0]))

        # the lifetime is over: DSNs to the sender (through route local to the sink)
        failed = {c.rcpt.lower(): c for c in FAILING}
        want = {(mid, r) for mid in (multi_id,) for r in failed} | {(single_ids[c.key], c.rcpt.lower()) for c in FAILING}
        seen = {}

        def all_dsns():
            for meta, eml in self.sink.messages():
                if meta.get("n") in seen:
                    continue
                self.assertEqual(addr(meta["mail_from"]), "", "a DSN comes from the null sender")
                self.assertEqual(rcpts(meta), [SENDER])
                text = eml.decode("utf-8", "replace")
                mids = [m for m in [multi_id] + list(single_ids.values()) if m in text]
                self.assertEqual(len(mids), 1, "DSN about which message?\n%s" % text[:3000])
                seen[meta["n"]] = (mids[0], dsn_blocks(eml), text)
            covered = {(mid, r) for mid, blocks, _ in seen.values() for r, a, _ in blocks if a == "failed"}
            return want <= covered
        try:
            wait_until(all_dsns, 40, interval=0.3, what="DSNs for the refused recipients")
        except TimeoutError as e:
            self.fail("%s; DSNs so far: %r" % (e, [(m, b) for m, b, _ in seen.values()]))
        for mid, blocks, text in seen.values():
            for r, action, diag in blocks:
                self.assertNotEqual(r, VALIDE.rcpt.lower(), "the delivered recipient is in a DSN:\n" + text)
                self.assertIn((mid, r), want, "DSN of %s names recipient %s" % (mid, r))
                c = failed[r]
                with self.subTest(dsn=c.key, message=mid):
                    self.assertEqual(action, "failed")
                    self.assertRegex(diag, c.out_reason, "Diagnostic-Code of %s lacks its reason" % r)

        # the refused operators never got a transaction; each was contacted (and, with TLS,
        # saw our client certificate) and left before MAIL
        self.assertEqual(len(self.ops["valide"].messages()), 2)
        for c in FAILING:
            with self.subTest(peer=c.key):
                log = self.ops[c.key].log()
                self.assertEqual(self.ops[c.key].count(), 0)
                self.assertRegex(log, r"(?m)^connect ", "the gateway never tried %s" % c.key)
                self.assertNotRegex(log, r"(?m)^cmd (MAIL|RCPT|DATA|BDAT)\b", "%s got a transaction:\n%s" % (c.key, log))
                if c.peer_tls:
                    self.assertRegex(log, r"(?m)^tls ok .* client_dn=%s$" % re.escape(GW_DN), log)
                else:
                    self.assertNotRegex(log, r"(?m)^cmd STARTTLS", log)


# --------------------------------------------------------------------------- 2. inbound

class InboundAuditTests(TrustTestCase):

    def mail_from(self, s, sender):
        code, msg = s.mail(sender)
        return code, msg.decode("utf-8", "replace")

    def test_2_inbound_client_certificates(self):
        """The trust-space listener: only the valid certificate, for its own domain, may send."""
        self.start_gateway()
        port = self.trust_port
        delivered = []
        # the valid operator: accepted and delivered
        with tls_session(port, client_context(self.pki.certs["valide"])) as s:
            code, msg = self.mail_from(s, VALIDE.sender)
            self.assertEqual(code, 250, msg)
            self.assertEqual(s.rcpt(LOCAL_RCPT)[0], 250)
            mid = "<in-valide-%s@%s>" % (uuid.uuid4().hex, VALIDE.domain)
            code, msg = s.data(simple_message("entrant valide", VALIDE.sender, LOCAL_RCPT, msgid=mid))
            self.assertEqual(code, 250, msg)
            delivered.append(mid)
            # the same certificate for another declared domain: refused
            code, msg = self.mail_from(s, CASE["expire"].sender)
            self.assertEqual(code, 550, msg)
            self.assertRegex(msg, r"^5\.7\.1 .*certificate " + _not_declared(VALIDE.declared, CASE["expire"].domain))
            # for an undeclared domain: refused
            code, msg = self.mail_from(s, "someone@gmail.com")
            self.assertEqual(code, 550, msg)
            self.assertRegex(msg, r"^5\.7\.1 ")
            # the null sender: the DN is declared for some domain -> accepted
            code, msg = self.mail_from(s, "")
            self.assertEqual(code, 250, msg)
            self.assertEqual(s.rcpt(LOCAL_RCPT)[0], 250)
            mid = "<in-null-%s@%s>" % (uuid.uuid4().hex, VALIDE.domain)
            code, msg = s.data(simple_message("notification", "MAILER-DAEMON@" + VALIDE.domain, LOCAL_RCPT, msgid=mid))
            self.assertEqual(code, 250, msg)
            delivered.append(mid)

        # no TLS at all: 530 at MAIL
        with tls_session(port, starttls=False) as s:
            code, msg = self.mail_from(s, VALIDE.sender)
            self.assertEqual(code, 530, msg)
            self.assertRegex(msg, r"^5\.7\.0 ")
            code, msg = s.rcpt(LOCAL_RCPT)
            self.assertGreaterEqual(code, 500, msg)
        # TLS without a client certificate: 530 5.7.0 at MAIL
        with tls_session(port, client_context()) as s:
            code, msg = self.mail_from(s, VALIDE.sender)
            self.assertEqual(code, 530, msg)
            self.assertRegex(msg, r"^5\.7\.0 ")
            code, msg = s.rcpt(LOCAL_RCPT)
            self.assertGreaterEqual(code, 500, msg)
        # the other certificates, each with a sender of the domain declared for its DN
        for c in FAILING:
            if not c.peer_tls:
                continue
            with self.subTest(case=c.key), tls_session(port, client_context(self.pki.certs[c.key])) as s:
                code, msg = self.mail_from(s, c.sender)
                want_code, want_rx = c.in_reply
                self.assertEqual(code, want_code, "%s: %s" % (c.key, msg))
                self.assertRegex(msg, want_rx)
                code, msg = s.rcpt(LOCAL_RCPT)
                self.assertGreaterEqual(code, 500, "%s: RCPT after a refused MAIL: %d %s" % (c.key, code, msg))
                code, msg = s.docmd("DATA")
                self.assertNotEqual(code, 354, "%s: DATA accepted" % c.key)
                # nor may it send bounces: its DN is declared nowhere as it stands
                code, msg = self.mail_from(s, "")
                self.assertEqual(code, 550, "%s: null sender: %s" % (c.key, msg))

        msgs = self.sink.wait_messages(len(delivered), 15)
        time.sleep(1.5)
        msgs = self.sink.messages()
        self.assertEqual(sorted(parse_eml(e)["Message-ID"] for _, e in msgs), sorted(delivered),
                         "only the valid operator's messages may reach the establishment")
        for meta, _ in msgs:
            self.assertEqual(rcpts(meta), [LOCAL_RCPT])
        self.assertEqual(sorted(addr(m["mail_from"]) for m, _ in msgs), sorted(["", VALIDE.sender]))


# --------------------------------------------------------------------------- 3. TLS versions/suites

class _ControlServer:
    """A one-shot local TLS server (Python ssl) proving a client context can handshake at all."""

    def __init__(self, ctx):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.sock.settimeout(10)
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.error = e
        finally:
            self.sock.close()


class TlsProtocolTests(TrustTestCase):

    LEGACY = dict(minimum_version=ssl.TLSVersion.TLSv1_1, maximum_version=ssl.TLSVersion.TLSv1_1,
                  ciphers="DEFAULT@SECLEVEL=0")
    RSA_KX = dict(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-GCM-SHA256:AES256-GCM-SHA384")
    CBC_ECDHE = dict(maximum_version=ssl.TLSVersion.TLSv1_2,
                     ciphers="ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:"
                             "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA")

    def control(self, client_kw, server_cert, server_ciphers, server_min):
        """The client really can speak what it offers: it handshakes with a permissive server."""
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(*server_cert)
        sctx.set_ciphers(server_ciphers)
        with warnings_ignored():
            sctx.minimum_version = server_min
        srv = _ControlServer(sctx)
        ctx = client_context(verify=False, **client_kw)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                info = (s.version(), s.cipher()[0])
                s.sendall(b"x")
        srv.t.join(10)
        return info

    def rsa_cert(self):
        d = os.path.join(self.tmp, "rsa")
        os.makedirs(d)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
                        "-out", "c.pem", "-days", "2", "-subj", "/CN=rsa-control"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return os.path.join(d, "c.pem"), os.path.join(d, "k.pem")

    def test_3_tls_versions_and_suites(self):
        """TLS 1.1, RSA key exchange and CBC suites are refused at the handshake on both
        listeners; TLS 1.2 and 1.3 with ECDHE + AEAD succeed."""
        self.start_gateway()
        # the clients are able to do what they offer (else the refusals would prove nothing)
        ec_cert = self.pki.certs["valide"]
        v, cph = self.control(self.LEGACY, ec_cert, "DEFAULT@SECLEVEL=0", ssl.TLSVersion.TLSv1)
        self.assertEqual(v, "TLSv1.1", "control: the TLS 1.1 client could not speak TLS 1.1")
        v, cph = self.control(self.RSA_KX, self.rsa_cert(), "AES128-GCM-SHA256:AES256-GCM-SHA384", ssl.TLSVersion.TLSv1_2)
        self.assertEqual((v, cph[:6]), ("TLSv1.2", "AES128"), "control: RSA key exchange client")
        v, cph = self.control(self.CBC_ECDHE, ec_cert, "ECDHE-ECDSA-AES128-SHA256", ssl.TLSVersion.TLSv1_2)
        self.assertEqual(v, "TLSv1.2", "control: CBC client")

        for lname, port in (("etablissement", self.etab_port), ("trust-space", self.trust_port)):
            for what, kw, rx in (("TLS 1.1", self.LEGACY, r"ALERT_(PROTOCOL_VERSION|HANDSHAKE_FAILURE)|UNSUPPORTED_PROTOCOL|WRONG_VERSION"),
                                 ("RSA key exchange", self.RSA_KX, r"ALERT_HANDSHAKE_FAILURE|ALERT_INSUFFICIENT_SECURITY"),
                                 ("ECDHE CBC", self.CBC_ECDHE, r"ALERT_HANDSHAKE_FAILURE|ALERT_INSUFFICIENT_SECURITY")):
                with self.subTest(listener=lname, client=what):
                    ctx = client_context(verify=False, **kw)
                    with self.assertRaises((ssl.SSLError, ConnectionError)) as cm:
                        s = starttls_handshake(port, ctx)
                        s.close()
                    self.assertRegex(str(cm.exception), rx, "%s: unexpected handshake error" % what)
            for what, kw, version in (("TLS 1.3", {}, "TLSv1.3"),
                                      ("TLS 1.2", dict(maximum_version=ssl.TLSVersion.TLSv1_2), "TLSv1.2")):
                with self.subTest(listener=lname, client=what):
                    ctx = client_context(cert=self.pki.certs["valide"], **kw)
                    s = starttls_handshake(port, ctx)
                    try:
                        self.assertEqual(s.version(), version)
                        cipher = s.cipher()[0]
                        if version == "TLSv1.2":
                            self.assertRegex(cipher, r"^ECDHE-(ECDSA|RSA)-(AES\d+-GCM|CHACHA20-POLY1305)")
                        else:
                            self.assertIn(cipher, ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                                                   "TLS_CHACHA20_POLY1305_SHA256"))
                        s.sendall(b"EHLO tls-ok.audit.test\r\n")
                        data = b""
                        while not re.search(rb"(?m)^250 ", data):
                            chunk = s.recv(4096)
                            if not chunk:
                                break
                            data += chunk
                        self.assertRegex(data, rb"(?m)^250[ -]")
                    finally:
                        s.close()
        # still serving after all these failed handshakes
        with tls_session(self.trust_port, client_context(self.pki.certs["valide"])) as s:
            self.assertEqual(s.mail(VALIDE.sender)[0], 250)


# --------------------------------------------------------------------------- 4. Postfix interop

class PostfixInteropTests(TrustTestCase):

    def test_4a_postfix_remote_operator_requires_our_certificate(self):
        """Postfix as a remote operator (smtpd_tls_req_ccert): passerelle delivers to it over
        mutual TLS, Postfix verifies our client certificate, the message reaches its sink."""
        pf_sink = self.peer("pf-sink")
        crt, key = self.pki.certs["pfop"]
        cafile = self.pki.ca_pem   # the root only: our client chain carries the intermediate
        op = self.postfix("op", relayhost="[127.0.0.1]:%d" % pf_sink.port, mydomain="postfix-op.audit.test",
                          extra_main_cf=dict(postfix_requiring_ccert(crt, key, cafile),
                                             smtpd_tls_received_header="yes"))
        self.start_gateway(routes_extra=[{"name": "pfop", "domains": [PFOP_DOMAIN], "transport": "op-postfix",
                                          "whitelist": True, "directory": False}],
                           transports={"op-postfix": relay_transport(op.port, tls="mutual")})
        rcpt = "dr.postfix@" + PFOP_DOMAIN
        mid = "<pf-op-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        self.send(self.etab_port, SENDER, [rcpt], simple_message("vers postfix", SENDER, rcpt, msgid=mid))
        meta, eml = pf_sink.wait_messages(1, 30)[0]
        self.assertEqual(rcpts(meta), [rcpt])
        self.assertEqual(addr(meta["mail_from"]), SENDER)
        self.assertEqual(parse_eml(eml)["Message-ID"], mid)
        log = op.log()
        self.assertRegex(log, r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]|"
                              r"Trusted TLS connection established from \S*\[127\.0\.0\.1\]", log[-3000:])
        self.assertNotRegex(log, r"Anonymous TLS connection established from", log[-3000:])
        # Postfix's Received header: our client certificate, verified against the dev IGC
        self.assertRegex(norm_ws(eml.decode("utf-8", "replace")),
                         r'Client CN "%s", Issuer "[^"]+" \(verified OK\)' % re.escape(GW_HOST))

    def test_4c_receipts_from_a_postfix_operator(self):
        """Issue 28 end to end: an establishment sends with NOTIFY=SUCCESS; passerelle relays to
        a real Postfix standing for the recipient's operator (mutual TLS), which delivers to a
        local mailbox (virtual(8)) and sends its own success DSN back through the trust-space
        listener with its IGC certificate; the reader's MDN (Python's email package) goes back
        the same way. `track` shows remote-delivered and displayed for that recipient, `stats`
        counts a read within 24 h, the MDN reaches the sender's mailbox byte for byte and the
        DSN as Postfix wrote it (only our Received header on top)."""
        import email.message
        import email.policy
        import hashlib
        import json
        crt, key = self.pki.certs["pfop"]
        op = self.postfix("op", mydomain="postfix-op.audit.test", start=False, extra_main_cf=dict(
            postfix_requiring_ccert(crt, key, self.pki.ca_pem),
            virtual_mailbox_domains=PFOP_DOMAIN, virtual_mailbox_base=os.path.join(self.tmp, "pfop-mail"),
            virtual_mailbox_maps="inline:{ dr.postfix@%s=dr.postfix/ }" % PFOP_DOMAIN,
            virtual_uid_maps="static:65534", virtual_gid_maps="static:65534", virtual_minimum_uid="100",
            smtp_tls_security_level="encrypt", smtp_tls_chain_files="%s, %s" % (key, crt)))
        os.makedirs(os.path.join(self.tmp, "pfop-mail"))
        os.chown(os.path.join(self.tmp, "pfop-mail"), 65534, 65534)
        with open(os.path.join(op.etc, "master.cf"), "a") as f:
            f.write("virtual   unix  -       n       n       -       -       virtual\n")
        self.start_gateway(routes_extra=[{"name": "pfop", "domains": [PFOP_DOMAIN], "transport": "op-postfix",
                                          "whitelist": True, "directory": False}],
                           transports={"op-postfix": relay_transport(op.port, tls="mutual")})
        # The operator's mail for our establishment goes to our trust-space listener.
        with open(os.path.join(op.etc, "transport"), "w") as f:
            f.write("%s smtp:[127.0.0.1]:%d\n" % (LOCAL_DOMAIN, self.trust_port))
        op.start()
        rcpt = "dr.postfix@" + PFOP_DOMAIN
        mid = "<recu-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        data = simple_message("compte rendu", SENDER, rcpt, msgid=mid)
        with smtp_session("127.0.0.1", self.etab_port) as s:
            s.ehlo()
            self.assertTrue(s.has_extn("dsn"))
            s.mail(SENDER, ["RET=HDRS"])
            code, _ = s.rcpt(rcpt, ["NOTIFY=SUCCESS,FAILURE"])
            self.assertEqual(code, 250)
            code, text = s.data(data)
            self.assertEqual(code, 250, text)
        qid = queued_id(text.decode())
        maildir = os.path.join(self.tmp, "pfop-mail", "dr.postfix", "new")
        wait_until(lambda: os.path.isdir(maildir) and os.listdir(maildir), 30, what="Postfix's local delivery")
        with open(os.path.join(maildir, os.listdir(maildir)[0]), "rb") as f:
            self.assertIn(mid.encode(), f.read())
        # Postfix's own success DSN comes back through the trust space to the sender's mailbox.
        meta, dsn = self.sink.wait_messages(1, 30)[0]
        self.assertEqual(addr(meta["mail_from"]), "")
        self.assertEqual(rcpts(meta), [SENDER])
        self.assertEqual(dsn_blocks(dsn), [(rcpt, "delivered", dsn_blocks(dsn)[0][2])])
        self.assertIn(b"Original-Envelope-Id: passerelle-" + qid.encode(), dsn)
        # Only our Received header was added: the next line is Postfix's own.
        first, rest = dsn.split(b"\r\n", 1)
        self.assertTrue(first.startswith(b"Received: from "), first)
        body = rest
        while body[:1] in (b" ", b"\t"):
            body = body.split(b"\r\n", 1)[1]
        self.assertTrue(body.startswith(b"Received: by "), body[:200])

        # The reader's read receipt, sent as a mail client does through its operator.
        m = email.message.EmailMessage()
        m["From"] = rcpt
        m["To"] = SENDER
        m["Subject"] = "Lu : compte rendu"
        m["Date"] = email.utils.formatdate()
        m["Message-ID"] = email.utils.make_msgid(domain=PFOP_DOMAIN)
        m.set_content("Votre message a ete affiche.")
        part = email.message.Message()
        part["Content-Type"] = "message/disposition-notification"
        part.set_payload("Reporting-UA: webmail.postfix-op.audit.test; Webmail\r\nFinal-Recipient: rfc822; %s\r\n"
                         "Original-Message-ID: %s\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n"
                         % (rcpt, mid))
        m.make_mixed()
        m.attach(part)
        m.replace_header("Content-Type", m.get("Content-Type").replace("multipart/mixed", "multipart/report"))
        m.set_param("report-type", "disposition-notification")
        mdn = m.as_bytes(policy=email.policy.SMTP)
        ctx = client_context(cert=(crt, key), verify=False)
        with smtplib.SMTP("127.0.0.1", op.port, timeout=30) as s:
            s.starttls(context=ctx)
            s.sendmail("", [SENDER], mdn)
        meta, got = self.sink.wait_messages(2, 30)[1]
        self.assertTrue(got.endswith(mdn), "the MDN changed on the way")
        self.assertEqual(addr(meta["mail_from"]), "")

        def joined():
            rc, out = self.gw.cli("track", "--id", qid, "--format", "json")
            kinds = {(e["kind"], e.get("to")) for e in json.loads(out)[0]["events"]} if rc == 0 else set()
            return {("remote-delivered", rcpt), ("displayed", rcpt)} <= kinds
        wait_until(joined, 20, interval=0.3, what="the DSN and the MDN joined to the message")
        rc, out = self.gw.cli("track", "--id", qid)
        self.assertIn("read by <%s> with webmail.postfix-op.audit.test" % rcpt, out)
        self.assertRegex(out, r"remote-delivered .*reported by \S+: 2\.0\.0")
        rc, out = self.gw.cli("stats", "--by", "establishment", "--format", "json")
        total = json.loads(out)["total"]
        self.assertEqual((total["sent_to_trust_space"], total["remote_delivered"], total["displayed"],
                          total["read_within_24h"], total["read_within_24h_pct"]), (1, 1, 1, 1, 100), total)
        rc, out = self.gw.cli("track", "--id", qid, "--proof", "--format", "json")
        self.assertEqual(json.loads(out)["sha256"], hashlib.sha256(data).hexdigest())

    def _sending_operator(self, name, cert_key):
        crt, key = self.pki.certs[cert_key]
        return self.postfix(name, relayhost="[127.0.0.1]:%d" % self.trust_port, mydomain="audit.test",
                            smtp_tls_security_level="encrypt",
                            extra_main_cf={"smtp_tls_chain_files": "%s, %s" % (key, crt),
                                           "smtp_tls_loglevel": "1"})

    def test_4b_postfix_sending_operator_presents_certificate(self):
        """Postfix as an operator sending into the trust-space listener with a client
        certificate: the declared one is accepted and delivered, an undeclared one gets 550 5.7.1."""
        self.start_gateway()
        good = self._sending_operator("op-good", "valide")
        bad = self._sending_operator("op-bad", "autredn")   # DN declared nowhere (INTRUS_DN)
        mid_ok = "<pf-in-ok-%s@%s>" % (uuid.uuid4().hex, VALIDE.domain)
        with smtp_session("127.0.0.1", good.port) as s:
            s.sendmail(VALIDE.sender, [LOCAL_RCPT], simple_message("via postfix", VALIDE.sender, LOCAL_RCPT, msgid=mid_ok))
        sender_bad = CASE["autredn"].sender
        with smtp_session("127.0.0.1", bad.port) as s:
            s.sendmail(sender_bad, [LOCAL_RCPT], simple_message("intrus via postfix", sender_bad, LOCAL_RCPT))
        meta, eml = self.sink.wait_messages(1, 30)[0]
        self.assertEqual(addr(meta["mail_from"]), VALIDE.sender)
        self.assertEqual(rcpts(meta), [LOCAL_RCPT])
        self.assertEqual(parse_eml(eml)["Message-ID"], mid_ok)
        good.wait_log(r"to=<%s>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent \(250 "
                      % (re.escape(LOCAL_RCPT), self.trust_port), 10)
        # Postfix did present its certificate (it logs the client signature of the handshake)
        self.assertRegex(good.log(), r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d: "
                                     r".*client-signature" % self.trust_port)
        bad.wait_log(r"to=<%s>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=bounced \(host 127\.0\.0\.1"
                     r"\[127\.0\.0\.1\] said: 550 5\.7\.1 .*not declared in the MSSante whitelist"
                     % (re.escape(LOCAL_RCPT), self.trust_port), 20)
        self.assertNoNewMessages(self.sink, 1, wait=2.0, msg="the undeclared operator's message was delivered")


# --------------------------------------------------------------------------- 5. whitelist reload

class WhitelistReloadTests(TrustTestCase):

    def test_5_whitelist_reload(self):
        """reload = "1s": a garbage file keeps the last good list (and says so); a new domain
        with its operator DN is picked up: RCPT refused before, delivered after."""
        entries = base_whitelist_entries()
        self.write_whitelist(entries)
        op_v = self.operator_peer("valide", VALIDE.ip)
        op_n = self.operator_peer("nouveau", NOUVEAU_IP)
        routes = [{"name": "audit-valide", "domains": [VALIDE.domain], "transport": "op-valide",
                   "whitelist": True, "directory": False},
                  {"name": "audit-nouveau", "domains": [NOUVEAU_DOMAIN], "transport": "op-nouveau",
                   "whitelist": True, "directory": False}]
        self.start_gateway(routes_extra=routes, reload="1s",
                           transports={"op-valide": relay_transport(op_v.port, host=VALIDE.ip, tls="mutual"),
                                       "op-nouveau": relay_transport(op_n.port, host=NOUVEAU_IP, tls="mutual")})
        new_rcpt = "dr.nouveau@" + NOUVEAU_DOMAIN

        def rcpt_code(r):
            with smtp_session("127.0.0.1", self.etab_port) as s:
                self.assertEqual(s.mail(SENDER)[0], 250)
                return s.rcpt(r)

        code, msg = rcpt_code(new_rcpt)
        self.assertEqual(code, 550, "an undeclared domain must be refused: %s" % msg)
        self.send(self.etab_port, SENDER, [VALIDE.rcpt], simple_message("avant", SENDER, VALIDE.rcpt))
        op_v.wait_messages(1, 15)

        # garbage: the last good list stays in force
        with open(self.wl_path, "w") as f:
            f.write("<ListeBlancheMSSante><ListeDomaines><Domaine><Nom>casse")
        try:
            self.gw.wait_log(r"keeping the last good whitelist", 10)
        except TimeoutError as e:
            self.fail("garbage whitelist: %s" % e)
        self.send(self.etab_port, SENDER, [VALIDE.rcpt], simple_message("pendant", SENDER, VALIDE.rcpt))
        got = op_v.wait_messages(2, 15)
        self.assertIn(b"Subject: pendant", got[1][1])
        self.assertEqual(got[1][0]["tls"]["client_dn"], GW_DN)
        self.assertEqual(rcpt_code(new_rcpt)[0], 550)
        self.assertTrue(self.gw.running())

        # a new domain and its DN: accepted and delivered after the next reload
        # written in another spelling of the same DN (attribute types and values in other
        # cases): DNs are compared as RFC 4517 distinguishedNameMatch does
        nouveau_spelling = ("cn=MX.Nouveau.Audit.Test,ou=999999999900031,o=Operateur Nouveau,"
                            "st=haute-garonne (31),c=fr")
        write_atomic(self.wl_path, whitelist_xml(entries + [(NOUVEAU_DOMAIN, nouveau_spelling)]))
        try:
            wait_until(lambda: rcpt_code(new_rcpt)[0] == 250, 10, interval=0.3, what="the new domain to be accepted")
        except TimeoutError as e:
            self.fail("%s (reload not picked up?)" % e)
        mid = "<nouveau-%s@%s>" % (uuid.uuid4().hex, LOCAL_DOMAIN)
        self.send(self.etab_port, SENDER, [new_rcpt], simple_message("apres", SENDER, new_rcpt, msgid=mid))
        meta, eml = op_n.wait_messages(1, 15)[0]
        self.assertEqual(rcpts(meta), [new_rcpt])
        self.assertEqual(parse_eml(eml)["Message-ID"], mid)
        self.assertEqual(meta["tls"]["client_dn"], GW_DN)
        # and the rest of the list came back with it
        self.send(self.etab_port, SENDER, [VALIDE.rcpt], simple_message("apres-v", SENDER, VALIDE.rcpt))
        op_v.wait_messages(3, 15)


# --------------------------------------------------------------------------- 6. route test

class RouteTestCliTests(TrustTestCase):

    def test_6_route_test_shows_declared_dns(self):
        """`route test` and `whitelist show` print the DNs declared for a trust-space domain."""
        self.start_gateway(start=False, sink=False,
                           routes_extra=[{"name": "audit-valide", "domains": [VALIDE.domain],
                                          "transport": "op-valide", "whitelist": True, "directory": False}],
                           transports={"op-valide": relay_transport(free_port(VALIDE.ip), host=VALIDE.ip,
                                                                    tls="mutual")})
        rc, out = self.gw.cli("route", "test", VALIDE.rcpt)
        self.assertEqual(rc, 0, out)
        self.assertIn("audit-valide", out)
        self.assertIn("mutual", out)
        for dn in (VALIDE.declared, VALIDE_OTHER_DN):   # a domain repeated once per DN: both
            self.assertIn("whitelist: %s declared with DN %s\n" % (VALIDE.domain, dn), out)
        rc, out = self.gw.cli("route", "test", "dr.x@inconnu.audit.mssante.fr")
        self.assertEqual(rc, 1, out)
        self.assertIn("whitelist: inconnu.audit.mssante.fr is not declared", out)
        rc, out = self.gw.cli("whitelist", "show", CASE["memecn"].domain)
        self.assertEqual(rc, 0, out)
        self.assertIn(MEMECN_DECLARED, out)
        self.assertNotIn(MEMECN_FAKE.split(",")[1], out)
        rc, out = self.gw.cli("whitelist", "show", "inconnu.audit.mssante.fr")
        self.assertEqual(rc, 1, out)


if __name__ == "__main__":
    unittest.main()
