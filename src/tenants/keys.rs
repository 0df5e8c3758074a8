//! API keys: how they are made, and how a presented key is checked against the stored hashes
//! (SHA-256, compared in constant time).

use std::io::Read;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{PolicyConfig, KEY_BYTES, KEY_PREFIX};

/// The SHA-256 of `key`, as lowercase hex: the form `api_key_sha256` holds.
pub fn hash_key(key: &str) -> String {
    to_hex(&digest_key(key))
}

pub(super) fn digest_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time equality of two digests. In tests it counts its calls, so a test can check
/// that `by_api_key` compares against every hash.
pub(super) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> subtle::Choice {
    #[cfg(test)]
    super::tests::COMPARISONS.with(|c| c.set(c.get() + 1));
    a.ct_eq(b)
}

/// A fresh API key: `sf_` followed by 32 bytes from the OS random number generator, as 64
/// lowercase hex digits.
///
/// # Panics
/// If the operating system cannot supply random bytes (`getrandom(2)` failing, or no
/// `/dev/urandom`): there is no safe key to return then.
pub fn generate_key() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    if getrandom::fill(&mut bytes).is_err() {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("the operating system supplies no random bytes");
    }
    format!("{KEY_PREFIX}{}", to_hex(&bytes))
}

/// The TOML fragment `sandfork keygen` prints after the key: a `[[tenants]]` entry named
/// `tenant` holding the hash of `key` (never the key) and the default policy written out, ready
/// to append to a config file. `tenant` should have passed [`check_name`]; it is quoted as a
/// TOML string either way.
pub fn keygen_fragment(tenant: &str, key: &str) -> String {
    let policy = PolicyConfig::default();
    let name = toml::Value::String(tenant.to_string());
    format!(
        r#"
# Tenant {name}, made by `sandfork keygen`. Append to the config that sandforkd --config and
# sandfork-http --config read. Only the key's SHA-256 is here; keep the key itself secret.
[[tenants]]
name = {name}
api_key_sha256 = ["{hash}"]
# uids = [1001]  # local users that act as this tenant on the socket

[tenants.policy]
# max_timeout_ms = 15000  # ceilings on a request's limits (default: the profile's own)
# max_memory_mb = 700
# max_output_bytes = 1048576
profiles = []  # profiles it may use; empty: all
max_concurrent = {max_concurrent}  # runs admitted at once, waiting for a slot or running
rate_per_sec = {rate:?}  # requests per second, sustained
burst = {burst}  # requests at once above the rate
max_queue_wait_ms = {wait}  # longest wait for a slot before the run is refused
"#,
        hash = hash_key(key),
        max_concurrent = policy.max_concurrent,
        rate = policy.rate_per_sec,
        burst = policy.burst,
        wait = policy.max_queue_wait_ms,
    )
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// 64 hex digits (either case) → 32 bytes.
pub(super) fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}
