//! Serving an axum router with the bounds `axum::serve` does not set: a cap on connections
//! (beyond it a new one is closed at once and counted), a deadline for a request's headers
//! (slowloris) and a lifetime per connection. Used by the console and the admin endpoint, so
//! both HTTP surfaces stand on one server stack (hyper, through axum).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The client's address, given to handlers as `ConnectInfo<ClientAddr>` (the console's login
/// rate limit and audit log, the admin endpoint's body-read log).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The bounds of one HTTP surface.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// For logs: "console", "admin".
    pub name: &'static str,
    pub max_connections: usize,
    /// A request's headers must arrive within this (hyper's own timer).
    pub header_timeout: Duration,
    /// A connection, keep-alive included, lives at most this long.
    pub lifetime: Duration,
    /// The counter of connections closed at once, and its help text.
    pub refused_metric: (&'static str, &'static str),
}

/// Serves `router` on the listener's connections, each on its own task, bounded by `b`.
pub async fn serve<L>(mut listener: L, router: axum::Router, b: Bounds)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use tower::ServiceExt as _;
    let permits = Arc::new(tokio::sync::Semaphore::new(b.max_connections));
    loop {
        let (io, peer) = listener.accept().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::metrics::inc(b.refused_metric.0, b.refused_metric.1, &[]);
            tracing::debug!(%peer, "{}: too many connections, closed", b.name);
            continue;
        };
        let svc = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(ClientAddr(peer)));
                req.map(axum::body::Body::new)
            },
        );
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(b.header_timeout);
            let conn = builder.serve_connection(
                hyper_util::rt::TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(svc),
            );
            if tokio::time::timeout(b.lifetime, conn).await.is_err() {
                tracing::debug!(%peer, "{}: connection closed after its lifetime", b.name);
            }
        });
    }
}
