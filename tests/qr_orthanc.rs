//! Query/Retrieve with Orthanc (Debian 1.10) both ways: Orthanc queries
//! medrelay (C-FIND) and retrieves a study into itself (C-MOVE, medrelay
//! as SCP); medrelay's `find` and `get` commands query and fetch from
//! Orthanc (medrelay as SCU). And Orthanc's DICOMweb client (the
//! orthanc-dicomweb plugin) searches medrelay's QIDO-RS and retrieves a
//! study over WADO-RS with an API token.
//!
//! Run: `cargo test --test qr_orthanc` (after `bash tests/support/setup.sh`).

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::orthanc::{DICOMWEB_PLUGIN, Orthanc};
use support::*;

#[test]
fn orthanc_finds_and_moves_from_medrelay_and_medrelay_finds_and_gets_from_orthanc() {
    // Orthanc knows medrelay as a modality; medrelay knows Orthanc's AE as
    // a hospital PACS (query and retrieve only) and as a move destination.
    let orthanc_dicom = free_port();
    let config = format!(
        r#"
[[dicom.destination]]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {}

[[clinic]]
id = "t01"
ae_titles = ["T01_CT"]

[[hospital]]
id = "city"
serves = ["t01"]
ae_titles = ["ORTHANC"]
"#,
        orthanc_dicom
    );
    let s = Server::start(ServerOpts {
        config_toml: config,
        stable_after_secs: 1.0,
        ..Default::default()
    });
    let orthanc = Orthanc::start_on("ORTHANC", orthanc_dicom, &[("medrelay", "MEDRELAY", s.dicom_port)]);
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(["+sd", "+r"]).arg(ct300());
        c
    });
    assert!(o.status.success(), "storescu: {}", text(&o));
    s.wait_for(60, "300 instances indexed", || {
        s.sqlite("SELECT COUNT(*) FROM instances") == "300"
    });
    let study = s.sqlite("SELECT study_uid FROM studies");

    // Orthanc's C-FIND against medrelay.
    let q = orthanc
        .post(
            "/modalities/medrelay/query",
            &json!({"Level": "Study", "Query": {"StudyInstanceUID": "", "PatientID": "*", "NumberOfStudyRelatedInstances": ""}}),
        )
        .expect("query");
    let id = q["ID"].as_str().expect("query id").to_string();
    let answers = orthanc.get(&format!("/queries/{id}/answers?expand")).expect("answers");
    let answers = answers.as_array().expect("list");
    assert_eq!(answers.len(), 1, "{answers:?}");
    let content = orthanc
        .get(&format!("/queries/{id}/answers/0/content?simplify"))
        .expect("content");
    assert_eq!(content["StudyInstanceUID"], study.as_str());
    assert_eq!(content["NumberOfStudyRelatedInstances"], "300");

    // Orthanc's C-MOVE of the study into itself.
    let r = orthanc
        .post(
            &format!("/queries/{id}/answers/0/retrieve"),
            &json!({"TargetAet": "ORTHANC", "Synchronous": true}),
        )
        .expect("retrieve");
    let stats = orthanc.get("/statistics").expect("statistics");
    assert_eq!(stats["CountInstances"], 300, "{r} {stats}");

    // medrelay as SCU: find in Orthanc, then get a series from it.
    let target = format!("ORTHANC@127.0.0.1:{}", orthanc.dicom_port);
    let medrelay = |args: &[&str]| {
        run({
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_medrelay"));
            c.args(args);
            c
        })
    };
    let out = medrelay(&[
        "find",
        &target,
        "--aet",
        "MEDRELAY",
        "--json",
        "-k",
        &format!("StudyInstanceUID={study}"),
        "-k",
        "PatientID",
        "-k",
        "NumberOfStudyRelatedSeries",
    ]);
    assert!(out.status.success(), "medrelay find: {}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(lines[0]["StudyInstanceUID"], study.as_str());
    let dir = tempfile::tempdir().expect("tmp");
    let out = medrelay(&[
        "get",
        &target,
        "--aet",
        "MEDRELAY",
        "--out",
        &dir.path().display().to_string(),
        "-k",
        &format!("StudyInstanceUID={study}"),
    ]);
    assert!(out.status.success(), "medrelay get: {}", text(&out));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 300, "{}", text(&out));
    // The files are whole Part 10 instances pydicom reads.
    let o = run({
        let mut c = std::process::Command::new(python());
        c.args([
            "-c",
            "import pydicom,sys; d=pydicom.dcmread(sys.argv[1]); print(d.Modality, d.Rows, len(d.PixelData) > 0)",
        ])
        .arg(&files[0]);
        c
    });
    assert_eq!(text(&o).trim(), "CT 512 True", "{}", text(&o));
}

#[test]
fn orthancs_dicomweb_client_searches_and_retrieves_a_study_from_medrelay() {
    let s = Server::start(ServerOpts {
        config_toml: ONE_HOSPITAL.into(),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.args(["+sd", "+r"]).arg(ct300());
        c
    });
    assert!(o.status.success(), "storescu: {}", text(&o));
    s.wait_for(60, "300 instances indexed", || {
        s.sqlite("SELECT COUNT(*) FROM instances") == "300"
    });
    let study = s.sqlite("SELECT study_uid FROM studies");
    let o = s.cli(&["api-token", "add", "orthanc", "--scope", "hospital:city"]);
    assert!(o.status.success(), "api-token add: {}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let orthanc = Orthanc::start_with(
        "ORTHANC",
        free_port(),
        &[],
        json!({
            "Plugins": [DICOMWEB_PLUGIN],
            "HttpsVerifyPeers": false,
            "DicomWeb": {
                "Enable": true,
                "Root": "/dicom-web/",
                "Servers": {
                    "medrelay": {
                        "Url": format!("https://127.0.0.1:{}/dicom-web", s.http_port),
                        "HttpHeaders": {"Authorization": format!("Bearer {token}")}
                    }
                }
            }
        }),
    );
    // QIDO-RS through Orthanc's client.
    let found = orthanc
        .post(
            "/dicom-web/servers/medrelay/get",
            &json!({"Uri": "/studies", "Arguments": {"StudyInstanceUID": study, "includefield": "NumberOfStudyRelatedInstances"}}),
        )
        .unwrap_or_else(|e| {
            panic!(
                "QIDO through Orthanc: {e}; Orthanc log:\n{}",
                orthanc.log()
            )
        });
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["00201208"]["Value"][0], 300, "{found}");
    // WADO-RS retrieve into Orthanc.
    let r = orthanc
        .post(
            "/dicom-web/servers/medrelay/retrieve",
            &json!({"Resources": [{"Study": study}]}),
        )
        .expect("retrieve through Orthanc");
    let stats = orthanc.get("/statistics").expect("statistics");
    assert_eq!(stats["CountInstances"], 300, "{r} {stats}");
    let studies = orthanc.get("/studies?expand").expect("studies");
    assert_eq!(
        studies[0]["MainDicomTags"]["StudyInstanceUID"],
        study.as_str(),
        "{studies}"
    );
}
