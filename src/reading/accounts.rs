//! Account primitives: password hashing and login throttling.
//!
//! Passwords are stored only as argon2id PHC strings (salt and parameters
//! inside), so parameters can be raised later without invalidating old
//! hashes. Verification is deliberately slow (tens of milliseconds), which is
//! why it must run on a blocking thread, never on the async runtime.
//!
//! Login throttling is a pure state machine with time passed in: failures are
//! counted per key (the caller uses both "username" and "client address" as
//! keys, so neither guessing many passwords for one account nor one password
//! for many accounts is cheap), and after a few failures the key is locked out
//! for a doubling period. A success clears the key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("passwords need at least {0} characters")]
    TooShort(usize),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub const MIN_PASSWORD_CHARS: usize = 10;

pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort(MIN_PASSWORD_CHARS));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// False for a wrong password and for a stored hash that does not parse
/// (a corrupt row must not let anyone in).
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// Failures allowed before the first lockout.
    pub free_failures: u32,
    pub first_lockout: Duration,
    pub max_lockout: Duration,
    /// A key with no failure for this long is forgotten.
    pub forget_after: Duration,
    /// Bound on remembered keys (memory safety against address spraying).
    pub max_keys: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            free_failures: 5,
            first_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Login attempts throttled per key.
#[derive(Debug)]
pub struct LoginLimiter {
    cfg: LimiterConfig,
    keys: HashMap<String, Entry>,
}

impl LoginLimiter {
    pub fn new(cfg: LimiterConfig) -> Self {
        LoginLimiter {
            cfg,
            keys: HashMap::new(),
        }
    }

    /// `Err(wait)` while the key is locked out.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        match self.keys.get(key).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn on_failure(&mut self, key: &str, now: Instant) {
        if self.keys.len() >= self.cfg.max_keys && !self.keys.contains_key(key) {
            let forget = self.cfg.forget_after;
            self.keys
                .retain(|_, e| now.saturating_duration_since(e.last_failure) < forget);
            if self.keys.len() >= self.cfg.max_keys {
                // Still full: drop everything rather than grow without bound;
                // attackers then pay the free failures again, nobody is locked out forever.
                self.keys.clear();
            }
        }
        let e = self.keys.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if now.saturating_duration_since(e.last_failure) >= self.cfg.forget_after {
            e.failures = 0;
        }
        e.failures += 1;
        e.last_failure = now;
        if e.failures > self.cfg.free_failures {
            let doublings = (e.failures - self.cfg.free_failures - 1).min(16);
            let lock = self
                .cfg
                .first_lockout
                .saturating_mul(1u32 << doublings)
                .min(self.cfg.max_lockout);
            e.locked_until = Some(now + lock);
        }
    }

    pub fn on_success(&mut self, key: &str) {
        self.keys.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("anything", "not a phc string"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert_eq!(hash_password("short"), Err(PasswordError::TooShort(MIN_PASSWORD_CHARS)));
    }

    #[test]
    fn repeated_failures_lock_out_with_doubling_and_success_clears() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = LoginLimiter::new(LimiterConfig::default());
        for i in 0..5 {
            assert!(l.check("dr.li", t0 + s(i)).is_ok());
            l.on_failure("dr.li", t0 + s(i));
        }
        assert!(l.check("dr.li", t0 + s(5)).is_ok(), "five free failures");
        l.on_failure("dr.li", t0 + s(5));
        assert_eq!(l.check("dr.li", t0 + s(5)), Err(s(30)));
        assert!(l.check("dr.li", t0 + s(35)).is_ok());
        l.on_failure("dr.li", t0 + s(35));
        assert_eq!(l.check("dr.li", t0 + s(35)), Err(s(60)));
        // Other keys are unaffected; success clears.
        assert!(l.check("dr.wang", t0 + s(35)).is_ok());
        l.on_success("dr.li");
        assert!(l.check("dr.li", t0 + s(36)).is_ok());
        // The lockout is capped.
        let mut m = LoginLimiter::new(LimiterConfig::default());
        for i in 0..40 {
            m.on_failure("x", t0 + s(i));
        }
        assert_eq!(m.check("x", t0 + s(39)), Err(s(15 * 60)));
        // Old failures are forgotten.
        let mut f = LoginLimiter::new(LimiterConfig::default());
        for i in 0..5 {
            f.on_failure("y", t0 + s(i));
        }
        f.on_failure("y", t0 + s(4000));
        assert!(f.check("y", t0 + s(4000)).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(LimiterConfig {
            max_keys: 100,
            ..Default::default()
        });
        for i in 0..1000 {
            l.on_failure(&format!("10.0.{}.{}", i / 256, i % 256), t0);
        }
        assert!(l.keys.len() <= 100);
    }
}
