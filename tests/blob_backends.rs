//! The blob boundary (`store::blob`) on both backends: the same assertions
//! against local files and a real signature-checking S3 server (s3s-fs),
//! then the gateway storing on S3 end to end: a 64 MB instance pushed by
//! DCMTK (multipart, bounded memory) and S3 stopped in the middle of a push.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medrelay::archive::files::Archive;
use medrelay::store::blob::s3::{S3Blobs, S3Url};
use medrelay::store::blob::{self, BlobError, Blobs, StorageUrl, file::FileBlobs};
use support::s3::{self, S3Server};
use support::*;

/// Deterministic, position-dependent content: a wrong range shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32) ^ seed).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

fn s3_url(s: &S3Server, prefix: &str, secret: &str) -> S3Url {
    let mut u = S3Url::parse(&s.url(prefix)).expect("url");
    u.access_key_id = Some(s3::ACCESS_KEY.into());
    u.secret_access_key = Some(secret.into());
    u
}

/// Both backends, each with its local spool directory.
fn backends(s: &S3Server, dir: &Path) -> Vec<(&'static str, Arc<dyn Blobs>, std::path::PathBuf)> {
    let file_root = dir.join("files");
    let spool = dir.join("spool");
    vec![
        (
            "file",
            Arc::new(FileBlobs::open(&file_root, &spool).expect("file blobs")) as Arc<dyn Blobs>,
            spool.clone(),
        ),
        (
            "s3",
            Arc::new(S3Blobs::open(&s3_url(s, "bb", s3::SECRET_KEY), &spool).expect("s3 blobs")),
            spool,
        ),
    ]
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn both_backends_round_trip_read_ranges_and_leave_nothing_behind() {
    let s = S3Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    for (name, b, spool) in backends(&s, dir.path()) {
        let data = pattern(3 << 20, 7);
        let mut w = b.create().expect("create");
        for c in data.chunks(100_000) {
            w.write(c).expect("write");
        }
        assert!(w.spool_path().is_file(), "{name}: spooled locally while written");
        assert!(w.commit("ab/one.dcm").expect("commit"), "{name}: created");
        assert_eq!(count_files(&spool), 0, "{name}: spool emptied by the commit");
        assert_eq!(b.head("ab/one.dcm").expect("head"), Some(data.len() as u64), "{name}");
        assert_eq!(b.get("ab/one.dcm").expect("get"), data, "{name}: round trip");
        for (start, len) in [(0u64, 1u64), (1 << 20, 4096), ((3 << 20) - 10, 10)] {
            assert_eq!(
                b.get_range("ab/one.dcm", start..start + len).expect("range"),
                &data[start as usize..(start + len) as usize],
                "{name}: range {start}+{len}"
            );
        }
        // The decoders' Read + Seek view.
        let mut r = blob::open_reader(&b, "ab/one.dcm").expect("reader");
        r.seek(SeekFrom::Start(2_000_000)).expect("seek");
        let mut buf = vec![0u8; 300_000];
        r.read_exact(&mut buf).expect("read");
        assert_eq!(buf, &data[2_000_000..2_300_000], "{name}: reader after a seek");
        r.seek(SeekFrom::End(-5)).expect("seek end");
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).expect("tail");
        assert_eq!(tail, &data[data.len() - 5..], "{name}: reader at the end");

        // A resend of the same content under the same key is a no-op.
        let mut w = b.create().expect("create");
        w.write(&data).expect("write");
        assert!(!w.commit("ab/one.dcm").expect("commit again"), "{name}: resend");
        assert_eq!(b.get("ab/one.dcm").expect("get"), data, "{name}");

        // Abandoned (dropped uncommitted): nothing stored, nothing spooled.
        let mut w = b.create().expect("create");
        w.write(&pattern(1 << 20, 9)).expect("write");
        drop(w);
        assert_eq!(count_files(&spool), 0, "{name}: abandoned spool removed");
        let listed: Vec<String> = b.list("ab/").expect("list").into_iter().map(|(k, _)| k).collect();
        assert_eq!(listed, ["ab/one.dcm"], "{name}: list by prefix");
        assert!(b.list("cd/").expect("list").is_empty(), "{name}");

        // Derived objects: put replaces, delete removes, absent is None.
        b.put("ab/one.thumb.jpg", b"first").expect("put");
        b.put("ab/one.thumb.jpg", b"second").expect("put again");
        assert_eq!(b.get("ab/one.thumb.jpg").expect("get"), b"second", "{name}");
        b.delete("ab/one.thumb.jpg").expect("delete");
        b.delete("ab/one.thumb.jpg").expect("delete absent");
        assert_eq!(b.head("ab/one.thumb.jpg").expect("head"), None, "{name}");
        assert!(matches!(b.get("ab/gone.dcm"), Err(BlobError::NotFound(_))), "{name}");
        // Keys cannot leave the root or the prefix.
        assert!(b.put("../escape", b"x").is_err(), "{name}");
        assert!(b.head("/etc/passwd").is_err(), "{name}");
    }
}

#[test]
fn the_archive_is_content_addressed_on_both_backends() {
    let s = S3Server::start();
    for url in [None, Some(s.url("arch"))] {
        let dir = tempfile::tempdir().expect("tmp");
        let storage = match &url {
            None => StorageUrl::File(dir.path().join("instances")),
            Some(u) => match StorageUrl::parse(u).expect("url") {
                StorageUrl::S3(mut u) => {
                    u.access_key_id = Some(s3::ACCESS_KEY.into());
                    u.secret_access_key = Some(s3::SECRET_KEY.into());
                    StorageUrl::S3(u)
                }
                f => f,
            },
        };
        let a = Archive::open_url(dir.path(), &storage, 0).expect("archive");
        let commit = |bytes: &[u8]| {
            let mut t = a.begin(b"HDR", b"1.2.840.10008.1.2.1").expect("begin");
            t.write(bytes).expect("write");
            a.commit(t.finish().expect("finish")).expect("commit")
        };
        let first = commit(b"dataset");
        let again = commit(b"dataset");
        assert!(first.created && !again.created, "{storage:?}: a resend is a no-op");
        assert_eq!(first.rel_path, again.rel_path);
        assert!(
            first.rel_path.starts_with("instances/"),
            "the index keeps today's paths"
        );
        assert_eq!(a.read(&first.rel_path).expect("read"), b"HDRdataset");
        // Refused by the index, and nobody else holds it: taken back.
        a.settle(&again, false);
        a.settle(&first, false);
        assert!(
            a.size(&first.rel_path).is_err(),
            "{storage:?}: an unindexed object is removed"
        );
        // Kept once indexed.
        let kept = commit(b"kept");
        a.settle(&kept, true);
        assert_eq!(a.size(&kept.rel_path).expect("size"), 7);
        assert_eq!(a.clean_tmp().expect("clean"), 0, "nothing left spooled");
    }
}

#[test]
fn wrong_s3_credentials_are_a_clear_error_and_store_nothing() {
    let s = S3Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bad = S3Blobs::open(&s3_url(&s, "creds", "not-the-secret"), dir.path()).expect("client");
    let mut w = bad.create().expect("create");
    w.write(b"data").expect("write");
    let err = w.commit("ab/x.dcm").expect_err("a wrong secret must be refused");
    assert!(matches!(err, BlobError::Denied(_)), "{err:?}");
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(!err.is_resource_problem(), "a configuration error, not an outage");
    let good = S3Blobs::open(&s3_url(&s, "creds", s3::SECRET_KEY), dir.path()).expect("client");
    assert!(good.list("").expect("list").is_empty());
    // The gateway refuses to start without credentials, naming what to set.
    let o = Command::new(env!("CARGO_BIN_EXE_medrelay"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MEDRELAY_STORAGE_URL", s.url("x"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(text(&o).contains("AWS_SECRET_ACCESS_KEY"), "{}", text(&o));
}

#[test]
fn an_s3_outage_is_a_resource_problem_and_passes() {
    let mut s = S3Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    let b = S3Blobs::open(&s3_url(&s, "outage", s3::SECRET_KEY), dir.path()).expect("client");
    s.stop();
    let t = Instant::now();
    let mut w = b.create().expect("create");
    w.write(b"data").expect("write");
    let err = w.commit("ab/x.dcm").expect_err("store is down");
    assert!(err.is_resource_problem(), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "bounded retries: {:?}",
        t.elapsed()
    );
    s.start_again();
    let mut w = b.create().expect("create");
    w.write(b"data").expect("write");
    assert!(w.commit("ab/x.dcm").expect("store is back"));
}

/// The storage section of a gateway config storing on `s`.
fn s3_config(s: &S3Server, prefix: &str) -> String {
    let url = s.url(prefix);
    format!(
        "[storage]\nurl = \"{url}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3::ACCESS_KEY,
        s3::SECRET_KEY
    )
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

fn sop_uid_of(p: &Path) -> String {
    let o = run({
        let mut c = Command::new(python());
        c.args([
            "-c",
            "import pydicom,sys\nprint(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).SOPInstanceUID)",
        ])
        .arg(p);
        c
    });
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_64_mb_instance_is_stored_and_served_with_bounded_memory_on_both_backends() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    let big = dir.path().join("big.dcm");
    gen_big(&big, 64);
    let uid = sop_uid_of(&big);
    for config in [String::new(), s3_config(&s3, "big")] {
        let s = Server::start(ServerOpts {
            config_toml: config.clone(),
            ..ServerOpts::default()
        });
        let before = vm_hwm_kb(s.pid());
        let o = run({
            let mut c = s.storescu("BIGPUSH");
            c.arg(&big);
            c
        });
        assert!(o.status.success(), "{}", text(&o));
        let rows = s.sqlite(&format!("SELECT path FROM instances WHERE sop_instance_uid = '{uid}'"));
        assert!(!rows.is_empty(), "stored: {}", s.log());
        let grown_mb = (vm_hwm_kb(s.pid()).saturating_sub(before)) / 1024;
        // The instance is 64 MB; receiving and storing it may not hold it.
        assert!(
            grown_mb < 48,
            "peak RSS grew by {grown_mb} MB storing a 64 MB instance ({config})"
        );
        let rel = rows.lines().next().expect("row").to_string();
        let key = rel.trim_start_matches("instances/").to_string();
        let stored = if config.is_empty() {
            s.data_dir.join(&rel)
        } else {
            s3.data_dir().join(s3::BUCKET).join("big").join(&key)
        };
        let stored_len = std::fs::metadata(&stored).expect("stored object").len();
        assert!(stored_len > 64 << 20, "{stored_len}");
        // Served back whole (ranged reads, streamed).
        let (code, body) = s.get(&format!("/api/instances/{uid}/file"));
        assert_eq!(code, 200);
        assert_eq!(body.len() as u64, stored_len);
        let sent = std::fs::read(&big).expect("big");
        assert_eq!(&body[body.len() - (1 << 20)..], &sent[sent.len() - (1 << 20)..]);
        drop((body, sent));
        // A frame renders.
        let (code, _) = s.get(&format!("/api/instances/{uid}/rendered?frame=0&size=128"));
        assert_eq!(code, 200, "{}", s.log());
        if !config.is_empty() {
            // Uploaded in parts: the multipart ETag names its part count.
            let parts = stored_len.div_ceil(medrelay::store::blob::s3::PART as u64);
            let etag = s3_etag(&s3, &format!("big/{key}"));
            assert!(etag.trim_matches('"').ends_with(&format!("-{parts}")), "etag {etag}");
        }
    }
}

fn s3_etag(s: &S3Server, key: &str) -> String {
    use object_store::ObjectStoreExt;
    let c = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s.endpoint())
        .with_allow_http(true)
        .with_region(s3::REGION)
        .with_bucket_name(s3::BUCKET)
        .with_access_key_id(s3::ACCESS_KEY)
        .with_secret_access_key(s3::SECRET_KEY)
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(c.head(&object_store::path::Path::from(key)))
        .expect("head")
        .e_tag
        .unwrap_or_default()
}

#[test]
fn s3_stopped_mid_push_answers_out_of_resources_and_loses_nothing_acknowledged() {
    let mut s3 = S3Server::start();
    let s = Server::start(ServerOpts {
        config_toml: s3_config(&s3, "push"),
        ..ServerOpts::default()
    });
    let acked = s.dir.join("acked.txt");
    let push = |extra: &[&str]| {
        let mut c = s.peer("push_acked.py");
        c.args(["--aet", "PUSHER", "--acked"])
            .arg(&acked)
            .args(extra)
            .arg(ct300());
        c
    };
    let count = || std::fs::read_to_string(&acked).map(|t| t.lines().count()).unwrap_or(0);
    let child = push(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("push");
    s.wait_for(120, "30 acknowledged instances", || count() >= 30);
    s3.stop();
    let down_at = count();
    std::thread::sleep(Duration::from_secs(4));
    s3.start_again();
    let out = child.wait_with_output().expect("push ends");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("status 0xA7"),
        "C-STORE during the outage answers out of resources: {stderr}"
    );
    assert!(
        stderr.contains("storage unavailable"),
        "with an error comment: {stderr}"
    );
    assert!(count() < 300 && down_at < 300, "the outage refused some: {stderr}");
    // Recovery without a restart: the same gateway takes the rest.
    let pid = s.pid();
    let o = run(push(&["--skip-acked"]));
    assert!(text(&o).contains("acked 300 of 300"), "{}", text(&o));
    assert_eq!(s.pid(), pid, "no restart");
    assert_eq!(
        s.sqlite("SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances"),
        "300|300"
    );
    // Every indexed instance is in the bucket, whole.
    let rows = s.sqlite("SELECT path, size_bytes FROM instances");
    for line in rows.lines() {
        let (path, _) = line.split_once('|').expect("row");
        let obj = s3
            .data_dir()
            .join(s3::BUCKET)
            .join("push")
            .join(path.trim_start_matches("instances/"));
        assert!(obj.is_file(), "{path} indexed but not stored");
    }
    assert_eq!(count_files(&s.data_dir.join("tmp")), 0, "nothing left spooled");
    // Previews the outage kept from being read or written were left pending
    // and rendered once the store came back, not marked "no preview".
    let t = Instant::now();
    while s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") != "300" {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "previews not all rendered: {}",
            s.sqlite("SELECT preview_status, COUNT(*) FROM instances GROUP BY 1")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Counts the bytes a backend hands out: instrumentation around the real
/// S3 backend, not a stand-in for it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Blobs>,
    fetched: std::sync::atomic::AtomicU64,
}

impl Blobs for Counting {
    fn create(&self) -> Result<Box<dyn blob::BlobWriter>, BlobError> {
        self.inner.create()
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, BlobError> {
        let b = self.inner.get_range(key, range)?;
        self.fetched
            .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(b)
    }
    fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.inner.head(key)
    }
    fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key)
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        self.inner.put(key, bytes)
    }
    fn put_file(&self, key: &str, local: &Path) -> Result<bool, BlobError> {
        self.inner.put_file(key, local)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        self.inner.list(prefix)
    }
    fn clean_spool(&self) -> std::io::Result<usize> {
        self.inner.clean_spool()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Object(Arc<dyn Blobs>, &'static str);

impl medrelay::imaging::decode::Input for Object {
    fn open(&self) -> std::io::Result<Box<dyn blob::ReadSeek + '_>> {
        blob::open_reader(&self.0, self.1).map_err(BlobError::into_io)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.0
            .head(self.1)
            .map_err(BlobError::into_io)?
            .ok_or(std::io::ErrorKind::NotFound.into())
    }
}

#[test]
fn rendering_one_frame_from_s3_fetches_that_frame_not_the_instance() {
    use medrelay::imaging::render::{RenderParams, render_any};
    let s = S3Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    let big = dir.path().join("big.dcm");
    gen_big(&big, 64);
    let store: Arc<dyn Blobs> = Arc::new(S3Blobs::open(&s3_url(&s, "frames", s3::SECRET_KEY), dir.path()).expect("s3"));
    let mut w = store.create().expect("create");
    w.write(&std::fs::read(&big).expect("big")).expect("write");
    w.commit("ab/big.dcm").expect("commit");
    let counting = Arc::new(Counting {
        inner: store,
        fetched: Default::default(),
    });
    let size = counting.head("ab/big.dcm").expect("head").expect("stored");
    let params = RenderParams {
        window: None,
        frame: 1,
        max_side: 128,
    };
    let from_s3 = render_any(&Object(counting.clone(), "ab/big.dcm"), &params).expect("render from S3");
    let fetched = counting.fetched.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fetched < 8 << 20,
        "rendering frame 1 fetched {fetched} of the instance's {size} bytes"
    );
    let from_file = render_any(&big, &params).expect("render from the file");
    assert_eq!(from_s3, from_file, "the same pixels either way");
}
