//! The index repositories give the same answers on both backends: each test
//! runs the same assertions on an SQLite file and on a database of a real,
//! throwaway PostgreSQL cluster (tests/support/pg.rs), through the same
//! code the gateway runs (`Index::open_url`). Two `Index` values on one
//! database stand for two nodes of a province: their writes race through
//! the write lock (SQLite's, or the advisory lock on PostgreSQL) and the
//! conflict checks still see one winner.
//!
//! Run: `nice -n 19 cargo test --test index_backends` (after `bash tests/support/setup.sh`).

mod support;

use std::process::Command;
use std::time::Duration;

use medrelay::archive::files::Committed;
use medrelay::archive::index::{self, Index, IndexError, NewInstance, StoreError, StoreOutcome, StudyFilter};
use medrelay::reading::worklist::{Action, Actor};
use medrelay::store::worklist::WorklistApplyError;
use support::pg::PgCluster;
use support::rt;

/// The SQLite URL in `dir` and a fresh database on `pg`, named after `test`.
fn both(dir: &tempfile::TempDir, pg: &PgCluster, test: &str) -> [String; 2] {
    [index::sqlite_url(&dir.path().join("index.db")), pg.fresh_db(test)]
}

fn inst(clinic: &str, sop: &str, study: &str, series: &str, modality: &str, t: i64) -> NewInstance {
    NewInstance {
        sop_instance_uid: sop.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        study_uid: study.into(),
        series_uid: series.into(),
        patient_id: "P1".into(),
        patient_name: "Wang^Xiaodong=王^小东=wang^xiaodong".into(),
        modality: modality.into(),
        study_date: "20261124".into(),
        calling_ae: "CT01".into(),
        clinic_id: clinic.into(),
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

fn is_conflict(r: &Result<StoreOutcome, StoreError>) -> bool {
    matches!(
        r,
        Err(StoreError::Index {
            source: IndexError::Conflict(_),
            ..
        })
    )
}

async fn names(idx: &Index, f: StudyFilter) -> Vec<String> {
    let (rows, total) = idx.search_studies(&f).await.expect("search");
    assert_eq!((rows.len() as i64, true), (total.n, total.exact));
    let mut uids: Vec<String> = rows.into_iter().map(|r| r.study_uid).collect();
    uids.sort();
    uids
}

/// Store, resend, new version, another clinic's UIDs, stability, the
/// worklist, and the study search: the same results on both backends.
async fn store_and_read(url: &str) {
    let (idx, _w) = Index::open_url(url).await.expect("open");
    let s = |r: Result<StoreOutcome, StoreError>| r.expect("store");
    assert_eq!(
        s(idx.store(inst("c1", "1.1", "9", "9.1", "CT", 0), file("aa")).await),
        StoreOutcome::Stored
    );
    assert_eq!(
        s(idx.store(inst("c1", "1.1", "9", "9.1", "CT", 10), file("aa")).await),
        StoreOutcome::Duplicate
    );
    assert_eq!(
        s(idx.store(inst("c1", "1.1", "9", "9.1", "CT", 20), file("bb")).await),
        StoreOutcome::NewVersion(2)
    );
    assert_eq!(
        s(idx.store(inst("c1", "1.2", "9", "9.2", "PR", 30), file("cc")).await),
        StoreOutcome::Stored
    );
    // Another clinic sending the same study UID is refused whole.
    assert!(is_conflict(
        &idx.store(inst("c2", "7.1", "9", "7", "CT", 40), file("dd")).await
    ));
    // A late instance moves the study's times forward, never back.
    s(idx.store(inst("c1", "1.3", "9", "9.1", "CT", 25), file("ee")).await);
    let st = idx.study("9").await.expect("q").expect("study");
    assert_eq!((st.num_series, st.num_instances), (2, 3), "{st:?}");
    assert_eq!(st.last_received_ms, 30);
    assert_eq!(st.modalities, "CT,PR");
    assert_eq!(st.status, "receiving");
    let series = idx.series_of("9").await.expect("series");
    assert_eq!(series.len(), 2);
    assert_eq!(idx.instance_versions("1.1").await.expect("v").len(), 2);
    assert_eq!(idx.instances_of_study("9").await.expect("i").len(), 3);

    // Quiet since 30 + 1000: complete, on the worklist.
    assert!(idx.sweep_stable(1029).await.expect("sweep").is_empty());
    assert_eq!(idx.sweep_stable(1030).await.expect("sweep"), ["9"]);
    assert_eq!(idx.worklist_depth().await.expect("depth"), 1);
    assert_eq!(idx.next_stable_at().await.expect("next"), None);

    // Names by any group, modality filters ignoring ASCII case (as SQLite's
    // LIKE always did), and the caller's scope.
    let by = |name: &str| StudyFilter {
        patient_name: Some(name.into()),
        ..StudyFilter::default()
    };
    assert_eq!(names(&idx, by("王小东")).await, ["9"]);
    assert_eq!(names(&idx, by("wang xiaodong")).await, ["9"]);
    assert_eq!(names(&idx, by("*小东*")).await, ["9"]);
    assert_eq!(names(&idx, by("WANG*")).await, ["9"]);
    assert!(names(&idx, by("张")).await.is_empty());
    let modality = |m: &str| StudyFilter {
        modality: Some(m.into()),
        ..StudyFilter::default()
    };
    assert_eq!(names(&idx, modality("pr")).await, ["9"]);
    assert!(names(&idx, modality("MR")).await.is_empty());
    let scoped = |cs: &[&str]| StudyFilter {
        clinics: Some(cs.iter().map(|c| c.to_string()).collect()),
        ..StudyFilter::default()
    };
    assert_eq!(names(&idx, scoped(&["c1"])).await, ["9"]);
    assert!(names(&idx, scoped(&["c2"])).await.is_empty());
    assert!(names(&idx, scoped(&[])).await.is_empty());
}

#[test]
fn store_versions_conflicts_and_search_agree_on_both_backends() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    for url in both(&dir, &pg, "store_read") {
        rt().block_on(store_and_read(&url));
    }
}

/// Two nodes (two `Index` values on one database): racing claims of one
/// study have exactly one winner, and so do two clinics racing to file the
/// same new UIDs.
async fn racing_nodes(url: &str) {
    let (a, _wa) = Index::open_url(url).await.expect("open a");
    let (b, _wb) = Index::open_url(url).await.expect("open b");
    a.store(inst("c1", "1.1", "9", "9.1", "CT", 0), file("aa"))
        .await
        .expect("store");
    assert_eq!(a.sweep_stable(1000).await.expect("sweep"), ["9"]);
    let claim = Action::Claim {
        lease: Duration::from_secs(60),
    };
    for round in 0..10 {
        let t = 1_000_000 + round * 100_000;
        let (x, y) = tokio::join!(
            a.worklist_apply("9", &claim, Actor::Expert("li"), t),
            b.worklist_apply("9", &claim, Actor::Expert("wang"), t)
        );
        assert_eq!(
            [x.is_ok(), y.is_ok()].iter().filter(|w| **w).count(),
            1,
            "round {round}: {x:?} {y:?}"
        );
        let loser = if x.is_ok() { y } else { x };
        assert!(matches!(loser, Err(WorklistApplyError::Rule(_))), "{loser:?}");
        // The lease runs out; the study is free for the next round.
        assert_eq!(a.expire_worklist_leases(t + 60_000).await.expect("expire"), ["9"]);
    }
    for n in 0..10 {
        let study = format!("5.{n}");
        let (x, y) = tokio::join!(
            a.store(
                inst("ca", &format!("{study}.1.1"), &study, &format!("{study}.1"), "CT", 0),
                file(&format!("a{n}"))
            ),
            b.store(
                inst("cb", &format!("{study}.1.1"), &study, &format!("{study}.1"), "CT", 0),
                file(&format!("b{n}"))
            )
        );
        assert_eq!(
            [x.is_ok(), y.is_ok()].iter().filter(|w| **w).count(),
            1,
            "round {n}: {x:?} {y:?}"
        );
        assert!(is_conflict(if x.is_ok() { &y } else { &x }));
    }
}

#[test]
fn racing_nodes_have_one_winner_on_both_backends() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    for url in both(&dir, &pg, "racing") {
        rt().block_on(racing_nodes(&url));
    }
}

fn medrelay_migrate(url: &str, data_dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_medrelay"))
        .arg("migrate")
        .env("MEDRELAY_INDEX_URL", url)
        .env("MEDRELAY_DATA_DIR", data_dir)
        .env_remove("MEDRELAY_CONFIG")
        .output()
        .expect("run medrelay migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "migrate failed: {stderr}");
    assert!(!stderr.contains("medrelay-test-pw"), "password in output: {stderr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Migrations run at open and by `medrelay migrate`, any number of times,
/// and leave data alone; the command prints the version it reached.
#[test]
fn migrations_are_idempotent_and_medrelay_migrate_prints_the_version() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let [sqlite, postgres] = both(&dir, &pg, "migrations");
    // On an empty database the command creates the schema.
    assert_eq!(
        medrelay_migrate(&postgres, dir.path()),
        "index postgres schema version 5"
    );
    for (url, want) in [
        (&sqlite, "index sqlite schema version 11"),
        (&postgres, "index postgres schema version 5"),
    ] {
        rt().block_on(async {
            let (idx, w) = Index::open_url(url).await.expect("open");
            idx.store(inst("c1", "1.1", "9", "9.1", "CT", 0), file("aa"))
                .await
                .expect("store");
            drop(idx);
            w.await.expect("writer");
            let (idx, _w) = Index::open_url(url).await.expect("reopen");
            let (at, latest) = index::schema_version(idx.pool()).await.expect("version");
            assert_eq!(at, latest);
            assert!(idx.study("9").await.expect("q").is_some());
        });
        assert_eq!(medrelay_migrate(url, dir.path()), want);
        assert_eq!(medrelay_migrate(url, dir.path()), want);
    }
    // A bad URL is refused at load, without echoing the password.
    let out = Command::new(env!("CARGO_BIN_EXE_medrelay"))
        .arg("migrate")
        .env("MEDRELAY_INDEX_URL", "postgres://medrelay:s3cret@127.0.0.1:1")
        .env("MEDRELAY_DATA_DIR", dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no database name") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

/// Two nodes draining the SR delivery queue at once: every delivery is
/// taken by exactly one of them (a claim on SQLite's single writer; FOR
/// UPDATE SKIP LOCKED on PostgreSQL).
async fn racing_delivery_claims(url: &str) {
    use medrelay::reading::delivery::{self, CLAIM_MS};
    let (a, _wa) = Index::open_url(url).await.expect("open a");
    let (b, _wb) = Index::open_url(url).await.expect("open b");
    let mut all = std::collections::BTreeSet::new();
    for n in 0..40_i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deliveries (study_uid, version, clinic_id, target, path, sop_instance_uid, state,
             attempts, next_attempt_ms, created_ms) VALUES ($1, 1, 'c1', 'PACS@h:1', '', $2, 'pending', 0, $3, $3)
             RETURNING id",
        )
        .bind(format!("1.{n}"))
        .bind(format!("2.{n}"))
        .bind(n)
        .fetch_one(a.pool())
        .await
        .expect("queue");
        all.insert(id);
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let (x, y) = tokio::join!(
            delivery::claim_due(a.pool(), 1_000, CLAIM_MS, 3),
            delivery::claim_due(b.pool(), 1_000, CLAIM_MS, 3)
        );
        let (x, y) = (x.expect("claim a"), y.expect("claim b"));
        if x.is_empty() && y.is_empty() {
            break;
        }
        got_a.extend(x.into_iter().map(|d| d.id));
        got_b.extend(y.into_iter().map(|d| d.id));
    }
    let mut taken: Vec<i64> = got_a.iter().chain(&got_b).copied().collect();
    taken.sort();
    assert_eq!(taken, all.into_iter().collect::<Vec<_>>(), "a {got_a:?} b {got_b:?}");
}

#[test]
fn racing_delivery_claims_take_each_delivery_once_on_both_backends() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    for url in both(&dir, &pg, "claims") {
        rt().block_on(racing_delivery_claims(&url));
    }
}
