//! Accepts connections, screens them (client CIDRs, connection limits) and starts sessions.

use super::session::Session;
use super::ListenerContext;
use crate::net::BoxStream;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Live sessions per client address, to enforce `client_connection_limit`.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// Runs until `shutdown` turns true, then waits for the sessions in flight (they are told to
/// finish: idle ones get 421 at once, one inside DATA completes its message first).
pub async fn run(
    listener: TcpListener,
    shared: Arc<ArcSwap<ListenerContext>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let per_client = Arc::new(PerClient::default());
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let sh = shared.load_full();
        let _ = stream.set_nodelay(true);
        let name = sh.listener.name.clone();
        let ip_ok = sh.admits(peer.ip());
        // Clients outside the CIDRs may still come in to authenticate by certificate.
        if !ip_ok && !sh.certificate_may_admit() {
            let msg = format!(
                "554 5.7.1 {} ESMTP access denied for {}\r\n",
                sh.hostname,
                peer.ip()
            );
            tracing::info!(listener = %name, client = %peer, command = "CONNECT", reply = msg.trim_end(),
                "reject: client not in listener.clients");
            crate::journal::refused_connect(&name, peer, &msg);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.write_all(msg.as_bytes()),
                )
                .await;
            });
            continue;
        }
        if sessions.len() >= sh.limits.max_connections {
            tracing::warn!(listener = %name, client = %peer, command = "CONNECT",
                reply = "421 4.7.0 Too many connections, try again later", "reject: max_connections reached");
            crate::journal::refused_connect(&name, peer, "421 4.7.0 Too many connections");
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                    .await;
            });
            continue;
        }
        let Some(slot) = per_client.acquire(peer.ip(), sh.limits.client_connection_limit) else {
            tracing::warn!(listener = %name, client = %peer, command = "CONNECT",
                reply = "421 4.7.0 Too many connections from your address",
                "reject: client_connection_limit reached");
            crate::journal::refused_connect(
                &name,
                peer,
                "421 4.7.0 Too many connections from your address",
            );
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections from your address\r\n")
                    .await;
            });
            continue;
        };
        tracing::debug!(listener = %name, client = %peer, "connect");
        let rx = shutdown.clone();
        sessions.spawn(async move {
            let _slot = slot;
            Session::new(Box::new(stream) as BoxStream, peer, sh, ip_ok)
                .run(rx)
                .await;
        });
    }
    drop(listener);
    // Sessions in flight get a bounded time to finish.
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        sessions.abort_all();
    }
}
