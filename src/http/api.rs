//! API handlers: health, metrics, study search and browse, downloads.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::zipstream::ZipStream;
use crate::app::Services;
use crate::archive::index::{InstanceRow, StudyFilter};
use crate::dicom::meta::is_valid_uid;

type S = State<Arc<Services>>;

fn check_uid(uid: &str) -> Result<(), ApiError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{uid:?} is not a valid UID")))
    }
}

pub async fn health(State(s): S) -> Json<serde_json::Value> {
    let db_ok = sqlx::query("SELECT 1").execute(s.index.pool()).await.is_ok();
    Json(json!({
        "status": if db_ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "role": s.cfg.role,
        "ae_title": s.cfg.dicom.ae_title,
        "database": db_ok,
        "free_bytes": s.archive.free_bytes().ok(),
    }))
}

pub async fn metrics(State(s): S) -> Response {
    let depth = s.index.worklist_depth().await.unwrap_or(-1);
    let free = s.archive.free_bytes().map(|v| v as i64).unwrap_or(-1);
    let text = s.metrics.render(&[
        ("medrelay_worklist_depth", "Complete studies waiting to be read", depth),
        (
            "medrelay_archive_free_bytes",
            "Free bytes on the archive filesystem",
            free,
        ),
    ]);
    let mut text = text;
    super::consult::render_metrics(&s.sfu.metrics, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn studies(State(s): S, Query(f): Query<StudyFilter>) -> Result<Json<serde_json::Value>, ApiError> {
    for d in [&f.date_from, &f.date_to].into_iter().flatten() {
        let digits = d.replace('-', "");
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!("date {d:?}: use YYYYMMDD or YYYY-MM-DD")));
        }
    }
    let (rows, total) = s.index.search_studies(&f).await?;
    Ok(Json(
        json!({ "total": total, "offset": f.offset.unwrap_or(0), "studies": rows }),
    ))
}

pub async fn study(State(s): S, Path(uid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&uid)?;
    let st = s.index.study(&uid).await?.ok_or(ApiError::NotFound("study"))?;
    let series = s.index.series_of(&uid).await?;
    Ok(Json(json!({ "study": st, "series": series })))
}

pub async fn study_series(State(s): S, Path(uid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&uid)?;
    s.index.study(&uid).await?.ok_or(ApiError::NotFound("study"))?;
    Ok(Json(json!({ "series": s.index.series_of(&uid).await? })))
}

pub async fn study_instances(State(s): S, Path(uid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&uid)?;
    s.index.study(&uid).await?.ok_or(ApiError::NotFound("study"))?;
    Ok(Json(json!({ "instances": s.index.instances_of_study(&uid).await? })))
}

pub async fn series_instances(State(s): S, Path(uid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&uid)?;
    let rows = s.index.instances_of_series(&uid).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("series"));
    }
    Ok(Json(json!({ "instances": rows })))
}

pub async fn instance(State(s): S, Path(uid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    check_uid(&uid)?;
    let versions = s.index.instance_versions(&uid).await?;
    let latest = versions.first().cloned().ok_or(ApiError::NotFound("instance"))?;
    Ok(Json(json!({ "instance": latest, "versions": versions })))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<i64>,
}

pub async fn instance_file(
    State(s): S,
    Path(uid): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    check_uid(&uid)?;
    let versions = s.index.instance_versions(&uid).await?;
    let row = match q.version {
        Some(v) => versions.into_iter().find(|r| r.version == v),
        None => versions.into_iter().next(),
    }
    .ok_or(ApiError::NotFound("instance"))?;
    let path = s.archive.path_of(&row.path);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening {}: {e}", path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom"));
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{uid}.dcm\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", row.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Stream the whole study as a zip, produced on a blocking thread and sent
/// through a small bounded channel: memory stays flat whatever the study size.
pub async fn study_zip(State(s): S, Path(uid): Path<String>) -> Result<Response, ApiError> {
    check_uid(&uid)?;
    s.index.study(&uid).await?.ok_or(ApiError::NotFound("study"))?;
    let rows = s.index.instances_of_study(&uid).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let archive = s.archive.clone();
    tokio::task::spawn_blocking(move || write_zip(&archive, &rows, &tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"study-{uid}.zip\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

fn write_zip(
    archive: &crate::archive::files::Archive,
    rows: &[InstanceRow],
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let send = |b: Vec<u8>| tx.blocking_send(Ok(Bytes::from(b))).is_ok();
    let mut z = ZipStream::new();
    for r in rows {
        let name = format!("{}/{}.dcm", r.series_uid, r.sop_instance_uid);
        let mut f = match std::fs::File::open(archive.path_of(&r.path)) {
            Ok(f) => f,
            Err(e) => {
                // Abort the body: a truncated zip is detectable, a silently
                // incomplete one is not.
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if !send(z.start(&name)) {
            return;
        }
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    z.data(&buf[..n]);
                    if !send(buf[..n].to_vec()) {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !send(z.end()) {
            return;
        }
    }
    send(z.finish());
}
