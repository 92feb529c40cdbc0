//! Mailbox parsing and the open-relay guard.
//!
//! Hand-written rather than taken from smtp-proto: that parser silently drops source routes and
//! unquotes local parts, and the guard must see exactly what the client wrote to refuse
//! `@a,@b:u@c`, `u%v@c`, `u!v@c`, `"u@v"@c` and `u@[1.2.3.4]`.

use std::fmt;

/// A mailbox `local@domain`. The domain is kept lowercased for matching; the local part is
/// kept as written (it is case-sensitive in SMTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("source routes are not accepted")]
    SourceRoute,
    #[error("'%' in the local part is not accepted")]
    Percent,
    #[error("'!' in the local part is not accepted")]
    Bang,
    #[error("quoted local part containing '@' is not accepted")]
    QuotedAt,
    #[error("address literals are not accepted")]
    AddressLiteral,
    #[error("address too long")]
    TooLong,
    #[error("bad address syntax: {0}")]
    Syntax(&'static str),
}

impl AddressError {
    /// Guard refusals are relay attempts (5.7.1); the rest are syntax errors (5.1.3).
    pub fn is_relay_attempt(&self) -> bool {
        !matches!(self, AddressError::Syntax(_) | AddressError::TooLong)
    }
}

/// Parses the inside of `<...>`. An empty path is the null sender and yields `None`.
pub fn parse_path(raw: &str) -> Result<Option<Address>, AddressError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > 256 {
        return Err(AddressError::TooLong);
    }
    if raw.starts_with('@') {
        return Err(AddressError::SourceRoute);
    }
    let bytes = raw.as_bytes();
    let (local, rest) = if bytes[0] == b'"' {
        // Quoted string: find the closing quote, honouring backslash escapes.
        let mut i = 1;
        let mut content = String::new();
        loop {
            match bytes.get(i) {
                None => return Err(AddressError::Syntax("unterminated quoted local part")),
                Some(b'\\') => {
                    // The escaped character may be a multi-byte one (RFC 6531): take all of it.
                    let ch = raw
                        .get(i + 1..)
                        .and_then(|s| s.chars().next())
                        .ok_or(AddressError::Syntax("bad escape"))?;
                    content.push(ch);
                    i += 1 + ch.len_utf8();
                }
                Some(b'"') => break,
                Some(&c) if c < 0x20 || c == 0x7f => {
                    return Err(AddressError::Syntax("control character"))
                }
                Some(_) => {
                    // Push the whole UTF-8 character.
                    let ch = raw[i..]
                        .chars()
                        .next()
                        .ok_or(AddressError::Syntax("utf-8"))?;
                    content.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if content.contains('@') {
            return Err(AddressError::QuotedAt);
        }
        if content.contains('%') {
            return Err(AddressError::Percent);
        }
        if content.contains('!') {
            return Err(AddressError::Bang);
        }
        (&raw[..=i], &raw[i + 1..])
    } else {
        let at = raw
            .rfind('@')
            .ok_or(AddressError::Syntax("missing @domain"))?;
        (&raw[..at], &raw[at..])
    };
    let domain = rest
        .strip_prefix('@')
        .ok_or(AddressError::Syntax("missing @domain"))?;
    if !local.starts_with('"') {
        if local.contains('@') {
            // `a@b@c`: the classic relay trick, or plain garbage.
            return Err(AddressError::Syntax("more than one @"));
        }
        if local.contains('%') {
            return Err(AddressError::Percent);
        }
        if local.contains('!') {
            return Err(AddressError::Bang);
        }
        check_dot_string(local)?;
    }
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if local.len() > 64 {
        return Err(AddressError::TooLong);
    }
    if domain.starts_with('[') {
        return Err(AddressError::AddressLiteral);
    }
    check_domain(domain)?;
    Ok(Some(Address {
        local: local.to_string(),
        domain: domain.to_ascii_lowercase(),
    }))
}

/// RFC 5321 dot-string, widened to UTF-8 (RFC 6531).
fn check_dot_string(s: &str) -> Result<(), AddressError> {
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err(AddressError::Syntax("misplaced dot in local part"));
    }
    let ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || (c as u32) >= 0x80
    });
    if ok {
        Ok(())
    } else {
        Err(AddressError::Syntax("invalid character in local part"))
    }
}

fn check_domain(d: &str) -> Result<(), AddressError> {
    if d.is_empty() || d.len() > 255 {
        return Err(AddressError::Syntax("bad domain length"));
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(AddressError::Syntax("empty or long domain label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::Syntax("domain label starts or ends with '-'"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (c as u32) >= 0x80)
        {
            return Err(AddressError::Syntax("invalid character in domain"));
        }
    }
    Ok(())
}

/// The domain of an address, lowercased (the part that routes and pins).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Address>, AddressError> {
        parse_path(s)
    }

    #[test]
    fn accepts_ordinary_addresses() {
        let a = p("Dr.Martin@CHU-Exemple.MSSante.fr").unwrap().unwrap();
        assert_eq!(a.local, "Dr.Martin");
        assert_eq!(a.domain, "chu-exemple.mssante.fr");
        assert_eq!(p("").unwrap(), None);
        assert!(p("\"jean martin\"@ex.mssante.fr").unwrap().is_some());
        assert!(p("élodie@hôpital.mssante.fr").unwrap().is_some());
        assert_eq!(p("\"a\\é\"@ex.fr").unwrap().unwrap().local, "\"a\\é\"");
    }

    /// Found by fuzz/fuzz_targets/smtp_command.rs: a backslash before a multi-byte character
    /// in a quoted local part sliced the string inside that character (a panic).
    #[test]
    fn escaped_multibyte_character() {
        assert!(p("\"0EHL TO:<@@RC F\\ᆺ.fr!").is_err());
        assert_eq!(p("\"\\ᆺ\"@ex.fr").unwrap().unwrap().domain, "ex.fr");
        assert_eq!(p("\"\\"), Err(AddressError::Syntax("bad escape")));
    }

    #[test]
    fn refuses_relay_tricks() {
        assert_eq!(p("@a.fr,@b.fr:u@c.fr"), Err(AddressError::SourceRoute));
        assert_eq!(p("u%v.fr@c.mssante.fr"), Err(AddressError::Percent));
        assert_eq!(p("v.fr!u@c.mssante.fr"), Err(AddressError::Bang));
        assert_eq!(p("\"u@v.fr\"@c.mssante.fr"), Err(AddressError::QuotedAt));
        assert_eq!(p("\"u%v\"@c.mssante.fr"), Err(AddressError::Percent));
        assert_eq!(p("u@[127.0.0.1]"), Err(AddressError::AddressLiteral));
        assert_eq!(p("u@[IPv6:::1]"), Err(AddressError::AddressLiteral));
        assert_eq!(
            p("u@v@c.mssante.fr"),
            Err(AddressError::Syntax("more than one @"))
        );
    }

    #[test]
    fn refuses_bad_syntax() {
        for bad in [
            "nodomain",
            "a@",
            "@",
            ".a@b.fr",
            "a..b@b.fr",
            "a@-b.fr",
            "a@b..fr",
            "a b@c.fr",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(
            p(&format!("{}@b.fr", "a".repeat(65))),
            Err(AddressError::TooLong)
        );
    }
}
