//! Account primitives: password hashing and login throttling.
//!
//! Passwords are stored only as argon2id PHC strings (salt and parameters
//! inside), so parameters can be raised later without invalidating old
//! hashes. Verification is deliberately slow (tens of milliseconds), which is
//! why it must run on a blocking thread, never on the async runtime.
//!
//! Login throttling is a pure state machine with time passed in: attempts
//! are counted per key (username, client address, and known-good (username,
//! address) pairs; see `LoginThrottle` for the exact rule), and after a few
//! failures the key is locked out for a doubling period. Verification runs
//! on `PasswordPool`, a few dedicated threads with a bounded queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};

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
    Verifier::new().verify(password, stored)
}

/// Largest argon2 memory a stored hash may ask for when verified (KiB); our
/// own hashes use 19 MiB. A row asking for more is refused, not obeyed.
const MAX_VERIFY_KIB: usize = 64 * 1024;

/// `verify_password` with the argon2 memory reused across calls.
///
/// Why: allocating and freeing ~19 MiB per verification fragments malloc's
/// per-thread heaps: a few dozen logins on one thread left ~170 MB resident.
/// One buffer per password thread keeps it at 19 MiB each, and a thread
/// that has had nothing to verify for [`SCRATCH_IDLE`] lets its buffer go
/// ([`Verifier::release`]), so a gateway nobody is logging in to does not
/// carry 19 MiB per thread (a third of the 64 MB budget of a large
/// instance's path, benches/s3_multiframe.sh).
pub struct Verifier {
    blocks: Vec<argon2::Block>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a password thread keeps its argon2 memory with nothing to do.
pub const SCRATCH_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

impl Verifier {
    pub fn new() -> Self {
        Verifier { blocks: Vec::new() }
    }

    /// Gives the argon2 memory back; the next verification allocates it.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }

    /// Bytes of argon2 memory held.
    pub fn scratch_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<argon2::Block>()
    }

    pub fn verify(&mut self, password: &str, stored: &str) -> bool {
        use argon2::{Algorithm, Params, Version};
        let Ok(h) = PasswordHash::new(stored) else {
            return false;
        };
        let Ok(alg) = Algorithm::try_from(h.algorithm) else {
            return false;
        };
        let version = match h.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let Ok(params) = Params::try_from(&h) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
            return false;
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let n = params.block_count();
        if n > MAX_VERIFY_KIB {
            return false;
        }
        if self.blocks.len() < n {
            self.blocks.resize(n, argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        let ok = Argon2::new(alg, version, params)
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut self.blocks[..n])
            .is_ok();
        // Constant time: where the first difference is must not show.
        ok && out.len() == expected.len()
            && out
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
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

    /// Takes back one failure counted ahead of a check that then succeeded;
    /// a lockout that count started ends with it.
    pub fn refund(&mut self, key: &str) {
        if let Some(e) = self.keys.get_mut(key) {
            e.failures = e.failures.saturating_sub(1);
            if e.failures <= self.cfg.free_failures {
                e.locked_until = None;
            }
            if e.failures == 0 {
                self.keys.remove(key);
            }
        }
    }
}

/// Login throttling per username, per client address and per known-good
/// (username, address) pair.
///
/// Every attempt is counted *before* its password is hashed (`begin`), so
/// parallel attempts cannot all slip past the check while the first ones
/// are still hashing; a success then refunds the address's count and clears
/// the username's (`on_success`). The arithmetic, per key: `free_failures`
/// attempts fail with 401, the next one is still answered (401) and starts a
/// lockout of `first_lockout`, attempts during it get 429; each failure
/// after a lockout doubles it, up to `max_lockout`.
///
/// Addresses get four times the free failures: a clinic's whole staff may sit
/// behind one NAT address, and one colleague's typos must not lock the
/// others out.
///
/// An address from which an account has logged in before is *known good*
/// for that account: its attempts are counted on their own (username,
/// address) key and are not refused by the username's or the address's
/// lockout. So an attacker elsewhere who locks `dr.li` out by guessing does
/// not keep Dr. Li out of her own clinic's computer; sessions are never
/// affected by lockouts at all. Guessing from the known-good address itself
/// is throttled exactly as strictly, on the pair's key.
#[derive(Debug)]
pub struct LoginThrottle {
    users: LoginLimiter,
    addrs: LoginLimiter,
    pairs: LoginLimiter,
    /// Pair key -> last successful login.
    known: HashMap<String, Instant>,
    max_known: usize,
}

/// How long a successful login keeps its address known-good for the account.
pub const KNOWN_GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

fn pair_key(user: &str, addr: &str) -> String {
    format!("{user}\u{0}{addr}")
}

impl LoginThrottle {
    pub fn new(free_failures: u32) -> Self {
        let per = |free_failures| {
            LoginLimiter::new(LimiterConfig {
                free_failures,
                ..Default::default()
            })
        };
        LoginThrottle {
            users: per(free_failures),
            addrs: per(free_failures.saturating_mul(4)),
            pairs: per(free_failures),
            known: HashMap::new(),
            max_known: LimiterConfig::default().max_keys,
        }
    }

    fn is_known(&self, pair: &str, now: Instant) -> bool {
        self.known
            .get(pair)
            .is_some_and(|t| now.saturating_duration_since(*t) < KNOWN_GOOD_FOR)
    }

    /// `Err(wait)` while the attempt would be refused; changes nothing.
    pub fn check(&self, user: &str, addr: &str, now: Instant) -> Result<(), Duration> {
        let pair = pair_key(user, addr);
        if self.is_known(&pair, now) {
            return self.pairs.check(&pair, now);
        }
        match (self.users.check(user, now), self.addrs.check(addr, now)) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err(a.err().unwrap_or_default().max(b.err().unwrap_or_default())),
        }
    }

    /// Checks and counts the attempt as a failure in one step, before the
    /// password is hashed; `on_success` takes the count back.
    pub fn begin(&mut self, user: &str, addr: &str, now: Instant) -> Result<(), Duration> {
        self.check(user, addr, now)?;
        let pair = pair_key(user, addr);
        if self.is_known(&pair, now) {
            self.pairs.on_failure(&pair, now);
        } else {
            self.users.on_failure(user, now);
        }
        // Counted for a known-good pair too (spraying from one address shows),
        // though its lockout does not refuse known-good pairs.
        self.addrs.on_failure(addr, now);
        Ok(())
    }

    /// The password was right: clear the username's (or the pair's) count,
    /// refund the address the attempt counted, and remember the address as
    /// known-good for this account. The address keeps its other failures so
    /// one good account cannot be used to reset guessing at others.
    pub fn on_success(&mut self, user: &str, addr: &str, now: Instant) {
        let pair = pair_key(user, addr);
        if self.is_known(&pair, now) {
            self.pairs.on_success(&pair);
        } else {
            self.users.on_success(user);
        }
        self.addrs.refund(addr);
        if self.known.len() >= self.max_known && !self.known.contains_key(&pair) {
            self.known
                .retain(|_, t| now.saturating_duration_since(*t) < KNOWN_GOOD_FOR);
            if self.known.len() >= self.max_known
                && let Some(oldest) = self.known.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
            {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(pair, now);
    }
}

// ------------------------------------------------------------ accounts in the index

use crate::store::Pool;
use sqlx::Row;

use super::access::{Role, UnknownRole, User};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 1-64 letters, digits, '.', '_' or '-'")]
    BadUsername,
    /// A `users` row whose role this gateway does not know (written by
    /// hand or by another version): refused rather than guessed.
    #[error("account {username:?} has a stored {source}")]
    StoredRole { username: String, source: UnknownRole },
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

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    pub role: Role,
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
pub async fn create_user(pool: &Pool, u: &NewUser, now_ms: i64) -> Result<User, AccountError> {
    if !valid_username(&u.username) {
        return Err(AccountError::BadUsername);
    }
    let role = u.role;
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (username) DO NOTHING",
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
        language: None,
    })
}

pub async fn set_password(pool: &Pool, username: &str, password: &str) -> Result<(), AccountError> {
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))??;
    let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
        .bind(hash)
        .bind(username)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::NoSuchUser(username.into()));
    }
    // A new password ends every open session of the account.
    sqlx::query("DELETE FROM sessions WHERE username = $1")
        .bind(username)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_disabled(pool: &Pool, username: &str, disabled: bool) -> Result<(), AccountError> {
    let r = sqlx::query("UPDATE users SET disabled = $1 WHERE username = $2")
        .bind(i64::from(disabled))
        .bind(username)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::NoSuchUser(username.into()));
    }
    if disabled {
        sqlx::query("DELETE FROM sessions WHERE username = $1")
            .bind(username)
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn user_from_row(r: &crate::store::DbRow) -> Result<User, AccountError> {
    let username: String = r.get("username");
    let role = r
        .get::<String, _>("role")
        .parse::<Role>()
        .map_err(|source| AccountError::StoredRole {
            username: username.clone(),
            source,
        })?;
    Ok(User {
        username,
        display_name: r.get("display_name"),
        role,
        clinic_id: r.get("clinic_id"),
        hospital_id: r.get("hospital_id"),
        department: r.get("department"),
        disabled: r.get::<i64, _>("disabled") != 0,
        language: r.get("language"),
    })
}

/// Sets the account's interface language; None follows the browser again.
/// The caller checks `language` against the languages the pages have.
pub async fn set_language(pool: &Pool, username: &str, language: Option<&str>) -> Result<(), AccountError> {
    let r = sqlx::query("UPDATE users SET language = $1 WHERE username = $2")
        .bind(language)
        .bind(username)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AccountError::NoSuchUser(username.into()));
    }
    Ok(())
}

pub async fn list_users(pool: &Pool) -> Result<Vec<User>, AccountError> {
    let rows = sqlx::query("SELECT * FROM users ORDER BY role, username")
        .fetch_all(pool)
        .await?;
    rows.iter().map(user_from_row).collect()
}

/// One account (disabled ones included: callers decide).
pub async fn get_user(pool: &Pool, username: &str) -> Result<Option<User>, AccountError> {
    sqlx::query("SELECT * FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
}

pub async fn display_name(pool: &Pool, username: &str) -> Result<Option<String>, AccountError> {
    Ok(sqlx::query("SELECT display_name FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get(0)))
}

/// The account if the password is right. Always runs one argon2
/// verification (against a dummy hash for unknown users) so response time
/// does not reveal which usernames exist; the verification runs on the
/// bounded `PasswordPool` in the `slot` the caller was admitted with.
pub async fn check_login(
    pool: &Pool,
    hasher: &PasswordPool,
    slot: HashSlot,
    username: &str,
    password: &str,
) -> Result<Option<User>, AccountError> {
    let row = sqlx::query("SELECT * FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(pool)
        .await?;
    let stored: Option<String> = row.as_ref().map(|r| r.get("password_hash"));
    let ok = hasher.verify(slot, password.to_string(), stored).await?;
    Ok(match (ok, row) {
        (true, Some(r)) => Some(user_from_row(&r)?).filter(|u| !u.disabled),
        _ => None,
    })
}

/// Password verification off the async runtime *and* off tokio's blocking
/// pool: a few dedicated threads fed by a bounded queue.
///
/// Why not `spawn_blocking`: argon2id needs ~19 MiB per verification, and the
/// blocking pool (up to 512 threads) is shared with every C-STORE's file
/// writes. A login flood then ran hundreds of verifications at once (1.3 GB of
/// RSS for 300 in flight) and delayed the SCP. Here at most `threads`
/// verifications run at a time (memory: `threads` x 19 MiB, in as many malloc
/// arenas) and at most `queue` wait; callers that find no free slot are
/// answered "busy" at once (`try_slot`) instead of queueing without bound.
pub struct PasswordPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Admission to the pool: one running or queued verification. Holding it is
/// the point (the permit returns when it is dropped).
pub struct HashSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

struct Job {
    password: String,
    stored: Option<String>,
    reply: tokio::sync::oneshot::Sender<bool>,
    /// Released when the job is done (or skipped), not when the caller goes
    /// away, so clients that disconnect cannot overfill the queue.
    _slot: HashSlot,
}

impl PasswordPool {
    /// Starts `threads` named worker threads; `queue` more jobs may wait.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<PasswordPool> {
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(threads + queue);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("medrelay-argon2-{i}"))
                .spawn(move || {
                    let mut verifier = Verifier::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv_timeout(SCRATCH_IDLE),
                            Err(_) => return,
                        };
                        let job = match job {
                            Ok(job) => job,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                verifier.release();
                                continue;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        };
                        // Its caller is gone (client disconnected): skip the work.
                        if job.reply.is_closed() {
                            continue;
                        }
                        let ok = match &job.stored {
                            Some(h) => verifier.verify(&job.password, h),
                            None => {
                                verifier.verify(&job.password, dummy_hash());
                                false
                            }
                        };
                        let _ = job.reply.send(ok);
                    }
                })?;
        }
        Ok(PasswordPool {
            jobs: tx,
            slots: Arc::new(tokio::sync::Semaphore::new(threads + queue)),
        })
    }

    /// A slot if a verification can start or wait now; None: the pool is busy.
    pub fn try_slot(&self) -> Option<HashSlot> {
        self.slots.clone().try_acquire_owned().ok().map(HashSlot)
    }

    /// False for a wrong password and an unknown user (`stored` None, same
    /// cost).
    pub async fn verify(
        &self,
        slot: HashSlot,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            password,
            stored,
            reply,
            _slot: slot,
        };
        // Never full: slots bound the jobs in the channel.
        let gone = || PasswordError::Hash("the password threads are gone".into());
        self.jobs.try_send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }
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
    pool: &Pool,
    username: &str,
    remote: &str,
    now_ms: i64,
) -> Result<NewSession, AccountError> {
    let s = NewSession {
        token: random_hex(32),
        csrf: random_hex(16),
    };
    sqlx::query(
        "INSERT INTO sessions (token_hash, username, csrf, created_ms, last_seen_ms, remote) VALUES ($1, $2, $3, $4, $5, $6)",
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
    pool: &Pool,
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
    pool: &Pool,
    hash: &str,
    now_ms: i64,
    idle_ms: i64,
    max_ms: i64,
) -> Result<SessionCheck, AccountError> {
    let hash = hash.to_string();
    let Some(r) = sqlx::query(
        "SELECT s.csrf, s.created_ms, s.last_seen_ms, u.* FROM sessions s JOIN users u ON u.username = s.username
         WHERE s.token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(SessionCheck::Unknown);
    };
    let created: i64 = r.get("created_ms");
    let seen: i64 = r.get("last_seen_ms");
    let user = user_from_row(&r)?;
    let expired = now_ms - seen > idle_ms || now_ms - created > max_ms;
    if user.disabled || expired {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(&hash)
            .execute(pool)
            .await?;
        return Ok(SessionCheck::Expired);
    }
    if now_ms - seen > 60_000 {
        sqlx::query("UPDATE sessions SET last_seen_ms = $1 WHERE token_hash = $2")
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

pub async fn end_session(pool: &Pool, hash: &str) -> Result<(), AccountError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops sessions past either limit (periodic housekeeping).
pub async fn sweep_sessions(pool: &Pool, now_ms: i64, idle_ms: i64, max_ms: i64) -> Result<u64, AccountError> {
    Ok(
        sqlx::query("DELETE FROM sessions WHERE last_seen_ms < $1 OR created_ms < $2")
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
        let mut v = Verifier::new();
        assert!(v.verify("correct horse battery", &h));
        assert!(!v.verify("correct horse batterY", &h));
        assert!(!v.verify("anything", "not a phc string"));
        let held = v.scratch_bytes();
        assert!(v.verify("correct horse battery", &h), "the buffer is reused");
        assert_eq!((held >> 20, v.scratch_bytes()), (19, held), "19 MiB, reused");
        v.release();
        assert_eq!(v.scratch_bytes(), 0);
        assert!(v.verify("correct horse battery", &h), "verifies after a release");
        assert!(!v.verify("correct horse batterY", &h));
        // A stored hash asking for absurd memory is refused, not obeyed.
        let greedy = h.replace("m=19456", "m=4000000");
        assert!(!v.verify("correct horse battery", &greedy));
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

    /// The documented arithmetic: 5 free failures, the 6th is still answered
    /// and starts the lockout, the 7th is refused. Attempts are counted when
    /// they begin, so parallel attempts cannot all pass the check.
    #[test]
    fn attempts_are_counted_before_hashing_and_the_seventh_is_refused() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(5);
        for i in 1..=6 {
            assert!(t.begin("dr.li", "10.0.0.1", t0).is_ok(), "attempt {i} is hashed");
        }
        assert_eq!(t.begin("dr.li", "10.0.0.1", t0), Err(Duration::from_secs(30)));
        // 300 attempts in parallel for one account from many addresses:
        // only the free ones (and the one that starts the lockout) get through.
        let mut u = LoginThrottle::new(5);
        let passed = (0..300)
            .filter(|i| u.begin("dr.wang", &format!("10.1.{}.{}", i / 250, i % 250), t0).is_ok())
            .count();
        assert_eq!(passed, 6);
        // ... and from one address with random names, the address's 4 x 5.
        let mut v = LoginThrottle::new(5);
        let passed = (0..300)
            .filter(|i| v.begin(&format!("user{i}"), "10.2.0.1", t0).is_ok())
            .count();
        assert_eq!(passed, 21);
    }

    /// A success refunds the address the attempt it counted, so a clinic's
    /// staff logging in all day behind one NAT address never locks it.
    #[test]
    fn successes_do_not_use_up_the_address() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(5);
        for i in 0..100 {
            let user = format!("doc{i}");
            assert!(t.begin(&user, "10.0.0.9", t0).is_ok(), "login {i}");
            t.on_success(&user, "10.0.0.9", t0);
        }
        assert!(t.check("someone", "10.0.0.9", t0).is_ok());
    }

    /// An attacker elsewhere locking a username out does not lock its owner
    /// out of an address she has logged in from; guessing from that address
    /// is throttled on its own key just as strictly.
    #[test]
    fn a_known_good_address_keeps_its_own_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = LoginThrottle::new(5);
        assert!(t.begin("dr.li", "10.0.0.1", t0).is_ok());
        t.on_success("dr.li", "10.0.0.1", t0);
        for i in 0..7 {
            let _ = t.begin("dr.li", "203.0.113.7", t0 + s(i));
        }
        assert!(
            t.check("dr.li", "203.0.113.7", t0 + s(7)).is_err(),
            "attacker locked out"
        );
        assert!(
            t.check("dr.li", "198.51.100.1", t0 + s(7)).is_err(),
            "any new address too"
        );
        assert!(
            t.begin("dr.li", "10.0.0.1", t0 + s(7)).is_ok(),
            "the owner's address is not"
        );
        t.on_success("dr.li", "10.0.0.1", t0 + s(7));
        assert!(
            t.check("dr.li", "203.0.113.7", t0 + s(8)).is_err(),
            "her login does not unlock the attacker"
        );
        // Guessing from the known-good address: 6 attempts, the 7th refused.
        let passed = (0..10)
            .filter(|i| {
                t.begin("dr.li", "10.0.0.1", t0 + s(10) + Duration::from_millis(*i))
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 6);
        // Known-good does not last for ever.
        assert!(t.check("dr.li", "10.0.0.1", t0 + KNOWN_GOOD_FOR + s(3600)).is_ok());
        assert!(!t.is_known(&pair_key("dr.li", "10.0.0.1"), t0 + KNOWN_GOOD_FOR + s(3600)));
    }

    #[tokio::test]
    async fn the_password_pool_is_bounded_and_unknown_users_cost_a_hash() {
        let pool = PasswordPool::start(1, 1).expect("pool");
        let h = hash_password("correct horse battery").unwrap();
        let a = pool.try_slot().expect("running");
        let b = pool.try_slot().expect("queued");
        assert!(pool.try_slot().is_none(), "no third slot: the caller is told busy");
        let (ok, bad) = tokio::join!(
            pool.verify(a, "correct horse battery".into(), Some(h.clone())),
            pool.verify(b, "wrong".into(), Some(h)),
        );
        assert_eq!((ok.unwrap(), bad.unwrap()), (true, false));
        let c = pool.try_slot().expect("slots come back");
        assert!(!pool.verify(c, "x".into(), None).await.unwrap(), "unknown user");
    }

    #[tokio::test]
    async fn a_stored_role_this_gateway_does_not_know_is_an_error_not_a_missing_user() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = crate::archive::index::Index::open(&dir.path().join("index.db"))
            .await
            .expect("open");
        let pool = idx.pool();
        let nu = NewUser {
            username: "li".into(),
            password: "correct horse battery".into(),
            display_name: String::new(),
            role: Role::Expert,
            clinic_id: None,
            hospital_id: Some("h1".into()),
            department: None,
        };
        assert_eq!(create_user(pool, &nu, 1).await.expect("create").role, Role::Expert);
        sqlx::query("UPDATE users SET role = 'nurse' WHERE username = 'li'")
            .execute(pool)
            .await
            .expect("edit by hand");
        let e = get_user(pool, "li").await.expect_err("refused");
        assert!(
            matches!(&e, AccountError::StoredRole { username, .. } if username == "li"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            r#"account "li" has a stored unknown role "nurse" (admin, expert or clinic)"#
        );
        assert!(matches!(list_users(pool).await, Err(AccountError::StoredRole { .. })));
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
