//! The bound listeners: each with its session context (swapped by a reload), its stop signal
//! and its accept task.

use crate::config::ListenerConfig;
use crate::intake::{listener, ListenerContext};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Bound {
    pub address: std::net::SocketAddr,
    pub context: Arc<ArcSwap<ListenerContext>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bound {
    pub fn start(sock: TcpListener, l: &ListenerConfig, ctx: ListenerContext) -> Bound {
        let context = Arc::new(ArcSwap::from_pointee(ctx));
        let (stop, rx) = watch::channel(false);
        tracing::info!(listener = %l.name, address = %l.address, "listening");
        Bound {
            address: l.address,
            task: tokio::spawn(listener::run(sock, context.clone(), rx)),
            context,
            stop,
        }
    }

    /// Stops accepting; sessions in flight finish (bounded by the listener's drain time).
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds with a large accept backlog (the default 128 overflows under reconnect bursts).
pub async fn bind(l: &ListenerConfig) -> anyhow::Result<TcpListener> {
    let ctx = || format!("listener {}: bind {}", l.name, l.address);
    let addr = l.address;
    let sock = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .with_context(ctx)?;
    sock.set_reuseaddr(true).with_context(ctx)?;
    sock.bind(addr).with_context(ctx)?;
    sock.listen(4096).with_context(ctx)
}
