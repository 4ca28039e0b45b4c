//! WADO-RS frames (PS3.18 §10.4.1.1.4: `…/instances/{sop}/frames/{list}`),
//! the bulk data that metadata points at, and the rendered resources (`…/rendered`, `…/thumbnail`, which reuse
//! the API's image code).
//!
//! Frames go as stored, like instances: native pixel data as
//! `application/octet-stream` (little-endian samples, i.e. Explicit VR
//! Little Endian, whatever the stored byte order), compressed frames as
//! their compressed bytes, each part typed with its media type and
//! `transfer-syntax` (`image/jpeg`, `image/jls`, `image/jp2`, …, or
//! `application/octet-stream; transfer-syntax=…` when the client asked for
//! octet-stream with `transfer-syntax=*`, as OHIF does). Decompressing to
//! serve a client without a decoder is not done (406).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::accept;
use super::{
    S, Sender, WebCaller, WebError, accept_of, check_uids, instance_row, new_boundary, spawn_body, study_in_scope,
};
use crate::http::error::ApiError;
use crate::imaging::decode::{self, DecodeError};

/// Most frames one request may list.
const MAX_FRAMES: usize = 1000;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// The media type of a compressed frame in `transfer_syntax` (PS3.18
/// table 8.7.3-2); octet-stream for those without one.
fn frame_media_type(ts: &str) -> &'static str {
    match ts {
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => {
            "image/jpeg"
        }
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => "image/jphc",
        "1.2.840.10008.1.2.5" => "image/x-dicom-rle",
        _ => "application/octet-stream",
    }
}

/// Frame numbers of a `{list}` (1-based, comma-separated), bounded.
fn frame_list(list: &str) -> Result<Vec<u32>, WebError> {
    let bad = || {
        WebError::Api(ApiError::BadRequest(
            "frame list: 1-based numbers separated by commas".into(),
        ))
    };
    let nums: Vec<u32> = list
        .split(',')
        .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n >= 1))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if nums.is_empty() || nums.len() > MAX_FRAMES {
        return Err(bad());
    }
    Ok(nums)
}

/// The part media type to send for frames of `ts` given `accept`, or why not.
fn negotiate(accept_hdr: Option<&str>, ts: &str, encapsulated: bool) -> Result<String, WebError> {
    let media = frame_media_type(ts);
    let no = || {
        WebError::NotAcceptable(format!(
            "frames are sent as stored ({}; transfer syntax {ts}): ask for it, or for transfer-syntax=*",
            if encapsulated {
                media
            } else {
                "application/octet-stream"
            }
        ))
    };
    let Some(a) = accept_hdr.filter(|a| !a.trim().is_empty()) else {
        return Ok(if encapsulated {
            media
        } else {
            "application/octet-stream"
        }
        .to_string());
    };
    for r in accept::parse(a) {
        let part = match r.media_type.as_str() {
            "*/*" | "multipart/*" => r.param("type").unwrap_or("*/*").to_ascii_lowercase(),
            "multipart/related" => r
                .param("type")
                .unwrap_or("application/octet-stream")
                .to_ascii_lowercase(),
            _ => continue,
        };
        let any_ts = r.param("transfer-syntax") == Some("*");
        let ts_ok = |native_default: bool| match r.param("transfer-syntax") {
            None => native_default,
            Some("*") => true,
            Some(t) => t == ts || (!encapsulated && t == EXPLICIT_LE),
        };
        if !encapsulated && (part == "application/octet-stream" || part == "*/*") && ts_ok(true) {
            return Ok("application/octet-stream".into());
        }
        if encapsulated {
            if (part == media || part == "*/*") && ts_ok(true) {
                return Ok(media.into());
            }
            if part == "application/octet-stream" && (any_ts || r.param("transfer-syntax") == Some(ts)) {
                return Ok("application/octet-stream".into());
            }
        }
    }
    Err(no())
}

pub(super) async fn frames(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    let nums = frame_list(&list)?;
    study_in_scope(&s, &c, &study).await?;
    let row = instance_row(&s, &study, &series, &sop).await?;
    send_frames(&s, &h, &row, Some(nums)).await
}

/// The bulk data a metadata `BulkDataURI` points at:
/// `…/bulkdata/7FE00010` is the Pixel Data (every frame, as `frames`
/// sends them); any other path (`TAG` or `SEQ/ITEM/TAG…`) is that binary
/// value's bytes (little endian), one `application/octet-stream` part.
pub(super) async fn bulkdata(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop, path)): Path<(String, String, String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    let steps = bulk_path(&path)?;
    study_in_scope(&s, &c, &study).await?;
    let row = instance_row(&s, &study, &series, &sop).await?;
    if steps == [BulkStep::Tag(dicom_core::Tag(0x7FE0, 0x0010))] {
        return send_frames(&s, &h, &row, None).await;
    }
    let a = accept_of(&h);
    if !accept::accepts(a.as_deref(), "multipart/related") {
        return Err(WebError::NotAcceptable(
            "bulk data is sent as multipart/related; type=\"application/octet-stream\"".into(),
        ));
    }
    let input = s.archive.input(&row.path);
    let bytes = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        let obj = decode::read_object(&input, Some(dicom_core::Tag(0x7FE0, 0x0010))).map_err(|e| e.to_string())?;
        Ok(bulk_value(&obj, &steps))
    })
    .await
    .map_err(|e| WebError::Api(ApiError::Internal(e.to_string())))?
    .map_err(|e| WebError::Api(ApiError::Unprocessable(e)))?
    .ok_or(ApiError::NotFound("bulk data"))?;
    let boundary = new_boundary();
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut resp = Body::from(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "multipart/related; type=\"application/octet-stream\"; boundary={boundary}"
    )) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// One step of a bulk data path (as `json` writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkStep {
    Tag(dicom_core::Tag),
    Item(usize),
}

/// `TAG` or `SEQ/ITEM/…/TAG` (tags as 8 hex digits), bounded.
fn bulk_path(path: &str) -> Result<Vec<BulkStep>, WebError> {
    let bad = || WebError::Api(ApiError::BadRequest("bulk data path: TAG or SEQ/ITEM/TAG".into()));
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len().is_multiple_of(2) || parts.len() > 2 * 8 + 1 {
        return Err(bad());
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i.is_multiple_of(2) {
                if p.len() != 8 {
                    return Err(bad());
                }
                let v = u32::from_str_radix(p, 16).map_err(|_| bad())?;
                Ok(BulkStep::Tag(dicom_core::Tag((v >> 16) as u16, v as u16)))
            } else {
                p.parse::<usize>().map(BulkStep::Item).map_err(|_| bad())
            }
        })
        .collect()
}

/// The binary value at `steps` in `obj`, None when there is none.
fn bulk_value(obj: &dicom_object::InMemDicomObject, steps: &[BulkStep]) -> Option<Vec<u8>> {
    use dicom_core::value::Value;
    let (BulkStep::Tag(tag), rest) = steps.split_first()? else {
        return None;
    };
    let e = obj.element(*tag).ok()?;
    match (e.value(), rest) {
        (Value::Primitive(p), []) => Some(p.to_bytes().into_owned()),
        (Value::Sequence(seq), [BulkStep::Item(i), more @ ..]) => bulk_value(seq.items().get(*i)?, more),
        _ => None,
    }
}

/// Frames `nums` (1-based; None: all) of the instance version `row`, as
/// stored (see the module docs).
async fn send_frames(
    s: &Arc<crate::http::Services>,
    h: &HeaderMap,
    row: &crate::archive::index::InstanceRow,
    nums: Option<Vec<u32>>,
) -> Result<Response, WebError> {
    let input = s.archive.input(&row.path);
    let src = tokio::task::spawn_blocking(move || decode::open(&input))
        .await
        .map_err(|e| WebError::Api(ApiError::Internal(e.to_string())))?
        .map_err(|e| match e {
            DecodeError::NotAnImage(_) => WebError::Api(ApiError::NotFound("frames (the instance has no pixel data)")),
            DecodeError::Io(e) => WebError::Api(ApiError::Internal(e)),
            other => WebError::Api(ApiError::Unprocessable(other.to_string())),
        })?;
    let nums = nums.unwrap_or_else(|| (1..=src.info.frames).collect());
    if nums.iter().any(|n| *n > src.info.frames) {
        return Err(WebError::Api(ApiError::NotFound("frame")));
    }
    let ts = src.info.transfer_syntax.clone();
    let encapsulated = src.is_encapsulated();
    let media = negotiate(accept_of(h).as_deref(), &ts, encapsulated)?;
    let part_type = if encapsulated {
        format!("{media}; transfer-syntax={ts}")
    } else {
        format!("{media}; transfer-syntax={EXPLICIT_LE}")
    };
    let boundary = new_boundary();
    let (archive, path) = (s.archive.clone(), row.path.clone());
    let src = Arc::new(src);
    let b = boundary.clone();
    let body: Body = spawn_body(s, move |tx: Sender| async move {
        for n in nums {
            let (src, input) = (src.clone(), archive.input(&path));
            let bytes = match tokio::task::spawn_blocking(move || src.wire_frame(&input, n - 1)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return tx.fail(std::io::Error::other(e.to_string())),
                Err(e) => return tx.fail(std::io::Error::other(e)),
            };
            let head = format!(
                "--{b}\r\nContent-Type: {part_type}\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            );
            if !tx.send(head).await || !tx.send(bytes).await || !tx.send(&b"\r\n"[..]).await {
                return false;
            }
        }
        tx.send(format!("--{b}--\r\n")).await
    });
    let mut resp = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/related; type=\"{media}\"; boundary={boundary}")) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// `viewport`, `window` and `quality` of a rendered request (PS3.18
/// 8.3.5.1), the subset our renderer has: a window centre and width, a
/// bounding size, the JPEG quality.
#[derive(serde::Deserialize, Debug, Default)]
pub(super) struct RenderedQuery {
    window: Option<String>,
    viewport: Option<String>,
    quality: Option<u8>,
}

pub(super) async fn rendered(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
    Query(q): Query<RenderedQuery>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    study_in_scope(&s, &c, &study).await?;
    let row = instance_row(&s, &study, &series, &sop).await?;
    let window = match q.window.as_deref() {
        None => None,
        Some(w) => {
            let v: Vec<f64> = w.split(',').take(2).filter_map(|x| x.trim().parse().ok()).collect();
            match v[..] {
                [c, w] if w > 0.0 && c.is_finite() && w.is_finite() => Some((c, w)),
                _ => return Err(ApiError::BadRequest("window=center,width[,function]; width > 0".into()).into()),
            }
        }
    };
    let size = match q.viewport.as_deref() {
        None => 0,
        Some(v) => v
            .split(',')
            .take(2)
            .filter_map(|x| x.trim().parse::<u32>().ok())
            .max()
            .unwrap_or(0)
            .min(16384),
    };
    let png = accept::accepts(accept_of(&h).as_deref(), "image/png")
        && !accept::accepts(accept_of(&h).as_deref(), "image/jpeg");
    if !png && !accept::accepts(accept_of(&h).as_deref(), "image/jpeg") {
        return Err(WebError::NotAcceptable(
            "rendered images are image/jpeg or image/png".into(),
        ));
    }
    let format = if png {
        crate::imaging::render::Format::Png
    } else {
        crate::imaging::render::Format::Jpeg
    };
    let quality = q.quality.unwrap_or(90).clamp(1, 100);
    Ok(crate::http::images::render_row(&s, &row, window, 0, size, format, quality, &h).await?)
}

pub(super) async fn thumbnail(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series, &sop])?;
    study_in_scope(&s, &c, &study).await?;
    instance_row(&s, &study, &series, &sop).await?;
    Ok(crate::http::images::stored_image(&s, &sop, "thumb", &h).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &str = "1.2.840.10008.1.2.4.50";

    #[test]
    fn bulk_paths() {
        use dicom_core::Tag;
        assert_eq!(
            bulk_path("7FE00010").ok(),
            Some(vec![BulkStep::Tag(Tag(0x7FE0, 0x0010))])
        );
        assert_eq!(
            bulk_path("00540016/0/00181072").ok(),
            Some(vec![
                BulkStep::Tag(Tag(0x0054, 0x0016)),
                BulkStep::Item(0),
                BulkStep::Tag(Tag(0x0018, 0x1072))
            ])
        );
        for bad in ["", "7FE0", "00540016/0", "../x", "00540016/x/00181072", "zzzzzzzz"] {
            assert!(bulk_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frame_lists_are_one_based_and_bounded() {
        assert_eq!(frame_list("1,3, 2").ok(), Some(vec![1, 3, 2]));
        for bad in ["", "0", "1,,2", "a", "-1"] {
            assert!(frame_list(bad).is_err(), "{bad:?}");
        }
        let many = vec!["1"; MAX_FRAMES + 1].join(",");
        assert!(frame_list(&many).is_err());
    }

    #[test]
    fn frames_go_as_stored() {
        let n = |a: &str, ts: &str, enc: bool| negotiate(Some(a), ts, enc).ok();
        // Native: octet-stream, little endian.
        assert_eq!(
            negotiate(None, EXPLICIT_LE, false).ok().as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            n(
                "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
                EXPLICIT_LE,
                false
            )
            .as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            n(
                "multipart/related; type=application/octet-stream",
                "1.2.840.10008.1.2.2",
                false
            )
            .as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(n("multipart/related; type=\"image/jpeg\"", EXPLICIT_LE, false), None);
        // Compressed: as stored, with its media type or octet-stream with *.
        assert_eq!(negotiate(None, JPEG, true).ok().as_deref(), Some("image/jpeg"));
        assert_eq!(
            n("multipart/related; type=\"image/jpeg\"", JPEG, true).as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(
            n(
                "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
                JPEG,
                true
            )
            .as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            n("multipart/related; type=\"application/octet-stream\"", JPEG, true),
            None
        );
        assert_eq!(n("multipart/related; type=\"image/jp2\"", JPEG, true), None);
    }
}
