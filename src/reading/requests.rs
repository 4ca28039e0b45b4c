//! Consultation requests: a clinic doctor asks for a live consultation about
//! a patient and some studies; an expert accepts and schedules it; both
//! join the request's SFU room at the time, with the studies in the shared
//! viewer. The rules are a pure function; the database applies them.

use crate::store::Pool;
use sqlx::Row;

use super::access::{Caller, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqState {
    Requested,
    Scheduled,
    Cancelled,
    Done,
}

impl ReqState {
    pub fn parse(s: &str) -> Option<ReqState> {
        Some(match s {
            "requested" => ReqState::Requested,
            "scheduled" => ReqState::Scheduled,
            "cancelled" => ReqState::Cancelled,
            "done" => ReqState::Done,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ReqState::Requested => "requested",
            ReqState::Scheduled => "scheduled",
            ReqState::Cancelled => "cancelled",
            ReqState::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqAction {
    Accept { scheduled_ms: i64 },
    Reschedule { scheduled_ms: i64 },
    Cancel,
    Join,
    Finish,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("only experts can accept consultation requests")]
    NotAnExpert,
    #[error("not allowed for your role")]
    Forbidden,
    #[error("a {0} request cannot be {1}")]
    Invalid(&'static str, &'static str),
    #[error("the scheduled time must be in the future")]
    InPast,
    #[error("the consultation opens 15 minutes before its scheduled time")]
    TooEarly,
}

/// How early before the scheduled time the room opens.
pub const JOIN_EARLY_MS: i64 = 15 * 60 * 1000;

/// The next state, or why not. `expert` is the accepting expert, if any.
pub fn decide(
    state: ReqState,
    scheduled_ms: Option<i64>,
    expert: Option<&str>,
    action: &ReqAction,
    who: Role,
    username: &str,
    now_ms: i64,
) -> Result<ReqState, RequestError> {
    let verb = match action {
        ReqAction::Accept { .. } => "accepted",
        ReqAction::Reschedule { .. } => "rescheduled",
        ReqAction::Cancel => "cancelled",
        ReqAction::Join => "joined",
        ReqAction::Finish => "finished",
    };
    let invalid = || RequestError::Invalid(state.as_str(), verb);
    match (state, action) {
        (ReqState::Requested, ReqAction::Accept { scheduled_ms }) => {
            if who != Role::Expert {
                return Err(RequestError::NotAnExpert);
            }
            if *scheduled_ms < now_ms - 60_000 {
                return Err(RequestError::InPast);
            }
            Ok(ReqState::Scheduled)
        }
        (ReqState::Scheduled, ReqAction::Reschedule { scheduled_ms }) => {
            if who == Role::Expert && expert != Some(username) {
                return Err(RequestError::Forbidden);
            }
            if *scheduled_ms < now_ms - 60_000 {
                return Err(RequestError::InPast);
            }
            Ok(ReqState::Scheduled)
        }
        (ReqState::Requested | ReqState::Scheduled, ReqAction::Cancel) => {
            if who == Role::Expert && state == ReqState::Scheduled && expert != Some(username) {
                return Err(RequestError::Forbidden);
            }
            Ok(ReqState::Cancelled)
        }
        (ReqState::Scheduled, ReqAction::Join) => {
            if who == Role::Expert && expert != Some(username) {
                return Err(RequestError::Forbidden);
            }
            if scheduled_ms.is_some_and(|t| now_ms < t - JOIN_EARLY_MS) {
                return Err(RequestError::TooEarly);
            }
            Ok(ReqState::Scheduled)
        }
        (ReqState::Scheduled, ReqAction::Finish) => {
            // The consultation's parties end it: its expert, the clinic, an admin.
            if who == Role::Expert && expert != Some(username) {
                return Err(RequestError::Forbidden);
            }
            Ok(ReqState::Done)
        }
        _ => Err(invalid()),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Request {
    pub id: i64,
    pub clinic_id: String,
    pub requested_by: String,
    pub requested_by_name: String,
    pub patient_id: String,
    pub patient_name: String,
    pub question: String,
    pub study_uids: Vec<String>,
    pub urgency: String,
    pub preferred_from_ms: Option<i64>,
    pub preferred_to_ms: Option<i64>,
    pub state: String,
    pub expert: Option<String>,
    pub expert_name: Option<String>,
    pub scheduled_ms: Option<i64>,
    pub room_id: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

const SELECT: &str = "SELECT c.*, COALESCE(a.display_name, c.requested_by) AS requested_by_name,
    e.display_name AS expert_name FROM consult_requests c
    LEFT JOIN users a ON a.username = c.requested_by LEFT JOIN users e ON e.username = c.expert";

fn from_row(r: &crate::store::DbRow) -> Request {
    let uids: String = r.get("study_uids");
    Request {
        id: r.get("id"),
        clinic_id: r.get("clinic_id"),
        requested_by: r.get("requested_by"),
        requested_by_name: r.get("requested_by_name"),
        patient_id: r.get("patient_id"),
        patient_name: r.get("patient_name"),
        question: r.get("question"),
        study_uids: serde_json::from_str(&uids).unwrap_or_default(),
        urgency: r.get("urgency"),
        preferred_from_ms: r.get("preferred_from_ms"),
        preferred_to_ms: r.get("preferred_to_ms"),
        state: r.get("state"),
        expert: r.get("expert"),
        expert_name: r.get("expert_name"),
        scheduled_ms: r.get("scheduled_ms"),
        room_id: r.get("room_id"),
        cancel_reason: r.get("cancel_reason"),
        created_ms: r.get("created_ms"),
        updated_ms: r.get("updated_ms"),
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewRequest {
    #[serde(default)]
    pub patient_id: String,
    #[serde(default)]
    pub patient_name: String,
    pub question: String,
    #[serde(default)]
    pub study_uids: Vec<String>,
    #[serde(default = "routine")]
    pub urgency: String,
    pub preferred_from_ms: Option<i64>,
    pub preferred_to_ms: Option<i64>,
}

fn routine() -> String {
    "routine".into()
}

pub async fn create(
    pool: &Pool,
    clinic_id: &str,
    by: &str,
    r: &NewRequest,
    now_ms: i64,
) -> Result<Request, sqlx::Error> {
    let id: i64 = sqlx::query(
        "INSERT INTO consult_requests (clinic_id, requested_by, patient_id, patient_name, question, study_uids,
           urgency, preferred_from_ms, preferred_to_ms, state, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'requested', $10, $11) RETURNING id",
    )
    .bind(clinic_id)
    .bind(by)
    .bind(&r.patient_id)
    .bind(&r.patient_name)
    .bind(&r.question)
    .bind(serde_json::to_string(&r.study_uids).unwrap_or_else(|_| "[]".into()))
    .bind(&r.urgency)
    .bind(r.preferred_from_ms)
    .bind(r.preferred_to_ms)
    .bind(now_ms)
    .bind(now_ms)
    .fetch_one(pool)
    .await?
    .get(0);
    get(pool, id).await?.ok_or(sqlx::Error::RowNotFound)
}

pub async fn get(pool: &Pool, id: i64) -> Result<Option<Request>, sqlx::Error> {
    Ok(sqlx::query(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(from_row))
}

pub async fn list(pool: &Pool, c: &Caller) -> Result<Vec<Request>, sqlx::Error> {
    let mut qb = crate::store::Sql::new(format!("{SELECT} WHERE 1=1"));
    if let Some(cs) = c.scope.clinics() {
        crate::archive::index::push_in(&mut qb, "c.clinic_id", cs);
    }
    qb.push(
        " ORDER BY CASE c.state WHEN 'requested' THEN 0 WHEN 'scheduled' THEN 1 ELSE 2 END,
          CASE c.urgency WHEN 'stat' THEN 0 WHEN 'urgent' THEN 1 ELSE 2 END, c.created_ms DESC LIMIT 500",
    );
    Ok(qb.build().fetch_all(pool).await?.iter().map(from_row).collect())
}

/// Applies a decided transition; `expected` guards against a concurrent
/// change (two experts accepting at once: one wins).
#[allow(clippy::too_many_arguments)]
pub async fn update(
    pool: &Pool,
    id: i64,
    expected: &str,
    to: ReqState,
    expert: Option<&str>,
    scheduled_ms: Option<i64>,
    cancel_reason: Option<&str>,
    room_id: Option<&str>,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE consult_requests SET state = $1, expert = COALESCE($2, expert), scheduled_ms = COALESCE($3, scheduled_ms),
           cancel_reason = COALESCE($4, cancel_reason), room_id = COALESCE($5, room_id), updated_ms = $6
         WHERE id = $7 AND state = $8",
    )
    .bind(to.as_str())
    .bind(expert)
    .bind(scheduled_ms)
    .bind(cancel_reason)
    .bind(room_id)
    .bind(now_ms)
    .bind(id)
    .bind(expected)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records the request's consultation room if it still is `expected`
/// (None: no room yet); false when another join stored a room first, so
/// two people joining at once end up in one room.
pub async fn set_room(
    pool: &Pool,
    id: i64,
    expected: Option<&str>,
    room: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE consult_requests SET room_id = $1, updated_ms = $2 WHERE id = $3 AND room_id IS NOT DISTINCT FROM $4",
    )
    .bind(room)
    .bind(now_ms)
    .bind(id)
    .bind(expected)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn notify(pool: &Pool, clinic_id: &str, request_id: i64, text: &str, now_ms: i64) {
    let notice = super::notifications::New {
        clinic_id,
        kind: super::notifications::Kind::Request.as_str(),
        study_uid: None,
        request_id: Some(request_id),
        text,
        created_ms: now_ms,
    };
    let r = async {
        let mut conn = pool.acquire().await?;
        super::notifications::insert(&mut conn, &notice).await
    }
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "could not store a notification");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn request_lifecycle_rules() {
        use ReqAction::*;
        use ReqState::*;
        let acc = Accept {
            scheduled_ms: NOW + 3_600_000,
        };
        assert_eq!(
            decide(Requested, None, None, &acc, Role::Clinic, "c", NOW),
            Err(RequestError::NotAnExpert)
        );
        assert_eq!(
            decide(Requested, None, None, &acc, Role::Expert, "e", NOW),
            Ok(Scheduled)
        );
        assert_eq!(
            decide(
                Requested,
                None,
                None,
                &Accept {
                    scheduled_ms: NOW - 3_600_000
                },
                Role::Expert,
                "e",
                NOW
            ),
            Err(RequestError::InPast)
        );
        let later = Some(NOW + 3_600_000);
        // Joining opens 15 minutes early, for the accepting expert and the clinic.
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Join, Role::Expert, "e", NOW),
            Err(RequestError::TooEarly)
        );
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Join, Role::Clinic, "c", NOW + 3_000_000),
            Ok(Scheduled)
        );
        assert_eq!(
            decide(
                Scheduled,
                later,
                Some("e"),
                &Join,
                Role::Expert,
                "other",
                NOW + 3_600_000
            ),
            Err(RequestError::Forbidden)
        );
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Cancel, Role::Clinic, "c", NOW),
            Ok(Cancelled)
        );
        assert_eq!(
            decide(Cancelled, later, Some("e"), &Join, Role::Clinic, "c", NOW),
            Err(RequestError::Invalid("cancelled", "joined"))
        );
        assert_eq!(
            decide(Requested, None, None, &Join, Role::Clinic, "c", NOW),
            Err(RequestError::Invalid("requested", "joined"))
        );
        assert_eq!(
            decide(
                Scheduled,
                later,
                Some("e"),
                &Reschedule {
                    scheduled_ms: NOW + 7_200_000
                },
                Role::Clinic,
                "c",
                NOW
            ),
            Ok(Scheduled)
        );
        // Finished by its parties only, and only once.
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Finish, Role::Expert, "e", NOW),
            Ok(Done)
        );
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Finish, Role::Clinic, "c", NOW),
            Ok(Done)
        );
        assert_eq!(
            decide(Scheduled, later, Some("e"), &Finish, Role::Expert, "other", NOW),
            Err(RequestError::Forbidden)
        );
        assert_eq!(
            decide(Done, later, Some("e"), &Finish, Role::Expert, "e", NOW),
            Err(RequestError::Invalid("done", "finished"))
        );
        assert_eq!(
            decide(Requested, None, None, &Finish, Role::Clinic, "c", NOW),
            Err(RequestError::Invalid("requested", "finished"))
        );
    }
}
