//! Tests of the worklist repository against a real index.
use std::time::Duration;

use super::*;
use crate::archive::files::Committed;
use crate::archive::index::{Index, NewInstance};

/// An index with one study, complete (so on the worklist) at t = 1 000.
async fn one_study() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("tmp");
    let (idx, _w) = Index::open(&dir.path().join("index.db")).await.expect("open");
    let inst = NewInstance {
        sop_instance_uid: "1.1".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_uid: "9".into(),
        series_uid: "9.1".into(),
        modality: "CT".into(),
        clinic_id: "c1".into(),
        ..Default::default()
    };
    let file = Committed {
        rel_path: "instances/aa.dcm".into(),
        sha256: "aa".into(),
        size: 100,
        created: true,
        staged: None,
    };
    idx.store(inst, file).await.expect("store");
    assert_eq!(idx.sweep_stable(1_000).await.expect("sweep"), ["9"]);
    (dir, idx)
}

async fn tx<T>(
    idx: &Index,
    f: impl AsyncFnOnce(&mut Conn) -> Result<T, WorklistApplyError>,
) -> Result<T, WorklistApplyError> {
    crate::store::immediate(idx.pool(), f).await
}

/// One action on study 9 in a transaction of its own.
async fn step(
    idx: &Index,
    action: &Action,
    actor: Actor<'_>,
    t: i64,
    note: Option<&str>,
) -> Result<Transition, WorklistApplyError> {
    tx(idx, async |c| apply(c, "9", action, actor, t, note).await).await
}

async fn claim_by_li(idx: &Index) {
    let claim = Action::Claim {
        lease: Duration::from_secs(600),
    };
    idx.worklist_apply("9", &claim, Actor::Expert("li"), 2_000)
        .await
        .expect("claim");
}

fn log(h: &[HistoryRow]) -> Vec<(&str, &str, &str, Option<&str>)> {
    h.iter()
        .map(|r| (r.from.as_str(), r.to.as_str(), r.actor.as_str(), r.detail.as_deref()))
        .collect()
}

#[tokio::test]
async fn report_amend_and_deliver_write_the_row_and_one_history_row_each() {
    let (_d, idx) = one_study().await;
    claim_by_li(&idx).await;
    tx(&idx, async |c| {
        apply(
            c,
            "9",
            &Action::Report,
            Actor::Expert("li"),
            3_000,
            Some("report v1 signed"),
        )
        .await?;
        apply(
            c,
            "9",
            &Action::Deliver,
            Actor::System,
            3_000,
            Some("shown on the clinic page"),
        )
        .await
    })
    .await
    .expect("sign");
    let e = entry(idx.pool(), "9").await.expect("e").expect("entry");
    assert_eq!(
        (e.state.as_str(), e.claimed_by, e.updated_ms),
        ("delivered", None, 3_000)
    );
    // Only the author amends; a refusal writes nothing.
    let amend = Action::Amend { signed_by: "li".into() };
    let refused = step(&idx, &amend, Actor::Expert("wang"), 4_000, None).await;
    assert!(
        matches!(refused, Err(WorklistApplyError::Rule(WorklistError::NotAuthor))),
        "{refused:?}"
    );
    step(
        &idx,
        &amend,
        Actor::Expert("li"),
        5_000,
        Some("report v2 signed (amendment)"),
    )
    .await
    .expect("amend");
    let e = entry(idx.pool(), "9").await.expect("e").expect("entry");
    assert_eq!((e.state.as_str(), e.claimed_by.as_deref()), ("reported", Some("li")));
    assert_eq!(
        log(&history(idx.pool(), "9").await.expect("h")),
        [
            ("new", "claimed", "li", None),
            ("claimed", "reported", "li", Some("report v1 signed")),
            ("reported", "delivered", "system", Some("shown on the clinic page")),
            ("delivered", "reported", "li", Some("report v2 signed (amendment)")),
        ]
    );
    // A transaction that fails after the transition leaves neither.
    let r: Result<(), WorklistApplyError> = tx(&idx, async |c| {
        apply(c, "9", &Action::Deliver, Actor::System, 6_000, None).await?;
        Err(WorklistApplyError::NoSuchStudy)
    })
    .await;
    assert!(r.is_err());
    assert_eq!(
        entry(idx.pool(), "9").await.expect("e").expect("entry").state,
        "reported"
    );
    assert_eq!(history(idx.pool(), "9").await.expect("h").len(), 4);
}

#[tokio::test]
async fn a_returned_study_is_reopened_when_it_completes_again_others_are_only_counted() {
    let (_d, idx) = one_study().await;
    let count = async || {
        tx(&idx, async |c| {
            Ok(enqueue_completed(c, "9", 7_000, Initial::default()).await?)
        })
        .await
        .expect("enqueue");
        sqlx::query("SELECT completions, enqueued_ms FROM worklist WHERE study_uid = '9'")
            .fetch_one(idx.pool())
            .await
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .expect("row")
    };
    // Waiting: counted, not moved, no history.
    assert_eq!(count().await, (2, 1_000));
    assert!(history(idx.pool(), "9").await.expect("h").is_empty());
    claim_by_li(&idx).await;
    let back = Action::ReturnForMoreImages {
        reason: "need lateral view".into(),
    };
    idx.worklist_apply("9", &back, Actor::Expert("li"), 3_000)
        .await
        .expect("return");
    assert_eq!(count().await, (3, 7_000));
    let e = entry(idx.pool(), "9").await.expect("e").expect("entry");
    assert_eq!((e.state.as_str(), e.claimed_by, e.detail), ("new", None, None));
    assert_eq!(
        log(&history(idx.pool(), "9").await.expect("h"))[1..],
        [
            ("claimed", "returned", "li", Some("need lateral view")),
            ("returned", "new", "system", Some("new images arrived")),
        ]
    );
}
