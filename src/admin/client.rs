//! The client side of the admin endpoint: one request with the token of `SPOOL/admin.token`,
//! the answer's status and body, or `None` when the server does not run. Used by the CLI.
//!
//! Hand-written over a TcpStream: a single loopback request with `Connection: close` needs
//! no HTTP client stack (issue 26 asks for `ureq` here; not yet done).

use crate::config::Config;
use crate::queue::audit::os_reader;
use anyhow::{anyhow, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer of the running server: status and body bytes.
pub(crate) struct Answer {
    pub(crate) code: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request to the running server's admin endpoint (with its token): status and body,
/// or `None` when nothing listens there (`establishment add` asks it to reload).
pub fn admin_request(
    cfg: &Config,
    method: &str,
    path: &str,
) -> anyhow::Result<Option<(u16, String)>> {
    Ok(online(cfg, method, path)?.map(|a| (a.code, a.text())))
}

/// One request to the running server, or `None` when nothing listens there.
pub(crate) fn online(cfg: &Config, method: &str, path: &str) -> anyhow::Result<Option<Answer>> {
    let Some(sa) = cfg.server.admin else {
        return Ok(None);
    };
    let addr = sa;
    let Ok(mut s) = TcpStream::connect_timeout(&sa, Duration::from_secs(2)) else {
        return Ok(None);
    };
    let token_path = cfg.server.spool.join(super::TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "the server runs; reading its token {}",
            token_path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Passerelle-Token: {}\r\nX-Passerelle-Reader: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token.trim(),
        os_reader()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = memchr::memmem::find(&resp, b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed answer from {addr}"))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Some(Answer {
        code,
        body: resp[split + 4..].to_vec(),
    }))
}
