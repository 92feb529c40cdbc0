//! The console's socket: plain HTTP (loopback only, checked by the config) or HTTPS, as an
//! `axum::serve::Listener`. TLS handshakes run in their own tasks (bounded in time), so a slow
//! client never holds up the others' accepts.

use crate::net::BoxStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Where the TLS configuration comes from at each handshake (a reload may change the
/// gateway's certificate); `None` for plain HTTP.
pub type TlsSource = Option<Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>>;

/// A handshake taking longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConsoleListener {
    rx: mpsc::Receiver<(BoxStream, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConsoleListener {
    pub fn new(sock: TcpListener, tls: TlsSource) -> std::io::Result<ConsoleListener> {
        let local = sock.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(sock, tls, tx));
        Ok(ConsoleListener { rx, local, task })
    }
}

async fn accept_loop(sock: TcpListener, tls: TlsSource, tx: mpsc::Sender<(BoxStream, SocketAddr)>) {
    loop {
        let (tcp, peer) = match sock.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!(error = %e, "console: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(source) = &tls else {
            if tx.send((Box::new(tcp), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let Some(cfg) = source() else {
            tracing::error!("console: no TLS certificate available; connection closed");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send((Box::new(s), peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "console: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "console: TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for ConsoleListener {
    type Io = BoxStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoxStream, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (never, short of a panic): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

pub use crate::net::http::ClientAddr;

/// Console connections served at once; beyond, a new one is closed at once (issue 24 B.14:
/// there was no cap). A browser opens six at most; 256 leave room for every administrator.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this (slowloris): hyper's own timer, which
/// `axum::serve` does not set.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection, keep-alive included, lives at most this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Serves `router` on the console's connections, each on its own task, bounded as above.
pub async fn serve(listener: ConsoleListener, router: axum::Router) {
    let bounds = crate::net::http::Bounds {
        name: "console",
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        lifetime: CONNECTION_LIFETIME,
        refused_metric: (
            "passerelle_console_connections_refused_total",
            "Console connections closed at once: too many open",
        ),
    };
    crate::net::http::serve(listener, router, bounds).await
}

/// A rustls server configuration for the console: HTTP/1.1 over the given identity.
pub fn server_config(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut c = base.clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}
