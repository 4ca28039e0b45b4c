//! The audit trail: who viewed, downloaded, reported or changed what, when
//! and from where. Rows are only ever inserted; admins read and export them.
//!
//! Recording never fails the request it describes (a full disk shows up in
//! the log and in the failed write that follows), but it is awaited, so an
//! answered request has its audit row written.

use crate::store::Pool;
use sqlx::Row;

use super::access::{Caller, Role};

/// As what the `username` of an audit row acted (the `role` column): an
/// account's role, a DICOM peer (its AE title is the username), an edge over
/// the relay link, an API token of a machine client (`token:NAME` is the
/// username), or nobody known (a failed login, a summary row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Account(Role),
    Dicom,
    Relay,
    Token,
    Unknown,
}

impl Actor {
    /// The stored value: the role's own name, "dicom", "relay" or "".
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Account(r) => r.as_str(),
            Actor::Dicom => "dicom",
            Actor::Relay => "relay",
            Actor::Token => "token",
            Actor::Unknown => "",
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn record_raw(
    pool: &Pool,
    at_ms: i64,
    username: &str,
    actor: Actor,
    action: &str,
    study_uid: Option<&str>,
    detail: Option<&str>,
    remote: &str,
) {
    let r = sqlx::query(
        "INSERT INTO audit (at_ms, username, role, action, study_uid, detail, remote) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at_ms)
    .bind(username)
    .bind(actor.as_str())
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

/// Audit action of an instance refused at ingest (see
/// `archive::index::Conflict`), by the SCP or the relay hub.
pub const INGEST_REFUSED: &str = "ingest_refused";

/// Records a refused instance: `who` is the calling AE ([`Actor::Dicom`]) or
/// the edge ([`Actor::Relay`]), `clinic` the sender's clinic. The detail is
/// `key=value` words (UIDs, clinic ids and tokens only: never a patient
/// attribute), read back by [`ingest_refusals`].
pub async fn record_ingest_refusal(
    pool: &Pool,
    at_ms: i64,
    who: &str,
    via: Actor,
    clinic: &str,
    c: &crate::archive::index::Conflict,
    remote: &str,
) {
    let mut detail = format!(
        "level={} reason={} clinic={} sop={} series={}",
        c.level.token(),
        c.reason_token(),
        word(clinic),
        c.sop_instance_uid,
        c.series_uid
    );
    if let Some(owner) = c.owner() {
        detail.push_str(&format!(" owner={}", word(owner)));
    }
    record_raw(
        pool,
        at_ms,
        who,
        via,
        INGEST_REFUSED,
        Some(&c.study_uid),
        Some(&detail),
        remote,
    )
    .await;
}

/// A clinic id as one `key=value` word (ids are short tokens; a space or
/// `=` would split the word).
fn word(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_whitespace() || c == '=' { '_' } else { c })
        .collect()
}

/// One instance refused at ingest, for the admin page.
#[derive(Debug, serde::Serialize, PartialEq)]
pub struct IngestRefusal {
    pub at_ms: i64,
    /// The calling AE title, or the edge's name.
    pub calling_ae: String,
    /// "dicom" (an association) or "relay" (an edge's study).
    pub via: String,
    pub clinic_id: String,
    /// "study", "series" or "instance": the level whose UID collided.
    pub level: String,
    /// "other-clinic", "other-study" or "other-series".
    pub reason: String,
    /// The clinic whose data it collided with (other-clinic only).
    pub owner_clinic: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub remote: Option<String>,
}

/// The latest instances refused at ingest, newest first.
pub async fn ingest_refusals(pool: &Pool, limit: i64) -> Result<Vec<IngestRefusal>, sqlx::Error> {
    let events = query(
        pool,
        &AuditQuery {
            action: Some(INGEST_REFUSED.into()),
            limit: Some(limit),
            ..Default::default()
        },
    )
    .await?;
    Ok(events.into_iter().map(refusal_of).collect())
}

fn refusal_of(e: AuditEvent) -> IngestRefusal {
    let detail = e.detail.unwrap_or_default();
    let get = |k: &str| {
        detail
            .split(' ')
            .find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
    };
    IngestRefusal {
        at_ms: e.at_ms,
        calling_ae: e.username,
        via: e.role,
        clinic_id: get("clinic").unwrap_or_default(),
        level: get("level").unwrap_or_default(),
        reason: get("reason").unwrap_or_default(),
        owner_clinic: get("owner"),
        study_uid: e.study_uid,
        series_uid: get("series").unwrap_or_default(),
        sop_instance_uid: get("sop").unwrap_or_default(),
        remote: e.remote,
    }
}

pub async fn record(pool: &Pool, c: &Caller, action: &str, study_uid: Option<&str>, detail: Option<&str>) {
    record_raw(
        pool,
        crate::clock::now_ms(),
        &c.user.username,
        Actor::Account(c.user.role),
        action,
        study_uid,
        detail,
        &c.remote,
    )
    .await;
}

/// Caps the audit rows one kind of anonymous event (failed logins) may write
/// per window, so a flood of attempts cannot fill the disk: the first
/// `max_rows` of a window are itemised, the rest only counted, and the count
/// is written as one summary row when the window has passed. Pure: time is
/// passed in.
#[derive(Debug)]
pub struct RowBudget {
    window: std::time::Duration,
    max_rows: u32,
    started: Option<std::time::Instant>,
    written: u32,
    suppressed: u64,
}

/// Rows not itemised in a window that has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    pub window_secs: u64,
}

impl RowBudget {
    pub fn new(window: std::time::Duration, max_rows: u32) -> Self {
        RowBudget {
            window,
            max_rows,
            started: None,
            written: 0,
            suppressed: 0,
        }
    }

    /// Closes the window if it has passed; its suppressed count, if any.
    pub fn flush(&mut self, now: std::time::Instant) -> Option<Suppressed> {
        let start = self.started?;
        if now.saturating_duration_since(start) < self.window {
            return None;
        }
        self.started = None;
        self.written = 0;
        let count = std::mem::take(&mut self.suppressed);
        (count > 0).then_some(Suppressed {
            count,
            window_secs: self.window.as_secs(),
        })
    }

    /// Whether this event gets its own row, and the summary of a window
    /// that closed before it.
    pub fn admit(&mut self, now: std::time::Instant) -> (bool, Option<Suppressed>) {
        let closed = self.flush(now);
        self.started.get_or_insert(now);
        if self.written < self.max_rows {
            self.written += 1;
            (true, closed)
        } else {
            self.suppressed += 1;
            (false, closed)
        }
    }
}

/// Writes the summary row of failed logins that were not itemised.
pub async fn record_suppressed(pool: &Pool, action: &str, s: Suppressed) {
    let detail = format!(
        "{} more not itemised (at most one row per attempt for the first ones of each {} s)",
        s.count, s.window_secs
    );
    record_raw(
        pool,
        crate::clock::now_ms(),
        "",
        Actor::Unknown,
        action,
        None,
        Some(&detail),
        "",
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

pub async fn query(pool: &Pool, q: &AuditQuery) -> Result<Vec<AuditEvent>, sqlx::Error> {
    let mut qb =
        crate::store::Sql::new("SELECT at_ms, username, role, action, study_uid, detail, remote FROM audit WHERE 1=1");
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
/// prefixed with a quote so an exported audit log cannot run anything. A
/// leading TAB or CR counts too: spreadsheets skip it and then read the
/// formula behind it (OWASP CSV injection).
pub fn to_csv(events: &[AuditEvent]) -> String {
    fn cell(v: &str) -> String {
        let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
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
    fn refusal_details_read_back() {
        let e = AuditEvent {
            at_ms: 5,
            username: "CT_B".into(),
            role: "dicom".into(),
            action: INGEST_REFUSED.into(),
            study_uid: Some("1.2.3".into()),
            detail: Some(
                "level=series reason=other-clinic clinic=clinic-b sop=1.2.3.4 series=1.2.3.5 owner=clinic-a".into(),
            ),
            remote: Some("127.0.0.1:5".into()),
        };
        let r = refusal_of(e);
        assert_eq!(
            (
                r.level.as_str(),
                r.reason.as_str(),
                r.clinic_id.as_str(),
                r.owner_clinic.as_deref()
            ),
            ("series", "other-clinic", "clinic-b", Some("clinic-a"))
        );
        assert_eq!(
            (r.sop_instance_uid.as_str(), r.series_uid.as_str()),
            ("1.2.3.4", "1.2.3.5")
        );
        assert_eq!(word("a b=c"), "a_b_c");
    }

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
        for lead in ["\t=1+2", "\r=1+2", "\t@SUM(A1)"] {
            let e = AuditEvent {
                at_ms: 0,
                username: lead.into(),
                role: String::new(),
                action: "login_failed".into(),
                study_uid: None,
                detail: None,
                remote: None,
            };
            let csv = to_csv(&[e]);
            let row = &csv[csv.find("\r\n").unwrap() + 2..];
            let third = row.split(',').nth(2).unwrap();
            assert!(
                third.starts_with('\'') || third.starts_with("\"'"),
                "{lead:?} not defused: {third:?}"
            );
        }
    }

    #[test]
    fn failed_login_rows_are_capped_per_window_and_summarised() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut b = RowBudget::new(Duration::from_secs(60), 3);
        let admitted: Vec<bool> = (0..10).map(|i| b.admit(t0 + Duration::from_millis(i)).0).collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert_eq!(b.flush(t0 + Duration::from_secs(30)), None, "window still open");
        let (own, closed) = b.admit(t0 + Duration::from_secs(61));
        assert!(own, "a new window itemises again");
        assert_eq!(
            closed,
            Some(Suppressed {
                count: 7,
                window_secs: 60
            })
        );
        assert_eq!(b.flush(t0 + Duration::from_secs(200)), None, "nothing suppressed since");
    }
}
