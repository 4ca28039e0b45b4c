//! The audit trail: who viewed, downloaded, reported or changed what, when
//! and from where. Rows are only ever inserted; admins read and export them.
//!
//! Recording never fails the request it describes (a full disk shows up in
//! the log and in the failed write that follows), but it is awaited, so an
//! answered request has its audit row written.

use sqlx::{Row, SqlitePool};

use super::access::Caller;

#[allow(clippy::too_many_arguments)]
pub async fn record_raw(
    pool: &SqlitePool,
    at_ms: i64,
    username: &str,
    role: &str,
    action: &str,
    study_uid: Option<&str>,
    detail: Option<&str>,
    remote: &str,
) {
    let r = sqlx::query(
        "INSERT INTO audit (at_ms, username, role, action, study_uid, detail, remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(at_ms)
    .bind(username)
    .bind(role)
    .bind(action)
    .bind(study_uid)
    .bind(detail)
    .bind(remote)
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, action, "could not write an audit record");
    }
}

pub async fn record(pool: &SqlitePool, c: &Caller, action: &str, study_uid: Option<&str>, detail: Option<&str>) {
    record_raw(
        pool,
        crate::dicom::scp::now_ms(),
        &c.user.username,
        c.user.role.as_str(),
        action,
        study_uid,
        detail,
        &c.remote,
    )
    .await;
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub user: Option<String>,
    pub study_uid: Option<String>,
    pub action: Option<String>,
    pub limit: Option<i64>,
    pub format: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct AuditEvent {
    pub at_ms: i64,
    pub username: String,
    pub role: String,
    pub action: String,
    pub study_uid: Option<String>,
    pub detail: Option<String>,
    pub remote: Option<String>,
}

pub async fn query(pool: &SqlitePool, q: &AuditQuery) -> Result<Vec<AuditEvent>, sqlx::Error> {
    let mut qb =
        sqlx::QueryBuilder::new("SELECT at_ms, username, role, action, study_uid, detail, remote FROM audit WHERE 1=1");
    if let Some(v) = q.from_ms {
        qb.push(" AND at_ms >= ").push_bind(v);
    }
    if let Some(v) = q.to_ms {
        qb.push(" AND at_ms <= ").push_bind(v);
    }
    if let Some(v) = q.user.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND username = ").push_bind(v.to_string());
    }
    if let Some(v) = q.study_uid.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND study_uid = ").push_bind(v.to_string());
    }
    if let Some(v) = q.action.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND action = ").push_bind(v.to_string());
    }
    qb.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
        .push_bind(q.limit.unwrap_or(1000).clamp(1, 100_000));
    let rows = qb.build().fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|r| AuditEvent {
            at_ms: r.get(0),
            username: r.get(1),
            role: r.get(2),
            action: r.get(3),
            study_uid: r.get(4),
            detail: r.get(5),
            remote: r.get(6),
        })
        .collect())
}

/// RFC 4180 CSV; cells that a spreadsheet would treat as a formula are
/// prefixed with a quote so an exported audit log cannot run anything.
pub fn to_csv(events: &[AuditEvent]) -> String {
    fn cell(v: &str) -> String {
        let v = if v.starts_with(['=', '+', '-', '@']) {
            format!("'{v}")
        } else {
            v.to_string()
        };
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v
        }
    }
    let mut out = String::from("time_utc,at_ms,username,role,action,study_uid,detail,remote\r\n");
    for e in events {
        let t = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms.max(0) as u64),
        );
        let row = [
            t.to_string(),
            e.at_ms.to_string(),
            cell(&e.username),
            cell(&e.role),
            cell(&e.action),
            cell(e.study_uid.as_deref().unwrap_or("")),
            cell(e.detail.as_deref().unwrap_or("")),
            cell(e.remote.as_deref().unwrap_or("")),
        ];
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let e = AuditEvent {
            at_ms: 0,
            username: "dr,li".into(),
            role: "expert".into(),
            action: "view".into(),
            study_uid: Some("1.2.3".into()),
            detail: Some("=HYPERLINK(\"x\")".into()),
            remote: None,
        };
        let csv = to_csv(&[e]);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.starts_with("1970-01-01T00:00:00Z,0,\"dr,li\",expert,view,1.2.3,"));
        assert!(line.contains("\"'=HYPERLINK(\"\"x\"\")\""));
    }
}
