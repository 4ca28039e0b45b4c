//! STOW-RS (PS3.18 10.5): `POST /dicom-web/studies` and
//! `POST /dicom-web/studies/{study}` with a `multipart/related;
//! type="application/dicom"` body of Part 10 files.
//!
//! Each part goes through the C-STORE pipeline ([`crate::dicom::scp::Ingest`]):
//! its file meta is read from the first bytes (bounded, in memory), the
//! dataset is streamed to the blocking writer as it arrives (the body is
//! parsed incrementally, never held whole), validated against its SOP
//! class, made durable and indexed under the caller's clinic with the same
//! conflict and ownership rules. The response goes out only when every
//! stored instance is durable, like a C-STORE-RSP.
//!
//! The clinic comes from the caller, never from the request: a `clinic:ID`
//! token or a clinic doctor's account; anyone else may read but not store
//! (403), as a hospital's AE may query but not C-STORE.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value as Json, json};
use tracing::{debug, info};

use super::{WebCaller, WebError, check_uids};
use crate::archive::index::StoreOutcome;
use crate::dicom::meta::is_valid_uid;
use crate::dicom::scp::{ClinicRoute, IngestRequest, Ingesting, StoreFailure, count_outcome};
use crate::dicom::sop_classes::STORAGE_SOP_CLASSES;
use crate::http::Services;
use crate::http::error::ApiError;
use crate::reading::audit::Actor;

/// File meta groups are a few hundred bytes; a larger one is refused
/// rather than buffered.
const MAX_META: usize = 64 * 1024;
/// A part's headers (Content-Type, Content-Length, …).
const MAX_PART_HEADERS: usize = 16 * 1024;
/// Instances whose dataset is complete and which wait for durability and
/// the index while the next part arrives.
const FINISHING: usize = 4;
/// Coalesce small body frames before handing them to the writer thread.
const CHUNK: usize = 256 * 1024;

// ---------------------------------------------------------------- handlers

// The caller is taken as a Result: a request refused for its credentials
// (no session, no CSRF header, a revoked token) still has its small body
// read before the answer, or the client, busy sending it, would see the
// connection reset instead of the 401 or 403.

pub(super) async fn store(
    State(s): State<Arc<Services>>,
    c: Result<WebCaller, WebError>,
    req: Request,
) -> Result<Response, WebError> {
    let (c, req) = refused_early(&s, c, Ok(()), req).await?;
    run(&s, &c, None, req).await
}

pub(super) async fn store_study(
    State(s): State<Arc<Services>>,
    c: Result<WebCaller, WebError>,
    Path(study): Path<String>,
    req: Request,
) -> Result<Response, WebError> {
    let (c, req) = refused_early(&s, c, check_uids(&[&study]), req).await?;
    run(&s, &c, Some(study), req).await
}

/// The caller and the request, or the refusal after draining the body.
async fn refused_early(
    s: &Services,
    c: Result<WebCaller, WebError>,
    path_ok: Result<(), WebError>,
    req: Request,
) -> Result<(WebCaller, Request), WebError> {
    match c.and_then(|c| path_ok.map(|()| c)) {
        Ok(c) => Ok((c, req)),
        Err(e) => {
            drain(req, s.cfg.idle_timeout()).await;
            Err(e)
        }
    }
}

/// One part's result, in request order.
struct Outcome {
    sop_class: String,
    sop_instance: String,
    result: Result<StoreOutcome, StoreFailure>,
}

/// The part being read.
enum Part {
    /// Collecting the preamble and file meta.
    Meta(Vec<u8>),
    Feeding {
        job: Box<Ingesting>,
        class: String,
        sop: String,
        pending: Vec<u8>,
    },
    Failed {
        class: String,
        sop: String,
        failure: StoreFailure,
    },
    None,
}

type Finishing = tokio::task::JoinHandle<Result<StoreOutcome, StoreFailure>>;

async fn run(s: &Arc<Services>, c: &WebCaller, study: Option<String>, req: Request) -> Result<Response, WebError> {
    let refused = match (&c.store_clinic, boundary_of(req.headers())) {
        (None, _) => Err(WebError::Api(ApiError::Forbidden(
            "STOW-RS stores into the caller's clinic: use a token of scope clinic:ID or a clinic doctor's account (hospital, all, expert and admin callers may read, not store)".into(),
        ))),
        (_, Err(e)) => Err(WebError::UnsupportedMedia(e)),
        (Some(clinic), Ok(b)) => Ok((clinic.clone(), b)),
    };
    let (clinic, boundary) = match refused {
        Ok(v) => v,
        Err(e) => {
            drain(req, s.cfg.idle_timeout()).await;
            return Err(e);
        }
    };
    let route = ClinicRoute::for_clinic(&s.cfg, &clinic);
    let max_part = s.cfg.dicomweb.max_stow_mb.saturating_mul(1 << 20);
    let idle = s.cfg.idle_timeout();
    let base = super::qido::base(req.headers(), req.uri());
    let mut body = req.into_body().into_data_stream();
    let mut scan = Scanner::new(&boundary);
    let mut part = Part::None;
    let mut part_bytes = 0u64;
    let mut done: Vec<Outcome> = Vec::new();
    let mut finishing: VecDeque<(String, String, Finishing)> = VecDeque::new();
    let mut ended = false;
    loop {
        // Events from what is buffered, then more of the body.
        let ev = scan
            .next()
            .map_err(|e| WebError::Api(ApiError::BadRequest(e.to_string())))?;
        let Some(ev) = ev else {
            if ended {
                break;
            }
            match tokio::time::timeout(idle, body.next()).await {
                Err(_) => return Err(ApiError::BadRequest("request body stalled".into()).into()),
                Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("reading the request body: {e}")).into()),
                Ok(Some(Ok(b))) => scan.push(&b),
                Ok(None) => ended = true,
            }
            continue;
        };
        match ev {
            Event::Start(content_type) => {
                part_bytes = 0;
                part = match content_type {
                    Some(t) if !is_dicom_part(&t) => Part::Failed {
                        class: String::new(),
                        sop: String::new(),
                        failure: StoreFailure::Unreadable(format!("unsupported media type {t:?} for a part")),
                    },
                    _ => Part::Meta(Vec::new()),
                };
            }
            Event::Data(d) => {
                part_bytes += d.len() as u64;
                if part_bytes > max_part {
                    // The part being written is abandoned (temp file removed).
                    drop(part);
                    drain_stream(&mut body, idle).await;
                    return Err(WebError::TooLarge(format!(
                        "a part is larger than [dicomweb] max_stow_mb = {} MB",
                        s.cfg.dicomweb.max_stow_mb
                    )));
                }
                part = feed(s, c, &route, &study, &clinic, part, d).await;
            }
            Event::End => {
                let p = std::mem::replace(&mut part, Part::None);
                match p {
                    Part::Meta(_) => done_or_queue(
                        &mut done,
                        &mut finishing,
                        String::new(),
                        String::new(),
                        Err(StoreFailure::Unreadable("part ends before its file meta does".into())),
                    ),
                    Part::Failed { class, sop, failure } => {
                        done_or_queue(&mut done, &mut finishing, class, sop, Err(failure))
                    }
                    Part::Feeding {
                        job,
                        class,
                        sop,
                        pending,
                    } => {
                        if !pending.is_empty() {
                            job.send(pending).await;
                        }
                        if finishing.len() >= FINISHING {
                            drain_one(&mut done, &mut finishing).await;
                        }
                        finishing.push_back((class, sop, tokio::spawn(job.finish())));
                    }
                    Part::None => {}
                }
            }
        }
    }
    if !scan.complete() {
        // Whatever part was being read is abandoned (its temp file removed).
        return Err(ApiError::BadRequest("multipart body ends before its closing boundary".into()).into());
    }
    while !finishing.is_empty() {
        drain_one(&mut done, &mut finishing).await;
    }
    if done.is_empty() {
        return Err(ApiError::BadRequest("no parts in the multipart body".into()).into());
    }
    // Nothing stored because the index is down: the client should retry
    // the whole request later, as for the API.
    let unavailable = |o: &Outcome| matches!(o.result, Err(StoreFailure::IndexUnavailable(_)));
    if done.iter().any(unavailable) && done.iter().all(|o| o.result.is_err()) {
        for o in &done {
            count_outcome(&s.metrics, &o.result);
        }
        return Err(ApiError::unavailable().into());
    }
    Ok(answer(s, c, study.as_deref(), &base, done).await)
}

/// Reads (and drops) a little of a refused request's body before the
/// answer: a client still sending a small body would otherwise see the
/// connection reset instead of the status. A large one is cut.
async fn drain(req: Request, idle: std::time::Duration) {
    drain_stream(&mut req.into_body().into_data_stream(), idle).await
}

async fn drain_stream(body: &mut axum::body::BodyDataStream, idle: std::time::Duration) {
    const DRAIN: usize = 4 << 20;
    let mut n = 0;
    while n < DRAIN {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(b))) => n += b.len(),
            _ => break,
        }
    }
}

/// A finished part's outcome goes after those still finishing, keeping
/// request order.
fn done_or_queue(
    done: &mut Vec<Outcome>,
    finishing: &mut VecDeque<(String, String, Finishing)>,
    class: String,
    sop: String,
    r: Result<StoreOutcome, StoreFailure>,
) {
    if finishing.is_empty() {
        done.push(Outcome {
            sop_class: class,
            sop_instance: sop,
            result: r,
        });
    } else {
        finishing.push_back((class, sop, tokio::spawn(async move { r })));
    }
}

async fn drain_one(done: &mut Vec<Outcome>, finishing: &mut VecDeque<(String, String, Finishing)>) {
    if let Some((class, sop, h)) = finishing.pop_front() {
        let result = h
            .await
            .unwrap_or_else(|e| Err(StoreFailure::Internal(format!("store task: {e}"))));
        done.push(Outcome {
            sop_class: class,
            sop_instance: sop,
            result,
        });
    }
}

/// Moves a part along with more of its bytes: meta first, then the dataset.
async fn feed(
    s: &Services,
    c: &WebCaller,
    route: &ClinicRoute,
    study: &Option<String>,
    clinic: &str,
    part: Part,
    d: Vec<u8>,
) -> Part {
    match part {
        Part::Meta(mut buf) => {
            buf.extend_from_slice(&d);
            let (meta, offset) = match parse_meta(&buf) {
                Ok(Some(v)) => v,
                Ok(None) if buf.len() <= MAX_META + 144 => return Part::Meta(buf),
                Ok(None) => {
                    return Part::Failed {
                        class: String::new(),
                        sop: String::new(),
                        failure: StoreFailure::Unreadable("file meta too large".into()),
                    };
                }
                Err(e) => {
                    return Part::Failed {
                        class: String::new(),
                        sop: String::new(),
                        failure: StoreFailure::Unreadable(e),
                    };
                }
            };
            let failed = |failure| Part::Failed {
                class: meta.sop_class.clone(),
                sop: meta.sop_instance.clone(),
                failure,
            };
            if !is_valid_uid(&meta.sop_instance) {
                return failed(StoreFailure::InvalidUid(
                    "invalid Media Storage SOP Instance UID".into(),
                ));
            }
            if !is_valid_uid(&meta.ts) || !is_valid_uid(&meta.sop_class) {
                return failed(StoreFailure::Unreadable(
                    "invalid transfer syntax or SOP class UID".into(),
                ));
            }
            if !supported_class(s, &meta.sop_class) {
                return failed(StoreFailure::Refused(format!(
                    "SOP class {} is not supported",
                    meta.sop_class
                )));
            }
            debug!(clinic, sop = %meta.sop_instance, "STOW part");
            let job = s.ingest.start(IngestRequest {
                route: route.clone(),
                calling: c.name(),
                via: match &c.who {
                    super::Who::Token(_) => Actor::Token,
                    super::Who::Account(a) => Actor::Account(a.user.role),
                },
                remote: c.remote.clone(),
                sop_class: meta.sop_class.clone(),
                sop_instance: meta.sop_instance.clone(),
                ts: meta.ts.clone(),
                study: study.clone(),
            });
            match job {
                Ok(job) => Part::Feeding {
                    job,
                    class: meta.sop_class,
                    sop: meta.sop_instance,
                    pending: buf.split_off(offset),
                },
                Err(f) => failed(f),
            }
        }
        Part::Feeding {
            job,
            class,
            sop,
            mut pending,
        } => {
            pending.extend_from_slice(&d);
            if pending.len() >= CHUNK {
                job.send(std::mem::take(&mut pending)).await;
            }
            Part::Feeding {
                job,
                class,
                sop,
                pending,
            }
        }
        other => other,
    }
}

fn supported_class(s: &Services, class: &str) -> bool {
    STORAGE_SOP_CLASSES.iter().any(|(uid, _)| *uid == class) || s.cfg.dicom.extra_sop_classes.iter().any(|x| x == class)
}

/// The PS3.18 store response (table 10.5.3-1) and its status: 200 all
/// stored, 202 some failed or a warning, 409 all failed (503 instead when
/// the index was unavailable, decided by the caller).
async fn answer(s: &Services, c: &WebCaller, study: Option<&str>, base: &str, done: Vec<Outcome>) -> Response {
    let (mut stored, mut failed) = (Vec::new(), Vec::new());
    let mut warned = false;
    let mut audit_study = study.map(str::to_string);
    for o in &done {
        count_outcome(&s.metrics, &o.result);
        match &o.result {
            Ok(outcome) => {
                let row = s
                    .index
                    .instance_versions(&o.sop_instance)
                    .await
                    .ok()
                    .and_then(|v| v.into_iter().next());
                let mut item = serde_json::Map::new();
                item.insert("00081150".into(), json!({"vr": "UI", "Value": [o.sop_class]}));
                item.insert("00081155".into(), json!({"vr": "UI", "Value": [o.sop_instance]}));
                if let Some(r) = &row {
                    audit_study.get_or_insert_with(|| r.study_uid.clone());
                    let url = format!(
                        "{base}/studies/{}/series/{}/instances/{}",
                        r.study_uid, r.series_uid, o.sop_instance
                    );
                    item.insert("00081190".into(), json!({"vr": "UR", "Value": [url]}));
                }
                if let StoreOutcome::NewVersion(_) = outcome {
                    warned = true;
                    item.insert("00081196".into(), json!({"vr": "US", "Value": [0xB000]}));
                }
                stored.push(Json::Object(item));
            }
            Err(f) => {
                info!(status = format!("{:#06x}", f.status()), error = %f, "STOW instance failed");
                let mut item = serde_json::Map::new();
                if !o.sop_class.is_empty() {
                    item.insert("00081150".into(), json!({"vr": "UI", "Value": [o.sop_class]}));
                }
                if !o.sop_instance.is_empty() {
                    item.insert("00081155".into(), json!({"vr": "UI", "Value": [o.sop_instance]}));
                }
                item.insert("00081197".into(), json!({"vr": "US", "Value": [failure_reason(f)]}));
                failed.push(Json::Object(item));
            }
        }
    }
    let status = if stored.is_empty() {
        StatusCode::CONFLICT
    } else if !failed.is_empty() || warned {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let detail = format!("stow n={} failed={}", stored.len(), failed.len());
    info!(
        clinic = c.store_clinic.as_deref().unwrap_or(""),
        stored = stored.len(),
        failed = failed.len(),
        "STOW-RS"
    );
    c.audit(s, "upload", audit_study.as_deref().unwrap_or(""), &detail)
        .await;
    let mut body = serde_json::Map::new();
    if let Some(st) = study {
        body.insert(
            "00081190".into(),
            json!({"vr": "UR", "Value": [format!("{base}/studies/{st}")]}),
        );
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    if !stored.is_empty() {
        body.insert("00081199".into(), json!({"vr": "SQ", "Value": stored}));
    }
    let mut resp = (status, Json::Object(body).to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom+json"));
    resp
}

/// PS3.18 failure reasons are the C-STORE statuses (0xA700 out of
/// resources, 0xA900 mismatch, 0xC000 cannot understand, 0x0124 not
/// authorized, 0x0122 SOP class not supported, 0x0110 processing failure).
fn failure_reason(f: &StoreFailure) -> u16 {
    f.status()
}

/// The boundary of a `multipart/related; type="application/dicom"` body;
/// anything else is 415.
fn boundary_of(h: &HeaderMap) -> Result<String, String> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or("Content-Type must be multipart/related; type=\"application/dicom\"")?;
    let mut it = ct.split(';');
    let media = it.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("multipart/related") {
        return Err(format!(
            "unsupported media type {media:?}: use multipart/related; type=\"application/dicom\""
        ));
    }
    let (mut boundary, mut ty) = (None, None);
    for p in it {
        if let Some((k, v)) = p.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "boundary" => boundary = Some(v),
                "type" => ty = Some(v),
                _ => {}
            }
        }
    }
    if !ty
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("application/dicom"))
    {
        return Err("only type=\"application/dicom\" is supported (Part 10 files)".into());
    }
    match boundary {
        Some(b) if !b.is_empty() && b.len() <= 70 => Ok(b),
        _ => Err("multipart/related without a valid boundary".into()),
    }
}

fn is_dicom_part(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/dicom"))
}

// ------------------------------------------------------------- file meta

#[derive(Debug, PartialEq, Eq)]
struct PartMeta {
    sop_class: String,
    sop_instance: String,
    ts: String,
}

/// The file meta of a Part 10 stream from its first bytes: None until the
/// whole group is in `buf`; with it, the offset where the dataset starts.
fn parse_meta(buf: &[u8]) -> Result<Option<(PartMeta, usize)>, String> {
    if buf.len() < 144 {
        return Ok(None);
    }
    if &buf[128..132] != b"DICM" {
        return Err("not a DICOM Part 10 file (no DICM prefix)".into());
    }
    // (0002,0000) UL, explicit VR little endian, always first.
    if buf[132..140] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return Err("file meta without its group length".into());
    }
    let group = u32::from_le_bytes([buf[140], buf[141], buf[142], buf[143]]) as usize;
    if group > MAX_META {
        return Err("file meta too large".into());
    }
    let end = 144 + group;
    if buf.len() < end {
        return Ok(None);
    }
    let meta =
        dicom_object::FileMetaTable::from_reader(&mut &buf[128..end]).map_err(|e| format!("bad file meta: {e}"))?;
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Ok(Some((
        PartMeta {
            sop_class: clean(meta.media_storage_sop_class_uid()),
            sop_instance: clean(meta.media_storage_sop_instance_uid()),
            ts: clean(meta.transfer_syntax()),
        },
        end,
    )))
}

// ------------------------------------------------------------- multipart

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum MultipartError {
    #[error("malformed multipart body: part headers too long")]
    HeadersTooLong,
    #[error("malformed multipart body: bad part header line")]
    BadHeader,
    #[error("malformed multipart body: garbage after a boundary")]
    BadDelimiter,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A part begins: its Content-Type, if it has one.
    Start(Option<String>),
    Data(Vec<u8>),
    End,
}

#[derive(Debug, PartialEq, Eq)]
enum St {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Done,
}

/// An incremental RFC 2046 multipart parser: push body bytes as they
/// come, take events. It buffers at most one pushed frame plus a
/// delimiter's length (or one header block), never a part.
struct Scanner {
    /// CRLF "--" boundary.
    delim: Vec<u8>,
    buf: Vec<u8>,
    st: St,
    finder: memchr::memmem::Finder<'static>,
}

impl Scanner {
    fn new(boundary: &str) -> Scanner {
        let delim = format!("\r\n--{boundary}").into_bytes();
        Scanner {
            finder: memchr::memmem::Finder::new(&delim).into_owned(),
            delim,
            // The first boundary may start the body, without a CRLF before it.
            buf: b"\r\n".to_vec(),
            st: St::Preamble,
        }
    }

    fn push(&mut self, b: &[u8]) {
        if self.st != St::Done {
            self.buf.extend_from_slice(b);
        }
    }

    /// The closing boundary was seen.
    fn complete(&self) -> bool {
        self.st == St::Done
    }

    fn next(&mut self) -> Result<Option<Event>, MultipartError> {
        match self.st {
            St::Done => {
                self.buf.clear();
                Ok(None)
            }
            St::Preamble => match self.finder.find(&self.buf) {
                Some(i) => {
                    self.buf.drain(..i + self.delim.len());
                    self.st = St::AfterDelimiter;
                    self.next()
                }
                None => {
                    let keep = self.buf.len().min(self.delim.len());
                    self.buf.drain(..self.buf.len() - keep);
                    Ok(None)
                }
            },
            St::AfterDelimiter => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if self.buf.starts_with(b"--") {
                    self.st = St::Done;
                    self.buf.clear();
                    return Ok(None);
                }
                // Transport padding (spaces, tabs), then CRLF.
                match memchr::memmem::find(&self.buf, b"\r\n") {
                    Some(i) if self.buf[..i].iter().all(|b| *b == b' ' || *b == b'\t') => {
                        self.buf.drain(..i + 2);
                        self.st = St::Headers;
                        self.next()
                    }
                    Some(_) => Err(MultipartError::BadDelimiter),
                    None if self.buf.len() > 256 => Err(MultipartError::BadDelimiter),
                    None => Ok(None),
                }
            }
            St::Headers => {
                let end = if self.buf.starts_with(b"\r\n") {
                    Some(0)
                } else {
                    memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|i| i + 2)
                };
                let Some(end) = end else {
                    return if self.buf.len() > MAX_PART_HEADERS {
                        Err(MultipartError::HeadersTooLong)
                    } else {
                        Ok(None)
                    };
                };
                if end > MAX_PART_HEADERS {
                    return Err(MultipartError::HeadersTooLong);
                }
                let mut content_type = None;
                for line in self.buf[..end].split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.is_empty() {
                        continue;
                    }
                    let line = std::str::from_utf8(line).map_err(|_| MultipartError::BadHeader)?;
                    let (k, v) = line.split_once(':').ok_or(MultipartError::BadHeader)?;
                    if k.trim().eq_ignore_ascii_case("content-type") {
                        content_type = Some(v.trim().to_string());
                    }
                }
                self.buf.drain(..end + 2);
                self.st = St::Body;
                Ok(Some(Event::Start(content_type)))
            }
            St::Body => match self.finder.find(&self.buf) {
                Some(0) => {
                    self.buf.drain(..self.delim.len());
                    self.st = St::AfterDelimiter;
                    Ok(Some(Event::End))
                }
                Some(i) => Ok(Some(Event::Data(self.buf.drain(..i).collect()))),
                None => {
                    // Keep a possible delimiter prefix at the end.
                    let keep = self.delim.len() - 1;
                    if self.buf.len() > keep {
                        let n = self.buf.len() - keep;
                        Ok(Some(Event::Data(self.buf.drain(..n).collect())))
                    } else {
                        Ok(None)
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &[u8], step: usize) -> Result<(Vec<Event>, bool), MultipartError> {
        let mut s = Scanner::new("b0und");
        let mut out = Vec::new();
        for c in body.chunks(step) {
            s.push(c);
            while let Some(e) = s.next()? {
                out.push(e);
            }
        }
        // merge data events
        let mut merged: Vec<Event> = Vec::new();
        for e in out {
            match (merged.last_mut(), e) {
                (Some(Event::Data(a)), Event::Data(b)) => a.extend(b),
                (_, e) => merged.push(e),
            }
        }
        Ok((merged, s.complete()))
    }

    #[test]
    fn stow_multipart_scanner_splits_parts_at_any_chunking() {
        let body = b"preamble\r\n--b0und\r\nContent-Type: application/dicom\r\n\r\nAB\r\n--b0uCD\r\n--b0und  \r\n\r\nX\r\n--b0und--\r\nepilogue";
        for step in [1, 2, 3, 7, 1000] {
            let (ev, done) = events(body, step).expect("parse");
            assert!(done, "step {step}");
            assert_eq!(
                ev,
                vec![
                    Event::Start(Some("application/dicom".into())),
                    Event::Data(b"AB\r\n--b0uCD".to_vec()),
                    Event::End,
                    Event::Start(None),
                    Event::Data(b"X".to_vec()),
                    Event::End,
                ],
                "step {step}"
            );
        }
        let (_, done) = events(b"--b0und\r\n\r\nAB\r\n--b0und\r\n", 4).expect("parse");
        assert!(!done);
        assert_eq!(
            events(b"--b0und\r\nno colon\r\n\r\n", 5).err(),
            Some(MultipartError::BadHeader)
        );
        assert_eq!(events(b"--b0undxx\r\n", 5).err(), Some(MultipartError::BadDelimiter));
    }

    #[test]
    fn stow_content_type_and_meta() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/related; type=\"application/dicom\"; boundary=\"abc\""),
        );
        assert_eq!(boundary_of(&h).as_deref(), Ok("abc"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom"));
        assert!(boundary_of(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/related; type=\"application/dicom+json\"; boundary=x"),
        );
        assert!(boundary_of(&h).is_err());
        assert!(is_dicom_part("application/dicom; transfer-syntax=1.2.840.10008.1.2.1"));
        assert!(!is_dicom_part("image/jpeg"));

        let meta = crate::dicom::meta::file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "X");
        let mut file = meta.clone();
        file.extend_from_slice(b"dataset");
        let (m, off) = parse_meta(&file).expect("meta").expect("complete");
        assert_eq!(
            m,
            PartMeta {
                sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance: "1.2.3.4".into(),
                ts: "1.2.840.10008.1.2.1".into()
            }
        );
        assert_eq!(&file[off..], b"dataset");
        assert_eq!(parse_meta(&file[..off - 1]), Ok(None));
        let mut bad = file.clone();
        bad[128] = b'X';
        assert!(parse_meta(&bad).is_err());
    }
}
