//! Administration routes (admin role only): accounts, turnaround times,
//! the SR delivery queue, and the audit trail with CSV export.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::require;
use super::error::{ApiError, Code};
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Role, check_affiliation};
use crate::reading::accounts::{self, AccountError};
use crate::reading::audit::{self, AuditQuery};
use crate::store::worklist as wl;

type S = State<Arc<Services>>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        use crate::reading::accounts::PasswordError;
        let text = e.to_string();
        match e {
            AccountError::Exists(name) => ApiError::Conflict(text).code(Code::USER_EXISTS).param("name", name),
            AccountError::NoSuchUser(_) => ApiError::NotFound("user"),
            AccountError::Db(d) => ApiError::db(&d),
            AccountError::Password(PasswordError::Hash(h)) => ApiError::Internal(h),
            AccountError::Password(PasswordError::TooShort(min)) => {
                ApiError::BadRequest(text).code(Code::PASSWORD_SHORT).param("min", min)
            }
            AccountError::BadUsername => ApiError::BadRequest(text).code(Code::BAD_USERNAME),
            AccountError::NeedsClinic => ApiError::BadRequest(text).code(Code::NEEDS_CLINIC),
            AccountError::StoredRole { .. } => ApiError::Internal(text),
        }
    }
}

pub async fn users(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Admin])?;
    Ok(Json(json!({ "users": accounts::list_users(s.index.pool()).await? })))
}

pub async fn add_user(
    State(s): S,
    c: Caller,
    b: Result<Json<accounts::NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require(&c, &[Role::Admin])?;
    let Json(nu) = b.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_affiliation(&s.cfg, nu.clinic_id.as_deref(), nu.hospital_id.as_deref())
        .map_err(|why| ApiError::BadRequest(why).code(Code::UNKNOWN_AFFILIATION))?;
    let u = accounts::create_user(s.index.pool(), &nu, now_ms()).await?;
    audit::record(
        s.index.pool(),
        &c,
        "user_add",
        None,
        Some(&format!("{} ({})", u.username, u.role.as_str())),
    )
    .await;
    Ok((StatusCode::CREATED, Json(json!({ "user": u }))).into_response())
}

pub async fn disable_user(State(s): S, c: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    require(&c, &[Role::Admin])?;
    if name == c.user.username {
        return Err(ApiError::BadRequest("you cannot disable your own account".into()).code(Code::SELF_DISABLE));
    }
    accounts::set_disabled(s.index.pool(), &name, true).await?;
    audit::record(s.index.pool(), &c, "user_disable", None, Some(&name)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Days {
    pub days: Option<i64>,
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied()
}

/// Turnaround per clinic and priority over the last `days`: time from
/// entering the worklist to the first signed report and to delivery.
pub async fn turnaround(State(s): S, c: Caller, Query(q): Query<Days>) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Admin])?;
    let days = q.days.unwrap_or(30).clamp(1, 3650);
    let since = now_ms() - days * 86_400_000;
    let rows = wl::turnaround(s.index.pool(), since).await.map_err(internal)?;
    // (clinic, priority) -> (times to report, times to delivery, studies)
    type Times = (Vec<i64>, Vec<i64>, i64);
    let mut groups: std::collections::BTreeMap<(String, String), Times> = Default::default();
    for r in rows {
        let g = groups.entry((r.clinic_id, r.priority)).or_default();
        g.2 += 1;
        if let Some(t) = r.reported_ms {
            g.0.push(t - r.enqueued_ms);
        }
        if let Some(t) = r.delivered_ms {
            g.1.push(t - r.enqueued_ms);
        }
    }
    let out: Vec<_> = groups
        .into_iter()
        .map(|((clinic, prio), (mut rep, mut del, n))| {
            rep.sort_unstable();
            del.sort_unstable();
            json!({
                "clinic_id": clinic, "priority": prio, "studies": n,
                "reported": rep.len(), "p50_report_ms": percentile(&rep, 0.5), "p90_report_ms": percentile(&rep, 0.9),
                "delivered": del.len(), "p50_deliver_ms": percentile(&del, 0.5), "p90_deliver_ms": percentile(&del, 0.9),
            })
        })
        .collect();
    let now = now_ms();
    let waiting: Vec<_> = wl::waiting(s.index.pool())
        .await
        .map_err(internal)?
        .into_iter()
        .map(|r| {
            json!({
                "clinic_id": r.clinic_id, "priority": r.priority, "count": r.count,
                "oldest_ms": r.oldest_ms, "oldest_waiting_ms": now - r.oldest_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "days": days, "rows": out, "waiting": waiting })))
}

pub async fn audit_log(State(s): S, c: Caller, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    require(&c, &[Role::Admin])?;
    let events = audit::query(s.index.pool(), &q).await.map_err(internal)?;
    audit::record(
        s.index.pool(),
        &c,
        "audit_export",
        None,
        Some(&format!("{} events", events.len())),
    )
    .await;
    if q.format.as_deref() == Some("csv") {
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"medrelay-audit.csv\"",
                ),
            ],
            audit::to_csv(&events),
        )
            .into_response());
    }
    Ok(Json(json!({ "events": events })).into_response())
}

pub async fn deliveries(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Admin])?;
    let d = crate::reading::delivery::list(s.index.pool(), 500)
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "deliveries": d })))
}

/// Instances refused at ingest because their UIDs belong to another
/// clinic's data (or to another study or series), newest first.
pub async fn ingest_refusals(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Admin])?;
    let r = audit::ingest_refusals(s.index.pool(), 200).await.map_err(internal)?;
    Ok(Json(json!({ "refusals": r })))
}
