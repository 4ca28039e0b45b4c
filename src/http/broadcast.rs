//! Teaching broadcasts over HTTP: an expert starts one for the clinics their
//! hospital serves; those clinics' doctors find it in a list and join it as
//! receive-only viewers; colleagues of the same hospital join as presenters.
//!
//! Scope follows the reading workflow's: a broadcast belongs to its
//! presenter's hospital, and a clinic doctor sees it only if that hospital
//! serves their clinic. Anything out of scope answers 404, as elsewhere, so
//! broadcast ids cannot be probed. The list lives in memory beside the SFU's
//! rooms, which do not survive a restart either.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::require;
use super::error::ApiError;
use crate::app::Services;
use crate::reading::access::{Caller, Role};
use crate::sfu::BroadcastInfo;
use crate::sfu::engine::{Command, NewParticipant, SfuError};
use crate::sfu::protocol::{Role as SfuRole, RoomKind};
use crate::sfu::tokens::Claims;

type S = State<Arc<Services>>;

/// Live broadcasts kept per gateway; more is a configuration mistake.
const MAX_BROADCASTS: usize = 64;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `c` may see (list, join) broadcast `b`.
fn visible(s: &Services, c: &Caller, b: &BroadcastInfo) -> bool {
    match c.role() {
        Role::Admin => true,
        Role::Expert => c.user.hospital_id.as_deref() == Some(b.hospital_id.as_str()),
        Role::Clinic => s
            .cfg
            .hospitals
            .iter()
            .find(|h| h.id == b.hospital_id)
            .is_some_and(|h| c.user.clinic_id.as_ref().is_some_and(|k| h.serves.contains(k))),
    }
}

fn join_json(s: &Services, room: &str, pid: &str, presenter: bool, exp: u64) -> serde_json::Value {
    let token = s.sfu.tokens.mint(&Claims {
        room: room.to_string(),
        participant: pid.to_string(),
        expires_unix: exp,
    });
    // The token rides in the fragment, which browsers never send to the
    // server, so it stays out of access logs and Referer headers.
    // Viewers hold no camera or microphone: the page asks for none.
    let receive_only = if presenter { "" } else { "&nocam=1&nomic=1" };
    json!({
        "participant": pid,
        "presenter": presenter,
        "token": token,
        "url": format!("/broadcast#token={token}{receive_only}"),
        "expires_unix": exp,
    })
}

/// A broadcast with what its room says now.
struct Live {
    info: BroadcastInfo,
    on_air: bool,
    connected: usize,
}

/// Drops broadcasts whose room is gone (closed, expired, or the gateway
/// restarted), then returns the rest.
async fn live(s: &Services) -> Result<Vec<Live>, ApiError> {
    let all: Vec<BroadcastInfo> = s.sfu.broadcasts().values().cloned().collect();
    let mut out = Vec::with_capacity(all.len());
    for b in all {
        let room = b.id.clone();
        let status = s
            .sfu
            .ask(|reply| Command::RoomStatus { room, reply })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match status {
            Some(st) => out.push(Live {
                info: b,
                on_air: st.live,
                connected: st.connected.len(),
            }),
            None => {
                s.sfu.broadcasts().remove(&b.id);
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBroadcast {
    pub title: String,
}

pub async fn create(
    State(s): S,
    c: Caller,
    body: Result<Json<NewBroadcast>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require(&c, &[Role::Expert])?;
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let title = req.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 120 || title.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("title: 1-120 printable characters".into()));
    }
    let hospital_id = c
        .user
        .hospital_id
        .clone()
        .ok_or_else(|| ApiError::Forbidden("an expert without a hospital has no audience".into()))?;
    if live(&s).await?.len() >= MAX_BROADCASTS {
        return Err(ApiError::Unprocessable(format!(
            "{MAX_BROADCASTS} broadcasts are live; end one first"
        )));
    }
    let (room, pid) = super::consult::create_room_for(
        &s,
        RoomKind::Broadcast,
        &title,
        NewParticipant {
            name: c.user.display_name.clone(),
            role: SfuRole::Expert,
        },
    )
    .await?;
    let info = BroadcastInfo {
        id: room.clone(),
        title,
        hospital_id,
        presenter: c.user.username.clone(),
        presenter_name: c.user.display_name.clone(),
        started_unix: unix_now(),
    };
    s.sfu.broadcasts().insert(info.id.clone(), info.clone());
    let exp = unix_now() + s.sfu.room_ttl.as_secs();
    let body = json!({ "broadcast": info, "join": join_json(&s, &room, &pid, true, exp) });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let mut out: Vec<Live> = live(&s)
        .await?
        .into_iter()
        .filter(|b| visible(&s, &c, &b.info))
        .collect();
    out.sort_by(|a, b| {
        b.info
            .started_unix
            .cmp(&a.info.started_unix)
            .then(a.info.id.cmp(&b.info.id))
    });
    // Each entry: the broadcast, whether it is on air, and who is connected
    // (presenters and viewers), so a clinic sees which one has started.
    let list: Vec<serde_json::Value> = out
        .into_iter()
        .map(|b| {
            let mut v = json!(b.info);
            v["on_air"] = json!(b.on_air);
            v["connected"] = json!(b.connected);
            v
        })
        .collect();
    Ok(Json(json!({ "broadcasts": list })))
}

fn find(s: &Services, c: &Caller, id: &str) -> Result<BroadcastInfo, ApiError> {
    s.sfu
        .broadcasts()
        .get(id)
        .filter(|b| visible(s, c, b))
        .cloned()
        .ok_or(ApiError::NotFound("broadcast"))
}

/// A join link: presenters for experts of the broadcast's hospital, viewers
/// (receive only) for everyone else who may see it.
pub async fn join(State(s): S, c: Caller, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let b = find(&s, &c, &id)?;
    let presenter = c.is(Role::Expert);
    let added = s
        .sfu
        .ask(|reply| Command::AddParticipant {
            room: b.id.clone(),
            participant: NewParticipant {
                name: c.user.display_name.clone(),
                role: if presenter { SfuRole::Expert } else { SfuRole::Clinic },
            },
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (pid, _, _) = match added {
        Ok(p) => p,
        Err(SfuError::NoSuchRoom) => {
            s.sfu.broadcasts().remove(&b.id);
            return Err(ApiError::NotFound("broadcast"));
        }
        Err(e) => return Err(super::consult::sfu_err(e)),
    };
    let exp = unix_now() + s.sfu.room_ttl.as_secs();
    Ok(Json(
        json!({ "broadcast": b, "join": join_json(&s, &b.id, &pid, presenter, exp) }),
    ))
}

/// Ends a broadcast: its presenter or an admin.
pub async fn end(State(s): S, c: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let b = find(&s, &c, &id)?;
    if !(c.is(Role::Admin) || c.user.username == b.presenter) {
        return Err(ApiError::Forbidden(
            "only its presenter or an admin ends a broadcast".into(),
        ));
    }
    let room = b.id.clone();
    s.sfu
        .ask(|reply| Command::CloseRoom { room, reply })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    s.sfu.broadcasts().remove(&b.id);
    Ok(StatusCode::NO_CONTENT)
}
