//! The SMTP command parser: every line a client can send, through the same functions the
//! session calls (`intake::command`, then the address guard on the paths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::intake::command::{
    parse_bdat, parse_line, parse_mail, parse_rcpt, xtext_decode, Verb,
};
use passerelle::message::{NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use passerelle::policy::parse_path;
use passerelle::reply::Reply;

/// A reply must stay one well-formed SMTP reply whatever the client sent.
fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code), "code {}", r.code);
    let wire = r.to_wire();
    assert!(wire.ends_with("\r\n"));
    for line in wire.split_terminator("\r\n") {
        assert!(
            !line.contains('\r') && !line.contains('\n'),
            "bare CR/LF in {wire:?}"
        );
        assert!(line.starts_with(&r.code.to_string()), "{wire:?}");
    }
}

fn check_path(path: &str) {
    match parse_path(path) {
        Ok(Some(a)) => {
            assert!(!a.domain.is_empty(), "empty domain accepted: {path:?}");
            assert!(!a.domain.contains('@'), "domain with @: {path:?}");
        }
        Ok(None) => assert!(path.is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        let cmd = match parse_line(line) {
            Ok(c) => c,
            Err(r) => {
                assert_eq!(r.code, 500);
                check_reply(&r);
                continue;
            }
        };
        assert!(!cmd.arg.contains(['\r', '\n', '\0']));
        match cmd.verb {
            Verb::Mail => match parse_mail(cmd.arg) {
                Ok(m) => {
                    check_path(m.path);
                    if let Some(e) = &m.envid {
                        assert!(!e.is_empty() && e.len() <= 100);
                    }
                }
                Err(r) => {
                    assert!(r.code == 501 || r.code == 555, "{r:?}");
                    check_reply(&r);
                }
            },
            Verb::Rcpt => match parse_rcpt(cmd.arg) {
                Ok(r) => {
                    check_path(r.path);
                    assert!(r.notify & NOTIFY_NEVER == 0 || r.notify == NOTIFY_NEVER);
                    assert!(
                        r.notify & !(NOTIFY_NEVER | NOTIFY_SUCCESS | NOTIFY_FAILURE | NOTIFY_DELAY)
                            == 0
                    );
                    if let Some(o) = &r.orcpt {
                        assert!(!o.is_empty() && o.len() <= 500);
                    }
                }
                Err(r) => {
                    assert!(r.code == 501 || r.code == 555, "{r:?}");
                    check_reply(&r);
                }
            },
            Verb::Bdat => {
                if let Some((n, _)) = parse_bdat(cmd.arg) {
                    assert_eq!(
                        cmd.arg
                            .split_whitespace()
                            .next()
                            .and_then(|w| w.parse().ok()),
                        Some(n)
                    );
                }
            }
            _ => {}
        }
        // The guard also sees whatever a client puts between brackets.
        check_path(cmd.arg);
        if let Some(x) = xtext_decode(cmd.arg) {
            assert!(x.len() <= cmd.arg.len());
        }
    }
});
