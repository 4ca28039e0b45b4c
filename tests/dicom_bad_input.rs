//! Bad input: malformed PDUs, lying lengths, truncated and non-DICOM
//! datasets, SOP class mismatches, unknown contexts, idle peers, too many
//! associations, a disk that fills up. Each gets the right status or abort,
//! the server keeps serving, nothing partial is indexed.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn bad_peer(s: &Server, case: &str, extra: &[&str]) -> serde_json::Value {
    let o = run({
        let mut c = s.peer("bad_peer.py");
        c.arg(case).arg("--file").arg(ct300().join("CT000001.dcm")).args(extra);
        c
    });
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("bad_peer {case}: {}", text(&o)))
}

fn echo_ok(s: &Server) -> bool {
    run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", &s.ae_title, "127.0.0.1", &s.dicom_port.to_string()]);
        c
    })
    .status
    .success()
}

#[test]
fn malformed_pdus_and_datasets_get_the_right_answer_and_nothing_is_indexed() {
    let s = Server::start(ServerOpts::default());

    let r = bad_peer(&s, "garbage", &[]);
    assert!(matches!(r["result"].as_str(), Some("abort") | Some("closed")), "{r}");

    for variant in ["huge", "short", "pdv-zero"] {
        let r = bad_peer(&s, "bad-pdu-length", &["--variant", variant]);
        assert_eq!(r["result"], "abort", "bad-pdu-length {variant}: {r}");
        assert_eq!(r["detail"]["closed"], true, "{r}");
    }

    let r = bad_peer(&s, "unknown-pdu-type", &[]);
    assert_eq!(r["result"], "abort", "{r}");
    assert_eq!(r["detail"]["abort_reason_str"], "unrecognized-PDU", "{r}");

    let r = bad_peer(&s, "truncated-dataset", &[]);
    assert_eq!(r["result"], "rsp", "{r}");
    assert_eq!(r["detail"]["status"], "0xC000", "{r}");
    assert!(
        r["detail"]["error_comment"]
            .as_str()
            .unwrap_or("")
            .contains("truncated"),
        "{r}"
    );
    assert_eq!(
        r["detail"]["released"], true,
        "association stays usable after a failed store: {r}"
    );

    let r = bad_peer(&s, "not-dicom", &[]);
    assert_eq!(r["detail"]["status"], "0xC000", "{r}");

    let r = bad_peer(&s, "sop-mismatch", &[]);
    assert_eq!(
        r["detail"]["status"], "0x0122",
        "SOP class differs from the context's: {r}"
    );

    for variant in ["rejected", "unproposed"] {
        let r = bad_peer(&s, "pc-not-accepted", &["--variant", variant]);
        assert_eq!(r["detail"]["status"], "0x0122", "{variant}: {r}");
    }

    // A CT image without Pixel Data does not match its SOP class: 0xA900.
    let lying = s.dir.join("lying.dcm");
    let o = run({
        let mut c = Command::new(python());
        c.args([
            "-c",
            "import pydicom,sys\nds=pydicom.dcmread(sys.argv[1])\ndel ds.PixelData\nds.save_as(sys.argv[2], enforce_file_format=True)",
        ])
        .arg(ct300().join("CT000002.dcm"))
        .arg(&lying);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let o = run({
        let mut c = s.storescu("LIAR");
        c.arg("-v").arg(&lying);
        c
    });
    assert!(text(&o).contains("Error: DataSetDoesNotMatchSOPClass"), "{}", text(&o));

    // The server kept serving throughout, and nothing partial was indexed.
    assert!(echo_ok(&s));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "0");
    assert_eq!(std::fs::read_dir(s.data_dir.join("tmp")).expect("tmp").count(), 0);
    assert!(s.metric("medrelay_dicom_store_failures_invalid_total") >= 3.0);
    assert!(s.metric("medrelay_dicom_associations_aborted_total") >= 4.0);

    // ...and a good instance still goes through.
    let o = run({
        let mut c = s.storescu("GOOD");
        c.arg(ct300().join("CT000003.dcm"));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "1");
}

#[test]
fn idle_peers_time_out_and_the_association_limit_rejects_transiently() {
    let cfg = "[dicom]\nidle_timeout_secs = 2\nmax_associations = 2\n";
    let s = Server::start(ServerOpts {
        config_toml: cfg.into(),
        ..Default::default()
    });

    let r = bad_peer(&s, "hang", &["--wait", "10"]);
    assert_eq!(r["result"], "abort", "idle association must be aborted: {r}");
    let secs = r["detail"]["seconds"].as_f64().unwrap_or(0.0);
    assert!(secs >= 1.5, "aborted after {secs}s, before the idle timeout");

    // Two idle associations (of two AEs: each may hold one of the two
    // slots) fill the limit; a third is rejected transiently.
    let hang = |aet: &str| {
        s.peer("bad_peer.py")
            .args(["hang", "--wait", "10", "--aet", aet])
            .stdout(Stdio::null())
            .spawn()
            .expect("hang")
    };
    let mut a = hang("IDLE1");
    let mut b = hang("IDLE2");
    s.wait_for(10, "two open associations", || {
        s.metric("medrelay_dicom_associations_active") == 2.0
    });
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", &s.ae_title, "127.0.0.1", &s.dicom_port.to_string()]);
        c
    });
    assert!(!o.status.success());
    let t = text(&o).to_lowercase();
    assert!(t.contains("local limit exceeded") && t.contains("transient"), "{t}");
    let _ = a.wait();
    let _ = b.wait();
    // once the idle ones are gone, service resumes
    s.wait_for(10, "slots freed", || {
        s.metric("medrelay_dicom_associations_active") == 0.0
    });
    assert!(echo_ok(&s));
}

/// A small tmpfs as the data directory: the disk fills mid-push. Needs root
/// (CI and the dev machines run as root).
#[test]
fn full_disk_answers_out_of_resources_and_keeps_serving() {
    if storage_is_s3() {
        // The instances do not go to this disk on S3 (only the spool and
        // the index do); the store's own refusals are in
        // blob_backends::s3_stopped_mid_push_answers_out_of_resources_….
        eprintln!("a full local disk is a file-backend test: not run with MEDRELAY_TEST_STORAGE=s3");
        return;
    }
    let mnt = tempfile::tempdir().expect("tmp");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.path().to_path_buf());

    let data = mnt.path().join("data");
    let s = Server::start(ServerOpts {
        data_dir: Some(data.clone()),
        min_free_bytes: 0,
        ..Default::default()
    });
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(["+sd", "-v"]).arg(ct300());
        c
    });
    let t = text(&o);
    let ok = t.matches("Received Store Response (Success)").count();
    assert!(ok > 5 && ok < 60, "a 24 MB disk holds some slices, not all: {ok}\n{t}");
    assert!(t.contains("OutOfResources"), "{t}");
    assert!(s.metric("medrelay_dicom_store_failures_resources_total") >= 1.0);

    // nothing half-written: no temp files, every indexed file complete
    assert_eq!(std::fs::read_dir(data.join("tmp")).expect("tmp").count(), 0);
    let indexed: usize = s.sqlite("SELECT COUNT(*) FROM instances").parse().expect("n");
    assert_eq!(indexed, ok, "acknowledged == indexed");
    for p in s.sqlite("SELECT path FROM instances").lines() {
        let len = std::fs::metadata(data.join(p)).expect("file").len();
        assert!(len > 525_000, "{p} is {len} bytes");
    }
    assert!(echo_ok(&s), "still serving on a full disk");

    // With a reserve configured, refusal happens before any byte is written.
    drop(s);
    let s = Server::start(ServerOpts {
        data_dir: Some(data.clone()),
        min_free_bytes: 64 << 20,
        ..Default::default()
    });
    let o = run({
        let mut c = s.storescu("CT01");
        c.arg("-v").arg(ct300().join("CT000300.dcm"));
        c
    });
    assert!(text(&o).contains("OutOfResources"), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_dir(data.join("tmp")).expect("tmp").count(), 0);
}

/// One calling AE opening more associations than its share (raw sockets
/// from bad_peer.py and DCMTK's echoscu) is rejected with A-ASSOCIATE-RJ
/// transient "local limit exceeded", while another AE still gets in and
/// stores; the share is a quarter of max_associations by default.
#[test]
fn one_calling_ae_cannot_take_every_association_slot() {
    let s = Server::start(ServerOpts {
        config_toml: "[dicom]\nmax_associations = 8\nidle_timeout_secs = 30\n".into(),
        ..Default::default()
    });
    let hang = |aet: &str| {
        s.peer("bad_peer.py")
            .args(["hang", "--wait", "20", "--aet", aet])
            .stdout(Stdio::null())
            .spawn()
            .expect("hang")
    };
    let mut hogs = vec![hang("HOG"), hang("HOG")];
    s.wait_for(10, "two associations of HOG", || {
        s.metric("medrelay_dicom_associations_active") == 2.0
    });
    // A third of HOG's: refused, transient, local limit exceeded.
    let r = bad_peer(&s, "hang", &["--aet", "HOG", "--wait", "2"]);
    assert_eq!(r["detail"]["server"], "reject", "{r}");
    assert_eq!(
        (
            &r["detail"]["rj_result"],
            &r["detail"]["rj_source"],
            &r["detail"]["rj_reason"]
        ),
        (&2.into(), &3.into(), &2.into()),
        "transient, service provider (presentation), local limit exceeded: {r}"
    );
    let o = run(s.echoscu("HOG"));
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o).to_lowercase();
    assert!(t.contains("local limit exceeded") && t.contains("transient"), "{t}");
    // Another AE is not affected: it echoes and stores.
    let o = run(s.echoscu("CT01"));
    assert!(o.status.success(), "{}", text(&o));
    let o = run({
        let mut c = s.storescu("CT01");
        c.arg(ct300().join("CT000001.dcm"));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "1");
    // Once HOG lets go, it gets in again.
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    s.wait_for(10, "HOG's slots freed", || {
        s.metric("medrelay_dicom_associations_active") == 0.0
    });
    let o = run(s.echoscu("HOG"));
    assert!(o.status.success(), "{}", text(&o));
}

/// Peers that hold a connection without making progress are cut after a
/// bounded time and never keep a slot: one that connects and sends nothing
/// (plain and TLS port), one that trickles its association request a byte
/// at a time (slowly, or fast enough to get past the calling AE), and one
/// that trickles a dataset in tiny but complete PDUs, each well within the
/// idle timeout.
#[test]
fn silent_and_trickling_peers_are_cut_and_free_their_slots() {
    let tls_port = free_port();
    let s = Server::start(ServerOpts {
        config_toml: format!(
            "[dicom]\nmax_associations = 2\nidle_timeout_secs = 30\nassociation_request_timeout_secs = 2\n\
             tls_listen = \"127.0.0.1:{tls_port}\"\n"
        ),
        ..Default::default()
    });
    let cut_in_time = |r: &serde_json::Value, what: &str| {
        assert!(
            matches!(r["result"].as_str(), Some("closed") | Some("abort")),
            "{what} must be cut: {r}"
        );
        let secs = r["detail"]["seconds"].as_f64().unwrap_or(f64::MAX);
        assert!(
            (1.5..8.0).contains(&secs),
            "{what} cut after {secs} s (deadline 2 s): {r}"
        );
    };
    cut_in_time(&bad_peer(&s, "silent", &["--wait", "12"]), "silent peer");
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("bad_peer.py")).args([
            "silent",
            "--host",
            "127.0.0.1",
            "--port",
            &tls_port.to_string(),
            "--wait",
            "12",
        ]);
        c
    });
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let r: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{}", text(&o)));
    cut_in_time(&r, "silent peer on the TLS port");
    for interval in ["0.3", "0.02"] {
        let r = bad_peer(&s, "trickle-rq", &["--interval", interval, "--wait", "12"]);
        cut_in_time(&r, &format!("association request trickled every {interval} s"));
        assert!(
            r["detail"]["sent_bytes"].as_u64() < r["detail"]["rq_bytes"].as_u64(),
            "cut before the request was complete: {r}"
        );
    }
    // Two silent connections at once hold both request slots only until
    // the deadline; then service resumes.
    let silent = || {
        s.peer("bad_peer.py")
            .args(["silent", "--wait", "12"])
            .stdout(Stdio::null())
            .spawn()
            .expect("silent")
    };
    let (mut a, mut b) = (silent(), silent());
    let _ = a.wait();
    let _ = b.wait();
    assert!(echo_ok(&s), "slots freed after the silent peers were cut");
    assert_eq!(s.metric("medrelay_dicom_associations_active"), 0.0);

    // A dataset trickled in complete 2-byte PDUs every 0.2 s: each PDU is
    // far within the idle timeout, only the progress rate catches it.
    let s = Server::start(ServerOpts {
        // (min_receive_bytes_per_sec = 1024 by default)
        config_toml: "[dicom]\nidle_timeout_secs = 3\n".into(),
        ..Default::default()
    });
    let r = bad_peer(&s, "trickle-data", &["--interval", "0.2", "--wait", "15"]);
    assert_eq!(r["result"], "abort", "a trickled dataset must be cut: {r}");
    let secs = r["detail"]["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!((2.5..10.0).contains(&secs), "cut after {secs} s (grace 3 s): {r}");
    assert!(s.log().contains("peer too slow"), "{}", s.log());
    s.wait_for(10, "slot freed", || {
        s.metric("medrelay_dicom_associations_active") == 0.0
    });
    assert!(echo_ok(&s));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "0");
}
