//! The per-edge send-rate cap: a token bucket with time passed in, so the
//! relay leaves room for video calls on the same clinic uplink. QUIC's own
//! congestion control still runs underneath; this only lowers the ceiling.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `burst` bounds how far ahead of the rate a sender may get after an
    /// idle spell (a quarter second of traffic, at least 64 KiB).
    pub fn new(rate_bytes_per_sec: f64, now: Instant) -> TokenBucket {
        let burst = (rate_bytes_per_sec / 4.0).max(65_536.0);
        TokenBucket {
            rate: rate_bytes_per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn from_mbit(mbit: f64, now: Instant) -> TokenBucket {
        TokenBucket::new(mbit * 1_000_000.0 / 8.0, now)
    }

    pub fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Take `n` bytes; returns how long the caller must wait before sending
    /// them (zero when tokens were available). Tokens may go negative, so a
    /// chunk larger than the burst still goes, just later.
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_matches_the_cap() {
        let t0 = Instant::now();
        let mut b = TokenBucket::from_mbit(8.0, t0); // 1 MB/s
        let mut now = t0;
        let mut sent = 0usize;
        // Send 64 KiB chunks as fast as allowed for 10 virtual seconds.
        while now < t0 + Duration::from_secs(10) {
            let wait = b.take(65_536, now);
            now += wait;
            sent += 65_536;
        }
        let secs = (now - t0).as_secs_f64();
        let rate = sent as f64 / secs;
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.05, "rate {rate}");
    }

    #[test]
    fn idle_time_buys_at_most_one_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000.0, t0);
        assert_eq!(b.take(65_536, t0), Duration::ZERO);
        // An hour idle does not allow an hour's worth at once.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(65_536, later), Duration::ZERO);
        assert!(b.take(65_536, later) > Duration::from_millis(500));
    }

    #[test]
    fn zero_means_no_cap() {
        let t0 = Instant::now();
        let mut b = TokenBucket::from_mbit(0.0, t0);
        assert!(b.unlimited());
        assert_eq!(b.take(usize::MAX / 2, t0), Duration::ZERO);
    }
}
