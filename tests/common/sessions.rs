//! Shared helpers of the session tests: open, run a cell, close, over one client.

use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{
    Caller, Cell, ErrorKind, RunExtra, RunResult, SessionInfo, SessionOp, SessionOpen, SessionReply,
};

/// Opens a session; panics if it is not opened. The tests of a binary share one daemon and its
/// few session places: when they are all taken by tests running alongside, it waits for one as
/// a client would ("retry later"), for a bounded time.
pub async fn open(client: &mut Client, open: SessionOpen) -> SessionInfo {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match client
            .session(Caller::default(), SessionOp::Open(open.clone()))
            .await
        {
            Ok(SessionReply::Opened(info)) => return info,
            Err(ClientError::Server(frame))
                if frame.kind == ErrorKind::NoSessionCapacity
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("not opened: {other:?}"),
        }
    }
}

/// Runs `code` as a cell (not streamed).
pub async fn cell(client: &mut Client, session: &str, code: &str) -> (RunResult, RunExtra) {
    let cell = Cell {
        code: code.as_bytes().to_vec(),
        ..Cell::default()
    };
    cell_with(client, session, cell).await
}

/// Runs `cell`; panics on a protocol error.
pub async fn cell_with(client: &mut Client, session: &str, cell: Cell) -> (RunResult, RunExtra) {
    client
        .execute_cell(Caller::default(), session, cell, |_, _| {})
        .await
        .expect("cell")
}

/// Closes a session; panics unless it was closed.
pub async fn close(client: &mut Client, session: &str) {
    let op = SessionOp::Close {
        session: session.into(),
    };
    let reply = client.session(Caller::default(), op).await.expect("close");
    assert_eq!(reply, SessionReply::Closed);
}

/// The message of a `session_ended` error; panics for anything else.
pub fn ended_message(err: &ClientError) -> String {
    match err {
        ClientError::Server(frame) if frame.kind == ErrorKind::SessionEnded => {
            frame.message.clone()
        }
        other => panic!("expected session_ended, got {other:?}"),
    }
}
