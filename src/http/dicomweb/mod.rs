//! DICOMweb (PS3.18) under `/dicom-web`: WADO-RS retrieve of studies,
//! series and instances as stored, and their metadata as DICOM JSON.
//! QIDO-RS searches ([`qido`]) run on the Q/R index queries; STOW-RS
//! ([`stow`]) stores through the C-STORE pipeline into the caller's clinic.
//!
//! Who may call: a browser session exactly as for the rest of the API (the
//! cookie; a state-changing request also needs the CSRF header), or a
//! machine client with `Authorization: Bearer <token>` (an API token of
//! `medrelay api-token`, looked up by its SHA-256; no CSRF, since a browser
//! never attaches it by itself). Tokens are accepted on these routes only.
//! Either way the caller's scope decides what exists: a study, series or
//! instance outside it is 404, never 403, as everywhere in the API.
//!
//! CORS only for the origins of `[dicomweb] cors_origins` (a viewer served
//! from elsewhere): preflights answered, `Access-Control-Allow-Origin` for
//! those origins only, the `Authorization` header allowed; no credentials
//! mode (cookies stay same-site; cross-origin viewers use tokens).
//!
//! Reads are audited like the API's (`download` for instances, `view` for
//! metadata), STOW-RS as `upload`, the actor being the account or
//! `token:NAME`. Logs carry UIDs
//! and token names, never patient data.

mod accept;
mod frames;
pub mod json;
mod qido;
mod stow;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::api::{instance_chunks, stored_size};
use super::error::ApiError;
use super::limits::ZipRefused;
use crate::archive::files::Archive;
use crate::archive::index::InstanceRow;
use crate::archive::metadata;
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Scope};
use crate::reading::audit;
use crate::reading::tokens;

type S = State<Arc<Services>>;

/// Where the routes are mounted (bulk data URIs in metadata start here).
pub const BASE: &str = "/dicom-web";

pub fn router(services: Arc<Services>) -> Router<Arc<Services>> {
    // Every route also takes OPTIONS, so a CORS preflight reaches `cors`.
    let preflight = || async { StatusCode::NO_CONTENT };
    Router::new()
        .route("/studies", get(qido::studies).post(stow::store).options(preflight))
        .route("/series", get(qido::series).options(preflight))
        .route("/instances", get(qido::instances).options(preflight))
        .route("/studies/{study}/series", get(qido::study_series).options(preflight))
        .route(
            "/studies/{study}/instances",
            get(qido::study_instances).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances).options(preflight),
        )
        .route(
            "/studies/{study}",
            get(retrieve_study).post(stow::store_study).options(preflight),
        )
        .route("/studies/{study}/metadata", get(study_metadata).options(preflight))
        .route(
            "/studies/{study}/series/{series}",
            get(retrieve_series).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(series_metadata).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}",
            get(retrieve_instance).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/metadata",
            get(instance_metadata).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            get(frames::frames).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{*path}",
            get(frames::bulkdata).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/rendered",
            get(frames::rendered).options(preflight),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/thumbnail",
            get(frames::thumbnail).options(preflight),
        )
        .layer(axum::middleware::from_fn_with_state(services, cors))
}

// ------------------------------------------------------------------ errors

/// The DICOMweb boundary's error, mapped once to a status: the API's JSON
/// error body, plus `WWW-Authenticate: Bearer` on 401 (RFC 6750).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No credentials, an unknown or revoked token, an expired session.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A token was sent and is not valid (unknown, revoked, malformed).
    #[error("invalid or revoked API token")]
    InvalidToken,
    #[error("{0}")]
    NotAcceptable(String),
    /// STOW-RS: not a `multipart/related; type="application/dicom"` body.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// STOW-RS: a part over `[dicomweb] max_stow_mb`.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<crate::archive::index::IndexError> for WebError {
    fn from(e: crate::archive::index::IndexError) -> Self {
        WebError::Api(e.into())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, challenge) = match &self {
            WebError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Bearer realm=\"medrelay\""),
            WebError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"medrelay\", error=\"invalid_token\"",
            ),
            WebError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, ""),
            WebError::UnsupportedMedia(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
            WebError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ""),
            WebError::Api(_) => (StatusCode::OK, ""),
        };
        let mut resp = match self {
            WebError::Api(e) => e.into_response(),
            other => (
                status,
                axum::Json(serde_json::json!({ "error": other.to_string(), "code": match status {
                    StatusCode::UNAUTHORIZED => "login_required",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    _ => "not_acceptable",
                } })),
            )
                .into_response(),
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            let v = if challenge.is_empty() {
                "Bearer realm=\"medrelay\""
            } else {
                challenge
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        resp
    }
}

// -------------------------------------------------------------------- auth

/// Who is calling a DICOMweb route.
#[derive(Debug, Clone)]
pub enum Who {
    /// A browser session (the API's own caller).
    Account(Box<Caller>),
    /// A machine client's API token, by name.
    Token(String),
}

#[derive(Debug, Clone)]
pub struct WebCaller {
    pub who: Who,
    pub scope: Scope,
    pub remote: String,
    /// The one clinic this caller may store into (STOW-RS): a token of
    /// scope `clinic:ID` or a clinic doctor's account. Hospital, `all`,
    /// expert and admin callers read but never store, as a hospital's AE
    /// may query but not C-STORE: stored data belongs to the clinic that
    /// sends it, and that is only certain for a single-clinic caller.
    pub store_clinic: Option<String>,
}

impl WebCaller {
    pub fn sees(&self, clinic_id: &str) -> bool {
        self.scope.allows(clinic_id)
    }

    /// The name in audit rows and in the per-account download limit.
    pub fn name(&self) -> String {
        match &self.who {
            Who::Account(c) => c.user.username.clone(),
            Who::Token(n) => format!("token:{n}"),
        }
    }

    async fn audit(&self, s: &Services, action: &str, study_uid: &str, detail: &str) {
        match &self.who {
            Who::Account(c) => audit::record(s.index.pool(), c, action, Some(study_uid), Some(detail)).await,
            Who::Token(_) => {
                audit::record_raw(
                    s.index.pool(),
                    now_ms(),
                    &self.name(),
                    audit::Actor::Token,
                    action,
                    Some(study_uid),
                    Some(detail),
                    &self.remote,
                )
                .await
            }
        }
    }
}

impl FromRequestParts<Arc<Services>> for WebCaller {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Services>) -> Result<WebCaller, WebError> {
        let remote = parts
            .extensions
            .get::<super::auth::Remote>()
            .map(|r| r.0.ip().to_string())
            .unwrap_or_default();
        if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
            let v = v.to_str().map_err(|_| WebError::InvalidToken)?.trim();
            let (scheme, token) = v.split_once(' ').ok_or(WebError::InvalidToken)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(WebError::Unauthorized("use Authorization: Bearer <API token>"));
            }
            let t = tokens::authenticate(s.index.pool(), token.trim(), now_ms())
                .await
                .map_err(|e| match e {
                    tokens::TokenError::Db(e) => WebError::Api(ApiError::db(&e)),
                    other => WebError::Api(ApiError::Internal(other.to_string())),
                })?
                .ok_or(WebError::InvalidToken)?;
            // A stored scope this build cannot read sees nothing.
            let scope = t
                .scope
                .as_ref()
                .map_or(Scope::Clinics(Vec::new()), |sc| sc.scope(&s.cfg));
            let store_clinic = match &t.scope {
                Some(tokens::TokenScope::Clinic(id)) => Some(id.clone()),
                _ => None,
            };
            return Ok(WebCaller {
                who: Who::Token(t.name),
                scope,
                remote,
                store_clinic,
            });
        }
        match Caller::from_request_parts(parts, s).await {
            Ok(c) => Ok(WebCaller {
                scope: c.scope.clone(),
                remote: c.remote.clone(),
                store_clinic: match c.user.role {
                    crate::reading::access::Role::Clinic => c.user.clinic_id.clone(),
                    _ => None,
                },
                who: Who::Account(Box::new(c)),
            }),
            Err(e) => Err(match &e {
                ApiError::Unauthorized(_) => {
                    WebError::Unauthorized("log in, or send Authorization: Bearer <API token>")
                }
                ApiError::Coded { inner, .. } if matches!(**inner, ApiError::Unauthorized(_)) => {
                    WebError::Unauthorized("session expired; log in again, or send Authorization: Bearer <API token>")
                }
                _ => WebError::Api(e),
            }),
        }
    }
}

// -------------------------------------------------------------------- CORS

/// CORS for the origins of `[dicomweb] cors_origins` only (see the module
/// docs); requests without an `Origin`, or from other origins, get no CORS
/// headers, and their preflights are refused (403).
async fn cors(State(s): S, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allowed = origin
        .as_deref()
        .filter(|o| s.cfg.dicomweb.cors_origins.iter().any(|x| x == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(allowed) = allowed else {
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Accept, Content-Type"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(allowed) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Type, Content-Length, Content-Encoding, WWW-Authenticate"),
        );
    }
    resp
}

// -------------------------------------------------------------- resources

fn check_uids(uids: &[&str]) -> Result<(), WebError> {
    for u in uids {
        super::uid::check(u)?;
    }
    Ok(())
}

/// The study's clinic, if the caller's scope covers it (404 otherwise).
async fn study_in_scope(s: &Services, c: &WebCaller, study: &str) -> Result<(), WebError> {
    match s.index.study(study).await? {
        Some(st) if c.sees(&st.clinic_id) => Ok(()),
        _ => Err(ApiError::NotFound("study").into()),
    }
}

/// The latest version of each instance of a series of `study`.
async fn series_rows(s: &Services, study: &str, series: &str) -> Result<Vec<InstanceRow>, WebError> {
    let rows = s.index.instances_of_series(series).await?;
    if rows.is_empty() || rows.iter().any(|r| r.study_uid != study) {
        return Err(ApiError::NotFound("series").into());
    }
    Ok(rows)
}

/// The latest version of one instance, in `series` of `study`.
async fn instance_row(s: &Services, study: &str, series: &str, sop: &str) -> Result<InstanceRow, WebError> {
    match s.index.instance_versions(sop).await?.into_iter().next() {
        Some(r) if r.study_uid == study && r.series_uid == series => Ok(r),
        _ => Err(ApiError::NotFound("instance").into()),
    }
}

fn accept_of(h: &HeaderMap) -> Option<String> {
    let all: Vec<&str> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

// ---------------------------------------------------------------- retrieve

async fn retrieve_study(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path(study): Path<String>,
) -> Result<Response, WebError> {
    check_uids(&[&study])?;
    study_in_scope(&s, &c, &study).await?;
    let rows = s.index.instances_of_study(&study).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("study").into());
    }
    retrieve(&s, &c, &h, &study, rows, "dicomweb study", true).await
}

async fn retrieve_series(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series])?;
    study_in_scope(&s, &c, &study).await?;
    let rows = series_rows(&s, &study, &series).await?;
    retrieve(&s, &c, &h, &study, rows, &format!("dicomweb series {series}"), true).await
}

async fn retrieve_instance(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    study_in_scope(&s, &c, &study).await?;
    let row = instance_row(&s, &study, &series, &sop).await?;
    retrieve(
        &s,
        &c,
        &h,
        &study,
        vec![row],
        &format!("dicomweb instance {sop}"),
        false,
    )
    .await
}

/// Streams `rows` as `multipart/related; type="application/dicom"`, each
/// part the stored file byte for byte. Study and series retrieves take a
/// download slot (`http.max_zip_downloads`, per caller
/// `max_zip_downloads_per_account`), as study zips do.
async fn retrieve(
    s: &Arc<Services>,
    c: &WebCaller,
    h: &HeaderMap,
    study: &str,
    rows: Vec<InstanceRow>,
    what: &str,
    slot: bool,
) -> Result<Response, WebError> {
    accept::dicom_as_stored(accept_of(h).as_deref(), rows.iter().map(|r| r.transfer_syntax.as_str()))
        .map_err(WebError::NotAcceptable)?;
    let slot = if slot {
        Some(s.zip_slots.try_acquire(&c.name()).map_err(|r| {
            s.limits.zip_refused.fetch_add(1, Ordering::Relaxed);
            WebError::Api(match r {
                ZipRefused::Account => ApiError::Limited("your other downloads are still running", 30),
                ZipRefused::Global => ApiError::Busy("too many downloads at once", 30),
            })
        })?)
    } else {
        None
    };
    c.audit(s, "download", study, what).await;
    let boundary = new_boundary();
    let archive = s.archive.clone();
    let b = boundary.clone();
    let body = spawn_body(s, move |tx| async move {
        let _slot = slot;
        write_parts(&archive, &rows, &b, tx).await
    });
    let mut resp = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "multipart/related; type=\"application/dicom\"; boundary={boundary}"
    )) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

fn new_boundary() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!("medrelay-{}", hex::encode(b))
}

/// What a body producer hands its chunks to (see [`spawn_body`]).
#[derive(Clone)]
struct Sender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    stall: Duration,
    limits: Arc<super::limits::LimitCounters>,
}

impl Sender {
    /// Hands a chunk over; false when the client is gone or stopped reading
    /// for the stall limit (the producer then stops).
    async fn send(&self, b: impl Into<Bytes>) -> bool {
        use tokio::sync::mpsc::error::SendTimeoutError;
        match self.tx.send_timeout(Ok(b.into()), self.stall).await {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(_)) => {
                self.limits.write_timeouts.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(SendTimeoutError::Closed(_)) => false,
        }
    }

    /// Ends the body in an error (best effort): a truncated response is
    /// detectable, a silently short one is not.
    fn fail(&self, e: std::io::Error) -> bool {
        let _ = self.tx.try_send(Err(e));
        false
    }
}

/// A response body produced by `produce` on a task of its own, through a
/// channel of 4 chunks: memory is bounded whatever the study's size, no
/// thread waits on a slow client, and a client that takes nothing for
/// `http.write_timeout_secs` ends it. A producer that returns false (an
/// error, a stall) ends the body in an error instead of a clean end.
fn spawn_body<F, Fut>(s: &Services, produce: F) -> Body
where
    F: FnOnce(Sender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let sender = Sender {
        tx,
        stall: Duration::from_secs(s.cfg.http.write_timeout_secs),
        limits: s.limits.clone(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    tokio::spawn(async move {
        if produce(sender).await {
            finished.store(true, Ordering::Release);
        }
    });
    let stream = futures::stream::unfold((rx, done), |(mut rx, done)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, done))),
            None if done.load(Ordering::Acquire) => None,
            None => {
                done.store(true, Ordering::Release);
                Some((Err(std::io::Error::other("DICOMweb response aborted")), (rx, done)))
            }
        }
    });
    Body::from_stream(stream)
}

/// The parts of a multipart/related response, one stored instance each.
async fn write_parts(archive: &Archive, rows: &[InstanceRow], boundary: &str, tx: Sender) -> bool {
    for r in rows {
        let len = match stored_size(archive, &r.path).await {
            Ok(l) => l,
            Err(e) => return tx.fail(e),
        };
        let head = format!("--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len}\r\n\r\n");
        if !tx.send(head).await {
            return false;
        }
        let mut chunks = std::pin::pin!(instance_chunks(archive.clone(), r.path.clone(), len));
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            match chunk {
                Ok(b) => {
                    if !tx.send(b).await {
                        return false;
                    }
                }
                Err(e) => return tx.fail(e),
            }
        }
        if !tx.send(&b"\r\n"[..]).await {
            return false;
        }
    }
    tx.send(format!("--{boundary}--\r\n")).await
}

// ---------------------------------------------------------------- metadata

const DICOM_JSON: &str = "application/dicom+json";

/// Metadata builds running at once (each parses a whole series on a
/// blocking thread): bounded, so a burst of first views of new studies
/// cannot take every blocking thread.
static BUILDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

fn check_json_accept(h: &HeaderMap) -> Result<(), WebError> {
    let a = accept_of(h);
    if accept::accepts(a.as_deref(), DICOM_JSON) || accept::accepts(a.as_deref(), "application/json") {
        Ok(())
    } else {
        Err(WebError::NotAcceptable(
            "metadata is sent as application/dicom+json".into(),
        ))
    }
}

fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")))
}

/// The gzip DICOM JSON array of a series (its instances in `rows` order):
/// one object read when cached, else built from the instances, stored,
/// and returned.
async fn series_json_gz(s: &Services, study: &str, series: &str, rows: &[InstanceRow]) -> Result<Vec<u8>, WebError> {
    let content = metadata::content_key(
        study,
        rows.iter()
            .map(|r| (r.sop_instance_uid.as_str(), r.version, r.sha256.as_str())),
    );
    let internal = |e: String| WebError::Api(ApiError::Internal(e));
    let (archive, series_uid, key) = (s.archive.clone(), series.to_string(), content.clone());
    let cached = tokio::task::spawn_blocking(move || metadata::get(&archive, &series_uid, &key))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(format!("reading cached metadata of series {series}: {e}")))?;
    if let Some(gz) = cached {
        return Ok(gz);
    }
    let _permit = BUILDS.acquire().await.map_err(|e| internal(e.to_string()))?;
    let archive = s.archive.clone();
    let instances: Vec<(String, String, InstanceRow)> = rows
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                format!(
                    "{BASE}/studies/{study}/series/{}/instances/{}",
                    r.series_uid, r.sop_instance_uid
                ),
                r.clone(),
            )
        })
        .collect();
    let series_uid = series.to_string();
    tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let w = |gz: &mut flate2::write::GzEncoder<Vec<u8>>, b: &[u8]| gz.write_all(b).map_err(|e| e.to_string());
        w(&mut gz, b"[")?;
        for (i, (path, url, row)) in instances.iter().enumerate() {
            if i > 0 {
                w(&mut gz, b",")?;
            }
            let obj = match json::instance(&archive.input(path), url) {
                Ok(o) => o,
                // A stored instance that cannot be read back (storage
                // trouble): fail, and cache nothing.
                Err(e @ json::JsonError::Io(_)) => {
                    return Err(format!("metadata of series {series_uid}, instance {url}: {e}"));
                }
                // One that does not parse (accepted by the SCP, but more
                // than dicom-object reads) must not hide its whole series:
                // it is listed with what the index knows of it.
                Err(e) => {
                    tracing::warn!(series = %series_uid, sop = %row.sop_instance_uid, error = %e,
                        "instance metadata from the index only");
                    json::from_index(row)
                }
            };
            let bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
            w(&mut gz, &bytes)?;
        }
        w(&mut gz, b"]")?;
        let gz = gz.finish().map_err(|e| e.to_string())?;
        // A failed cache write costs the next request a rebuild, no more.
        if let Err(e) = metadata::put(&archive, &series_uid, &content, &gz) {
            tracing::warn!(series = %series_uid, error = %e, "could not store series metadata");
        }
        Ok(gz)
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(internal)
}

async fn gunzip(gz: Vec<u8>) -> Result<Vec<u8>, WebError> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).map(|_| out)
    })
    .await
    .map_err(|e| WebError::Api(ApiError::Internal(e.to_string())))?
    .map_err(|e| WebError::Api(ApiError::Internal(format!("cached metadata: {e}"))))
}

fn json_response(body: Body, gzip: bool) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

async fn series_metadata(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series])?;
    check_json_accept(&h)?;
    study_in_scope(&s, &c, &study).await?;
    let rows = series_rows(&s, &study, &series).await?;
    let gz = series_json_gz(&s, &study, &series, &rows).await?;
    c.audit(&s, "view", &study, &format!("dicomweb metadata series {series}"))
        .await;
    // Sent as stored to clients that take gzip (a tenth of the bytes on a
    // township's link); unpacked for the others.
    if accepts_gzip(&h) {
        return Ok(json_response(Body::from(gz), true));
    }
    Ok(json_response(Body::from(gunzip(gz).await?), false))
}

async fn instance_metadata(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    check_json_accept(&h)?;
    study_in_scope(&s, &c, &study).await?;
    instance_row(&s, &study, &series, &sop).await?;
    let rows = series_rows(&s, &study, &series).await?;
    let at = rows
        .iter()
        .position(|r| r.sop_instance_uid == sop)
        .ok_or(ApiError::NotFound("instance"))?;
    let json = gunzip(series_json_gz(&s, &study, &series, &rows).await?).await?;
    let all: Vec<serde_json::Value> = serde_json::from_slice(&json)
        .map_err(|e| WebError::Api(ApiError::Internal(format!("cached metadata: {e}"))))?;
    let one = all.into_iter().nth(at).ok_or(ApiError::NotFound("instance"))?;
    c.audit(&s, "view", &study, &format!("dicomweb metadata instance {sop}"))
        .await;
    let body = serde_json::to_vec(&[one]).map_err(|e| WebError::Api(ApiError::Internal(e.to_string())))?;
    Ok(json_response(Body::from(body), false))
}

/// A study's metadata: its series' cached arrays one after the other,
/// streamed (memory is one series at a time).
async fn study_metadata(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path(study): Path<String>,
) -> Result<Response, WebError> {
    check_uids(&[&study])?;
    check_json_accept(&h)?;
    study_in_scope(&s, &c, &study).await?;
    let series = s.index.series_of(&study).await?;
    if series.is_empty() {
        return Err(ApiError::NotFound("study").into());
    }
    // The first series is built before answering, so a study that cannot
    // be read fails with a status rather than a cut body.
    let first_rows = series_rows(&s, &study, &series[0].series_uid).await?;
    let first = gunzip(series_json_gz(&s, &study, &series[0].series_uid, &first_rows).await?).await?;
    c.audit(&s, "view", &study, "dicomweb metadata study").await;
    let svc = s.clone();
    let body = spawn_body(&s, move |tx| async move {
        let mut wrote_any = false;
        let mut emit = async |json: Vec<u8>| -> bool {
            // Each series is a JSON array; the study is their elements.
            let inner = json
                .strip_prefix(b"[")
                .and_then(|j| j.strip_suffix(b"]"))
                .unwrap_or_default();
            if inner.is_empty() {
                return true;
            }
            let sep: &[u8] = if wrote_any { b"," } else { b"[" };
            wrote_any = true;
            let mut b = Vec::with_capacity(inner.len() + 1);
            b.extend_from_slice(sep);
            b.extend_from_slice(inner);
            tx.send(b).await
        };
        if !emit(first).await {
            return false;
        }
        for se in &series[1..] {
            let json = match series_rows(&svc, &study, &se.series_uid).await {
                Ok(rows) => match series_json_gz(&svc, &study, &se.series_uid, &rows).await {
                    Ok(gz) => gunzip(gz).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match json {
                Ok(j) => {
                    if !emit(j).await {
                        return false;
                    }
                }
                Err(e) => return tx.fail(std::io::Error::other(e.to_string())),
            }
        }
        let end: &[u8] = if wrote_any { b"]" } else { b"[]" };
        tx.send(end).await
    });
    Ok(json_response(body, false))
}
