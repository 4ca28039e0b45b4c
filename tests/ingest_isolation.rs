//! Cross-clinic isolation at ingest (issue 16, item 3): a device of clinic B
//! that sends a Study, Series or SOP Instance UID already belonging to
//! clinic A is refused with 0x0124 "Refused: Not authorized" and an error
//! comment naming the level; clinic A's study is untouched (instances,
//! versions, status, the bytes its doctors download), nothing of B's is
//! kept, the refusal is audited and listed for admins. Within one clinic, a
//! series filed under another study, or an instance under another series,
//! is refused the same way. Two clinics racing with the same new UIDs: one
//! wins, the other is refused.
//!
//! Real peers: DCMTK `storescu -aet` for each clinic, `dcmodify` to rewrite
//! UIDs, curl as the clinic doctor.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const PW: &str = "clinic-pass-1";

fn config() -> String {
    "[[clinic]]\nid = \"clinic-a\"\nname = \"Clinic A\"\nae_titles = [\"CT_A\"]\n\n\
     [[clinic]]\nid = \"clinic-b\"\nname = \"Clinic B\"\nae_titles = [\"CT_B\"]\n"
        .into()
}

fn ct(n: usize) -> PathBuf {
    ct300().join(format!("CT{n:06}.dcm"))
}

/// A copy of `src` in `dir` with the given tags rewritten (dcmodify).
fn modified(dir: &Path, name: &str, src: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let out = dir.join(name);
    std::fs::copy(src, &out).expect("copy");
    let o = run({
        let mut c = Command::new("dcmodify");
        c.arg("-nb");
        for (tag, value) in edits {
            c.args(["-m", &format!("{tag}={value}")]);
        }
        c.arg(&out);
        c
    });
    assert!(o.status.success(), "dcmodify: {}", text(&o));
    out
}

/// One file with `storescu -d`; returns (status, error comment).
fn store_one(s: &Server, ae: &str, file: &Path) -> (u16, String) {
    let o = run({
        let mut c = s.storescu(ae);
        c.arg("-d").arg(file);
        c
    });
    parse_status(&text(&o))
}

/// The C-STORE-RSP's status and error comment from storescu's debug dump.
fn parse_status(out: &str) -> (u16, String) {
    let mut status = None;
    let mut comment = String::new();
    let mut in_rsp = false;
    for line in out.lines() {
        if line.contains("C-STORE RSP") || line.contains("C-STORE-RSP") {
            in_rsp = true;
        }
        if !in_rsp {
            continue;
        }
        if status.is_none()
            && line.contains("DIMSE Status")
            && let Some(h) = line.split("0x").nth(1)
        {
            let hex: String = h.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            status = u16::from_str_radix(&hex, 16).ok();
        }
        // The status detail: "(0000,0902) LO [text] # n, 1 ErrorComment".
        if line.contains("(0000,0902)")
            && let Some(c) = line.split_once('[').and_then(|(_, r)| r.rsplit_once(']'))
        {
            comment = c.0.to_string();
        }
    }
    (
        status.unwrap_or_else(|| panic!("no C-STORE response status in storescu output:\n{out}")),
        comment,
    )
}

fn download(s: &Server, auth: &Auth, sop: &str) -> Vec<u8> {
    let (code, body) = http_send_as(
        s.http_port,
        "GET",
        &format!("/api/instances/{sop}/file"),
        None,
        Some(auth),
    );
    assert_eq!(code, 200, "download {sop}: {}", String::from_utf8_lossy(&body));
    body
}

/// Everything of the index that clinic A's study is made of.
fn snapshot(s: &Server, study: &str) -> String {
    [
        s.sqlite(&format!(
            "SELECT clinic_id, num_series, num_instances, size_bytes, status, completed_ms, last_received_ms
             FROM studies WHERE study_uid = '{study}'"
        )),
        s.sqlite(&format!(
            "SELECT series_uid, study_uid, num_instances, size_bytes FROM series WHERE study_uid = '{study}' ORDER BY series_uid"
        )),
        s.sqlite(
            "SELECT sop_instance_uid, version, series_uid, study_uid, sha256, path FROM instances ORDER BY sop_instance_uid, version",
        ),
        s.sqlite("SELECT study_uid, state, completions, updated_ms FROM worklist ORDER BY study_uid"),
        s.sqlite("SELECT clinic_id, patient_key, patient_name FROM patients ORDER BY id"),
    ]
    .join("\n--\n")
}

fn instance_files(s: &Server) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            usize::from(p.extension().is_some_and(|x| x == "dcm"))
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&stored_root(s))
}

#[test]
fn another_clinics_uids_are_refused_at_every_level_and_a_is_untouched() {
    let s = Server::start(ServerOpts {
        stable_after_secs: 1.0,
        config_toml: config(),
        ..Default::default()
    });
    s.add_user("dr-a", "clinic", PW, &["--clinic", "clinic-a"]);
    let dr_a = s.login("dr-a", PW).expect("login dr-a");
    let tmp = tempfile::tempdir().expect("tmp");

    // Clinic A's study: three slices, complete and on the worklist.
    let o = run({
        let mut c = s.storescu("CT_A");
        c.args([ct(1), ct(2), ct(3)]);
        c
    });
    assert!(o.status.success(), "storescu CT_A: {}", text(&o));
    let study = s.sqlite("SELECT study_uid FROM studies");
    let series = s.sqlite("SELECT series_uid FROM series");
    let sop1 = s.sqlite("SELECT sop_instance_uid FROM instances WHERE instance_number = 1");
    s.wait_for(30, "clinic A's study complete", || {
        s.sqlite(&format!("SELECT status FROM studies WHERE study_uid = '{study}'")) == "complete"
    });
    let served_before = download(&s, &dr_a, &sop1);
    let before = snapshot(&s, &study);
    assert_eq!(instance_files(&s), 3);

    // Clinic B's device reuses A's UIDs, one level at a time (new UIDs
    // elsewhere, and different bytes: another patient name).
    let evil = [("(0010,0010)", "EVIL^BEE")];
    let level_study = modified(
        tmp.path(),
        "study.dcm",
        &ct(4),
        &[
            evil[0],
            ("(0020,000E)", "1.2.826.0.1.3680043.10.543.1.1"),
            ("(0008,0018)", "1.2.826.0.1.3680043.10.543.1.1.1"),
        ],
    );
    let level_series = modified(
        tmp.path(),
        "series.dcm",
        &ct(5),
        &[
            evil[0],
            ("(0020,000D)", "1.2.826.0.1.3680043.10.543.2"),
            ("(0008,0018)", "1.2.826.0.1.3680043.10.543.2.1.1"),
        ],
    );
    let level_sop = modified(
        tmp.path(),
        "sop.dcm",
        &ct(1),
        &[
            evil[0],
            ("(0020,000D)", "1.2.826.0.1.3680043.10.543.3"),
            ("(0020,000E)", "1.2.826.0.1.3680043.10.543.3.1"),
        ],
    );
    // A's instance resent whole by B with other content (the verified
    // attack of the issue), and byte for byte.
    let whole = modified(tmp.path(), "whole.dcm", &ct(1), &evil);
    for (file, level) in [
        (&level_study, "Study Instance UID"),
        (&level_series, "Series Instance UID"),
        (&level_sop, "SOP Instance UID"),
        (&whole, "Study Instance UID"),
        (&ct(1), "Study Instance UID"),
    ] {
        let (status, comment) = store_one(&s, "CT_B", file);
        assert_eq!(
            status,
            0x0124,
            "{level} of another clinic ({}): {comment}",
            file.display()
        );
        assert!(
            comment.contains(level) && comment.contains("another clinic"),
            "error comment names the level: {comment:?}"
        );
    }

    // Nothing of B's was kept and A's study is exactly as it was: same
    // rows, versions, status (not reopened), worklist entry, and its doctor
    // downloads the same bytes.
    assert_eq!(snapshot(&s, &study), before);
    assert_eq!(
        s.sqlite("SELECT COUNT(*) FROM studies WHERE clinic_id = 'clinic-b'"),
        "0"
    );
    assert_eq!(instance_files(&s), 3, "no blob of B's left behind");
    assert_eq!(std::fs::read_dir(s.data_dir.join("tmp")).expect("tmp").count(), 0);
    assert!(
        download(&s, &dr_a, &sop1) == served_before,
        "A's doctor is served A's bytes"
    );

    // Audited: who (the calling AE), its clinic, which level; listed for
    // admins; no patient name in the audit or the log.
    let audit = s.sqlite(
        "SELECT username, role, action, study_uid, detail FROM audit WHERE action = 'ingest_refused' ORDER BY id",
    );
    let rows: Vec<&str> = audit.lines().collect();
    assert_eq!(rows.len(), 5, "{audit}");
    assert!(
        rows[0].starts_with(&format!("CT_B|dicom|ingest_refused|{study}|")),
        "{audit}"
    );
    for (row, level) in rows.iter().zip(["study", "series", "instance", "study", "study"]) {
        assert!(
            row.contains("clinic=clinic-b")
                && row.contains(&format!("level={level} reason=other-clinic"))
                && row.contains("owner=clinic-a"),
            "{row}"
        );
    }
    let listed = s.get_json("/api/admin/ingest-refusals");
    let items = listed["refusals"].as_array().expect("refusals");
    assert_eq!(items.len(), 5, "{listed}");
    for it in items {
        assert_eq!(
            (&it["calling_ae"], &it["via"], &it["clinic_id"], &it["owner_clinic"]),
            (&"CT_B".into(), &"dicom".into(), &"clinic-b".into(), &"clinic-a".into()),
            "{listed}"
        );
    }
    assert_eq!(items[0]["level"], "study", "newest first: {listed}");
    assert_eq!(items[2]["level"], "instance", "{listed}");
    assert_eq!(items[2]["sop_instance_uid"], sop1.as_str(), "{listed}");
    for needle in ["EVIL", "BEE"] {
        assert!(!audit.contains(needle), "patient name in the audit: {audit}");
        assert!(!s.log().contains(needle), "patient name in the log");
    }
    // Clinic doctors do not see the list.
    let (code, _) = s.req(Some(&dr_a), "GET", "/api/admin/ingest-refusals", None);
    assert_eq!(code, 403);
    // The admin page shows it (headless Chromium on the real page).
    admin_page_lists_refusals(&s, 5);

    // Within clinic A: a series filed under another study, and an instance
    // under another series, are refused too (A's study still untouched).
    let moved_series = modified(
        tmp.path(),
        "moved-series.dcm",
        &ct(6),
        &[
            ("(0020,000D)", "1.2.826.0.1.3680043.10.543.4"),
            ("(0008,0018)", "1.2.826.0.1.3680043.10.543.4.1.1"),
        ],
    );
    let (status, comment) = store_one(&s, "CT_A", &moved_series);
    assert_eq!(status, 0x0124, "{comment}");
    assert!(
        comment.contains("Series Instance UID") && comment.contains("another study"),
        "{comment}"
    );
    let moved_sop = modified(
        tmp.path(),
        "moved-sop.dcm",
        &ct(2),
        &[("(0020,000E)", "1.2.826.0.1.3680043.10.543.5")],
    );
    let (status, comment) = store_one(&s, "CT_A", &moved_sop);
    assert_eq!(status, 0x0124, "{comment}");
    assert!(
        comment.contains("SOP Instance UID") && comment.contains("another series"),
        "{comment}"
    );
    assert_eq!(snapshot(&s, &study), before);
    assert_eq!(instance_files(&s), 3);

    // A itself may still add to its study (a new slice) and resend one
    // with new content (kept as version 2).
    let (status, _) = store_one(&s, "CT_A", &ct(7));
    assert_eq!(status, 0x0000);
    let (status, comment) = store_one(&s, "CT_A", &whole);
    assert_eq!(status, 0xB000, "{comment}");
    assert_eq!(
        s.sqlite(&format!(
            "SELECT MAX(version) FROM instances WHERE sop_instance_uid = '{sop1}'"
        )),
        "2"
    );
    let _ = series;
}

fn admin_page_lists_refusals(s: &Server, n: usize) {
    use support::webdriver::{Chromium, SessionOpts};
    let t = std::time::Duration::from_secs(60);
    let ch = Chromium::launch().expect("chromedriver");
    let sess = ch.session(&SessionOpts::default()).expect("browser session");
    ui_login(&sess, s, "admin", ADMIN_PASSWORD, "/admin");
    sess.wait_for("window.mrTest.admin && window.mrTest.admin.ready", t)
        .expect("admin page");
    sess.click("[data-test=tab-ingest]").expect("tab");
    sess.wait_for(
        &format!("document.querySelectorAll('[data-test=ingest-row]').length === {n}"),
        t,
    )
    .unwrap_or_else(|e| panic!("refusal rows on the admin page: {e}"));
    let rows = sess.execute("return window.mrTest.admin.ingest", vec![]).expect("hook");
    assert_eq!(rows[0]["calling_ae"], "CT_B", "{rows}");
    assert_eq!(
        sess.execute("return window.mrTest.admin.errors", vec![])
            .expect("errors"),
        serde_json::json!([])
    );
    let _ = sess.quit();
}

#[test]
fn two_clinics_racing_with_the_same_new_uids_one_wins() {
    let s = Server::start(ServerOpts {
        config_toml: config(),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    for round in 1..=6 {
        let study = format!("1.2.826.0.1.3680043.10.544.{round}");
        let uids = |who: &str| {
            vec![
                ("(0020,000D)", study.clone()),
                ("(0020,000E)", format!("{study}.1")),
                ("(0008,0018)", format!("{study}.1.1")),
                ("(0010,0010)", format!("PATIENT^{who}")),
            ]
        };
        let edits_a = uids("A");
        let edits_b = uids("B");
        let a = modified(
            tmp.path(),
            &format!("a{round}.dcm"),
            &ct(round),
            &edits_a.iter().map(|(t, v)| (*t, v.as_str())).collect::<Vec<_>>(),
        );
        let b = modified(
            tmp.path(),
            &format!("b{round}.dcm"),
            &ct(round),
            &edits_b.iter().map(|(t, v)| (*t, v.as_str())).collect::<Vec<_>>(),
        );
        let spawn = |ae: &str, f: &Path| {
            s.storescu(ae)
                .arg("-d")
                .arg(f)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("storescu")
        };
        let (pa, pb) = (spawn("CT_A", &a), spawn("CT_B", &b));
        let ra = parse_status(&text(&pa.wait_with_output().expect("wait")));
        let rb = parse_status(&text(&pb.wait_with_output().expect("wait")));
        let outcomes = [ra.0, rb.0];
        assert!(
            outcomes.contains(&0x0000) && outcomes.contains(&0x0124),
            "round {round}: exactly one clinic wins: A {ra:?}, B {rb:?}"
        );
        let winner = if ra.0 == 0 { "clinic-a" } else { "clinic-b" };
        assert_eq!(
            s.sqlite(&format!(
                "SELECT s.clinic_id, s.num_instances, COUNT(i.sop_instance_uid), MAX(i.version)
                 FROM studies s JOIN instances i ON i.study_uid = s.study_uid WHERE s.study_uid = '{study}'
                 GROUP BY s.clinic_id, s.num_instances"
            )),
            format!("{winner}|1|1|1"),
            "round {round}"
        );
    }
}
