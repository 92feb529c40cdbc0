"""End-to-end test of the establishment Postfix snippet (deploy/postfix/transport, issue 12
item 5), with a real Postfix in front of the gateway.

The snippet's own lines are used (only the gateway's address replaced): the establishment's
own MSSanté domain keeps Postfix's usual delivery (here relay_transport to its mailbox
server), other mssante.fr domains go to passerelle, and mail coming back from passerelle for
the establishment (route "local") reaches the mailbox once. Without the override line, the
same message loops between Postfix and passerelle: the control that shows the line matters.
"""

import os
import re
import smtplib

from harness import REPO, E2ETestCase, free_port, gateway_config, listener, rcpts, relay_transport, wait_until

OWN = "chu-exemple.mssante.fr"
SNIPPET_HOP = "[passerelle.chu-exemple.mssante.fr]:2525"


def snippet_lines(gw_port, keep_own=True):
    """The active lines of deploy/postfix/transport, pointed at the test gateway."""
    lines = []
    with open(os.path.join(REPO, "deploy", "postfix", "transport")) as f:
        for l in f:
            l = l.strip()
            if not l or l.startswith("#"):
                continue
            if not keep_own and l.split()[0] == OWN:
                continue
            lines.append(l.replace(SNIPPET_HOP, "[127.0.0.1]:%d" % gw_port))
    return lines


class PostfixSnippetTests(E2ETestCase):

    def bed(self, keep_own=True):
        self.mailbox = self.peer("mailbox")    # the establishment's mailbox server
        self.operator = self.peer("operator")  # stands for the trust space
        gw_port = free_port()
        lines = snippet_lines(gw_port, keep_own)
        self.assertEqual(lines[0].split() == [OWN, ":"], keep_own, lines)
        self.pf = self.postfix("mta", transport_map_lines=lines, mydomain=OWN,
                               extra_main_cf={"relay_domains": OWN,
                                              "relay_transport": "smtp:[127.0.0.1]:%d" % self.mailbox.port})
        cfg = gateway_config(
            self.tmp,
            listeners=[listener("etablissement", gw_port, ["local", "mssante", "others"])],
            routes=[
                {"name": "local", "domains": [OWN], "transport": "etablissement"},
                {"name": "mssante", "domains": ["*.mssante.fr"], "transport": "trust"},
                {"name": "others", "domains": ["*"], "reject": "550 5.7.1 only MSSante destinations"},
            ],
            transports={"etablissement": relay_transport(self.pf.port),
                        "trust": relay_transport(self.operator.port)},
        )
        self.gw = self.gateway(cfg)

    def submit(self, host, port, rcpt, subject):
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.sendmail("secretariat@%s" % OWN, [rcpt],
                       ("Subject: %s\r\nMessage-ID: <%s@t>\r\n\r\nx\r\n" % (subject, subject)).encode())

    def test_own_domain_stays_and_comes_back_once(self):
        self.bed()
        # From an establishment user, through Postfix: own domain to the mailbox directly,
        # another MSSanté domain through passerelle.
        self.submit(self.pf.host, self.pf.port, "dr.martin@%s" % OWN, "internal")
        self.submit(self.pf.host, self.pf.port, "dr.x@ch-autre.mssante.fr", "outbound")
        out = self.operator.wait_messages(1, 30)
        self.assertEqual(rcpts(out[0][0]), ["dr.x@ch-autre.mssante.fr"])
        # From the trust space, through passerelle's route "local", then Postfix: once.
        self.submit("127.0.0.1", self.gw.listener()[1], "j.dupont@%s" % OWN, "inbound")
        self.mailbox.wait_messages(2, 30)
        # Nothing left anywhere that could still arrive: Postfix's queue and passerelle's empty.
        wait_until(lambda: "Mail queue is empty" in self.pf.queue()
                   and self.gw.cli("queue", "list", "--format", "json")[1].strip() == "[]", 30,
                   what="Postfix's and passerelle's queues empty")
        got = self.mailbox.messages()
        self.assertEqual(sorted(r for m, _ in got for r in rcpts(m)),
                         ["dr.martin@%s" % OWN, "j.dupont@%s" % OWN])
        self.assertNotIn("dr.martin@", self.gw.log(), "internal mail never goes through passerelle")
        self.assertEqual(len(re.findall(r"session: queued ", self.gw.log())), 2,
                         "passerelle queued the outbound and the inbound message, once each")

    def test_without_the_override_line_mail_loops(self):
        self.bed(keep_own=False)
        self.submit("127.0.0.1", self.gw.listener()[1], "j.dupont@%s" % OWN, "inbound")
        # passerelle -> Postfix -> passerelle again: the same message queued a second time.
        self.gw.wait_log(r"(?s)session: queued .*session: queued ", 30)
        self.assertEqual(self.mailbox.count(), 0)
