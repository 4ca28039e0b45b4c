//! The clinic's notices ("the report is available", "more images
//! requested", a consultation request's progress): the only code that
//! touches the `notifications` table. Writers pass their own connection so
//! a notice is committed with the change it announces (a signed report, a
//! returned study, a report received over the relay), or not at all.

use crate::store::{Conn, Pool, Sql};
use serde::Serialize;
use sqlx::Row;

/// What a notice is about; the clinic's page and the edge's way back key
/// their texts and icons on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Report,
    Returned,
    Request,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Report => "report",
            Kind::Returned => "returned",
            Kind::Request => "request",
        }
    }
}

/// A notice to record. `kind` is a string because notices relayed from the
/// hub keep the hub's kind verbatim (an edge older or newer than its hub
/// must not drop them).
pub struct New<'a> {
    pub clinic_id: &'a str,
    pub kind: &'a str,
    pub study_uid: Option<&'a str>,
    pub request_id: Option<i64>,
    pub text: &'a str,
    pub created_ms: i64,
}

pub async fn insert(conn: &mut Conn, n: &New<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (clinic_id, kind, study_uid, request_id, text, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(n.clinic_id)
    .bind(n.kind)
    .bind(n.study_uid)
    .bind(n.request_id)
    .bind(n.text)
    .bind(n.created_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A notice as the clinic's page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub id: i64,
    pub clinic_id: String,
    pub kind: String,
    pub study_uid: Option<String>,
    pub request_id: Option<i64>,
    pub text: String,
    pub created_ms: i64,
    pub read: bool,
}

/// Which notices a caller may list: the clinics it sees (`None`: all), and
/// whether only consultation requests (what experts are told about).
pub struct Scope<'a> {
    pub clinics: Option<&'a [String]>,
    pub requests_only: bool,
}

/// The newest hundred notices in scope, newest first.
pub async fn list(pool: &Pool, scope: &Scope<'_>) -> Result<Vec<Notification>, sqlx::Error> {
    let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM notifications WHERE 1=1"));
    if let Some(cs) = scope.clinics {
        crate::archive::index::push_in(&mut qb, "clinic_id", cs);
    }
    if scope.requests_only {
        qb.push(" AND kind = 'request'");
    }
    qb.push(" ORDER BY created_ms DESC, id DESC LIMIT 100");
    Ok(qb.build().fetch_all(pool).await?.iter().map(from_row).collect())
}

const COLUMNS: &str = "id, clinic_id, kind, study_uid, request_id, text, created_ms, read_ms";

fn from_row(r: &crate::store::DbRow) -> Notification {
    Notification {
        id: r.get(0),
        clinic_id: r.get(1),
        kind: r.get(2),
        study_uid: r.get(3),
        request_id: r.get(4),
        text: r.get(5),
        created_ms: r.get(6),
        read: r.get::<Option<i64>, _>(7).is_some(),
    }
}

/// The clinic a notice belongs to, for the caller's access check.
pub async fn clinic_of(pool: &Pool, id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT clinic_id FROM notifications WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Marks a notice read; reading it again keeps the first time.
pub async fn mark_read(pool: &Pool, id: i64, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE notifications SET read_ms = COALESCE(read_ms, $1) WHERE id = $2")
        .bind(now_ms)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A clinic's notices after `after` (the edge's cursor), oldest first, at
/// most `limit`: the relay's way back.
pub async fn since(pool: &Pool, clinic_id: &str, after: i64, limit: i64) -> Result<Vec<Notification>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE clinic_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(clinic_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}
