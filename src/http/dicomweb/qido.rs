//! QIDO-RS (PS3.18 10.6): search for studies, series and instances, on
//! the same query rules and index queries as the C-FIND SCP
//! ([`crate::dicom::qr::find::qido`], [`crate::archive::query`]), within the
//! caller's scope.
//!
//! Parameters: attribute keywords or 8-hex-digit tags as matching keys
//! (the C-FIND forms: `*` and `?`, ranges, UID lists with `,` or `\`),
//! `includefield` (repeated or comma-separated; `all`), `limit` (default
//! [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]), `offset`, `fuzzymatching`
//! (accepted; names always match case-insensitively by component group).
//! An unknown parameter or an unsupported key is 400, as PS3.18 asks,
//! rather than a silently wider answer. More matches than `limit` add a
//! `Warning: 299` header saying so.

use std::sync::Arc;

use axum::extract::{Path, Query as Params, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};

use super::{BASE, WebCaller, WebError, check_json_accept, check_uids};
use crate::archive::query::After;
use crate::dicom::qr::Level;
use crate::dicom::qr::find::{self, Query, Row};
use crate::dicom::qr::keys;
use crate::http::Services;
use crate::http::error::ApiError;

/// Matches returned when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most matches one request returns (and the most `offset` skips past).
pub const MAX_LIMIT: usize = 1000;
const MAX_OFFSET: usize = 100_000;
/// Index candidates read per page.
const PAGE: i64 = 200;

type S = State<Arc<Services>>;

/// A parsed search: the keys, the return fields, the window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Search {
    keys: Vec<(u32, String)>,
    include: Vec<u32>,
    all: bool,
    limit: usize,
    offset: usize,
}

fn bad(msg: String) -> WebError {
    WebError::Api(ApiError::BadRequest(msg))
}

/// A keyword (`PatientName`), a tag (`00100010`), or `QueryRetrieveLevel`-
/// free names only: what QIDO-RS allows as an attribute.
fn tag_of(name: &str) -> Option<u32> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(name, 16).ok();
    }
    keys::KEYS
        .iter()
        .find(|k| k.keyword == name)
        .map(|k| k.tag)
        .or(match name {
            "RetrieveURL" => Some(RETRIEVE_URL),
            "InstanceAvailability" => Some(find::INSTANCE_AVAILABILITY),
            _ => None,
        })
}

/// Retrieve URL (0008,1190).
const RETRIEVE_URL: u32 = 0x0008_1190;

fn parse(params: &[(String, String)]) -> Result<Search, WebError> {
    let mut s = Search {
        keys: Vec::new(),
        include: Vec::new(),
        all: false,
        limit: DEFAULT_LIMIT,
        offset: 0,
    };
    for (k, v) in params {
        let (k, v) = (k.as_str(), v.as_str());
        let number = |v: &str, max: usize| -> Result<usize, WebError> {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(format!("{k}: expected a number up to {max}")))
        };
        match k {
            "limit" => s.limit = number(v, MAX_LIMIT)?.max(1),
            "offset" => s.offset = number(v, MAX_OFFSET)?,
            "fuzzymatching" => {}
            "includefield" => {
                for f in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if f == "all" {
                        s.all = true;
                    } else {
                        s.include
                            .push(tag_of(f).ok_or_else(|| bad(format!("includefield: unknown attribute {f:?}")))?);
                    }
                }
            }
            name => {
                let tag =
                    tag_of(name).ok_or_else(|| bad(format!("unknown or unsupported search parameter {name:?}")))?;
                if keys::by_tag(tag).is_none() {
                    return Err(bad(format!("{name} cannot be matched")));
                }
                // QIDO-RS lists UIDs with ',' as well as '\'.
                let value = if keys::by_tag(tag).is_some_and(|k| k.vr == crate::dicom::qr::matching::Vr::Ui) {
                    v.replace(',', "\\")
                } else {
                    v.to_string()
                };
                s.keys.push((tag, value));
            }
        }
    }
    Ok(s)
}

fn vr_str(vr: [u8; 2]) -> String {
    String::from_utf8_lossy(&vr).into_owned()
}

/// One record as DICOM JSON (PS3.18 F.2): names split into their groups,
/// integers as numbers, empty attributes without a Value.
fn record(q: &Query, row: &Row, base: &str) -> Map<String, Json> {
    let mut out = Map::new();
    for (tag, vr, values) in find::response_values(q, row, "") {
        // DIMSE-only attributes; the Retrieve URL is written below.
        if matches!(tag, find::RETRIEVE_AE_TITLE | keys::QUERY_RETRIEVE_LEVEL | RETRIEVE_URL) {
            continue;
        }
        let key = format!("{tag:08X}");
        let mut v = Map::new();
        v.insert("vr".into(), Json::String(vr_str(vr)));
        if !values.is_empty() {
            let arr: Vec<Json> = match &vr {
                b"PN" => values.iter().map(|p| super::json::person_name(p)).collect(),
                b"IS" => values
                    .iter()
                    .map(|x| {
                        x.trim()
                            .parse::<i64>()
                            .map(Json::from)
                            .unwrap_or(Json::String(x.clone()))
                    })
                    .collect(),
                _ => values.iter().map(|x| Json::String(x.clone())).collect(),
            };
            v.insert("Value".into(), Json::Array(arr));
        }
        out.insert(key, Json::Object(v));
    }
    let uid = |t: u32| row.get(&t).cloned().unwrap_or_default();
    let url = match q.level {
        Level::Patient | Level::Study => format!("{base}/studies/{}", uid(0x0020_000D)),
        Level::Series => format!("{base}/studies/{}/series/{}", uid(0x0020_000D), uid(0x0020_000E)),
        Level::Image => format!(
            "{base}/studies/{}/series/{}/instances/{}",
            uid(0x0020_000D),
            uid(0x0020_000E),
            uid(0x0008_0018)
        ),
    };
    out.insert("00081190".into(), json!({"vr": "UR", "Value": [url]}));
    out
}

/// Runs a search: the matches in index order from `offset`, at most
/// `limit`, and whether more matched.
async fn run(s: &Services, c: &WebCaller, level: Level, search: &Search) -> Result<(Query, Vec<Row>, bool), WebError> {
    let q = find::qido(level, &search.keys, &search.include, search.all).map_err(|e| bad(e.to_string()))?;
    let mut after = After::Start;
    let (mut skipped, mut rows, mut more) = (0usize, Vec::new(), false);
    'pages: loop {
        let (found, next) = s.index.find_page(&q, c.scope.clinics(), &after, PAGE).await?;
        for f in found {
            if skipped < search.offset {
                skipped += 1;
                continue;
            }
            if rows.len() == search.limit {
                more = true;
                break 'pages;
            }
            rows.push(f.row);
        }
        match next {
            Some(a) => after = a,
            None => break,
        }
    }
    Ok((q, rows, more))
}

/// The public base of the DICOMweb routes, for Retrieve URLs: the
/// request's own host (the Host header over HTTP/1.1, the authority over
/// HTTP/2), HTTPS always.
pub(super) fn base(h: &HeaderMap, uri: &Uri) -> String {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(uri.authority().map(|a| a.as_str()))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("https://{host}{BASE}")
}

async fn answer(
    s: &Services,
    c: WebCaller,
    h: &HeaderMap,
    uri: &Uri,
    level: Level,
    mut search: Search,
    path_keys: &[(u32, &str)],
) -> Result<Response, WebError> {
    check_json_accept(h)?;
    for (tag, uid) in path_keys {
        search.keys.retain(|(t, _)| t != tag);
        search.keys.push((*tag, uid.to_string()));
    }
    let (q, rows, more) = run(s, &c, level, &search).await?;
    let base = base(h, uri);
    let body: Vec<Json> = rows.iter().map(|r| Json::Object(record(&q, r, &base))).collect();
    let study = path_keys.first().map(|(_, u)| *u).unwrap_or("");
    c.audit(
        s,
        "search",
        study,
        &format!("qido level={} matches={}", level.as_str(), rows.len()),
    )
    .await;
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom+json"))],
        Json::Array(body).to_string(),
    )
        .into_response();
    if more {
        resp.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static(
                "299 medrelay \"The number of results exceeded the limit; request the next page with offset\"",
            ),
        );
    }
    Ok(resp)
}

pub async fn studies(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let search = parse(&q)?;
    answer(&s, c, &h, &uri, Level::Study, search, &[]).await
}

pub async fn series(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let search = parse(&q)?;
    answer(&s, c, &h, &uri, Level::Series, search, &[]).await
}

pub async fn instances(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let search = parse(&q)?;
    answer(&s, c, &h, &uri, Level::Image, search, &[]).await
}

pub async fn study_series(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Path(study): Path<String>,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_uids(&[&study])?;
    let search = parse(&q)?;
    answer(&s, c, &h, &uri, Level::Series, search, &[(0x0020_000D, &study)]).await
}

pub async fn study_instances(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Path(study): Path<String>,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_uids(&[&study])?;
    let search = parse(&q)?;
    answer(&s, c, &h, &uri, Level::Image, search, &[(0x0020_000D, &study)]).await
}

pub async fn series_instances(
    State(s): S,
    c: WebCaller,
    h: HeaderMap,
    uri: Uri,
    Path((study, series)): Path<(String, String)>,
    Params(q): Params<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_uids(&[&study, &series])?;
    let search = parse(&q)?;
    answer(
        &s,
        c,
        &h,
        &uri,
        Level::Image,
        search,
        &[(0x0020_000D, &study), (0x0020_000E, &series)],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_refuse_what_is_unknown() {
        let p = |q: &str| -> Vec<(String, String)> {
            q.split('&')
                .filter(|x| !x.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        };
        let s = parse(&p(
            "PatientName=王*&StudyDate=20260101-20260131&includefield=StudyDescription,00081030&limit=5&offset=10&fuzzymatching=false",
        ))
        .expect("parse");
        assert_eq!(
            s.keys,
            [
                (0x0010_0010, "王*".to_string()),
                (0x0008_0020, "20260101-20260131".to_string())
            ]
        );
        assert_eq!(s.include, [0x0008_1030, 0x0008_1030]);
        assert_eq!((s.limit, s.offset, s.all), (5, 10, false));
        let s = parse(&p("StudyInstanceUID=1.2.3,1.2.4&includefield=all")).expect("parse");
        assert_eq!(s.keys, [(0x0020_000D, "1.2.3\\1.2.4".to_string())]);
        assert!(s.all);
        assert!(parse(&p("NoSuchThing=1")).is_err());
        assert!(parse(&p("limit=100000")).is_err());
        assert!(parse(&p("limit=x")).is_err());
        assert!(parse(&p("00091001=x")).is_err(), "a private tag cannot be matched");
        assert_eq!(parse(&p("")).map(|s| s.limit).ok(), Some(DEFAULT_LIMIT));
    }

    #[test]
    fn records_are_dicom_json() {
        let q = find::qido(Level::Study, &[], &[], false).expect("query");
        let row: Row = [
            (0x0010_0010, "Wang^Xiaodong=王^小东".to_string()),
            (0x0020_000D, "1.2.3".to_string()),
            (0x0020_1208, "12".to_string()),
            (0x0008_0061, "CT,SR".to_string()),
        ]
        .into_iter()
        .collect();
        let r = record(&q, &row, "https://h/dicom-web");
        assert_eq!(
            r["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东"}]})
        );
        assert_eq!(r["00201208"], json!({"vr": "IS", "Value": [12]}));
        assert_eq!(r["00080061"], json!({"vr": "CS", "Value": ["CT", "SR"]}));
        assert_eq!(r["00080020"], json!({"vr": "DA"}), "no value, no Value");
        assert_eq!(r["00081190"]["Value"][0], "https://h/dicom-web/studies/1.2.3");
    }
}
