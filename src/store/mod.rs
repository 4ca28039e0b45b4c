//! The storage boundary: one repository per aggregate, each the only code
//! that reads or writes its tables (DESIGN.md, "one owner per table").
//! Handlers and services call these functions with the transaction they
//! hold, so a change and everything that must commit with it (a report
//! signing, its worklist transition and its history row) commit together.
//!
//! # Two index backends, one set of queries
//!
//! The index is SQLite (the embedded default) or PostgreSQL, chosen by the
//! `[index] url`. Every repository runs the same query texts on both through
//! `sqlx::Any` ([`Pool`], [`Conn`]), rather than an enum of two pools with
//! two texts of every query: the spike (`tests::sqlite_binds_dollar_n_by_position`
//! below) showed that sqlx-sqlite binds `$1..$n` by number, so one portable
//! dialect covers both, and a query can only drift between backends where
//! it is written twice on purpose. The portable dialect:
//! - placeholders `$1..$n` (never `?`); dynamic queries use [`Sql`], which
//!   numbers its binds (sqlx's `QueryBuilder<Any>` writes `?`);
//! - `ON CONFLICT … DO NOTHING / DO UPDATE` and `RETURNING`, never
//!   `INSERT OR IGNORE/REPLACE` or `last_insert_rowid()`;
//! - integers are BIGINT on PostgreSQL and decoded as `i64`; flags are
//!   0/1 integers on both (sqlx's Any decodes `bool` only from a real
//!   boolean, which SQLite does not have); `SUM` is cast to BIGINT (it is
//!   NUMERIC on PostgreSQL, which Any cannot decode);
//! - `CASE` instead of the scalar `max(a, b)`; `strpos` is not shared, so
//!   list membership uses `LIKE` on `,`-wrapped lists; `LIKE` is ASCII
//!   case-insensitive on SQLite and case-sensitive on PostgreSQL, so a
//!   query that wants SQLite's behaviour says `lower(x) LIKE lower($n)`.
//!
//! The few things that truly differ are chosen by [`Backend`] in the owning
//! repository: the schema and its migration chain, the write lock
//! ([`immediate`]: `BEGIN IMMEDIATE` on SQLite, `BEGIN` plus a transaction
//! advisory lock on PostgreSQL, the same "one writer at a time" the
//! conflict checks rely on), and queue claims: the SR delivery queue is
//! taken with one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`
//! on PostgreSQL (`reading::delivery::claim_due`). Worklist claims go
//! through the write lock and the pure rules; the relay outbox is drained
//! by the one edge that owns it.
//!
//! Tables are created by the migrations in `archive::index` (one chain per
//! backend). Repositories so far: `worklist`.

pub mod blob;
pub mod copy;
pub mod worklist;

use std::borrow::Cow;

use sqlx::Arguments;
use sqlx::any::AnyArguments;

/// A pool of index connections, whichever the backend.
pub type Pool = sqlx::AnyPool;

/// A connection with the caller's transaction open.
pub type Conn = sqlx::AnyConnection;

/// A row read from the index.
pub type DbRow = sqlx::any::AnyRow;

/// Which database the index lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a pool connects to (from its URL scheme).
    pub fn of_pool(pool: &Pool) -> Backend {
        Backend::of_scheme(pool.connect_options().database_url.scheme())
    }

    /// The backend of an open connection.
    pub fn of_conn(conn: &Conn) -> Backend {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// The backend an index URL names.
    pub fn of_url(url: &str) -> Backend {
        Backend::of_scheme(url.split_once(':').map_or(url, |(s, _)| s))
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    fn of_scheme(scheme: &str) -> Backend {
        match scheme {
            "postgres" | "postgresql" => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

/// The key of the PostgreSQL transaction advisory lock that stands for
/// SQLite's write lock ("medrelay" in ASCII, truncated to 63 bits).
pub const WRITE_LOCK_KEY: i64 = 0x6d65_6472_656c_6179 & 0x7fff_ffff_ffff_ffff;

/// Starts the index's write transaction on `conn`: `BEGIN IMMEDIATE` on
/// SQLite, `BEGIN` and the write advisory lock on PostgreSQL. Either way
/// the transaction holds the one write lock from its first statement.
pub async fn begin_write(conn: &mut Conn) -> Result<(), sqlx::Error> {
    match Backend::of_conn(conn) {
        Backend::Sqlite => {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        }
        Backend::Postgres => {
            sqlx::query("BEGIN").execute(&mut *conn).await?;
            if let Err(e) = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *conn)
                .await
            {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A write transaction (see [`begin_write`]) on a connection of `pool`,
/// rolled back if dropped uncommitted.
pub async fn begin_write_tx(pool: &Pool) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    match Backend::of_pool(pool) {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

/// Runs `f` in one write transaction (see [`begin_write`]) on a connection
/// of `pool`: committed when `f` returns `Ok`, rolled back otherwise. The
/// write lock is taken before the first read, so what `f` reads is still
/// true when it writes (two experts claiming one study: one wins).
pub async fn immediate<T, E>(pool: &Pool, f: impl AsyncFnOnce(&mut Conn) -> Result<T, E>) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    let mut conn = pool.acquire().await?;
    begin_write(&mut conn).await?;
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

/// A query assembled at run time, with its binds numbered `$1..$n` so the
/// same text runs on both backends (sqlx's `QueryBuilder<Any>` writes `?`,
/// which PostgreSQL does not accept).
#[derive(Default)]
pub struct Sql<'a> {
    text: String,
    args: AnyArguments<'a>,
    binds: usize,
}

impl<'a> Sql<'a> {
    pub fn new(text: impl Into<Cow<'a, str>>) -> Sql<'a> {
        Sql {
            text: text.into().into_owned(),
            ..Sql::default()
        }
    }

    /// Appends SQL text (never input: that goes through [`Sql::push_bind`]).
    pub fn push(&mut self, text: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.text, "{text}");
        self
    }

    /// Appends the next placeholder and binds `value` to it.
    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + sqlx::Encode<'a, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        self.binds += 1;
        let n = self.binds;
        self.push(format_args!("${n}"));
        // Encoding into Any's argument buffer only records the value.
        let _ = self.args.add(value);
        self
    }

    /// `(v1, v2, …)`: one bound placeholder per value.
    pub fn push_tuple<T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self
    where
        T: 'a + sqlx::Encode<'a, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(v);
        }
        self.push(")")
    }

    pub fn sql(&self) -> &str {
        &self.text
    }

    /// The query, ready to run; the builder keeps its text and loses its
    /// binds (build once).
    pub fn build(&'a mut self) -> sqlx::query::Query<'a, sqlx::Any, AnyArguments<'a>> {
        sqlx::query_with(&self.text, std::mem::take(&mut self.args))
    }

    pub fn build_query_as<O>(&'a mut self) -> sqlx::query::QueryAs<'a, sqlx::Any, O, AnyArguments<'a>>
    where
        O: for<'r> sqlx::FromRow<'r, DbRow>,
    {
        sqlx::query_as_with(&self.text, std::mem::take(&mut self.args))
    }

    pub fn build_query_scalar<O>(&'a mut self) -> sqlx::query::QueryScalar<'a, sqlx::Any, O, AnyArguments<'a>>
    where
        (O,): for<'r> sqlx::FromRow<'r, DbRow>,
    {
        sqlx::query_scalar_with(&self.text, std::mem::take(&mut self.args))
    }
}

/// Lists count their matches exactly up to this many and then say "more".
/// An exact `COUNT(*)` walks every matching index entry: 60–80 ms for a
/// million studies on PostgreSQL, on every page view, for a number nobody
/// pages through (at 50 a page, 10 000 is 200 pages; past that one narrows
/// the filter). Counting stops at the cap, so the count costs at most
/// 10 001 index entries whatever the archive's size.
pub const COUNT_CAP: i64 = 10_000;

/// How many rows match a list's filters: exact up to [`COUNT_CAP`],
/// `exact = false` with `n = COUNT_CAP` beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Total {
    pub n: i64,
    pub exact: bool,
}

/// The count query for a list: `from_where` is `FROM … WHERE 1=1`; the
/// caller pushes its filters and passes the builder to [`Total::fetch`].
pub fn capped_count(from_where: &str) -> Sql<'static> {
    Sql::new(format!("SELECT COUNT(*) FROM (SELECT 1 {from_where}"))
}

impl Total {
    /// Runs a builder made by [`capped_count`] (with its filters pushed).
    pub async fn fetch(mut cq: Sql<'_>, pool: &Pool) -> Result<Total, sqlx::Error> {
        cq.push(format_args!(" LIMIT {}) AS capped", COUNT_CAP + 1));
        let row = cq.build().fetch_one(pool).await?;
        let n: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(Total::of(n))
    }

    fn of(counted: i64) -> Total {
        Total {
            n: counted.min(COUNT_CAP),
            exact: counted <= COUNT_CAP,
        }
    }
}

/// `AND col IN (?, ?, ...)`; an empty list matches nothing. `col` is the
/// bare column (the `AND` is added here).
pub fn push_in(qb: &mut Sql<'_>, col: &str, values: &[String]) {
    if values.is_empty() {
        qb.push(" AND 1 = 0");
        return;
    }
    qb.push(format!(" AND {col} IN "));
    qb.push_tuple(values.iter().cloned());
}

/// A 0/1 integer column read as a flag: the portable boolean (sqlx's Any
/// decodes `bool` only from a real boolean, which SQLite does not have).
/// For `FromRow` fields: `#[sqlx(try_from = "crate::store::Flag")]`.
pub struct Flag(pub i64);

impl sqlx::Type<sqlx::Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        <i64 as sqlx::Decode<'r, sqlx::Any>>::decode(value).map(Flag)
    }
}

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0 != 0
    }
}

/// Whether `e` says the database cannot be reached right now, as opposed to
/// refusing a statement: no connection (refused, reset, pool timed out),
/// or PostgreSQL's connection exceptions (SQLSTATE class 08), shutdown and
/// startup (57P01-57P03) and too many connections (53300). The edges map
/// it to "try again later" (0xA7xx, 503); the pool reconnects by itself.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")),
        _ => false,
    }
}

/// Registers the SQLite and PostgreSQL drivers with `sqlx::Any` (idempotent;
/// every pool is opened through here).
pub fn install_drivers() {
    sqlx::any::install_default_drivers();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn sqlite_memory() -> Pool {
        install_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("open")
    }

    /// The spike behind the module's choice: sqlx-sqlite binds `$N` by its
    /// number, not by order of appearance, so `$N` texts are portable.
    #[tokio::test]
    async fn sqlite_binds_dollar_n_by_position() {
        let pool = sqlite_memory().await;
        let row = sqlx::query("SELECT $2 AS b, $1 AS a, $2 || $1 AS ba")
            .bind("one")
            .bind("two")
            .fetch_one(&pool)
            .await
            .expect("query");
        assert_eq!(row.get::<String, _>("b"), "two");
        assert_eq!(row.get::<String, _>("a"), "one");
        assert_eq!(row.get::<String, _>("ba"), "twoone");
    }

    #[tokio::test]
    async fn sql_builder_numbers_its_binds() {
        let pool = sqlite_memory().await;
        let mut q = Sql::new("SELECT ");
        q.push_bind(40_i64).push(" + ").push_bind(2_i64).push(" AS n, ");
        q.push_bind("x").push(" IN ").push_tuple(["a", "x"]).push(" AS hit");
        assert_eq!(q.sql(), "SELECT $1 + $2 AS n, $3 IN ($4, $5) AS hit");
        let row = q.build().fetch_one(&pool).await.expect("query");
        assert_eq!(row.get::<i64, _>("n"), 42);
        assert_eq!(row.get::<i64, _>("hit"), 1);
    }

    #[tokio::test]
    async fn immediate_commits_and_rolls_back() {
        let pool = sqlite_memory().await;
        sqlx::query("CREATE TABLE t (v BIGINT)")
            .execute(&pool)
            .await
            .expect("create");
        immediate(&pool, async |c: &mut Conn| {
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *c)
                .await
                .map(|_| ())
        })
        .await
        .expect("commit");
        let r: Result<(), sqlx::Error> = immediate(&pool, async |c: &mut Conn| {
            sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *c).await?;
            Err(sqlx::Error::RowNotFound)
        })
        .await;
        assert!(r.is_err());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(n, 1);
        assert_eq!(Backend::of_pool(&pool), Backend::Sqlite);
    }

    #[tokio::test]
    async fn list_counts_stop_at_the_cap() {
        let pool = sqlite_memory().await;
        sqlx::query("CREATE TABLE t (v BIGINT)")
            .execute(&pool)
            .await
            .expect("create");
        sqlx::query(
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 10002)
             INSERT INTO t SELECT v FROM n",
        )
        .execute(&pool)
        .await
        .expect("fill");
        let count_upto = async |max: i64| {
            let mut cq = capped_count("FROM t WHERE 1=1");
            cq.push(" AND v <= ").push_bind(max);
            Total::fetch(cq, &pool).await.expect("count")
        };
        assert_eq!(count_upto(0).await, Total { n: 0, exact: true });
        assert_eq!(count_upto(9_999).await, Total { n: 9_999, exact: true });
        assert_eq!(
            count_upto(COUNT_CAP).await,
            Total {
                n: COUNT_CAP,
                exact: true
            }
        );
        // one past the cap and far past it read the same: "more than 10 000"
        assert_eq!(
            count_upto(COUNT_CAP + 1).await,
            Total {
                n: COUNT_CAP,
                exact: false
            }
        );
        assert_eq!(
            count_upto(i64::MAX).await,
            Total {
                n: COUNT_CAP,
                exact: false
            }
        );
    }

    /// One owner per table: of the code that ships (tests and migrations
    /// aside), exactly one module writes each index table, so its rules
    /// (the worklist's transitions, a notice committed with what it
    /// announces, a delivery with its report) cannot be bypassed. A second
    /// writer fails here with its file named; read-only joins are allowed.
    #[test]
    fn each_table_has_one_writer() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("src dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        // The migration copier writes every table by design; the SQLite
        // migration chain in the archive index backfills worklist columns.
        let exempt =
            |rel: &str, table: &str| rel == "store/copy.rs" || (rel == "archive/index.rs" && table == "worklist");
        let mut writers: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for f in &files {
            let rel = f
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(f).expect("read source");
            let shipped = text.split("#[cfg(test)]").next().unwrap_or_default().to_uppercase();
            for &t in super::copy::TABLES {
                let t_up = t.to_uppercase();
                let writes = [
                    "INSERT INTO ",
                    "INSERT OR IGNORE INTO ",
                    "INSERT OR REPLACE INTO ",
                    "UPDATE ",
                    "DELETE FROM ",
                ]
                .iter()
                .any(|verb| {
                    shipped.match_indices(&format!("{verb}{t_up}")).any(|(at, m)| {
                        let next = shipped[at + m.len()..].chars().next().unwrap_or(' ');
                        !(next.is_ascii_alphanumeric() || next == '_')
                    })
                });
                if writes && !exempt(&rel, t) {
                    writers.entry(t).or_default().push(rel.clone());
                }
            }
        }
        let shared: Vec<_> = writers.iter().filter(|(_, w)| w.len() > 1).collect();
        assert!(shared.is_empty(), "tables written by more than one module: {shared:?}");
        assert!(
            writers.contains_key("worklist_transitions"),
            "the scan found nothing: {writers:?}"
        );
    }
}
