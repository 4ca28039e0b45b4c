//! The study index (SQLite through sqlx): schema, the single writer with group
//! commit, study stability, and the read queries the API needs.
//!
//! SQLite allows one writer at a time, so all writes go through one task that
//! drains whatever requests are waiting and commits them in one transaction:
//! concurrent associations then share one WAL fsync instead of queueing on the
//! database lock. Each request runs inside its own savepoint so one bad
//! instance cannot fail its neighbours.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::files::{ArchiveError, Committed};
use crate::dicom::pn::{self, NameQuery};
use crate::reading::worklist::{Action as WorkAction, Actor, Priority, Transition};
pub use crate::store::push_in;
use crate::store::worklist::{self, WorklistApplyError};
use crate::store::{Backend, Pool};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("index writer has shut down")]
    Closed,
    /// The database cannot be reached (PostgreSQL down or restarting, the
    /// pool's connections gone): nothing was written; retry later.
    #[error("index database unavailable: {0}")]
    Unavailable(String),
    /// The instance would alter stored data it does not belong to; nothing
    /// was written.
    #[error(transparent)]
    Conflict(Box<Conflict>),
}

/// A level of the DICOM information model, as named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidLevel {
    Study,
    Series,
    Instance,
}

impl UidLevel {
    /// The attribute's name, for DIMSE error comments.
    pub fn attribute(self) -> &'static str {
        match self {
            UidLevel::Study => "Study Instance UID",
            UidLevel::Series => "Series Instance UID",
            UidLevel::Instance => "SOP Instance UID",
        }
    }

    /// Short token for audit records.
    pub fn token(self) -> &'static str {
        match self {
            UidLevel::Study => "study",
            UidLevel::Series => "series",
            UidLevel::Instance => "instance",
        }
    }
}

/// Where the colliding UID already lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// In a study of another clinic (its id, for the audit trail only: the
    /// sending device is never told whose data it hit).
    OtherClinic { owner: String },
    /// Same clinic, but the series is filed under another study.
    OtherStudy,
    /// Same clinic, but the instance is filed under another series or study.
    OtherSeries,
}

/// An incoming instance whose UIDs collide with stored data it does not
/// belong to. Filing it would merge it into another study (a new version of
/// another clinic's instance, served to that clinic's viewers; a completed
/// study reopened), so it is refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub level: UidLevel,
    pub kind: ConflictKind,
    /// The refused instance's own UIDs, as sent.
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
}

impl std::fmt::Display for Conflict {
    /// Worded for the DIMSE Error Comment (at most 64 characters, and no
    /// clinic ids: the sender learns only that the UID is taken).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match self.kind {
            ConflictKind::OtherClinic { .. } => "another clinic",
            ConflictKind::OtherStudy => "another study",
            ConflictKind::OtherSeries => "another series",
        };
        write!(f, "{} belongs to {whose}", self.level.attribute())
    }
}

impl std::error::Error for Conflict {}

impl Conflict {
    /// The owning clinic, when the collision is with another clinic's data.
    pub fn owner(&self) -> Option<&str> {
        match &self.kind {
            ConflictKind::OtherClinic { owner } => Some(owner),
            _ => None,
        }
    }

    pub fn reason_token(&self) -> &'static str {
        match self.kind {
            ConflictKind::OtherClinic { .. } => "other-clinic",
            ConflictKind::OtherStudy => "other-study",
            ConflictKind::OtherSeries => "other-series",
        }
    }
}

/// Where the UIDs of an incoming instance already live in the index.
#[derive(Debug, Default)]
struct Homes {
    /// The clinic of the study with this Study Instance UID.
    study_clinic: Option<String>,
    /// (study UID, clinic) of the series with this Series Instance UID.
    series: Option<(String, String)>,
    /// (series UID, study UID, clinic) of every stored version of the SOP
    /// Instance UID.
    instance: Vec<(String, String, String)>,
}

/// Decides whether `i` may be filed where its UIDs say, given where those
/// UIDs already live. Another clinic's data is checked first at every level
/// (the strongest reason), then the hierarchy within the clinic.
fn judge(i: &NewInstance, h: &Homes) -> Result<(), Box<Conflict>> {
    let conflict = |level, kind| {
        Err(Box::new(Conflict {
            level,
            kind,
            study_uid: i.study_uid.clone(),
            series_uid: i.series_uid.clone(),
            sop_instance_uid: i.sop_instance_uid.clone(),
        }))
    };
    let other = |owner: &str| ConflictKind::OtherClinic {
        owner: owner.to_string(),
    };
    if let Some(owner) = h.study_clinic.as_deref().filter(|c| *c != i.clinic_id) {
        return conflict(UidLevel::Study, other(owner));
    }
    if let Some((_, owner)) = h.series.as_ref().filter(|(_, c)| *c != i.clinic_id) {
        return conflict(UidLevel::Series, other(owner));
    }
    if let Some((_, _, owner)) = h.instance.iter().find(|(_, _, c)| *c != i.clinic_id) {
        return conflict(UidLevel::Instance, other(owner));
    }
    if h.series.as_ref().is_some_and(|(study, _)| *study != i.study_uid) {
        return conflict(UidLevel::Series, ConflictKind::OtherStudy);
    }
    if h.instance
        .iter()
        .any(|(series, study, _)| *series != i.series_uid || *study != i.study_uid)
    {
        return conflict(UidLevel::Instance, ConflictKind::OtherSeries);
    }
    Ok(())
}

impl StoreError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Index { source, .. } if source.is_disk_full())
    }

    /// A full disk or an unreachable index database: the sender should
    /// retry later (DIMSE 0xA7xx), nothing was acknowledged.
    pub fn is_out_of_resources(&self) -> bool {
        matches!(self, StoreError::Index { source, .. } if source.is_disk_full() || source.is_unavailable())
    }
}

impl IndexError {
    /// The database could not be reached (see [`crate::store::is_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            IndexError::Unavailable(_) => true,
            IndexError::Db(e) => crate::store::is_unavailable(e),
            _ => false,
        }
    }

    /// SQLITE_FULL (13) or an I/O error on a full disk: a resource problem.
    pub fn is_disk_full(&self) -> bool {
        match self {
            IndexError::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("13") | Some("4874"))
            }
            IndexError::Db(sqlx::Error::Io(e)) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL,
    UNIQUE (clinic_id, patient_key)
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_row INTEGER NOT NULL REFERENCES patients(id),
    clinic_id TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    description TEXT NOT NULL,
    referring_physician TEXT NOT NULL,
    modalities TEXT NOT NULL,
    body_parts TEXT NOT NULL,
    num_series INTEGER NOT NULL DEFAULT 0,
    num_instances INTEGER NOT NULL DEFAULT 0,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    first_received_ms INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL,
    stable_after_ms INTEGER NOT NULL,
    stable_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    completed_ms INTEGER
);
CREATE INDEX IF NOT EXISTS studies_stable ON studies(status, stable_at_ms);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE INDEX IF NOT EXISTS studies_received ON studies(last_received_ms);
CREATE INDEX IF NOT EXISTS studies_patient_id ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_clinic ON studies(clinic_id);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT NOT NULL,
    series_number INTEGER,
    description TEXT NOT NULL,
    body_part TEXT NOT NULL,
    num_instances INTEGER NOT NULL DEFAULT 0,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    first_received_ms INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER,
    columns INTEGER,
    frames INTEGER,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (sop_instance_uid, version)
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS worklist (
    study_uid TEXT PRIMARY KEY REFERENCES studies(study_uid),
    state TEXT NOT NULL,
    priority TEXT NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    completions INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS worklist_state ON worklist(state, enqueued_ms);
"#;

/// Schema changes after the first release, applied in order and recorded in
/// `PRAGMA user_version`, so an existing archive upgrades in place.
const MIGRATIONS: &[&str] = &[
    // 1: preview status per instance (previews issue)
    "ALTER TABLE instances ADD COLUMN preview_status TEXT NOT NULL DEFAULT 'pending';
     ALTER TABLE instances ADD COLUMN preview_ms INTEGER;
     ALTER TABLE instances ADD COLUMN cine_frames INTEGER;
     CREATE INDEX IF NOT EXISTS instances_preview ON instances(preview_status);",
    // 2: claims with leases and the transition log (reading workflow)
    "ALTER TABLE worklist ADD COLUMN claimed_by TEXT;
     ALTER TABLE worklist ADD COLUMN lease_until_ms INTEGER;
     ALTER TABLE worklist ADD COLUMN detail TEXT;
     CREATE TABLE IF NOT EXISTS worklist_transitions (
         id INTEGER PRIMARY KEY,
         study_uid TEXT NOT NULL,
         from_state TEXT NOT NULL,
         to_state TEXT NOT NULL,
         actor TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         detail TEXT
     );
     CREATE INDEX IF NOT EXISTS worklist_transitions_study ON worklist_transitions(study_uid, at_ms);
     CREATE INDEX IF NOT EXISTS worklist_lease ON worklist(state, lease_until_ms);",
    // 3: accounts, sessions, reports, SR delivery, notifications,
    // consultation requests, audit trail (reading workflow)
    "ALTER TABLE worklist ADD COLUMN clinical_question TEXT;
     ALTER TABLE worklist ADD COLUMN priority_rank INTEGER NOT NULL DEFAULT 2;
     CREATE INDEX IF NOT EXISTS worklist_queue ON worklist(state, priority_rank, enqueued_ms);
     CREATE TABLE IF NOT EXISTS users (
         username TEXT PRIMARY KEY,
         display_name TEXT NOT NULL,
         role TEXT NOT NULL,
         clinic_id TEXT,
         hospital_id TEXT,
         department TEXT,
         password_hash TEXT NOT NULL,
         disabled INTEGER NOT NULL DEFAULT 0,
         created_ms INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS sessions (
         token_hash TEXT PRIMARY KEY,
         username TEXT NOT NULL,
         csrf TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         last_seen_ms INTEGER NOT NULL,
         remote TEXT
     );
     CREATE INDEX IF NOT EXISTS sessions_user ON sessions(username);
     CREATE TABLE IF NOT EXISTS reports (
         study_uid TEXT NOT NULL,
         version INTEGER NOT NULL,
         status TEXT NOT NULL,
         findings TEXT NOT NULL,
         impression TEXT NOT NULL,
         author TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL,
         signed_ms INTEGER,
         sr_sop_uid TEXT,
         PRIMARY KEY (study_uid, version)
     );
     CREATE TABLE IF NOT EXISTS deliveries (
         id INTEGER PRIMARY KEY,
         study_uid TEXT NOT NULL,
         version INTEGER NOT NULL,
         clinic_id TEXT NOT NULL,
         target TEXT NOT NULL,
         path TEXT NOT NULL,
         sop_instance_uid TEXT NOT NULL,
         state TEXT NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         next_attempt_ms INTEGER NOT NULL,
         last_error TEXT,
         created_ms INTEGER NOT NULL,
         sent_ms INTEGER
     );
     CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_ms);
     CREATE INDEX IF NOT EXISTS deliveries_study ON deliveries(study_uid);
     CREATE TABLE IF NOT EXISTS notifications (
         id INTEGER PRIMARY KEY,
         clinic_id TEXT NOT NULL,
         kind TEXT NOT NULL,
         study_uid TEXT,
         request_id INTEGER,
         text TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         read_ms INTEGER
     );
     CREATE INDEX IF NOT EXISTS notifications_clinic ON notifications(clinic_id, created_ms);
     CREATE TABLE IF NOT EXISTS consult_requests (
         id INTEGER PRIMARY KEY,
         clinic_id TEXT NOT NULL,
         requested_by TEXT NOT NULL,
         patient_id TEXT NOT NULL,
         patient_name TEXT NOT NULL,
         question TEXT NOT NULL,
         study_uids TEXT NOT NULL,
         urgency TEXT NOT NULL,
         preferred_from_ms INTEGER,
         preferred_to_ms INTEGER,
         state TEXT NOT NULL,
         expert TEXT,
         scheduled_ms INTEGER,
         room_id TEXT,
         cancel_reason TEXT,
         created_ms INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS consult_requests_clinic ON consult_requests(clinic_id, created_ms);
     CREATE TABLE IF NOT EXISTS audit (
         id INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL,
         username TEXT NOT NULL,
         role TEXT NOT NULL,
         action TEXT NOT NULL,
         study_uid TEXT,
         detail TEXT,
         remote TEXT
     );
     CREATE INDEX IF NOT EXISTS audit_time ON audit(at_ms);
     CREATE INDEX IF NOT EXISTS audit_study ON audit(study_uid, at_ms);",
    // 4: list speed at 100 000+ studies. previews_ready counts per study
    // (it used the preview_status index and scanned every rendered
    // instance); the worklist carries its study's clinic, modalities and
    // body parts, so the reading queue is scoped, filtered and ordered
    // without joining studies (refreshed whenever the study completes).
    "CREATE INDEX IF NOT EXISTS instances_study_preview ON instances(study_uid, preview_status);
     ALTER TABLE worklist ADD COLUMN clinic_id TEXT NOT NULL DEFAULT '';
     UPDATE worklist SET clinic_id = COALESCE((SELECT s.clinic_id FROM studies s WHERE s.study_uid = worklist.study_uid), '');
     ALTER TABLE worklist ADD COLUMN modalities TEXT NOT NULL DEFAULT '';
     ALTER TABLE worklist ADD COLUMN body_parts TEXT NOT NULL DEFAULT '';
     UPDATE worklist SET modalities = COALESCE((SELECT s.modalities FROM studies s WHERE s.study_uid = worklist.study_uid), ''),
       body_parts = COALESCE((SELECT s.body_parts FROM studies s WHERE s.study_uid = worklist.study_uid), '');
     CREATE INDEX IF NOT EXISTS worklist_clinic_queue ON worklist(clinic_id, state, priority_rank, enqueued_ms);",
    // 5: the WAN relay link. Hub: registered edges (certificate
    // fingerprints, revocation), studies arriving from edges, and the parts
    // staged durably before a study commits. Edge: the outbox of complete
    // studies still to send (filled from the studies' completion stamps,
    // see relay::store::sync_outbox)
    // and small durable cursors.
    "CREATE TABLE IF NOT EXISTS relay_edges (
         name TEXT PRIMARY KEY,
         clinic_id TEXT NOT NULL,
         fingerprint TEXT NOT NULL UNIQUE,
         issued_ms INTEGER NOT NULL,
         revoked_ms INTEGER,
         last_seen_ms INTEGER,
         last_addr TEXT,
         notif_cursor INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE IF NOT EXISTS relay_inbound (
         edge TEXT NOT NULL,
         study_uid TEXT NOT NULL,
         clinic_id TEXT NOT NULL,
         state TEXT NOT NULL,
         total INTEGER NOT NULL,
         total_bytes INTEGER NOT NULL,
         priority TEXT NOT NULL,
         clinical_question TEXT,
         manifest TEXT NOT NULL,
         began_ms INTEGER NOT NULL,
         first_preview_ms INTEGER,
         first_instance_ms INTEGER,
         committed_ms INTEGER,
         PRIMARY KEY (edge, study_uid)
     );
     CREATE INDEX IF NOT EXISTS relay_inbound_state ON relay_inbound(state, began_ms);
     CREATE TABLE IF NOT EXISTS relay_staged (
         edge TEXT NOT NULL,
         study_uid TEXT NOT NULL,
         sop_uid TEXT NOT NULL,
         kind TEXT NOT NULL,
         sha256 TEXT NOT NULL,
         size INTEGER NOT NULL,
         path TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         PRIMARY KEY (edge, study_uid, sop_uid, kind)
     );
     CREATE TABLE IF NOT EXISTS relay_outbox (
         study_uid TEXT PRIMARY KEY,
         completed_ms INTEGER NOT NULL,
         enqueued_ms INTEGER NOT NULL,
         sent_completed_ms INTEGER,
         sent_ms INTEGER,
         attempts INTEGER NOT NULL DEFAULT 0,
         last_error TEXT,
         bytes_sent INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE IF NOT EXISTS relay_kv (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     )",
    // 6: patient-name search keys (Chinese names). Every folded key of a
    // study's Person Name (all three component groups, see `dicom::pn`), so
    // 王, 王小东, `wang` or `Wang^Xiaodong` are found by an index range
    // lookup instead of a LIKE over every study. Filled for the studies
    // already indexed by `backfill_study_names` in the same transaction.
    "CREATE TABLE IF NOT EXISTS study_names (
         key TEXT NOT NULL,
         study_uid TEXT NOT NULL,
         PRIMARY KEY (key, study_uid)
     ) WITHOUT ROWID",
    // 7: the interface language an account chose (NULL: follow the
    // browser's Accept-Language); owned by reading::accounts.
    "ALTER TABLE users ADD COLUMN language TEXT",
    // 8: the relay outbox reads completions by their stamp instead of a
    // trigger on `studies` (the archive's tables carry nothing of the
    // relay's); an edge upgraded from a trigger-fed outbox loses it here.
    "DROP TRIGGER IF EXISTS relay_outbox_enqueue;
     CREATE INDEX IF NOT EXISTS studies_completed ON studies(completed_ms)",
    // 9: a dated study search in the order of one index (see
    // `search_studies`; the date-only index is its prefix and goes), and
    // the reading queue (the worklist's default view: open entries, most
    // urgent then longest waiting) in index order, so a page is the first
    // 50 entries of one index instead of a sort of every open entry (at a
    // million studies, 60 000 open: 100 ms). Partial: only open entries,
    // and store::worklist writes the query's state filter with this exact
    // text so both planners can use it.
    "CREATE INDEX IF NOT EXISTS worklist_open ON worklist(priority_rank, enqueued_ms, study_uid)
       WHERE state IN ('new', 'claimed', 'returned');
     CREATE INDEX IF NOT EXISTS studies_date_received ON studies(study_date, last_received_ms, study_uid);
     DROP INDEX IF EXISTS studies_date",
    // 10: Query/Retrieve (dicom::qr). Study ID is a required C-FIND key,
    // kept from now on (studies indexed before stay blank: the value is
    // only in their files); an accession number and a patient's ID are
    // what a PACS or workstation asks for most, each found by an index.
    "ALTER TABLE studies ADD COLUMN study_id TEXT NOT NULL DEFAULT '';
     CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
     CREATE INDEX IF NOT EXISTS patients_patient_id ON patients(patient_id)",
    // 11: API tokens for DICOMweb machine clients (owned by
    // reading::tokens): only the token's SHA-256 is stored; a revoked
    // token keeps its row (revoked_ms), so audit rows keep their name.
    "CREATE TABLE IF NOT EXISTS api_tokens (
         name TEXT PRIMARY KEY,
         token_hash TEXT NOT NULL UNIQUE,
         scope TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         last_used_ms INTEGER,
         revoked_ms INTEGER
     )",
];

/// The `user_version` that `study_names` arrives with (see `MIGRATIONS`).
const STUDY_NAMES_VERSION: usize = 6;

/// Studies read per step of the name backfill: bounds its memory whatever
/// the archive's size.
const BACKFILL_BATCH: i64 = 1_000;

/// Rows per multi-row INSERT of name keys (two binds each, well under
/// SQLite's 32 766 host parameters).
const KEYS_PER_INSERT: usize = 200;

/// Writes the search keys of one study's patient name (ignoring those it
/// already has): one statement per [`KEYS_PER_INSERT`] keys.
async fn insert_study_names(c: &mut Conn, study_uid: &str, patient_name: &str) -> Result<(), sqlx::Error> {
    let keys = pn::PersonName::parse(patient_name).search_keys();
    for chunk in keys.chunks(KEYS_PER_INSERT) {
        let mut qb = crate::store::Sql::new("INSERT INTO study_names (key, study_uid) VALUES ");
        for (n, k) in chunk.iter().enumerate() {
            if n > 0 {
                qb.push(", ");
            }
            qb.push_tuple([k.as_str(), study_uid]);
        }
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *c).await?;
    }
    Ok(())
}

/// Migration 6 for an archive indexed before it: name keys for every study,
/// and names cleaned of the ISO 2022 escape sequences that the decoder of
/// the time left in (`\ISO 2022 IR 58` names), in batches by study UID.
async fn backfill_study_names(c: &mut Conn) -> Result<(), sqlx::Error> {
    let mut after = String::new();
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT study_uid, patient_name FROM studies WHERE study_uid > $1 ORDER BY study_uid LIMIT $2",
        )
        .bind(&after)
        .bind(BACKFILL_BATCH)
        .fetch_all(&mut *c)
        .await?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (uid, name) in &rows {
            let cleaned = pn::clean(name);
            if cleaned != *name {
                sqlx::query("UPDATE studies SET patient_name = $1 WHERE study_uid = $2")
                    .bind(&cleaned)
                    .bind(uid)
                    .execute(&mut *c)
                    .await?;
            }
            insert_study_names(c, uid, &cleaned).await?;
        }
    }
    // Cleaning removes every ESC, so each batch leaves the next query.
    loop {
        let patients: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, patient_name FROM patients WHERE instr(patient_name, char(27)) > 0 LIMIT $1")
                .bind(BACKFILL_BATCH)
                .fetch_all(&mut *c)
                .await?;
        if patients.is_empty() {
            break;
        }
        for (id, name) in patients {
            sqlx::query("UPDATE patients SET patient_name = $1 WHERE id = $2")
                .bind(pn::clean(&name))
                .bind(id)
                .execute(&mut *c)
                .await?;
        }
    }
    Ok(())
}

async fn migrate_sqlite(pool: &Pool) -> Result<(), IndexError> {
    let mut conn = pool.acquire().await?;
    let current: i64 = sqlx::query("PRAGMA user_version").fetch_one(&mut *conn).await?.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let step = async {
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *conn).await?;
            }
            if i + 1 == STUDY_NAMES_VERSION {
                backfill_study_names(&mut conn).await?;
            }
            sqlx::query(&format!("PRAGMA user_version = {}", i + 1))
                .execute(&mut *conn)
                .await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        match step {
            Ok(()) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The PostgreSQL schema, one versioned chain of its own (v1 is the whole
/// schema SQLite reached through `SCHEMA` and `MIGRATIONS`), recorded in
/// `medrelay_schema`. Each step runs in one transaction under an advisory
/// lock, so nodes starting together migrate once.
const PG_MIGRATIONS: &[&str] = &[
    include_str!("../store/migrations/postgres/v1.sql"),
    include_str!("../store/migrations/postgres/v2.sql"),
    include_str!("../store/migrations/postgres/v3.sql"),
    include_str!("../store/migrations/postgres/v4.sql"),
    include_str!("../store/migrations/postgres/v5.sql"),
];

/// The advisory lock key held while PostgreSQL migrations run.
const PG_MIGRATE_LOCK: i64 = crate::store::WRITE_LOCK_KEY ^ 1;

async fn migrate_postgres(pool: &Pool) -> Result<(), IndexError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PG_MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    let r = async {
        // Looked up first: `CREATE TABLE IF NOT EXISTS` on an existing
        // table makes PostgreSQL send a notice, which lands in the log at
        // every start as if something were wrong.
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'medrelay_schema'",
        )
        .fetch_one(&mut *conn)
        .await?;
        if exists == 0 {
            sqlx::query("CREATE TABLE IF NOT EXISTS medrelay_schema (version BIGINT NOT NULL)")
                .execute(&mut *conn)
                .await?;
        }
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM medrelay_schema")
            .fetch_one(&mut *conn)
            .await?;
        for (i, sql) in PG_MIGRATIONS
            .iter()
            .enumerate()
            .skip(current.unwrap_or(0).max(0) as usize)
        {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM medrelay_schema").execute(&mut *tx).await?;
            sqlx::query("INSERT INTO medrelay_schema (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok::<(), sqlx::Error>(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PG_MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    Ok(r?)
}

/// Brings the index's schema to the current version of its backend.
pub async fn migrate_pool(pool: &Pool) -> Result<(), IndexError> {
    match Backend::of_pool(pool) {
        Backend::Sqlite => {
            sqlx::raw_sql(SCHEMA).execute(pool).await?;
            migrate_sqlite(pool).await
        }
        Backend::Postgres => migrate_postgres(pool).await,
    }
}

/// The schema version the index is at (SQLite: `user_version` after the
/// base schema; PostgreSQL: its own chain) and the version this build
/// brings it to.
pub async fn schema_version(pool: &Pool) -> Result<(i64, i64), IndexError> {
    Ok(match Backend::of_pool(pool) {
        Backend::Sqlite => {
            let v: i64 = sqlx::query("PRAGMA user_version").fetch_one(pool).await?.get(0);
            (v, MIGRATIONS.len() as i64)
        }
        Backend::Postgres => {
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM medrelay_schema")
                .fetch_one(pool)
                .await?;
            (v.unwrap_or(0), PG_MIGRATIONS.len() as i64)
        }
    })
}

/// `sqlite://<path>` for an index file. sqlx's Any driver parses it as a
/// URL before SQLite sees it, so the path is made absolute (a relative
/// `data/index.db` would be read as a host name) and the characters a URL
/// gives meaning to are escaped (sqlx percent-decodes the path again):
/// data directories with spaces, `#` or Chinese names keep working.
pub fn sqlite_url(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::from("sqlite://");
    for ch in abs.to_string_lossy().chars() {
        match ch {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Opens a pool on the index at `url` without touching its schema. SQLite:
/// created if missing, WAL, `synchronous = FULL` (a commit is on disk
/// before the C-STORE-RSP goes out), foreign keys, a busy timeout.
/// PostgreSQL: a bounded pool whose acquire gives up after a few seconds,
/// so an unreachable server turns into an error the edges map (0xA7xx,
/// 503) instead of a hang, and reconnects by itself when it is back.
pub async fn connect(url: &str) -> Result<Pool, IndexError> {
    connect_with(url, "FULL", 6).await
}

/// `connect`, with SQLite's `synchronous` setting and pool size given.
async fn connect_with(url: &str, synchronous: &'static str, sqlite_connections: u32) -> Result<Pool, IndexError> {
    crate::store::install_drivers();
    let opts = sqlx::any::AnyPoolOptions::new();
    let pool = if url.starts_with("sqlite:") {
        let url = if url.contains('?') {
            url.to_string()
        } else {
            format!("{url}?mode=rwc")
        };
        opts.max_connections(sqlite_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let sync = format!("PRAGMA synchronous = {synchronous}");
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        sync.as_str(),
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                        // Checkpoints run from `checkpointer`, not inside
                        // whichever commit crosses the threshold: that
                        // commit is usually a C-STORE waiting for its ack.
                        "PRAGMA wal_autocheckpoint = 0",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?
    } else {
        opts.max_connections(16)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?
    };
    Ok(pool)
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub study_uid: String,
    pub series_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub birth_date: String,
    pub sex: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    /// Study ID (0020,0010), a Q/R required key. Absent in manifests from
    /// edges older than this field.
    #[serde(default)]
    pub study_id: String,
    pub study_description: String,
    pub referring_physician: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub series_description: String,
    pub body_part: String,
    pub instance_number: Option<i64>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub frames: Option<i64>,
    pub calling_ae: String,
    pub clinic_id: String,
    pub stable_after_ms: i64,
    pub received_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// Same SOP Instance UID, same bytes: nothing changed.
    Duplicate,
    /// Same SOP Instance UID, different bytes: kept as this version number.
    NewVersion(i64),
}

/// Resolves once the instance file is durable (fsynced, renamed, directory
/// fsynced) with its final record, or with the reason it could not be.
pub type DurableGate = oneshot::Receiver<Result<Committed, ArchiveError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The index write failed; `file` is the durable file, if any, which the
    /// caller should remove so that no unindexed file is kept.
    #[error("{source}")]
    Index {
        source: IndexError,
        file: Option<Committed>,
    },
    /// The file could not be made durable; the index work was rolled back.
    #[error("{0}")]
    NotDurable(ArchiveError),
}

type StoreReply = oneshot::Sender<Result<(StoreOutcome, Committed), StoreError>>;

/// Outcome of rendering one instance's previews.
#[derive(Debug, Clone)]
pub struct PreviewResult {
    pub sop_instance_uid: String,
    pub version: i64,
    /// "ok", or "no preview: <reason>".
    pub status: String,
    pub cine_frames: Option<i64>,
    pub done_ms: i64,
}

enum WriteRequest {
    Preview(PreviewResult, oneshot::Sender<Result<(), IndexError>>),
    Store {
        inst: Box<NewInstance>,
        planned: Committed,
        gate: Option<DurableGate>,
        reply: StoreReply,
    },
    Sweep(i64, oneshot::Sender<Result<Vec<String>, IndexError>>),
}

/// Cheap to clone: a pool for reads and a channel to the writer.
#[derive(Clone)]
pub struct Index {
    pool: Pool,
    backend: Backend,
    writer: mpsc::Sender<WriteRequest>,
}

/// Upper bound on requests folded into one transaction.
const MAX_BATCH: usize = 128;

impl Index {
    /// Open (creating if needed) the SQLite index at `path` and start the
    /// writer task. The writer ends when every `Index` clone is dropped.
    pub async fn open(path: &Path) -> Result<(Index, tokio::task::JoinHandle<()>), IndexError> {
        Index::open_url(&sqlite_url(path)).await
    }

    /// Open the index at `url` (`sqlite://…` or `postgres://…`), bring its
    /// schema to the current version, and start the writer task.
    pub async fn open_url(url: &str) -> Result<(Index, tokio::task::JoinHandle<()>), IndexError> {
        let pool = connect(url).await?;
        migrate_pool(&pool).await?;
        let (tx, rx) = mpsc::channel(1024);
        let writer_pool = pool.clone();
        let backend = Backend::of_pool(&pool);
        // SQLite: preview statuses can always be re-derived (a lost one is
        // rendered again), so batches of nothing else commit through a
        // connection that does not sync the WAL; the next synchronous
        // commit makes them durable. A WAL sync per rendered instance would
        // compete with the C-STORE acknowledgements for the disk. (The
        // writer runs one batch at a time, so the two never write at once.)
        let lazy = match backend {
            Backend::Sqlite => Some(connect_with(url, "NORMAL", 1).await?),
            Backend::Postgres => None,
        };
        let handle = tokio::spawn(writer_loop(writer_pool, lazy, rx));
        if backend == Backend::Sqlite {
            tokio::spawn(checkpointer(pool.clone(), tx.downgrade()));
        }
        Ok((
            Index {
                pool,
                backend,
                writer: tx,
            },
            handle,
        ))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether the index answers at all (health checks).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Index an instance whose file is already durable.
    pub async fn store(&self, inst: NewInstance, file: Committed) -> Result<StoreOutcome, StoreError> {
        self.store_when_durable(inst, file, None).await.map(|(o, _)| o)
    }

    /// Index an instance while its file is still being made durable: the
    /// statements run now, overlapping the fsyncs, and the transaction commits
    /// only after `gate` reports the file durable. `planned` carries the hash,
    /// size and path, which are known before the fsync.
    pub async fn store_when_durable(
        &self,
        inst: NewInstance,
        planned: Committed,
        gate: Option<DurableGate>,
    ) -> Result<(StoreOutcome, Committed), StoreError> {
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Index {
            source: IndexError::Closed,
            file: None,
        };
        self.writer
            .send(WriteRequest::Store {
                inst: Box::new(inst),
                planned,
                gate,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Mark studies quiet since their `stable_after` as complete and enqueue
    /// them for reading. Returns the study UIDs that completed now.
    pub async fn sweep_stable(&self, now_ms: i64) -> Result<Vec<String>, IndexError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteRequest::Sweep(now_ms, tx))
            .await
            .map_err(|_| IndexError::Closed)?;
        rx.await.map_err(|_| IndexError::Closed)?
    }

    pub async fn set_preview(&self, p: PreviewResult) -> Result<(), IndexError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteRequest::Preview(p, tx))
            .await
            .map_err(|_| IndexError::Closed)?;
        rx.await.map_err(|_| IndexError::Closed)?
    }

    /// Instances still waiting for previews, oldest first (restart catch-up).
    pub async fn pending_previews(&self, limit: i64) -> Result<Vec<(String, i64, String)>, IndexError> {
        Ok(sqlx::query(
            "SELECT sop_instance_uid, version, path FROM instances WHERE preview_status = 'pending'
             ORDER BY received_ms LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
    }

    /// Earliest time a receiving study may become stable, to sleep until then.
    pub async fn next_stable_at(&self) -> Result<Option<i64>, IndexError> {
        let row = sqlx::query("SELECT MIN(stable_at_ms) FROM studies WHERE status = 'receiving'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }
}

/// WAL pages beyond which a checkpoint that could not catch up is worth
/// a note (SQLite's own automatic threshold).
const CHECKPOINT_PAGES: i64 = 1000;
/// How often the checkpointer looks at the log.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// SQLite only: keeps the WAL short off the commit path (automatic
/// checkpoints are off, see `connect`). A passive checkpoint never blocks
/// the writer or readers, it copies what it can. Ends with the index.
async fn checkpointer(pool: Pool, writer: mpsc::WeakSender<WriteRequest>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if writer.upgrade().is_none() || pool.is_closed() {
            return;
        }
        // (busy, log pages, checkpointed pages); the log restarts by itself
        // once a checkpoint has caught up.
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await {
            Ok(row) => {
                let log: i64 = row.try_get(1).unwrap_or(0);
                let done: i64 = row.try_get(2).unwrap_or(0);
                if log > CHECKPOINT_PAGES && done < log {
                    tracing::debug!(log, done, "WAL checkpoint behind readers");
                }
            }
            Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed; retrying"),
        }
    }
}

async fn writer_loop(pool: Pool, lazy: Option<Pool>, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let previews_only = batch.iter().all(|r| matches!(r, WriteRequest::Preview(..)));
        match &lazy {
            Some(lazy) if previews_only => run_batch(lazy, &mut batch).await,
            _ => run_batch(&pool, &mut batch).await,
        }
    }
}

enum Done {
    Unit(oneshot::Sender<Result<(), IndexError>>, Result<(), IndexError>),
    Store(StoreReply, Result<(StoreOutcome, Committed), StoreError>),
    Sweep(
        oneshot::Sender<Result<Vec<String>, IndexError>>,
        Result<Vec<String>, IndexError>,
    ),
}

/// Apply a batch in one transaction, each request in its own savepoint (when
/// there are neighbours to protect). Replies go out only after the commit, so
/// no caller hears "stored" for something that could still roll back.
async fn run_batch(pool: &Pool, batch: &mut Vec<WriteRequest>) {
    let alone = batch.len() == 1;
    let mut done: Vec<Done> = Vec::with_capacity(batch.len());
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch.drain(..), &Shared::of(&e, "")),
    };
    if let Err(e) = crate::store::begin_write(&mut conn).await {
        return fail_all(batch.drain(..), &Shared::of(&e, ""));
    }
    let mut any_ok = false;
    for req in batch.drain(..) {
        if !alone && let Err(e) = sqlx::query("SAVEPOINT req").execute(&mut *conn).await {
            done.push(fail_one(req, &Shared::of(&e, "")));
            continue;
        }
        let (ok, d) = match req {
            WriteRequest::Sweep(now, reply) => {
                let r = apply_sweep(&mut conn, now).await;
                (r.is_ok(), Done::Sweep(reply, r))
            }
            WriteRequest::Preview(p, reply) => {
                let r = sqlx::query(
                    "UPDATE instances SET preview_status = $1, cine_frames = $2, preview_ms = $3
                     WHERE sop_instance_uid = $4 AND version = $5",
                )
                .bind(&p.status)
                .bind(p.cine_frames)
                .bind(p.done_ms)
                .bind(&p.sop_instance_uid)
                .bind(p.version)
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(IndexError::from);
                (r.is_ok(), Done::Unit(reply, r))
            }
            WriteRequest::Store {
                inst,
                planned,
                gate,
                reply,
            } => {
                let r = apply_store(&mut conn, &inst, &planned).await;
                // The statements ran while the file was being fsynced; now
                // wait until it is durable before this work may commit.
                let durable = match gate {
                    Some(g) => g.await.unwrap_or_else(|_| {
                        Err(ArchiveError::Io(std::io::Error::other(
                            "file writer ended unexpectedly",
                        )))
                    }),
                    None => Ok(planned),
                };
                match (r, durable) {
                    (Ok(o), Ok(c)) => (true, Done::Store(reply, Ok((o, c)))),
                    (Err(e), d) => (
                        false,
                        Done::Store(
                            reply,
                            Err(StoreError::Index {
                                source: e,
                                file: d.ok(),
                            }),
                        ),
                    ),
                    (Ok(_), Err(why)) => (false, Done::Store(reply, Err(StoreError::NotDurable(why)))),
                }
            }
        };
        let steps: &[&str] = match (ok, alone) {
            (true, true) => &[],
            (true, false) => &["RELEASE req"],
            (false, true) => &["ROLLBACK"],
            (false, false) => &["ROLLBACK TO req", "RELEASE req"],
        };
        let mut step_err = None;
        for sql in steps {
            if let Err(e) = sqlx::query(sql).execute(&mut *conn).await {
                step_err = Some(e);
                break;
            }
        }
        if let Some(e) = step_err {
            // The connection is in an unknown state: fail everything.
            done.push(d);
            return reply_all(done, Some(&Shared::of(&e, "")));
        }
        any_ok |= ok;
        done.push(d);
    }
    if any_ok || !alone {
        let commit = sqlx::query("COMMIT").execute(&mut *conn).await;
        if let Err(e) = commit {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return reply_all(done, Some(&Shared::of(&e, "commit failed: ")));
        }
    }
    reply_all(done, None)
}

/// A failure every request of a batch shares (the connection, BEGIN or
/// COMMIT failed), kept as text plus whether the database was unreachable,
/// so each caller can still tell an outage (out of resources, 503) from a
/// fault.
struct Shared {
    text: String,
    unavailable: bool,
}

impl Shared {
    fn of(e: &sqlx::Error, prefix: &str) -> Shared {
        Shared {
            text: format!("{prefix}{e}"),
            unavailable: crate::store::is_unavailable(e),
        }
    }

    fn err(&self) -> IndexError {
        if self.unavailable {
            IndexError::Unavailable(self.text.clone())
        } else {
            IndexError::Db(sqlx::Error::Protocol(self.text.clone()))
        }
    }
}

fn fail_one(req: WriteRequest, why: &Shared) -> Done {
    let err = || why.err();
    match req {
        WriteRequest::Preview(_, reply) => Done::Unit(reply, Err(err())),
        WriteRequest::Store { reply, .. } => Done::Store(
            reply,
            Err(StoreError::Index {
                source: err(),
                file: None,
            }),
        ),
        WriteRequest::Sweep(_, reply) => Done::Sweep(reply, Err(err())),
    }
}

fn fail_all(reqs: impl Iterator<Item = WriteRequest>, why: &Shared) {
    let done: Vec<Done> = reqs.map(|r| fail_one(r, why)).collect();
    reply_all(done, None)
}

/// Send every reply; with `shared_err`, successes become failures (the
/// transaction they were part of did not commit).
fn reply_all(done: Vec<Done>, shared_err: Option<&Shared>) {
    let err = |why: &Shared| why.err();
    for d in done {
        match d {
            Done::Store(reply, r) => {
                let r = match (shared_err, r) {
                    (Some(why), Ok((_, c))) => Err(StoreError::Index {
                        source: err(why),
                        file: Some(c),
                    }),
                    (_, r) => r,
                };
                let _ = reply.send(r);
            }
            Done::Sweep(reply, r) => {
                let r = match shared_err {
                    Some(why) => Err(err(why)),
                    None => r,
                };
                let _ = reply.send(r);
            }
            Done::Unit(reply, r) => {
                let r = match shared_err {
                    Some(why) => Err(err(why)),
                    None => r,
                };
                let _ = reply.send(r);
            }
        }
    }
}

pub(crate) type Conn = crate::store::Conn;

fn patient_key(i: &NewInstance) -> String {
    if i.patient_id.trim().is_empty() {
        format!("name:{}|{}", i.patient_name.trim(), i.birth_date.trim())
    } else {
        format!("id:{}", i.patient_id.trim())
    }
}

/// SQL that appends `item` to a comma list column unless already present.
fn list_append(col: &str) -> String {
    // Qualified: PostgreSQL finds a bare column name in an upsert ambiguous.
    format!(
        "CASE WHEN excluded.{col} = '' \
         OR replace(',' || studies.{col} || ',', ',' || excluded.{col} || ',', '') <> ',' || studies.{col} || ',' \
         THEN studies.{col} \
         WHEN studies.{col} = '' THEN excluded.{col} ELSE studies.{col} || ',' || excluded.{col} END"
    )
}

/// One instance into the index in few statements: each statement is a round
/// trip to SQLite's worker thread, which is most of the cost of an insert.
///
/// First, where its UIDs already live: an instance that would land in
/// another clinic's study, series or instance, or move a stored series or
/// instance to another study or series, is refused before any statement
/// writes (`IndexError::Conflict`). The check runs inside the caller's
/// transaction (the single writer, or the relay's IMMEDIATE commit), so of
/// two clinics sending the same new UIDs at once the first one filed wins
/// and the other is refused.
pub(crate) async fn apply_store(c: &mut Conn, i: &NewInstance, f: &Committed) -> Result<StoreOutcome, IndexError> {
    let (homes, versions) = homes_of(c, i).await?;
    judge(i, &homes).map_err(IndexError::Conflict)?;
    if versions.iter().any(|(_, sha)| *sha == f.sha256) {
        return Ok(StoreOutcome::Duplicate);
    }
    let version = versions.last().map(|(v, _)| v + 1).unwrap_or(1);
    let new_instance = version == 1;
    let added = i64::from(new_instance);
    let size = f.size as i64;
    let stable_at = i.received_ms + i.stable_after_ms;

    let patient_row: i64 = sqlx::query(
        "INSERT INTO patients (clinic_id, patient_key, patient_id, patient_name, birth_date, sex)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (clinic_id, patient_key) DO UPDATE SET
           patient_name = excluded.patient_name, birth_date = excluded.birth_date, sex = excluded.sex
         RETURNING id",
    )
    .bind(&i.clinic_id)
    .bind(patient_key(i))
    .bind(&i.patient_id)
    .bind(&i.patient_name)
    .bind(&i.birth_date)
    .bind(&i.sex)
    .fetch_one(&mut *c)
    .await?
    .get(0);

    // A late instance re-opens a complete study: it will be swept again once
    // quiet, and its worklist entry is updated then, never duplicated. A
    // study has no series only between its insert and the series insert
    // below, so `num_series = 0` tells that this instance created it.
    let new_study: bool = sqlx::query(&format!(
        "INSERT INTO studies (study_uid, patient_row, clinic_id, calling_ae, patient_name, patient_id,
           study_date, study_time, accession_number, description, referring_physician, modalities,
           body_parts, num_series, num_instances, size_bytes, first_received_ms, last_received_ms,
           stable_after_ms, stable_at_ms, status, study_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $14, $15, $16, $17, $18, $19, 'receiving', $20)
         ON CONFLICT (study_uid) DO UPDATE SET
           num_instances = studies.num_instances + excluded.num_instances,
           size_bytes = studies.size_bytes + excluded.size_bytes,
           last_received_ms = CASE WHEN excluded.last_received_ms > studies.last_received_ms
             THEN excluded.last_received_ms ELSE studies.last_received_ms END,
           stable_after_ms = excluded.stable_after_ms,
           stable_at_ms = CASE WHEN excluded.stable_at_ms > studies.stable_at_ms
             THEN excluded.stable_at_ms ELSE studies.stable_at_ms END,
           status = 'receiving',
           modalities = {},
           body_parts = {}
         RETURNING CASE WHEN num_series = 0 THEN 1 ELSE 0 END",
        list_append("modalities"),
        list_append("body_parts")
    ))
    .bind(&i.study_uid)
    .bind(patient_row)
    .bind(&i.clinic_id)
    .bind(&i.calling_ae)
    .bind(&i.patient_name)
    .bind(&i.patient_id)
    .bind(&i.study_date)
    .bind(&i.study_time)
    .bind(&i.accession_number)
    .bind(&i.study_description)
    .bind(&i.referring_physician)
    .bind(i.modality.trim())
    .bind(i.body_part.trim())
    .bind(added)
    .bind(size)
    .bind(i.received_ms)
    .bind(i.received_ms)
    .bind(i.stable_after_ms)
    .bind(stable_at)
    .bind(&i.study_id)
    .fetch_one(&mut *c)
    .await?
    .get::<i64, _>(0)
        == 1;
    if new_study {
        insert_study_names(c, &i.study_uid, &i.patient_name).await?;
    }

    let series_inserted = sqlx::query(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, description, body_part,
           num_instances, size_bytes, first_received_ms, last_received_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (series_uid) DO NOTHING",
    )
    .bind(&i.series_uid)
    .bind(&i.study_uid)
    .bind(i.modality.trim())
    .bind(i.series_number)
    .bind(&i.series_description)
    .bind(i.body_part.trim())
    .bind(added)
    .bind(size)
    .bind(i.received_ms)
    .bind(i.received_ms)
    .execute(&mut *c)
    .await?
    .rows_affected()
        == 1;
    if series_inserted {
        sqlx::query("UPDATE studies SET num_series = num_series + 1 WHERE study_uid = $1")
            .bind(&i.study_uid)
            .execute(&mut *c)
            .await?;
    } else {
        sqlx::query(
            "UPDATE series SET num_instances = num_instances + $1, size_bytes = size_bytes + $2,
               last_received_ms = CASE WHEN last_received_ms > $3 THEN last_received_ms ELSE $3 END
             WHERE series_uid = $4",
        )
        .bind(added)
        .bind(size)
        .bind(i.received_ms)
        .bind(&i.series_uid)
        .execute(&mut *c)
        .await?;
    }

    sqlx::query(
        "INSERT INTO instances (sop_instance_uid, version, series_uid, study_uid, sop_class_uid, transfer_syntax,
           instance_number, rows, columns, frames, sha256, size_bytes, path, calling_ae, received_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&i.sop_instance_uid)
    .bind(version)
    .bind(&i.series_uid)
    .bind(&i.study_uid)
    .bind(&i.sop_class_uid)
    .bind(&i.transfer_syntax)
    .bind(i.instance_number)
    .bind(i.rows)
    .bind(i.columns)
    .bind(i.frames)
    .bind(&f.sha256)
    .bind(size)
    .bind(&f.rel_path)
    .bind(&i.calling_ae)
    .bind(i.received_ms)
    .execute(&mut *c)
    .await?;

    Ok(if new_instance {
        StoreOutcome::Stored
    } else {
        StoreOutcome::NewVersion(version)
    })
}

/// Where `i`'s UIDs already live, and the stored versions of its SOP
/// Instance UID as (version, content hash), oldest first.
async fn homes_of(c: &mut Conn, i: &NewInstance) -> Result<(Homes, Vec<(i64, String)>), IndexError> {
    let versions = sqlx::query(
        "SELECT i.version, i.sha256, i.series_uid, i.study_uid, s.clinic_id
         FROM instances i JOIN studies s ON s.study_uid = i.study_uid
         WHERE i.sop_instance_uid = $1 ORDER BY i.version",
    )
    .bind(&i.sop_instance_uid)
    .fetch_all(&mut *c)
    .await?;
    let upper = sqlx::query(
        "SELECT (SELECT clinic_id FROM studies WHERE study_uid = $1),
                x.study_uid, s.clinic_id
         FROM (SELECT 1) AS one LEFT JOIN series x ON x.series_uid = $2 LEFT JOIN studies s ON s.study_uid = x.study_uid",
    )
    .bind(&i.study_uid)
    .bind(&i.series_uid)
    .fetch_one(&mut *c)
    .await?;
    let homes = Homes {
        study_clinic: upper.get(0),
        series: upper
            .get::<Option<String>, _>(1)
            .map(|study| (study, upper.get::<Option<String>, _>(2).unwrap_or_default())),
        instance: versions.iter().map(|r| (r.get(2), r.get(3), r.get(4))).collect(),
    };
    Ok((homes, versions.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

impl Index {
    /// The first of `insts` that `apply_store` would refuse as a
    /// [`Conflict`], read outside any write transaction: lets a caller
    /// refuse before moving files into place. Advisory only; the check
    /// inside the committing transaction is the one that holds.
    pub async fn first_conflict(&self, insts: &[NewInstance]) -> Result<Option<Conflict>, IndexError> {
        let mut c = self.pool.acquire().await?;
        for i in insts {
            let (homes, _) = homes_of(&mut c, i).await?;
            if let Err(conflict) = judge(i, &homes) {
                return Ok(Some(*conflict));
            }
        }
        Ok(None)
    }
}

/// Marks an instance's previews present (they came with it over the relay,
/// rendered at the edge), in the caller's transaction. Matched on the
/// content hash, so a different object under the same UID is left alone.
pub async fn previews_arrived(
    c: &mut Conn,
    sop_instance_uid: &str,
    sha256: &str,
    cine_frames: Option<i64>,
    now_ms: i64,
) -> Result<(), IndexError> {
    sqlx::query(
        "UPDATE instances SET preview_status = 'ok', cine_frames = $1, preview_ms = $2
         WHERE sop_instance_uid = $3 AND sha256 = $4",
    )
    .bind(cine_frames)
    .bind(now_ms)
    .bind(sop_instance_uid)
    .bind(sha256)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Marks a study complete now (the relay commits a whole study at once,
/// with no stability wait), in the caller's transaction; putting it on the
/// worklist is the caller's, with the priority it carries.
pub async fn complete_study(c: &mut Conn, study_uid: &str, now_ms: i64) -> Result<(), IndexError> {
    sqlx::query("UPDATE studies SET status = 'complete', completed_ms = $1 WHERE study_uid = $2")
        .bind(now_ms)
        .bind(study_uid)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn apply_sweep(c: &mut Conn, now_ms: i64) -> Result<Vec<String>, IndexError> {
    let done: Vec<String> = sqlx::query(
        "UPDATE studies SET status = 'complete', completed_ms = $1
         WHERE status = 'receiving' AND stable_at_ms <= $2 RETURNING study_uid",
    )
    .bind(now_ms)
    .bind(now_ms)
    .fetch_all(&mut *c)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    for uid in &done {
        worklist::enqueue_completed(c, uid, now_ms, worklist::Initial::default()).await?;
    }
    Ok(done)
}

// ---------------------------------------------------------------- reads

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StudyRow {
    pub study_uid: String,
    pub clinic_id: String,
    pub calling_ae: String,
    pub patient_name: String,
    pub patient_id: String,
    pub birth_date: String,
    pub sex: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub description: String,
    pub referring_physician: String,
    pub modalities: String,
    pub body_parts: String,
    pub num_series: i64,
    pub num_instances: i64,
    pub size_bytes: i64,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    pub status: String,
    pub completed_ms: Option<i64>,
    pub worklist_state: Option<String>,
    pub priority: Option<String>,
    pub clinical_question: Option<String>,
    /// Latest signed report version, if any.
    pub report_version: Option<i64>,
    /// One instance whose thumbnail stands for the study in lists.
    pub thumbnail_uid: Option<String>,
    /// Instance versions whose previews are rendered.
    pub previews_ready: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SeriesRow {
    pub series_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub description: String,
    pub body_part: String,
    pub num_instances: i64,
    pub size_bytes: i64,
    /// The middle instance (by instance number): the series' thumbnail.
    pub thumbnail_uid: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceRow {
    pub sop_instance_uid: String,
    pub version: i64,
    pub series_uid: String,
    pub study_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub instance_number: Option<i64>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub frames: Option<i64>,
    pub sha256: String,
    pub size_bytes: i64,
    #[serde(skip)]
    pub path: String,
    pub calling_ae: String,
    pub received_ms: i64,
    /// "pending", "ok", or "no preview: <reason>".
    pub preview_status: String,
    pub preview_ms: Option<i64>,
    pub cine_frames: Option<i64>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct StudyFilter {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    /// Study date range, inclusive, YYYYMMDD.
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub modality: Option<String>,
    pub clinic: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// The caller's scope: only these clinics (None: all). Never from the query string.
    #[serde(skip)]
    pub clinics: Option<Vec<String>>,
}

/// The columns of a [`StudyRow`]. On SQLite the preview count names its
/// index (the planner otherwise walked the preview_status index and every
/// rendered instance); PostgreSQL's planner needs no hint.
fn study_columns(backend: Backend) -> String {
    let hint = match backend {
        Backend::Sqlite => " INDEXED BY instances_study_preview",
        Backend::Postgres => "",
    };
    format!(
        "s.study_uid, s.clinic_id, s.calling_ae, s.patient_name, s.patient_id,
    p.birth_date, p.sex, s.study_date, s.study_time, s.accession_number, s.description,
    s.referring_physician, s.modalities, s.body_parts, s.num_series, s.num_instances, s.size_bytes,
    s.first_received_ms, s.last_received_ms, s.status, s.completed_ms, w.state AS worklist_state,
    w.priority, w.clinical_question,
    (SELECT MAX(version) FROM reports r WHERE r.study_uid = s.study_uid AND r.status IN ('signed', 'amended')) AS report_version,
    (SELECT i.sop_instance_uid FROM instances i WHERE i.study_uid = s.study_uid
       ORDER BY i.series_uid, i.instance_number LIMIT 1) AS thumbnail_uid,
    (SELECT COUNT(*) FROM instances i{hint}
       WHERE i.study_uid = s.study_uid AND i.preview_status = 'ok') AS previews_ready"
    )
}

impl Index {
    /// One page of studies, newest first, and the number matching (capped,
    /// see [`crate::store::COUNT_CAP`]). The count is a separate query: a window `COUNT(*) OVER ()`
    /// would materialise every matching row (and its per-row subqueries)
    /// before the LIMIT, which at 100 000 studies costs far more than the page.
    pub async fn search_studies(&self, f: &StudyFilter) -> Result<(Vec<StudyRow>, crate::store::Total), IndexError> {
        let limit = f.limit.unwrap_or(50).clamp(1, 500);
        let offset = f.offset.unwrap_or(0).max(0);
        // The page is chosen first from `studies` alone, walking the
        // received-time index newest first and stopping at the limit; only
        // those rows get the joins and per-row subqueries. (Scope filters
        // are written `+s.clinic_id` so SQLite does not drive the query from
        // the clinic index and sort every study of twenty clinics.)
        // Given a date range, the newest studies *by study date* come first
        // (received time breaks ties): that is what a dated search asks
        // for, and it is the order of the index `studies_date_received`,
        // so both backends read the page's 50 entries off its end instead
        // of sorting every study of the range by received time (a month at
        // 1 M studies: 42 000 rows, 62 ms on PostgreSQL).
        let dated = [&f.date_from, &f.date_to]
            .iter()
            .any(|d| d.as_deref().is_some_and(|v| !v.is_empty()));
        let (inner_order, outer_order) = if dated {
            (
                "s.study_date DESC, s.last_received_ms DESC, s.study_uid DESC",
                "pg.study_date DESC, pg.last_received_ms DESC, pg.study_uid DESC",
            )
        } else {
            (
                "s.last_received_ms DESC, s.study_uid",
                "pg.last_received_ms DESC, pg.study_uid",
            )
        };
        let mut qb = crate::store::Sql::new(format!(
            "SELECT {} FROM (SELECT s.study_uid, s.study_date, s.last_received_ms FROM studies s WHERE 1=1",
            study_columns(self.backend)
        ));
        push_study_filters(&mut qb, f, self.backend);
        qb.push(format_args!(" ORDER BY {inner_order} LIMIT "))
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset)
            .push(format_args!(
                ") AS pg JOIN studies s ON s.study_uid = pg.study_uid JOIN patients p ON p.id = s.patient_row
                 LEFT JOIN worklist w ON w.study_uid = s.study_uid
                 ORDER BY {outer_order}"
            ));
        let studies: Vec<StudyRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        let mut cq = crate::store::capped_count("FROM studies s WHERE 1=1");
        push_study_filters(&mut cq, f, self.backend);
        Ok((studies, crate::store::Total::fetch(cq, &self.pool).await?))
    }

    pub async fn study(&self, uid: &str) -> Result<Option<StudyRow>, IndexError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM studies s JOIN patients p ON p.id = s.patient_row
             LEFT JOIN worklist w ON w.study_uid = s.study_uid WHERE s.study_uid = $1",
            study_columns(self.backend)
        ))
        .bind(uid)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn series_of(&self, study_uid: &str) -> Result<Vec<SeriesRow>, IndexError> {
        let mut rows: Vec<SeriesRow> = sqlx::query_as(
            "SELECT series_uid, study_uid, modality, series_number, description, body_part, num_instances, size_bytes,
               NULL AS thumbnail_uid
             FROM series WHERE study_uid = $1 ORDER BY series_number, series_uid",
        )
        .bind(study_uid)
        .fetch_all(&self.pool)
        .await?;
        // The middle instance stands for the series (SQLite cannot take a
        // correlated OFFSET, hence one small indexed query per series).
        for r in &mut rows {
            r.thumbnail_uid = sqlx::query(
                "SELECT sop_instance_uid FROM instances WHERE series_uid = $1
                 ORDER BY instance_number, sop_instance_uid LIMIT 1 OFFSET $2",
            )
            .bind(&r.series_uid)
            .bind(r.num_instances / 2)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.get(0));
        }
        Ok(rows)
    }

    /// Latest version of each instance in a series.
    pub async fn instances_of_series(&self, series_uid: &str) -> Result<Vec<InstanceRow>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT i.* FROM instances i WHERE i.series_uid = $1
               AND i.version = (SELECT MAX(version) FROM instances j WHERE j.sop_instance_uid = i.sop_instance_uid)
             ORDER BY i.instance_number, i.sop_instance_uid",
        )
        .bind(series_uid)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn instances_of_study(&self, study_uid: &str) -> Result<Vec<InstanceRow>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT i.* FROM instances i WHERE i.study_uid = $1
               AND i.version = (SELECT MAX(version) FROM instances j WHERE j.sop_instance_uid = i.sop_instance_uid)
             ORDER BY i.series_uid, i.instance_number, i.sop_instance_uid",
        )
        .bind(study_uid)
        .fetch_all(&self.pool)
        .await?)
    }

    /// All versions of one SOP instance, newest first: those filed in the
    /// study of the latest version, the one `clinic_of_instance` decides
    /// access on. (Ingest refuses a version in another study; an archive
    /// written before that rule may hold one, which is then never served
    /// under this study's access.)
    pub async fn instance_versions(&self, sop_uid: &str) -> Result<Vec<InstanceRow>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT * FROM instances WHERE sop_instance_uid = $1
               AND study_uid = (SELECT study_uid FROM instances WHERE sop_instance_uid = $2 ORDER BY version DESC LIMIT 1)
             ORDER BY version DESC",
        )
        .bind(sop_uid)
        .bind(sop_uid)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The clinic of the study holding an instance's latest version: the
    /// version served by default, and the study whose versions
    /// `instance_versions` lists, so access is decided on what is served.
    pub async fn clinic_of_instance(&self, sop_uid: &str) -> Result<Option<String>, IndexError> {
        Ok(sqlx::query(
            "SELECT s.clinic_id FROM instances i JOIN studies s ON s.study_uid = i.study_uid
             WHERE i.sop_instance_uid = $1 ORDER BY i.version DESC LIMIT 1",
        )
        .bind(sop_uid)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0)))
    }

    pub async fn clinic_of_series(&self, series_uid: &str) -> Result<Option<String>, IndexError> {
        Ok(sqlx::query(
            "SELECT s.clinic_id FROM series x JOIN studies s ON s.study_uid = x.study_uid WHERE x.series_uid = $1",
        )
        .bind(series_uid)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0)))
    }

    pub async fn worklist_depth(&self) -> Result<i64, IndexError> {
        Ok(worklist::depth(&self.pool).await?)
    }
}

impl Index {
    /// Applies one worklist action atomically: read the row, decide with the
    /// pure rules in `reading::worklist`, write it and its transition record
    /// in one IMMEDIATE transaction. SQLite serialises such transactions, so
    /// of two experts claiming one study at the same moment exactly one wins
    /// and the other is told who did.
    pub async fn worklist_apply(
        &self,
        study_uid: &str,
        action: &WorkAction,
        actor: Actor<'_>,
        now_ms: i64,
    ) -> Result<Transition, WorklistApplyError> {
        crate::store::immediate(&self.pool, async |c| {
            worklist::apply(c, study_uid, action, actor, now_ms, None).await
        })
        .await
    }

    /// Sets a study's reading priority (and clinical question, when given)
    /// and records it, in one transaction; the rules decide who may and in
    /// which states.
    pub async fn worklist_set_priority(
        &self,
        study_uid: &str,
        priority: Priority,
        clinical_question: Option<&str>,
        actor: Actor<'_>,
        now_ms: i64,
    ) -> Result<Transition, WorklistApplyError> {
        crate::store::immediate(&self.pool, async |c| {
            worklist::set_priority(c, study_uid, priority, clinical_question, actor, now_ms).await
        })
        .await
    }

    /// Returns studies whose claim lease has run out to `new`; their uids.
    pub async fn expire_worklist_leases(&self, now_ms: i64) -> Result<Vec<String>, WorklistApplyError> {
        let due = worklist::due_leases(&self.pool, now_ms).await?;
        let mut freed = Vec::new();
        for uid in due {
            // Renewed or taken over in the meantime: the rules refuse, skip it.
            if self
                .worklist_apply(&uid, &WorkAction::Expire, Actor::System, now_ms)
                .await
                .is_ok()
            {
                freed.push(uid);
            }
        }
        Ok(freed)
    }
}

/// The WHERE conditions of a study search (columns of `studies s` only).
fn push_study_filters(qb: &mut crate::store::Sql<'_>, f: &StudyFilter, backend: Backend) {
    if let Some(v) = f.patient_name.as_deref() {
        match pn::query(v) {
            NameQuery::Any => {}
            // Each word starts a key of the name (`study_names`): an index
            // range per word, evaluated once, not a LIKE per study.
            NameQuery::Words(words) => {
                for w in words {
                    qb.push(" AND s.study_uid IN (SELECT study_uid FROM study_names WHERE key >= ")
                        .push_bind(w.clone())
                        .push(" AND key < ")
                        .push_bind(pn::prefix_end(&w))
                        .push(")");
                }
            }
            // DICOM wildcards inside a word (`W?ng`, `*dong`): against the
            // whole stored value, all groups.
            NameQuery::Pattern(p) => {
                qb.push(" AND lower(s.patient_name) LIKE lower(")
                    .push_bind(p.replace('*', "%").replace('?', "_"))
                    .push(")");
            }
        }
    }
    if let Some(v) = f.patient_id.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND s.patient_id = ").push_bind(v.to_string());
    }
    if let Some(v) = f.date_from.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND s.study_date >= ").push_bind(v.replace('-', ""));
    }
    if let Some(v) = f.date_to.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND s.study_date <= ").push_bind(v.replace('-', ""));
    }
    if let Some(v) = f.modality.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND lower(',' || s.modalities || ',') LIKE lower(")
            .push_bind(format!("%,{v},%"))
            .push(")");
    }
    if let Some(v) = f.clinic.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND s.clinic_id = ").push_bind(v.to_string());
    }
    if let Some(v) = f.status.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND s.status = ").push_bind(v.to_string());
    }
    if let Some(cs) = &f.clinics {
        // `+` keeps SQLite from driving the query from the clinic index.
        let col = match backend {
            Backend::Sqlite => "+s.clinic_id",
            Backend::Postgres => "s.clinic_id",
        };
        push_in(qb, col, cs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::worklist::WorklistError;

    fn inst(sop: &str, study: &str, series: &str, modality: &str, t: i64) -> NewInstance {
        NewInstance {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            study_uid: study.into(),
            series_uid: series.into(),
            patient_id: "P1".into(),
            patient_name: "DOE^JANE".into(),
            modality: modality.into(),
            study_date: "20261124".into(),
            calling_ae: "CT01".into(),
            clinic_id: "c1".into(),
            stable_after_ms: 1000,
            received_ms: t,
            ..Default::default()
        }
    }

    fn file(sha: &str) -> Committed {
        Committed {
            rel_path: format!("instances/{sha}.dcm"),
            sha256: sha.into(),
            size: 100,
            created: true,
            staged: None,
        }
    }

    #[tokio::test]
    async fn index_files_keep_their_path_whatever_its_characters() {
        let dir = tempfile::tempdir().expect("tmp");
        let odd = dir.path().join("影像 data #1 100%?");
        std::fs::create_dir(&odd).expect("mkdir");
        let (idx, w) = Index::open(&odd.join("index.db")).await.expect("open");
        idx.store(inst("1.1", "9", "9.1", "CT", 0), file("aa"))
            .await
            .expect("store");
        drop(idx);
        w.await.expect("writer");
        assert!(odd.join("index.db").is_file());
        let (idx, _w) = Index::open(&odd.join("index.db")).await.expect("reopen");
        assert!(idx.study("9").await.expect("q").is_some());
    }

    #[tokio::test]
    async fn store_versions_counts_and_stability() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        assert_eq!(
            idx.store(inst("1.1", "9", "9.1", "CT", 0), file("aa"))
                .await
                .expect("s"),
            StoreOutcome::Stored
        );
        assert_eq!(
            idx.store(inst("1.1", "9", "9.1", "CT", 10), file("aa"))
                .await
                .expect("s"),
            StoreOutcome::Duplicate
        );
        assert_eq!(
            idx.store(inst("1.1", "9", "9.1", "CT", 20), file("bb"))
                .await
                .expect("s"),
            StoreOutcome::NewVersion(2)
        );
        assert_eq!(
            idx.store(inst("1.2", "9", "9.2", "SR", 30), file("cc"))
                .await
                .expect("s"),
            StoreOutcome::Stored
        );
        let s = idx.study("9").await.expect("q").expect("study");
        assert_eq!((s.num_instances, s.num_series, s.modalities.as_str()), (2, 2, "CT,SR"));
        assert_eq!(idx.instance_versions("1.1").await.expect("v").len(), 2);
        assert_eq!(idx.instances_of_study("9").await.expect("i").len(), 2);

        // not yet stable at t=1029, stable at t=1030, and only once
        assert!(idx.sweep_stable(1029).await.expect("sweep").is_empty());
        assert_eq!(idx.sweep_stable(1030).await.expect("sweep"), vec!["9".to_string()]);
        assert!(idx.sweep_stable(5000).await.expect("sweep").is_empty());
        assert_eq!(idx.worklist_depth().await.expect("depth"), 1);

        // a late instance re-opens it; re-completion updates, never duplicates
        idx.store(inst("1.3", "9", "9.2", "SR", 6000), file("dd"))
            .await
            .expect("late");
        assert_eq!(
            idx.study("9").await.expect("q").map(|s| s.status),
            Some("receiving".into())
        );
        assert_eq!(idx.sweep_stable(7000).await.expect("sweep").len(), 1);
        assert_eq!(idx.worklist_depth().await.expect("depth"), 1);
        assert_eq!(worklist::history(idx.pool(), "9").await.expect("history"), []);

        let (rows, total) = idx
            .search_studies(&StudyFilter {
                modality: Some("SR".into()),
                ..Default::default()
            })
            .await
            .expect("search");
        assert_eq!((rows.len(), total.n, total.exact), (1, 1, true));
        let (rows, _) = idx
            .search_studies(&StudyFilter {
                patient_name: Some("doe*".into()),
                ..Default::default()
            })
            .await
            .expect("search");
        assert_eq!(rows.len(), 1);
        let (rows, _) = idx
            .search_studies(&StudyFilter {
                modality: Some("MR".into()),
                ..Default::default()
            })
            .await
            .expect("search");
        assert!(rows.is_empty());
    }

    async fn names_found(idx: &Index, q: &str) -> Vec<String> {
        let f = StudyFilter {
            patient_name: Some(q.into()),
            ..Default::default()
        };
        let (rows, total) = idx.search_studies(&f).await.expect("search");
        assert_eq!((rows.len() as i64, true), (total.n, total.exact), "{q}");
        let mut uids: Vec<String> = rows.into_iter().map(|r| r.study_uid).collect();
        uids.sort();
        uids
    }

    #[tokio::test]
    async fn names_are_found_by_any_group_with_or_without_carets() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        for (n, name) in ["Wang^Xiaodong=王^小东=wang^xiaodong", "=王^小东", "Li^Wang", "DOE^JANE"]
            .iter()
            .enumerate()
        {
            let mut i = inst(&format!("1.{n}"), &format!("{n}"), &format!("{n}.1"), "CT", n as i64);
            i.patient_name = name.to_string();
            i.patient_id = format!("P{n}");
            idx.store(i, file(&format!("{n:02}"))).await.expect("store");
        }
        // A later instance of the study adds no keys twice.
        let mut again = inst("1.0b", "0", "0.1", "CT", 9);
        again.patient_name = "Wang^Xiaodong=王^小东=wang^xiaodong".into();
        idx.store(again, file("0b")).await.expect("store");
        for q in ["王", "王小东", "小东", "王 小东"] {
            assert_eq!(names_found(&idx, q).await, ["0", "1"], "{q}");
        }
        for q in [
            "wang",
            "WANG",
            "Wang^Xiaodong",
            "wang xiaodong",
            "xiaodong, wang",
            "Wang*",
        ] {
            let want: &[&str] = if q.to_lowercase().contains("xiao") {
                &["0"]
            } else {
                &["0", "2"]
            };
            assert_eq!(names_found(&idx, q).await, want, "{q}");
        }
        assert_eq!(names_found(&idx, "jane doe").await, ["3"]);
        assert!(names_found(&idx, "张").await.is_empty());
        assert!(names_found(&idx, "ang").await.is_empty());
        // Wildcards inside a word: the whole value, all groups.
        assert_eq!(names_found(&idx, "*小东*").await, ["0", "1"]);
        assert_eq!(names_found(&idx, "").await.len(), 4);
    }

    #[tokio::test]
    async fn migration_6_backfills_name_keys_and_cleans_old_escapes() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("index.db");
        {
            let (idx, _w) = Index::open(&path).await.expect("open");
            let mut i = inst("1.1", "9", "9.1", "CT", 0);
            i.patient_name = "Wang^Xiaodong=\u{1b}$)A王^\u{1b}$)A小东=wang^xiaodong".into();
            idx.store(i, file("aa")).await.expect("store");
            // As an archive indexed before migration 6 was (and so before
            // every later one).
            for stmt in [
                "DROP TABLE study_names",
                "ALTER TABLE users DROP COLUMN language",
                "ALTER TABLE studies DROP COLUMN study_id",
                "PRAGMA user_version = 5",
            ] {
                sqlx::query(stmt).execute(idx.pool()).await.expect("downgrade");
            }
        }
        let (idx, _w) = Index::open(&path).await.expect("reopen");
        assert_eq!(names_found(&idx, "王小东").await, ["9"]);
        assert_eq!(names_found(&idx, "wang xiaodong").await, ["9"]);
        let s = idx.study("9").await.expect("q").expect("study");
        assert_eq!(s.patient_name, "Wang^Xiaodong=王^小东=wang^xiaodong");
        let p: String = sqlx::query("SELECT patient_name FROM patients")
            .fetch_one(idx.pool())
            .await
            .expect("patient")
            .get(0);
        assert_eq!(p, s.patient_name);
    }

    fn of(clinic: &str, mut i: NewInstance) -> NewInstance {
        i.clinic_id = clinic.into();
        i
    }

    fn conflict(r: Result<StoreOutcome, StoreError>) -> Conflict {
        match r {
            Err(StoreError::Index {
                source: IndexError::Conflict(c),
                ..
            }) => *c,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn uids_of_another_clinic_or_place_are_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        idx.store(of("a", inst("1.1", "9", "9.1", "CT", 0)), file("aa"))
            .await
            .expect("a");
        assert_eq!(idx.sweep_stable(5000).await.expect("sweep").len(), 1);
        let snapshot = || async {
            let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
                "SELECT s.status, s.num_instances, i.sha256, i.version FROM studies s JOIN instances i ON i.study_uid = s.study_uid",
            )
            .fetch_all(idx.pool())
            .await
            .expect("rows");
            rows
        };
        let before = snapshot().await;
        let cases = [
            // clinic b: A's study, A's series (in a new study), A's instance
            // (new study and series), and A's instance exactly (same bytes).
            (
                of("b", inst("2.1", "9", "8.1", "CT", 9000)),
                "bb",
                UidLevel::Study,
                "other-clinic",
            ),
            (
                of("b", inst("2.2", "8", "9.1", "CT", 9000)),
                "bb",
                UidLevel::Series,
                "other-clinic",
            ),
            (
                of("b", inst("1.1", "8", "8.1", "CT", 9000)),
                "bb",
                UidLevel::Instance,
                "other-clinic",
            ),
            (
                of("b", inst("1.1", "9", "9.1", "CT", 9000)),
                "aa",
                UidLevel::Study,
                "other-clinic",
            ),
            // clinic a itself: its series under another study, its instance
            // under another series.
            (
                of("a", inst("3.1", "7", "9.1", "CT", 9000)),
                "cc",
                UidLevel::Series,
                "other-study",
            ),
            (
                of("a", inst("1.1", "9", "9.2", "CT", 9000)),
                "dd",
                UidLevel::Instance,
                "other-series",
            ),
        ];
        for (i, sha, level, reason) in cases {
            let c = conflict(idx.store(i.clone(), file(sha)).await);
            assert_eq!((c.level, c.reason_token()), (level, reason), "{i:?}");
            assert_eq!(c.sop_instance_uid, i.sop_instance_uid);
            assert!(c.to_string().len() <= 64, "{c}");
        }
        assert_eq!(snapshot().await, before, "nothing written, study not reopened");
        let n: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM studies) + (SELECT COUNT(*) FROM series) + (SELECT COUNT(*) FROM patients)",
        )
        .fetch_one(idx.pool())
        .await
        .expect("n")
        .get(0);
        assert_eq!(n, 3);
        // The refusal wording names the level, never the owner.
        let c = conflict(idx.store(of("b", inst("2.1", "9", "8.1", "CT", 1)), file("ee")).await);
        assert_eq!(c.to_string(), "Study Instance UID belongs to another clinic");
        assert_eq!(c.owner(), Some("a"));
        // Clinic a may still add to its study and version its instance.
        assert_eq!(
            idx.store(of("a", inst("1.1", "9", "9.1", "CT", 9000)), file("ff"))
                .await
                .expect("v2"),
            StoreOutcome::NewVersion(2)
        );
    }

    #[tokio::test]
    async fn racing_clinics_with_the_same_new_uids_have_one_winner() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        for n in 0..20 {
            let study = format!("5.{n}");
            let (a, b) = tokio::join!(
                idx.store(
                    of(
                        "a",
                        inst(&format!("{study}.1.1"), &study, &format!("{study}.1"), "CT", 0)
                    ),
                    file(&format!("a{n}"))
                ),
                idx.store(
                    of(
                        "b",
                        inst(&format!("{study}.1.1"), &study, &format!("{study}.1"), "CT", 0)
                    ),
                    file(&format!("b{n}"))
                )
            );
            let won = [a.is_ok(), b.is_ok()];
            assert_eq!(won.iter().filter(|x| **x).count(), 1, "round {n}: {a:?} {b:?}");
            let loser = if a.is_ok() { b } else { a };
            assert_eq!(conflict(loser).level, UidLevel::Study);
        }
    }

    #[tokio::test]
    async fn access_is_decided_on_the_version_that_is_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        idx.store(of("a", inst("1.1", "9", "9.1", "CT", 0)), file("aa"))
            .await
            .expect("a");
        idx.store(of("b", inst("2.1", "8", "8.1", "CT", 0)), file("bb"))
            .await
            .expect("b");
        // An archive from before the ingest rule: B's instance filed as
        // version 2 of A's SOP Instance UID, in B's study.
        sqlx::query("UPDATE instances SET sop_instance_uid = '1.1', version = 2 WHERE sop_instance_uid = '2.1'")
            .execute(idx.pool())
            .await
            .expect("legacy");
        assert_eq!(idx.clinic_of_instance("1.1").await.expect("c").as_deref(), Some("b"));
        let v = idx.instance_versions("1.1").await.expect("v");
        assert_eq!(
            v.iter().map(|r| (r.version, r.study_uid.as_str())).collect::<Vec<_>>(),
            vec![(2, "8")],
            "only versions of the study access was decided on"
        );
    }

    #[tokio::test]
    async fn concurrent_stores_are_group_committed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        let mut tasks = Vec::new();
        for n in 0..200 {
            let idx = idx.clone();
            tasks.push(tokio::spawn(async move {
                idx.store(inst(&format!("1.{n}"), "9", "9.1", "CT", n), file(&format!("{n:04}")))
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join").expect("store"), StoreOutcome::Stored);
        }
        assert_eq!(idx.study("9").await.expect("q").map(|s| s.num_instances), Some(200));
    }

    #[tokio::test]
    async fn racing_claims_have_one_winner_and_leases_expire() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
        idx.store(inst("1.1", "9", "9.1", "CT", 0), file("aa"))
            .await
            .expect("s");
        assert_eq!(idx.sweep_stable(1030).await.expect("sweep"), vec!["9".to_string()]);
        let claim = WorkAction::Claim {
            lease: Duration::from_secs(60),
        };
        let t0 = 1_000_000;
        let (a, b) = tokio::join!(
            idx.worklist_apply("9", &claim, Actor::Expert("li"), t0),
            idx.worklist_apply("9", &claim, Actor::Expert("wang"), t0)
        );
        let winners = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(winners, 1, "{a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(
            matches!(loser, Err(WorklistApplyError::Rule(WorklistError::ClaimedByOther(_)))),
            "{loser:?}"
        );
        // Unknown study, and a clinic doctor trying to claim.
        assert!(matches!(
            idx.worklist_apply("nope", &claim, Actor::Expert("li"), t0).await,
            Err(WorklistApplyError::NoSuchStudy)
        ));
        // Nothing expires early; at the lease end the study returns to new.
        assert!(idx.expire_worklist_leases(t0 + 59_999).await.expect("sweep").is_empty());
        assert_eq!(
            idx.expire_worklist_leases(t0 + 60_000).await.expect("sweep"),
            vec!["9".to_string()]
        );
        assert_eq!(idx.worklist_depth().await.expect("depth"), 1);
        let log: Vec<(String, String, String)> = worklist::history(idx.pool(), "9")
            .await
            .expect("log")
            .into_iter()
            .map(|r| (r.from, r.to, r.actor))
            .collect();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!((log[0].0.as_str(), log[0].1.as_str()), ("new", "claimed"));
        assert_eq!(log[1], ("claimed".into(), "new".into(), "system".into()));
        // A refused action writes nothing.
        assert!(
            idx.worklist_apply("9", &WorkAction::Report, Actor::Expert("li"), t0 + 70_000)
                .await
                .is_err()
        );
        assert_eq!(worklist::history(idx.pool(), "9").await.expect("log").len(), 2);
    }
}
