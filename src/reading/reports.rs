//! Reports: drafts, versions and amendments; the only code that touches
//! the `reports` table. Signing, which also moves the worklist, tells the
//! clinic and queues the delivery, is `reading::signing`.
//!
//! Versions are rows keyed by (study, version) and never rewritten once
//! signed: an amendment is a new version and the old one is marked
//! `amended`.

use crate::store::{Conn, Pool};
use sqlx::Row;

use crate::reading::worklist::State;
use crate::store::worklist::{self as wl, WorklistApplyError};

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

fn report_from(r: &crate::store::DbRow) -> Report {
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
pub async fn versions(pool: &Pool, study_uid: &str, with_drafts: bool) -> Result<Vec<Report>, ReportError> {
    let rows = sqlx::query(&format!(
        "{REPORT_SELECT} WHERE r.study_uid = $1 AND ($2 OR r.status != 'draft') ORDER BY r.version DESC"
    ))
    .bind(study_uid)
    .bind(with_drafts)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(report_from).collect())
}

pub async fn latest(pool: &Pool, study_uid: &str, with_drafts: bool) -> Result<Option<Report>, ReportError> {
    Ok(versions(pool, study_uid, with_drafts).await?.into_iter().next())
}

pub use crate::store::worklist::WorklistEntry;

pub async fn worklist_entry(pool: &Pool, study_uid: &str) -> Result<Option<WorklistEntry>, ReportError> {
    Ok(wl::entry(pool, study_uid).await?)
}

pub(super) fn check_text(findings: &str, impression: &str, for_sign: bool) -> Result<(), ReportError> {
    if findings.len() > 65536 || impression.len() > 65536 {
        return Err(ReportError::TooLong);
    }
    if for_sign && findings.trim().is_empty() && impression.trim().is_empty() {
        return Err(ReportError::Empty);
    }
    Ok(())
}

/// What the author may do with the study's report right now.
pub(super) enum Mode {
    /// First report while holding the claim.
    Initial,
    /// Amending a signed report (the study is reported or delivered) by
    /// its author, `signed_by`.
    Amend { signed_by: String },
}

pub(super) async fn mode(
    conn: &mut crate::store::Conn,
    study_uid: &str,
    author: &str,
    now_ms: i64,
) -> Result<Mode, ReportError> {
    let state = wl::state(&mut *conn, study_uid)
        .await?
        .ok_or(ReportError::NotOnWorklist)?;
    match state {
        State::Claimed { by, lease_until_ms } => {
            if by != author {
                return Err(ReportError::ClaimedByOther(by));
            }
            if lease_until_ms <= now_ms {
                return Err(ReportError::NotClaimed);
            }
            Ok(Mode::Initial)
        }
        State::Reported { .. } | State::Delivered => {
            let last_author: Option<String> = sqlx::query(
                "SELECT author FROM reports WHERE study_uid = $1 AND status = 'signed' ORDER BY version DESC LIMIT 1",
            )
            .bind(study_uid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.get(0));
            match last_author {
                Some(a) if a == author => Ok(Mode::Amend { signed_by: a }),
                _ => Err(ReportError::NotAuthor),
            }
        }
        State::New => Err(ReportError::NotClaimed),
        other => Err(ReportError::WrongState(other.name().to_string())),
    }
}

/// The open draft (author, version), if any.
async fn open_draft(conn: &mut crate::store::Conn, study_uid: &str) -> Result<Option<(String, i64)>, ReportError> {
    Ok(
        sqlx::query("SELECT author, version FROM reports WHERE study_uid = $1 AND status = 'draft'")
            .bind(study_uid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| (r.get(0), r.get(1))),
    )
}

async fn next_version(conn: &mut crate::store::Conn, study_uid: &str) -> Result<i64, ReportError> {
    Ok(
        sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM reports WHERE study_uid = $1")
            .bind(study_uid)
            .fetch_one(&mut *conn)
            .await?
            .get(0),
    )
}

/// Writes the draft (creating it, or updating the author's open draft).
pub(super) async fn upsert_draft(
    conn: &mut crate::store::Conn,
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
                "UPDATE reports SET findings = $1, impression = $2, updated_ms = $3 WHERE study_uid = $4 AND version = $5",
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
                 VALUES ($1, $2, 'draft', $3, $4, $5, $6, $7)",
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

/// Records the SR a version was delivered as (the delivery worker, when
/// the clinic's PACS acknowledged it), in the caller's transaction.
pub async fn set_sr_uid(conn: &mut Conn, study_uid: &str, version: i64, sr_sop_uid: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reports SET sr_sop_uid = $1 WHERE study_uid = $2 AND version = $3")
        .bind(sr_sop_uid)
        .bind(study_uid)
        .bind(version)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn one(pool: &Pool, study_uid: &str, version: i64) -> Result<Report, ReportError> {
    let r = sqlx::query(&format!("{REPORT_SELECT} WHERE r.study_uid = $1 AND r.version = $2"))
        .bind(study_uid)
        .bind(version)
        .fetch_one(pool)
        .await?;
    Ok(report_from(&r))
}

pub async fn save_draft(
    pool: &Pool,
    study_uid: &str,
    author: &str,
    findings: &str,
    impression: &str,
    now_ms: i64,
) -> Result<Report, ReportError> {
    check_text(findings, impression, false)?;
    let v = crate::store::immediate(pool, async |conn| {
        mode(conn, study_uid, author, now_ms).await?;
        upsert_draft(conn, study_uid, author, findings, impression, now_ms).await
    })
    .await?;
    one(pool, study_uid, v).await
}

/// Marks version `v` signed (and the earlier signed version amended, for
/// an amendment), recording the SR UID it will be delivered as when it has
/// a delivery, in the caller's transaction (the signing service's).
pub(super) async fn mark_signed(
    conn: &mut Conn,
    study_uid: &str,
    v: i64,
    amended: bool,
    sr_sop_uid: Option<&str>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    if amended {
        sqlx::query("UPDATE reports SET status = 'amended' WHERE study_uid = $1 AND status = 'signed'")
            .bind(study_uid)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("UPDATE reports SET status = 'signed', signed_ms = $1, updated_ms = $2, sr_sop_uid = $3 WHERE study_uid = $4 AND version = $5")
        .bind(now_ms)
        .bind(now_ms)
        .bind(sr_sop_uid)
        .bind(study_uid)
        .bind(v)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Template {
    pub name: &'static str,
    /// BCP 47 language of the text (`en`, `zh`): the report panel lists
    /// the page language's templates first.
    pub language: &'static str,
    pub findings: &'static str,
    pub impression: &'static str,
}

/// Which modalities a template is offered for (substrings of the study's
/// modality list, upper case).
struct Entry {
    modalities: &'static [&'static str],
    template: Template,
}

const fn entry(
    modalities: &'static [&'static str],
    language: &'static str,
    name: &'static str,
    findings: &'static str,
    impression: &'static str,
) -> Entry {
    Entry {
        modalities,
        template: Template {
            name,
            language,
            findings,
            impression,
        },
    }
}

const CT: &[&str] = &["CT"];
const MR: &[&str] = &["MR"];
const XR: &[&str] = &["CR", "DX", "DR"];
const US: &[&str] = &["US"];
const ECG: &[&str] = &["ECG"];
/// Offered whatever the modality.
const ANY: &[&str] = &[""];

/// The templates, English and Chinese. The Chinese ones follow the
/// structure of Chinese radiology reports: 影像所见 (findings, organ by
/// organ) and 诊断意见 (impression).
const TEMPLATES: &[Entry] = &[
    entry(
        CT,
        "en",
        "CT chest",
        "Lungs: no focal consolidation, nodule or mass.\nPleura: no effusion or pneumothorax.\nMediastinum: no lymphadenopathy. Heart size normal.\nBones: no aggressive lesion.",
        "No acute cardiopulmonary abnormality.",
    ),
    entry(
        CT,
        "en",
        "CT head (non-contrast)",
        "No intracranial haemorrhage, mass effect or midline shift.\nGrey-white differentiation preserved.\nVentricles and sulci normal for age.\nCalvarium intact.",
        "No acute intracranial abnormality.",
    ),
    entry(
        CT,
        "en",
        "CT abdomen/pelvis",
        "Liver, spleen, pancreas, adrenals and kidneys: unremarkable.\nBowel: no obstruction or wall thickening.\nNo free fluid or free air.\nNo lymphadenopathy.",
        "No acute abdominal or pelvic abnormality.",
    ),
    entry(
        CT,
        "zh",
        "CT 头颅平扫",
        "脑实质内未见明显异常密度影，灰白质分界清楚。\n脑室系统大小、形态未见异常，脑沟、脑裂、脑池未见增宽。\n中线结构居中。\n颅骨骨质未见明显异常。",
        "颅脑CT平扫未见明显异常。",
    ),
    entry(
        CT,
        "zh",
        "CT 胸部平扫",
        "胸廓对称，气管居中。\n两肺纹理清晰，两肺野内未见明显异常密度影及结节影。\n两侧肺门不大，纵隔内未见明显肿大淋巴结。\n心影大小、形态未见异常。\n两侧胸腔未见积液，胸膜未见增厚。",
        "胸部CT平扫未见明显异常。",
    ),
    entry(
        CT,
        "zh",
        "CT 上腹部平扫",
        "肝脏大小、形态正常，肝实质密度均匀，未见明显异常密度影。\n胆囊不大，壁不厚，腔内未见明显异常密度影。\n胰腺、脾脏大小、形态及密度未见异常。\n双肾大小、形态正常，未见明显异常密度影。\n腹膜后未见明显肿大淋巴结，腹腔内未见积液。",
        "上腹部CT平扫未见明显异常。",
    ),
    entry(
        MR,
        "en",
        "MR brain",
        "No restricted diffusion.\nNo mass, haemorrhage or abnormal enhancement.\nVentricles and extra-axial spaces normal.",
        "Normal MR brain.",
    ),
    entry(
        MR,
        "zh",
        "MR 头颅平扫",
        "脑实质内未见明显异常信号影，DWI未见弥散受限。\n脑室系统大小、形态未见异常，脑沟、脑裂、脑池未见增宽。\n中线结构居中。\n颅骨及头皮软组织未见明显异常。",
        "颅脑MRI平扫未见明显异常。",
    ),
    entry(
        XR,
        "en",
        "Chest radiograph",
        "Lungs clear. No pleural effusion or pneumothorax.\nCardiomediastinal silhouette within normal limits.\nNo acute osseous abnormality.",
        "No acute cardiopulmonary process.",
    ),
    entry(
        XR,
        "zh",
        "DR 胸部正位片",
        "胸廓对称，骨质未见明显异常。\n两肺纹理清晰，两肺野内未见明显实变影及结节影。\n两侧肺门不大。\n心影大小、形态在正常范围内。\n两侧膈面光整，肋膈角锐利。",
        "心肺膈未见明显异常。",
    ),
    entry(
        US,
        "en",
        "Ultrasound abdomen",
        "Liver normal in size and echotexture. Gallbladder without stones.\nCommon bile duct not dilated. Kidneys normal in size without hydronephrosis.\nSpleen normal.",
        "Normal abdominal ultrasound.",
    ),
    entry(
        US,
        "zh",
        "超声 腹部（肝胆胰脾肾）",
        "肝脏大小、形态正常，包膜光整，实质回声均匀，肝内血管走行清晰。\n胆囊大小正常，壁光滑，腔内未见明显异常回声。\n胆总管未见扩张。\n胰腺、脾脏大小、形态正常，回声均匀。\n双肾大小、形态正常，集合系统未见分离。",
        "肝、胆、胰、脾、双肾未见明显异常。",
    ),
    entry(
        ECG,
        "en",
        "Resting 12-lead ECG",
        "Sinus rhythm, rate __ bpm.\nPR interval __ ms, QRS duration __ ms, QTc __ ms.\nNormal axis.\nNo ST-segment deviation or T-wave abnormality.",
        "Normal ECG.",
    ),
    entry(
        ECG,
        "zh",
        "常规十二导联心电图",
        "窦性心律，心率__次/分。\nP波形态正常，PR间期__ms。\nQRS波群时限__ms，形态正常；QTc __ms。\n电轴正常。\nST段未见明显偏移，T波未见异常。",
        "窦性心律，正常心电图。",
    ),
    entry(ANY, "en", "Free text", "", ""),
    entry(ANY, "zh", "自由文本", "", ""),
];

/// Structured starting points per modality, in every language; experts
/// edit freely. `modality` is the study's list (`CT`, `CT,SR`…).
pub fn templates(modality: &str) -> Vec<Template> {
    let m = modality.to_ascii_uppercase();
    TEMPLATES
        .iter()
        .filter(|e| e.modalities.iter().any(|x| m.contains(x)))
        .map(|e| e.template.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_modality_has_english_and_chinese_templates() {
        for m in ["CT", "MR", "DX", "CR", "DR", "US", "ECG", "CT,SR"] {
            let t = templates(m);
            for lang in ["en", "zh"] {
                let n = t
                    .iter()
                    .filter(|x| x.language == lang && !x.findings.is_empty())
                    .count();
                assert!(n >= 1, "{m}: no {lang} template");
            }
        }
        let ct = templates("CT");
        let head = ct.iter().find(|t| t.name == "CT 头颅平扫").expect("CT 头颅平扫");
        assert!(head.findings.starts_with("脑实质内未见明显异常密度影"));
        assert_eq!(head.impression, "颅脑CT平扫未见明显异常。");
        // Only what fits the modality, and free text always.
        assert!(ct.iter().all(|t| !t.name.starts_with("MR")));
        let other = templates("OT");
        assert_eq!(
            other.iter().map(|t| (t.name, t.language)).collect::<Vec<_>>(),
            [("Free text", "en"), ("自由文本", "zh")]
        );
    }
}
