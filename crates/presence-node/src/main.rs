//! The `presence-node` binary: reads its configuration, sets up logging, and
//! serves until SIGINT or SIGTERM.

use clap::Parser;
use presence_node::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the request path allocates many
/// small short-lived buffers (frames, JSON values, Redis replies), and under
/// load glibc's malloc/free took about a sixth of the node's CPU
/// (docs/benchmarks.md, "Profile").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    if let Err(e) = config.validate() {
        eprintln!("presence-node: invalid configuration: {e}");
        std::process::exit(2);
    }
    tracing::info!(config = ?config.redacted(), "starting");
    let listener = match listen(config.bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("presence-node: cannot listen on {}: {e}", config.bind);
            std::process::exit(1);
        }
    };
    if let Err(e) = presence_node::app::serve(config, listener, shutdown_signal()).await {
        eprintln!("presence-node: {e}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The listening socket, with a deeper accept queue than the 1024 of
/// `TcpListener::bind`: a reconnect storm (every client of a restarted node
/// at once) otherwise overflows it, and the kernel drops SYNs that the
/// clients only retry after 1, 3 and 7 s. The kernel caps it at
/// `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}
