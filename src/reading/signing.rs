//! Signing a report, and what it sets in motion: the worklist transition,
//! the clinic's notification and the SR delivery (or, with no PACS, the
//! study delivered by the clinic's page).
//!
//! Signing is one IMMEDIATE transaction across the repositories that own
//! those tables (`reports`, `store::worklist`, `notifications`,
//! `delivery`), so a crash (even kill -9) leaves either the old state or
//! the new one, never a signed report without its delivery or a
//! half-written version.

use super::reports::{self, Mode, Report, ReportError};
use super::worklist::{Action, Actor};
use super::{delivery, notifications};
use crate::store::Pool;
use crate::store::worklist as wl;

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
    pool: &Pool,
    study_uid: &str,
    author: &str,
    findings: &str,
    impression: &str,
    plan: &DeliveryPlan,
    now_ms: i64,
) -> Result<Signed, ReportError> {
    reports::check_text(findings, impression, true)?;
    let signed: Result<_, ReportError> = crate::store::immediate(pool, async |conn| {
        let m = reports::mode(conn, study_uid, author, now_ms).await?;
        let v = reports::upsert_draft(conn, study_uid, author, findings, impression, now_ms).await?;
        let amended = matches!(m, Mode::Amend { .. });
        let sr_uid = plan.target.as_ref().map(|_| plan.sr_sop_uid.as_str());
        reports::mark_signed(conn, study_uid, v, amended, sr_uid, now_ms).await?;
        let note = format!("report v{v} signed{}", if amended { " (amendment)" } else { "" });
        let action = match m {
            Mode::Initial => Action::Report,
            Mode::Amend { signed_by } => Action::Amend { signed_by },
        };
        wl::apply(conn, study_uid, &action, Actor::Expert(author), now_ms, Some(&note)).await?;
        let text = if amended {
            format!("An amended report (version {v}) is available")
        } else {
            "The report is available".to_string()
        };
        let notice = notifications::New {
            clinic_id: &plan.clinic_id,
            kind: notifications::Kind::Report.as_str(),
            study_uid: Some(study_uid),
            request_id: None,
            text: &text,
            created_ms: now_ms,
        };
        notifications::insert(conn, &notice).await?;
        let queued = if let Some(target) = &plan.target {
            let d = delivery::NewDelivery {
                study_uid,
                version: v,
                clinic_id: &plan.clinic_id,
                target,
                path: "",
                sop_instance_uid: &plan.sr_sop_uid,
                now_ms,
            };
            delivery::enqueue(conn, &d).await?;
            true
        } else {
            // No PACS: the clinic's page is the delivery.
            wl::apply(
                conn,
                study_uid,
                &Action::Deliver,
                Actor::System,
                now_ms,
                Some("shown on the clinic page"),
            )
            .await?;
            false
        };
        Ok((v, amended, queued))
    })
    .await;
    let (v, amended, delivery_queued) = signed?;
    Ok(Signed {
        report: reports::one(pool, study_uid, v).await?,
        amended,
        delivery_queued,
    })
}
