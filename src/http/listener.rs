//! The accept loop: TCP connections served by hyper's HTTP/1.1 with the router.
//!
//! axum's own `serve` cannot set a header read timeout, so the shim drives hyper itself: a
//! client gets `header_read_timeout` to send each request's headers (then the connection is
//! closed: slowloris), at most `max_connections` connections are served at once (the next
//! ones wait in the listen backlog), and each request carries its peer's address
//! (`ConnectInfo<SocketAddr>`) for `client_addr`. On shutdown the listener is closed, idle
//! connections are closed, and in-flight requests get `shutdown_grace` to finish; connections
//! still open then are dropped, which cancels their runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::{router, Shim};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP on `listener` until `shutdown` completes, then drains.
pub async fn run(listener: TcpListener, shim: Arc<Shim>, shutdown: impl Future<Output = ()>) {
    let settings = shim.settings.clone();
    let app = router(shim);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(%peer, cause = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "stopped accepting; waiting for in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => info!("every connection closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            warn!(grace_ms = settings.shutdown_grace.as_millis() as u64, "requests still in flight after the grace period; dropping them");
        }
    }
}
