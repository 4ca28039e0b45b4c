//! PostgreSQL stopped in the middle of a push, then started again, with the
//! gateway left running: each C-STORE meanwhile answers "out of resources"
//! (0xA7xx) with an error comment, the API answers 503 with its JSON code,
//! nothing acknowledged is lost, and both recover by themselves (the pool
//! reconnects) — no gateway restart. Real peers: a throwaway PostgreSQL
//! cluster (tests/support/pg.rs) and a pynetdicom push
//! (tests/support/push_acked.py).
//!
//! Run: `nice -n 19 cargo test --test index_outage` (after `bash tests/support/setup.sh`).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use support::pg::PgCluster;
use support::{Server, ServerOpts, ct300};

fn acked(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn postgres_stopped_mid_push_answers_out_of_resources_and_recovers_without_a_restart() {
    let mut pg = PgCluster::start();
    let url = pg.fresh_db("outage");
    let s = Server::start(ServerOpts {
        index_url: Some(url),
        ..ServerOpts::default()
    });
    assert_eq!(s.get("/api/studies").0, 200);
    let acked_file = s.dir.join("acked.txt");
    let mut push = s
        .peer("push_acked.py")
        .args(["--aet", "PUSHER", "--acked"])
        .arg(&acked_file)
        .arg(ct300())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("push");
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let failures = failures.clone();
        let stderr = push.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                failures.lock().expect("lock").push(line);
            }
        })
    };
    s.wait_for(120, "50 acknowledged instances", || acked(&acked_file).len() >= 50);
    pg.stop();

    // The API: 503 and its code, not a 500, while the index is away.
    let (code, body) = s.get("/api/studies");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(code, 503, "{body}; server log:\n{}", s.log());
    assert_eq!(body["code"], "index_unavailable", "{body}");

    // The push goes on and hears "out of resources", with a comment.
    s.wait_for(120, "a C-STORE refused while PostgreSQL is down", || {
        failures.lock().expect("lock").iter().any(|l| l.contains("FAILED"))
    });
    let acked_during = acked(&acked_file).len();
    pg.start_again();
    let out = push.wait_with_output().expect("push ends");
    reader.join().expect("stderr reader");
    let failures = failures.lock().expect("lock").clone();
    let failed: Vec<&String> = failures.iter().filter(|l| l.contains("FAILED")).collect();
    assert!(!failed.is_empty(), "{failures:?}");
    for l in &failed {
        assert!(l.contains("status 0xA7"), "not out of resources: {l}");
        assert!(l.contains("index"), "no error comment: {l}");
    }
    assert!(out.status.success(), "push: {failures:?}");
    let acked_uids = acked(&acked_file);
    assert!(
        acked_uids.len() >= acked_during && acked_uids.len() < 300,
        "{}",
        acked_uids.len()
    );

    // Nothing acknowledged was lost: every acknowledged UID is indexed.
    let indexed = s.sqlite("SELECT DISTINCT sop_instance_uid FROM instances");
    let indexed: std::collections::HashSet<&str> = indexed.lines().collect();
    let lost: Vec<&String> = acked_uids.iter().filter(|u| !indexed.contains(u.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but not indexed: {lost:?}");

    // Recovered without a restart: the API answers and the refused
    // instances go in on a second push.
    s.wait_for(60, "the API back", || s.get("/api/studies").0 == 200);
    let again = s
        .peer("push_acked.py")
        .args(["--aet", "PUSHER", "--skip-acked", "--strict", "--acked"])
        .arg(&acked_file)
        .arg(ct300())
        .output()
        .expect("second push");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(acked(&acked_file).len(), 300);
    assert_eq!(
        s.sqlite("SELECT COUNT(DISTINCT sop_instance_uid) FROM instances"),
        "300"
    );
}
