//! Signed reports reach the clinic PACS as DICOM Basic Text SR, through the
//! durable delivery queue, against a real peer (DCMTK `storescp`), with the
//! library used directly (the signing route is not part of this test).
//!
//! First nobody listens: the delivery is retried with a reason recorded.
//! Then `storescp` comes up and the next attempt delivers; DCMTK's `dsrdump`
//! reads what arrived. Then an amended version arrives as a second SR that
//! names the first as its predecessor.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use medrelay::archive::files::Committed;
use medrelay::archive::index::{Index, NewInstance};
use medrelay::config::{ClinicConfig, Config, HospitalConfig};
use medrelay::reading::delivery::{self, Delivery, DeliveryHandle, RetryPolicy, WorkerOptions};
use medrelay::reading::sr;
use medrelay::reading::worklist::{Action as WorkAction, Actor};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const STUDY: &str = "1.2.826.0.1.3680043.8.498.77001";
const FINDINGS_V1: &str = "右肺上叶尖段见一直径约8mm的磨玻璃结节，边界清楚。\nNo pleural effusion. Heart size normal.";
const IMPRESSION_V1: &str = "右肺上叶磨玻璃结节（Lung-RADS 2），建议12个月后低剂量CT复查。";
const FINDINGS_V2: &str =
    "右肺上叶尖段见一直径约8mm的磨玻璃结节，边界清楚。\nAddendum: 纵隔淋巴结无肿大 (no mediastinal lymphadenopathy).";

fn require(prog: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(prog);
    assert!(
        p.exists(),
        "{prog} (DCMTK) missing at {}: run `bash tests/support/setup.sh` (or apt-get install dcmtk)",
        p.display()
    );
    p
}

/// `storescp` on `port`, killed when dropped.
struct StoreScp(Child);

impl StoreScp {
    fn start(port: u16, out: &Path) -> StoreScp {
        let child = support::dcmtk("storescp")
            .args(["-aet", "CLINICPACS", "-od"])
            .arg(out)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start storescp");
        StoreScp(child)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    medrelay::clock::now_ms()
}

async fn row(idx: &Index, id: i64) -> Delivery {
    delivery::for_study(idx.pool(), STUDY)
        .await
        .expect("deliveries")
        .into_iter()
        .find(|d| d.id == id)
        .expect("delivery row")
}

/// Polls until `f` holds for the row; fails with the row after `secs`.
async fn wait_for_row(idx: &Index, id: i64, secs: u64, what: &str, f: impl Fn(&Delivery) -> bool) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let d = row(idx, id).await;
        if f(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign(idx: &Index, version: i64, findings: &str, impression: &str, target: &str) -> (i64, String) {
    let now = now_ms();
    let sop = sr::new_uid();
    // What the signing route does, in one transaction.
    let mut tx = idx.pool().begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO reports (study_uid, version, status, findings, impression, author, created_ms, updated_ms, signed_ms)
         VALUES (?, ?, 'signed', ?, ?, 'li', ?, ?, ?)",
    )
    .bind(STUDY)
    .bind(version)
    .bind(findings)
    .bind(impression)
    .bind(now - 60_000)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await
    .expect("report");
    let id: i64 = sqlx::query(
        "INSERT INTO deliveries (study_uid, version, clinic_id, target, path, sop_instance_uid, state, attempts,
         next_attempt_ms, created_ms) VALUES (?, ?, 'c1', ?, '', ?, 'pending', 0, ?, ?) RETURNING id",
    )
    .bind(STUDY)
    .bind(version)
    .bind(target)
    .bind(&sop)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .expect("delivery")
    .get(0);
    tx.commit().await.expect("commit");
    (id, sop)
}

fn received(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("storescp dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn dsrdump(path: &Path) -> String {
    let o = support::run({
        let mut c = std::process::Command::new(require("dsrdump"));
        c.arg("+Pl").arg(path);
        c
    });
    let t = support::text(&o);
    assert!(o.status.success(), "dsrdump failed on {}:\n{t}", path.display());
    t
}

fn header(dump: &str, name: &str) -> String {
    dump.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

fn string(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .to_str()
        .expect("text")
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn first_item(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &InMemDicomObject {
    &obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .items()
        .expect("sequence")[0]
}

/// The SR that arrived with SOP Instance UID `sop`.
fn arrived(dir: &Path, sop: &str) -> (PathBuf, dicom_object::DefaultDicomObject) {
    for p in received(dir) {
        if let Ok(obj) = dicom_object::open_file(&p)
            && string(&obj, tags::SOP_INSTANCE_UID) == sop
        {
            return (p, obj);
        }
    }
    panic!("no SR with SOP Instance UID {sop} in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_reports_reach_the_clinic_pacs_once_it_is_up() {
    require("storescp");
    require("dsrdump");
    let tmp = tempfile::tempdir().expect("tmp");
    let (idx, _writer) = Index::open(&tmp.path().join("index.db")).await.expect("index");

    // A CT study from clinic c1 and the expert who reads it.
    idx.store(
        NewInstance {
            sop_instance_uid: format!("{STUDY}.1.1"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            study_uid: STUDY.into(),
            series_uid: format!("{STUDY}.1"),
            patient_id: "TWN-000123".into(),
            patient_name: "ZHUOMA^DAWA=卓玛^达瓦".into(),
            birth_date: "19620704".into(),
            sex: "F".into(),
            study_date: "20260301".into(),
            study_time: "091500".into(),
            accession_number: "A2026030101".into(),
            study_description: "胸部CT平扫 CHEST".into(),
            referring_physician: "CIREN^DUOJI".into(),
            modality: "CT".into(),
            calling_ae: "CT01".into(),
            clinic_id: "c1".into(),
            stable_after_ms: 1_000,
            received_ms: now_ms(),
            ..Default::default()
        },
        Committed {
            rel_path: "instances/aa.dcm".into(),
            sha256: "aa".into(),
            size: 1,
            created: true,
            staged: None,
        },
    )
    .await
    .expect("study");
    sqlx::query(
        "INSERT INTO users (username, display_name, role, hospital_id, password_hash, created_ms)
         VALUES ('li', '李明 LI^MING', 'expert', 'h1', 'x', 0)",
    )
    .execute(idx.pool())
    .await
    .expect("user");

    // The study completes, the expert claims it and reports.
    assert_eq!(
        idx.sweep_stable(now_ms() + 10_000).await.expect("sweep"),
        vec![STUDY.to_string()]
    );
    let claim = WorkAction::Claim {
        lease: Duration::from_secs(900),
    };
    for action in [claim, WorkAction::Report] {
        idx.worklist_apply(STUDY, &action, Actor::Expert("li"), now_ms())
            .await
            .expect("worklist");
    }

    let port = support::free_port();
    let target = format!("CLINICPACS@127.0.0.1:{port}");
    let mut cfg = Config::default();
    cfg.clinics.push(ClinicConfig {
        id: "c1".into(),
        name: "Township clinic".into(),
        ae_titles: vec!["CT01".into()],
        stable_after_secs: None,
        pacs: Some(target.clone()),
        pacs_charset: Default::default(),
    });
    cfg.hospitals.push(HospitalConfig {
        id: "h1".into(),
        name: "市人民医院".into(),
        serves: vec!["c1".into()],
        ae_titles: Vec::new(),
    });
    let cfg = Arc::new(cfg);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let spool = tmp.path().join("sr-spool");
    let handle: DeliveryHandle = delivery::start_with(
        idx.clone(),
        cfg.clone(),
        spool.clone(),
        shutdown.clone(),
        &tracker,
        WorkerOptions {
            policy: RetryPolicy {
                first_delay_ms: 200,
                max_delay_ms: 1_000,
            },
            poll_max: Duration::from_millis(500),
            ..WorkerOptions::default()
        },
    );

    // 1. The clinic PACS is down: the delivery fails, with a reason, and is
    //    scheduled again; the SR is already spooled.
    let (id1, sop1) = sign(&idx, 1, FINDINGS_V1, IMPRESSION_V1, &target).await;
    handle.wake();
    let d = wait_for_row(&idx, id1, 60, "a failed attempt", |d| {
        d.state == "failing" && d.attempts >= 1
    })
    .await;
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e.chars().count() <= 500),
        "{d:?}"
    );
    assert!(d.sent_ms.is_none());
    assert!(
        Path::new(&d.path).starts_with(&spool) && Path::new(&d.path).exists(),
        "{d:?}"
    );
    let c = delivery::counts(idx.pool()).await.expect("counts");
    assert_eq!((c.failing, c.sent), (1, 0), "{c:?}");

    // 2. The PACS comes up: the next attempt delivers the same SOP instance.
    let out = tmp.path().join("pacs");
    std::fs::create_dir_all(&out).expect("pacs dir");
    let _pacs = StoreScp::start(port, &out);
    handle.wake();
    let d = wait_for_row(&idx, id1, 60, "delivery of version 1", |d| d.state == "sent").await;
    assert!(d.sent_ms.is_some() && d.attempts >= 1, "{d:?}");
    let files = received(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    let (path1, obj1) = arrived(&out, &sop1);
    assert_eq!(string(&obj1, tags::SOP_CLASS_UID), sr::BASIC_TEXT_SR);
    assert_eq!(string(&obj1, tags::STUDY_INSTANCE_UID), STUDY);
    assert_eq!(string(&obj1, tags::PATIENT_NAME), "ZHUOMA^DAWA=卓玛^达瓦");
    assert_eq!(string(&obj1, tags::INSTANCE_NUMBER), "1");
    let dump = dsrdump(&path1);
    for line in FINDINGS_V1.lines().chain([IMPRESSION_V1]) {
        assert!(dump.contains(line), "{line:?} not in dsrdump output:\n{dump}");
    }
    assert_eq!(header(&dump, "Verification Flag"), "VERIFIED", "{dump}");
    assert!(header(&dump, "Verifying Observers").contains("李明"), "{dump}");
    assert_eq!(header(&dump, "Predecessor Docs"), "", "{dump}");
    let recorded: Option<String> = sqlx::query("SELECT sr_sop_uid FROM reports WHERE study_uid = ? AND version = 1")
        .bind(STUDY)
        .fetch_one(idx.pool())
        .await
        .expect("report")
        .get(0);
    assert_eq!(recorded.as_deref(), Some(sop1.as_str()));
    let study = idx.study(STUDY).await.expect("study").expect("study row");
    assert_eq!(study.worklist_state.as_deref(), Some("delivered"));

    // 3. An amended version: a second SR, in the same series, naming the
    //    first as its predecessor.
    let (id2, sop2) = sign(&idx, 2, FINDINGS_V2, IMPRESSION_V1, &target).await;
    handle.wake();
    wait_for_row(&idx, id2, 60, "delivery of version 2", |d| d.state == "sent").await;
    assert_eq!(received(&out).len(), 2);
    let (path2, obj2) = arrived(&out, &sop2);
    assert_eq!(string(&obj2, tags::INSTANCE_NUMBER), "2");
    assert_eq!(
        string(&obj2, tags::SERIES_INSTANCE_UID),
        string(&obj1, tags::SERIES_INSTANCE_UID)
    );
    let pred = first_item(&obj2, tags::PREDECESSOR_DOCUMENTS_SEQUENCE);
    assert_eq!(string(pred, tags::STUDY_INSTANCE_UID), STUDY);
    let series = first_item(pred, tags::REFERENCED_SERIES_SEQUENCE);
    assert_eq!(
        string(series, tags::SERIES_INSTANCE_UID),
        string(&obj1, tags::SERIES_INSTANCE_UID)
    );
    let sop = first_item(series, tags::REFERENCED_SOP_SEQUENCE);
    assert_eq!(string(sop, tags::REFERENCED_SOP_CLASS_UID), sr::BASIC_TEXT_SR);
    assert_eq!(string(sop, tags::REFERENCED_SOP_INSTANCE_UID), sop1);
    let dump = dsrdump(&path2);
    for line in FINDINGS_V2.lines() {
        assert!(dump.contains(line), "{line:?} not in dsrdump output:\n{dump}");
    }
    assert_eq!(header(&dump, "Predecessor Docs"), "1", "{dump}");
    let c = delivery::counts(idx.pool()).await.expect("counts");
    assert_eq!((c.pending, c.failing, c.sent), (0, 0, 2), "{c:?}");

    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(30), tracker.wait())
        .await
        .expect("the worker stops on shutdown");
}
