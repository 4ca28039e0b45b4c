//! Image endpoints: thumbnails, previews, cine strips, on-demand renders and
//! the study key-image strip. Rendering is CPU-bound: it runs on blocking
//! threads, at most one per core at a time (`Services::render_slots`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::uid::{self, Uid};
use crate::archive::index::InstanceRow;
use crate::http::Services;
use crate::imaging::render::{self, Format, Image8, RenderParams};
use crate::reading::access::Caller;

type S = State<Arc<Services>>;

async fn latest(s: &Services, uid: &str) -> Result<InstanceRow, ApiError> {
    uid::check(uid)?;
    s.index
        .instance_versions(uid)
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("instance"))
}

/// 304 when the client already has this representation.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn image_response(bytes: Vec<u8>, content_type: &'static str, etag: &str, status: &str) -> Response {
    let mut resp = Body::from(bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate each time: cheap (304) on a slow link, and correct when a
    // new version of the instance arrives.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(status) {
        h.insert("x-preview-status", v);
    }
    resp
}

fn cached(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Run a render on a blocking thread, bounded by the render slots.
async fn rendered<T: Send + 'static>(
    s: &Services,
    f: impl FnOnce() -> Result<T, crate::imaging::decode::DecodeError> + Send + 'static,
) -> Result<Result<T, crate::imaging::decode::DecodeError>, ApiError> {
    let _slot = s
        .render_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("render slots closed".into()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("render task: {e}")))
}

fn placeholder_jpeg(side: u32) -> Vec<u8> {
    render::encode(&render::placeholder(side), Format::Jpeg, 70).unwrap_or_default()
}

/// Serve a stored preview file (`kind`: thumb, preview, mid, cine); render it
/// now if the worker has not got to it yet; a placeholder if there is none.
pub(crate) async fn stored_image(
    s: &Services,
    uid: &str,
    kind: &'static str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let row = latest(s, uid).await?;
    let etag = format!("\"{}-{kind}\"", row.sha256);
    if row.preview_status.starts_with("no preview") {
        let side = if kind == "thumb" { render::THUMB_SIDE } else { 512 };
        return Ok(image_response(
            placeholder_jpeg(side),
            "image/jpeg",
            &format!("\"none-{kind}\""),
            &row.preview_status,
        ));
    }
    if not_modified(headers, &etag) {
        return Ok(cached(&etag));
    }
    let (archive, rel) = (s.archive.clone(), row.path.clone());
    let stored = tokio::task::spawn_blocking(move || archive.derived(&rel, kind))
        .await
        .map_err(|e| ApiError::Internal(format!("preview read: {e}")))?;
    if let Ok(Some(bytes)) = stored {
        return Ok(image_response(bytes, "image/jpeg", &etag, &row.preview_status));
    }
    if matches!(kind, "mid" | "cine") && row.frames.unwrap_or(1) <= 1 {
        return Err(ApiError::NotFound("multi-frame preview (single-frame instance)"));
    }
    if kind == "cine" {
        return Err(ApiError::NotFound("cine strip not rendered yet"));
    }
    // Pending (or files lost): render this one now rather than make the reader wait.
    let file = s.archive.input(&row.path);
    let frames = row.frames.unwrap_or(1).max(1) as u32;
    let (frame, side) = match kind {
        "thumb" => (0, render::THUMB_SIDE),
        "mid" => (frames / 2, render::PREVIEW_SIDE),
        _ => (0, render::PREVIEW_SIDE),
    };
    let r = rendered(s, move || {
        let img = render::render_any(
            &file,
            &RenderParams {
                window: None,
                frame,
                max_side: side,
            },
        )?;
        render::encode(&img, Format::Jpeg, 85)
    })
    .await?;
    Ok(match r {
        Ok(bytes) => image_response(bytes, "image/jpeg", &etag, "pending"),
        Err(e) => image_response(
            placeholder_jpeg(side),
            "image/jpeg",
            "\"none\"",
            &format!("no preview: {e}"),
        ),
    })
}

pub async fn thumbnail(State(s): S, c: Caller, Uid(uid): Uid, headers: HeaderMap) -> Result<Response, ApiError> {
    super::api::check_instance(&s, &c, &uid).await?;
    stored_image(&s, &uid, "thumb", &headers).await
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    /// "first" (default) or "middle".
    frame: Option<String>,
}

pub async fn preview(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    Query(q): Query<PreviewQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::api::check_instance(&s, &c, &uid).await?;
    let kind = match q.frame.as_deref() {
        None | Some("first") => "preview",
        Some("middle") => "mid",
        Some(other) => return Err(ApiError::BadRequest(format!("frame={other:?}: use first or middle"))),
    };
    stored_image(&s, &uid, kind, &headers).await
}

pub async fn cine(State(s): S, c: Caller, Uid(uid): Uid, headers: HeaderMap) -> Result<Response, ApiError> {
    super::api::check_instance(&s, &c, &uid).await?;
    stored_image(&s, &uid, "cine", &headers).await
}

#[derive(Deserialize, Debug)]
pub struct RenderedQuery {
    window_center: Option<f64>,
    window_width: Option<f64>,
    frame: Option<u32>,
    /// Long side in pixels; 0 or absent = full size.
    size: Option<u32>,
    format: Option<Format>,
    quality: Option<u8>,
}

/// On-demand render with explicit parameters (full fidelity, any window).
pub async fn rendered_image(
    State(s): S,
    c: Caller,
    Uid(uid): Uid,
    Query(q): Query<RenderedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::api::check_instance(&s, &c, &uid).await?;
    let row = latest(&s, &uid).await?;
    let window = match (q.window_center, q.window_width) {
        (Some(c), Some(w)) if w > 0.0 && c.is_finite() && w.is_finite() => Some((c, w)),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "window_center and window_width go together; width > 0".into(),
            ));
        }
    };
    let frame = q.frame.unwrap_or(0);
    let format = q.format.unwrap_or_default();
    let quality = q.quality.unwrap_or(90).clamp(1, 100);
    let size = q.size.unwrap_or(0).min(16384);
    render_row(&s, &row, window, frame, size, format, quality, &headers).await
}

/// Renders frame `frame` of the instance version `row` with `window` (None:
/// the dataset's), bounded by `size` (0: full size), on the render slots;
/// 304 when the client has it (ETag). Shared with DICOMweb `rendered`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn render_row(
    s: &Services,
    row: &InstanceRow,
    window: Option<(f64, f64)>,
    frame: u32,
    size: u32,
    format: Format,
    quality: u8,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let frames = row.frames.unwrap_or(1).max(1) as u32;
    if frame >= frames {
        return Err(ApiError::BadRequest(format!(
            "frame {frame}: the instance has {frames}"
        )));
    }
    let etag = format!(
        "\"{}-r-{:?}-{frame}-{size}-{format:?}-{quality}\"",
        row.sha256,
        window.map(|(c, w)| (c.to_bits(), w.to_bits()))
    )
    .replace([' ', '(', ')', ','], "");
    if not_modified(headers, &etag) {
        return Ok(cached(&etag));
    }
    let file = s.archive.input(&row.path);
    let r = rendered(s, move || {
        let img = render::render_any(
            &file,
            &RenderParams {
                window,
                frame,
                max_side: size,
            },
        )?;
        render::encode(&img, format, quality)
    })
    .await?;
    match r {
        Ok(bytes) => {
            let ct = if format == Format::Png {
                "image/png"
            } else {
                "image/jpeg"
            };
            Ok(image_response(bytes, ct, &etag, &row.preview_status))
        }
        Err(e) => Err(ApiError::Unprocessable(format!("no preview: {e}"))),
    }
}

/// One thumbnail per series (its middle instance), side by side: what a
/// reader on a slow link sees first.
pub async fn key_images(State(s): S, c: Caller, Uid(uid): Uid, headers: HeaderMap) -> Result<Response, ApiError> {
    super::api::study_for(&s, &c, &uid).await?;
    let mut picks = Vec::new();
    for series in s.index.series_of(&uid).await?.into_iter().take(24) {
        let inst = s.index.instances_of_series(&series.series_uid).await?;
        if let Some(mid) = inst.get(inst.len() / 2) {
            picks.push(mid.clone());
        }
    }
    if picks.is_empty() {
        return Err(ApiError::NotFound("instances"));
    }
    let etag = format!(
        "\"k-{}\"",
        picks
            .iter()
            .map(|p| format!("{}{}", &p.sha256[..8], p.preview_status.len()))
            .collect::<String>()
    );
    if not_modified(&headers, &etag) {
        return Ok(cached(&etag));
    }
    let archive = s.archive.clone();
    let r = rendered(&s, move || {
        let thumbs: Vec<Image8> = picks
            .iter()
            .map(|p| {
                let stored = archive.derived(&p.path, "thumb").ok().flatten();
                stored
                    .and_then(|b| image::load_from_memory(&b).ok())
                    .map(|i| {
                        let rgb = i.to_rgb8();
                        Image8 {
                            width: rgb.width(),
                            height: rgb.height(),
                            channels: 3,
                            data: rgb.into_raw(),
                        }
                    })
                    .or_else(|| {
                        let params = RenderParams {
                            window: None,
                            frame: 0,
                            max_side: render::THUMB_SIDE,
                        };
                        render::render_any(&archive.input(&p.path), &params).ok()
                    })
                    .unwrap_or_else(|| render::placeholder(render::THUMB_SIDE))
            })
            .collect();
        let strip = render::strip(&thumbs, render::THUMB_SIDE)
            .ok_or_else(|| crate::imaging::decode::DecodeError::Io("empty strip".into()))?;
        render::encode(&strip, Format::Jpeg, 80)
    })
    .await?;
    match r {
        Ok(bytes) => Ok(image_response(bytes, "image/jpeg", &etag, "ok")),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}
