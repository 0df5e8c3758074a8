//! `sandfork bench --url`: the same runs through the HTTP shim's `POST /v1/execute`, over
//! HTTP/1.1 with keep-alive (one connection per worker, as a pooled client keeps it) or, with
//! `--new-connection`, a TCP connection per run (as most one-off callers do). hyper's client
//! connection, nothing in between, so the numbers are the shim's and the kernel's.
//!
//! The shim's own CPU time comes from its `/metrics` (`sandfork_http_cpu_seconds`), read before
//! and after the load: its growth over the runs is the shim's CPU per run.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sandfork_protocol::{RunResult, Status, Timings, Usage};
use serde_json::Value;
use tokio::net::TcpStream;

/// Where and how the HTTP runs go.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The shim's base URL, `http://HOST:PORT` (plain HTTP: a benchmark of the shim, not of
    /// TLS).
    pub url: String,
    /// An API key of a tenant allowed the profile.
    pub api_key: String,
    /// A TCP connection per run instead of one kept alive per worker.
    pub new_connection: bool,
}

/// The parts of the URL a connection needs.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header.
    authority: String,
    /// The URL's path prefix (without a trailing slash), for a shim behind a path.
    prefix: String,
}

impl HttpTarget {
    fn endpoint(&self) -> Result<Endpoint, String> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| format!("--url {:?}: {e}", self.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--url {:?}: only http:// (a benchmark of the shim, not of TLS)",
                self.url
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {:?} has no host", self.url))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        Ok(Endpoint {
            address: format!("{}:{port}", authority.host()),
            authority: authority.to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// One worker's way to the shim.
pub struct HttpConn {
    target: HttpTarget,
    endpoint: Endpoint,
    /// The kept-alive connection; `None` with `--new-connection`, or after it broke.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConn {
    /// Opens the worker's connection (with keep-alive), so the clock starts on a connected
    /// client as it does for the socket.
    pub async fn connect(target: &HttpTarget) -> Result<HttpConn, String> {
        let endpoint = target.endpoint()?;
        let sender = if target.new_connection {
            None
        } else {
            Some(open(&endpoint).await?)
        };
        Ok(HttpConn {
            target: target.clone(),
            endpoint,
            sender,
        })
    }

    /// One `POST /v1/execute`; its answer as a run result. `Err((message, broken))`: no result,
    /// and whether the connection is unusable now.
    pub async fn run(&mut self, profile: Option<&str>, code: &str) -> Result<RunResult, String> {
        let mut body = serde_json::json!({"code": code});
        if let Some(profile) = profile {
            body["profile"] = Value::from(profile);
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/v1/execute", self.endpoint.prefix))
            .header(hyper::header::HOST, &self.endpoint.authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.target.api_key),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("building the request: {e}"))?;
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => open(&self.endpoint).await?,
        };
        let answer = sender.send_request(request).await;
        let answer = answer.map_err(|e| format!("POST /v1/execute: {e}"))?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !self.target.new_connection {
            self.sender = Some(sender);
        }
        if status != StatusCode::OK {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
        run_result(&value)
    }
}

/// A fresh HTTP/1.1 connection to the shim; its driver runs on a task of its own.
async fn open(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(&endpoint.address)
        .await
        .map_err(|e| format!("connecting to {}: {e}", endpoint.address))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {}: {e}", endpoint.address))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The fields of `/v1/execute`'s answer (`RunOutput`) the tally reads, as a run result.
pub fn run_result(value: &Value) -> Result<RunResult, String> {
    let text = |key: &str| value[key].as_str().unwrap_or_default();
    let number = |object: &str, key: &str| value[object][key].as_f64().unwrap_or(0.0);
    let status = Status::ALL
        .into_iter()
        .find(|status| status.as_str() == text("status"))
        .ok_or_else(|| format!("the answer has no known status: {value}"))?;
    let mut result = RunResult::new(status);
    result.stdout = text("stdout").as_bytes().to_vec();
    result.stderr = text("stderr").as_bytes().to_vec();
    result.message = value["message"].as_str().map(str::to_string);
    result.warm = value["warm"].as_bool().unwrap_or(false);
    result.timings = Timings {
        queue_ms: number("timings", "queue_ms"),
        spawn_ms: number("timings", "spawn_ms"),
        run_ms: number("timings", "run_ms"),
        total_ms: number("timings", "total_ms"),
    };
    result.usage = Usage {
        wall_ms: number("usage", "wall_ms"),
        cpu_ms: number("usage", "cpu_ms"),
        max_rss_kb: value["usage"]["max_rss_kb"].as_u64().unwrap_or(0),
    };
    Ok(result)
}

/// The shim's CPU seconds so far, from its `/metrics`; `None` when it does not say (another
/// server, a proxy that refuses `/metrics`, a non-loopback client without `--public-metrics`).
pub async fn shim_cpu_seconds(target: &HttpTarget) -> Option<f64> {
    let endpoint = target.endpoint().ok()?;
    let mut sender = open(&endpoint).await.ok()?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/metrics", endpoint.prefix))
        .header(hyper::header::HOST, &endpoint.authority)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .ok()?
        .ok()?;
    if answer.status() != StatusCode::OK {
        return None;
    }
    let bytes = answer.into_body().collect().await.ok()?.to_bytes();
    cpu_seconds_in(&String::from_utf8_lossy(&bytes))
}

/// `sandfork_http_cpu_seconds` in a metrics page.
pub fn cpu_seconds_in(page: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix("sandfork_http_cpu_seconds "))
        .and_then(|value| value.trim().parse().ok())
}
