//! Reading workflow over the real HTTPS API (curl as the client), with
//! studies pushed by DCMTK storescu and reports delivered to a DCMTK
//! storescp: accounts and sessions, who sees what, claims, reports,
//! consultation requests, crash safety of signing.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PW: &str = "correct-horse-battery";

fn config(pacs_port: Option<u16>) -> String {
    let pacs = pacs_port
        .map(|p| format!("pacs = \"CLINICPACS@127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]
{pacs}
[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_MR"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01", "t02"]

[reading]
claim_lease_secs = 600
"#
    )
}

struct World {
    s: Server,
    doc1: Auth,
    doc2: Auth,
    exp1: Auth,
    exp2: Auth,
    /// Study of clinic t01 (5 CT slices) and of clinic t02 (one MR).
    study1: String,
    study2: String,
}

fn world(pacs_port: Option<u16>) -> World {
    let s = Server::start(ServerOpts {
        config_toml: config(pacs_port),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01", "--name", "Dr. Township One"]);
    s.add_user("doc2", "clinic", PW, &["--clinic", "t02"]);
    s.add_user(
        "exp1",
        "expert",
        PW,
        &["--hospital", "city", "--name", "Prof. Expert One"],
    );
    s.add_user("exp2", "expert", PW, &["--hospital", "city"]);
    let ct: Vec<PathBuf> = (1..=5).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(&ct);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let o = run({
        let mut c = s.storescu("T02_MR");
        c.arg(corpus_pydicom().join("MR_small.dcm"));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(30, "both studies on the worklist", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "2"
    });
    let study1 = s.sqlite("SELECT study_uid FROM studies WHERE clinic_id = 't01'");
    let study2 = s.sqlite("SELECT study_uid FROM studies WHERE clinic_id = 't02'");
    let login = |u: &str| s.login(u, PW).unwrap_or_else(|e| panic!("login {u}: {e:?}"));
    World {
        doc1: login("doc1"),
        doc2: login("doc2"),
        exp1: login("exp1"),
        exp2: login("exp2"),
        study1,
        study2,
        s,
    }
}

fn ok(r: (u16, Value), what: &str) -> Value {
    assert_eq!(r.0, 200, "{what}: {}", r.1);
    r.1
}

#[test]
fn sessions_roles_and_clinic_scope_are_enforced() {
    let w = world(None);
    let s = &w.s;
    // Anonymous callers get nothing.
    for path in [
        "/api/studies",
        "/api/worklist",
        "/api/me",
        &format!("/api/studies/{}", w.study1),
    ] {
        assert_eq!(s.req(None, "GET", path, None).0, 401, "{path}");
    }
    // A clinic doctor sees their own clinic's study, and the other clinic's
    // study does not exist for them (list, detail, series, images, file).
    let list = ok(s.req(Some(&w.doc1), "GET", "/api/studies", None), "doc1 list");
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["studies"][0]["study_uid"], w.study1.as_str());
    let other_sop = s.sqlite(&format!(
        "SELECT sop_instance_uid FROM instances WHERE study_uid = '{}'",
        w.study2
    ));
    let other_series = s.sqlite(&format!(
        "SELECT series_uid FROM series WHERE study_uid = '{}'",
        w.study2
    ));
    for path in [
        format!("/api/studies/{}", w.study2),
        format!("/api/studies/{}/series", w.study2),
        format!("/api/studies/{}/reports", w.study2),
        format!("/api/studies/{}/archive.zip", w.study2),
        format!("/api/series/{other_series}/instances"),
        format!("/api/instances/{other_sop}"),
        format!("/api/instances/{other_sop}/thumbnail"),
        format!("/api/instances/{other_sop}/preview"),
        format!("/api/instances/{other_sop}/rendered"),
        format!("/api/instances/{other_sop}/file"),
        format!("/api/instances/{other_sop}/tags"),
    ] {
        let (code, body) = s.req(Some(&w.doc1), "GET", &path, None);
        assert_eq!(code, 404, "doc1 GET {path}: {body}");
    }
    // ... while its own clinic's doctor gets them.
    assert_eq!(
        s.req(Some(&w.doc2), "GET", &format!("/api/instances/{other_sop}/tags"), None)
            .0,
        200
    );
    let own = ok(
        s.req(Some(&w.doc1), "GET", &format!("/api/studies/{}", w.study1), None),
        "own study",
    );
    assert_eq!(own["worklist"]["state"], "new");
    // The series' middle slice stands for it in thumbnails (5 slices: the third).
    let third = s.sqlite(&format!(
        "SELECT sop_instance_uid FROM instances WHERE study_uid = '{}' ORDER BY instance_number LIMIT 1 OFFSET 2",
        w.study1
    ));
    assert_eq!(own["series"][0]["thumbnail_uid"], third.as_str(), "{own}");
    assert!(own["study"]["thumbnail_uid"].is_string(), "{own}");
    // Clinic doctors have no worklist and cannot claim; they may raise priority.
    assert_eq!(s.req(Some(&w.doc1), "GET", "/api/worklist", None).0, 403);
    let (code, body) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{}/claim", w.study1),
        None,
    );
    assert_eq!(code, 403, "{body}");
    let p = ok(
        s.req(
            Some(&w.doc1),
            "POST",
            &format!("/api/worklist/{}/priority", w.study1),
            Some(json!({ "priority": "stat", "clinical_question": "suspected PE" })),
        ),
        "raise priority",
    );
    assert_eq!(p["worklist"]["priority"], "stat");
    // ... but not for the other clinic's study, and not lower it again.
    let (code, _) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{}/priority", w.study2),
        Some(json!({ "priority": "stat" })),
    );
    assert_eq!(code, 404);
    let (code, _) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{}/priority", w.study1),
        Some(json!({ "priority": "routine" })),
    );
    assert_eq!(code, 403);
    // Experts see the worklist of the clinics their hospital serves, STAT first.
    let wl = ok(s.req(Some(&w.exp1), "GET", "/api/worklist", None), "worklist");
    assert_eq!(wl["total"], 2, "{wl}");
    assert_eq!(wl["items"][0]["study_uid"], w.study1.as_str());
    assert_eq!(wl["items"][0]["priority"], "stat");
    assert_eq!(wl["items"][0]["clinical_question"], "suspected PE");
    assert_eq!(wl["items"][0]["clinic_name"], "Township 01");
    let f = ok(s.req(Some(&w.exp1), "GET", "/api/worklist?modality=MR", None), "filter");
    assert_eq!(f["total"], 1);
    assert_eq!(f["items"][0]["study_uid"], w.study2.as_str());
    // Admin routes are for admins.
    assert_eq!(s.req(Some(&w.exp1), "GET", "/api/admin/audit", None).0, 403);
    assert_eq!(s.req(Some(&w.doc1), "GET", "/api/admin/users", None).0, 403);

    // CSRF: a state-changing request without the session's token is refused.
    let no_csrf = Auth {
        jar: w.exp1.jar.clone(),
        csrf: "0".repeat(32),
    };
    let (code, body) = s.req(
        Some(&no_csrf),
        "POST",
        &format!("/api/worklist/{}/claim", w.study2),
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("CSRF"), "{body}");

    // Wrong passwords are rate-limited per user (and the right one is
    // refused too while locked out).
    for i in 0..5 {
        let (code, _) = s.login("exp2", "wrong password!").expect_err("wrong password");
        assert_eq!(code, 401, "attempt {i}");
    }
    let (code, body) = s.login("exp2", "wrong password!").expect_err("wrong password");
    assert_eq!(code, 401, "sixth failure still answered, then locked: {body}");
    let (code, body) = s.login("exp2", PW).expect_err("locked out");
    assert_eq!(code, 429, "{body}");
    assert!(body["retry_after_secs"].as_u64().unwrap_or(0) >= 1, "{body}");
    // Unknown users get the same answer as wrong passwords.
    let (code, body) = s.login("nobody", "whatever-password").expect_err("unknown");
    assert_eq!(
        (code, body["error"].as_str()),
        (401, Some("wrong username or password"))
    );

    // An expired session is refused; logging in again works.
    s.sqlite_exec("UPDATE sessions SET last_seen_ms = last_seen_ms - 7200000 WHERE username = 'doc2'");
    let (code, body) = s.req(Some(&w.doc2), "GET", "/api/me", None);
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("expired"), "{body}");
    let doc2 = s.login("doc2", PW).expect("login again");
    assert_eq!(s.req(Some(&doc2), "GET", "/api/me", None).0, 200);
    // Logout ends the session.
    assert_eq!(s.req(Some(&doc2), "POST", "/api/logout", None).0, 204);
    assert_eq!(s.req(Some(&doc2), "GET", "/api/me", None).0, 401);
    // Disabled accounts cannot log in and lose their sessions.
    assert_eq!(s.post_json("/api/admin/users/doc1/disable", &json!({})).0, 204);
    assert_eq!(s.req(Some(&w.doc1), "GET", "/api/me", None).0, 401);
    assert_eq!(s.login("doc1", PW).expect_err("disabled").0, 401);
    // The database has no passwords or session tokens in the clear.
    let hashes = s.sqlite("SELECT password_hash FROM users");
    assert!(hashes.lines().all(|h| h.starts_with("$argon2id$")), "{hashes}");
    assert!(!s.sqlite("SELECT token_hash FROM sessions").is_empty());

    // The audit trail has who viewed what, from where, exportable as CSV.
    let (code, csv) = s.get("/api/admin/audit?format=csv");
    assert_eq!(code, 200);
    let csv = String::from_utf8_lossy(&csv);
    assert!(
        csv.lines()
            .any(|l| l.contains(",doc1,clinic,view,") && l.contains(&w.study1) && l.contains("127.0.0.1")),
        "{csv}"
    );
    assert!(csv.contains(",exp2,,login_failed,"), "{csv}");
    assert!(csv.contains(",doc1,clinic,priority,"), "{csv}");
}

#[test]
fn racing_claims_have_one_winner_and_an_abandoned_claim_expires() {
    let w = world(None);
    let s = Arc::new(w.s);
    let uid = w.study1.clone();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [w.exp1.clone(), w.exp2.clone()]
        .into_iter()
        .map(|a| {
            let (s, uid, barrier) = (s.clone(), uid.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                s.req(Some(&a), "POST", &format!("/api/worklist/{uid}/claim"), None)
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let codes: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert!(codes.contains(&200) && codes.contains(&409), "{results:?}");
    let winner = results.iter().find(|r| r.0 == 200).expect("winner").1["worklist"]["claimed_by"]
        .as_str()
        .expect("claimed_by")
        .to_string();
    let loser = results.iter().find(|r| r.0 == 409).expect("loser");
    assert!(loser.1["error"].as_str().unwrap_or("").contains(&winner), "{loser:?}");
    let (holder, other) = if winner == "exp1" {
        (&w.exp1, &w.exp2)
    } else {
        (&w.exp2, &w.exp1)
    };
    // The holder renews; the other cannot renew, release or report.
    ok(
        s.req(Some(holder), "POST", &format!("/api/worklist/{uid}/renew"), None),
        "renew",
    );
    for path in ["renew", "release"] {
        assert_eq!(
            s.req(Some(other), "POST", &format!("/api/worklist/{uid}/{path}"), None)
                .0,
            409,
            "{path}"
        );
    }
    let (code, body) = s.req(
        Some(other),
        "PUT",
        &format!("/api/studies/{uid}/report/draft"),
        Some(json!({ "findings": "x", "impression": "y" })),
    );
    assert_eq!(code, 409, "{body}");

    // The holder's laptop closes: the lease runs out (aged in the database
    // rather than waiting ten minutes) and the study returns to `new`.
    s.sqlite_exec(&format!(
        "UPDATE worklist SET lease_until_ms = lease_until_ms - 700000 WHERE study_uid = '{uid}'"
    ));
    s.wait_for(30, "lease expiry", || {
        s.sqlite(&format!("SELECT state FROM worklist WHERE study_uid = '{uid}'")) == "new"
    });
    let h = ok(
        s.req(Some(other), "GET", &format!("/api/worklist/{uid}/history"), None),
        "history",
    );
    let t = h["transitions"].as_array().expect("transitions");
    assert!(
        t.iter()
            .any(|x| x["from"] == "claimed" && x["to"] == "new" && x["actor"] == "system"),
        "{h}"
    );
    // Now the other expert can claim it, and return it for more images.
    ok(
        s.req(Some(other), "POST", &format!("/api/worklist/{uid}/claim"), None),
        "second claim",
    );
    let (code, _) = s.req(
        Some(other),
        "POST",
        &format!("/api/worklist/{uid}/return"),
        Some(json!({ "reason": "" })),
    );
    assert_eq!(code, 400, "a return needs a reason");
    let r = ok(
        s.req(
            Some(other),
            "POST",
            &format!("/api/worklist/{uid}/return"),
            Some(json!({ "reason": "please send the lung window series" })),
        ),
        "return",
    );
    assert_eq!(r["worklist"]["state"], "returned");
    // The clinic is told, sends one more slice, and the study is read again.
    let n = ok(s.req(Some(&w.doc1), "GET", "/api/notifications", None), "notifications");
    assert_eq!(n["items"][0]["kind"], "returned", "{n}");
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.arg(ct300().join("CT000006.dcm"));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(30, "reopened", || {
        s.sqlite(&format!("SELECT state FROM worklist WHERE study_uid = '{uid}'")) == "new"
    });
    let h = ok(
        s.req(Some(other), "GET", &format!("/api/worklist/{uid}/history"), None),
        "history",
    );
    assert!(
        h["transitions"]
            .as_array()
            .expect("t")
            .iter()
            .any(|x| x["from"] == "returned" && x["to"] == "new"),
        "{h}"
    );
}

fn dsrdump(p: &PathBuf) -> String {
    let o = Command::new("dsrdump").arg("+Pl").arg(p).output().expect("dsrdump");
    assert!(o.status.success(), "dsrdump {}: {}", p.display(), text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn signed_report_reaches_the_clinic_page_and_its_pacs_as_sr() {
    let pacs = Pacs::start();
    let w = world(Some(pacs.port));
    let s = &w.s;
    let uid = &w.study1;
    ok(
        s.req(Some(&w.exp1), "POST", &format!("/api/worklist/{uid}/claim"), None),
        "claim",
    );
    let t = ok(
        s.req(Some(&w.exp1), "GET", "/api/report-templates?modality=CT", None),
        "templates",
    );
    assert!(t["templates"].as_array().is_some_and(|a| a.len() >= 2), "{t}");
    // Autosaved drafts are the expert's; the clinic sees nothing yet.
    let d = ok(
        s.req(
            Some(&w.exp1),
            "PUT",
            &format!("/api/studies/{uid}/report/draft"),
            Some(json!({ "findings": "draft text", "impression": "" })),
        ),
        "draft",
    );
    assert_eq!(d["report"]["status"], "draft");
    let r = ok(
        s.req(Some(&w.doc1), "GET", &format!("/api/studies/{uid}/reports"), None),
        "clinic reports",
    );
    assert_eq!(r["versions"].as_array().map(Vec::len), Some(0), "{r}");
    let findings = "右肺下叶见一约8mm结节 (8 mm nodule, right lower lobe).";
    let signed = ok(
        s.req(
            Some(&w.exp1),
            "POST",
            &format!("/api/studies/{uid}/report/sign"),
            Some(json!({ "findings": findings, "impression": "Follow-up CT in 3 months." })),
        ),
        "sign",
    );
    assert_eq!(signed["report"]["status"], "signed");
    assert_eq!(signed["report"]["version"], 1);
    assert_eq!(signed["delivery_queued"], true);
    // The clinic sees the signed report and a notification.
    let r = ok(
        s.req(Some(&w.doc1), "GET", &format!("/api/studies/{uid}/reports"), None),
        "clinic reports",
    );
    assert_eq!(r["versions"][0]["findings"], findings);
    assert_eq!(r["versions"][0]["author_name"], "Prof. Expert One");
    let n = ok(s.req(Some(&w.doc1), "GET", "/api/notifications", None), "notifications");
    assert!(n["unread"].as_u64().unwrap_or(0) >= 1, "{n}");
    assert_eq!(n["items"][0]["kind"], "report");
    assert_eq!(n["items"][0]["study_uid"], uid.as_str());
    // The other clinic does not.
    assert_eq!(
        s.req(Some(&w.doc2), "GET", &format!("/api/studies/{uid}/reports"), None)
            .0,
        404
    );
    let n2 = ok(s.req(Some(&w.doc2), "GET", "/api/notifications", None), "notifications");
    assert_eq!(n2["unread"], 0, "{n2}");
    // Experts are told of consultation requests only, not of reports.
    let ne = ok(s.req(Some(&w.exp1), "GET", "/api/notifications", None), "notifications");
    assert!(
        ne["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|x| x["kind"] == "request")),
        "{ne}"
    );
    // Only the clinic's own users may mark its notice read.
    let note_id = n["items"][0]["id"].as_i64().expect("notification id");
    let read = format!("/api/notifications/{note_id}/read");
    assert_eq!(
        s.req(Some(&w.doc2), "POST", &read, None).0,
        404,
        "another clinic marks it read"
    );
    assert_eq!(
        s.req(Some(&w.doc1), "POST", &read, None).0,
        204,
        "the clinic marks it read"
    );
    let n = ok(s.req(Some(&w.doc1), "GET", "/api/notifications", None), "notifications");
    assert_eq!(n["items"][0]["read"], true, "{n}");
    // The SR arrives at the PACS, is valid SR, carries the text, and the
    // study becomes delivered.
    s.wait_for(60, "SR at the PACS", || !pacs.files().is_empty());
    s.wait_for(30, "delivered", || {
        s.sqlite(&format!("SELECT state FROM worklist WHERE study_uid = '{uid}'")) == "delivered"
    });
    let files = pacs.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let dump = dsrdump(&files[0]);
    assert!(dump.contains("8mm") && dump.contains("Follow-up CT"), "{dump}");
    assert!(
        dump.contains(uid.as_str())
            || text(&Command::new("dcmdump").arg(&files[0]).output().expect("dcmdump")).contains(uid.as_str())
    );
    let dl = ok(
        s.req(Some(&w.doc1), "GET", &format!("/api/studies/{uid}/reports"), None),
        "delivery",
    );
    assert_eq!(dl["delivery"][0]["state"], "sent", "{dl}");

    // An amendment is a new version; the old one stays, marked amended, and
    // a second SR goes out.
    let a = ok(
        s.req(
            Some(&w.exp1),
            "POST",
            &format!("/api/studies/{uid}/report/sign"),
            Some(json!({ "findings": findings, "impression": "Follow-up CT in 6 weeks (amended)." })),
        ),
        "amend",
    );
    assert_eq!(a["amended"], true);
    assert_eq!(a["report"]["version"], 2);
    // Only the author amends.
    let (code, _) = s.req(
        Some(&w.exp2),
        "POST",
        &format!("/api/studies/{uid}/report/sign"),
        Some(json!({ "findings": "x", "impression": "y" })),
    );
    assert_eq!(code, 409);
    let r = ok(
        s.req(Some(&w.doc1), "GET", &format!("/api/studies/{uid}/reports"), None),
        "versions",
    );
    let st: Vec<_> = r["versions"]
        .as_array()
        .expect("v")
        .iter()
        .map(|v| (v["version"].clone(), v["status"].clone()))
        .collect();
    assert_eq!(st, vec![(json!(2), json!("signed")), (json!(1), json!("amended"))]);
    s.wait_for(60, "second SR", || pacs.files().len() == 2);
    let dump2 = dsrdump(&pacs.files()[1]).to_string() + &dsrdump(&pacs.files()[0]);
    assert!(dump2.contains("6 weeks"), "{dump2}");
    // Turnaround for the admin.
    let ta = s.get_json("/api/admin/turnaround?days=7");
    assert!(
        ta["rows"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["clinic_id"] == "t01" && x["reported"] == 1)),
        "{ta}"
    );
}

/// A priority change and its history row are one transaction: when the
/// history row cannot be written (a trigger stands in for a failing write),
/// the priority does not change either. On the old code they were two
/// statements without a transaction and the priority changed unrecorded.
/// Once read or cancelled, a study has no reading priority, for anyone.
#[test]
fn a_priority_change_commits_with_its_history_row_and_only_while_waiting() {
    let w = world(None);
    let s = &w.s;
    let uid = &w.study1;
    let priority = || {
        s.sqlite(&format!(
            "SELECT priority, clinical_question FROM worklist WHERE study_uid = '{uid}'"
        ))
    };
    let history = || {
        ok(
            s.req(Some(&w.exp1), "GET", &format!("/api/worklist/{uid}/history"), None),
            "history",
        )["transitions"]
            .as_array()
            .expect("transitions")
            .clone()
    };
    assert_eq!(priority(), "routine|None");
    if s.index_on_pg() {
        s.sqlite_exec(
            "CREATE FUNCTION no_history() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'history write failed'; END $$",
        );
        s.sqlite_exec(
            "CREATE TRIGGER no_history BEFORE INSERT ON worklist_transitions
             FOR EACH ROW EXECUTE FUNCTION no_history()",
        );
    } else {
        s.sqlite_exec(
            "CREATE TRIGGER no_history BEFORE INSERT ON worklist_transitions
             BEGIN SELECT RAISE(ABORT, 'history write failed'); END",
        );
    }
    let (code, body) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{uid}/priority"),
        Some(json!({ "priority": "stat", "clinical_question": "suspected PE" })),
    );
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        priority(),
        "routine|None",
        "the priority changed without its history row"
    );
    s.sqlite_exec(if s.index_on_pg() {
        "DROP TRIGGER no_history ON worklist_transitions"
    } else {
        "DROP TRIGGER no_history"
    });
    assert!(history().is_empty());

    let p = ok(
        s.req(
            Some(&w.doc1),
            "POST",
            &format!("/api/worklist/{uid}/priority"),
            Some(json!({ "priority": "stat", "clinical_question": "suspected PE" })),
        ),
        "raise priority",
    );
    assert_eq!(
        (&p["worklist"]["priority"], &p["worklist"]["state"]),
        (&json!("stat"), &json!("new"))
    );
    assert_eq!(priority(), "stat|suspected PE");
    let h = history();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (&h[0]["from"], &h[0]["to"], &h[0]["actor"], &h[0]["detail"]),
        (&json!("new"), &json!("new"), &json!("doc1"), &json!("priority stat"))
    );
    // Lowering it is the hub's triage, not the clinic's.
    let (code, body) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{uid}/priority"),
        Some(json!({ "priority": "urgent" })),
    );
    assert_eq!((code, &body["code"]), (403, &json!("priority_lower")), "{body}");

    // Cancelled: no priority any more; nothing written.
    ok(
        s.req(
            Some(&w.doc1),
            "POST",
            &format!("/api/worklist/{uid}/cancel"),
            Some(json!({ "reason": "patient transferred" })),
        ),
        "cancel",
    );
    let (code, body) = s.req(
        Some(&w.doc1),
        "POST",
        &format!("/api/worklist/{uid}/priority"),
        Some(json!({ "priority": "stat", "clinical_question": "changed" })),
    );
    assert_eq!((code, &body["code"]), (409, &json!("wrong_state")), "{body}");
    assert_eq!(body["error"], "a study that is cancelled has no reading priority");
    assert_eq!(priority(), "stat|suspected PE");
    assert_eq!(history().len(), 2);
}

/// The priority route as every role: the clinic doctor of the study's
/// clinic raises it, another clinic's doctor does not see the study, an
/// expert may not touch it, an admin sets it either way; each change is one
/// history row naming who made it.
#[test]
fn the_priority_route_answers_each_role_by_its_rules() {
    let w = world(None);
    let s = &w.s;
    let uid = &w.study1;
    s.add_user("adm1", "admin", PW, &[]);
    let adm = s.login("adm1", PW).expect("admin login");
    let set = |who: &Auth, p: &str| {
        s.req(
            Some(who),
            "POST",
            &format!("/api/worklist/{uid}/priority"),
            Some(json!({ "priority": p })),
        )
    };
    let (code, body) = set(&w.exp1, "stat");
    assert_eq!(code, 403, "an expert set the priority: {body}");
    let (code, body) = set(&w.doc2, "stat");
    assert_eq!(code, 404, "another clinic's doctor reached the study: {body}");
    assert_eq!(
        ok(set(&w.doc1, "urgent"), "clinic raises")["worklist"]["priority"],
        "urgent"
    );
    assert_eq!(ok(set(&adm, "stat"), "admin raises")["worklist"]["priority"], "stat");
    assert_eq!(
        ok(set(&adm, "routine"), "admin lowers")["worklist"]["priority"],
        "routine"
    );
    let h = ok(
        s.req(Some(&w.exp1), "GET", &format!("/api/worklist/{uid}/history"), None),
        "history",
    );
    let actors: Vec<&str> = h["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["actor"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actors, ["doc1", "adm1", "adm1"], "{h}");
}

#[test]
fn kill9_while_signing_leaves_the_old_or_the_new_version() {
    // The PACS port is closed: deliveries stay queued, as after any crash.
    let w = world(Some(free_port()));
    let mut s = w.s;
    let uid = w.study1.clone();
    ok(
        s.req(Some(&w.exp1), "POST", &format!("/api/worklist/{uid}/claim"), None),
        "claim",
    );
    ok(
        s.req(
            Some(&w.exp1),
            "POST",
            &format!("/api/studies/{uid}/report/sign"),
            Some(json!({ "findings": "v1", "impression": "first" })),
        ),
        "first sign",
    );
    let mut acknowledged: Vec<i64> = vec![1];
    for round in 0..6u64 {
        let port = s.http_port;
        let auth = w.exp1.clone();
        let uid2 = uid.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        // Sign amendments as fast as possible while the server is killed.
        let signer = std::thread::spawn(move || {
            let mut acks = Vec::new();
            let mut n = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let body =
                    json!({ "findings": format!("round {round} amendment {n} ").repeat(200), "impression": "amended" });
                let (code, b) = http_send_as(
                    port,
                    "POST",
                    &format!("/api/studies/{uid2}/report/sign"),
                    Some(&body),
                    Some(&auth),
                );
                if code == 200 {
                    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    if let Some(ver) = v["report"]["version"].as_i64() {
                        acks.push(ver);
                    }
                } else if code == 0 {
                    break;
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(150 + 97 * round));
        s.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        acknowledged.extend(signer.join().expect("signer"));
        s.restart();
        // Consistent after every crash: one current signed version, every
        // older one amended and complete, one delivery per signed version,
        // and every acknowledged version present.
        if !s.index_on_pg() {
            assert_eq!(s.sqlite("PRAGMA integrity_check"), "ok");
        }
        assert_eq!(
            s.sqlite(&format!(
                "SELECT COUNT(*) FROM reports WHERE study_uid = '{uid}' AND status = 'signed'"
            )),
            "1"
        );
        assert_eq!(
            s.sqlite(&format!(
                "SELECT COUNT(*) FROM reports WHERE study_uid = '{uid}' AND status NOT IN ('signed', 'amended')"
            )),
            "0",
            "a signed amendment never leaves a draft behind"
        );
        assert_eq!(
            s.sqlite(&format!(
                "SELECT COUNT(*) FROM reports WHERE study_uid = '{uid}' AND (signed_ms IS NULL OR length(findings) = 0)"
            )),
            "0"
        );
        let versions: i64 = s
            .sqlite(&format!("SELECT COUNT(*) FROM reports WHERE study_uid = '{uid}'"))
            .parse()
            .expect("n");
        let deliveries: i64 = s
            .sqlite(&format!("SELECT COUNT(*) FROM deliveries WHERE study_uid = '{uid}'"))
            .parse()
            .expect("n");
        assert_eq!(versions, deliveries, "one SR delivery per signed version");
        let max: i64 = s
            .sqlite(&format!("SELECT MAX(version) FROM reports WHERE study_uid = '{uid}'"))
            .parse()
            .expect("n");
        assert_eq!(versions, max, "versions are contiguous");
        for v in &acknowledged {
            assert!(v <= &max, "acknowledged version {v} lost (max {max})");
        }
        assert_eq!(
            s.sqlite(&format!("SELECT state FROM worklist WHERE study_uid = '{uid}'")),
            "reported"
        );
    }
    assert!(
        acknowledged.len() > 6,
        "signing ran between the kills: {acknowledged:?}"
    );
}

#[test]
fn consultation_request_is_scheduled_and_joined_by_both_sides() {
    let w = world(None);
    let s = &w.s;
    let created = s.req(
        Some(&w.doc1),
        "POST",
        "/api/requests",
        Some(json!({ "question": "Nodule: follow-up or biopsy?", "study_uids": [w.study1], "urgency": "urgent" })),
    );
    assert_eq!(created.0, 201, "{}", created.1);
    let id = created.1["request"]["id"].as_i64().expect("id");
    assert!(
        !created.1["request"]["patient_id"].as_str().unwrap_or("").is_empty(),
        "patient filled from the study"
    );
    // Another clinic cannot attach studies it does not own, or see the request.
    let (code, _) = s.req(
        Some(&w.doc2),
        "POST",
        "/api/requests",
        Some(json!({ "question": "?", "study_uids": [w.study1] })),
    );
    assert_eq!(code, 404);
    let l2 = ok(s.req(Some(&w.doc2), "GET", "/api/requests", None), "doc2 list");
    assert_eq!(l2["requests"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        s.req(Some(&w.doc2), "POST", &format!("/api/requests/{id}/join"), None)
            .0,
        404
    );
    // Not joinable before it is scheduled; clinics cannot accept.
    assert_eq!(
        s.req(Some(&w.doc1), "POST", &format!("/api/requests/{id}/join"), None)
            .0,
        409
    );
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 5 * 60_000;
    assert_eq!(
        s.req(
            Some(&w.doc1),
            "POST",
            &format!("/api/requests/{id}/accept"),
            Some(json!({ "scheduled_ms": when }))
        )
        .0,
        403
    );
    let acc = ok(
        s.req(
            Some(&w.exp1),
            "POST",
            &format!("/api/requests/{id}/accept"),
            Some(json!({ "scheduled_ms": when })),
        ),
        "accept",
    );
    assert_eq!(acc["request"]["state"], "scheduled");
    assert_eq!(acc["request"]["expert"], "exp1");
    // A second expert cannot take it over.
    assert_eq!(
        s.req(
            Some(&w.exp2),
            "POST",
            &format!("/api/requests/{id}/accept"),
            Some(json!({ "scheduled_ms": when }))
        )
        .0,
        409
    );
    // Both join the same room, with the study in the URL for the shared viewer.
    let j1 = ok(
        s.req(Some(&w.doc1), "POST", &format!("/api/requests/{id}/join"), None),
        "clinic join",
    );
    let j2 = ok(
        s.req(Some(&w.exp1), "POST", &format!("/api/requests/{id}/join"), None),
        "expert join",
    );
    assert_eq!(j1["room_id"], j2["room_id"]);
    let url = j1["url"].as_str().expect("url");
    assert!(
        url.starts_with("/consult#token=") && url.contains(&format!("study={}", w.study1)),
        "{url}"
    );
    let room = s.get_json(&format!("/api/rooms/{}", j1["room_id"].as_str().expect("room")));
    assert_eq!(room["invited"], 2, "{room}");
    // The clinic was notified of the schedule; cancelling works from either side.
    let n = ok(s.req(Some(&w.doc1), "GET", "/api/notifications", None), "notifications");
    assert!(
        n["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["kind"] == "request" && i["request_id"] == id),
        "{n}"
    );
    let c = ok(
        s.req(
            Some(&w.doc1),
            "POST",
            &format!("/api/requests/{id}/cancel"),
            Some(json!({ "reason": "patient transferred" })),
        ),
        "cancel",
    );
    assert_eq!(c["request"]["state"], "cancelled");
    assert_eq!(
        s.req(Some(&w.exp1), "POST", &format!("/api/requests/{id}/join"), None)
            .0,
        409
    );
}
