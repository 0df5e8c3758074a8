//! What the two long-running services (the daemon and the HTTP shim) share: logging set-up
//! (stderr, `RUST_LOG`, default `info`, the config's `log_format`, colours only on a terminal;
//! log files and journald get plain text), the request ids that tie their log lines and audit
//! records together, and the stop signal.

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// A fresh request id: `prefix`, `-` and 16 random hex digits (the daemon's are `r-…`, the HTTP
/// shim's `h-…`). The OS RNG failing is no reason to fail a request: a time-based id is still
/// unique enough for an audit trail.
pub fn new_request_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The daemon's and the HTTP shim's stop signal: resolves on the first SIGTERM or SIGINT (and
/// logs which). The handlers are installed by this call, so a signal that arrives before the
/// future is polled is not lost.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    fn installing(what: &'static str) -> impl Fn(std::io::Error) -> std::io::Error {
        move |err| std::io::Error::new(err.kind(), format!("installing the {what} handler: {err}"))
    }
    let mut term = signal(SignalKind::terminate()).map_err(installing("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(installing("SIGINT"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
