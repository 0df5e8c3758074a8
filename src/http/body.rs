//! Request bodies: read under a byte cap and a time limit, *then* parsed.
//!
//! The cap is checked against `Content-Length` before anything is read, and against the bytes
//! as they arrive (chunked bodies), so an oversize body costs at most the cap in memory. A body
//! that does not arrive within the read timeout is answered 408.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::Settings;

/// The whole body, at most `settings.max_body_bytes`.
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    settings: &Settings,
) -> Result<Vec<u8>, ApiError> {
    let max = settings.max_body_bytes;
    let too_large = |len: String| {
        ApiError::too_large(format!(
            "the request body is {len} bytes; this server takes at most {max}"
        ))
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced {
        if len > max as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    let collect = async {
        let mut body = body;
        let mut bytes = Vec::with_capacity(announced.map_or(0, |len| len as usize));
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::malformed(format!("cannot read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > max {
                    return Err(too_large(format!("more than {max}")));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(bytes)
    };
    match tokio::time::timeout(settings.body_read_timeout, collect).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {} s",
            settings.body_read_timeout.as_secs_f64()
        ))),
    }
}

/// The body parsed as `T`; 400 with serde's reason (line and column) if it is not.
pub async fn json<T: DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
    settings: &Settings,
) -> Result<T, ApiError> {
    let bytes = read(body, headers, settings).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::malformed(format!("the body is not the expected JSON: {e}")))
}
