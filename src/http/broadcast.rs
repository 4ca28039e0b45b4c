//! Teaching broadcasts over HTTP: an expert starts one for the clinics their
//! hospital serves, naming colleagues who present with it; those clinics'
//! doctors and the hospital's other experts find it in a list and join it
//! as receive-only viewers.
//!
//! Scope follows the reading workflow's: a broadcast belongs to its
//! presenter's hospital (with no `[[hospital]]` configured, to the one
//! implicit hospital that serves every clinic), and a clinic doctor sees it
//! only if that hospital serves their clinic. Anything out of scope answers
//! 404, as elsewhere, so broadcast ids cannot be probed. A broadcast is its
//! room's owner in the engine (`RoomOwner::Broadcast`): the list is read
//! from the live rooms, so a broadcast whose room ended (emptied, expired,
//! closed, the gateway restarted) is gone from it too.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::require;
use super::consult::{close_room_now, invitation, link_json, sfu_err};
use super::error::{ApiError, Code};
use super::room_access;
use crate::http::Services;
use crate::reading::access::{Caller, Role};
use crate::reading::accounts;
use crate::reading::audit;
use crate::sfu::BroadcastInfo;
use crate::sfu::engine::{Command, RoomOwner, SfuError};
use crate::sfu::protocol::RoomKind;

type S = State<Arc<Services>>;

/// Live broadcasts kept per gateway; more is a configuration mistake.
const MAX_BROADCASTS: usize = 64;
/// Colleagues named to present with the starter.
const MAX_CO_PRESENTERS: usize = 7;

/// A broadcast with what its room says now.
struct Live {
    id: String,
    info: BroadcastInfo,
    on_air: bool,
    connected: usize,
}

fn broadcast_json(id: &str, b: &BroadcastInfo) -> serde_json::Value {
    let mut v = json!(b);
    v["id"] = json!(id);
    v
}

/// The live broadcasts (the rooms the engine still has).
async fn live(s: &Services) -> Result<Vec<Live>, ApiError> {
    let rooms = s
        .sfu
        .ask(|reply| Command::ListRooms {
            kind: RoomKind::Broadcast,
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(rooms
        .into_iter()
        .filter_map(|r| match r.owner {
            RoomOwner::Broadcast(info) => Some(Live {
                id: r.id,
                info,
                on_air: r.live,
                connected: r.connected,
            }),
            _ => None,
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBroadcast {
    pub title: String,
    /// Usernames of colleagues (experts of the same hospital) who present
    /// with the starter; everyone else watches.
    #[serde(default)]
    pub presenters: Vec<String>,
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
        return Err(ApiError::BadRequest("title: 1-120 printable characters".into())
            .code(Code::BAD_TITLE)
            .param("max", 120));
    }
    if req.presenters.len() > MAX_CO_PRESENTERS {
        return Err(
            ApiError::BadRequest(format!("presenters: at most {MAX_CO_PRESENTERS} colleagues"))
                .code(Code::TOO_MANY_PARTICIPANTS)
                .param("max", MAX_CO_PRESENTERS),
        );
    }
    let hospital_id = room_access::broadcast_hospital(&c, &s.cfg).map_err(|why| ApiError::Forbidden(why.into()))?;
    let mut presenters = vec![c.user.username.clone()];
    for name in &req.presenters {
        if presenters.contains(name) {
            return Err(ApiError::BadRequest(format!("{name:?} is named twice"))
                .code(Code::NAMED_TWICE)
                .param("name", name.as_str()));
        }
        if !accounts::valid_username(name) {
            return Err(ApiError::BadRequest(format!("{name:?} is not a username"))
                .code(Code::NOT_A_USERNAME)
                .param("name", name.as_str()));
        }
        // Co-presenters are experts of the starter's hospital.
        accounts::get_user(s.index.pool(), name)
            .await?
            .filter(|u| u.role == Role::Expert && !u.disabled && room_access::same_hospital(&c.user, u, &s.cfg))
            .ok_or(ApiError::NotFound("user"))?;
        presenters.push(name.clone());
    }
    if live(&s).await?.len() >= MAX_BROADCASTS {
        return Err(
            ApiError::Unprocessable(format!("{MAX_BROADCASTS} broadcasts are live; end one first"))
                .code(Code::ROOM_LIMIT),
        );
    }
    let info = BroadcastInfo {
        title: title.clone(),
        hospital_id,
        presenter: c.user.username.clone(),
        presenter_name: c.user.display_name.clone(),
        presenters,
        started_unix: crate::clock::unix_secs(),
    };
    let owner = RoomOwner::Broadcast(info.clone());
    let me = invitation(&c.user, &owner);
    let created = s
        .sfu
        .ask(|reply| Command::CreateRoom {
            kind: RoomKind::Broadcast,
            title,
            owner,
            ttl: s.sfu.room_ttl,
            participants: vec![me],
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(sfu_err)?;
    let inv = created
        .participants
        .first()
        .ok_or_else(|| ApiError::Internal("room created without its presenter".into()))?;
    audit::record(s.index.pool(), &c, "broadcast_start", None, Some(&created.id)).await;
    let body = json!({
        "broadcast": broadcast_json(&created.id, &info),
        "join": join_json(&s, &created.id, inv),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The join part of a response: the participant's link, and whether it
/// presents.
fn join_json(s: &Services, room: &str, inv: &crate::sfu::engine::Invited) -> serde_json::Value {
    let link = link_json(s, room, RoomKind::Broadcast, inv, None);
    json!({
        "participant": link["id"],
        "presenter": inv.participant.role == crate::sfu::protocol::Role::Expert,
        "token": link["token"],
        "url": link["url"],
        "expires_unix": link["expires_unix"],
    })
}

pub async fn list(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let mut out: Vec<Live> = live(&s)
        .await?
        .into_iter()
        .filter(|b| room_access::sees_broadcast(&c.user, &b.info, &s.cfg))
        .collect();
    out.sort_by(|a, b| b.info.started_unix.cmp(&a.info.started_unix).then(a.id.cmp(&b.id)));
    // Each entry: the broadcast, whether it is on air, and how many are
    // connected (presenters and viewers), so a clinic sees which one has
    // started.
    let list: Vec<serde_json::Value> = out
        .into_iter()
        .map(|b| {
            let mut v = broadcast_json(&b.id, &b.info);
            v["on_air"] = json!(b.on_air);
            v["connected"] = json!(b.connected);
            v
        })
        .collect();
    Ok(Json(json!({ "broadcasts": list })))
}

async fn find(s: &Services, c: &Caller, id: &str) -> Result<BroadcastInfo, ApiError> {
    live(s)
        .await?
        .into_iter()
        .find(|b| b.id == id && room_access::sees_broadcast(&c.user, &b.info, &s.cfg))
        .map(|b| b.info)
        .ok_or(ApiError::NotFound("broadcast"))
}

/// A join link: presenters for the broadcast's named presenters, viewers
/// (receive only) for everyone else who may see it.
pub async fn join(State(s): S, c: Caller, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let b = find(&s, &c, &id).await?;
    let participant = invitation(&c.user, &RoomOwner::Broadcast(b.clone()));
    let added = s
        .sfu
        .ask(|reply| Command::AddParticipant {
            room: id.clone(),
            participant,
            reply,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let inv = match added {
        Ok(p) => p,
        Err(SfuError::NoSuchRoom) => return Err(ApiError::NotFound("broadcast")),
        Err(e) => return Err(sfu_err(e)),
    };
    Ok(Json(
        json!({ "broadcast": broadcast_json(&id, &b), "join": join_json(&s, &id, &inv) }),
    ))
}

/// Ends a broadcast: the presenter who started it, or an admin.
pub async fn end(State(s): S, c: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let b = find(&s, &c, &id).await?;
    if !(c.is(Role::Admin) || c.user.username == b.presenter) {
        return Err(ApiError::Forbidden(
            "only its presenter or an admin ends a broadcast".into(),
        ));
    }
    close_room_now(&s, &id).await?;
    audit::record(s.index.pool(), &c, "broadcast_end", None, Some(&id)).await;
    Ok(StatusCode::NO_CONTENT)
}
