//! The worklist repository: the only code that issues SQL against the
//! `worklist` and `worklist_transitions` tables (their migrations excepted,
//! which live with the others in `archive::index`).
//!
//! Every change goes the same way: read the row inside the caller's
//! transaction, ask the pure rules in `reading::worklist`, write the new
//! state and exactly one `worklist_transitions` row. The functions take the
//! caller's connection with its transaction already open (SQLite: `BEGIN
//! IMMEDIATE`, so the read and the write are serialised against every other
//! writer), so a report signing, its transition and its history row, or a
//! priority change and its history row, commit together or not at all.
//!
//! Why a module of its own rather than inside `archive::index`: the worklist
//! is an aggregate of the reading workflow, written from report signing,
//! delivery, the API, the relay hub and the ingest sweep; the index owns
//! studies and instances. Keeping both in one 2 000-line file is how four
//! writers came to bypass the rules. `store/` is where DESIGN.md puts the
//! repositories per aggregate, and where a PostgreSQL variant will sit.

use crate::store::Pool;
use sqlx::Row;

use crate::reading::worklist::{
    Action, Actor, Completion, Priority, State, Transition, WorklistError, apply as rule, on_completion,
};
use crate::store::push_in;

pub use super::Conn;

/// Why a worklist action was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WorklistApplyError {
    #[error("study is not on the worklist")]
    NoSuchStudy,
    #[error(transparent)]
    Rule(#[from] WorklistError),
    #[error("worklist row in an unknown state {0:?}")]
    Corrupt(String),
    /// The database failed; the caller's own error type says whether it
    /// is unreachable (`store::is_unavailable`).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What the rules need of a stored row.
struct Stored {
    state: State,
    priority: Priority,
}

fn state_of(
    name: &str,
    by: Option<String>,
    lease: Option<i64>,
    detail: Option<String>,
) -> Result<State, WorklistApplyError> {
    Ok(match name {
        "new" => State::New,
        "claimed" => State::Claimed {
            by: by.unwrap_or_default(),
            lease_until_ms: lease.unwrap_or(0),
        },
        "reported" => State::Reported {
            by: by.unwrap_or_default(),
        },
        "delivered" => State::Delivered,
        "returned" => State::Returned {
            reason: detail.unwrap_or_default(),
        },
        "cancelled" => State::Cancelled,
        other => return Err(WorklistApplyError::Corrupt(other.to_string())),
    })
}

async fn read(conn: &mut Conn, study_uid: &str) -> Result<Option<Stored>, WorklistApplyError> {
    let Some(row) = sqlx::query(
        "SELECT state, claimed_by, lease_until_ms, detail, priority_rank FROM worklist WHERE study_uid = $1",
    )
    .bind(study_uid)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Stored {
        state: state_of(&row.get::<String, _>(0), row.get(1), row.get(2), row.get(3))?,
        priority: Priority::from_rank(row.get(4)),
    }))
}

/// The row's state columns after a transition: (claimed_by, lease, detail).
fn columns(s: &State) -> (Option<&str>, Option<i64>, Option<&str>) {
    match s {
        State::Claimed { by, lease_until_ms } => (Some(by.as_str()), Some(*lease_until_ms), None),
        State::Reported { by } => (Some(by.as_str()), None, None),
        State::Returned { reason } => (None, None, Some(reason.as_str())),
        State::New | State::Delivered | State::Cancelled => (None, None, None),
    }
}

async fn write_state(conn: &mut Conn, study_uid: &str, to: &State, now_ms: i64) -> Result<(), sqlx::Error> {
    let (by, lease, detail) = columns(to);
    sqlx::query(
        "UPDATE worklist SET state = $1, claimed_by = $2, lease_until_ms = $3, detail = $4, updated_ms = $5 WHERE study_uid = $6",
    )
    .bind(to.name())
    .bind(by)
    .bind(lease)
    .bind(detail)
    .bind(now_ms)
    .bind(study_uid)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn log(conn: &mut Conn, study_uid: &str, t: &Transition, detail: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO worklist_transitions (study_uid, from_state, to_state, actor, at_ms, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(study_uid)
    .bind(t.from)
    .bind(t.to.name())
    .bind(&t.by)
    .bind(t.at_ms)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies one action inside the caller's transaction: read, rules, write,
/// one transition row. `note` goes to the transition row (default: the
/// return reason of a returned study). A priority change goes through
/// [`set_priority`] (it carries the clinical question).
pub async fn apply(
    conn: &mut Conn,
    study_uid: &str,
    action: &Action,
    actor: Actor<'_>,
    now_ms: i64,
    note: Option<&str>,
) -> Result<Transition, WorklistApplyError> {
    if let Action::SetPriority { wanted, .. } = action {
        return set_priority(conn, study_uid, *wanted, None, actor, now_ms).await;
    }
    let stored = read(conn, study_uid).await?.ok_or(WorklistApplyError::NoSuchStudy)?;
    let t = rule(&stored.state, action, actor, now_ms)?;
    write_state(conn, study_uid, &t.to, now_ms).await?;
    let detail = note.or(columns(&t.to).2);
    log(conn, study_uid, &t, detail).await?;
    Ok(t)
}

/// Sets the reading priority (and, when given, the clinical question)
/// inside the caller's transaction; the history row says `priority NAME`.
pub async fn set_priority(
    conn: &mut Conn,
    study_uid: &str,
    wanted: Priority,
    clinical_question: Option<&str>,
    actor: Actor<'_>,
    now_ms: i64,
) -> Result<Transition, WorklistApplyError> {
    let stored = read(conn, study_uid).await?.ok_or(WorklistApplyError::NoSuchStudy)?;
    let action = Action::SetPriority {
        current: stored.priority,
        wanted,
    };
    let t = rule(&stored.state, &action, actor, now_ms)?;
    sqlx::query(
        "UPDATE worklist SET priority = $1, priority_rank = $2, clinical_question = COALESCE($3, clinical_question), updated_ms = $4
         WHERE study_uid = $5",
    )
    .bind(wanted.name())
    .bind(wanted.rank())
    .bind(clinical_question)
    .bind(now_ms)
    .bind(study_uid)
    .execute(&mut *conn)
    .await?;
    log(conn, study_uid, &t, Some(&format!("priority {}", wanted.name()))).await?;
    Ok(t)
}

/// The priority and clinical question a study enters the worklist with
/// (the relay carries the clinic's choice from the edge).
#[derive(Debug, Clone, Copy)]
pub struct Initial<'a> {
    pub priority: Priority,
    pub clinical_question: Option<&'a str>,
}

impl Default for Initial<'_> {
    fn default() -> Self {
        Initial {
            priority: Priority::Routine,
            clinical_question: None,
        }
    }
}

/// A study just completed, inside the caller's transaction: put it on the
/// worklist (one row per study, ever; `initial` applies only to a new row),
/// or count the completion and reopen it if it had been returned for more
/// images (the rules decide, see `reading::worklist::on_completion`). A
/// study with no `studies` row gets no worklist row. Returns what happened.
pub async fn enqueue_completed(
    conn: &mut Conn,
    study_uid: &str,
    now_ms: i64,
    initial: Initial<'_>,
) -> Result<Completion, sqlx::Error> {
    // A row in an unknown state is kept as it is (only counted), as before:
    // ingest must not fail over a worklist row it does not understand.
    let existing = match read(conn, study_uid).await {
        Ok(s) => s.map(|s| Some(s.state)),
        Err(WorklistApplyError::Db(e)) => return Err(e),
        Err(_) => Some(None),
    };
    let what = match &existing {
        None => on_completion(None, now_ms),
        Some(Some(s)) => on_completion(Some(s), now_ms),
        Some(None) => Completion::Keep,
    };
    match &what {
        Completion::Enqueue => {
            sqlx::query(
                "INSERT INTO worklist (study_uid, state, priority, priority_rank, clinical_question, enqueued_ms, updated_ms,
                   completions, clinic_id, modalities, body_parts)
                 SELECT $1, 'new', $2, $3, $4, $5, $6, 1, s.clinic_id, s.modalities, s.body_parts FROM studies s WHERE s.study_uid = $7",
            )
            .bind(study_uid)
            .bind(initial.priority.name())
            .bind(initial.priority.rank())
            .bind(initial.clinical_question)
            .bind(now_ms)
            .bind(now_ms)
            .bind(study_uid)
            .execute(&mut *conn)
            .await?;
        }
        Completion::Keep | Completion::Reopen(_) => {
            sqlx::query(
                "UPDATE worklist SET updated_ms = $1, completions = completions + 1,
                   modalities = COALESCE((SELECT s.modalities FROM studies s WHERE s.study_uid = worklist.study_uid), modalities),
                   body_parts = COALESCE((SELECT s.body_parts FROM studies s WHERE s.study_uid = worklist.study_uid), body_parts)
                 WHERE study_uid = $2",
            )
            .bind(now_ms)
            .bind(study_uid)
            .execute(&mut *conn)
            .await?;
        }
    }
    if let Completion::Reopen(t) = &what {
        write_state(conn, study_uid, &t.to, now_ms).await?;
        sqlx::query("UPDATE worklist SET enqueued_ms = $1 WHERE study_uid = $2")
            .bind(now_ms)
            .bind(study_uid)
            .execute(&mut *conn)
            .await?;
        log(conn, study_uid, t, Some("new images arrived")).await?;
    }
    Ok(what)
}

/// Studies whose claim lease ran out by `now_ms` (each is then expired
/// through [`apply`] in a transaction of its own).
pub async fn due_leases(pool: &Pool, now_ms: i64) -> Result<Vec<String>, sqlx::Error> {
    Ok(
        sqlx::query("SELECT study_uid FROM worklist WHERE state = 'claimed' AND lease_until_ms <= $1")
            .bind(now_ms)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect(),
    )
}

/// Studies waiting to be read (the `worklist_depth` metric).
pub async fn depth(pool: &Pool) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query("SELECT COUNT(*) FROM worklist WHERE state = 'new'")
        .fetch_one(pool)
        .await?
        .get(0))
}

/// The stored state, if the study is on the worklist (read inside the
/// caller's transaction, e.g. to tell a first report from an amendment).
pub async fn state(conn: &mut Conn, study_uid: &str) -> Result<Option<State>, WorklistApplyError> {
    Ok(read(conn, study_uid).await?.map(|s| s.state))
}

/// The study's priority and clinical question, if it is on the worklist
/// (what the edge sends along with the study; what a re-sent study is
/// compared with at the hub).
pub async fn priority(conn: &mut Conn, study_uid: &str) -> Result<Option<(Priority, Option<String>)>, sqlx::Error> {
    Ok(
        sqlx::query("SELECT priority, priority_rank, clinical_question FROM worklist WHERE study_uid = $1")
            .bind(study_uid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| {
                let p = Priority::parse(&r.get::<String, _>(0)).unwrap_or_else(|| Priority::from_rank(r.get(1)));
                (p, r.get(2))
            }),
    )
}

/// One study's worklist entry as the API shows it.
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

pub async fn entry(pool: &Pool, study_uid: &str) -> Result<Option<WorklistEntry>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT w.*, u.display_name FROM worklist w LEFT JOIN users u ON u.username = w.claimed_by WHERE w.study_uid = $1",
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

/// One row of a study's transition history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    pub from: String,
    pub to: String,
    pub actor: String,
    pub actor_name: String,
    pub at_ms: i64,
    pub detail: Option<String>,
}

/// A study's transitions, oldest first.
pub async fn history(pool: &Pool, study_uid: &str) -> Result<Vec<HistoryRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT t.from_state, t.to_state, t.actor, COALESCE(u.display_name, t.actor) AS actor_name, t.at_ms, t.detail
         FROM worklist_transitions t LEFT JOIN users u ON u.username = t.actor WHERE t.study_uid = $1 ORDER BY t.at_ms, t.id",
    )
    .bind(study_uid)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            from: r.get(0),
            to: r.get(1),
            actor: r.get(2),
            actor_name: r.get(3),
            at_ms: r.get(4),
            detail: r.get(5),
        })
        .collect())
}

/// Which worklist rows a page shows. Values are already validated.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Stored state names (an empty list matches nothing).
    pub states: Vec<String>,
    pub priority: Option<Priority>,
    /// The caller's clinic scope; `None` sees every clinic.
    pub scope: Option<Vec<String>>,
    pub clinic: Option<String>,
    /// One modality of the study's list (`CT` matches `CT,SR`).
    pub modality: Option<String>,
    /// A substring of the study's body parts.
    pub body_part: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// One row of the worklist page: the entry and what the page shows of its
/// study and patient.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListRow {
    pub study_uid: String,
    pub state: String,
    pub priority: String,
    pub clinical_question: Option<String>,
    pub claimed_by: Option<String>,
    pub claimed_by_name: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub enqueued_ms: i64,
    pub detail: Option<String>,
    pub clinic_id: String,
    pub modalities: String,
    pub body_parts: String,
    pub description: String,
    pub num_series: i64,
    pub num_instances: i64,
    pub patient_name: String,
    pub patient_id: String,
    pub sex: String,
    pub birth_date: String,
    pub study_date: String,
}

/// The open states, as the partial index `worklist_open` names them.
const OPEN_STATES: [&str; 3] = ["new", "claimed", "returned"];
/// The filter on exactly the open states, written as literals with the
/// index's own text: a planner can use a partial index only when it can
/// prove the query implies its predicate, which neither SQLite nor a
/// generic PostgreSQL plan can do through bound parameters.
const OPEN_FILTER: &str = " AND w.state IN ('new', 'claimed', 'returned')";

/// Whether a filter asks for exactly the open states.
fn open_only(f: &ListFilter) -> bool {
    f.states.len() == OPEN_STATES.len() && OPEN_STATES.iter().all(|s| f.states.iter().any(|x| x == s))
}

/// The worklist as a list's `FROM`. SQLite, which keeps no statistics
/// here, prefers the clinic index for an expert's twenty-clinic scope and
/// then sorts every open entry (100 ms at 60 000 open), so it is told to
/// walk the queue index, unless one clinic is asked for (its own index
/// finds a small clinic's few entries directly). PostgreSQL chooses by cost.
fn list_from(f: &ListFilter, backend: crate::store::Backend) -> &'static str {
    if backend == crate::store::Backend::Sqlite && open_only(f) && f.clinic.as_deref().is_none_or(str::is_empty) {
        "FROM worklist w INDEXED BY worklist_open WHERE 1=1"
    } else {
        "FROM worklist w WHERE 1=1"
    }
}

fn push_list_filters(qb: &mut crate::store::Sql<'_>, f: &ListFilter) {
    if open_only(f) {
        qb.push(OPEN_FILTER);
    } else {
        push_in(qb, "w.state", &f.states);
    }
    if let Some(p) = f.priority {
        qb.push(" AND w.priority_rank = ").push_bind(p.rank());
    }
    if let Some(cs) = &f.scope {
        push_in(qb, "w.clinic_id", cs);
    }
    if let Some(v) = f.clinic.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND w.clinic_id = ").push_bind(v.to_string());
    }
    if let Some(v) = f.modality.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND lower(',' || w.modalities || ',') LIKE lower(")
            .push_bind(format!("%,{v},%"))
            .push(")");
    }
    if let Some(v) = f.body_part.as_deref().filter(|v| !v.is_empty()) {
        qb.push(" AND lower(w.body_parts) LIKE lower(")
            .push_bind(format!("%{v}%"))
            .push(")");
    }
}

/// A page of the worklist, most urgent then longest waiting first, and the
/// number of rows matching (capped, see [`crate::store::COUNT_CAP`]). The page comes from the worklist alone (its
/// clinic column and queue index); only the chosen rows are joined with
/// studies and patients.
pub async fn list(pool: &Pool, f: &ListFilter) -> Result<(Vec<ListRow>, crate::store::Total), sqlx::Error> {
    let from = list_from(f, crate::store::Backend::of_pool(pool));
    let mut qb = crate::store::Sql::new(format!(
        "SELECT w.study_uid, w.state, w.priority, w.clinical_question, w.claimed_by, u.display_name AS claimed_by_name,
           w.lease_until_ms, w.enqueued_ms, w.detail, s.clinic_id, s.modalities, s.body_parts, s.description,
           s.num_series, s.num_instances, s.patient_name, s.patient_id, p.sex, p.birth_date, s.study_date
         FROM (SELECT w.study_uid, w.priority_rank, w.enqueued_ms {from}"
    ));
    push_list_filters(&mut qb, f);
    qb.push(" ORDER BY w.priority_rank, w.enqueued_ms, w.study_uid LIMIT ")
        .push_bind(f.limit)
        .push(" OFFSET ")
        .push_bind(f.offset)
        .push(
            ") AS pg JOIN worklist w ON w.study_uid = pg.study_uid JOIN studies s ON s.study_uid = pg.study_uid
             JOIN patients p ON p.id = s.patient_row LEFT JOIN users u ON u.username = w.claimed_by
             ORDER BY pg.priority_rank, pg.enqueued_ms, pg.study_uid",
        );
    let rows: Vec<ListRow> = qb.build_query_as().fetch_all(pool).await?;
    let mut cq = crate::store::capped_count(from);
    push_list_filters(&mut cq, f);
    Ok((rows, crate::store::Total::fetch(cq, pool).await?))
}

/// A study that entered the worklist, with when it was first reported and
/// first delivered (from its transitions), for turnaround statistics.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Turnaround {
    pub clinic_id: String,
    pub priority: String,
    pub enqueued_ms: i64,
    pub reported_ms: Option<i64>,
    pub delivered_ms: Option<i64>,
}

/// Every study that entered the worklist since `since_ms`.
pub async fn turnaround(pool: &Pool, since_ms: i64) -> Result<Vec<Turnaround>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.clinic_id, w.priority, w.enqueued_ms,
           (SELECT MIN(at_ms) FROM worklist_transitions t WHERE t.study_uid = w.study_uid AND t.to_state = 'reported') AS reported_ms,
           (SELECT MIN(at_ms) FROM worklist_transitions t WHERE t.study_uid = w.study_uid AND t.to_state = 'delivered') AS delivered_ms
         FROM worklist w JOIN studies s ON s.study_uid = w.study_uid WHERE w.enqueued_ms >= $1",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await
}

/// Studies waiting to be read, per clinic and priority.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Waiting {
    pub clinic_id: String,
    pub priority: String,
    pub count: i64,
    pub oldest_ms: i64,
}

/// The waiting studies grouped by clinic and priority, most urgent first.
pub async fn waiting(pool: &Pool) -> Result<Vec<Waiting>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.clinic_id, w.priority, COUNT(*) AS count, MIN(w.enqueued_ms) AS oldest_ms
         FROM worklist w JOIN studies s ON s.study_uid = w.study_uid
         WHERE w.state IN ('new', 'claimed', 'returned') GROUP BY s.clinic_id, w.priority
         ORDER BY MIN(w.priority_rank), s.clinic_id",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
#[path = "worklist_tests.rs"]
mod tests;
