//! A tenant's rate: a token bucket per tenant, on `tokio::time` so tests can drive it with
//! `tokio::time::pause`.

use tokio::time::Instant;

use crate::tenants::PolicyConfig;

/// Tokens are compared with this tolerance, so float rounding never turns "exactly one token
/// after the advertised wait" into a refusal.
const TOKEN_EPSILON: f64 = 1e-9;

/// A token bucket: `burst` tokens, refilled at `rate_per_sec`; a request takes one.
#[derive(Debug)]
pub(super) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(super) fn full(policy: &PolicyConfig, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(policy.burst),
            refilled: now,
        }
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    pub(super) fn take(&mut self, policy: &PolicyConfig, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * policy.rate_per_sec).min(f64::from(policy.burst));
        self.refilled = now;
        if self.tokens + TOKEN_EPSILON >= 1.0 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let wait_ms = (1.0 - self.tokens) / policy.rate_per_sec * 1000.0;
        Err(((wait_ms - TOKEN_EPSILON).ceil() as u64).max(1))
    }
}
