//! Chinese patient names end to end over the real peers: datasets written by
//! pydicom in GB18030, GBK, ISO_IR 192 and `\ISO 2022 IR 58` (GB 2312 with
//! escape sequences, as Chinese modalities send it) are pushed by DCMTK
//! storescu, stored as Unicode with all three Person Name groups, found by
//! the study search however a user types the name, and a signed report
//! reaches the clinic PACS (DCMTK storescp) as SR whose name and text
//! `dsrdump` shows, in UTF-8 or, for a PACS configured so, in GB18030.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::*;

const PW: &str = "correct-horse-battery";
const WANG: &str = "Wang^Xiaodong=王^小东=wang^xiaodong";

fn config(pacs_utf8: u16, pacs_gb: u16) -> String {
    format!(
        r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]
pacs = "CLINICPACS@127.0.0.1:{pacs_utf8}"

[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_CT"]
pacs = "CLINICPACS@127.0.0.1:{pacs_gb}"
pacs_charset = "GB18030"

[[hospital]]
id = "city"
name = "市人民医院"
serves = ["t01", "t02"]
"#
    )
}

/// Percent-encoding of a query value (UTF-8 bytes).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ok(r: (u16, Value), what: &str) -> Value {
    assert_eq!(r.0, 200, "{what}: {}", r.1);
    r.1
}

fn dsrdump(p: &Path, args: &[&str]) -> String {
    let o = Command::new("dsrdump").args(args).arg(p).output().expect("dsrdump");
    let out = text(&o);
    assert!(
        o.status.success() && !out.contains("E: "),
        "dsrdump {}: {out}",
        p.display()
    );
    out
}

struct World {
    s: Server,
    exp: Auth,
    doc1: Auth,
    doc2: Auth,
    /// Study UID by patient ID (`CN-<case>`).
    uids: HashMap<String, String>,
}

fn world(pacs_utf8: u16, pacs_gb: u16, files: &HashMap<String, PathBuf>) -> World {
    let s = Server::start(ServerOpts {
        config_toml: config(pacs_utf8, pacs_gb),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    s.add_user("doc1", "clinic", PW, &["--clinic", "t01"]);
    s.add_user("doc2", "clinic", PW, &["--clinic", "t02"]);
    s.add_user("exp", "expert", PW, &["--hospital", "city", "--name", "李医生"]);
    // GB18030 from the clinic whose PACS takes GB18030, the rest from t01.
    for (ae, cases) in [
        ("T01_CT", &["utf8", "iso2022", "gbk", "alpha", "ideo", "malformed"][..]),
        ("T02_CT", &["gb18030"][..]),
    ] {
        let o = run({
            let mut c = s.storescu(ae);
            c.args(cases.iter().map(|k| &files[*k]));
            c
        });
        assert!(o.status.success(), "storescu {ae}: {}", text(&o));
    }
    s.wait_for(60, "seven studies on the worklist", || {
        s.sqlite("SELECT COUNT(*) FROM worklist WHERE state = 'new'") == "7"
    });
    let uids = s
        .sqlite("SELECT patient_id || '=' || study_uid FROM studies")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let login = |u: &str| s.login(u, PW).unwrap_or_else(|e| panic!("login {u}: {e:?}"));
    World {
        exp: login("exp"),
        doc1: login("doc1"),
        doc2: login("doc2"),
        uids,
        s,
    }
}

/// Patient IDs of the studies the admin finds with `q`, sorted.
fn found(s: &Server, q: &str) -> Vec<String> {
    let r = s.get_json(&format!("/api/studies?patient_name={}", enc(q)));
    let mut ids: Vec<String> = r["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .map(|x| x["patient_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(r["total"].as_u64(), Some(ids.len() as u64), "{q}: {r}");
    ids
}

#[test]
fn chinese_names_in_every_character_set_are_stored_as_unicode_and_found() {
    let tmp = tempfile::tempdir().expect("tmp");
    let files = chinese_datasets(tmp.path());
    let w = world(support::free_port(), support::free_port(), &files);
    let s = &w.s;
    let by_id: HashMap<String, Value> = s.get_json("/api/studies?limit=50")["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .map(|x| (x["patient_id"].as_str().unwrap_or_default().to_string(), x.clone()))
        .collect();
    for case in ["gb18030", "utf8", "iso2022", "gbk"] {
        let st = &by_id[&format!("CN-{case}")];
        assert_eq!(st["patient_name"], WANG, "{case}: {st}");
        // The index holds the same Unicode text.
        let uid = &w.uids[&format!("CN-{case}")];
        assert_eq!(
            s.sqlite(&format!("SELECT patient_name FROM studies WHERE study_uid = '{uid}'")),
            WANG
        );
    }
    assert_eq!(by_id["CN-gb18030"]["description"], "CT 头颅平扫");
    assert_eq!(by_id["CN-iso2022"]["description"], "CT 腹部");
    assert_eq!(by_id["CN-alpha"]["patient_name"], "Li^Ming");
    assert_eq!(by_id["CN-ideo"]["patient_name"], "=王^小东");
    // Malformed (stray escape bytes, too many groups): stored without
    // escape or control characters, readable parts kept.
    let bad = by_id["CN-malformed"]["patient_name"].as_str().expect("name");
    assert!(
        bad.starts_with("Zhao^Lei=赵^") && !bad.chars().any(char::is_control),
        "{bad:?}"
    );

    let wang = ["CN-gb18030", "CN-gbk", "CN-ideo", "CN-iso2022", "CN-utf8"];
    let wang_alpha = ["CN-gb18030", "CN-gbk", "CN-iso2022", "CN-utf8"];
    for q in ["王", "王小东", "小东", "王 小东"] {
        assert_eq!(found(s, q), wang, "{q}");
    }
    for q in [
        "wang",
        "WANG",
        "Wang^Xiaodong",
        "wang xiaodong",
        "wang^xiaodong",
        "Wang*",
    ] {
        assert_eq!(found(s, q), wang_alpha, "{q}");
    }
    assert_eq!(found(s, "li ming"), ["CN-alpha"]);
    assert_eq!(found(s, "赵"), ["CN-malformed"]);
    assert!(found(s, "张").is_empty());
    // Scope still applies: clinic t02 finds only its own 王小东.
    let r = ok(
        s.req(
            Some(&w.doc2),
            "GET",
            &format!("/api/studies?patient_name={}", enc("王小东")),
            None,
        ),
        "clinic search",
    );
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(r["studies"][0]["patient_id"], "CN-gb18030");
    // No name reached the log.
    assert!(
        !s.log().contains("小东") && !s.log().contains("Xiaodong"),
        "PHI in the log"
    );
}

/// Claims, signs with Chinese findings and waits for the SR at `pacs`.
fn sign_and_receive(w: &World, uid: &str, pacs: &Pacs, findings: &str, impression: &str) -> PathBuf {
    let s = &w.s;
    ok(
        s.req(Some(&w.exp), "POST", &format!("/api/worklist/{uid}/claim"), None),
        "claim",
    );
    ok(
        s.req(
            Some(&w.exp),
            "POST",
            &format!("/api/studies/{uid}/report/sign"),
            Some(json!({ "findings": findings, "impression": impression })),
        ),
        "sign",
    );
    s.wait_for(60, "SR at the PACS", || !pacs.files().is_empty());
    let files = pacs.files();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn signed_chinese_report_reaches_the_pacs_in_utf8_or_gb18030() {
    let tmp = tempfile::tempdir().expect("tmp");
    let files = chinese_datasets(tmp.path());
    let (p1, p2) = (Pacs::start(), Pacs::start());
    let w = world(p1.port, p2.port, &files);
    let findings = "脑实质内未见明显异常密度影。\n脑室系统未见扩大。";
    let impression = "头颅CT平扫未见明显异常。";

    // Clinic t01: UTF-8 (ISO_IR 192), name from an ISO 2022 IR 58 dataset.
    let sr = sign_and_receive(&w, &w.uids["CN-iso2022"], &p1, findings, impression);
    let dcm = text(&Command::new("dcmdump").arg(&sr).output().expect("dcmdump"));
    assert!(dcm.contains("(0008,0005) CS [ISO_IR 192]"), "{dcm}");
    let dump = dsrdump(&sr, &["+Pl"]);
    for want in [
        WANG,
        "脑实质内未见明显异常密度影。",
        "头颅CT平扫未见明显异常。",
        "李医生",
    ] {
        assert!(dump.contains(want), "{want:?} not in:\n{dump}");
    }

    // Clinic t02: its PACS takes GB18030; the bytes are GB18030 and DCMTK
    // converts them back to the same text.
    let sr = sign_and_receive(&w, &w.uids["CN-gb18030"], &p2, findings, impression);
    let dcm = text(&Command::new("dcmdump").arg(&sr).output().expect("dcmdump"));
    assert!(dcm.contains("(0008,0005) CS [GB18030]"), "{dcm}");
    let raw = std::fs::read(&sr).expect("sr");
    let gb_name: &[u8] = b"Wang^Xiaodong=\xcd\xf5^\xd0\xa1\xb6\xab=wang^xiaodong";
    assert!(raw.windows(gb_name.len()).any(|x| x == gb_name), "name not in GB18030");
    assert!(
        !raw.windows(WANG.len()).any(|x| x == WANG.as_bytes()),
        "name left in UTF-8"
    );
    let dump = dsrdump(&sr, &["+Pl", "+U8"]);
    for want in [
        WANG,
        "脑实质内未见明显异常密度影。",
        "头颅CT平扫未见明显异常。",
        "李医生",
    ] {
        assert!(dump.contains(want), "{want:?} not in:\n{dump}");
    }
    // Both clinics see their report.
    for (auth, case) in [(&w.doc1, "CN-iso2022"), (&w.doc2, "CN-gb18030")] {
        let r = ok(
            w.s.req(
                Some(auth),
                "GET",
                &format!("/api/studies/{}/reports", w.uids[case]),
                None,
            ),
            "reports",
        );
        assert_eq!(r["versions"][0]["findings"], findings, "{r}");
    }
}
