//! Consultation rooms over HTTP: the rooms API, the signaling WebSocket and
//! the embedded page.
//!
//! Who may do what with a room is decided here, from the caller's account
//! and the room's owner as the engine keeps it (`room_access`); the engine
//! only enforces that an invitation is used by its own account.
//!
//! The WebSocket task is a thin translator between JSON frames and engine
//! commands. It checks the join token itself (stateless HMAC) so forged or
//! expired tokens never reach the engine, requires the session of the
//! token's account (and re-checks it, the account and the room's request
//! while joined), bounds every read with a timeout, and maps engine
//! refusals to `error` messages and close codes once, here.

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
use tracing::{debug, warn};

use super::auth::{require, session_limits_ms};
use super::error::{ApiError, Code};
use super::room_access::{self, Owner, Rights};
use super::signal_session;
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Role as AccountRole, User};
use crate::reading::accounts::{self, SessionCheck};
use crate::reading::audit;
use crate::reading::requests::{self, Request};
use crate::sfu::EngineGone;
use crate::sfu::client_queue::{DEPTH, client_queue};
use crate::sfu::engine::{Command, Invited, NewParticipant, RoomOwner, RoomStatus, SfuError};
use crate::sfu::protocol::{ClientMsg, ErrorCode, MAX_SIGNAL_BYTES, Role, RoomKind, parse_client};
use crate::sfu::tokens::{Claims, TokenError};

type S = State<Arc<Services>>;

/// How often a joined participant's session, account and room owner are
/// checked again (see `may_stay`).
const RECHECK: Duration = Duration::from_secs(2);
/// Time allowed between opening the socket and sending `join`.
const JOIN_WAIT: Duration = Duration::from_secs(15);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

// ------------------------------------------------------------------ rooms API

/// Participants named when creating a room (besides its creator).
const MAX_INVITEES: usize = 31;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoom {
    #[serde(default)]
    pub title: String,
    /// Usernames of the accounts invited besides the creator.
    #[serde(default)]
    pub participants: Vec<String>,
    /// Lifetime of the room and its join tokens; defaults to `sfu.room_ttl_secs`.
    pub ttl_secs: Option<u64>,
}

fn check_name(n: &str, what: &str) -> Result<String, ApiError> {
    let t = n.trim();
    if t.is_empty() || t.chars().count() > 80 || t.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!("{what}: 1-80 printable characters"))
            .code(Code::BAD_TITLE)
            .param("max", 80));
    }
    Ok(t.to_string())
}

/// An invitation for `u`, with the name and role its account gives it.
pub(crate) fn invitation(u: &User, owner: &RoomOwner) -> NewParticipant {
    NewParticipant {
        account: u.username.clone(),
        name: u.display_name.clone(),
        role: room_access::sfu_role(u, owner),
    }
}

/// A join link for an invitation: the token, bound to the invitee's
/// account, expiring with the room (or earlier if `ttl` says so).
pub(crate) fn link_json(
    s: &Services,
    room: &str,
    kind: RoomKind,
    inv: &Invited,
    ttl: Option<Duration>,
) -> serde_json::Value {
    let life = ttl.map_or(inv.expires_in, |t| t.min(inv.expires_in));
    let exp = crate::clock::unix_secs() + life.as_secs().max(1);
    let token = s.sfu.tokens.mint(&Claims {
        room: room.to_string(),
        participant: inv.id.clone(),
        account: inv.participant.account.clone(),
        expires_unix: exp,
    });
    // The token rides in the fragment, which browsers never send to the
    // server, so it stays out of access logs and Referer headers. Broadcast
    // viewers hold no camera or microphone: the page asks for none.
    let url = match kind {
        RoomKind::Consultation => format!("/consult#token={token}"),
        RoomKind::Broadcast if inv.participant.role == Role::Expert => format!("/broadcast#token={token}"),
        RoomKind::Broadcast => format!("/broadcast#token={token}&nocam=1&nomic=1"),
    };
    json!({
        "id": inv.id,
        "username": inv.participant.account,
        "name": inv.participant.name,
        "role": inv.participant.role,
        "token": token,
        "url": url,
        "expires_unix": exp,
    })
}

fn ttl(s: &Services, ttl_secs: Option<u64>) -> Result<Duration, ApiError> {
    let t = ttl_secs.unwrap_or(s.sfu.room_ttl.as_secs());
    if !(5..=7 * 24 * 3600).contains(&t) {
        return Err(ApiError::BadRequest("ttl_secs must be between 5 and 604800".into()));
    }
    Ok(Duration::from_secs(t))
}

fn engine_gone(e: EngineGone) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The account named `username`, if `c` may invite it into a room of
/// `owner`; unknown, disabled and out-of-scope accounts all answer 404.
async fn invitee(s: &Services, c: &Caller, owner: Owner<'_>, username: &str) -> Result<User, ApiError> {
    if !accounts::valid_username(username) {
        return Err(ApiError::BadRequest(format!("{username:?} is not a username"))
            .code(Code::NOT_A_USERNAME)
            .param("name", username));
    }
    accounts::get_user(s.index.pool(), username)
        .await?
        .filter(|u| room_access::may_invite(c, owner, u, &s.cfg))
        .ok_or(ApiError::NotFound("user"))
}

/// `POST /api/rooms` (experts and admins): an ad-hoc consultation room
/// owned by its creator, who is its first participant; the others are
/// named by username and must be in the creator's scope.
pub async fn create_room(
    State(s): S,
    c: Caller,
    body: Result<Json<NewRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require(&c, &[AccountRole::Expert, AccountRole::Admin])?;
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let title = if req.title.trim().is_empty() {
        "Consultation".to_string()
    } else {
        check_name(&req.title, "title")?
    };
    if req.participants.len() > MAX_INVITEES {
        return Err(ApiError::BadRequest(format!("participants: at most {MAX_INVITEES}"))
            .code(Code::TOO_MANY_PARTICIPANTS)
            .param("max", MAX_INVITEES));
    }
    let owner = RoomOwner::Account(c.user.username.clone());
    let mut ps = vec![invitation(&c.user, &owner)];
    for name in &req.participants {
        if ps.iter().any(|p| &p.account == name) {
            return Err(ApiError::BadRequest(format!("{name:?} is named twice"))
                .code(Code::NAMED_TWICE)
                .param("name", name.as_str()));
        }
        let u = invitee(&s, &c, Owner::Account(&c.user.username), name).await?;
        ps.push(invitation(&u, &owner));
    }
    let life = ttl(&s, req.ttl_secs)?;
    let created = s
        .sfu
        .ask(|reply| Command::CreateRoom {
            kind: RoomKind::Consultation,
            title,
            owner: owner.clone(),
            ttl: life,
            participants: ps,
            reply,
        })
        .await
        .map_err(engine_gone)?
        .map_err(sfu_err)?;
    let participants: Vec<_> = created
        .participants
        .iter()
        .map(|inv| link_json(&s, &created.id, RoomKind::Consultation, inv, None))
        .collect();
    audit::record(s.index.pool(), &c, "room_create", None, Some(&created.id)).await;
    let body = json!({
        "id": created.id,
        "title": created.title,
        "kind": RoomKind::Consultation,
        "owner": owner_json(&owner),
        "expires_unix": crate::clock::unix_secs() + life.as_secs(),
        "participants": participants,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn owner_json(o: &RoomOwner) -> serde_json::Value {
    match o {
        RoomOwner::Account(u) => json!({ "kind": "account", "username": u }),
        RoomOwner::Request(id) => json!({ "kind": "request", "request_id": id }),
        RoomOwner::Broadcast(b) => json!({ "kind": "broadcast", "presenter": b.presenter, "presenters": b.presenters }),
    }
}

/// The room `id` and what `c` may do with it; 404 when it does not exist
/// or `c` has no right at all.
async fn room_for(s: &Services, c: &Caller, id: &str) -> Result<(RoomStatus, Rights, Option<Request>), ApiError> {
    let room = id.to_string();
    let st = s
        .sfu
        .ask(|reply| Command::RoomStatus { room, reply })
        .await
        .map_err(engine_gone)?
        .ok_or(ApiError::NotFound("room"))?;
    let req = match st.owner {
        RoomOwner::Request(rid) => requests::get(s.index.pool(), rid)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        _ => None,
    };
    let r = room_access::rights(c, Owner::of(&st.owner, req.as_ref()), &st.accounts, now_ms());
    if r.none() {
        return Err(ApiError::NotFound("room"));
    }
    Ok((st, r, req))
}

/// Adds an invitation for `participant` to `room`, or, for a consultation
/// request, creates the request's room when it has none (first join, or
/// the room ended: empty past its grace, expired, or the gateway
/// restarted) and records it. Returns the room id and the invitation.
pub(crate) async fn join_request_room(
    s: &Services,
    r: &Request,
    participant: NewParticipant,
) -> Result<(String, Invited), ApiError> {
    let mut stored = r.room_id.clone();
    // A concurrent first join may store its room between our read and our
    // write; we then close ours and join that one.
    for _ in 0..3 {
        if let Some(room) = &stored {
            let added = s
                .sfu
                .ask(|reply| Command::AddParticipant {
                    room: room.clone(),
                    participant: participant.clone(),
                    reply,
                })
                .await
                .map_err(engine_gone)?;
            match added {
                Ok(inv) => return Ok((room.clone(), inv)),
                Err(SfuError::NoSuchRoom) => {}
                Err(e) => return Err(sfu_err(e)),
            }
        }
        let created = s
            .sfu
            .ask(|reply| Command::CreateRoom {
                kind: RoomKind::Consultation,
                title: format!("Consultation #{}", r.id),
                owner: RoomOwner::Request(r.id),
                ttl: s.sfu.room_ttl,
                participants: vec![participant.clone()],
                reply,
            })
            .await
            .map_err(engine_gone)?
            .map_err(sfu_err)?;
        let pool = s.index.pool();
        if requests::set_room(pool, r.id, stored.as_deref(), &created.id, now_ms())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
        {
            let inv = created
                .participants
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::Internal("room created without its participant".into()))?;
            return Ok((created.id, inv));
        }
        close_room_now(s, &created.id).await?;
        stored = requests::get(pool, r.id)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .and_then(|r| r.room_id);
    }
    Err(ApiError::Conflict("the consultation room changed meanwhile; try again".into()).code(Code::CHANGED_MEANWHILE))
}

/// Closes a room if it exists; true if it did.
pub(crate) async fn close_room_now(s: &Services, room: &str) -> Result<bool, ApiError> {
    let room = room.to_string();
    s.sfu
        .ask(|reply| Command::CloseRoom { room, reply })
        .await
        .map_err(engine_gone)
}

pub(crate) fn sfu_err(e: SfuError) -> ApiError {
    match e {
        SfuError::NoSuchRoom => ApiError::NotFound("room"),
        SfuError::TooManyRooms(_) | SfuError::RoomFull(_) => {
            ApiError::Unprocessable(e.to_string()).code(Code::ROOM_LIMIT)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddParticipant {
    /// The account invited (the caller itself to take its own seat).
    pub username: String,
    pub ttl_secs: Option<u64>,
}

/// `POST /api/rooms/{id}/participants`: the room's owner (or an admin)
/// invites an account in its scope; a clinic doctor of a request's clinic
/// or a named co-presenter may add only itself.
pub async fn add_participant(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    body: Result<Json<AddParticipant>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (st, rights, req) = room_for(&s, &c, &room).await?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let life = body.ttl_secs.map(|t| ttl(&s, Some(t))).transpose()?;
    let owner = Owner::of(&st.owner, req.as_ref());
    let user = if body.username == c.user.username && (rights.join || rights.manage) {
        c.user.clone()
    } else if rights.manage {
        invitee(&s, &c, owner, &body.username).await?
    } else {
        return Err(
            ApiError::Forbidden("only the room's owner or an admin invites others".into()).code(Code::NOT_ROOM_OWNER),
        );
    };
    let participant = invitation(&user, &st.owner);
    let inv = s
        .sfu
        .ask(|reply| Command::AddParticipant {
            room: room.clone(),
            participant,
            reply,
        })
        .await
        .map_err(engine_gone)?
        .map_err(sfu_err)?;
    audit::record(
        s.index.pool(),
        &c,
        "room_invite",
        None,
        Some(&format!("{room} {}", user.username)),
    )
    .await;
    Ok((StatusCode::CREATED, Json(link_json(&s, &room, st.kind, &inv, life))).into_response())
}

/// `GET /api/rooms/{id}`: for its owner, admins and invited accounts.
pub async fn room_status(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (st, rights, _) = room_for(&s, &c, &room).await?;
    if !rights.see {
        return Err(ApiError::NotFound("room"));
    }
    Ok(Json(json!({
        "id": st.id,
        "title": st.title,
        "kind": st.kind,
        "owner": owner_json(&st.owner),
        "invited": st.invited,
        "accounts": st.accounts,
        "connected": st.connected,
        "live": st.live,
        "expires_unix": crate::clock::unix_secs() + st.expires_in.as_secs(),
    })))
}

/// `DELETE /api/rooms/{id}`: its owner or an admin ends it for everyone
/// (a broadcast's room: only the presenter who started it).
pub async fn close_room(State(s): S, c: Caller, Path(room): Path<String>) -> Result<StatusCode, ApiError> {
    let (_, rights, _) = room_for(&s, &c, &room).await?;
    if !rights.manage {
        return Err(ApiError::Forbidden("only the room's owner or an admin ends it".into()).code(Code::NOT_ROOM_OWNER));
    }
    if close_room_now(&s, &room).await? {
        audit::record(s.index.pool(), &c, "room_close", None, Some(&room)).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("room"))
    }
}

// ------------------------------------------------------------------ web page

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

/// The consultation page (also `/broadcast`). With `http.test_hooks` on
/// (test servers only) it carries a marker that lets the page honour its
/// test hooks (`#via=`, `#autojoin=1`); production pages never do.
pub async fn consult_page(State(s): S, c: Result<Caller, ApiError>, headers: HeaderMap) -> Response {
    let Some(page) = super::assets::asset("consult.html") else {
        return ApiError::NotFound("page").into_response();
    };
    let html = super::lang::page(&page, c.as_ref().ok(), &headers);
    if !s.cfg.http.test_hooks {
        return (page_headers(), html).into_response();
    }
    let html = html.replacen("<head>", "<head>\n  <meta name=\"mr-test-hooks\" content=\"1\">", 1);
    (page_headers(), html).into_response()
}

pub async fn web_asset(Path(name): Path<String>) -> Response {
    let ctype = if name.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else if name.ends_with(".woff2") {
        "font/woff2"
    } else {
        "text/html; charset=utf-8"
    };
    let mut h = static_headers(ctype);
    if name.ends_with(".woff2") {
        // A font never changes under its name (a new version gets a new
        // one), and re-fetching 160 KB per page on a clinic link is waste.
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    }
    match super::assets::asset(&name) {
        Some(b) => (h, b).into_response(),
        None => ApiError::NotFound("file").into_response(),
    }
}

// ------------------------------------------------------------------ signaling

/// The signaling WebSocket. The upgrade request carries the session cookie
/// (browsers send it with same-origin WebSocket handshakes); the socket is
/// accepted without one so the page learns why it cannot join
/// (`session_ended`) instead of seeing a bare connection failure.
pub async fn signaling(State(s): S, caller: Result<Caller, ApiError>, ws: WebSocketUpgrade) -> Response {
    let caller = caller.ok();
    ws.max_message_size(MAX_SIGNAL_BYTES)
        .max_frame_size(MAX_SIGNAL_BYTES)
        .on_upgrade(move |socket| session(s, caller, socket))
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
                return s
                    .sfu
                    .tokens
                    .verify(&token, crate::clock::unix_secs())
                    .map_err(|e| match e {
                        TokenError::Expired => (ErrorCode::ExpiredToken, "this invitation has expired".into()),
                        _ => (ErrorCode::BadToken, "this invitation is not valid".into()),
                    });
            }
            Ok(_) => return Err((ErrorCode::NotJoined, "the first message must be join".into())),
            Err(e) => return Err((ErrorCode::BadMessage, e)),
        }
    }
}

/// Why a joined participant may not stay: checked at join and every
/// `RECHECK` after, so a disabled account, an ended session or a cancelled
/// request drops its participants within seconds, even when the change
/// came from another process (`medrelay user disable`). A database error
/// keeps the participant (one failed read must not end a consultation).
async fn may_stay(s: &Services, session: &str, account: &str, owner: &RoomOwner) -> Result<(), (ErrorCode, String)> {
    let (idle, max) = session_limits_ms(s);
    let check = accounts::check_session_hash(s.index.pool(), session, now_ms(), idle, max).await;
    match check {
        Ok(SessionCheck::Valid { user, .. }) if user.username == account => {}
        Ok(_) => {
            return Err((
                ErrorCode::SessionEnded,
                "your login session ended or your account was disabled".into(),
            ));
        }
        Err(e) => warn!(error = %e, "cannot re-check a signaling session"),
    }
    if let RoomOwner::Request(id) = owner {
        match requests::get(s.index.pool(), *id).await {
            Ok(Some(r)) if r.state == "scheduled" => {}
            Ok(_) => {
                return Err((
                    ErrorCode::RoomClosed,
                    "the consultation request was cancelled or finished".into(),
                ));
            }
            Err(e) => warn!(error = %e, "cannot re-check a consultation request"),
        }
    }
    Ok(())
}

async fn session(s: Arc<Services>, caller: Option<Caller>, mut ws: WebSocket) {
    let claims = match await_join(&s, &mut ws).await {
        Ok(c) => c,
        Err((code, why)) => {
            s.sfu.metrics.signal_errors.fetch_add(1, Relaxed);
            return close(&mut ws, code, &why).await;
        }
    };
    // The token is good; it works only with a session of its own account.
    let Some(caller) = caller else {
        s.sfu.metrics.signal_errors.fetch_add(1, Relaxed);
        return close(
            &mut ws,
            ErrorCode::SessionEnded,
            "log in first, then open the link again",
        )
        .await;
    };
    if caller.user.username != claims.account {
        s.sfu.metrics.signal_errors.fetch_add(1, Relaxed);
        return close(
            &mut ws,
            ErrorCode::BadToken,
            "this invitation belongs to another account",
        )
        .await;
    }
    let room = claims.room.clone();
    let owner = match s.sfu.ask(|reply| Command::Owner { room, reply }).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return close(&mut ws, ErrorCode::RoomClosed, "this room no longer exists").await,
        Err(_) => return close(&mut ws, ErrorCode::Internal, "the media engine is not running").await,
    };
    if let Err((code, why)) = may_stay(&s, &caller.session, &claims.account, &owner).await {
        if code == ErrorCode::RoomClosed {
            let _ = close_room_now(&s, &claims.room).await;
        }
        return close(&mut ws, code, &why).await;
    }
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
            account: claims.account.clone(),
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
    // Ends the session when the participant may no longer stay (see
    // `may_stay`), checked every RECHECK, spread over the interval so many
    // participants are not all checked at once.
    let watch = async {
        let first = RECHECK.mul_f64(rand::random::<f64>());
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + first, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            recheck.tick().await;
            if let Err((code, why)) = may_stay(&s, &caller.session, &claims.account, &owner).await {
                if code == ErrorCode::RoomClosed {
                    let _ = close_room_now(&s, &claims.room).await;
                }
                debug!(room = %claims.room, participant = %claims.participant, "participant may no longer stay");
                return (code, why);
            }
        }
    };
    signal_session::run(&s, ws, rx, &claims.participant, conn, watch).await;
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
