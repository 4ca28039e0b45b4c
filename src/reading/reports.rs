//! Reports: drafts, signing, amendments, and what signing sets in motion
//! (the worklist transition, the clinic's notification, the SR delivery).
//!
//! Versions are rows keyed by (study, version) and never rewritten once
//! signed: an amendment is a new version and the old one is marked
//! `amended`. Signing is one IMMEDIATE transaction covering the report row,
//! the worklist transition, the notification and the delivery row, so a
//! crash (even kill -9) leaves either the old state or the new one, never a
//! signed report without its delivery or a half-written version.

use sqlx::{Row, SqlitePool};

use crate::archive::index::{WorklistApplyError, worklist_apply_in};
use crate::reading::worklist::{Action, Actor};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("claim the study before writing its report")]
    NotClaimed,
    #[error("the study is being read by {0}")]
    ClaimedByOther(String),
    #[error("only the author of the signed report can amend it")]
    NotAuthor,
    #[error("a draft by {0} is open for this study")]
    DraftByOther(String),
    #[error("findings or impression must not be empty")]
    Empty,
    #[error("report text is limited to 64 KiB per field")]
    TooLong,
    #[error("a study that is {0} cannot be reported")]
    WrongState(String),
    #[error("study is not on the worklist")]
    NotOnWorklist,
    #[error(transparent)]
    Worklist(#[from] WorklistApplyError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub study_uid: String,
    pub version: i64,
    /// draft, signed, or amended (a signed version replaced by a later one).
    pub status: String,
    pub findings: String,
    pub impression: String,
    pub author: String,
    pub author_name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub signed_ms: Option<i64>,
    pub sr_sop_uid: Option<String>,
}

const REPORT_SELECT: &str = "SELECT r.*, COALESCE(u.display_name, r.author) AS author_name FROM reports r
    LEFT JOIN users u ON u.username = r.author";

fn report_from(r: &sqlx::sqlite::SqliteRow) -> Report {
    Report {
        study_uid: r.get("study_uid"),
        version: r.get("version"),
        status: r.get("status"),
        findings: r.get("findings"),
        impression: r.get("impression"),
        author: r.get("author"),
        author_name: r.get("author_name"),
        created_ms: r.get("created_ms"),
        updated_ms: r.get("updated_ms"),
        signed_ms: r.get("signed_ms"),
        sr_sop_uid: r.get("sr_sop_uid"),
    }
}

/// Every version, newest first; drafts only for experts.
pub async fn versions(pool: &SqlitePool, study_uid: &str, with_drafts: bool) -> Result<Vec<Report>, ReportError> {
    let rows = sqlx::query(&format!(
        "{REPORT_SELECT} WHERE r.study_uid = ? AND (? OR r.status != 'draft') ORDER BY r.version DESC"
    ))
    .bind(study_uid)
    .bind(with_drafts)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(report_from).collect())
}

pub async fn latest(pool: &SqlitePool, study_uid: &str, with_drafts: bool) -> Result<Option<Report>, ReportError> {
    Ok(versions(pool, study_uid, with_drafts).await?.into_iter().next())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorklistEntry {
    pub state: String,
    pub priority: String,
    pub clinical_question: Option<String>,
    pub claimed_by: Option<String>,
    pub claimed_by_name: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub enqueued_ms: i64,
    pub updated_ms: i64,
    pub detail: Option<String>,
}

pub async fn worklist_entry(pool: &SqlitePool, study_uid: &str) -> Result<Option<WorklistEntry>, ReportError> {
    let row = sqlx::query(
        "SELECT w.*, u.display_name FROM worklist w LEFT JOIN users u ON u.username = w.claimed_by WHERE w.study_uid = ?",
    )
    .bind(study_uid)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| WorklistEntry {
        state: r.get("state"),
        priority: r.get("priority"),
        clinical_question: r.get("clinical_question"),
        claimed_by: r.get("claimed_by"),
        claimed_by_name: r.get("display_name"),
        lease_until_ms: r.get("lease_until_ms"),
        enqueued_ms: r.get("enqueued_ms"),
        updated_ms: r.get("updated_ms"),
        detail: r.get("detail"),
    }))
}

fn check_text(findings: &str, impression: &str, for_sign: bool) -> Result<(), ReportError> {
    if findings.len() > 65536 || impression.len() > 65536 {
        return Err(ReportError::TooLong);
    }
    if for_sign && findings.trim().is_empty() && impression.trim().is_empty() {
        return Err(ReportError::Empty);
    }
    Ok(())
}

/// What the author may do with the study's report right now.
enum Mode {
    /// First report while holding the claim.
    Initial,
    /// Amending a signed report (the study is reported or delivered).
    Amend,
}

async fn mode(
    conn: &mut sqlx::SqliteConnection,
    study_uid: &str,
    author: &str,
    now_ms: i64,
) -> Result<Mode, ReportError> {
    let w = sqlx::query("SELECT state, claimed_by, lease_until_ms FROM worklist WHERE study_uid = ?")
        .bind(study_uid)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ReportError::NotOnWorklist)?;
    let state: String = w.get(0);
    match state.as_str() {
        "claimed" => {
            let by: Option<String> = w.get(1);
            let until: Option<i64> = w.get(2);
            match by {
                Some(b) if b == author => {
                    if until.unwrap_or(0) <= now_ms {
                        return Err(ReportError::NotClaimed);
                    }
                    Ok(Mode::Initial)
                }
                Some(b) => Err(ReportError::ClaimedByOther(b)),
                None => Err(ReportError::NotClaimed),
            }
        }
        "reported" | "delivered" => {
            let last_author: Option<String> = sqlx::query(
                "SELECT author FROM reports WHERE study_uid = ? AND status = 'signed' ORDER BY version DESC LIMIT 1",
            )
            .bind(study_uid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.get(0));
            if last_author.as_deref() == Some(author) {
                Ok(Mode::Amend)
            } else {
                Err(ReportError::NotAuthor)
            }
        }
        "new" => Err(ReportError::NotClaimed),
        other => Err(ReportError::WrongState(other.to_string())),
    }
}

async fn begin(pool: &SqlitePool) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, ReportError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(conn)
}

async fn finish<T>(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    r: Result<T, ReportError>,
) -> Result<T, ReportError> {
    match r {
        Ok(v) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// The open draft (author, version), if any.
async fn open_draft(conn: &mut sqlx::SqliteConnection, study_uid: &str) -> Result<Option<(String, i64)>, ReportError> {
    Ok(
        sqlx::query("SELECT author, version FROM reports WHERE study_uid = ? AND status = 'draft'")
            .bind(study_uid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| (r.get(0), r.get(1))),
    )
}

async fn next_version(conn: &mut sqlx::SqliteConnection, study_uid: &str) -> Result<i64, ReportError> {
    Ok(
        sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM reports WHERE study_uid = ?")
            .bind(study_uid)
            .fetch_one(&mut *conn)
            .await?
            .get(0),
    )
}

/// Writes the draft (creating it, or updating the author's open draft).
async fn upsert_draft(
    conn: &mut sqlx::SqliteConnection,
    study_uid: &str,
    author: &str,
    findings: &str,
    impression: &str,
    now_ms: i64,
) -> Result<i64, ReportError> {
    match open_draft(conn, study_uid).await? {
        Some((a, _)) if a != author => Err(ReportError::DraftByOther(a)),
        Some((_, v)) => {
            sqlx::query(
                "UPDATE reports SET findings = ?, impression = ?, updated_ms = ? WHERE study_uid = ? AND version = ?",
            )
            .bind(findings)
            .bind(impression)
            .bind(now_ms)
            .bind(study_uid)
            .bind(v)
            .execute(&mut *conn)
            .await?;
            Ok(v)
        }
        None => {
            let v = next_version(conn, study_uid).await?;
            sqlx::query(
                "INSERT INTO reports (study_uid, version, status, findings, impression, author, created_ms, updated_ms)
                 VALUES (?, ?, 'draft', ?, ?, ?, ?, ?)",
            )
            .bind(study_uid)
            .bind(v)
            .bind(findings)
            .bind(impression)
            .bind(author)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok(v)
        }
    }
}

async fn one(pool: &SqlitePool, study_uid: &str, version: i64) -> Result<Report, ReportError> {
    let r = sqlx::query(&format!("{REPORT_SELECT} WHERE r.study_uid = ? AND r.version = ?"))
        .bind(study_uid)
        .bind(version)
        .fetch_one(pool)
        .await?;
    Ok(report_from(&r))
}

pub async fn save_draft(
    pool: &SqlitePool,
    study_uid: &str,
    author: &str,
    findings: &str,
    impression: &str,
    now_ms: i64,
) -> Result<Report, ReportError> {
    check_text(findings, impression, false)?;
    let mut conn = begin(pool).await?;
    let r = async {
        mode(&mut conn, study_uid, author, now_ms).await?;
        upsert_draft(&mut conn, study_uid, author, findings, impression, now_ms).await
    }
    .await;
    let v = finish(conn, r).await?;
    one(pool, study_uid, v).await
}

/// Where the signed report goes besides the clinic's page.
pub struct DeliveryPlan {
    pub clinic_id: String,
    /// The clinic PACS (`AE@HOST:PORT`), if configured.
    pub target: Option<String>,
    /// SOP Instance UID for the SR (assigned now, so every retry re-sends
    /// the same instance and a PACS sees duplicates, not new documents).
    pub sr_sop_uid: String,
}

pub struct Signed {
    pub report: Report,
    pub amended: bool,
    pub delivery_queued: bool,
}

/// Signs the study's report in one transaction. See the module docs.
#[allow(clippy::too_many_arguments)]
pub async fn sign(
    pool: &SqlitePool,
    study_uid: &str,
    author: &str,
    findings: &str,
    impression: &str,
    plan: &DeliveryPlan,
    now_ms: i64,
) -> Result<Signed, ReportError> {
    check_text(findings, impression, true)?;
    let mut conn = begin(pool).await?;
    let r = async {
        let m = mode(&mut conn, study_uid, author, now_ms).await?;
        let v = upsert_draft(&mut conn, study_uid, author, findings, impression, now_ms).await?;
        let amended = matches!(m, Mode::Amend);
        if amended {
            sqlx::query("UPDATE reports SET status = 'amended' WHERE study_uid = ? AND status = 'signed'")
                .bind(study_uid)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("UPDATE reports SET status = 'signed', signed_ms = ?, updated_ms = ?, sr_sop_uid = ? WHERE study_uid = ? AND version = ?")
            .bind(now_ms)
            .bind(now_ms)
            .bind(plan.target.as_ref().map(|_| plan.sr_sop_uid.clone()))
            .bind(study_uid)
            .bind(v)
            .execute(&mut *conn)
            .await?;
        let note = format!("report v{v} signed{}", if amended { " (amendment)" } else { "" });
        match m {
            Mode::Initial => {
                worklist_apply_in(&mut conn, study_uid, &Action::Report, Actor::Expert(author), now_ms, Some(&note)).await?;
            }
            Mode::Amend => {
                sqlx::query(
                    "INSERT INTO worklist_transitions (study_uid, from_state, to_state, actor, at_ms, detail)
                     SELECT ?, state, 'reported', ?, ?, ? FROM worklist WHERE study_uid = ?",
                )
                .bind(study_uid)
                .bind(author)
                .bind(now_ms)
                .bind(&note)
                .bind(study_uid)
                .execute(&mut *conn)
                .await?;
                // Delivered again once the amendment arrives.
                sqlx::query("UPDATE worklist SET state = 'reported', claimed_by = ?, updated_ms = ? WHERE study_uid = ?")
                    .bind(author)
                    .bind(now_ms)
                    .bind(study_uid)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let text = if amended {
            format!("An amended report (version {v}) is available")
        } else {
            "The report is available".to_string()
        };
        sqlx::query("INSERT INTO notifications (clinic_id, kind, study_uid, text, created_ms) VALUES (?, 'report', ?, ?, ?)")
            .bind(&plan.clinic_id)
            .bind(study_uid)
            .bind(&text)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        let queued = if let Some(target) = &plan.target {
            sqlx::query(
                "INSERT INTO deliveries (study_uid, version, clinic_id, target, path, sop_instance_uid, state, attempts, next_attempt_ms, created_ms)
                 VALUES (?, ?, ?, ?, '', ?, 'pending', 0, ?, ?)",
            )
            .bind(study_uid)
            .bind(v)
            .bind(&plan.clinic_id)
            .bind(target)
            .bind(&plan.sr_sop_uid)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            true
        } else {
            // No PACS: the clinic's page is the delivery.
            sqlx::query("UPDATE worklist SET state = 'delivered', updated_ms = ? WHERE study_uid = ?")
                .bind(now_ms)
                .bind(study_uid)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO worklist_transitions (study_uid, from_state, to_state, actor, at_ms, detail)
                 VALUES (?, 'reported', 'delivered', 'system', ?, 'shown on the clinic page')",
            )
            .bind(study_uid)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            false
        };
        Ok((v, amended, queued))
    }
    .await;
    let (v, amended, delivery_queued) = finish(conn, r).await?;
    Ok(Signed {
        report: one(pool, study_uid, v).await?,
        amended,
        delivery_queued,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Template {
    pub name: &'static str,
    pub findings: &'static str,
    pub impression: &'static str,
}

/// Structured starting points per modality; experts edit freely.
pub fn templates(modality: &str) -> Vec<Template> {
    let m = modality.to_ascii_uppercase();
    let mut out = Vec::new();
    if m.contains("CT") {
        out.push(Template {
            name: "CT chest",
            findings: "Lungs: no focal consolidation, nodule or mass.\nPleura: no effusion or pneumothorax.\nMediastinum: no lymphadenopathy. Heart size normal.\nBones: no aggressive lesion.",
            impression: "No acute cardiopulmonary abnormality.",
        });
        out.push(Template {
            name: "CT head (non-contrast)",
            findings: "No intracranial haemorrhage, mass effect or midline shift.\nGrey-white differentiation preserved.\nVentricles and sulci normal for age.\nCalvarium intact.",
            impression: "No acute intracranial abnormality.",
        });
        out.push(Template {
            name: "CT abdomen/pelvis",
            findings: "Liver, spleen, pancreas, adrenals and kidneys: unremarkable.\nBowel: no obstruction or wall thickening.\nNo free fluid or free air.\nNo lymphadenopathy.",
            impression: "No acute abdominal or pelvic abnormality.",
        });
    }
    if m.contains("MR") {
        out.push(Template {
            name: "MR brain",
            findings: "No restricted diffusion.\nNo mass, haemorrhage or abnormal enhancement.\nVentricles and extra-axial spaces normal.",
            impression: "Normal MR brain.",
        });
    }
    if m.contains("CR") || m.contains("DX") || m.contains("DR") {
        out.push(Template {
            name: "Chest radiograph",
            findings: "Lungs clear. No pleural effusion or pneumothorax.\nCardiomediastinal silhouette within normal limits.\nNo acute osseous abnormality.",
            impression: "No acute cardiopulmonary process.",
        });
    }
    if m.contains("US") {
        out.push(Template {
            name: "Ultrasound abdomen",
            findings: "Liver normal in size and echotexture. Gallbladder without stones.\nCommon bile duct not dilated. Kidneys normal in size without hydronephrosis.\nSpleen normal.",
            impression: "Normal abdominal ultrasound.",
        });
    }
    out.push(Template {
        name: "Free text",
        findings: "",
        impression: "",
    });
    out
}
