//! Login, sessions and the `Caller` extractor every protected route takes.
//!
//! The session token lives only in an `HttpOnly; Secure; SameSite=Strict`
//! cookie and only its SHA-256 is stored, so a copied database does not
//! hand out live sessions. State-changing requests must also carry the
//! session's CSRF token in `X-CSRF-Token`: SameSite already stops most
//! cross-site posts, the header stops the rest (old browsers, same-site
//! subdomains).
//!
//! Logins are the one expensive thing an anonymous client can ask for
//! (argon2id: tens of ms and ~19 MiB each), so `login` is guarded in this
//! order: refused at once while the username or address is locked out (429);
//! refused at once when every password-hashing slot is taken (503, nothing
//! queues without bound); the attempt is counted as a failure *before*
//! hashing, so parallel attempts cannot all pass the check; a success takes
//! the count back. Failed logins are audited, at most `FAILED_LOGIN_ROWS`
//! rows a minute, the rest as one summary row.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, Code};
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Role, scope_of};
use crate::reading::accounts::{self, LoginThrottle, PasswordPool, SessionCheck};
use crate::reading::audit::{self, RowBudget};

/// Failed-login audit rows itemised per minute; the rest are counted in one
/// summary row per minute (a flood cannot fill the disk with audit rows).
pub const FAILED_LOGIN_ROWS: u32 = 60;

/// Everything that bounds what anonymous login attempts can cost.
pub struct LoginGuard {
    pub throttle: Mutex<LoginThrottle>,
    pub hasher: PasswordPool,
    pub failed_rows: Mutex<RowBudget>,
}

impl LoginGuard {
    pub fn new(free_failures: u32, hash_threads: usize, hash_queue: usize) -> std::io::Result<LoginGuard> {
        Ok(LoginGuard {
            throttle: Mutex::new(LoginThrottle::new(free_failures)),
            hasher: PasswordPool::start(hash_threads, hash_queue)?,
            failed_rows: Mutex::new(RowBudget::new(Duration::from_secs(60), FAILED_LOGIN_ROWS)),
        })
    }

    fn throttle(&self) -> Result<std::sync::MutexGuard<'_, LoginThrottle>, ApiError> {
        self.throttle
            .lock()
            .map_err(|_| ApiError::Internal("login throttle poisoned".into()))
    }

    /// Writes the summary row of a minute whose failed logins were not all
    /// itemised (called by housekeeping, so the last minute of a flood is
    /// summarised too).
    pub async fn flush_audit(&self, pool: &crate::store::Pool) {
        let closed = self.failed_rows.lock().ok().and_then(|mut b| b.flush(Instant::now()));
        if let Some(sup) = closed {
            audit::record_suppressed(pool, "login_failed", sup).await;
        }
    }
}

pub const COOKIE: &str = "mr_session";

/// The peer address of the connection, added by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct Remote(pub SocketAddr);

fn remote_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<Remote>()
        .map(|r| r.0.ip().to_string())
        .unwrap_or_default()
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The configured session limits (idle, absolute), in milliseconds.
pub(crate) fn session_limits_ms(s: &Services) -> (i64, i64) {
    let a = &s.cfg.auth;
    ((a.session_idle_secs * 1000) as i64, (a.session_max_secs * 1000) as i64)
}

impl FromRequestParts<Arc<Services>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Services>) -> Result<Caller, ApiError> {
        let token = cookie_token(&parts.headers).ok_or(ApiError::Unauthorized("log in first"))?;
        let (idle, max) = session_limits_ms(s);
        let check = accounts::check_session(s.index.pool(), token, now_ms(), idle, max)
            .await
            .map_err(ApiError::from)?;
        let (user, csrf, hash) = match check {
            SessionCheck::Valid { user, csrf, hash } => (user, csrf, hash),
            SessionCheck::Expired => {
                return Err(ApiError::Unauthorized("session expired; log in again").code(Code::SESSION_EXPIRED));
            }
            SessionCheck::Unknown => return Err(ApiError::Unauthorized("log in first")),
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|t| ct_eq(t.as_bytes(), csrf.as_bytes())) {
                return Err(ApiError::Forbidden("missing or wrong CSRF token".into()).code(Code::CSRF));
            }
        }
        let scope = scope_of(&user, &s.cfg);
        Ok(Caller {
            user,
            scope,
            session: hash,
            csrf,
            remote: remote_of(parts),
        })
    }
}

/// Equality whose time does not depend on where the first difference is.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses callers whose role is not listed.
pub fn require(c: &Caller, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&c.role()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("not allowed for your role".into()).code(Code::ROLE))
    }
}

#[derive(Deserialize)]
pub struct Login {
    pub username: String,
    pub password: String,
}

fn me_json(c_user: &crate::reading::access::User, csrf: &str) -> serde_json::Value {
    json!({ "user": c_user, "csrf": csrf })
}

pub async fn login(
    State(s): State<Arc<Services>>,
    remote: Option<axum::Extension<Remote>>,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(l) = body.map_err(|e| ApiError::BadRequest(format!("login: {}", e.body_text())))?;
    let ip = remote.map(|r| r.0.0.ip().to_string()).unwrap_or_default();
    if l.username.len() > 64 || l.password.len() > 1024 {
        // No account has such a name (or password): nothing to hash or count.
        return Err(ApiError::Unauthorized("wrong username or password").code(Code::LOGIN_FAILED));
    }
    let user_key = l.username.to_lowercase();
    let g = &s.login;
    let locked = |wait: Duration| {
        s.limits.login_locked.fetch_add(1, Relaxed);
        ApiError::TooMany(wait.as_secs_f64().ceil().max(1.0) as u64)
    };
    g.throttle()?.check(&user_key, &ip, Instant::now()).map_err(locked)?;
    let Some(slot) = g.hasher.try_slot() else {
        s.limits.login_busy.fetch_add(1, Relaxed);
        return Err(ApiError::Busy("the server is busy with other logins", 1).code(Code::LOGIN_BUSY));
    };
    g.throttle()?.begin(&user_key, &ip, Instant::now()).map_err(locked)?;
    let user = accounts::check_login(s.index.pool(), &g.hasher, slot, &l.username, &l.password)
        .await
        .map_err(ApiError::from)?;
    let Some(user) = user else {
        let (itemise, closed) = match g.failed_rows.lock() {
            Ok(mut b) => b.admit(Instant::now()),
            Err(_) => (false, None),
        };
        if let Some(sup) = closed {
            audit::record_suppressed(s.index.pool(), "login_failed", sup).await;
        }
        if itemise {
            audit::record_raw(
                s.index.pool(),
                now_ms(),
                &l.username,
                audit::Actor::Unknown,
                "login_failed",
                None,
                None,
                &ip,
            )
            .await;
        }
        return Err(ApiError::Unauthorized("wrong username or password").code(Code::LOGIN_FAILED));
    };
    g.throttle()?.on_success(&user_key, &ip, Instant::now());
    let sess = accounts::create_session(s.index.pool(), &user.username, &ip, now_ms())
        .await
        .map_err(ApiError::from)?;
    audit::record_raw(
        s.index.pool(),
        now_ms(),
        &user.username,
        audit::Actor::Account(user.role),
        "login",
        None,
        None,
        &ip,
    )
    .await;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        sess.token, s.cfg.auth.session_max_secs
    );
    let mut resp = Json(me_json(&user, &sess.csrf)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub async fn logout(State(s): State<Arc<Services>>, c: Caller) -> Result<Response, ApiError> {
    accounts::end_session(s.index.pool(), &c.session)
        .await
        .map_err(ApiError::from)?;
    audit::record(s.index.pool(), &c, "logout", None, None).await;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("mr_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

pub async fn me(c: Caller) -> Json<serde_json::Value> {
    Json(me_json(&c.user, &c.csrf))
}
