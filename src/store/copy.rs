//! `medrelay migrate-storage`: copy an archive, index and objects, to other
//! backends (typically the embedded SQLite + files to PostgreSQL + S3)
//! while the source keeps serving, so an alliance that started small
//! grows with no downtime beyond a restart.
//!
//! This is the one place that reads every table without owning it: it
//! moves rows verbatim and interprets none, so it needs no repository's
//! rules, only the order in which foreign keys allow them in
//! ([`TABLES`], checked against the schema by a test).
//!
//! Objects are immutable (content-addressed instances, derived previews),
//! so they are copied incrementally: an object already at the destination
//! with the same size is not sent again, which makes an interrupted run
//! resumable. Every object, copied now or earlier, is verified by reading
//! both sides and comparing SHA-256. The index is copied as one consistent
//! snapshot (one read transaction on the source) and replaces the
//! destination's rows in one write transaction: rows change (counters,
//! worklist states, sessions), so only a whole snapshot is right. Run it
//! once while serving (the long object copy), stop the gateway, run it again
//! (only new objects, and a final snapshot), start on the new URLs.

use std::ops::Range;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::any::AnyTypeInfoKind;
use sqlx::{Column, Executor, Row};

use super::blob::{BlobError, Blobs};
use super::{Backend, Conn, Pool};

/// Every index table, parents before children (the order foreign keys
/// allow inserts in). The schema's own bookkeeping (`medrelay_schema`) is
/// not copied: the destination has run its own migrations.
pub const TABLES: &[&str] = &[
    "patients",
    "studies",
    "study_names",
    "series",
    "instances",
    "worklist",
    "worklist_transitions",
    "users",
    "sessions",
    "reports",
    "deliveries",
    "notifications",
    "consult_requests",
    "audit",
    "relay_edges",
    "relay_inbound",
    "relay_staged",
    "relay_outbox",
    "relay_kv",
    "api_tokens",
];

/// Bytes read per request while copying or hashing one object: bounded
/// memory whatever the object's size (a 1 GB multi-frame too).
const WINDOW: u64 = 8 << 20;
/// Rows per INSERT (well under both databases' bind-parameter limits).
const ROWS_PER_INSERT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("index: {0}")]
    Db(#[from] sqlx::Error),
    #[error("index: {0}")]
    Index(#[from] crate::archive::index::IndexError),
    #[error("object store: {0}")]
    Blob(#[from] BlobError),
    #[error("object {key} differs after copying (source sha256 {src}, destination {dst})")]
    Mismatch { key: String, src: String, dst: String },
    #[error("table {table}: column {column} has a value the destination cannot take: {why}")]
    Value { table: String, column: String, why: String },
}

/// What a run did, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObjectsReport {
    /// Objects at the source.
    pub objects: usize,
    /// Of those, sent in this run (the rest were there already).
    pub copied: usize,
    pub bytes_copied: u64,
    /// Objects whose SHA-256 matched on both sides in this run.
    pub verified: usize,
    /// Objects verified by an earlier run (listed in the journal).
    pub verified_before: usize,
}

/// Objects copied at once: S3 requests are latency-bound.
const WORKERS: usize = 4;

/// Copy every object of `src` missing at `dst` and verify each one by
/// SHA-256 on both sides. `journal` lists the keys verified so far (one per
/// line, appended as they are): a resumed run skips them, objects being
/// immutable. Blocking: run it on a blocking thread.
pub fn copy_objects(
    src: &Arc<dyn Blobs>,
    dst: &Arc<dyn Blobs>,
    journal: &std::path::Path,
) -> Result<ObjectsReport, CopyError> {
    use std::io::Write;
    let done: std::collections::HashSet<String> = std::fs::read_to_string(journal)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let mut keys = src.list("")?;
    keys.sort();
    let objects = keys.len();
    let todo: Vec<(String, u64)> = keys.into_iter().filter(|(k, _)| !done.contains(k)).collect();
    let verified_before = objects - todo.len();
    let log = std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal)
            .map_err(|e| CopyError::Blob(BlobError::from_io(e, "journal")))?,
    );
    let next = std::sync::Mutex::new(todo.into_iter());
    let totals = std::sync::Mutex::new(ObjectsReport {
        objects,
        verified_before,
        ..ObjectsReport::default()
    });
    let work = || -> Result<(), CopyError> {
        loop {
            let Some((key, len)) = next.lock().unwrap_or_else(|p| p.into_inner()).next() else {
                return Ok(());
            };
            let (copied, a) = if dst.head(&key)? != Some(len) {
                (true, copy_one(src, dst, &key, len)?)
            } else {
                (false, sha256_of(src, &key, len)?)
            };
            let b = sha256_of(dst, &key, len)?;
            if a != b {
                return Err(CopyError::Mismatch { key, src: a, dst: b });
            }
            writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{key}")
                .map_err(|e| CopyError::Blob(BlobError::from_io(e, "journal")))?;
            let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
            t.verified += 1;
            if copied {
                t.copied += 1;
                t.bytes_copied += len;
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS).map(|_| scope.spawn(work)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CopyError::Blob(BlobError::Other("copy worker panicked".into()))))
            })
            .collect::<Result<Vec<()>, CopyError>>()
    })?;
    let report = totals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(report)
}

fn windows(len: u64) -> impl Iterator<Item = Range<u64>> {
    (0..len.div_ceil(WINDOW)).map(move |i| i * WINDOW..((i + 1) * WINDOW).min(len))
}

/// Copy one object; returns the SHA-256 of the bytes read from the source.
fn copy_one(src: &Arc<dyn Blobs>, dst: &Arc<dyn Blobs>, key: &str, len: u64) -> Result<String, CopyError> {
    let mut w = dst.create()?;
    let mut h = Sha256::new();
    for r in windows(len) {
        let bytes = src.get_range(key, r)?;
        h.update(&bytes);
        w.write(&bytes)?;
    }
    // An object that appeared meanwhile (another run) is left as it is;
    // the caller compares it either way.
    w.commit(key)?;
    Ok(hex::encode(h.finalize()))
}

fn sha256_of(store: &Arc<dyn Blobs>, key: &str, len: u64) -> Result<String, CopyError> {
    let mut h = Sha256::new();
    for r in windows(len) {
        h.update(store.get_range(key, r)?);
    }
    Ok(hex::encode(h.finalize()))
}

/// Replace every row of the destination index with one consistent snapshot
/// of the source's; returns the row count per table. Both indexes must be
/// at the same schema version (run migrations on the destination first).
pub async fn copy_index(src: &Pool, dst: &Pool) -> Result<Vec<(String, u64)>, CopyError> {
    let mut s = src.acquire().await?;
    // One snapshot for all tables: rows written meanwhile by the serving
    // gateway are either all in or all out.
    match Backend::of_conn(&s) {
        Backend::Sqlite => sqlx::query("BEGIN").execute(&mut *s).await?,
        Backend::Postgres => {
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *s)
                .await?
        }
    };
    let mut d = dst.acquire().await?;
    super::begin_write(&mut d).await?;
    let copied = async {
        for t in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {t}")).execute(&mut *d).await?;
        }
        let mut counts = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            counts.push((t.to_string(), copy_table(&mut s, &mut d, t).await?));
        }
        if Backend::of_conn(&d) == Backend::Postgres {
            advance_sequences(&mut d).await?;
        }
        Ok::<_, CopyError>(counts)
    }
    .await;
    let _ = sqlx::query("COMMIT").execute(&mut *s).await;
    match copied {
        Ok(counts) => {
            sqlx::query("COMMIT").execute(&mut *d).await?;
            Ok(counts)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *d).await;
            Err(e)
        }
    }
}

/// How the destination stores a column, which decides how a value (a NULL
/// too: PostgreSQL wants it typed) is bound.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Float,
    Text,
    Bytes,
}

async fn copy_table(s: &mut Conn, d: &mut Conn, table: &str) -> Result<u64, CopyError> {
    let select = format!("SELECT * FROM {table}");
    let shape = d.describe(&select).await?;
    let dest: Vec<(String, Kind)> = shape
        .columns()
        .iter()
        .map(|c| {
            let kind = match c.type_info().kind() {
                AnyTypeInfoKind::Bool
                | AnyTypeInfoKind::SmallInt
                | AnyTypeInfoKind::Integer
                | AnyTypeInfoKind::BigInt => Kind::Int,
                AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => Kind::Float,
                AnyTypeInfoKind::Blob => Kind::Bytes,
                AnyTypeInfoKind::Text | AnyTypeInfoKind::Null => Kind::Text,
            };
            (c.name().to_string(), kind)
        })
        .collect();
    // Streamed, a bounded batch at a time: an index of millions of rows is
    // never held in memory.
    let mut rows = sqlx::query(&select).fetch(&mut *s);
    let mut cols: Option<Vec<(String, Kind)>> = None;
    let mut batch = Vec::with_capacity(ROWS_PER_INSERT);
    let mut total = 0u64;
    while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
        if cols.is_none() {
            cols = Some(columns_of(table, &row, &dest)?);
        }
        batch.push(row);
        if batch.len() == ROWS_PER_INSERT {
            total += insert_rows(d, table, cols.as_deref().unwrap_or_default(), &batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        total += insert_rows(d, table, cols.as_deref().unwrap_or_default(), &batch).await?;
    }
    Ok(total)
}

/// The source row's columns in the destination's terms; a column the
/// destination lacks is a schema mismatch and refused.
fn columns_of(table: &str, row: &sqlx::any::AnyRow, dest: &[(String, Kind)]) -> Result<Vec<(String, Kind)>, CopyError> {
    row.columns()
        .iter()
        .map(|c| {
            let name = c.name().to_string();
            dest.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| (name.clone(), *k))
                .ok_or_else(|| CopyError::Value {
                    table: table.into(),
                    column: name,
                    why: "no such column at the destination (are both at the same schema version?)".into(),
                })
        })
        .collect()
}

async fn insert_rows(
    d: &mut Conn,
    table: &str,
    cols: &[(String, Kind)],
    rows: &[sqlx::any::AnyRow],
) -> Result<u64, CopyError> {
    let names = cols.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let mut sql = format!("INSERT INTO {table} ({names}) VALUES ");
    let mut n = 0;
    for i in 0..rows.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for j in 0..cols.len() {
            if j > 0 {
                sql.push_str(", ");
            }
            n += 1;
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    let mut q = sqlx::query(&sql);
    for row in rows {
        for (j, (name, kind)) in cols.iter().enumerate() {
            let bad = |e: sqlx::Error| CopyError::Value {
                table: table.into(),
                column: name.clone(),
                why: e.to_string(),
            };
            q = match kind {
                Kind::Int => q.bind(row.try_get::<Option<i64>, _>(j).map_err(bad)?),
                Kind::Float => q.bind(row.try_get::<Option<f64>, _>(j).map_err(bad)?),
                Kind::Text => q.bind(row.try_get::<Option<String>, _>(j).map_err(bad)?),
                Kind::Bytes => q.bind(row.try_get::<Option<Vec<u8>>, _>(j).map_err(bad)?),
            };
        }
    }
    q.execute(&mut *d).await?;
    Ok(rows.len() as u64)
}

/// PostgreSQL: identity/serial columns were given explicit values, so move
/// each sequence past the largest one, or the next insert would collide.
async fn advance_sequences(d: &mut Conn) -> Result<(), CopyError> {
    let seqs = sqlx::query(
        "SELECT table_name::text, pg_get_serial_sequence(table_name::text, 'id')
         FROM information_schema.columns WHERE column_name = 'id' AND table_schema = current_schema()",
    )
    .fetch_all(&mut *d)
    .await?;
    for r in seqs {
        let table: String = r.try_get(0)?;
        let Some(seq) = r.try_get::<Option<String>, _>(1)? else {
            continue;
        };
        if !TABLES.contains(&table.as_str()) {
            continue;
        }
        sqlx::query(&format!(
            "SELECT setval('{seq}', (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
        ))
        .execute(&mut *d)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table added to the schema but not to `TABLES` would be silently
    /// left behind by a migration: the list must be the schema's tables.
    #[tokio::test]
    async fn every_index_table_is_copied() {
        let dir = tempfile::tempdir().expect("tmp");
        let (idx, _w) = crate::archive::index::Index::open(&dir.path().join("index.db"))
            .await
            .expect("open");
        let rows = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(idx.pool())
        .await
        .expect("tables");
        let mut schema: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
        schema.retain(|t| t != "medrelay_schema");
        let mut listed: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(listed, schema);
    }
}
