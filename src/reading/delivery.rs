//! Durable delivery of signed reports to clinic PACS as DICOM Basic Text SR.
//!
//! The queue is the `deliveries` table (migration 3). The report-signing
//! route inserts a `pending` row in the same transaction as the signed
//! report, with the SR's SOP Instance UID already assigned, then calls
//! [`DeliveryHandle::wake`]. The worker started by [`start`]:
//!
//! 1. takes the due rows (`pending`/`failing`, `next_attempt_ms <= now`),
//!    oldest first, holding back a version while an earlier version of the
//!    same study for the same target is still unsent, so a PACS never gets an
//!    amendment before the report it amends;
//! 2. builds each SR from the index if its spool file is missing and writes
//!    it durably (tmp file, fsync, rename, directory fsync) on a blocking
//!    thread;
//! 3. sends all due SRs of one target over one association (C-STORE, 60 s
//!    limit), targets concurrently;
//! 4. marks each `sent`, or `failing` with the reason and a later attempt
//!    from the [`RetryPolicy`] (5 s doubling to 10 min). It retries forever:
//!    the report must arrive. A retry re-sends the same SOP Instance UID, so
//!    a PACS that stored it but whose response was lost sees a duplicate.
//!
//! The spool is a node-local cache, deliberately outside the archive's
//! blob store and index: an SR's bytes are a pure function of its signed
//! report row (UID assigned at signing, no clock read while building), so
//! any node rebuilds the identical file when its own copy is missing (the
//! unit test below checks a rebuild is byte-identical). Filing the SR as an
//! archive instance instead would add an instance to the study it reports
//! on, which reopens a reported study (status back to receiving, stability
//! timer, previews) for every signature.
//!
//! Time is passed into everything except the worker loop itself. Logs carry
//! delivery ids and study UIDs, never patient data.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Conn, Pool};
use futures::StreamExt;
use serde::Serialize;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::sr::{self, InstanceRef, SrError, SrInput};
use super::worklist::{Action as WorkAction, Actor};
use crate::archive::index::{Index, IndexError};
use crate::config::Config;
use crate::dicom::scu::{self, FileResult, Target};
use crate::store::worklist::{self as wl, WorklistApplyError};

/// Longest `last_error` kept, in characters.
pub const MAX_ERROR_CHARS: usize = 500;

// ------------------------------------------------------------ retry policy

/// Exponential backoff: `first_delay_ms` after the first failure, doubling
/// per failure, never more than `max_delay_ms`. No jitter: one worker sends
/// everything, so there is no herd of clients to spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_delay_ms: i64,
    pub max_delay_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay_ms: 5_000,
            max_delay_ms: 10 * 60_000,
        }
    }
}

impl RetryPolicy {
    /// Wait after `attempts` failed attempts (counting the one that just
    /// failed; 0 is treated as 1).
    pub fn delay_ms(&self, attempts: u32) -> i64 {
        let first = self.first_delay_ms.max(0);
        let cap = self.max_delay_ms.max(first);
        let doublings = attempts.saturating_sub(1).min(62);
        first.checked_mul(1_i64 << doublings).map_or(cap, |d| d.min(cap))
    }

    pub fn next_attempt_ms(&self, attempts: u32, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.delay_ms(attempts))
    }
}

/// When to try again after `attempts` failed attempts, with the default
/// policy (5 s, 10 s, 20 s, … capped at 10 min).
pub fn next_attempt_ms(attempts: u32, now_ms: i64) -> i64 {
    RetryPolicy::default().next_attempt_ms(attempts, now_ms)
}

// ------------------------------------------------------------ errors, rows

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("building the SR: {0}")]
    Sr(#[from] SrError),
    #[error("writing the SR: {0}")]
    Io(#[from] std::io::Error),
    #[error("report version {version} of study {study_uid} does not exist")]
    NoReport { study_uid: String, version: i64 },
    #[error("report version {version} of study {study_uid} is not signed")]
    NotSigned { study_uid: String, version: i64 },
    #[error("study {0} is not in the index")]
    NoStudy(String),
    #[error("SOP Instance UID {0:?} is not a valid UID")]
    BadUid(String),
    #[error("blocking task failed: {0}")]
    Join(String),
}

/// One row of the `deliveries` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub study_uid: String,
    pub version: i64,
    pub clinic_id: String,
    /// `AE@HOST:PORT`.
    pub target: String,
    /// Spool file of the SR; empty until built.
    #[serde(skip)]
    pub path: String,
    pub sop_instance_uid: String,
    /// "pending", "sent" or "failing".
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub sent_ms: Option<i64>,
}

/// Deliveries per state, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub sent: i64,
    pub failing: i64,
}

const COLUMNS: &str = "d.id, d.study_uid, d.version, d.clinic_id, d.target, d.path, d.sop_instance_uid, d.state,
    d.attempts, d.next_attempt_ms, d.last_error, d.created_ms, d.sent_ms";

/// Unsent, and no earlier version of the same study for the same target is
/// still unsent (an amendment waits for the report it amends).
///
/// Reports for a clinic behind an edge (`edge:NAME`) are not sent by this
/// worker: they travel over the relay link (`due_for_target`).
const SENDABLE: &str = "d.state IN ('pending', 'failing') AND d.target NOT LIKE 'edge:%'
    AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.study_uid = d.study_uid AND e.target = d.target
                    AND e.version < d.version AND e.state != 'sent')";

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ------------------------------------------------------------ queries

/// Deliveries due at `now_ms`, oldest first, at most `limit`.
pub async fn due(pool: &Pool, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, DeliveryError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries d WHERE {SENDABLE} AND d.next_attempt_ms <= $1
         ORDER BY d.created_ms, d.id LIMIT $2"
    ))
    .bind(now_ms)
    .bind(limit.max(1))
    .fetch_all(pool)
    .await?)
}

/// How long deliveries taken by [`claim_due`] stay with the worker that
/// took them: far longer than sending a batch of SRs takes, short enough
/// that the deliveries of a node that died go out from another soon.
pub const CLAIM_MS: i64 = 5 * 60_000;

/// Takes the deliveries due at `now_ms` (at most `limit`, oldest first) for
/// this worker: their next attempt moves to `now_ms + claim_ms`, so another
/// node's worker skips them until they are sent, fail (which sets the real
/// next attempt) or the claim runs out (the node died). One statement; on
/// PostgreSQL rows another node is taking at the same moment are skipped
/// (`FOR UPDATE SKIP LOCKED`), on SQLite its single writer serializes.
pub async fn claim_due(pool: &Pool, now_ms: i64, claim_ms: i64, limit: i64) -> Result<Vec<Delivery>, DeliveryError> {
    let skip_locked = match crate::store::Backend::of_pool(pool) {
        crate::store::Backend::Sqlite => "",
        crate::store::Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
    };
    let mut rows: Vec<Delivery> = sqlx::query_as(&format!(
        "UPDATE deliveries SET next_attempt_ms = $1 WHERE id IN (
           SELECT d.id FROM deliveries d WHERE {SENDABLE} AND d.next_attempt_ms <= $2
           ORDER BY d.created_ms, d.id LIMIT $3{skip_locked})
         RETURNING {}",
        COLUMNS.replace("d.", "")
    ))
    .bind(now_ms.saturating_add(claim_ms))
    .bind(now_ms)
    .bind(limit.max(1))
    .fetch_all(pool)
    .await?;
    rows.sort_by_key(|d| (d.created_ms, d.id));
    Ok(rows)
}

/// Unsent reports for one target, oldest first, amendments after the
/// versions they amend (the relay's way back to an edge).
pub async fn due_for_target(pool: &Pool, target: &str, limit: i64) -> Result<Vec<Delivery>, DeliveryError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries d WHERE d.target = $1 AND d.state IN ('pending', 'failing')
         AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.study_uid = d.study_uid AND e.target = d.target
                         AND e.version < d.version AND e.state != 'sent')
         ORDER BY d.created_ms, d.id LIMIT $2"
    ))
    .bind(target)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A delivery to queue. It is written in the caller's transaction, with
/// the signed report (or the report received over the relay) it delivers,
/// so a report is never signed without its delivery or the reverse.
pub struct NewDelivery<'a> {
    pub study_uid: &'a str,
    pub version: i64,
    pub clinic_id: &'a str,
    pub target: &'a str,
    /// Where the SR already is (relayed reports); empty: built when due.
    pub path: &'a str,
    pub sop_instance_uid: &'a str,
    pub now_ms: i64,
}

pub async fn enqueue(conn: &mut Conn, d: &NewDelivery<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deliveries (study_uid, version, clinic_id, target, path, sop_instance_uid, state, attempts,
           next_attempt_ms, created_ms) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8)",
    )
    .bind(d.study_uid)
    .bind(d.version)
    .bind(d.clinic_id)
    .bind(d.target)
    .bind(d.path)
    .bind(d.sop_instance_uid)
    .bind(d.now_ms)
    .bind(d.now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether a delivery of this SR exists already (a report the hub re-sent
/// after a lost acknowledgement is not queued twice).
pub async fn exists_for_sop(conn: &mut Conn, sop_instance_uid: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM deliveries WHERE sop_instance_uid = $1")
        .bind(sop_instance_uid)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// A delivery's study and target, for checking an acknowledgement came
/// from the edge it was handed to.
pub async fn study_and_target(pool: &Pool, id: i64) -> Result<Option<(String, String)>, DeliveryError> {
    Ok(
        sqlx::query_as::<_, (String, String)>("SELECT study_uid, target FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// The earliest `next_attempt_ms` of a delivery that could be sent, if any.
pub async fn next_due_ms(pool: &Pool) -> Result<Option<i64>, DeliveryError> {
    let row = sqlx::query(&format!(
        "SELECT MIN(d.next_attempt_ms) FROM deliveries d WHERE {SENDABLE}"
    ))
    .fetch_one(pool)
    .await?;
    Ok(row.try_get::<Option<i64>, _>(0)?)
}

/// Record where the SR of a delivery was spooled.
pub async fn set_path(pool: &Pool, id: i64, path: &str) -> Result<(), DeliveryError> {
    sqlx::query("UPDATE deliveries SET path = $1 WHERE id = $2")
        .bind(path)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The PACS (or the edge) accepted the SR: the delivery is `sent`, the
/// report records the SR's SOP Instance UID, and the study moves to
/// `delivered`, all in one transaction.
pub async fn mark_sent(pool: &Pool, id: i64, now_ms: i64) -> Result<(), DeliveryError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE deliveries SET state = 'sent', sent_ms = $1, last_error = NULL WHERE id = $2
         RETURNING study_uid, version, sop_instance_uid",
    )
    .bind(now_ms)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        let study_uid: String = row.get(0);
        super::reports::set_sr_uid(&mut tx, &study_uid, row.get::<i64, _>(1), &row.get::<String, _>(2)).await?;
        // The clinic has the report: the study is delivered, in the same
        // transaction. The rules refuse when it is not reported (an
        // amendment was signed after this version was delivered...): then
        // the study stays as it is and nothing was written.
        match wl::apply(&mut tx, &study_uid, &WorkAction::Deliver, Actor::System, now_ms, None).await {
            Ok(_) => {}
            Err(WorklistApplyError::Db(e)) => return Err(e.into()),
            Err(e) => debug!(study_uid = %study_uid, error = %e, "worklist not moved to delivered"),
        }
    }
    tx.commit().await?;
    Ok(())
}

/// An attempt failed: count it, keep the reason (at most
/// [`MAX_ERROR_CHARS`]), and schedule the next attempt. Returns that time.
pub async fn mark_failing(
    pool: &Pool,
    id: i64,
    error: &str,
    now_ms: i64,
    policy: &RetryPolicy,
) -> Result<i64, DeliveryError> {
    let mut tx = pool.begin().await?;
    // Writing first takes the write lock at once (no read-then-upgrade).
    let attempts: Option<i64> = sqlx::query(
        "UPDATE deliveries SET state = 'failing', attempts = attempts + 1, last_error = $1
         WHERE id = $2 AND state != 'sent' RETURNING attempts",
    )
    .bind(truncate_chars(error, MAX_ERROR_CHARS))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.get(0));
    let next = policy.next_attempt_ms(u32::try_from(attempts.unwrap_or(1)).unwrap_or(u32::MAX), now_ms);
    if attempts.is_some() {
        sqlx::query("UPDATE deliveries SET next_attempt_ms = $1 WHERE id = $2")
            .bind(next)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(next)
}

/// Deliveries of one study, by version then id.
pub async fn for_study(pool: &Pool, study_uid: &str) -> Result<Vec<Delivery>, DeliveryError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries d WHERE d.study_uid = $1 ORDER BY d.version, d.id"
    ))
    .bind(study_uid)
    .fetch_all(pool)
    .await?)
}

/// The whole queue for the admin page, newest first, at most `limit`.
pub async fn list(pool: &Pool, limit: i64) -> Result<Vec<Delivery>, DeliveryError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries d ORDER BY d.created_ms DESC, d.id DESC LIMIT $1"
    ))
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?)
}

pub async fn counts(pool: &Pool) -> Result<DeliveryCounts, DeliveryError> {
    let mut c = DeliveryCounts::default();
    for row in sqlx::query("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
        .fetch_all(pool)
        .await?
    {
        let n: i64 = row.get(1);
        match row.get::<String, _>(0).as_str() {
            "pending" => c.pending = n,
            "sent" => c.sent = n,
            "failing" => c.failing = n,
            _ => {}
        }
    }
    Ok(c)
}

// ------------------------------------------------------------ building

/// Gathers what the SR of a delivery is made of: the report version, the
/// study, the author's display name and hospital, the SR it amends (the
/// previous version's), and the study's instances as evidence.
pub async fn sr_input(index: &Index, cfg: &Config, d: &Delivery) -> Result<SrInput, DeliveryError> {
    let pool = index.pool();
    let rep = sqlx::query(
        "SELECT status, findings, impression, author, signed_ms FROM reports WHERE study_uid = $1 AND version = $2",
    )
    .bind(&d.study_uid)
    .bind(d.version)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| DeliveryError::NoReport {
        study_uid: d.study_uid.clone(),
        version: d.version,
    })?;
    let status: String = rep.get(0);
    let signed_ms: Option<i64> = rep.get(4);
    let signed_ms = match signed_ms {
        Some(t) if status != "draft" => t,
        _ => {
            return Err(DeliveryError::NotSigned {
                study_uid: d.study_uid.clone(),
                version: d.version,
            });
        }
    };
    let author: String = rep.get(3);
    let study = index
        .study(&d.study_uid)
        .await?
        .ok_or_else(|| DeliveryError::NoStudy(d.study_uid.clone()))?;
    let user = sqlx::query("SELECT display_name, hospital_id FROM users WHERE username = $1")
        .bind(&author)
        .fetch_optional(pool)
        .await?;
    let (display_name, hospital_id) = match user {
        Some(u) => (u.get::<String, _>(0), u.get::<Option<String>, _>(1)),
        None => (String::new(), None),
    };
    let hospital = hospital_id
        .as_deref()
        .and_then(|h| cfg.hospitals.iter().find(|x| x.id == h))
        .or_else(|| cfg.hospitals.iter().find(|h| h.serves.contains(&d.clinic_id)));
    let institution_name = hospital
        .map(|h| {
            if h.name.is_empty() {
                h.id.clone()
            } else {
                h.name.clone()
            }
        })
        .unwrap_or_default();

    // The SR this version amends: the previous version's, as queued (its
    // UID is fixed when it is queued, sent or not) or as recorded.
    let series_instance_uid = sr::report_series_uid(&d.study_uid);
    let queued: Option<String> = sqlx::query(
        "SELECT sop_instance_uid FROM deliveries WHERE study_uid = $1 AND version < $2
         ORDER BY version DESC, id DESC LIMIT 1",
    )
    .bind(&d.study_uid)
    .bind(d.version)
    .fetch_optional(pool)
    .await?
    .map(|r| r.get(0));
    let previous = match queued {
        Some(uid) => Some(uid),
        None => sqlx::query(
            "SELECT sr_sop_uid FROM reports WHERE study_uid = $1 AND version < $2 AND sr_sop_uid IS NOT NULL
             ORDER BY version DESC LIMIT 1",
        )
        .bind(&d.study_uid)
        .bind(d.version)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get(0)),
    };
    let amends = previous.filter(|u| sr::valid_uid(u)).map(|u| InstanceRef {
        series_instance_uid: series_instance_uid.clone(),
        sop_class_uid: sr::BASIC_TEXT_SR.to_string(),
        sop_instance_uid: u,
    });
    let evidence = index
        .instances_of_study(&d.study_uid)
        .await?
        .into_iter()
        .filter(|i| {
            sr::valid_uid(&i.series_uid) && sr::valid_uid(&i.sop_class_uid) && sr::valid_uid(&i.sop_instance_uid)
        })
        .map(|i| InstanceRef {
            series_instance_uid: i.series_uid,
            sop_class_uid: i.sop_class_uid,
            sop_instance_uid: i.sop_instance_uid,
        })
        .collect();
    Ok(SrInput {
        study_instance_uid: study.study_uid,
        patient_name: study.patient_name,
        patient_id: study.patient_id,
        patient_birth_date: study.birth_date,
        patient_sex: study.sex,
        accession_number: study.accession_number,
        study_date: study.study_date,
        study_time: study.study_time,
        referring_physician: study.referring_physician,
        study_description: study.description,
        sop_instance_uid: d.sop_instance_uid.clone(),
        series_instance_uid,
        version: d.version,
        findings: rep.get(1),
        impression: rep.get(2),
        author_name: if display_name.trim().is_empty() {
            author
        } else {
            display_name
        },
        signed_ms,
        institution_name,
        amends,
        evidence,
        charset: cfg
            .clinics
            .iter()
            .find(|c| c.id == d.clinic_id)
            .map(|c| c.pacs_charset)
            .unwrap_or_default(),
    })
}

/// Write `bytes` to `dir/name` durably: tmp file, fsync, rename, fsync the
/// directory. Blocking; call from `spawn_blocking`.
pub fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &dest)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(dest)
}

/// The spool file of a delivery's SR, built and written if it is missing.
pub async fn ensure_file(
    index: &Index,
    cfg: &Config,
    spool_dir: &Path,
    d: &Delivery,
) -> Result<PathBuf, DeliveryError> {
    if !d.path.is_empty() && tokio::fs::try_exists(&d.path).await.unwrap_or(false) {
        return Ok(PathBuf::from(&d.path));
    }
    // The UID names the file: refuse anything that is not digits and dots.
    if !sr::valid_uid(&d.sop_instance_uid) {
        return Err(DeliveryError::BadUid(d.sop_instance_uid.clone()));
    }
    let input = sr_input(index, cfg, d).await?;
    let dir = spool_dir.to_path_buf();
    let name = format!("{}.dcm", d.sop_instance_uid);
    let path = tokio::task::spawn_blocking(move || -> Result<PathBuf, DeliveryError> {
        let bytes = sr::build_basic_text_sr(&input)?;
        Ok(write_durable(&dir, &name, &bytes)?)
    })
    .await
    .map_err(|e| DeliveryError::Join(e.to_string()))??;
    set_path(index.pool(), d.id, &path.to_string_lossy()).await?;
    Ok(path)
}

// ------------------------------------------------------------ worker

/// Wakes the delivery worker; cheap to clone.
#[derive(Clone, Default)]
pub struct DeliveryHandle {
    notify: Arc<Notify>,
}

impl DeliveryHandle {
    /// Look at the queue now (a delivery was queued, or an admin asked for a
    /// retry). A wake while the worker is busy is kept, not lost.
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub policy: RetryPolicy,
    /// Look at the queue at least this often, woken or not.
    pub poll_max: Duration,
    /// Limit on one association sending a target's due SRs.
    pub send_timeout: Duration,
    /// Due rows taken per pass.
    pub batch: i64,
    /// Targets sent to at the same time.
    pub parallel_targets: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            policy: RetryPolicy::default(),
            poll_max: Duration::from_secs(5),
            send_timeout: Duration::from_secs(60),
            batch: 32,
            parallel_targets: 4,
        }
    }
}

/// Start the worker with the default options.
pub fn start(
    index: Index,
    cfg: Arc<Config>,
    spool_dir: PathBuf,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> DeliveryHandle {
    start_with(index, cfg, spool_dir, shutdown, tracker, WorkerOptions::default())
}

/// Start the worker; it runs on `tracker` until `shutdown`.
pub fn start_with(
    index: Index,
    cfg: Arc<Config>,
    spool_dir: PathBuf,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    opts: WorkerOptions,
) -> DeliveryHandle {
    let handle = DeliveryHandle::default();
    let worker = Worker {
        index,
        cfg,
        spool_dir,
        opts,
        shutdown,
    };
    let notify = handle.notify.clone();
    tracker.spawn(async move { worker.run(notify).await });
    handle
}

struct Worker {
    index: Index,
    cfg: Arc<Config>,
    spool_dir: PathBuf,
    opts: WorkerOptions,
    shutdown: CancellationToken,
}

/// How one pass went.
#[derive(Default)]
struct Pass {
    taken: usize,
    sent: usize,
}

impl Worker {
    async fn run(self, notify: Arc<Notify>) {
        debug!(spool = %self.spool_dir.display(), "SR delivery worker started");
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let pass = match self.pass().await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "SR delivery: reading the queue failed");
                    Pass::default()
                }
            };
            // A full batch may have more behind it, and a sent version may
            // have released the next version of its study: look again now.
            if pass.sent > 0 || pass.taken as i64 >= self.opts.batch {
                continue;
            }
            let now = crate::clock::now_ms();
            let wait_ms = match next_due_ms(self.index.pool()).await {
                Ok(Some(t)) => t.saturating_sub(now),
                Ok(None) => i64::MAX,
                Err(e) => {
                    warn!(error = %e, "SR delivery: reading the queue failed");
                    i64::MAX
                }
            };
            let poll_ms = self.opts.poll_max.as_millis().min(i64::MAX as u128) as i64;
            // Never spin: at least 50 ms between passes that sent nothing.
            let wait = Duration::from_millis(wait_ms.clamp(50, poll_ms.max(50)) as u64);
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        debug!("SR delivery worker stopped");
    }

    async fn pass(&self) -> Result<Pass, DeliveryError> {
        let pool = self.index.pool();
        let rows = claim_due(pool, crate::clock::now_ms(), CLAIM_MS, self.opts.batch).await?;
        let mut pass = Pass {
            taken: rows.len(),
            sent: 0,
        };
        // Spool files first; a delivery that cannot be built fails alone.
        let mut by_target: Vec<(String, Vec<(Delivery, PathBuf)>)> = Vec::new();
        for d in rows {
            if self.shutdown.is_cancelled() {
                return Ok(pass);
            }
            match ensure_file(&self.index, &self.cfg, &self.spool_dir, &d).await {
                Ok(path) => match by_target.iter_mut().find(|(t, _)| *t == d.target) {
                    Some((_, v)) => v.push((d, path)),
                    None => by_target.push((d.target.clone(), vec![(d, path)])),
                },
                Err(e) => self.failed(&d, &e.to_string()).await,
            }
        }
        let sent: Vec<usize> = futures::stream::iter(by_target)
            .map(|(target, batch)| self.send_target(target, batch))
            .buffer_unordered(self.opts.parallel_targets.max(1))
            .collect()
            .await;
        pass.sent = sent.into_iter().sum();
        Ok(pass)
    }

    /// Send one target's due SRs over one association; returns how many
    /// were accepted.
    async fn send_target(&self, target: String, batch: Vec<(Delivery, PathBuf)>) -> usize {
        let parsed = match Target::parse(&target, "") {
            Ok(t) => t,
            Err(e) => {
                for (d, _) in &batch {
                    self.failed(d, &e.to_string()).await;
                }
                return 0;
            }
        };
        let files: Vec<PathBuf> = batch.iter().map(|(_, p)| p.clone()).collect();
        let calling = self.cfg.reading.sr_calling_ae.clone();
        let limit = self.opts.send_timeout;
        let send = scu::store(files, &parsed, &calling, 1, Arc::new(|_: &FileResult| {}));
        let results = tokio::select! {
            // Not marked: the rows stay due and go again after a restart.
            _ = self.shutdown.cancelled() => return 0,
            r = tokio::time::timeout(limit, send) => r,
        };
        let results: HashMap<PathBuf, FileResult> = match results {
            Ok(r) => r.into_iter().map(|r| (r.path.clone(), r)).collect(),
            Err(_) => {
                let why = format!("no answer from {target} within {} s", limit.as_secs());
                for (d, _) in &batch {
                    self.failed(d, &why).await;
                }
                return 0;
            }
        };
        let mut sent = 0;
        for (d, path) in &batch {
            match results.get(path) {
                Some(r) if r.ok() => {
                    let now = crate::clock::now_ms();
                    match mark_sent(self.index.pool(), d.id, now).await {
                        Ok(()) => {
                            sent += 1;
                            info!(delivery = d.id, study_uid = %d.study_uid, version = d.version,
                                  target = %target, attempts = d.attempts + 1, "report SR delivered");
                        }
                        Err(e) => warn!(delivery = d.id, error = %e, "SR sent but not recorded; it will be sent again"),
                    }
                }
                Some(r) => {
                    let why = match (&r.error, r.status) {
                        (Some(e), _) => e.clone(),
                        (None, Some(s)) => format!("status {s:#06x}"),
                        (None, None) => "no status".to_string(),
                    };
                    self.failed(d, &format!("C-STORE to {target}: {why}")).await;
                }
                None => self.failed(d, &format!("C-STORE to {target}: no result")).await,
            }
        }
        sent
    }

    async fn failed(&self, d: &Delivery, why: &str) {
        let now = crate::clock::now_ms();
        match mark_failing(self.index.pool(), d.id, why, now, &self.opts.policy).await {
            Ok(next) => warn!(delivery = d.id, study_uid = %d.study_uid, version = d.version,
                              attempts = d.attempts + 1, retry_in_ms = next - now, error = %why,
                              "report SR delivery failed; will retry"),
            Err(e) => warn!(delivery = d.id, error = %e, "recording a failed SR delivery failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::files::Committed;
    use crate::archive::index::NewInstance;

    #[test]
    fn backoff_doubles_from_5s_to_a_10min_cap() {
        let now = 1_000_000;
        let delays: Vec<i64> = (0..12).map(|a| next_attempt_ms(a, now) - now).collect();
        assert_eq!(
            delays,
            [
                5_000, 5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000, 600_000, 600_000
            ]
        );
        assert_eq!(next_attempt_ms(u32::MAX, now), now + 600_000);
        assert_eq!(next_attempt_ms(70, i64::MAX - 1), i64::MAX);
        let fast = RetryPolicy {
            first_delay_ms: 100,
            max_delay_ms: 250,
        };
        assert_eq!((fast.delay_ms(1), fast.delay_ms(2), fast.delay_ms(3)), (100, 200, 250));
        // Monotonic, never below the first delay.
        let p = RetryPolicy::default();
        assert!((1..200).all(|a| p.delay_ms(a + 1) >= p.delay_ms(a) && p.delay_ms(a) >= 5_000));
    }

    #[test]
    fn errors_are_truncated_on_char_boundaries() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("拒绝连接拒绝", 4), "拒绝连接");
    }

    async fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        (dir, idx)
    }

    async fn queue(idx: &Index, study: &str, version: i64, target: &str, created: i64) -> i64 {
        sqlx::query(
            "INSERT INTO deliveries (study_uid, version, clinic_id, target, path, sop_instance_uid, state,
             attempts, next_attempt_ms, created_ms) VALUES ($1, $2, 'c1', $3, '', $4, 'pending', 0, $5, $6)
             RETURNING id",
        )
        .bind(study)
        .bind(version)
        .bind(target)
        .bind(sr::new_uid())
        .bind(created)
        .bind(created)
        .fetch_one(idx.pool())
        .await
        .expect("insert")
        .get(0)
    }

    #[tokio::test]
    async fn a_claim_hides_its_deliveries_until_it_runs_out() {
        let (_dir, idx) = index().await;
        let pool = idx.pool();
        let a = queue(&idx, "1.1", 1, "PACS@h:1", 100).await;
        let b = queue(&idx, "1.2", 1, "PACS@h:1", 150).await;
        let c = queue(&idx, "1.3", 1, "PACS@h:1", 120).await;
        let ids = |v: Vec<Delivery>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        // Oldest first, at most the limit; the rest for the next taker.
        assert_eq!(ids(claim_due(pool, 1_000, 60_000, 2).await.expect("claim")), [a, c]);
        assert_eq!(ids(claim_due(pool, 1_000, 60_000, 10).await.expect("claim")), [b]);
        assert!(claim_due(pool, 60_999, 60_000, 10).await.expect("claim").is_empty());
        // A failure sets its own next attempt; a claim that ran out (its
        // worker died) is taken again.
        mark_failing(pool, a, "refused", 2_000, &RetryPolicy::default())
            .await
            .expect("fail");
        assert_eq!(ids(claim_due(pool, 7_000, 60_000, 10).await.expect("claim")), [a]);
        assert_eq!(ids(claim_due(pool, 61_000, 60_000, 10).await.expect("claim")), [c, b]);
    }

    #[tokio::test]
    async fn queue_order_amendments_wait_and_failures_back_off() {
        let (_dir, idx) = index().await;
        let pool = idx.pool();
        let p = RetryPolicy::default();
        let a1 = queue(&idx, "1.1", 1, "PACS@h:1", 100).await;
        let a2 = queue(&idx, "1.1", 2, "PACS@h:1", 200).await;
        let b1 = queue(&idx, "1.2", 1, "PACS@h:1", 150).await;
        let other = queue(&idx, "1.1", 2, "OTHER@h:2", 50).await;

        // Oldest first; v2 of 1.1 to PACS waits for v1; v2 to OTHER has no
        // v1 there and goes.
        let ids = |v: Vec<Delivery>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(due(pool, 1_000, 10).await.expect("due")), [other, a1, b1]);
        assert_eq!(ids(due(pool, 1_000, 2).await.expect("due")), [other, a1]);
        assert!(due(pool, 10, 10).await.expect("due").is_empty());
        assert_eq!(next_due_ms(pool).await.expect("next"), Some(50));

        // A failure: counted, reason kept (truncated), retried later.
        let long = "x".repeat(2_000);
        let next = mark_failing(pool, a1, &long, 1_000, &p).await.expect("fail");
        assert_eq!(next, 6_000);
        let next = mark_failing(pool, a1, "refused", 6_000, &p).await.expect("fail");
        assert_eq!(next, 16_000);
        let row = &for_study(pool, "1.1").await.expect("study")[0];
        assert_eq!(
            (row.id, row.state.as_str(), row.attempts, row.next_attempt_ms),
            (a1, "failing", 2, 16_000)
        );
        assert_eq!(row.last_error.as_deref(), Some("refused"));
        mark_failing(pool, b1, &long, 1_000, &p).await.expect("fail");
        let b = for_study(pool, "1.2").await.expect("study");
        assert_eq!(
            b[0].last_error.as_ref().map(|e| e.chars().count()),
            Some(MAX_ERROR_CHARS)
        );
        assert_eq!(ids(due(pool, 7_000, 10).await.expect("due")), [other, b1]);

        // Sent: v1 records its SR UID on the report, and v2 becomes due.
        sqlx::query(
            "INSERT INTO reports (study_uid, version, status, findings, impression, author, created_ms, updated_ms, signed_ms)
             VALUES ('1.1', 1, 'signed', 'f', 'i', 'li', 1, 1, 1)",
        )
        .execute(pool)
        .await
        .expect("report");
        mark_sent(pool, a1, 20_000).await.expect("sent");
        let sop: String = sqlx::query("SELECT sop_instance_uid FROM deliveries WHERE id = $1")
            .bind(a1)
            .fetch_one(pool)
            .await
            .expect("q")
            .get(0);
        let recorded: Option<String> = sqlx::query("SELECT sr_sop_uid FROM reports WHERE study_uid = '1.1'")
            .fetch_one(pool)
            .await
            .expect("q")
            .get(0);
        assert_eq!(recorded, Some(sop));
        assert_eq!(ids(due(pool, 20_000, 10).await.expect("due")), [other, b1, a2]);
        // A sent delivery is never failed afterwards.
        mark_failing(pool, a1, "late", 21_000, &p).await.expect("noop");
        let a = &for_study(pool, "1.1").await.expect("study")[0];
        assert_eq!(
            (a.state.as_str(), a.sent_ms, a.last_error.as_deref()),
            ("sent", Some(20_000), None)
        );

        assert_eq!(
            counts(pool).await.expect("counts"),
            DeliveryCounts {
                pending: 2,
                sent: 1,
                failing: 1
            }
        );
        assert_eq!(ids(list(pool, 10).await.expect("list")), [a2, b1, a1, other]);
        assert_eq!(ids(list(pool, 1).await.expect("list")), [a2]);
    }

    #[tokio::test]
    async fn sr_input_comes_from_the_index() {
        let (dir, idx) = index().await;
        let pool = idx.pool();
        let inst = NewInstance {
            sop_instance_uid: "1.2.3.1.1".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.1".into(),
            patient_id: "P1".into(),
            patient_name: "WANG^FANG".into(),
            birth_date: "19800101".into(),
            sex: "F".into(),
            study_date: "20260301".into(),
            modality: "CT".into(),
            calling_ae: "CT01".into(),
            clinic_id: "c1".into(),
            stable_after_ms: 1000,
            received_ms: 1,
            ..Default::default()
        };
        let file = Committed {
            rel_path: "instances/aa.dcm".into(),
            sha256: "aa".into(),
            size: 1,
            created: true,
            staged: None,
        };
        idx.store(inst, file).await.expect("store");
        sqlx::query(
            "INSERT INTO users (username, display_name, role, hospital_id, password_hash, created_ms)
             VALUES ('li', '李医生', 'expert', 'h1', 'x', 1)",
        )
        .execute(pool)
        .await
        .expect("user");
        for v in [1, 2] {
            sqlx::query(
                "INSERT INTO reports (study_uid, version, status, findings, impression, author, created_ms, updated_ms, signed_ms)
                 VALUES ('1.2.3', $1, 'signed', '所见', '印象', 'li', 1, 1, $2)",
            )
            .bind(v)
            .bind(1_000 * v)
            .execute(pool)
            .await
            .expect("report");
        }
        let d1 = queue(&idx, "1.2.3", 1, "PACS@h:1", 1).await;
        let d2 = queue(&idx, "1.2.3", 2, "PACS@h:1", 2).await;
        let mut cfg = Config::default();
        cfg.hospitals.push(crate::config::HospitalConfig {
            id: "h1".into(),
            name: "市人民医院".into(),
            serves: vec!["c1".into()],
            ae_titles: Vec::new(),
        });
        let rows = for_study(pool, "1.2.3").await.expect("rows");
        let (r1, r2) = (&rows[0], &rows[1]);
        assert_eq!((r1.id, r2.id), (d1, d2));
        let i1 = sr_input(&idx, &cfg, r1).await.expect("input");
        assert_eq!(
            (i1.author_name.as_str(), i1.institution_name.as_str(), i1.signed_ms),
            ("李医生", "市人民医院", 1_000)
        );
        assert_eq!((i1.patient_name.as_str(), i1.patient_sex.as_str()), ("WANG^FANG", "F"));
        assert!(i1.amends.is_none());
        assert_eq!(i1.evidence.len(), 1);
        assert_eq!(i1.series_instance_uid, sr::report_series_uid("1.2.3"));
        let i2 = sr_input(&idx, &cfg, r2).await.expect("input");
        let amends = i2.amends.expect("amends v1");
        assert_eq!(amends.sop_instance_uid, r1.sop_instance_uid);
        assert_eq!(amends.series_instance_uid, i2.series_instance_uid);

        // Unsigned or missing reports are refused with a reason.
        sqlx::query("UPDATE reports SET status = 'draft' WHERE version = 2")
            .execute(pool)
            .await
            .expect("draft");
        assert!(matches!(
            sr_input(&idx, &cfg, r2).await,
            Err(DeliveryError::NotSigned { .. })
        ));
        let mut ghost = r1.clone();
        ghost.version = 9;
        assert!(matches!(
            sr_input(&idx, &cfg, &ghost).await,
            Err(DeliveryError::NoReport { .. })
        ));

        // Spooled durably, path recorded, rebuilt only when missing.
        let spool = dir.path().join("spool");
        let p = ensure_file(&idx, &cfg, &spool, r1).await.expect("spool");
        assert_eq!(p, spool.join(format!("{}.dcm", r1.sop_instance_uid)));
        let bytes = std::fs::read(&p).expect("read");
        let stored = &for_study(pool, "1.2.3").await.expect("rows")[0];
        assert_eq!(stored.path, p.to_string_lossy());
        std::fs::remove_file(&p).expect("rm");
        assert_eq!(ensure_file(&idx, &cfg, &spool, stored).await.expect("rebuild"), p);
        assert_eq!(std::fs::read(&p).expect("read"), bytes, "a rebuild is identical");
        let mut evil = r1.clone();
        evil.sop_instance_uid = "../../etc/passwd".into();
        assert!(matches!(
            ensure_file(&idx, &cfg, &spool, &evil).await,
            Err(DeliveryError::BadUid(_))
        ));
    }
}
