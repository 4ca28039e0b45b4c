//! The storage boundary: one repository per aggregate, each the only code
//! that reads or writes its tables (DESIGN.md, "one owner per table").
//! Handlers and services call these functions with the transaction they
//! hold, so a change and everything that must commit with it (a report
//! signing, its worklist transition and its history row) commit together.
//!
//! Today the index is SQLite only and the tables are created by the
//! migrations in `archive::index` (they stay there with the other
//! migrations). Repositories so far: `worklist`.

pub mod blob;
pub mod worklist;

use sqlx::SqlitePool;

/// A connection with the caller's transaction open.
pub type Conn = sqlx::SqliteConnection;

/// Runs `f` in one `BEGIN IMMEDIATE` transaction on a connection of `pool`:
/// committed when `f` returns `Ok`, rolled back otherwise. IMMEDIATE takes
/// the write lock before the first read, so what `f` reads is still true
/// when it writes (two experts claiming one study: one wins).
pub async fn immediate<T, E>(pool: &SqlitePool, f: impl AsyncFnOnce(&mut Conn) -> Result<T, E>) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    match f(&mut conn).await {
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
