//! Accepts connections, screens them (client CIDRs, then [`Admission`]: connection limits per
//! listener, address and network, room kept for attributed clients) and starts sessions.

use super::admission::{Admission, Net, Reason, Settings};
use super::floodlog::FloodLog;
use super::session::Session;
use super::ListenerContext;
use crate::net::BoxStream;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Runs until `shutdown` turns true, then waits for the sessions in flight (they are told to
/// finish: idle ones get 421 at once, one inside DATA completes its message first).
pub async fn run(
    listener: TcpListener,
    shared: Arc<ArcSwap<ListenerContext>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let first = shared.load_full();
    let admission = Admission::new(
        &first.listener.name,
        Settings::from_limits(&first.limits),
        first.limits.attribution_timeout,
        first.limits.stress_timeout,
    );
    let flood = Arc::new(FloodLog::new(&first.listener.name));
    drop(first);
    let mut sessions = JoinSet::new();
    let mut tick = tokio::time::interval(super::floodlog::WINDOW / 2);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = tick.tick() => {
                flood.tick();
                if admission.drained() {
                    tokio::task::spawn_blocking(give_memory_back);
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
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
        let limits = &sh.limits;
        let net = Net::of(
            peer.ip(),
            limits.network_prefix_v4,
            limits.network_prefix_v6,
        );
        // Clients outside the CIDRs may still come in to authenticate by certificate.
        if !ip_ok && !sh.certificate_may_admit() {
            let msg = format!(
                "554 5.7.1 {} ESMTP access denied for {}\r\n",
                sh.hostname,
                peer.ip()
            );
            refuse(&name, &flood, net, peer, Reason::NotAllowed, stream, msg);
            continue;
        }
        admission.reconfigure(Settings::from_limits(limits), limits.attribution_timeout);
        // Attributed at once: an establishment's MTA by its address, or a client inside the
        // listener's own `clients` (a trust-space listener has none: its peers are attributed
        // by their certificate, after the handshake).
        let attributed = ip_ok && (sh.listener.establishments || !sh.listener.clients.is_empty());
        let ticket = match admission.enter(peer.ip(), attributed) {
            Ok(t) => t,
            Err(reason) => {
                refuse(
                    &name,
                    &flood,
                    net,
                    peer,
                    reason,
                    stream,
                    reason.reply().to_string(),
                );
                continue;
            }
        };
        let loud = attributed || flood.session(net);
        tracing::debug!(listener = %name, client = %peer, "connect");
        let rx = shutdown.clone();
        sessions.spawn(async move {
            Session::new(Box::new(stream) as BoxStream, peer, sh, ip_ok, ticket, loud)
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

/// Refuses a connection: counted, journaled, logged within the flood budget, and answered
/// (bounded: a client that does not read gets 5 s).
fn refuse(
    listener: &str,
    flood: &FloodLog,
    net: Net,
    peer: SocketAddr,
    reason: Reason,
    mut stream: tokio::net::TcpStream,
    msg: String,
) {
    crate::metrics::inc(
        "passerelle_connections_refused_total",
        "Connections refused or ended by the listener's limits, by reason",
        &[("listener", listener), ("reason", reason.label())],
    );
    if flood.refusal(net) {
        tracing::warn!(listener = %listener, client = %peer, command = "CONNECT", reply = msg.trim_end(),
            "reject: {}", reason.log_text());
    }
    crate::journal::refused_connect(listener, peer, msg.trim_end());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.write_all(msg.as_bytes()),
        )
        .await;
    });
}

/// Gives the memory of sessions that are gone back to the system. Why: glibc's allocator keeps
/// what thousands of sessions freed in its per-thread arenas, and after a flood of 10,000
/// connections the gateway's RSS stayed 90 MiB above its idle level; `malloc_trim` releases
/// the free pages of every arena (measured in tests/e2e/test_listener_abuse.py).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}
