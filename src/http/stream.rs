//! Streamed answers as server-sent events: `stdout` and `stderr` events carrying
//! `{"text": "..."}` as the program writes, then one `result` event with the usual result JSON.
//!
//! The shim sends the request upstream and waits for its first frame: `Started` commits to a
//! 200 event stream; a rejection (or an error frame) before it is an ordinary HTTP error, so a
//! refused run is refused with the same status codes as an unstreamed one. After that, the
//! stream owns the daemon connection: a client that goes away drops it, and the daemon stops
//! the run (a closed connection cancels its runs). Text is UTF-8 with U+FFFD for invalid bytes;
//! a character split across the program's writes is joined, not replaced.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use futures_util::stream::{self, Stream};
use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{OutputStream, Request, Response, RunExtra, RunResult};

use super::error::ApiError;
use super::Shim;

/// Whether the caller asked for a stream: the body's `stream`, or `Accept: text/event-stream`.
pub fn wanted(asked: bool, headers: &HeaderMap) -> bool {
    asked
        || headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"))
}

/// How a final result becomes the `result` event's JSON text.
pub type Shape = fn(RunResult, RunExtra) -> String;

/// Sends `request(id)` upstream and answers with its events; `shape` makes the final JSON.
pub async fn respond(
    shim: &Shim,
    request: impl FnOnce(u64) -> Request,
    shape: Shape,
) -> Result<HttpResponse, ApiError> {
    // A connection of its own, closed with the stream (dropping it cancels the run).
    let mut client = shim.upstream.open().await?;
    let id = client.next_id();
    client
        .send(&request(id))
        .await
        .map_err(ApiError::from_client)?;
    loop {
        match client.recv().await.map_err(ApiError::from_client)? {
            Response::Started { id: got } if got == id => break,
            Response::Done {
                id: got, result, ..
            } if got == id => {
                return Err(super::execute::refusal(&result).unwrap_or_else(|| {
                    ApiError::daemon_error("daemon_error", "a streamed run ended before it started")
                }))
            }
            Response::Error { error, .. } => return Err(ApiError::from_frame(&error)),
            _ => continue,
        }
    }
    let events = events(client, id, shape);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct State {
    client: Client,
    id: u64,
    shape: Shape,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
    ready: VecDeque<Event>,
    over: bool,
}

fn events(client: Client, id: u64, shape: Shape) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = State {
        client,
        id,
        shape,
        stdout: Utf8Stream::default(),
        stderr: Utf8Stream::default(),
        ready: VecDeque::new(),
        over: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.ready.pop_front() {
                return Some((Ok(event), state));
            }
            if state.over {
                return None;
            }
            match state.client.recv().await {
                Ok(Response::Output {
                    id: got,
                    stream,
                    data,
                }) if got == state.id => {
                    let text = match stream {
                        OutputStream::Stdout => state.stdout.push(&data),
                        OutputStream::Stderr => state.stderr.push(&data),
                    };
                    if !text.is_empty() {
                        state.ready.push_back(text_event(stream, &text));
                    }
                }
                Ok(Response::Done {
                    id: got,
                    result,
                    extra,
                }) if got == state.id => {
                    for (stream, rest) in [
                        (OutputStream::Stdout, state.stdout.finish()),
                        (OutputStream::Stderr, state.stderr.finish()),
                    ] {
                        if !rest.is_empty() {
                            state.ready.push_back(text_event(stream, &rest));
                        }
                    }
                    let json = (state.shape)(result, extra);
                    state
                        .ready
                        .push_back(Event::default().event("result").data(json));
                    state.over = true;
                }
                Ok(Response::Error { error, .. }) => {
                    let error = ApiError::from_frame(&error);
                    state.ready.push_back(error_event(&error));
                    state.over = true;
                }
                Ok(_) => continue,
                Err(err) => {
                    let error = match err {
                        ClientError::Closed => ApiError::daemon_unavailable(
                            "sandforkd closed the connection before the result",
                        ),
                        other => ApiError::from_client(other),
                    };
                    state.ready.push_back(error_event(&error));
                    state.over = true;
                }
            }
        }
    })
}

fn text_event(stream: OutputStream, text: &str) -> Event {
    let data = serde_json::json!({ "text": text });
    Event::default()
        .event(stream.as_str())
        .data(data.to_string())
}

/// A failure after the stream began (the status code is sent already): an `error` event with
/// the usual `{"error": {"kind", "message"}}`.
fn error_event(error: &ApiError) -> Event {
    let data = serde_json::json!({ "error": { "kind": error.kind, "message": error.message } });
    Event::default().event("error").data(data.to_string())
}

/// Bytes in, UTF-8 text out: invalid bytes become U+FFFD, but a character cut at the end of a
/// chunk waits for the rest of it (at most 3 bytes are held).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `data` (and what was held back), holding back an unfinished character.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let end = self.pending.len() - unfinished_tail(&self.pending);
        let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
        self.pending.drain(..end);
        text
    }

    /// What is held back, at the end of the stream (an unfinished character is invalid now).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Bytes at the end of `bytes` that start a UTF-8 sequence which could still be completed.
fn unfinished_tail(bytes: &[u8]) -> usize {
    (1..=3.min(bytes.len()))
        .find(|&n| {
            matches!(std::str::from_utf8(&bytes[bytes.len() - n..]),
                Err(e) if e.valid_up_to() == 0 && e.error_len().is_none())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_are_joined() {
        let snowman = "☃".as_bytes(); // 3 bytes
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&snowman[..1]), "");
        assert_eq!(s.push(&snowman[1..2]), "");
        assert_eq!(s.push(&[snowman[2], b'b']), "☃b");
        let emoji = "😀".as_bytes();
        assert_eq!(s.push(&emoji[..3]), "");
        assert_eq!(s.push(&emoji[3..]), "😀");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"x\xffy"), "x\u{fffd}y");
        assert_eq!(
            s.push(b"\x80"),
            "\u{fffd}",
            "a lone continuation byte cannot complete"
        );
        assert_eq!(s.push(b"\xe2\x82"), "", "held: it may complete");
        assert_eq!(
            s.finish(),
            "\u{fffd}",
            "the stream ended inside a character"
        );
        assert_eq!(s.push(b"\xe2\x82z"), "\u{fffd}z");
    }
}
