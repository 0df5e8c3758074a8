//! Step 3: a session of its own.
//!
//! SIGCONT can be sent across uids within a session (DESIGN §8), so each child leaves the
//! zygote's session; landlock's signal scoping (step 6) closes the rest.

use nix::errno::Errno;

/// Step 3 failed (the child already leads a process group, i.e. it was not freshly forked).
#[derive(Debug, thiserror::Error)]
#[error("setsid: {0}")]
pub struct SessionError(#[source] pub Errno);

/// Start a new session with the child as its leader.
pub fn new_session() -> Result<(), SessionError> {
    nix::unistd::setsid().map(drop).map_err(SessionError)
}
