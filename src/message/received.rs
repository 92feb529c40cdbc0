//! The one header we write: `Received:` (RFC 5321 §4.4), for messages received by SMTP and for
//! the notifications we make ourselves; and the date format it uses.

/// The client side of a `Received:` header: who connected, over what.
pub struct ReceivedFrom<'a> {
    pub helo: &'a str,
    pub ip: std::net::IpAddr,
    /// `TLSv1.3 with cipher ...` when the session was encrypted.
    pub tls: Option<&'a str>,
    /// The client certificate's subject DN, when one was presented.
    pub client_dn: Option<&'a str>,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8ESMTPS`...
    pub protocol: &'a str,
}

/// `Received: from ... by HOST (passerelle) with PROTO id ID for <RCPT>; DATE`, folded with
/// tabs, CRLF-ended. `from` is `None` for a message this gateway made (a DSN).
pub fn received_header(
    from: Option<&ReceivedFrom<'_>>,
    hostname: &str,
    id: &str,
    for_rcpt: Option<&str>,
    unix: u64,
) -> String {
    let mut h = String::with_capacity(256);
    h.push_str("Received:");
    if let Some(c) = from {
        h.push_str(&format!(" from {} ({} [{}])\r\n", c.helo, c.ip, c.ip));
        if let Some(t) = c.tls {
            h.push_str(&format!("\t(using {t})\r\n"));
        }
        if let Some(dn) = c.client_dn {
            h.push_str(&format!(
                "\t(client certificate \"{}\")\r\n",
                dn.replace(['"', '\\'], "_")
            ));
        }
        h.push_str(&format!(
            "\tby {hostname} (passerelle) with {} id {id}",
            c.protocol
        ));
    } else {
        h.push_str(&format!(" by {hostname} (passerelle) id {id}"));
    }
    if let Some(r) = for_rcpt {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!("; {}\r\n", rfc5322_date(unix)));
    h
}

pub fn rfc5322_date(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        let c = ReceivedFrom {
            helo: "mta.chu.fr",
            ip: "10.0.0.1".parse().unwrap(),
            tls: Some("TLSv1.3 with cipher X"),
            client_dn: Some("CN=a\"b"),
            protocol: "ESMTPS",
        };
        let h = received_header(Some(&c), "gw", "ID1", Some("x@y.fr"), 0);
        assert_eq!(
            h,
            "Received: from mta.chu.fr (10.0.0.1 [10.0.0.1])\r\n\t(using TLSv1.3 with cipher X)\r\n\t(client certificate \"CN=a_b\")\r\n\tby gw (passerelle) with ESMTPS id ID1\r\n\tfor <x@y.fr>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_eq!(
            received_header(None, "gw", "D1", None, 0),
            "Received: by gw (passerelle) id D1; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
