//! API handlers: health, metrics, study search and browse, downloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::error::{ApiError, Code};
use super::limits::ZipRefused;
use super::uid::{Uid, check as check_uid};
use super::zipstream::{ZipStream, instance_entry_name};
use crate::archive::files::Archive;
use crate::archive::index::{InstanceRow, StudyFilter, StudyRow};
use crate::http::Services;
use crate::reading::access::{Caller, Role};
use crate::reading::audit;

type S = State<Arc<Services>>;

/// The study if the caller's scope covers its clinic. Out of scope is "not
/// found", so UIDs of other clinics' studies cannot be probed.
pub async fn study_for(s: &Services, c: &Caller, uid: &str) -> Result<StudyRow, ApiError> {
    check_uid(uid)?;
    match s.index.study(uid).await? {
        Some(st) if c.sees(&st.clinic_id) => Ok(st),
        _ => Err(ApiError::NotFound("study")),
    }
}

pub async fn check_instance(s: &Services, c: &Caller, uid: &str) -> Result<(), ApiError> {
    check_uid(uid)?;
    match s.index.clinic_of_instance(uid).await? {
        Some(clinic) if c.sees(&clinic) => Ok(()),
        _ => Err(ApiError::NotFound("instance")),
    }
}

pub async fn check_series(s: &Services, c: &Caller, uid: &str) -> Result<(), ApiError> {
    check_uid(uid)?;
    match s.index.clinic_of_series(uid).await? {
        Some(clinic) if c.sees(&clinic) => Ok(()),
        _ => Err(ApiError::NotFound("series")),
    }
}

/// Liveness for load balancers and monitors: only `status` for anonymous
/// callers (no version, role, AE title or disk figures for a scanner to
/// collect); the details for admins and on the metrics listener.
pub async fn health(State(s): S, c: Result<Caller, ApiError>) -> Json<serde_json::Value> {
    let details = c.is_ok_and(|c| c.is(Role::Admin));
    health_json(&s, details).await
}

pub async fn health_json(s: &Services, details: bool) -> Json<serde_json::Value> {
    let db_ok = s.index.ping().await;
    let status = if db_ok { "ok" } else { "degraded" };
    if !details {
        return Json(json!({ "status": status }));
    }
    Json(json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "role": s.cfg.role,
        "ae_title": s.cfg.dicom.ae_title,
        "database": db_ok,
        "free_bytes": s.archive.free_bytes().ok(),
    }))
}

/// Prometheus text; served on the metrics listener only (see `http::serve_metrics`).
pub async fn metrics(State(s): S) -> Response {
    let depth = s.index.worklist_depth().await.unwrap_or(-1);
    let free = s.archive.free_bytes().map(|v| v as i64).unwrap_or(-1);
    let d = crate::reading::delivery::counts(s.index.pool()).await.ok();
    let text = s.metrics.render(&[
        ("medrelay_worklist_depth", "Complete studies waiting to be read", depth),
        (
            "medrelay_sr_deliveries_pending",
            "Signed reports waiting for their first C-STORE to the clinic PACS",
            d.as_ref().map_or(-1, |d| d.pending),
        ),
        (
            "medrelay_sr_deliveries_failing",
            "Signed reports whose C-STORE failed and is being retried",
            d.as_ref().map_or(-1, |d| d.failing),
        ),
        (
            "medrelay_sr_deliveries_sent",
            "Signed reports acknowledged by the clinic PACS",
            d.as_ref().map_or(-1, |d| d.sent),
        ),
        (
            "medrelay_archive_free_bytes",
            "Free bytes on the archive filesystem",
            free,
        ),
    ]);
    let mut text = text;
    super::consult::render_metrics(&s.sfu.metrics, &mut text);
    super::relay::render_metrics(&s, &mut text).await;
    s.limits.render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn studies(
    State(s): S,
    c: Caller,
    Query(mut f): Query<StudyFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    f.clinics = c.scope.clinics().map(<[String]>::to_vec);
    for d in [&f.date_from, &f.date_to].into_iter().flatten() {
        let digits = d.replace('-', "");
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!("date {d:?}: use YYYYMMDD or YYYY-MM-DD")));
        }
    }
    let (rows, total) = s.index.search_studies(&f).await?;
    Ok(Json(
        json!({ "total": total.n, "total_exact": total.exact, "offset": f.offset.unwrap_or(0), "studies": rows }),
    ))
}

pub async fn study(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    let st = study_for(&s, &c, &uid).await?;
    let series = s.index.series_of(&uid).await?;
    let worklist = crate::reading::reports::worklist_entry(s.index.pool(), &uid)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let report = crate::reading::reports::latest(s.index.pool(), &uid, c.is(crate::reading::access::Role::Expert))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    audit::record(s.index.pool(), &c, "view", Some(&uid), None).await;
    Ok(Json(
        json!({ "study": st, "series": series, "worklist": worklist, "report": report }),
    ))
}

pub async fn study_series(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    study_for(&s, &c, &uid).await?;
    Ok(Json(json!({ "series": s.index.series_of(&uid).await? })))
}

pub async fn study_instances(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    study_for(&s, &c, &uid).await?;
    Ok(Json(json!({ "instances": s.index.instances_of_study(&uid).await? })))
}

pub async fn series_instances(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    check_series(&s, &c, &uid).await?;
    let rows = s.index.instances_of_series(&uid).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("series"));
    }
    Ok(Json(json!({ "instances": rows })))
}

pub async fn instance(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    check_instance(&s, &c, &uid).await?;
    let versions = s.index.instance_versions(&uid).await?;
    let latest = versions.first().cloned().ok_or(ApiError::NotFound("instance"))?;
    // Display attributes are best effort: an unparsable header still lists the instance.
    let display = tags_of(&s, &uid)
        .await
        .map(|(_, d)| d)
        .unwrap_or(serde_json::Value::Null);
    Ok(Json(
        json!({ "instance": latest, "versions": versions, "display": display }),
    ))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<i64>,
}

pub async fn instance_file(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    check_instance(&s, &c, &uid).await?;
    let versions = s.index.instance_versions(&uid).await?;
    let row = match q.version {
        Some(v) => versions.into_iter().find(|r| r.version == v),
        None => versions.into_iter().next(),
    }
    .ok_or(ApiError::NotFound("instance"))?;
    audit::record(
        s.index.pool(),
        &c,
        "download",
        Some(&row.study_uid),
        Some(&format!("instance {uid}")),
    )
    .await;
    let len = stored_size(&s.archive, &row.path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening instance {uid}: {e}")))?;
    let body = Body::from_stream(instance_chunks(s.archive.clone(), row.path.clone(), len));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{uid}.dcm\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", row.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Size of a stored instance, read on a blocking thread.
pub(crate) async fn stored_size(archive: &Archive, rel: &str) -> std::io::Result<u64> {
    let (archive, rel) = (archive.clone(), rel.to_string());
    tokio::task::spawn_blocking(move || archive.size(&rel))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A stored instance of `len` bytes as ranged reads of `ZIP_CHUNK`, each on
/// a blocking thread and only when the consumer asks for it: memory is one
/// chunk whatever the instance's size, and no thread waits on a slow client.
/// An instance shorter than its size ends the stream in an error (a
/// truncated download is detectable, a silently short one is not).
pub(crate) fn instance_chunks(
    archive: Archive,
    rel: String,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold(0u64, move |at| {
        let (archive, rel) = (archive.clone(), rel.clone());
        async move {
            if at >= len {
                return Ok(None);
            }
            let end = (at + ZIP_CHUNK as u64).min(len);
            let bytes = tokio::task::spawn_blocking(move || archive.read_range(&rel, at..end, len))
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if bytes.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stored instance shorter than its size",
                ));
            }
            let next = at + bytes.len() as u64;
            Ok(Some((Bytes::from(bytes), next)))
        }
    })
}

/// Stream the whole study as a zip. Bounded: at most `http.max_zip_downloads`
/// at once and `max_zip_downloads_per_account` per account (beyond: 503 or
/// 429 with Retry-After). The zip is produced by a task that reads the files
/// with async I/O and hands chunks over a small channel; it holds no thread
/// while the client is slow, and a client that takes no chunk for
/// `http.write_timeout_secs` loses the download (and the connection, by the
/// connection's write timeout), which frees its slot.
pub async fn study_zip(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Response, ApiError> {
    study_for(&s, &c, &uid).await?;
    let slot = s.zip_slots.try_acquire(&c.user.username).map_err(|r| {
        s.limits.zip_refused.fetch_add(1, Ordering::Relaxed);
        match r {
            ZipRefused::Account => {
                ApiError::Limited("your other study downloads are still running", 30).code(Code::DOWNLOADS_LIMITED)
            }
            ZipRefused::Global => ApiError::Busy("too many study downloads at once", 30).code(Code::DOWNLOADS_BUSY),
        }
    })?;
    audit::record(s.index.pool(), &c, "download", Some(&uid), Some("study zip")).await;
    let rows = s.index.instances_of_study(&uid).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let archive = s.archive.clone();
    let limits = s.limits.clone();
    let stall = Duration::from_secs(s.cfg.http.write_timeout_secs);
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    tokio::spawn(async move {
        let _slot = slot;
        if write_zip(&archive, &rows, &tx, stall, &limits).await {
            finished.store(true, Ordering::Release);
        }
    });
    // A producer that stopped early (file error, stalled client) must not
    // look like a complete zip: the body then ends with an error, which
    // aborts the response instead of closing it cleanly.
    let stream = futures::stream::unfold((rx, done), |(mut rx, done)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, done))),
            None if done.load(Ordering::Acquire) => None,
            None => {
                done.store(true, Ordering::Release);
                Some((Err(std::io::Error::other("study zip aborted")), (rx, done)))
            }
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"study-{uid}.zip\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Chunk size of a study zip; with the channel's 4 slots, at most ~1 MiB
/// waits for a slow client.
const ZIP_CHUNK: usize = 256 * 1024;

/// Writes the zip into `tx`; true when all of it was handed over.
async fn write_zip(
    archive: &Archive,
    rows: &[InstanceRow],
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    stall: Duration,
    limits: &crate::http::limits::LimitCounters,
) -> bool {
    use tokio::sync::mpsc::error::SendTimeoutError;
    // The connection's own write timeout and this stall race to cut a
    // client that stopped reading (same limit); whichever wins counts it.
    // `Closed` means the connection already went (and counted itself).
    let send = |b: Vec<u8>| async move {
        match tx.send_timeout(Ok(Bytes::from(b)), stall).await {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(_)) => {
                limits.write_timeouts.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(SendTimeoutError::Closed(_)) => false,
        }
    };
    let fail = |e: std::io::Error| {
        // Best effort: the stream also ends in an error when this cannot be queued.
        let _ = tx.try_send(Err(e));
        false
    };
    let mut z = ZipStream::new();
    let mut series_no: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let next = series_no.len();
        let n = *series_no.entry(r.series_uid.as_str()).or_insert(next);
        let name = instance_entry_name(&r.series_uid, &r.sop_instance_uid, n, i);
        // Abort the body on errors: a truncated zip is detectable, a
        // silently incomplete one is not.
        let len = match stored_size(archive, &r.path).await {
            Ok(l) => l,
            Err(e) => return fail(e),
        };
        let chunks = instance_chunks(archive.clone(), r.path.clone(), len);
        let mut chunks = std::pin::pin!(chunks);
        let header = match z.start(&name) {
            Ok(h) => h,
            Err(e) => return fail(std::io::Error::other(e)),
        };
        if !send(header).await {
            return false;
        }
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            match chunk {
                Ok(b) => {
                    z.data(&b);
                    if !send(b.to_vec()).await {
                        return false;
                    }
                }
                Err(e) => return fail(e),
            }
        }
        if !send(z.end()).await {
            return false;
        }
    }
    send(z.finish()).await
}

/// Dataset attributes for the tag panel and the viewer (window presets,
/// pixel spacing), read from the stored file up to the pixel data.
fn read_tags(path: &dyn crate::imaging::decode::Input) -> Result<(Vec<serde_json::Value>, serde_json::Value), String> {
    use crate::imaging::decode::DecodeError as D;
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_core::value::Value;
    use dicom_dictionary_std::{StandardDataDictionary, tags};
    let obj = crate::imaging::decode::read_object(path, Some(tags::PIXEL_DATA)).map_err(|e| match e {
        D::Corrupt(m) | D::Io(m) | D::NotAnImage(m) | D::Unsupported(m) => format!("cannot parse: {m}"),
    })?;
    let mut out = Vec::new();
    let mut meta = Vec::new();
    let m = obj.meta();
    for (tag, name, v) in [
        ("0002,0010", "TransferSyntaxUID", m.transfer_syntax()),
        ("0002,0002", "MediaStorageSOPClassUID", m.media_storage_sop_class_uid()),
    ] {
        meta.push(json!({ "tag": tag, "vr": "UI", "name": name, "value": v.trim_end_matches('\0') }));
    }
    out.extend(meta);
    for e in obj.iter() {
        let tag = e.header().tag;
        let name = StandardDataDictionary
            .by_tag(tag)
            .map(|d| d.alias().to_string())
            .unwrap_or_else(|| {
                if tag.group() % 2 == 1 {
                    "(private)".into()
                } else {
                    "(unknown)".into()
                }
            });
        let value = match e.value() {
            Value::Primitive(p) => {
                let s = p.to_str();
                let mut s = s.trim_end_matches(['\0', ' ']).to_string();
                if s.len() > 256 {
                    s.truncate(
                        s.char_indices()
                            .take_while(|(i, _)| *i < 256)
                            .last()
                            .map(|(i, c)| i + c.len_utf8())
                            .unwrap_or(0),
                    );
                    s.push('…');
                }
                s
            }
            Value::Sequence(seq) => format!("[{} items]", seq.items().len()),
            Value::PixelSequence(_) => "[pixel data]".into(),
        };
        out.push(json!({
            "tag": format!("{:04X},{:04X}", tag.group(), tag.element()),
            "vr": e.vr().to_string(),
            "name": name,
            "value": value,
        }));
    }
    let floats = |t| -> Vec<f64> {
        obj.element(t)
            .ok()
            .and_then(|e| e.to_multi_float64().ok())
            .unwrap_or_default()
    };
    let text = |t| -> String {
        obj.element(t)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let spacing = {
        let p = floats(tags::PIXEL_SPACING);
        if p.len() >= 2 {
            p
        } else {
            floats(tags::IMAGER_PIXEL_SPACING)
        }
    };
    let display = json!({
        "window_center": floats(tags::WINDOW_CENTER),
        "window_width": floats(tags::WINDOW_WIDTH),
        "window_explanation": text(tags::WINDOW_CENTER_WIDTH_EXPLANATION),
        "pixel_spacing": spacing,
        "slice_thickness": floats(tags::SLICE_THICKNESS).first(),
        "slice_location": floats(tags::SLICE_LOCATION).first(),
        "rescale_slope": floats(tags::RESCALE_SLOPE).first(),
        "rescale_intercept": floats(tags::RESCALE_INTERCEPT).first(),
        "modality": text(tags::MODALITY),
        "photometric": text(tags::PHOTOMETRIC_INTERPRETATION),
        "image_position": floats(tags::IMAGE_POSITION_PATIENT),
    });
    Ok((out, display))
}

async fn tags_of(s: &Services, uid: &str) -> Result<(Vec<serde_json::Value>, serde_json::Value), ApiError> {
    let row = s
        .index
        .instance_versions(uid)
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("instance"))?;
    let path = s.archive.input(&row.path);
    tokio::task::spawn_blocking(move || read_tags(&path))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Unprocessable)
}

pub async fn instance_tags(State(s): S, c: Caller, Uid(uid): Uid) -> Result<Json<serde_json::Value>, ApiError> {
    check_instance(&s, &c, &uid).await?;
    let (tags, _) = tags_of(&s, &uid).await?;
    Ok(Json(json!({ "tags": tags })))
}
