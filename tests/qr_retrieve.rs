//! C-MOVE and C-GET SCP (issue 19) against real peers: DCMTK movescu into
//! a bit-preserving storescp and getscu, pynetdicom for the pending counts,
//! C-CANCEL, re-encoding and failures. Retrieved datasets are checked byte
//! for byte against the digest the index keeps of what was stored.
//!
//! Run: `cargo test --test qr_retrieve` (after `bash tests/support/setup.sh`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// DCMTK storescp as the C-MOVE destination ARCHIVE, writing what it
/// receives bit-preserving; killed when dropped.
struct Archive {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Archive {
    fn start() -> Archive {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let child = dcmtk("storescp")
            .args(["-aet", "ARCHIVE", "+B", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Archive { child, dir, port }
    }

    fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(archive_port: u16, dead_port: u16) -> String {
    format!(
        r#"
[[dicom.destination]]
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {archive_port}

[[dicom.destination]]
ae_title = "NOWHERE"
host = "127.0.0.1"
port = {dead_port}

[[clinic]]
id = "t01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t02"
ae_titles = ["T02_CT"]

[[hospital]]
id = "city"
serves = ["t01", "t02"]
ae_titles = ["CITY_PACS"]
"#
    )
}

/// The index's digest of every stored instance, by SOP Instance UID.
fn stored_digests(s: &Server) -> HashMap<String, String> {
    s.sqlite("SELECT sop_instance_uid || '=' || sha256 FROM instances")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The same digest of every Part 10 file in `dir`.
fn received_digests(dir: &Path) -> HashMap<String, String> {
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("dataset_digest.py")).arg(dir);
        c
    });
    assert!(o.status.success(), "dataset_digest.py: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("digests")
}

fn retrieve(s: &Server, aet: &str, how: &[&str], keys: Value) -> Value {
    let o = run({
        let mut c = s.peer("qr_retrieve.py");
        c.args(["--aet", aet]).args(how).arg(keys.to_string());
        c
    });
    assert!(o.status.success(), "qr_retrieve.py: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn nema(name: &str) -> PathBuf {
    corpus_nema().join(name)
}

struct World {
    s: Server,
    archive: Archive,
    ct_study: String,
}

fn world() -> World {
    let archive = Archive::start();
    let s = Server::start(ServerOpts {
        config_toml: config(archive.port, free_port()),
        stable_after_secs: 1.0,
        ..Default::default()
    });
    let o = run({
        let mut c = s.storescu("T02_CT");
        c.args(["+sd", "+r"]).arg(ct300());
        c
    });
    assert!(o.status.success(), "storescu ct300: {}", text(&o));
    // A JPEG 2000 MR and a big-endian US from clinic t01, each sent in
    // its own transfer syntax (stored as sent).
    for (f, propose) in [("MR2_J2KR.dcm", "-xv"), ("OBXXXX1A_expb.dcm", "-xb")] {
        let o = run({
            let mut c = s.storescu("T01_CT");
            c.arg(propose).arg(nema(f));
            c
        });
        assert!(o.status.success(), "storescu {f}: {}", text(&o));
    }
    s.wait_for(60, "302 instances indexed", || {
        s.sqlite("SELECT COUNT(*) FROM instances") == "302"
    });
    let ct_study = s.sqlite("SELECT study_uid FROM studies WHERE num_instances = 300");
    World { s, archive, ct_study }
}

#[test]
fn c_move_sends_a_study_byte_identical_with_counts_and_final_status_last() {
    let w = world();
    let s = &w.s;
    // DCMTK movescu from the hospital PACS, Study Root.
    let o = run({
        let mut c = s.dcmtk_to("movescu", "CITY_PACS");
        c.args(["-S", "-aem", "ARCHIVE", "-k", "QueryRetrieveLevel=STUDY", "-k"])
            .arg(format!("StudyInstanceUID={}", w.ct_study));
        c
    });
    assert!(o.status.success(), "movescu: {}", text(&o));
    let got = received_digests(w.archive.dir.path());
    assert_eq!(got.len(), 300, "{}", text(&o));
    let stored = stored_digests(s);
    for (sop, d) in &got {
        assert_eq!(stored.get(sop), Some(d), "{sop} differs from what was stored");
    }

    // pynetdicom: one pending response per sub-operation, counts moving
    // together, the final status last.
    let r = retrieve(
        s,
        "CITY_PACS",
        &["--move", "ARCHIVE"],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": w.ct_study}),
    );
    let rs = r["responses"].as_array().expect("responses");
    assert_eq!(rs.len(), 300, "299 pending and one final");
    for (n, p) in rs[..299].iter().enumerate() {
        assert_eq!(p["status"], 0xFF00);
        assert_eq!(
            (p["remaining"].as_u64(), p["completed"].as_u64()),
            (Some(299 - n as u64), Some(n as u64 + 1))
        );
        assert_eq!((p["failed"].as_u64(), p["warning"].as_u64()), (Some(0), Some(0)));
    }
    let last = &rs[299];
    assert_eq!(
        (
            last["status"].as_u64(),
            last["completed"].as_u64(),
            last["failed"].as_u64()
        ),
        (Some(0), Some(300), Some(0))
    );

    // C-CANCEL after the 5th pending: the final status says cancelled and
    // not every instance went.
    let r = retrieve(
        s,
        "CITY_PACS",
        &["--move", "ARCHIVE", "--cancel-after", "5"],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": w.ct_study}),
    );
    let last = r["responses"]
        .as_array()
        .and_then(|v| v.last().cloned())
        .expect("final");
    assert_eq!(last["status"], 0xFE00, "{r}");
    assert!(last["completed"].as_u64().is_some_and(|c| (5..300).contains(&c)), "{r}");

    // Scope: clinic t01's modality cannot retrieve clinic t02's study.
    let before = w.archive.count();
    let r = retrieve(
        s,
        "T01_CT",
        &["--move", "ARCHIVE"],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": w.ct_study}),
    );
    let last = r["responses"]
        .as_array()
        .and_then(|v| v.last().cloned())
        .expect("final");
    assert_eq!(
        (last["status"].as_u64(), last["completed"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(w.archive.count(), before);

    // A destination nobody configured; a configured one that is down.
    let r = retrieve(
        s,
        "CITY_PACS",
        &["--move", "ELSEWHERE"],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": w.ct_study}),
    );
    assert_eq!(r["responses"][0]["status"], 0xA801, "{r}");
    let mr = s.sqlite("SELECT study_uid FROM instances WHERE sop_class_uid = '1.2.840.10008.5.1.4.1.1.4'");
    let r = retrieve(
        s,
        "CITY_PACS",
        &["--move", "NOWHERE"],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": mr}),
    );
    let last = r["responses"]
        .as_array()
        .and_then(|v| v.last().cloned())
        .expect("final");
    assert_eq!(
        (last["status"].as_u64(), last["failed"].as_u64()),
        (Some(0xA702), Some(1)),
        "{r}"
    );
    assert_eq!(r["failed_uids"].as_array().map(Vec::len), Some(1), "{r}");

    let audit = s.sqlite("SELECT username || ' ' || detail FROM audit WHERE action = 'dicom_move'");
    assert!(
        audit.contains("CITY_PACS level=STUDY to=ARCHIVE instances=300 completed=300"),
        "{audit}"
    );
}

#[test]
fn c_get_returns_a_study_byte_identical_and_re_encodes_only_native_data() {
    let w = world();
    let s = &w.s;
    // DCMTK getscu, Study Root, bit-preserving into a directory.
    let out = tempfile::tempdir().expect("tmp");
    let o = run({
        let mut c = s.dcmtk_to("getscu", "CITY_PACS");
        c.args(["-S", "+B", "-od"])
            .arg(out.path())
            .args(["-k", "QueryRetrieveLevel=STUDY", "-k"])
            .arg(format!("StudyInstanceUID={}", w.ct_study));
        c
    });
    assert!(o.status.success(), "getscu: {}", text(&o));
    let got = received_digests(out.path());
    assert_eq!(got.len(), 300, "{}", text(&o));
    let stored = stored_digests(s);
    for (sop, d) in &got {
        assert_eq!(stored.get(sop), Some(d), "{sop} differs from what was stored");
    }

    // A requester that takes uncompressed data only: the big-endian US is
    // re-encoded and arrives; the JPEG 2000 MR is not decompressed, so its
    // sub-operation fails and is listed.
    let uid = |class: &str| {
        s.sqlite(&format!(
            "SELECT sop_instance_uid FROM instances WHERE sop_class_uid = '{class}'"
        ))
    };
    let (mr, us) = (uid("1.2.840.10008.5.1.4.1.1.4"), uid("1.2.840.10008.5.1.4.1.1.6.1"));
    let dir = tempfile::tempdir().expect("tmp");
    let r = retrieve(
        s,
        "CITY_PACS",
        &["--get", &dir.path().display().to_string()],
        json!({"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": [mr, us]}),
    );
    let last = r["responses"]
        .as_array()
        .and_then(|v| v.last().cloned())
        .expect("final");
    assert_eq!(
        (
            last["status"].as_u64(),
            last["completed"].as_u64(),
            last["failed"].as_u64()
        ),
        (Some(0xB000), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["failed_uids"], json!([mr]));
    assert_eq!(r["received"], 1);
    let o = run({
        let mut c = Command::new(python());
        c.args([
            "-c",
            "import pydicom,sys; d=pydicom.dcmread(sys.argv[1]); print(d.file_meta.TransferSyntaxUID, d.Rows, d.Columns, len(d.PixelData))",
        ])
        .arg(dir.path().join(format!("{us}.dcm")));
        c
    });
    assert_eq!(text(&o).trim(), "1.2.840.10008.1.2.1 600 800 480000", "{}", text(&o));

    // Scope holds for C-GET too.
    let dir = tempfile::tempdir().expect("tmp");
    let r = retrieve(
        s,
        "T01_CT",
        &["--get", &dir.path().display().to_string()],
        json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": w.ct_study}),
    );
    assert_eq!(r["received"], 0, "{r}");
}
