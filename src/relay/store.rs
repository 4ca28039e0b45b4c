//! The relay's durable state in the index database: on the hub, registered
//! edges, arriving studies and their staged parts, and the atomic study
//! commit; on the edge, the outbox and its cursors.

use std::collections::{HashMap, HashSet};

use crate::store::Pool;
use serde::Serialize;
use sqlx::Row;

use super::wire::{Manifest, ManifestInstance};
use crate::archive::index::{self, Conn, IndexError, NewInstance, apply_store};
use crate::reading::worklist::{Actor, Completion, Priority};
use crate::reading::{delivery, notifications};
use crate::store::worklist::{self, WorklistApplyError};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EdgeRow {
    pub name: String,
    pub clinic_id: String,
    pub fingerprint: String,
    pub issued_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub last_addr: Option<String>,
}

// ------------------------------------------------------------------ hub

const EDGE_COLUMNS: &str = "name, clinic_id, fingerprint, issued_ms, revoked_ms, last_seen_ms, last_addr";

/// Register a newly issued edge certificate; re-issuing replaces the old
/// one (the old certificate stops working).
pub async fn register_edge(
    pool: &Pool,
    name: &str,
    clinic_id: &str,
    fingerprint: &str,
    now_ms: i64,
) -> Result<(), IndexError> {
    sqlx::query(
        "INSERT INTO relay_edges (name, clinic_id, fingerprint, issued_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET clinic_id = excluded.clinic_id, fingerprint = excluded.fingerprint,
           issued_ms = excluded.issued_ms, revoked_ms = NULL",
    )
    .bind(name)
    .bind(clinic_id)
    .bind(fingerprint)
    .bind(now_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Returns false when no such edge exists.
pub async fn revoke_edge(pool: &Pool, name: &str, now_ms: i64) -> Result<bool, IndexError> {
    Ok(
        sqlx::query("UPDATE relay_edges SET revoked_ms = COALESCE(revoked_ms, $1) WHERE name = $2")
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

pub async fn edges(pool: &Pool) -> Result<Vec<EdgeRow>, IndexError> {
    Ok(
        sqlx::query_as(&format!("SELECT {EDGE_COLUMNS} FROM relay_edges ORDER BY name"))
            .fetch_all(pool)
            .await?,
    )
}

pub async fn edge_by_fingerprint(pool: &Pool, fp: &str) -> Result<Option<EdgeRow>, IndexError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {EDGE_COLUMNS} FROM relay_edges WHERE fingerprint = $1"
    ))
    .bind(fp)
    .fetch_optional(pool)
    .await?)
}

pub async fn edge_for_clinic(pool: &Pool, clinic_id: &str) -> Result<Option<String>, IndexError> {
    Ok(sqlx::query(
        "SELECT name FROM relay_edges WHERE clinic_id = $1 AND revoked_ms IS NULL ORDER BY issued_ms DESC LIMIT 1",
    )
    .bind(clinic_id)
    .fetch_optional(pool)
    .await?
    .map(|r| r.get(0)))
}

pub async fn seen(pool: &Pool, name: &str, addr: &str, now_ms: i64) -> Result<(), IndexError> {
    sqlx::query("UPDATE relay_edges SET last_seen_ms = $1, last_addr = $2 WHERE name = $3")
        .bind(now_ms)
        .bind(addr)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn is_revoked(pool: &Pool, name: &str) -> Result<bool, IndexError> {
    Ok(
        sqlx::query("SELECT CASE WHEN revoked_ms IS NULL THEN 0 ELSE 1 END FROM relay_edges WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?
            .map(|r| r.get::<i64, _>(0) != 0)
            .unwrap_or(true),
    )
}

/// What the hub already holds of a study an edge announces: staged parts
/// and instances committed earlier with the same content.
pub struct Holdings {
    pub instances: HashSet<String>,
    pub previews: HashSet<String>,
}

/// Record (or refresh) an arriving study and say what is already here.
pub async fn begin(
    pool: &Pool,
    edge: &str,
    clinic_id: &str,
    m: &Manifest,
    manifest_json: &str,
    now_ms: i64,
) -> Result<Holdings, IndexError> {
    let total_bytes: i64 = m.instances.iter().map(|i| i.file_size as i64).sum();
    sqlx::query(
        "INSERT INTO relay_inbound (edge, study_uid, clinic_id, state, total, total_bytes, priority, clinical_question,
           manifest, began_ms)
         VALUES ($1, $2, $3, 'arriving', $4, $5, $6, $7, $8, $9)
         ON CONFLICT (edge, study_uid) DO UPDATE SET state = 'arriving', total = excluded.total,
           total_bytes = excluded.total_bytes, priority = excluded.priority,
           clinical_question = excluded.clinical_question, manifest = excluded.manifest,
           began_ms = CASE WHEN relay_inbound.state = 'committed' THEN excluded.began_ms ELSE relay_inbound.began_ms END,
           first_preview_ms = CASE WHEN relay_inbound.state = 'committed' THEN NULL ELSE relay_inbound.first_preview_ms END,
           first_instance_ms = CASE WHEN relay_inbound.state = 'committed' THEN NULL ELSE relay_inbound.first_instance_ms END,
           committed_ms = NULL",
    )
    .bind(edge)
    .bind(&m.study_uid)
    .bind(clinic_id)
    .bind(m.instances.len() as i64)
    .bind(total_bytes)
    .bind(&m.priority)
    .bind(&m.clinical_question)
    .bind(manifest_json)
    .bind(now_ms)
    .execute(pool)
    .await?;
    holdings(pool, edge, m).await
}

async fn holdings(pool: &Pool, edge: &str, m: &Manifest) -> Result<Holdings, IndexError> {
    let mut instances = HashSet::new();
    let mut previews = HashSet::new();
    for r in sqlx::query("SELECT sop_uid, kind FROM relay_staged WHERE edge = $1 AND study_uid = $2")
        .bind(edge)
        .bind(&m.study_uid)
        .fetch_all(pool)
        .await?
    {
        let sop: String = r.get(0);
        let kind: String = r.get(1);
        if kind == "instance" {
            instances.insert(sop);
        } else if kind == "preview" {
            previews.insert(sop);
        }
    }
    for (sop, preview_ok) in committed(pool, m).await? {
        instances.insert(sop.clone());
        if preview_ok {
            previews.insert(sop);
        }
    }
    Ok(Holdings { instances, previews })
}

/// Instances of the manifest already in the hub's index with the same
/// content (sent before, or pushed to the hub directly), with whether their
/// previews exist.
async fn committed(pool: &Pool, m: &Manifest) -> Result<Vec<(String, bool)>, IndexError> {
    let wanted: HashMap<&str, &str> = m
        .instances
        .iter()
        .map(|i| (i.meta.sop_instance_uid.as_str(), i.sha256.as_str()))
        .collect();
    Ok(
        sqlx::query("SELECT sop_instance_uid, sha256, preview_status FROM instances WHERE study_uid = $1")
            .bind(&m.study_uid)
            .fetch_all(pool)
            .await?
            .into_iter()
            .filter_map(|r| {
                let sop: String = r.get(0);
                let sha: String = r.get(1);
                let ok = r.get::<String, _>(2) == "ok";
                (wanted.get(sop.as_str()) == Some(&sha.as_str())).then_some((sop, ok))
            })
            .collect(),
    )
}

pub async fn begin_holdings_committed(pool: &Pool, m: &Manifest) -> Result<HashSet<String>, IndexError> {
    Ok(committed(pool, m).await?.into_iter().map(|(s, _)| s).collect())
}

pub struct Staged {
    pub sop_uid: String,
    pub kind: String,
    pub sha256: String,
    pub size: u64,
    pub path: String,
}

/// Record durably staged parts in one transaction. Returns false when the
/// study is not arriving from this edge (never announced, or committed).
pub async fn stage(
    pool: &Pool,
    edge: &str,
    study_uid: &str,
    parts: &[Staged],
    now_ms: i64,
) -> Result<bool, IndexError> {
    // IMMEDIATE: a deferred transaction that reads, then writes, cannot wait
    // for a concurrent writer (SQLite answers "database is locked" at once),
    // and bundles from parallel streams stage concurrently.
    let mut tx = crate::store::begin_write_tx(pool).await?;
    let arriving = sqlx::query("SELECT 1 FROM relay_inbound WHERE edge = $1 AND study_uid = $2 AND state = 'arriving'")
        .bind(edge)
        .bind(study_uid)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if !arriving {
        return Ok(false);
    }
    for p in parts {
        sqlx::query(
            "INSERT INTO relay_staged (edge, study_uid, sop_uid, kind, sha256, size, path, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (edge, study_uid, sop_uid, kind) DO UPDATE SET
               sha256 = excluded.sha256, size = excluded.size, path = excluded.path, at_ms = excluded.at_ms",
        )
        .bind(edge)
        .bind(study_uid)
        .bind(&p.sop_uid)
        .bind(&p.kind)
        .bind(&p.sha256)
        .bind(p.size as i64)
        .bind(&p.path)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    if parts.iter().any(|p| p.kind == "instance") {
        sqlx::query(
            "UPDATE relay_inbound SET first_instance_ms = COALESCE(first_instance_ms, $1) WHERE edge = $2 AND study_uid = $3",
        )
        .bind(now_ms)
        .bind(edge)
        .bind(study_uid)
        .execute(&mut *tx)
        .await?;
    }
    if parts.iter().any(|p| p.kind != "instance") {
        sqlx::query(
            "UPDATE relay_inbound SET first_preview_ms = COALESCE(first_preview_ms, $1) WHERE edge = $2 AND study_uid = $3",
        )
        .bind(now_ms)
        .bind(edge)
        .bind(study_uid)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub async fn staged_of(pool: &Pool, edge: &str, study_uid: &str) -> Result<Vec<Staged>, IndexError> {
    Ok(
        sqlx::query("SELECT sop_uid, kind, sha256, size, path FROM relay_staged WHERE edge = $1 AND study_uid = $2")
            .bind(edge)
            .bind(study_uid)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Staged {
                sop_uid: r.get(0),
                kind: r.get(1),
                sha256: r.get(2),
                size: r.get::<i64, _>(3) as u64,
                path: r.get(4),
            })
            .collect(),
    )
}

/// Forget a staged instance whose file vanished, so the edge sends it again.
pub async fn unstage(pool: &Pool, edge: &str, study_uid: &str, sop_uid: &str) -> Result<(), IndexError> {
    sqlx::query("DELETE FROM relay_staged WHERE edge = $1 AND study_uid = $2 AND sop_uid = $3 AND kind = 'instance'")
        .bind(edge)
        .bind(study_uid)
        .bind(sop_uid)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forget every staged part of a study (its files are gone), so the edge
/// sends it again in full.
pub async fn unstage_all(pool: &Pool, edge: &str, study_uid: &str) -> Result<(), IndexError> {
    sqlx::query("DELETE FROM relay_staged WHERE edge = $1 AND study_uid = $2")
        .bind(edge)
        .bind(study_uid)
        .execute(pool)
        .await?;
    Ok(())
}

pub struct Inbound {
    pub clinic_id: String,
    pub state: String,
    pub manifest: String,
    pub priority: String,
    pub clinical_question: Option<String>,
}

pub async fn inbound(pool: &Pool, edge: &str, study_uid: &str) -> Result<Option<Inbound>, IndexError> {
    Ok(sqlx::query(
        "SELECT clinic_id, state, manifest, priority, clinical_question FROM relay_inbound WHERE edge = $1 AND study_uid = $2",
    )
    .bind(edge)
    .bind(study_uid)
    .fetch_optional(pool)
    .await?
    .map(|r| Inbound {
        clinic_id: r.get(0),
        state: r.get(1),
        manifest: r.get(2),
        priority: r.get(3),
        clinical_question: r.get(4),
    }))
}

/// When an arrival began, for the edge's goodput once it is committed.
pub async fn began_ms(pool: &Pool, edge: &str, study_uid: &str) -> Result<Option<i64>, IndexError> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT began_ms FROM relay_inbound WHERE edge = $1 AND study_uid = $2")
            .bind(edge)
            .bind(study_uid)
            .fetch_optional(pool)
            .await?,
    )
}

/// One instance of the atomic commit: its index record, where its file now
/// is, and whether its previews came along.
pub struct CommitItem {
    pub inst: NewInstance,
    pub file: crate::archive::files::Committed,
    pub previews: bool,
    pub cine_frames: Option<i64>,
}

/// The atomic study commit: every instance indexed, the study complete and
/// on the worklist with the edge's priority, the arrival closed and its
/// staging rows dropped, all in one transaction. A crash leaves either the
/// arriving study (files already in place are found again on retry) or the
/// committed one. Returns (new instances, duplicates).
pub async fn commit_study(
    pool: &Pool,
    edge: &str,
    study_uid: &str,
    items: &[CommitItem],
    priority: &str,
    clinical_question: Option<&str>,
    now_ms: i64,
) -> Result<(usize, usize), IndexError> {
    crate::store::immediate(pool, async |c| {
        commit_in(c, edge, study_uid, items, priority, clinical_question, now_ms).await
    })
    .await
}

async fn commit_in(
    c: &mut Conn,
    edge: &str,
    study_uid: &str,
    items: &[CommitItem],
    priority: &str,
    clinical_question: Option<&str>,
    now_ms: i64,
) -> Result<(usize, usize), IndexError> {
    let mut new = 0;
    let mut dup = 0;
    for it in items {
        match apply_store(c, &it.inst, &it.file).await? {
            crate::archive::index::StoreOutcome::Duplicate => dup += 1,
            _ => new += 1,
        }
        if it.previews {
            index::previews_arrived(c, &it.inst.sop_instance_uid, &it.file.sha256, it.cine_frames, now_ms).await?;
        }
    }
    index::complete_study(c, study_uid, now_ms).await?;
    // The clinic's priority travels with the study: a new study enters the
    // worklist with it; a re-sent one may only raise it, while it still
    // waits to be read (the rules), so an expert's or admin's later change at
    // the hub is not undone and a read study is left alone.
    let wanted = Priority::parse(priority).unwrap_or(Priority::Routine);
    let initial = worklist::Initial {
        priority: wanted,
        clinical_question,
    };
    if worklist::enqueue_completed(c, study_uid, now_ms, initial).await? != Completion::Enqueue {
        let raise = match worklist::priority(c, study_uid).await? {
            Some((current, question)) => {
                wanted < current
                    || (wanted == current && clinical_question.is_some_and(|q| question.as_deref() != Some(q)))
            }
            None => false,
        };
        if raise {
            match worklist::set_priority(c, study_uid, wanted, clinical_question, Actor::System, now_ms).await {
                Err(WorklistApplyError::Db(e)) => return Err(e.into()),
                // Refused by the rules (or a row the rules cannot read): the
                // hub's priority stays.
                Ok(_)
                | Err(WorklistApplyError::Rule(_) | WorklistApplyError::NoSuchStudy | WorklistApplyError::Corrupt(_)) =>
                    {}
            }
        }
    }
    sqlx::query("UPDATE relay_inbound SET state = 'committed', committed_ms = $1 WHERE edge = $2 AND study_uid = $3")
        .bind(now_ms)
        .bind(edge)
        .bind(study_uid)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM relay_staged WHERE edge = $1 AND study_uid = $2")
        .bind(edge)
        .bind(study_uid)
        .execute(&mut *c)
        .await?;
    Ok((new, dup))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArrivingRow {
    pub edge: String,
    pub study_uid: String,
    pub clinic_id: String,
    pub state: String,
    pub total: i64,
    pub arrived: i64,
    pub total_bytes: i64,
    pub arrived_bytes: i64,
    pub previews: i64,
    pub priority: String,
    pub began_ms: i64,
    pub first_preview_ms: Option<i64>,
    pub committed_ms: Option<i64>,
}

/// Studies arriving (and the most recently committed), for the worklist's
/// "arriving: k of n" and the admin page. `clinics`: None = all.
pub async fn arriving(
    pool: &Pool,
    clinics: Option<&[String]>,
    include_committed: i64,
) -> Result<Vec<ArrivingRow>, IndexError> {
    let mut qb = crate::store::Sql::new(
        "SELECT r.edge, r.study_uid, r.clinic_id, r.state, r.total,
           CASE WHEN r.state = 'committed' THEN r.total ELSE
             (SELECT COUNT(*) FROM relay_staged t WHERE t.edge = r.edge AND t.study_uid = r.study_uid AND t.kind = 'instance') END AS arrived,
           r.total_bytes,
           CASE WHEN r.state = 'committed' THEN r.total_bytes ELSE
             (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM relay_staged t WHERE t.edge = r.edge AND t.study_uid = r.study_uid AND t.kind = 'instance') END AS arrived_bytes,
           CASE WHEN r.state = 'committed' THEN
             (SELECT COUNT(*) FROM instances i WHERE i.study_uid = r.study_uid AND i.preview_status = 'ok') ELSE
             (SELECT COUNT(*) FROM relay_staged t WHERE t.edge = r.edge AND t.study_uid = r.study_uid AND t.kind = 'thumb') END AS previews,
           r.priority, r.began_ms, r.first_preview_ms, r.committed_ms
         FROM relay_inbound r WHERE (r.state = 'arriving' OR r.committed_ms >= ",
    );
    qb.push_bind(include_committed).push(")");
    if let Some(c) = clinics {
        crate::archive::index::push_in(&mut qb, "r.clinic_id", c);
    }
    qb.push(" ORDER BY CASE r.priority WHEN 'stat' THEN 0 WHEN 'urgent' THEN 1 ELSE 2 END, r.began_ms LIMIT 200");
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// A staged preview of an arriving study (for the worklist thumbnails).
pub async fn staged_preview(pool: &Pool, study_uid: &str, kind: &str) -> Result<Option<(String, String)>, IndexError> {
    Ok(sqlx::query(
        "SELECT t.path, r.clinic_id FROM relay_staged t JOIN relay_inbound r ON r.edge = t.edge AND r.study_uid = t.study_uid
         WHERE t.study_uid = $1 AND t.kind = $2 AND r.state = 'arriving' ORDER BY t.at_ms, t.sop_uid LIMIT 1",
    )
    .bind(study_uid)
    .bind(kind)
    .fetch_optional(pool)
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

// ------------------------------------------------------------------ edge

/// How far behind the newest completion already taken each sync looks
/// again. A completion is stamped when its sweep is planned and committed a
/// little later, so one stamped earlier than the cursor can still appear;
/// taking a completion twice is harmless (the upsert keeps the newest).
const OUTBOX_SYNC_MARGIN_MS: i64 = 60_000;

/// Where the outbox has read the archive's completions up to.
const OUTBOX_CURSOR: &str = "outbox_completed_ms";

/// Makes this box an edge: every study already complete enters the outbox
/// (studies completed before it became one are sent too).
pub async fn install_outbox(pool: &Pool) -> Result<(), IndexError> {
    sync_outbox_since(pool, i64::MIN).await
}

/// Takes the archive's new completions into the outbox (a study completed,
/// or completed again after late images). The archive's tables are only
/// read: it knows nothing of the relay, and its completion stamp, indexed,
/// is the feed. Cheap when nothing changed (one indexed read, no write),
/// so the edge calls it before each look at the outbox.
pub async fn sync_outbox(pool: &Pool) -> Result<(), IndexError> {
    let cursor = kv_get(pool, OUTBOX_CURSOR)
        .await?
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(i64::MIN);
    sync_outbox_since(pool, cursor.saturating_sub(OUTBOX_SYNC_MARGIN_MS)).await
}

const COMPLETIONS: &str = "FROM studies s WHERE s.status = 'complete' AND s.completed_ms IS NOT NULL AND s.completed_ms > $1
     AND NOT EXISTS (SELECT 1 FROM relay_outbox o WHERE o.study_uid = s.study_uid AND o.completed_ms >= s.completed_ms)";

async fn sync_outbox_since(pool: &Pool, since: i64) -> Result<(), IndexError> {
    let newest: Option<i64> = sqlx::query_scalar(&format!("SELECT MAX(s.completed_ms) {COMPLETIONS}"))
        .bind(since)
        .fetch_one(pool)
        .await?;
    let Some(newest) = newest else { return Ok(()) };
    let mut tx = crate::store::begin_write_tx(pool).await?;
    sqlx::query(&format!(
        "INSERT INTO relay_outbox (study_uid, completed_ms, enqueued_ms)
         SELECT s.study_uid, s.completed_ms, s.completed_ms {COMPLETIONS}
         ON CONFLICT (study_uid) DO UPDATE SET completed_ms = excluded.completed_ms
           WHERE excluded.completed_ms > relay_outbox.completed_ms"
    ))
    .bind(since)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO relay_kv (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(OUTBOX_CURSOR)
    .bind(newest.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub study_uid: String,
    pub completed_ms: i64,
    pub rank: i64,
    pub attempts: i64,
}

const PENDING: &str = "(o.sent_completed_ms IS NULL OR o.sent_completed_ms < o.completed_ms)";

/// The outbox in sending order: priority (the clinic's worklist priority at
/// the edge), then oldest first. Studies re-opened by late images wait
/// until they complete again; `not_before` skips studies backing off.
pub async fn next_outbox(pool: &Pool, skip: &[String], limit: i64) -> Result<Vec<OutboxItem>, IndexError> {
    let mut qb = crate::store::Sql::new(format!(
        "SELECT o.study_uid, o.completed_ms, COALESCE(w.priority_rank, 2) AS rank, o.attempts
         FROM relay_outbox o JOIN studies s ON s.study_uid = o.study_uid
         LEFT JOIN worklist w ON w.study_uid = o.study_uid
         WHERE {PENDING} AND s.status = 'complete'"
    ));
    if !skip.is_empty() {
        qb.push(" AND o.study_uid NOT IN ")
            .push_tuple(skip.iter().map(String::as_str));
    }
    qb.push(" ORDER BY rank, o.completed_ms LIMIT ").push_bind(limit);
    Ok(qb
        .build()
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| OutboxItem {
            study_uid: r.get(0),
            completed_ms: r.get(1),
            rank: r.get(2),
            attempts: r.get(3),
        })
        .collect())
}

pub async fn mark_sent(pool: &Pool, item: &OutboxItem, bytes: u64, now_ms: i64) -> Result<(), IndexError> {
    sqlx::query(
        "UPDATE relay_outbox SET sent_completed_ms = $1, sent_ms = $2, attempts = 0, last_error = NULL,
           bytes_sent = bytes_sent + $3 WHERE study_uid = $4",
    )
    .bind(item.completed_ms)
    .bind(now_ms)
    .bind(bytes as i64)
    .bind(&item.study_uid)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn mark_failed(pool: &Pool, study_uid: &str, why: &str) -> Result<(), IndexError> {
    let why: String = why.chars().take(500).collect();
    sqlx::query("UPDATE relay_outbox SET attempts = attempts + 1, last_error = $1 WHERE study_uid = $2")
        .bind(why)
        .bind(study_uid)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OutboxStats {
    pub depth: i64,
    pub oldest_ms: Option<i64>,
    pub bytes_pending: i64,
}

pub async fn outbox_stats(pool: &Pool) -> Result<OutboxStats, IndexError> {
    let r = sqlx::query(&format!(
        "SELECT COUNT(*), MIN(o.enqueued_ms), CAST(COALESCE(SUM(s.size_bytes), 0) AS BIGINT) FROM relay_outbox o
         JOIN studies s ON s.study_uid = o.study_uid WHERE {PENDING}"
    ))
    .fetch_one(pool)
    .await?;
    Ok(OutboxStats {
        depth: r.get(0),
        oldest_ms: r.get(1),
        bytes_pending: r.get(2),
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub study_uid: String,
    pub completed_ms: i64,
    pub enqueued_ms: i64,
    pub sent_ms: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub bytes_sent: i64,
    #[sqlx(try_from = "crate::store::Flag")]
    pub pending: bool,
}

pub async fn outbox_list(pool: &Pool, limit: i64) -> Result<Vec<OutboxRow>, IndexError> {
    Ok(sqlx::query_as(&format!(
        "SELECT o.study_uid, o.completed_ms, o.enqueued_ms, o.sent_ms, o.attempts, o.last_error, o.bytes_sent,
           CASE WHEN {PENDING} THEN 1 ELSE 0 END AS pending FROM relay_outbox o ORDER BY pending DESC, o.enqueued_ms DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One instance the edge sends, with its stored file.
pub struct OutgoingInstance {
    pub manifest: ManifestInstance,
    pub rel_path: String,
    pub preview_ok: bool,
}

/// The study as the edge sends it: latest version of each instance, in
/// reading order. The priority is the edge worklist's.
pub async fn outgoing(
    pool: &Pool,
    study_uid: &str,
) -> Result<(Vec<OutgoingInstance>, String, Option<String>), IndexError> {
    let rows = sqlx::query(
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.study_uid, i.series_uid,
           s.patient_id, s.patient_name, p.birth_date, p.sex, s.study_date, s.study_time, s.accession_number,
           s.description, s.referring_physician, se.modality, se.series_number, se.description, se.body_part,
           i.instance_number, i.rows, i.columns, i.frames, i.calling_ae, i.sha256, i.size_bytes, i.path,
           i.cine_frames, i.preview_status, s.study_id
         FROM instances i JOIN series se ON se.series_uid = i.series_uid JOIN studies s ON s.study_uid = i.study_uid
         JOIN patients p ON p.id = s.patient_row
         WHERE i.study_uid = $1
           AND i.version = (SELECT MAX(j.version) FROM instances j WHERE j.sop_instance_uid = i.sop_instance_uid)
         ORDER BY se.series_number, se.series_uid, i.instance_number, i.sop_instance_uid",
    )
    .bind(study_uid)
    .fetch_all(pool)
    .await?;
    let out = rows
        .into_iter()
        .map(|r| OutgoingInstance {
            manifest: ManifestInstance {
                meta: NewInstance {
                    sop_instance_uid: r.get(0),
                    sop_class_uid: r.get(1),
                    transfer_syntax: r.get(2),
                    study_uid: r.get(3),
                    series_uid: r.get(4),
                    patient_id: r.get(5),
                    patient_name: r.get(6),
                    birth_date: r.get(7),
                    sex: r.get(8),
                    study_date: r.get(9),
                    study_time: r.get(10),
                    accession_number: r.get(11),
                    study_description: r.get(12),
                    referring_physician: r.get(13),
                    modality: r.get(14),
                    series_number: r.get(15),
                    series_description: r.get(16),
                    body_part: r.get(17),
                    instance_number: r.get(18),
                    rows: r.get(19),
                    columns: r.get(20),
                    frames: r.get(21),
                    calling_ae: r.get(22),
                    study_id: r.get(28),
                    ..NewInstance::default()
                },
                sha256: r.get(23),
                file_size: r.get::<i64, _>(24) as u64,
                cine_frames: r.get(26),
            },
            rel_path: r.get(25),
            preview_ok: r.get::<String, _>(27) == "ok",
        })
        .collect();
    let (priority, question) = match worklist::priority(&mut *pool.acquire().await?, study_uid).await? {
        Some((p, q)) => (p.name().to_string(), q),
        None => (Priority::Routine.name().to_string(), None),
    };
    Ok((out, priority, question))
}

pub async fn kv_get(pool: &Pool, key: &str) -> Result<Option<String>, IndexError> {
    Ok(sqlx::query("SELECT value FROM relay_kv WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?
        .map(|r| r.get(0)))
}

/// Store what came back from the hub: reports queued for the clinic PACS
/// (when one is configured), notifications for the clinic's page, and the
/// notification cursor, in one transaction; a report already here (same SR
/// UID, the hub re-sent it after a lost ack) is not queued twice.
pub struct ReceivedReport {
    pub study_uid: String,
    pub version: i64,
    pub sop_instance_uid: String,
    pub path: String,
    pub clinic_id: String,
    pub target: Option<String>,
}

pub async fn store_inbox(
    pool: &Pool,
    reports: &[ReceivedReport],
    notes: &[(String, super::wire::WayBackNotification)],
    cursor: i64,
    now_ms: i64,
) -> Result<(), IndexError> {
    let mut tx = crate::store::begin_write_tx(pool).await?;
    for r in reports {
        if delivery::exists_for_sop(&mut tx, &r.sop_instance_uid).await? {
            continue;
        }
        let Some(target) = &r.target else { continue };
        let d = delivery::NewDelivery {
            study_uid: &r.study_uid,
            version: r.version,
            clinic_id: &r.clinic_id,
            target,
            path: &r.path,
            sop_instance_uid: &r.sop_instance_uid,
            now_ms,
        };
        delivery::enqueue(&mut tx, &d).await?;
    }
    for (clinic, n) in notes {
        let notice = notifications::New {
            clinic_id: clinic,
            kind: &n.kind,
            study_uid: n.study_uid.as_deref(),
            request_id: None,
            text: &n.text,
            created_ms: n.created_ms,
        };
        notifications::insert(&mut tx, &notice).await?;
    }
    sqlx::query(
        "INSERT INTO relay_kv (key, value) VALUES ('notif_cursor', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(cursor.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::Index;

    async fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        (dir, idx)
    }

    async fn study(pool: &Pool, uid: &str, status: &str, completed: Option<i64>) {
        sqlx::query(
            "INSERT OR IGNORE INTO patients (id, clinic_id, patient_key, patient_id, patient_name, birth_date, sex)
             VALUES (1, 'c', 'k', 'p', 'n', '', '')",
        )
        .execute(pool)
        .await
        .expect("patient");
        sqlx::query(
            "INSERT INTO studies (study_uid, patient_row, clinic_id, calling_ae, patient_name, patient_id, study_date,
               study_time, accession_number, description, referring_physician, modalities, body_parts,
               first_received_ms, last_received_ms, stable_after_ms, stable_at_ms, status, completed_ms)
             VALUES ($1, 1, 'c', 'AE', 'n', 'p', '', '', '', '', '', 'CT', '', 0, 0, 0, 0, $2, $3)",
        )
        .bind(uid)
        .bind(status)
        .bind(completed)
        .execute(pool)
        .await
        .expect("study");
    }

    async fn prio(pool: &Pool, uid: &str) -> Option<(Priority, Option<String>)> {
        worklist::priority(&mut pool.acquire().await.expect("conn"), uid)
            .await
            .expect("priority")
    }

    async fn history(pool: &Pool, uid: &str) -> Vec<(String, String, String, String)> {
        worklist::history(pool, uid)
            .await
            .expect("history")
            .into_iter()
            .map(|h| (h.from, h.to, h.actor, h.detail.unwrap_or_default()))
            .collect()
    }

    async fn admin_sets(pool: &Pool, uid: &str, p: Priority, t: i64) -> Result<(), WorklistApplyError> {
        crate::store::immediate(pool, async |c| {
            worklist::set_priority(c, uid, p, None, Actor::Admin("root"), t).await
        })
        .await
        .map(|_| ())
    }

    /// The clinic's priority from the edge: a new study enters with it; a
    /// re-sent one only raises it, only while it waits to be read, and
    /// every raise is in its history.
    #[tokio::test]
    async fn a_relayed_priority_enters_with_the_study_and_later_only_raises_a_waiting_one() {
        let (_d, idx) = index().await;
        let pool = idx.pool();
        let uid = "2.x";
        study(pool, uid, "receiving", None).await;
        let pe = Some("suspected PE".to_string());
        commit_study(pool, "e1", uid, &[], "urgent", pe.as_deref(), 10)
            .await
            .expect("commit");
        assert_eq!(prio(pool, uid).await, Some((Priority::Urgent, pe.clone())));
        assert!(history(pool, uid).await.is_empty(), "entering is not a change");
        // Re-sent with a lower priority: the hub's stays.
        commit_study(pool, "e1", uid, &[], "routine", None, 20)
            .await
            .expect("again");
        assert_eq!(prio(pool, uid).await, Some((Priority::Urgent, pe.clone())));
        // The hub's admin lowers it; a re-sent study raises it again, recorded.
        admin_sets(pool, uid, Priority::Routine, 30).await.expect("lower");
        commit_study(pool, "e1", uid, &[], "stat", None, 40)
            .await
            .expect("raise");
        assert_eq!(prio(pool, uid).await, Some((Priority::Stat, pe.clone())));
        let h = history(pool, uid).await;
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(
            h[1],
            ("new".into(), "new".into(), "system".into(), "priority stat".into())
        );
        // Re-sent unchanged: nothing to record.
        commit_study(pool, "e1", uid, &[], "stat", None, 45)
            .await
            .expect("same");
        assert_eq!(history(pool, uid).await.len(), 2);
        // Cancelled at the hub: no priority any more, a re-sent study leaves it alone.
        admin_sets(pool, uid, Priority::Routine, 50).await.expect("lower");
        idx.worklist_apply(uid, &crate::reading::worklist::Action::Cancel, Actor::Admin("root"), 55)
            .await
            .expect("cancel");
        assert!(admin_sets(pool, uid, Priority::Stat, 56).await.is_err());
        commit_study(pool, "e1", uid, &[], "stat", Some("again"), 60)
            .await
            .expect("resent");
        assert_eq!(prio(pool, uid).await, Some((Priority::Routine, pe.clone())));
        assert_eq!(history(pool, uid).await.len(), 4);
    }

    #[tokio::test]
    async fn outbox_follows_completion_priority_and_resends_reopened_studies() {
        let (_d, idx) = index().await;
        let pool = idx.pool();
        study(pool, "1.old", "complete", Some(50)).await;
        install_outbox(pool).await.expect("install");
        // Backfilled.
        let next = next_outbox(pool, &[], 10).await.expect("next");
        assert_eq!(next.iter().map(|i| i.study_uid.as_str()).collect::<Vec<_>>(), ["1.old"]);

        study(pool, "1.a", "receiving", None).await;
        study(pool, "1.b", "receiving", None).await;
        assert_eq!(next_outbox(pool, &[], 10).await.expect("next").len(), 1);
        idx.sweep_stable(1_000).await.expect("sweep");
        // The sweep completed both (stable_at 0): the next sync takes them.
        assert_eq!(next_outbox(pool, &[], 10).await.expect("next").len(), 1);
        sync_outbox(pool).await.expect("sync");
        let uids = |v: Vec<OutboxItem>| v.into_iter().map(|i| i.study_uid).collect::<Vec<_>>();
        assert_eq!(uids(next_outbox(pool, &[], 10).await.expect("next")).len(), 3);
        // STAT overtakes.
        crate::store::immediate(pool, async |c| {
            worklist::set_priority(c, "1.b", Priority::Stat, None, Actor::Admin("root"), 0).await
        })
        .await
        .expect("stat");
        let first = next_outbox(pool, &[], 1).await.expect("next").remove(0);
        assert_eq!(first.study_uid, "1.b");
        mark_sent(pool, &first, 10, 1).await.expect("sent");
        assert!(!uids(next_outbox(pool, &[], 10).await.expect("next")).contains(&"1.b".to_string()));
        assert_eq!(
            uids(next_outbox(pool, &["1.old".to_string()], 10).await.expect("next")),
            ["1.a"]
        );
        // Late images re-open and re-complete 1.b: it is due again.
        sqlx::query("UPDATE studies SET status = 'receiving' WHERE study_uid = '1.b'")
            .execute(pool)
            .await
            .expect("reopen");
        sync_outbox(pool).await.expect("sync");
        assert!(!uids(next_outbox(pool, &[], 10).await.expect("next")).contains(&"1.b".to_string()));
        sqlx::query("UPDATE studies SET status = 'complete', completed_ms = 2000 WHERE study_uid = '1.b'")
            .execute(pool)
            .await
            .expect("recomplete");
        sync_outbox(pool).await.expect("sync");
        assert_eq!(uids(next_outbox(pool, &[], 1).await.expect("next")), ["1.b"]);
        // Nothing new: the sync writes nothing (and the cursor holds).
        sync_outbox(pool).await.expect("sync");
        assert_eq!(kv_get(pool, OUTBOX_CURSOR).await.expect("kv").as_deref(), Some("2000"));
        let s = outbox_stats(pool).await.expect("stats");
        assert_eq!(s.depth, 3);
    }

    #[tokio::test]
    async fn staging_needs_an_announced_study_and_revocation_is_sticky() {
        let (_d, idx) = index().await;
        let pool = idx.pool();
        register_edge(pool, "e1", "c", "fp1", 1).await.expect("reg");
        assert_eq!(edge_for_clinic(pool, "c").await.expect("q").as_deref(), Some("e1"));
        let part = Staged {
            sop_uid: "1.2".into(),
            kind: "instance".into(),
            sha256: "s".into(),
            size: 3,
            path: "p".into(),
        };
        assert!(
            !stage(pool, "e1", "1.1", std::slice::from_ref(&part), 5)
                .await
                .expect("stage")
        );
        let m = Manifest {
            study_uid: "1.1".into(),
            priority: "routine".into(),
            clinical_question: None,
            instances: vec![],
        };
        let h = begin(pool, "e1", "c", &m, "{}", 5).await.expect("begin");
        assert!(h.instances.is_empty());
        assert!(stage(pool, "e1", "1.1", &[part], 6).await.expect("stage"));
        let h = begin(pool, "e1", "c", &m, "{}", 7).await.expect("begin");
        assert!(h.instances.contains("1.2"));
        assert!(!is_revoked(pool, "e1").await.expect("q"));
        assert!(revoke_edge(pool, "e1", 9).await.expect("revoke"));
        assert!(is_revoked(pool, "e1").await.expect("q"));
        assert!(is_revoked(pool, "nobody").await.expect("q"));
        assert_eq!(edge_for_clinic(pool, "c").await.expect("q"), None);
    }
}
