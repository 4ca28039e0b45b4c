//! DICOM ingest against real peers: DCMTK (echoscu, storescu, storescp),
//! pynetdicom, and the medrelay CLI itself.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// Dataset bytes of a Part 10 file (everything after the meta group).
fn dataset_bytes(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[128..132], b"DICM", "{}", path.display());
    let group_len = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
    b[144 + group_len..].to_vec()
}

/// pynetdicom push of the CT series that records each acknowledged UID in
/// `acked` (tests/support/push_acked.py).
fn push_acked(s: &Server, acked: &Path) -> Command {
    let mut c = s.peer("push_acked.py");
    c.args(["--aet", "PUSHER", "--acked"]).arg(acked).arg(ct300());
    c
}

fn acked_count(acked: &Path) -> usize {
    std::fs::read_to_string(acked).map(|t| t.lines().count()).unwrap_or(0)
}

fn ct_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ct300())
        .expect("ct300")
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    assert_eq!(v.len(), 300, "expected 300 CT slices");
    v
}

fn sop_uid_of(path: &Path) -> String {
    let o = run({
        let mut c = Command::new("dcmdump");
        c.args(["-q", "+P", "0008,0018", "-s"]).arg(path);
        c
    });
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    t.split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn echo_from_dcmtk_and_cli_and_called_ae_check() {
    let s = Server::start(ServerOpts::default());
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "MEDRELAY", "127.0.0.1", &s.dicom_port.to_string()]);
        c
    });
    assert!(o.status.success(), "echoscu: {}", text(&o));

    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args(["echo", &s.target()]);
        c
    });
    assert!(o.status.success(), "medrelay echo: {}", text(&o));
    assert!(text(&o).contains("success"));

    // Wrong called AE: rejected with "called AE title not recognized".
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "SOMEONE_ELSE", "127.0.0.1", &s.dicom_port.to_string()]);
        c
    });
    assert!(!o.status.success());
    assert!(
        text(&o).to_lowercase().contains("called ae title not recognized"),
        "{}",
        text(&o)
    );
    assert_eq!(s.metric("medrelay_dicom_echo_total"), 2.0);
    assert!(s.metric("medrelay_dicom_associations_rejected_total") >= 1.0);
}

#[test]
fn calling_ae_allow_list_per_clinic() {
    let cfg = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]
"#;
    let s = Server::start(ServerOpts {
        config_toml: cfg.into(),
        ..Default::default()
    });
    let echo = |aet: &str| {
        run({
            let mut c = dcmtk("echoscu");
            c.args(["-aet", aet, "-aec", "MEDRELAY", "127.0.0.1", &s.dicom_port.to_string()]);
            c
        })
    };
    assert!(echo("T01_CT").status.success());
    let o = echo("INTRUDER");
    assert!(!o.status.success());
    assert!(
        text(&o).to_lowercase().contains("calling ae title not recognized"),
        "{}",
        text(&o)
    );
    // The server keeps serving after a rejection.
    assert!(echo("T01_CT").status.success());
    // A study from the clinic's AE is attributed to that clinic.
    let f = &ct_files()[0];
    let o = run({
        let mut c = s.storescu("T01_CT");
        c.arg(f);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let j = s.get_json("/api/studies?clinic=t01");
    assert_eq!(j["total"], 1);
    assert_eq!(j["studies"][0]["calling_ae"], "T01_CT");
}

#[test]
fn ct_series_with_storescu_then_stable_then_resent_idempotently() {
    let s = Server::start(ServerOpts {
        stable_after_secs: 2.0,
        ..Default::default()
    });
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(["+sd", "-v"]).arg(ct300());
        c
    });
    assert!(o.status.success(), "storescu: {}", text(&o));
    assert_eq!(text(&o).matches("Received Store Response (Success)").count(), 300);
    let files = ct_files();
    let j = s.get_json("/api/studies");
    assert_eq!(j["total"], 1);
    let study = &j["studies"][0];
    let study_uid = study["study_uid"].as_str().expect("uid").to_string();
    assert_eq!(study["num_instances"], 300);
    assert_eq!(study["modalities"], "CT");
    assert_eq!(study["patient_name"], "TEST^CT300");

    // byte-equal datasets for a sample of slices, fetched through the API
    for f in [&files[0], &files[149], &files[299]] {
        let uid = sop_uid_of(f);
        let (code, body) = s.get(&format!("/api/instances/{uid}/file"));
        assert_eq!(code, 200);
        let stored = s.dir.join("fetched.dcm");
        std::fs::write(&stored, body).expect("write");
        assert_eq!(dataset_bytes(&stored), dataset_bytes(f), "dataset of {}", f.display());
    }

    // stability: complete after ~2 s, queued exactly once
    s.wait_for(30, "study completion", || {
        s.sqlite("SELECT status FROM studies") == "complete"
    });
    assert_eq!(s.sqlite("SELECT COUNT(*), MIN(state) FROM worklist"), "1|new");

    // a resend of identical instances is idempotent: success, no new rows;
    // the late arrival re-opens the study, which completes again once.
    let o = run({
        let mut c = s.storescu("CT01");
        c.arg(&files[0]).arg(&files[1]);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "300");
    assert_eq!(s.metric("medrelay_dicom_instances_duplicate_total"), 2.0);

    // zip download has all 300 instances, verified by an independent reader
    let (code, body) = s.get(&format!("/api/studies/{study_uid}/archive.zip"));
    assert_eq!(code, 200);
    let zip = s.dir.join("study.zip");
    std::fs::write(&zip, body).expect("write");
    let o = run({
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(len(z.namelist()))",
        ])
        .arg(&zip);
        c
    });
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "300", "{}", text(&o));

    // the worklist entry survives a restart and is not duplicated by it
    let mut s = s;
    s.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM worklist"), "1");
    assert_eq!(s.get_json("/api/studies?status=complete")["total"], 1);
}

#[test]
fn stability_is_exactly_once_across_a_restart() {
    let mut s = Server::start(ServerOpts {
        stable_after_secs: 3.0,
        ..Default::default()
    });
    let files = ct_files();
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(&files[0..5]);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    // crash before the study is stable; the deadline is durable, so the
    // restarted server completes it, once
    s.kill9();
    std::thread::sleep(Duration::from_secs(4));
    s.restart();
    s.wait_for(30, "completion after restart", || {
        s.sqlite("SELECT status FROM studies") == "complete"
    });
    std::thread::sleep(Duration::from_secs(1));
    s.restart();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.sqlite("SELECT COUNT(*), MAX(completions) FROM worklist"), "1|1");
}

#[test]
fn medrelay_store_to_dcmtk_storescp_and_to_itself() {
    // to DCMTK storescp
    let port = free_port();
    let out = tempfile::tempdir().expect("tmp");
    let mut scp = dcmtk("storescp")
        .args(["-aet", "DCMTK_SCP", "-od"])
        .arg(out.path())
        .arg(port.to_string())
        .spawn()
        .expect("storescp");
    std::thread::sleep(Duration::from_millis(500));
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args([
            "store",
            "--quiet",
            "--parallel",
            "4",
            "--to",
            &format!("DCMTK_SCP@127.0.0.1:{port}"),
        ])
        .arg(ct300());
        c
    });
    let _ = scp.kill();
    let _ = scp.wait();
    assert!(o.status.success(), "medrelay store → storescp: {}", text(&o));
    assert!(text(&o).contains("sent 300 of 300 files"), "{}", text(&o));
    let received: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(received.len(), 300);
    // storescp writes what it received; datasets are byte-equal to the originals
    let by_uid: std::collections::HashMap<String, PathBuf> =
        ct_files().into_iter().map(|p| (sop_uid_of(&p), p)).collect();
    for r in received.iter().take(20) {
        let orig = &by_uid[&sop_uid_of(r)];
        assert_eq!(dataset_bytes(r), dataset_bytes(orig));
    }

    // to medrelay itself, 4 associations in parallel
    let s = Server::start(ServerOpts::default());
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args(["store", "--quiet", "--parallel", "4", "--to", &s.target()])
            .arg(ct300());
        c
    });
    assert!(o.status.success(), "medrelay store → medrelay: {}", text(&o));
    assert_eq!(
        s.sqlite("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM instances"),
        "300|300"
    );
    assert_eq!(s.metric("medrelay_dicom_associations_total"), 4.0);

    // per-file failures are reported, the rest still sent
    let mixed = tempfile::tempdir().expect("tmp");
    std::fs::copy(&ct_files()[0], mixed.path().join("a.dcm")).expect("copy");
    std::fs::write(mixed.path().join("b.dcm"), b"not dicom at all").expect("write");
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args(["store", "--quiet", "--to", &s.target()]).arg(mixed.path());
        c
    });
    assert!(!o.status.success());
    assert!(text(&o).contains("sent 1 of 2 files"), "{}", text(&o));
    assert!(
        text(&o).contains("FAILED") && text(&o).contains("b.dcm"),
        "{}",
        text(&o)
    );
}

#[test]
fn kill9_during_push_loses_no_acknowledged_instance() {
    let mut s = Server::start(ServerOpts::default());
    let acked = s.dir.join("acked.txt");
    let mut child = push_acked(&s, &acked)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("push");
    s.wait_for(120, "100 acknowledged instances", || acked_count(&acked) >= 100);
    s.kill9();
    let _ = child.wait();
    let acked_uids: Vec<String> = std::fs::read_to_string(&acked)
        .expect("acked")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        acked_uids.len() >= 100 && acked_uids.len() < 300,
        "acked {}",
        acked_uids.len()
    );

    s.restart();
    // no partial files: tmp is empty after recovery
    assert_eq!(std::fs::read_dir(s.data_dir.join("tmp")).expect("tmp").count(), 0);
    // every acknowledged instance is indexed, and its file is intact (hash)
    let by_uid: std::collections::HashMap<String, PathBuf> =
        ct_files().into_iter().map(|p| (sop_uid_of(&p), p)).collect();
    for uid in &acked_uids {
        let rows = s.sqlite(&format!("SELECT path FROM instances WHERE sop_instance_uid = '{uid}'"));
        assert!(!rows.is_empty(), "acknowledged {uid} missing after kill -9");
        let stored = stored_path(&s, rows.lines().next().expect("row"));
        assert_eq!(dataset_bytes(&stored), dataset_bytes(&by_uid[uid]), "{uid} corrupted");
    }
    // every indexed file verifies against its recorded SHA-256 (nothing torn)
    // (the index read through `Server::sqlite` and the objects through
    // `stored_path`, so on any backend)
    let indexed = s.sqlite("SELECT path, transfer_syntax, sha256 FROM instances");
    let torn: Vec<&str> = indexed
        .lines()
        .filter(|row| {
            let mut f = row.split('|');
            let (Some(p), Some(ts), Some(h)) = (f.next(), f.next(), f.next()) else {
                return true;
            };
            let b = std::fs::read(stored_path(&s, p)).expect("indexed file");
            let g = u32::from_le_bytes(b[140..144].try_into().expect("group length")) as usize;
            let mut d = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut d, ts.as_bytes());
            sha2::Digest::update(&mut d, b"\0");
            sha2::Digest::update(&mut d, &b[144 + g..]);
            hex::encode(sha2::Digest::finalize(d)) != h
        })
        .collect();
    assert!(torn.is_empty(), "files not matching their hash: {torn:?}");

    // resume: the push completes, each instance exactly once
    let o = run({
        let mut c = push_acked(&s, &acked);
        c.arg("--skip-acked");
        c
    });
    assert!(o.status.success(), "resume: {}", text(&o));
    assert!(text(&o).contains("acked 300 of 300"), "{}", text(&o));
    assert_eq!(
        s.sqlite("SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances"),
        "300|300"
    );
    assert_eq!(s.sqlite("SELECT num_instances FROM studies"), "300");
}

#[test]
fn same_uid_different_content_is_kept_as_a_version_with_a_warning() {
    let s = Server::start(ServerOpts::default());
    let orig = ct_files()[10].clone();
    let changed = s.dir.join("changed.dcm");
    let o = run({
        let mut c = Command::new(python());
        c.args(["-c", "import pydicom,sys\nds=pydicom.dcmread(sys.argv[1])\nds.SeriesDescription='CORRECTED'\nds.save_as(sys.argv[2])"])
            .arg(&orig)
            .arg(&changed);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    for f in [&orig, &changed] {
        let o = run({
            let mut c = s.storescu("CT01");
            c.arg("-v").arg(f);
            c
        });
        assert!(o.status.success(), "{}", text(&o));
    }
    let uid = sop_uid_of(&orig);
    let j = s.get_json(&format!("/api/instances/{uid}"));
    assert_eq!(j["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(j["instance"]["version"], 2);
    assert_eq!(s.metric("medrelay_dicom_instances_new_version_total"), 1.0);
    // both versions downloadable, each byte-equal to what was sent
    for (v, f) in [(1, &orig), (2, &changed)] {
        let (code, body) = s.get(&format!("/api/instances/{uid}/file?version={v}"));
        assert_eq!(code, 200);
        let p = s.dir.join(format!("v{v}.dcm"));
        std::fs::write(&p, body).expect("write");
        assert_eq!(dataset_bytes(&p), dataset_bytes(f));
    }
    // the study counts the instance once
    assert_eq!(s.sqlite("SELECT num_instances FROM studies"), "1");
}

#[test]
fn sigterm_lets_the_inflight_push_finish_and_exits_cleanly() {
    let mut s = Server::start(ServerOpts::default());
    let acked = s.dir.join("acked.txt");
    let push = push_acked(&s, &acked)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("push");
    s.wait_for(60, "push under way", || acked_count(&acked) >= 20);
    assert!(
        s.terminate(),
        "medrelay did not exit cleanly on SIGTERM; log:\n{}",
        s.log()
    );
    let out = push.wait_with_output().expect("push");
    // the association in flight was allowed to complete
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("acked 300 of 300"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // new associations are refused after shutdown began; the data is all there
    s.restart();
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "300");
}

#[test]
fn dicom_tls_with_dcmtk() {
    let tls_port = free_port();
    let cfg = format!("[dicom]\ntls_listen = \"127.0.0.1:{tls_port}\"\n");
    let s = Server::start(ServerOpts {
        config_toml: cfg,
        ..Default::default()
    });
    let o = run({
        let mut c = dcmtk("storescu");
        // anonymous TLS client, verifying our certificate against the generated CA file
        c.args(["+tla", "+cf"])
            .arg(s.dir.join("certs/medrelay.crt"))
            .args([
                "-aet",
                "TLSCLIENT",
                "-aec",
                "MEDRELAY",
                "127.0.0.1",
                &tls_port.to_string(),
            ])
            .arg(ct300().join("CT000001.dcm"));
        c
    });
    assert!(o.status.success(), "storescu over TLS: {}", text(&o));
    assert_eq!(s.sqlite("SELECT calling_ae FROM instances"), "TLSCLIENT");
    // plain DICOM on the TLS port fails cleanly; the server keeps serving
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "MEDRELAY", "127.0.0.1", &tls_port.to_string()]);
        c
    });
    assert!(!o.status.success());
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args(["+tla", "-ic", "-aec", "MEDRELAY", "127.0.0.1", &tls_port.to_string()]);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
}

/// Memory stays bounded whatever the instance size: receive a 512 MB
/// multi-frame instance and check the server's peak RSS.
#[test]
fn large_instance_is_streamed_with_bounded_memory() {
    let s = Server::start(ServerOpts::default());
    let big = s.dir.join("big.dcm");
    gen_big(&big, 512);
    let o = run({
        let mut c = s.storescu("CT01");
        c.arg(&big);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let stored = s.sqlite("SELECT path FROM instances");
    assert_eq!(dataset_bytes(&stored_path(&s, &stored)), dataset_bytes(&big));
    let pid = s.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        hwm_kb < 128 * 1024,
        "peak RSS {hwm_kb} kB while receiving a 512 MB instance"
    );
}

/// A Varian-style RT Structure Set whose UIDs have components with leading
/// zeros (`1.2.246.352.91.0000217...`): not PS3.5-conformant, but common
/// from real devices and accepted by DCMTK, Orthanc and pydicom. Sent by
/// storescu and by pynetdicom, each is stored under its UIDs exactly as
/// received, indexed, and downloaded byte-exact.
#[test]
fn uids_with_leading_zero_components_are_stored_as_received() {
    let s = Server::start(ServerOpts::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let study = "1.2.246.352.91.0000217.20240101.1";
    let series = "1.2.246.352.91.0000217.20240101.1.01";
    let generator = r#"
import sys
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
study, series, sop, out = sys.argv[1:5]
meta = FileMetaDataset()
meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
meta.MediaStorageSOPInstanceUID = sop
meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds = Dataset()
ds.file_meta = meta
ds.SOPClassUID = meta.MediaStorageSOPClassUID
ds.SOPInstanceUID = sop
ds.StudyInstanceUID = study
ds.SeriesInstanceUID = series
ds.FrameOfReferenceUID = "1.2.246.352.91.0000217.20240101.2"
ds.Modality = "RTSTRUCT"
ds.PatientName = "RT^PLAN"
ds.PatientID = "RT0001"
ds.StudyDate = "20240101"
ds.StructureSetLabel = "RS"
roi = Dataset()
roi.ROINumber = 1
roi.ROIName = "PTV"
roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
ds.StructureSetROISequence = Sequence([roi])
ds.save_as(out, enforce_file_format=True)
"#;
    let make = |sop: &str, name: &str| {
        let out = tmp.path().join(name);
        let o = run({
            let mut c = Command::new(python());
            c.args(["-c", generator, study, series, sop]).arg(&out);
            c
        });
        assert!(o.status.success(), "{}", text(&o));
        out
    };
    let by_dcmtk = (
        "1.2.246.352.91.0000217.20240101.001",
        make("1.2.246.352.91.0000217.20240101.001", "a.dcm"),
    );
    let by_pynetdicom = (
        "1.2.246.352.91.0000217.20240101.002",
        make("1.2.246.352.91.0000217.20240101.002", "b.dcm"),
    );

    let o = run({
        let mut c = s.storescu("VARIAN");
        c.arg("-v").arg(&by_dcmtk.1);
        c
    });
    assert!(
        o.status.success() && text(&o).contains("Received Store Response (Success)"),
        "storescu: {}",
        text(&o)
    );
    let acked = tmp.path().join("acked.txt");
    let o = run({
        let mut c = s.peer("push_acked.py");
        c.args(["--aet", "VARIAN", "--strict", "--acked"])
            .arg(&acked)
            .arg(&by_pynetdicom.1);
        c
    });
    assert!(o.status.success(), "pynetdicom: {}", text(&o));
    assert_eq!(std::fs::read_to_string(&acked).expect("acked").trim(), by_pynetdicom.0);

    // Indexed under the UIDs as received (not normalised).
    assert_eq!(
        s.sqlite("SELECT study_uid, num_series, num_instances, modalities FROM studies"),
        format!("{study}|1|2|RTSTRUCT")
    );
    assert_eq!(s.sqlite("SELECT series_uid FROM series"), series);
    for (sop, file) in [&by_dcmtk, &by_pynetdicom] {
        assert_eq!(
            s.sqlite(&format!(
                "SELECT study_uid, series_uid FROM instances WHERE sop_instance_uid = '{sop}'"
            )),
            format!("{study}|{series}")
        );
        // Downloadable through the API, the dataset byte for byte.
        let (code, body) = s.get(&format!("/api/instances/{sop}/file"));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let served = tmp.path().join("served.dcm");
        std::fs::write(&served, &body).expect("write");
        assert!(
            dataset_bytes(&served) == dataset_bytes(file),
            "{sop}: served dataset differs"
        );
    }
    let (code, body) = s.get(&format!("/api/studies/{study}"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}
