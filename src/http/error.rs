//! The API's one error type, mapped once to an HTTP status and a JSON body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::archive::index::IndexError;

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
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooMany(secs) | ApiError::Limited(_, secs) | ApiError::Busy(_, secs) => {
                let status = if matches!(self, ApiError::Busy(..)) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::TOO_MANY_REQUESTS
                };
                let body = serde_json::json!({ "error": self.to_string(), "retry_after_secs": secs });
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
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}
