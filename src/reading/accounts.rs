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

/// Login throttling per username and per client address. Addresses get
/// four times the free failures: a clinic's whole staff may sit behind one
/// NAT address, and one colleague's typos must not lock the others out.
#[derive(Debug)]
pub struct LoginThrottle {
    users: LoginLimiter,
    addrs: LoginLimiter,
}

impl LoginThrottle {
    pub fn new(free_failures: u32) -> Self {
        LoginThrottle {
            users: LoginLimiter::new(LimiterConfig {
                free_failures,
                ..Default::default()
            }),
            addrs: LoginLimiter::new(LimiterConfig {
                free_failures: free_failures.saturating_mul(4),
                ..Default::default()
            }),
        }
    }

    /// `Err(wait)` while either the user or the address is locked out.
    pub fn check(&self, user: &str, addr: &str, now: Instant) -> Result<(), Duration> {
        match (self.users.check(user, now), self.addrs.check(addr, now)) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err(a.err().unwrap_or_default().max(b.err().unwrap_or_default())),
        }
    }

    pub fn on_failure(&mut self, user: &str, addr: &str, now: Instant) {
        self.users.on_failure(user, now);
        self.addrs.on_failure(addr, now);
    }

    /// A success clears the user's failures; the address keeps its count
    /// so one good account cannot be used to reset guessing at others.
    pub fn on_success(&mut self, user: &str) {
        self.users.on_success(user);
    }
}

// ------------------------------------------------------------ accounts in the index

use sqlx::{Row, SqlitePool};

use super::access::{Role, User};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 1-64 letters, digits, '.', '_' or '-'")]
    BadUsername,
    #[error("unknown role {0:?} (admin, expert or clinic)")]
    BadRole(String),
    #[error("a clinic doctor needs a clinic")]
    NeedsClinic,
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    pub role: String,
    #[serde(default)]
    pub clinic_id: Option<String>,
    #[serde(default)]
    pub hospital_id: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
}

pub fn valid_username(u: &str) -> bool {
    !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// Creates an account. Hashing is slow on purpose, so callers on the async
/// runtime must wrap the hash in spawn_blocking: this function does that.
pub async fn create_user(pool: &SqlitePool, u: &NewUser, now_ms: i64) -> Result<User, AccountError> {
    if !valid_username(&u.username) {
        return Err(AccountError::BadUsername);
    }
    let role = Role::parse(&u.role).ok_or_else(|| AccountError::BadRole(u.role.clone()))?;
    let clinic_id = non_empty(&u.clinic_id);
    if role == Role::Clinic && clinic_id.is_none() {
        return Err(AccountError::NeedsClinic);
    }
    let pw = u.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))??;
    let display = if u.display_name.trim().is_empty() {
        u.username.clone()
    } else {
        u.display_name.trim().to_string()
    };
    let r = sqlx::query(
        "INSERT INTO users (username, display_name, role, clinic_id, hospital_id, department, password_hash, created_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
    )
    .bind(&u.username)
    .bind(&display)
    .bind(role.as_str())
    .bind(&clinic_id)
    .bind(non_empty(&u.hospital_id))
    .bind(non_empty(&u.department))
    .bind(&hash)
    .bind(now_ms)
    .execute(pool)
    .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::Exists(u.username.clone()));
    }
    Ok(User {
        username: u.username.clone(),
        display_name: display,
        role,
        clinic_id,
        hospital_id: non_empty(&u.hospital_id),
        department: non_empty(&u.department),
        disabled: false,
    })
}

pub async fn set_password(pool: &SqlitePool, username: &str, password: &str) -> Result<(), AccountError> {
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))??;
    let r = sqlx::query("UPDATE users SET password_hash = ? WHERE username = ?")
        .bind(hash)
        .bind(username)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::NoSuchUser(username.into()));
    }
    // A new password ends every open session of the account.
    sqlx::query("DELETE FROM sessions WHERE username = ?")
        .bind(username)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_disabled(pool: &SqlitePool, username: &str, disabled: bool) -> Result<(), AccountError> {
    let r = sqlx::query("UPDATE users SET disabled = ? WHERE username = ?")
        .bind(disabled)
        .bind(username)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::NoSuchUser(username.into()));
    }
    if disabled {
        sqlx::query("DELETE FROM sessions WHERE username = ?")
            .bind(username)
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn user_from_row(r: &sqlx::sqlite::SqliteRow) -> Option<User> {
    Some(User {
        username: r.get("username"),
        display_name: r.get("display_name"),
        role: Role::parse(&r.get::<String, _>("role"))?,
        clinic_id: r.get("clinic_id"),
        hospital_id: r.get("hospital_id"),
        department: r.get("department"),
        disabled: r.get::<i64, _>("disabled") != 0,
    })
}

pub async fn list_users(pool: &SqlitePool) -> Result<Vec<User>, AccountError> {
    let rows = sqlx::query("SELECT * FROM users ORDER BY role, username")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().filter_map(user_from_row).collect())
}

/// One account (disabled ones included: callers decide).
pub async fn get_user(pool: &SqlitePool, username: &str) -> Result<Option<User>, AccountError> {
    Ok(sqlx::query("SELECT * FROM users WHERE username = ?")
        .bind(username)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .and_then(user_from_row))
}

pub async fn display_name(pool: &SqlitePool, username: &str) -> Result<Option<String>, AccountError> {
    Ok(sqlx::query("SELECT display_name FROM users WHERE username = ?")
        .bind(username)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get(0)))
}

/// The account if the password is right. Always runs one argon2
/// verification (against a dummy hash for unknown users) so response time
/// does not reveal which usernames exist.
pub async fn check_login(pool: &SqlitePool, username: &str, password: &str) -> Result<Option<User>, AccountError> {
    let row = sqlx::query("SELECT * FROM users WHERE username = ?")
        .bind(username)
        .fetch_optional(pool)
        .await?;
    let stored: Option<String> = row.as_ref().map(|r| r.get("password_hash"));
    let pw = password.to_string();
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(h) => verify_password(&pw, &h),
        None => {
            verify_password(&pw, dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false);
    Ok(match (ok, row) {
        (true, Some(r)) => user_from_row(&r).filter(|u| !u.disabled),
        _ => None,
    })
}

/// argon2id of a random string nobody knows; only used to spend the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

pub struct NewSession {
    /// Goes to the cookie; only its SHA-256 is stored.
    pub token: String,
    pub csrf: String,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub async fn create_session(
    pool: &SqlitePool,
    username: &str,
    remote: &str,
    now_ms: i64,
) -> Result<NewSession, AccountError> {
    let s = NewSession {
        token: random_hex(32),
        csrf: random_hex(16),
    };
    sqlx::query(
        "INSERT INTO sessions (token_hash, username, csrf, created_ms, last_seen_ms, remote) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(token_hash(&s.token))
    .bind(username)
    .bind(&s.csrf)
    .bind(now_ms)
    .bind(now_ms)
    .bind(remote)
    .execute(pool)
    .await?;
    Ok(s)
}

#[derive(Debug)]
pub enum SessionCheck {
    Valid { user: User, csrf: String, hash: String },
    Expired,
    Unknown,
}

/// Looks a session up and enforces the idle and absolute limits; an expired
/// one is deleted. `last_seen` is written at most once a minute so reading
/// pages do not turn every image request into a database write.
pub async fn check_session(
    pool: &SqlitePool,
    token: &str,
    now_ms: i64,
    idle_ms: i64,
    max_ms: i64,
) -> Result<SessionCheck, AccountError> {
    check_session_hash(pool, &token_hash(token), now_ms, idle_ms, max_ms).await
}

/// `check_session` by the stored hash: how a long-lived connection (the
/// signaling WebSocket) re-checks the session it was opened with. Its use
/// counts as activity, so a consultation longer than the idle limit keeps
/// its session.
pub async fn check_session_hash(
    pool: &SqlitePool,
    hash: &str,
    now_ms: i64,
    idle_ms: i64,
    max_ms: i64,
) -> Result<SessionCheck, AccountError> {
    let hash = hash.to_string();
    let Some(r) = sqlx::query(
        "SELECT s.csrf, s.created_ms, s.last_seen_ms, u.* FROM sessions s JOIN users u ON u.username = s.username
         WHERE s.token_hash = ?",
    )
    .bind(&hash)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(SessionCheck::Unknown);
    };
    let created: i64 = r.get("created_ms");
    let seen: i64 = r.get("last_seen_ms");
    let user = user_from_row(&r);
    let expired = now_ms - seen > idle_ms || now_ms - created > max_ms;
    let Some(user) = user.filter(|u| !u.disabled && !expired) else {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(&hash)
            .execute(pool)
            .await?;
        return Ok(SessionCheck::Expired);
    };
    if now_ms - seen > 60_000 {
        sqlx::query("UPDATE sessions SET last_seen_ms = ? WHERE token_hash = ?")
            .bind(now_ms)
            .bind(&hash)
            .execute(pool)
            .await?;
    }
    Ok(SessionCheck::Valid {
        user,
        csrf: r.get("csrf"),
        hash,
    })
}

pub async fn end_session(pool: &SqlitePool, hash: &str) -> Result<(), AccountError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops sessions past either limit (periodic housekeeping).
pub async fn sweep_sessions(pool: &SqlitePool, now_ms: i64, idle_ms: i64, max_ms: i64) -> Result<u64, AccountError> {
    Ok(
        sqlx::query("DELETE FROM sessions WHERE last_seen_ms < ? OR created_ms < ?")
            .bind(now_ms - idle_ms)
            .bind(now_ms - max_ms)
            .execute(pool)
            .await?
            .rows_affected(),
    )
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
