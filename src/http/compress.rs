//! gzip for text responses (JSON, JS, CSS, HTML, CSV) when the browser
//! accepts it. On a 2 Mbit/s clinic link a 300-image instance list or the
//! viewer's modules shrink by 5-10x, which is most of the time to the first
//! image. Images and DICOM files are already compressed or streamed and
//! pass through untouched.
//!
//! Responses that carry the session's CSRF token (`/api/login`, `/api/me`)
//! are never compressed: compressing a secret next to attacker-influenced
//! content in one TLS response is what BREACH exploits.

use std::io::Write;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// Larger text bodies are exceptional (an audit export); they are sent as they are.
const MAX_BUFFER: usize = 32 << 20;
const MIN_SIZE: usize = 1024;

fn compressible(ctype: &str) -> bool {
    ctype.starts_with("application/json") || ctype.starts_with("text/") || ctype.starts_with("application/javascript")
}

pub async fn gzip(req: Request, next: Next) -> Response {
    let accepts = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
    let path = req.uri().path();
    let secret = path == "/api/login" || path == "/api/me";
    let resp = next.run(req).await;
    if !accepts || secret || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !compressible(ctype) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BUFFER).await {
        Ok(b) => b,
        // Too large or failed mid-way: the status is already decided, so
        // answer with an empty body rather than pretend.
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    if bytes.len() < MIN_SIZE {
        return Response::from_parts(parts, Body::from(bytes));
    }
    // A few hundred KB take milliseconds: off the async runtime beyond that.
    let gz = if bytes.len() > 128 * 1024 {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || deflate(&b)).await.ok().flatten()
    } else {
        deflate(&bytes)
    };
    let Some(gz) = gz else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Response::from_parts(parts, Body::from(gz))
}

fn deflate(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::new(5));
    enc.write_all(bytes).ok()?;
    enc.finish().ok()
}
