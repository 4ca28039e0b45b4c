//! The API's one error type, mapped once to an HTTP status and a JSON body.
//!
//! Every error body is `{"error": "<English text>", "code": "<code>"}`, plus
//! `"params": {...}` where the message has variable parts and
//! `"retry_after_secs"` for 429/503. The English `error` is for machines and
//! logs; the pages show `error.<code>` from their message catalogue
//! (web/i18n-*.js), so a township doctor reads the refusal in Chinese.
//! Each variant has a default code; call sites whose refusal the pages show
//! to people add a specific one with [`ApiError::code`] and [`ApiError::param`].

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::archive::index::IndexError;

/// A stable machine code for an API error. Only the constants below exist,
/// so every code the API can send is in [`Code::ALL`], and a unit test checks
/// that both message catalogues translate each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(&'static str);

impl Code {
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident = $s:literal;)*) => {
        impl Code {
            $($(#[$m])* pub const $name: Code = Code($s);)*
            /// Every code, for the catalogue test.
            pub const ALL: &'static [Code] = &[$(Code::$name),*];
        }
    };
}

codes! {
    // Defaults of the variants.
    NOT_FOUND = "not_found";
    BAD_REQUEST = "bad_request";
    UNPROCESSABLE = "unprocessable";
    LOGIN_REQUIRED = "login_required";
    FORBIDDEN = "forbidden";
    CONFLICT = "conflict";
    /// Too many failed logins; params `secs`.
    LOGIN_LOCKED = "login_locked";
    /// A per-client limit; params `secs`.
    RATE_LIMITED = "rate_limited";
    /// The gateway is at a limit; params `secs`.
    BUSY = "busy";
    INTERNAL = "internal";
    // Sessions and roles.
    LOGIN_FAILED = "login_failed";
    LOGIN_BUSY = "login_busy";
    SESSION_EXPIRED = "session_expired";
    CSRF = "csrf";
    ROLE = "role";
    NO_CLINIC = "no_clinic";
    BAD_LANGUAGE = "bad_language";
    // The worklist and reports; `name` is the other expert's display name.
    CLAIMED_BY_OTHER = "claimed_by_other";
    NOT_CLAIMED = "not_claimed";
    LEASE_EXPIRED = "lease_expired";
    WRONG_STATE = "wrong_state";
    CHANGED_MEANWHILE = "changed_meanwhile";
    PRIORITY_LOWER = "priority_lower";
    DRAFT_BY_OTHER = "draft_by_other";
    NOT_AUTHOR = "not_author";
    REPORT_EMPTY = "report_empty";
    REPORT_TOO_LONG = "report_too_long";
    // Forms: reasons, consultation requests; `max` where a bound applies.
    REASON_REQUIRED = "reason_required";
    REASON_TOO_LONG = "reason_too_long";
    BAD_URGENCY = "bad_urgency";
    TOO_MANY_STUDIES = "too_many_studies";
    PATIENT_TOO_LONG = "patient_too_long";
    BAD_WINDOW = "bad_window";
    SCHEDULE_REQUIRED = "schedule_required";
    IN_PAST = "in_past";
    /// params `mins`: how long before its time a consultation opens.
    TOO_EARLY = "too_early";
    // Accounts (admin page).
    USER_EXISTS = "user_exists";
    BAD_USERNAME = "bad_username";
    PASSWORD_SHORT = "password_short";
    NEEDS_CLINIC = "needs_clinic";
    UNKNOWN_AFFILIATION = "unknown_affiliation";
    SELF_DISABLE = "self_disable";
    // Rooms and broadcasts; `name` is the username as typed.
    BAD_TITLE = "bad_title";
    NOT_A_USERNAME = "not_a_username";
    NAMED_TWICE = "named_twice";
    TOO_MANY_PARTICIPANTS = "too_many_participants";
    ROOM_LIMIT = "room_limit";
    NOT_ROOM_OWNER = "not_room_owner";
    // Study downloads.
    DOWNLOADS_BUSY = "downloads_busy";
    DOWNLOADS_LIMITED = "downloads_limited";
    INDEX_UNAVAILABLE = "index_unavailable";
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    /// The request is fine but the data cannot serve it (e.g. undecodable pixels).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed attempts; try again in {0} s")]
    TooMany(u64),
    /// A per-client limit (429); seconds to wait.
    #[error("{0}; try again in {1} s")]
    Limited(&'static str, u64),
    /// The gateway as a whole is at a limit (503); seconds to wait.
    #[error("{0}; try again in {1} s")]
    Busy(&'static str, u64),
    #[error("internal error")]
    Internal(String),
    /// Any of the above with a specific code and parameters for the pages.
    #[error("{inner}")]
    Coded {
        inner: Box<ApiError>,
        code: Code,
        params: Map<String, Value>,
    },
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        if e.is_unavailable() {
            return ApiError::unavailable();
        }
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// The index database cannot be reached: 503 with a short retry, not a
    /// 500 (nothing is wrong with the request; PostgreSQL is restarting).
    pub fn unavailable() -> ApiError {
        ApiError::Busy("the index database is unavailable", 5).code(Code::INDEX_UNAVAILABLE)
    }

    /// A database error of a repository: 503 when the database is
    /// unreachable, otherwise 500.
    pub fn db(e: &sqlx::Error) -> ApiError {
        if crate::store::is_unavailable(e) {
            ApiError::unavailable()
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl ApiError {
    /// The same error with a specific code (status and text unchanged).
    pub fn code(self, code: Code) -> ApiError {
        match self {
            ApiError::Coded { inner, params, .. } => ApiError::Coded { inner, code, params },
            inner => ApiError::Coded {
                inner: Box::new(inner),
                code,
                params: Map::new(),
            },
        }
    }

    /// Adds a parameter the pages put into the translated message, e.g.
    /// `name` in "the study is being read by {name}".
    pub fn param(self, key: &str, value: impl Into<Value>) -> ApiError {
        match self {
            ApiError::Coded {
                inner,
                code,
                mut params,
            } => {
                params.insert(key.to_string(), value.into());
                ApiError::Coded { inner, code, params }
            }
            inner => {
                let code = inner.default_code();
                inner.code(code).param(key, value)
            }
        }
    }

    /// The code the body carries.
    pub fn error_code(&self) -> Code {
        match self {
            ApiError::Coded { code, .. } => *code,
            other => other.default_code(),
        }
    }

    fn default_code(&self) -> Code {
        match self {
            ApiError::NotFound(_) => Code::NOT_FOUND,
            ApiError::BadRequest(_) => Code::BAD_REQUEST,
            ApiError::Unprocessable(_) => Code::UNPROCESSABLE,
            ApiError::Unauthorized(_) => Code::LOGIN_REQUIRED,
            ApiError::Forbidden(_) => Code::FORBIDDEN,
            ApiError::Conflict(_) => Code::CONFLICT,
            ApiError::TooMany(_) => Code::LOGIN_LOCKED,
            ApiError::Limited(..) => Code::RATE_LIMITED,
            ApiError::Busy(..) => Code::BUSY,
            ApiError::Internal(_) => Code::INTERNAL,
            ApiError::Coded { code, .. } => *code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.error_code();
        let (inner, mut params) = match self {
            ApiError::Coded { inner, params, .. } => (*inner, params),
            other => (other, Map::new()),
        };
        let mut body = serde_json::json!({ "error": inner.to_string(), "code": code.as_str() });
        let status = match &inner {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooMany(secs) | ApiError::Limited(_, secs) | ApiError::Busy(_, secs) => {
                let status = if matches!(inner, ApiError::Busy(..)) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::TOO_MANY_REQUESTS
                };
                params.insert("secs".into(), (*secs).into());
                body["retry_after_secs"] = (*secs).into();
                body["params"] = Value::Object(params);
                return (
                    status,
                    [(axum::http::header::RETRY_AFTER, secs.to_string())],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Internal(detail) => {
                // Detail goes to the log, not to the client.
                tracing::error!(error = %detail, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // `code` and `param` never nest one Coded in another.
            ApiError::Coded { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if !params.is_empty() {
            body["params"] = Value::Object(params);
        }
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, Option<String>, Value) {
        let r = e.into_response();
        let status = r.status();
        let retry = r
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        (status, retry, serde_json::from_slice(&b).expect("json"))
    }

    #[tokio::test]
    async fn every_error_carries_a_code_next_to_the_english_text() {
        let (st, _, b) = body_of(ApiError::Conflict("the study changed meanwhile".into())).await;
        assert_eq!(st, StatusCode::CONFLICT);
        assert_eq!(b["code"], "conflict");
        assert_eq!(b["error"], "the study changed meanwhile");
        assert!(b.get("params").is_none(), "{b}");

        let (st, _, b) = body_of(
            ApiError::Conflict("the study is being read by Dr. Li".into())
                .code(Code::CLAIMED_BY_OTHER)
                .param("name", "Dr. Li"),
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT, "a code keeps the variant's status");
        assert_eq!(b["code"], "claimed_by_other");
        assert_eq!(b["params"]["name"], "Dr. Li");
        assert_eq!(b["error"], "the study is being read by Dr. Li");

        let (st, _, b) = body_of(ApiError::Internal("disk on fire".into())).await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b["code"], "internal");
        assert_eq!(b["error"], "internal error", "details stay in the log");
    }

    #[tokio::test]
    async fn waits_carry_retry_after_and_the_seconds_as_a_param() {
        let (st, retry, b) = body_of(ApiError::TooMany(30)).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("30"));
        assert_eq!(b["code"], "login_locked");
        assert_eq!(b["params"]["secs"], 30);
        assert_eq!(b["retry_after_secs"], 30);

        let (st, retry, b) = body_of(ApiError::Busy("busy with logins", 1).code(Code::LOGIN_BUSY)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(b["code"], "login_busy");
        assert_eq!(b["params"]["secs"], 1);
    }

    #[test]
    fn a_second_code_replaces_the_first_and_keeps_the_params() {
        let e = ApiError::Forbidden("x".into())
            .param("a", 1)
            .code(Code::ROLE)
            .code(Code::CSRF);
        assert_eq!(e.error_code(), Code::CSRF);
        match e {
            ApiError::Coded { inner, params, .. } => {
                assert!(matches!(*inner, ApiError::Forbidden(_)));
                assert_eq!(params["a"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(
                c.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                c.as_str()
            );
        }
    }

    /// Both catalogues translate every code the API can send (the pages
    /// would otherwise fall back to a generic message).
    #[test]
    fn both_catalogues_translate_every_code() {
        for (name, text) in [
            ("i18n-zh-CN.js", include_str!("../../web/i18n-zh-CN.js")),
            ("i18n-en.js", include_str!("../../web/i18n-en.js")),
        ] {
            for c in Code::ALL {
                let key = format!("'error.{}':", c.as_str());
                assert!(text.contains(&key), "web/{name} has no {key}");
            }
        }
    }
}
