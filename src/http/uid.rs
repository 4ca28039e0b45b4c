//! The one check every UID from a request goes through before it reaches a
//! file path, a query or a zip entry name: the DICOM UID grammar of
//! `dicom::meta::is_valid_uid` (digits and dots, at most 64 characters, no
//! empty component). A path parameter that fails it is answered 400, the
//! same way on every route; a valid UID the caller may not see is 404 (the
//! handlers' scope checks).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::dicom::meta::is_valid_uid;

/// `Ok` for a well-formed UID, 400 otherwise. The message does not echo the
/// input (it may be anything, of any length).
pub fn check(uid: &str) -> Result<(), ApiError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "not a valid DICOM UID (digits and dots, at most 64 characters)".into(),
        ))
    }
}

/// A `{uid}` path parameter that passed [`check`]. Routes with a UID in
/// their path take this instead of `Path<String>`.
#[derive(Debug, Clone)]
pub struct Uid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Uid {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(uid) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("bad path parameter".into()))?;
        check(&uid)?;
        Ok(Uid(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_uid_grammar_passes() {
        assert!(check("1.2.840.10008.5.1.4.1.1.2").is_ok());
        for bad in [
            "",
            "..",
            "../..",
            "1.2/../3",
            "1..2",
            ".1.2",
            "1.2.",
            "1.2.3\0",
            "1.2.a",
            "%2e%2e",
            &"1".repeat(65),
        ] {
            assert!(matches!(check(bad), Err(ApiError::BadRequest(_))), "{bad:?} passed");
        }
    }
}
