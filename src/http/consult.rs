//! Consultation rooms over HTTP: the rooms API, the signaling WebSocket and
//! the embedded page.
//!
//! The WebSocket task is a thin translator between JSON frames and engine
//! commands. It checks the join token itself (stateless HMAC) so forged or
//! expired tokens never reach the engine, bounds every read with a timeout,
//! and maps engine refusals to `error` messages and close codes once, here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::debug;

use super::error::ApiError;
use super::signal_session;
use crate::app::Services;
use crate::reading::access::Caller;
use crate::sfu::client_queue::{DEPTH, client_queue};
use crate::sfu::engine::{Command, NewParticipant, SfuError};
use crate::sfu::protocol::{ClientMsg, ErrorCode, MAX_SIGNAL_BYTES, Role, parse_client};
use crate::sfu::tokens::{Claims, TokenError};

type S = State<Arc<Services>>;

/// Time allowed between opening the socket and sending `join`.
const JOIN_WAIT: Duration = Duration::from_secs(15);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ rooms API

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoom {
    #[serde(default)]
    pub title: String,
    pub participants: Vec<NewRoomParticipant>,
    /// Lifetime of the join tokens; defaults to `sfu.room_ttl_secs`.
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoomParticipant {
    pub name: String,
    pub role: Role,
}

fn check_name(n: &str, what: &str) -> Result<String, ApiError> {
    let t = n.trim();
    if t.is_empty() || t.chars().count() > 80 || t.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!("{what}: 1-80 printable characters")));
    }
    Ok(t.to_string())
}

fn participant_json(s: &Services, room: &str, id: &str, name: &str, role: Role, exp: u64) -> serde_json::Value {
    let token = s.sfu.tokens.mint(&Claims {
        room: room.to_string(),
        participant: id.to_string(),
        expires_unix: exp,
    });
    json!({
        "id": id,
        "name": name,
        "role": role,
        "token": token,
        // The token rides in the fragment, which browsers never send to the
        // server, so it stays out of access logs and Referer headers.
        "url": format!("/consult#token={token}"),
    })
}

fn ttl(s: &Services, ttl_secs: Option<u64>) -> Result<u64, ApiError> {
    let t = ttl_secs.unwrap_or(s.sfu.room_ttl.as_secs());
    if !(5..=7 * 24 * 3600).contains(&t) {
        return Err(ApiError::BadRequest("ttl_secs must be between 5 and 604800".into()));
    }
    Ok(t)
}

pub async fn create_room(
    State(s): S,
    _c: Caller,
    body: Result<Json<NewRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let title = if req.title.trim().is_empty() {
        "Consultation".to_string()
    } else {
        check_name(&req.title, "title")?
    };
    if req.participants.is_empty() || req.participants.len() > 32 {
        return Err(ApiError::BadRequest("participants: 1 to 32 entries".into()));
    }
    let mut ps = Vec::new();
    for p in &req.participants {
        ps.push(NewParticipant {
            name: check_name(&p.name, "participant name")?,
            role: p.role,
        });
    }
    let exp = unix_now() + ttl(&s, req.ttl_secs)?;
    let created = s
        .sfu
        .ask(|reply| Command::CreateRoom {
            kind: crate::sfu::protocol::RoomKind::Consultation,
            title,
            participants: ps,
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(sfu_err)?;
    let participants: Vec<_> = created
        .participants
        .iter()
        .map(|(id, name, role)| participant_json(&s, &created.id, id, name, *role, exp))
        .collect();
    let body = json!({
        "id": created.id,
        "title": created.title,
        "expires_unix": exp,
        "participants": participants,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Adds a participant to `room`, or creates the room when it does not exist
/// (first join, or the room expired or the gateway restarted). Returns the
/// room id, the participant id and the token expiry.
pub(crate) async fn join_or_create_room(
    s: &Services,
    room: Option<&str>,
    title: &str,
    name: &str,
    role: Role,
) -> Result<(String, String, u64), ApiError> {
    let name = check_name(name, "participant name")?;
    let exp = unix_now() + s.sfu.room_ttl.as_secs();
    if let Some(room) = room {
        let added = s
            .sfu
            .ask(|reply| Command::AddParticipant {
                room: room.to_string(),
                participant: NewParticipant {
                    name: name.clone(),
                    role,
                },
                reply,
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match added {
            Ok((id, _, _)) => return Ok((room.to_string(), id, exp)),
            Err(SfuError::NoSuchRoom) => {}
            Err(e) => return Err(sfu_err(e)),
        }
    }
    let (room, pid) = create_room_for(
        s,
        crate::sfu::protocol::RoomKind::Consultation,
        title,
        NewParticipant { name, role },
    )
    .await?;
    Ok((room, pid, exp))
}

/// Creates a room holding one participant; returns (room id, participant id).
pub(crate) async fn create_room_for(
    s: &Services,
    kind: crate::sfu::protocol::RoomKind,
    title: &str,
    participant: NewParticipant,
) -> Result<(String, String), ApiError> {
    let created = s
        .sfu
        .ask(|reply| Command::CreateRoom {
            kind,
            title: title.to_string(),
            participants: vec![participant],
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(sfu_err)?;
    let pid = created
        .participants
        .first()
        .map(|(id, _, _)| id.clone())
        .ok_or_else(|| ApiError::Internal("room created without its participant".into()))?;
    Ok((created.id, pid))
}

pub(crate) fn sfu_err(e: SfuError) -> ApiError {
    match e {
        SfuError::NoSuchRoom => ApiError::NotFound("room"),
        SfuError::TooManyRooms(_) | SfuError::RoomFull(_) => ApiError::Unprocessable(e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddParticipant {
    pub name: String,
    pub role: Role,
    pub ttl_secs: Option<u64>,
}

pub async fn add_participant(
    State(s): S,
    _c: Caller,
    Path(room): Path<String>,
    body: Result<Json<AddParticipant>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = check_name(&req.name, "participant name")?;
    let exp = unix_now() + ttl(&s, req.ttl_secs)?;
    let (id, name, role) = s
        .sfu
        .ask(|reply| Command::AddParticipant {
            room: room.clone(),
            participant: NewParticipant { name, role: req.role },
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(sfu_err)?;
    Ok((
        StatusCode::CREATED,
        Json(participant_json(&s, &room, &id, &name, role, exp)),
    )
        .into_response())
}

pub async fn room_status(
    State(s): S,
    _c: Caller,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let st = s
        .sfu
        .ask(|reply| Command::RoomStatus { room, reply })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound("room"))?;
    Ok(Json(
        serde_json::to_value(st).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

pub async fn close_room(State(s): S, _c: Caller, Path(room): Path<String>) -> Result<StatusCode, ApiError> {
    let existed = s
        .sfu
        .ask(|reply| Command::CloseRoom { room, reply })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("room"))
    }
}

// ------------------------------------------------------------------ web page

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// A page or module. `MEDRELAY_WEB_DIR` (development only) serves `web/`
/// from disk so page work needs no rebuild; names are flat, so nothing
/// outside that directory can be reached.
pub(crate) fn asset(name: &str) -> Option<std::borrow::Cow<'static, [u8]>> {
    if let Some(dir) = std::env::var_os("MEDRELAY_WEB_DIR") {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return None;
        }
        return std::fs::read(std::path::Path::new(&dir).join(name))
            .ok()
            .map(std::borrow::Cow::Owned);
    }
    assets::WEB_ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| std::borrow::Cow::Borrowed(*b))
}

/// Content type and caching of a page or asset. The CSP (`connect-src
/// 'self'`, `frame-ancestors 'none'`), HSTS, `nosniff` and Referrer-Policy
/// are added to every response by `http::security_headers`.
fn static_headers(ctype: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    h
}

pub(crate) fn page_headers() -> HeaderMap {
    static_headers("text/html; charset=utf-8")
}

pub async fn consult_page() -> Response {
    match asset("consult.html") {
        Some(b) => (static_headers("text/html; charset=utf-8"), b).into_response(),
        None => ApiError::NotFound("page").into_response(),
    }
}

pub async fn web_asset(Path(name): Path<String>) -> Response {
    let ctype = if name.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "text/html; charset=utf-8"
    };
    match asset(&name) {
        Some(b) => (static_headers(ctype), b).into_response(),
        None => ApiError::NotFound("file").into_response(),
    }
}

// ------------------------------------------------------------------ signaling

pub async fn signaling(State(s): S, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_SIGNAL_BYTES)
        .max_frame_size(MAX_SIGNAL_BYTES)
        .on_upgrade(move |socket| session(s, socket))
}

async fn close(ws: &mut WebSocket, code: ErrorCode, reason: &str) {
    signal_session::close(ws, code, reason).await
}

/// Waits for the first message, which must be a valid `join`.
async fn await_join(s: &Services, ws: &mut WebSocket) -> Result<Claims, (ErrorCode, String)> {
    loop {
        let msg = match tokio::time::timeout(JOIN_WAIT, ws.recv()).await {
            Err(_) => return Err((ErrorCode::NotJoined, "no join message received in time".into())),
            Ok(None) | Ok(Some(Err(_))) => return Err((ErrorCode::NotJoined, "connection closed".into())),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err((ErrorCode::NotJoined, "connection closed".into())),
            Message::Binary(_) => return Err((ErrorCode::BadMessage, "text frames only".into())),
        };
        match parse_client(text.as_str()) {
            Ok(ClientMsg::Join { token }) => {
                return s.sfu.tokens.verify(&token, unix_now()).map_err(|e| match e {
                    TokenError::Expired => (ErrorCode::ExpiredToken, "this invitation has expired".into()),
                    _ => (ErrorCode::BadToken, "this invitation is not valid".into()),
                });
            }
            Ok(_) => return Err((ErrorCode::NotJoined, "the first message must be join".into())),
            Err(e) => return Err((ErrorCode::BadMessage, e)),
        }
    }
}

async fn session(s: Arc<Services>, mut ws: WebSocket) {
    let claims = match await_join(&s, &mut ws).await {
        Ok(c) => c,
        Err((code, why)) => {
            s.sfu.metrics.signal_errors.fetch_add(1, Relaxed);
            return close(&mut ws, code, &why).await;
        }
    };
    if let Err((code, why)) = signal_session::admit(&s, &claims.participant) {
        return close(&mut ws, code, &why).await;
    }
    let conn = CONN_IDS.fetch_add(1, Relaxed);
    let (tx, rx) = client_queue(DEPTH, s.sfu.metrics.clone());
    let joined = s
        .sfu
        .ask(|reply| Command::Join {
            room: claims.room.clone(),
            participant: claims.participant.clone(),
            conn,
            tx,
            reply,
        })
        .await;
    match joined {
        Ok(Ok(())) => {}
        Ok(Err((code, why))) => return close(&mut ws, code, &why).await,
        Err(_) => return close(&mut ws, ErrorCode::Internal, "the media engine is not running").await,
    }
    debug!(room = %claims.room, participant = %claims.participant, "signaling session open");
    signal_session::run(&s, ws, rx, &claims.participant, conn).await;
}

pub fn render_metrics(m: &crate::sfu::SfuMetrics, out: &mut String) {
    use std::fmt::Write;
    for (name, help, v) in m.counters() {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Relaxed)
        );
    }
    let tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP medrelay_runtime_tasks Live tasks on the main runtime\n# TYPE medrelay_runtime_tasks gauge\nmedrelay_runtime_tasks {tasks}"
    );
    for (name, help, v) in [
        ("medrelay_sfu_rooms", "Open consultation rooms", &m.rooms_active),
        (
            "medrelay_sfu_participants",
            "Connected participants",
            &m.participants_active,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            v.load(Relaxed)
        );
    }
}
