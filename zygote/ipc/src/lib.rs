//! sandfork-ipc: the one definition of everything that crosses into the jail.
//!
//! Three processes share these types, and each channel has one module:
//! - [`jail`]: the [`jail::JailSpec`] the supervisor writes and `zygote-init` parses;
//! - [`zygote`]: the zygote's start-up config and the supervisor ↔ zygote messages
//!   (spawn / spawned / exit, ...);
//! - [`lockdown`]: what the child lockdown receives ([`lockdown::InitConfig`] per zygote,
//!   [`lockdown::ChildParams`] per child);
//! - [`child`]: the supervisor ↔ child messages (ready, go, and the reports after the program);
//! - [`reports`]: the supervisor's decoder of a child's reports, which treats them as claims;
//! - [`path`]: the one rule for a path inside a run's working directory.
//!
//! Wire format: one JSON object per SEQPACKET packet, tagged by `"op"`, descriptors as
//! SCM_RIGHTS; `zygote/zygote.py` writes and reads the same shapes (a test in the supervisor's
//! suite runs it against these types). Every decoder is strict (`deny_unknown_fields`) and every
//! packet is bounded before it is parsed.

pub mod child;
pub mod jail;
pub mod lockdown;
pub mod path;
pub mod reports;
pub mod zygote;

/// Why a packet could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the channel allows; not parsed.
    #[error("a packet of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// Not a message of this channel.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Decodes one packet as `T`, refusing it unparsed when it is longer than `max`.
pub fn decode<T: serde::de::DeserializeOwned>(packet: &[u8], max: usize) -> Result<T, DecodeError> {
    if packet.len() > max {
        return Err(DecodeError::TooLarge {
            len: packet.len(),
            max,
        });
    }
    Ok(serde_json::from_slice(packet)?)
}

/// Encodes one message as the JSON packet the other side decodes.
pub fn encode<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(message)
}
