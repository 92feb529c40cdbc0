//! `mss-peer`: a small SMTP sink for end-to-end tests.
//!
//! It plays the establishment's mail server receiving mail back from the
//! passerelle, or a remote MSSanté operator that may require STARTTLS and a
//! client certificate (mutual TLS). Every accepted message is written to
//! `DIR/<n>.eml` (bytes as received, after dot-unstuffing) and `DIR/<n>.json`
//! (envelope, written last via rename so that pollers can rely on it).

mod smtp;
mod store;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::smtp::{Config, RcptReply, Reply};
use crate::store::{EventLog, Store};

#[derive(Parser, Debug)]
#[command(
    name = "mss-peer",
    version,
    about = "SMTP test sink with STARTTLS and mutual TLS"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.5:2525.
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// Directory receiving <n>.eml and <n>.json for each accepted message.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Host name used in the banner and the EHLO reply.
    #[arg(long, value_name = "NAME", default_value = "mss-peer.test")]
    hostname: String,

    /// PEM certificate chain for STARTTLS (needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, SEC1/EC or PKCS#1/RSA) for STARTTLS (needs --cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,

    /// Reject MAIL/RCPT/DATA/BDAT with 530 until STARTTLS was done.
    #[arg(long, requires = "cert")]
    require_tls: bool,

    /// PEM CA certificate(s): request a client certificate verified against them.
    #[arg(long, value_name = "FILE", requires = "cert")]
    client_ca: Option<PathBuf>,

    /// Fail the TLS handshake unless the client presents a valid certificate.
    #[arg(long, requires = "client_ca")]
    require_client_cert: bool,

    /// Reply for RCPT whose local part is LOCALPART (case-insensitive), instead of 250.
    /// Repeatable, e.g. --rcpt-reply 'bad=550 5.1.1 no such user'.
    #[arg(long = "rcpt-reply", value_name = "LOCALPART=CODE TEXT", value_parser = parse_rcpt_reply_arg)]
    rcpt_reply: Vec<RcptReply>,

    /// Reply to the end of DATA/BDAT LAST with this instead of 250; the message is
    /// only stored when the code is 2xx.
    #[arg(long = "data-reply", value_name = "CODE TEXT", value_parser = parse_reply_arg)]
    data_reply: Option<Reply>,

    /// Do not store messages: count them, printing `mesg=N` on stdout after each (a fast
    /// sink for benchmarks). Nothing is written to --dir.
    #[arg(long)]
    discard: bool,

    /// Append one line per event to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

fn parse_rcpt_reply_arg(s: &str) -> Result<RcptReply, String> {
    RcptReply::parse(s)
}

fn parse_reply_arg(s: &str) -> Result<Reply, String> {
    Reply::parse(s)
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the tokio runtime: {e}")),
    };
    let code = runtime.block_on(run(args));
    // Do not wait for connection tasks still in flight: exit promptly.
    std::process::exit(code);
}

fn fail(msg: &str) -> ! {
    eprintln!("mss-peer: {msg}");
    std::process::exit(1);
}

async fn run(args: Args) -> i32 {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            match tls::server_config(
                cert,
                key,
                args.client_ca.as_deref(),
                args.require_client_cert,
            ) {
                Ok(c) => Some(c),
                Err(e) => fail(&e),
            }
        }
        _ => None,
    };
    let store = match Store::open(&args.dir) {
        Ok(s) if args.discard => s.discarding(),
        Ok(s) => s,
        Err(e) => fail(&format!("cannot use --dir {}: {e}", args.dir.display())),
    };
    let log = match &args.log {
        Some(path) => match EventLog::open(path) {
            Ok(l) => l,
            Err(e) => fail(&format!("cannot open --log {}: {e}", path.display())),
        },
        None => EventLog::disabled(),
    };
    let config = Arc::new(Config {
        hostname: args.hostname,
        tls,
        require_tls: args.require_tls,
        rcpt_replies: args.rcpt_reply,
        data_reply: args.data_reply,
        store,
        log,
    });

    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => fail(&format!("cannot listen on {}: {e}", args.listen)),
    };
    let local = match listener.local_addr() {
        Ok(a) => a.to_string(),
        Err(_) => args.listen.clone(),
    };
    let mut stdout = tokio::io::stdout();
    let banner = format!("mss-peer listening on {local}\n");
    if stdout.write_all(banner.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
        // stdout closed: keep serving anyway, tests may poll the port instead.
    }

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => fail("cannot install signal handlers"),
    };

    tokio::select! {
        _ = accept_loop(listener, config) => 1,
        _ = term.recv() => 0,
        _ = int.recv() => 0,
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<Config>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    smtp::handle_connection(stream, peer, config).await;
                });
            }
            Err(e) => {
                // Typically EMFILE: back off a little instead of spinning.
                eprintln!("mss-peer: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
