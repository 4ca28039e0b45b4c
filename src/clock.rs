//! The wall clock, read in one place.
//!
//! Hot paths (DIMSE handling, worklist transitions, forwarding decisions,
//! retry policies) never read a clock: they take `now_ms` as a parameter so
//! they stay pure and testable with any time. Only the adapters (handlers,
//! background loops, the CLI) call these functions and pass the result in.
//! Monotonic intervals use `std::time::Instant` / `tokio::time::Instant`
//! directly; there is no wall-clock arithmetic for timeouts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero if the system clock is set before 1970
/// (a clock that wrong is logged by nobody here, and zero sorts first).
pub fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Milliseconds since the Unix epoch: the unit of every `*_ms` column and
/// of the `now_ms` parameters of the pure rules.
pub fn now_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Whole seconds since the Unix epoch (token expiry, certificate validity).
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_agree() {
        let ms = now_ms();
        let s = unix_secs();
        // Both read after 2020 and within a second of each other.
        assert!(ms > 1_577_836_800_000);
        assert!((ms / 1000 - s as i64).abs() <= 1);
    }
}
