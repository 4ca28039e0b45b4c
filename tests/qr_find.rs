//! C-FIND SCP (issue 19) against real peers: pynetdicom (UTF-8 and GB18030
//! identifiers, C-CANCEL) and DCMTK findscu, on Patient Root and Study
//! Root at every level, with every matching type, within each calling AE's
//! scope (a clinic's modality, a hospital's PACS serving some clinics).
//!
//! Run: `cargo test --test qr_find` (after `bash tests/support/setup.sh`).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::{Value, json};
use support::*;

fn config() -> String {
    r#"
[dicom]
max_find_results = 250

[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_CT"]

[[hospital]]
id = "city"
serves = ["t01", "t02"]
ae_titles = ["CITY_PACS"]

[[hospital]]
id = "county"
serves = ["t02"]
ae_titles = ["COUNTY_WS"]
"#
    .into()
}

struct World {
    s: Server,
    /// Study UID by patient ID.
    uids: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

/// Six Chinese-name studies from clinic t01 (five) and t02 (one), and the
/// 300-slice CT from t02.
fn world() -> World {
    let dir = tempfile::tempdir().expect("tmp");
    let files = chinese_datasets(dir.path());
    let s = Server::start(ServerOpts {
        config_toml: config(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    for (ae, cases) in [
        ("T01_CT", &["utf8", "iso2022", "gbk", "alpha", "ideo"][..]),
        ("T02_CT", &["gb18030"][..]),
    ] {
        let o = run({
            let mut c = s.storescu(ae);
            c.args(cases.iter().map(|k| &files[*k]));
            c
        });
        assert!(o.status.success(), "storescu {ae}: {}", text(&o));
    }
    let o = run({
        let mut c = s.storescu("T02_CT");
        c.args(["+sd", "+r"]).arg(ct300());
        c
    });
    assert!(o.status.success(), "storescu ct300: {}", text(&o));
    s.wait_for(60, "306 instances indexed", || {
        s.sqlite("SELECT COUNT(*) FROM instances") == "306"
    });
    let uids = s
        .sqlite("SELECT patient_id || '=' || study_uid FROM studies")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    World { s, uids, _dir: dir }
}

/// A pynetdicom C-FIND from `aet`: (final status, matches).
fn find(s: &Server, aet: &str, model: &str, charset: &str, extra: &[&str], keys: Value) -> (Option<u64>, Vec<Value>) {
    let o = run({
        let mut c = s.peer("qr_find.py");
        c.args(["--aet", aet, "--model", model, "--charset", charset])
            .args(extra)
            .arg(keys.to_string());
        c
    });
    assert!(o.status.success(), "qr_find.py: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    if v["status"].is_null() {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    }
    let matches = v["matches"].as_array().cloned().unwrap_or_default();
    (v["status"].as_u64(), matches)
}

fn ids(matches: &[Value]) -> BTreeSet<String> {
    matches
        .iter()
        .map(|m| m["PatientID"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const WANG_STUDIES: &[&str] = &["CN-utf8", "CN-iso2022", "CN-gbk", "CN-ideo", "CN-gb18030"];

#[test]
fn c_find_matches_every_key_type_at_every_level_within_scope() {
    let w = world();
    let s = &w.s;
    let study = |keys: Value| find(s, "CITY_PACS", "study", "ISO_IR 192", &[], keys);

    // Wildcards on a Chinese name (UTF-8 identifier): every study whose
    // name has 王 as a component group, in whatever character set it came.
    let (st, m) =
        study(json!({"QueryRetrieveLevel": "STUDY", "PatientName": "王*", "PatientID": "", "StudyInstanceUID": ""}));
    assert_eq!(st, Some(0));
    assert_eq!(ids(&m), set(WANG_STUDIES));
    assert!(
        m.iter()
            .all(|r| r["PatientName"].as_str().is_some_and(|n| n.contains("王^小东"))),
        "names come back whole: {m:?}"
    );
    // `?` is one character (a hanzi), and names match case-insensitively.
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "PatientName": "王^小?", "PatientID": ""}));
    assert_eq!(ids(&m), set(WANG_STUDIES));
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "PatientName": "LI^MING", "PatientID": ""}));
    assert_eq!(ids(&m), set(&["CN-alpha"]));

    // Single values, dates and times (ranges), related counts.
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "PatientID": "CN-gbk",
        "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "", "ModalitiesInStudy": "", "AccessionNumber": ""}));
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["NumberOfStudyRelatedSeries"], "1");
    assert_eq!(m[0]["NumberOfStudyRelatedInstances"], "1");
    assert_eq!(m[0]["ModalitiesInStudy"], "CT");
    assert_eq!(m[0]["AccessionNumber"], "ACC-gbk");
    let chinese = |m: &[Value]| {
        ids(m)
            .into_iter()
            .filter(|i| i.starts_with("CN-"))
            .collect::<BTreeSet<_>>()
    };
    let (_, m) = study(
        json!({"QueryRetrieveLevel": "STUDY", "StudyDate": "20260301-20260302", "StudyTime": "10-11", "PatientID": ""}),
    );
    assert_eq!(chinese(&m).len(), 6, "{m:?}");
    let (_, m) =
        study(json!({"QueryRetrieveLevel": "STUDY", "StudyDate": "20260301", "StudyTime": "1016-", "PatientID": ""}));
    assert!(chinese(&m).is_empty(), "10:15:00 is before 10:16: {m:?}");
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "StudyDate": "-20251231", "PatientID": ""}));
    assert!(chinese(&m).is_empty(), "{m:?}");
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC-g*", "PatientID": ""}));
    assert_eq!(ids(&m), set(&["CN-gbk", "CN-gb18030"]));
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "ModalitiesInStudy": "MR\\CT", "PatientID": "CN-ideo"}));
    assert_eq!(ids(&m), set(&["CN-ideo"]));
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "ModalitiesInStudy": "MR", "PatientID": "CN-ideo"}));
    assert!(m.is_empty());

    // UID lists.
    let list = format!("{}\\{}", w.uids["CN-utf8"], w.uids["CN-alpha"]);
    let (_, m) = study(json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": list, "PatientID": ""}));
    assert_eq!(ids(&m), set(&["CN-utf8", "CN-alpha"]));

    // SERIES and IMAGE levels under a study.
    let (st, m) = study(
        json!({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": w.uids["CN-utf8"],
        "SeriesInstanceUID": "", "Modality": "", "NumberOfSeriesRelatedInstances": "", "SOPInstanceUID": ""}),
    );
    assert_eq!(st, Some(0));
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(
        (
            m[0]["Modality"].as_str(),
            m[0]["NumberOfSeriesRelatedInstances"].as_str()
        ),
        (Some("CT"), Some("1"))
    );
    assert_eq!(m[0]["SOPInstanceUID"], "", "a key below the level comes back empty");
    assert_eq!(m[0]["QueryRetrieveLevel"], "SERIES");
    let series = m[0]["SeriesInstanceUID"].as_str().expect("series uid").to_string();
    let (_, m) = study(json!({"QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": series,
        "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}));
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["SOPClassUID"], "1.2.840.10008.5.1.4.1.1.2");
    assert_eq!(m[0]["InstanceNumber"], "1");

    // Patient Root, PATIENT level, with its related counts.
    let (st, m) = find(
        s,
        "CITY_PACS",
        "patient",
        "ISO_IR 192",
        &[],
        json!({"QueryRetrieveLevel": "PATIENT", "PatientID": "CN-*", "PatientName": "", "NumberOfPatientRelatedStudies": ""}),
    );
    assert_eq!(st, Some(0));
    assert_eq!(
        ids(&m),
        set(&["CN-utf8", "CN-iso2022", "CN-gbk", "CN-alpha", "CN-ideo", "CN-gb18030"])
    );
    assert!(m.iter().all(|r| r["NumberOfPatientRelatedStudies"] == "1"), "{m:?}");
    let (st, _) = find(
        s,
        "CITY_PACS",
        "study",
        "ISO_IR 192",
        &[],
        json!({"QueryRetrieveLevel": "PATIENT", "PatientID": ""}),
    );
    assert_eq!(st, Some(0xA900), "Study Root has no PATIENT level");

    // Scope: the county hospital's workstation sees only clinic t02, and
    // asks in GB18030: the answer comes back in GB18030, decoded by pydicom.
    let (_, m) = find(
        s,
        "COUNTY_WS",
        "study",
        "GB18030",
        &[],
        json!({"QueryRetrieveLevel": "STUDY", "PatientName": "王^小东", "PatientID": ""}),
    );
    assert_eq!(ids(&m), set(&["CN-gb18030"]));
    assert_eq!(m[0]["SpecificCharacterSet"], "GB18030");
    assert!(
        m[0]["PatientName"].as_str().is_some_and(|n| n.contains("王^小东")),
        "{m:?}"
    );
    // A clinic's own modality sees its own clinic only.
    let (_, m) = find(
        s,
        "T01_CT",
        "study",
        "ISO_IR 192",
        &[],
        json!({"QueryRetrieveLevel": "STUDY", "PatientID": ""}),
    );
    assert_eq!(
        ids(&m),
        set(&["CN-utf8", "CN-iso2022", "CN-gbk", "CN-alpha", "CN-ideo"])
    );
    let (_, m) = find(
        s,
        "T01_CT",
        "study",
        "ISO_IR 192",
        &[],
        json!({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": w.uids["CN-gb18030"], "SOPInstanceUID": ""}),
    );
    assert!(m.is_empty(), "another clinic's study by its UID: nothing");
    // An AE nobody configured is refused at association.
    let o = run({
        let mut c = s.peer("qr_find.py");
        c.args([
            "--aet",
            "STRANGER",
            "--model",
            "study",
            r#"{"QueryRetrieveLevel": "STUDY"}"#,
        ]);
        c
    });
    assert!(text(&o).contains("association rejected"), "{}", text(&o));

    // Bad keys: a wildcard in a UID, an impossible date.
    let (st, _) = study(json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}));
    assert_eq!(st, Some(0xC000));
    let (st, _) = study(json!({"QueryRetrieveLevel": "STUDY", "StudyDate": "20261301"}));
    assert_eq!(st, Some(0xC000));

    // Every query is audited under the calling AE, without patient data.
    let audit = s.sqlite("SELECT username || ' ' || detail FROM audit WHERE action = 'dicom_find'");
    assert!(audit.contains("CITY_PACS level=STUDY"), "{audit}");
    assert!(!audit.contains("王") && !audit.contains("CN-"), "{audit}");
}

#[test]
fn c_find_is_bounded_and_cancellable_and_dcmtk_reads_it() {
    let w = world();
    let s = &w.s;
    let ct_study = s.sqlite("SELECT study_uid FROM studies WHERE num_instances = 300");
    let images = json!({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": ct_study, "SOPInstanceUID": ""});
    // 300 matches against max_find_results = 250: 250 answers, then A700.
    let (st, m) = find(s, "T02_CT", "study", "ISO_IR 192", &[], images.clone());
    assert_eq!((st, m.len()), (Some(0xA700), 250));
    // A C-CANCEL right behind the request: the SCP stops at its first look.
    let (st, m) = find(s, "T02_CT", "study", "ISO_IR 192", &["--cancel-at-once"], images);
    assert_eq!(st, Some(0xFE00));
    assert!(m.len() < 250, "{} answers after a cancel", m.len());
    // The association is still usable afterwards.
    let (st, m) = find(
        s,
        "T02_CT",
        "study",
        "ISO_IR 192",
        &[],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct_study, "NumberOfStudyRelatedInstances": ""}),
    );
    assert_eq!(st, Some(0));
    assert_eq!(m[0]["NumberOfStudyRelatedInstances"], "300");

    // DCMTK findscu, Study Root, responses extracted to files.
    let out = tempfile::tempdir().expect("tmp");
    let o = run({
        let mut c = s.dcmtk_to("findscu", "CITY_PACS");
        c.args(["-S", "-X", "-od"]).arg(out.path()).args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID=CN-a*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "PatientName",
        ]);
        c
    });
    assert!(o.status.success(), "findscu: {}", text(&o));
    let files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{}", text(&o));
    let dump = text(&run({
        let mut c = dcmtk("dcmdump");
        c.arg(&files[0]);
        c
    }));
    assert!(dump.contains("CN-alpha") && dump.contains("Li^Ming"), "{dump}");
    assert!(dump.contains(&w.uids["CN-alpha"]), "{dump}");
}
