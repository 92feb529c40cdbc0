//! SMTP command syntax: one command line in, a typed command (or the reply to a syntax error)
//! out. RFC 5321 for the verbs and paths, RFC 1870 (SIZE), 6152 (BODY), 6531 (SMTPUTF8), 3461
//! (DSN parameters) and 3030 (BDAT).
//!
//! No session state and no policy here, so the syntax can be tested and fuzzed on its own
//! (`fuzz/fuzz_targets/smtp_command.rs`). The session decides what a well-formed command means
//! at its point in the dialogue.
//!
//! Hand-written: smtp-proto's parser normalises addresses (drops source routes, unquotes local
//! parts, tolerates bare CR), and the relay guard must see exactly what the client sent.

use crate::message::{Ret, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::reply::Reply;

/// The command verbs the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Vrfy,
    Help,
    Quit,
    StartTls,
    Unknown,
}

impl Verb {
    fn from_word(w: &str) -> Verb {
        const VERBS: [(&str, Verb); 12] = [
            ("EHLO", Verb::Ehlo),
            ("HELO", Verb::Helo),
            ("MAIL", Verb::Mail),
            ("RCPT", Verb::Rcpt),
            ("DATA", Verb::Data),
            ("BDAT", Verb::Bdat),
            ("RSET", Verb::Rset),
            ("NOOP", Verb::Noop),
            ("VRFY", Verb::Vrfy),
            ("HELP", Verb::Help),
            ("QUIT", Verb::Quit),
            ("STARTTLS", Verb::StartTls),
        ];
        VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(w))
            .map_or(Verb::Unknown, |(_, v)| *v)
    }
}

/// A command line split into its verb and argument (trimmed).
#[derive(Debug, PartialEq, Eq)]
pub struct CommandLine<'a> {
    pub verb: Verb,
    /// The verb as sent (for logs of unknown commands).
    pub word: &'a str,
    pub arg: &'a str,
}

/// Splits one line read off the wire (with its line ending). Refuses bare LF, bare CR, NUL and
/// invalid UTF-8 with the reply to send.
pub fn parse_line(line: &[u8]) -> Result<CommandLine<'_>, Reply> {
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return Err(Reply::new(
            500,
            "5.5.2",
            "Error: bare LF in command, use CRLF",
        ));
    };
    if text.contains(&b'\r') || text.contains(&0) {
        return Err(Reply::new(500, "5.5.2", "Error: bare CR or NUL in command"));
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(Reply::new(
            500,
            "5.5.2",
            "Error: command is not valid UTF-8",
        ));
    };
    let (word, arg) = match text.split_once(' ') {
        Some((v, a)) => (v, a.trim()),
        None => (text, ""),
    };
    Ok(CommandLine {
        verb: Verb::from_word(word),
        word,
        arg,
    })
}

/// `MAIL FROM:<path> [params]`, its parameters checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailArgs<'a> {
    /// The reverse path between the angle brackets, as sent (`""` for the null sender).
    pub path: &'a str,
    /// The SIZE the client declared.
    pub size: Option<usize>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

/// Parses the argument of MAIL (everything after `MAIL `).
pub fn parse_mail(arg: &str) -> Result<MailArgs<'_>, Reply> {
    let Some((path, params)) = split_path(arg, "FROM:") else {
        return Err(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
    };
    let mut m = MailArgs {
        path,
        ..MailArgs::default()
    };
    for p in params.split_whitespace() {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => match v.parse::<usize>() {
                Ok(n) => m.size = Some(n),
                Err(_) => return Err(Reply::new(501, "5.5.4", "Bad SIZE parameter")),
            },
            "BODY" => match v.to_ascii_uppercase().as_str() {
                "7BIT" => {}
                "8BITMIME" => m.eight_bit = true,
                _ => return Err(Reply::new(501, "5.5.4", "Unsupported BODY parameter")),
            },
            "SMTPUTF8" if v.is_empty() => m.smtputf8 = true,
            "RET" => match v.to_ascii_uppercase().as_str() {
                "FULL" => m.ret = Some(Ret::Full),
                "HDRS" => m.ret = Some(Ret::Hdrs),
                _ => return Err(Reply::new(501, "5.5.4", "Bad RET parameter")),
            },
            "ENVID" => match xtext_decode(v) {
                Some(s) if !s.is_empty() && s.len() <= 100 => m.envid = Some(s),
                _ => return Err(Reply::new(501, "5.5.4", "Bad ENVID parameter")),
            },
            // Submitted by some clients on relay hops; the gateway does not authenticate.
            "AUTH" => {}
            _ => return Err(unsupported(k)),
        }
    }
    Ok(m)
}

/// `RCPT TO:<path> [params]`, its parameters checked.
#[derive(Debug, PartialEq, Eq)]
pub struct RcptArgs<'a> {
    /// The forward path between the angle brackets, as sent.
    pub path: &'a str,
    /// NOTIFY flags (`message::NOTIFY_*`), 0 when absent.
    pub notify: u8,
    /// ORCPT, xtext-decoded, without its address type.
    pub orcpt: Option<String>,
}

/// Parses the argument of RCPT (everything after `RCPT `).
pub fn parse_rcpt(arg: &str) -> Result<RcptArgs<'_>, Reply> {
    let Some((path, params)) = split_path(arg, "TO:") else {
        return Err(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
    };
    let mut r = RcptArgs {
        path,
        notify: 0,
        orcpt: None,
    };
    for p in params.split_whitespace() {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "NOTIFY" => {
                for f in v.split(',') {
                    r.notify |= match f.to_ascii_uppercase().as_str() {
                        "NEVER" => NOTIFY_NEVER,
                        "SUCCESS" => NOTIFY_SUCCESS,
                        "FAILURE" => NOTIFY_FAILURE,
                        "DELAY" => NOTIFY_DELAY,
                        _ => return Err(Reply::new(501, "5.5.4", "Bad NOTIFY parameter")),
                    };
                }
                if r.notify & NOTIFY_NEVER != 0 && r.notify != NOTIFY_NEVER {
                    return Err(Reply::new(501, "5.5.4", "NOTIFY=NEVER cannot be combined"));
                }
            }
            "ORCPT" => {
                let decoded = v.split_once(';').and_then(|(_, a)| xtext_decode(a));
                match decoded {
                    Some(a) if !a.is_empty() && a.len() <= 500 => r.orcpt = Some(a),
                    _ => return Err(Reply::new(501, "5.5.4", "Bad ORCPT parameter")),
                }
            }
            _ => return Err(unsupported(k)),
        }
    }
    Ok(r)
}

fn unsupported(keyword: &str) -> Reply {
    // The keyword is echoed: bound it, a command line can be long.
    let k: String = keyword.chars().take(32).collect();
    Reply::new(555, "5.5.4", format!("Unsupported parameter {k}"))
}

/// `BDAT size [LAST]` -> (size, last).
pub fn parse_bdat(arg: &str) -> Option<(usize, bool)> {
    let mut it = arg.split_whitespace();
    let n: usize = it.next()?.parse().ok()?;
    let last = match it.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    it.next().is_none().then_some((n, last))
}

/// `FROM:<path> params` -> (path, params). Tolerates a space after the colon.
fn split_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    // The path ends at the first '>' outside a quoted string.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let params = &rest[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return None;
                }
                return Some((&rest[..i], params.trim()));
            }
            _ => {}
        }
    }
    None
}

/// RFC 3461 xtext: printable ASCII but `+` and `=`, and `+XX` with two upper-case hex digits.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hi = hex_digit(*b.get(i + 1)?)?;
            let lo = hex_digit(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else if (33..=126).contains(&b[i]) && b[i] != b'=' {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let c = parse_line(b"mail FROM:<a@b.fr>  \r\n").unwrap();
        assert_eq!(
            (c.verb, c.word, c.arg),
            (Verb::Mail, "mail", "FROM:<a@b.fr>")
        );
        assert_eq!(parse_line(b"QUIT\r\n").unwrap().verb, Verb::Quit);
        assert_eq!(parse_line(b"StartTLS\r\n").unwrap().verb, Verb::StartTls);
        assert_eq!(parse_line(b"XYZZY 1\r\n").unwrap().verb, Verb::Unknown);
        assert_eq!(parse_line(b"NOOP\n").unwrap_err().code, 500);
        assert_eq!(parse_line(b"NO\rOP\r\n").unwrap_err().code, 500);
        assert_eq!(parse_line(b"NO\0OP\r\n").unwrap_err().code, 500);
        assert_eq!(parse_line(b"NOOP \xff\r\n").unwrap_err().code, 500);
    }

    #[test]
    fn paths() {
        assert_eq!(
            split_path("FROM:<a@b.fr> SIZE=10", "FROM:"),
            Some(("a@b.fr", "SIZE=10"))
        );
        assert_eq!(split_path("from: <a@b.fr>", "FROM:"), Some(("a@b.fr", "")));
        assert_eq!(
            split_path("TO:<\"x>y\"@b.fr>", "TO:"),
            Some(("\"x>y\"@b.fr", ""))
        );
        assert_eq!(split_path("FROM:<>", "FROM:"), Some(("", "")));
        assert_eq!(split_path("FROM:a@b.fr", "FROM:"), None);
        assert_eq!(split_path("FROM:<a@b.fr>SIZE=1", "FROM:"), None);
        assert_eq!(split_path("TO:<a@b.fr", "TO:"), None);
        assert_eq!(split_path("FRéM:<a@b.fr>", "FROM:"), None);
    }

    #[test]
    fn mail_and_rcpt_parameters() {
        let m = parse_mail("FROM:<a@b.fr> SIZE=12 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=x+2By")
            .unwrap();
        assert_eq!(m.path, "a@b.fr");
        assert_eq!(m.size, Some(12));
        assert!(m.eight_bit && m.smtputf8);
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("x+y"));
        assert_eq!(parse_mail("FROM:<> SIZE=-1").unwrap_err().code, 501);
        assert_eq!(parse_mail("FROM:<> FOO=1").unwrap_err().code, 555);
        assert_eq!(parse_mail("TO:<a@b.fr>").unwrap_err().code, 501);

        let r = parse_rcpt("TO:<a@b.fr> NOTIFY=SUCCESS,delay ORCPT=rfc822;a+40b.fr").unwrap();
        assert_eq!(r.notify, NOTIFY_SUCCESS | NOTIFY_DELAY);
        assert_eq!(r.orcpt.as_deref(), Some("a@b.fr"));
        assert_eq!(
            parse_rcpt("TO:<a@b.fr> NOTIFY=NEVER,DELAY")
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(parse_rcpt("TO:<a@b.fr> ORCPT=x").unwrap_err().code, 501);
    }

    #[test]
    fn bdat_args_and_xtext() {
        assert_eq!(parse_bdat("100 LAST"), Some((100, true)));
        assert_eq!(parse_bdat("0"), Some((0, false)));
        assert_eq!(parse_bdat("x"), None);
        assert_eq!(parse_bdat("1 LAST x"), None);
        assert_eq!(parse_bdat("99999999999999999999999"), None);
        assert_eq!(xtext_decode("a+2Bb"), Some("a+b".into()));
        assert_eq!(xtext_decode("a+zz"), None);
        // from_str_radix would take a sign: "++1" is not xtext.
        assert_eq!(xtext_decode("++1"), None);
        assert_eq!(xtext_decode("+2b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a=b"), None);
    }
}
