//! `sandfork-http`: the HTTP shim. An unprivileged process that authenticates remote callers by
//! API key and forwards their runs to sandforkd over its Unix socket, as a proxy.
//!
//! Start-up: config (the daemon's file) → tenants and keys → refuse to start if this uid is not a
//! proxy of the daemon (listed in `proxy_uids`, or the daemon's own) → bind → serve until
//! SIGTERM/SIGINT → drain → exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use sandfork::config::Config;
use sandfork::http::{self, Settings, Shim};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Where a root sandforkd listens by default.
const ROOT_DAEMON_SOCKET: &str = "/run/sandfork/sandfork.sock";

/// Serves sandfork's HTTP API: remote callers run code with an API key.
#[derive(Debug, Parser)]
#[command(name = "sandfork-http", version)]
struct Args {
    /// The daemon's TOML configuration (tenants and their API key hashes, proxy_uids, socket)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to serve HTTP on (port 0: any free port; the log says which)
    #[arg(long, value_name = "ADDR", default_value = http::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The daemon's socket (default: the config's `socket`, else $SANDFORK_SOCKET, else the
    /// root daemon's /run/sandfork/sandfork.sock)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Largest request body, in bytes; larger ones get 413 before they are parsed
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Time a client has to send a request's headers
    #[arg(long, value_name = "MS", default_value_t = http::DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// Time a client has to send a request's body
    #[arg(long, value_name = "MS", default_value_t = http::DEFAULT_BODY_READ_TIMEOUT.as_millis() as u64)]
    body_read_timeout_ms: u64,
    /// Client connections served at once
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Serve /metrics to any peer, not only loopback ones (it names tenants)
    #[arg(long)]
    public_metrics: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load_or_default(args.config.as_deref())?;
    sandfork::service::init(config.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(args, config))
}

async fn serve(args: Args, config: Config) -> anyhow::Result<()> {
    let socket = args
        .socket
        .or_else(|| config.socket.clone())
        .or_else(|| std::env::var_os("SANDFORK_SOCKET").map(PathBuf::from))
        // The shim runs as another user than a root daemon, so the daemon's default for its
        // own uid (`config::default_socket_path`) would point the shim at the wrong place.
        .unwrap_or_else(|| PathBuf::from(ROOT_DAEMON_SOCKET));
    let body_read_timeout = Duration::from_millis(args.body_read_timeout_ms);
    let settings = Settings {
        max_body_bytes: args.max_body_bytes,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_read_timeout,
        request_timeout: Settings::request_timeout_for(&config, body_read_timeout),
        max_connections: args.max_connections.max(1),
        public_metrics: args.public_metrics,
        ..Settings::new(&config, socket)
    };
    let shim = Shim::new(&config, settings).context("loading the tenants")?;

    // The daemon acts only for proxies: the uids in proxy_uids, and its own uid.
    let uid = nix::unistd::getuid().as_raw();
    if !config.proxy_uids.contains(&uid) {
        match shim.upstream.uid().await {
            Ok(daemon_uid) if daemon_uid == uid => {}
            Ok(daemon_uid) => bail!(
                "uid {uid} is not a proxy of sandforkd (which runs as uid {daemon_uid}) and would be refused every run: add `proxy_uids = [{uid}]` at the top of the config (before any [table]) and restart the daemon"
            ),
            Err(err) => warn!(
                socket = %shim.settings.socket.display(),
                cause = %err,
                "cannot reach sandforkd to check that uid {uid} may act for tenants: it must be listed in proxy_uids or be the daemon's own uid"
            ),
        }
    }
    if uid == 0 {
        warn!(
            "running as root; the shim needs no privilege: run it as a user listed in proxy_uids"
        );
    }
    let keys = shim.tenants.iter().filter(|t| !t.is_builtin()).count();
    if keys == 0 {
        warn!("the config declares no tenant, so no API key is valid: every run will get 401 (see `sandfork keygen`)");
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    info!(
        addr = %addr,
        socket = %shim.settings.socket.display(),
        tenants = keys,
        max_body_bytes = shim.settings.max_body_bytes,
        request_timeout_ms = shim.settings.request_timeout.as_millis() as u64,
        "listening"
    );

    let shutdown = sandfork::service::shutdown_signal()?;
    http::listener::run(listener, Arc::new(shim), shutdown).await;
    info!("stopped");
    Ok(())
}
