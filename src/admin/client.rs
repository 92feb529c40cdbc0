//! The client side of the admin endpoint: one request with the token of `SPOOL/admin.token`,
//! the answer's status and body, or `None` when the server does not run. Used by the CLI.
//!
//! On `ureq`, the HTTP client the whitelist and CRL downloads already use (issue 26: one
//! client; this was a hand-written one).

use crate::config::Config;
use crate::queue::audit::os_reader;
use anyhow::{anyhow, Context};
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

/// The largest answer read: a stored message (`queue show --body`) is the biggest there is,
/// and intake refuses messages far below this.
const MAX_ANSWER: u64 = 1 << 30;

/// One request to the running server, or `None` when nothing listens there.
pub(crate) fn online(cfg: &Config, method: &str, path: &str) -> anyhow::Result<Option<Answer>> {
    let Some(addr) = cfg.server.admin else {
        return Ok(None);
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        // Loopback: never through a proxy named in the environment.
        .proxy(None)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let token_path = cfg.server.spool.join(super::TOKEN_FILE);
    // Something must answer before the token is read: a stopped server gives `None` (the
    // CLI then works on the spool) even to a user who cannot read the spool's token.
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        return Ok(None);
    }
    let token = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "the server runs; reading its token {}",
            token_path.display()
        )
    })?;
    let sent = match method {
        "POST" => agent
            .post(&url)
            .header("X-Passerelle-Token", token.trim())
            .header("X-Passerelle-Reader", os_reader())
            .send_empty(),
        _ => agent
            .get(&url)
            .header("X-Passerelle-Token", token.trim())
            .header("X-Passerelle-Reader", os_reader())
            .call(),
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::ConnectionFailed) => return Ok(None),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(None)
        }
        Err(e) => return Err(anyhow!("admin endpoint {addr}: {e}")),
    };
    let code = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .with_context(|| format!("reading the answer of {addr}"))?;
    Ok(Some(Answer { code, body }))
}
