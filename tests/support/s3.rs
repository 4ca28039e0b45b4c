//! A real S3 protocol server for tests: s3s-fs 0.14.1 (an S3 server over a
//! directory, built once by `bash tests/support/setup.sh` into
//! `.cache/s3s-fs/bin/s3s-fs`) on a free port of 127.0.0.1, with one access
//! key and secret and one bucket. It checks SigV4 signatures (a request signed
//! with another secret answers 403: tests/storage_peers.rs proves it), so a
//! client that signs wrongly fails here as it would against S3 or Garage.
//!
//! Path-style addressing (`http://127.0.0.1:PORT/bucket/key`): the server is
//! started without `--domain`. `stop()` kills it (the storage vanishing, as a
//! crash or a network cut would look to the gateway); `start_again()` serves
//! the same directory on the same port. Drop kills it; a test that panics
//! keeps the directory and prints the server log.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "medrelay-test-key";
pub const SECRET_KEY: &str = "medrelay-test-secret";
pub const BUCKET: &str = "medrelay";
pub const REGION: &str = "us-east-1";

pub fn s3s_fs_bin() -> PathBuf {
    let p = super::cache().join("s3s-fs/bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs missing at {}: run `bash tests/support/setup.sh` (the README's test command does)",
        p.display()
    );
    p
}

pub struct S3Server {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: usize,
    die_with_thread: bool,
}

const READY: &str = "server is running at http://127.0.0.1:";

impl S3Server {
    /// A fresh server with the bucket `BUCKET`, ready to take requests.
    pub fn start() -> S3Server {
        Self::start_with(false)
    }

    /// As `start`, and killed when the thread that calls this ends (it
    /// must live as long as the server is needed: see `shared`).
    fn start_owned() -> S3Server {
        Self::start_with(true)
    }

    fn start_with(die_with_thread: bool) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("medrelay-s3-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        // s3s-fs keeps a bucket as a directory under its root.
        fs::create_dir_all(root.join("data").join(BUCKET)).expect("bucket dir");
        let mut s = S3Server {
            dir: Some(dir),
            root,
            port: 0,
            child: None,
            starts: 0,
            die_with_thread,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        // Port 0 on the first start (no race with other tests for a port);
        // the same port afterwards, so URLs handed out stay valid.
        let mut cmd = Command::new(s3s_fs_bin());
        if self.die_with_thread {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the child
            // between fork and exec; it allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .env("RUST_LOG", "s3s_fs=info")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        self.starts += 1;
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3s-fs exited during start ({st}): {}", self.log());
            }
            let log = self.log();
            let ready: Vec<u16> = log
                .match_indices(READY)
                .filter_map(|(i, _)| {
                    let digits: String = log[i + READY.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse().ok()
                })
                .collect();
            if ready.len() == self.starts {
                self.port = ready[ready.len() - 1];
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "s3s-fs not ready in 30 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Serve the same directory on the same port again after `stop()`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Kill the server (SIGKILL) and wait for it: connections are refused
    /// until `start_again()`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The storage URL as medrelay's configuration takes it (issue 18):
    /// `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT&region=us-east-1`;
    /// credentials go in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}?endpoint={}&region={REGION}", self.endpoint())
    }

    /// The directory s3s-fs serves (a bucket is a subdirectory).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("s3s-fs.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// The one server of this test process for `MEDRELAY_TEST_STORAGE=s3`
/// (tests/support::Server). Started by a thread that lives as long as the
/// process, with SIGKILL as its parent-death signal: a static is never
/// dropped, yet the server must not outlive the tests.
pub fn shared() -> &'static S3Server {
    static SHARED: std::sync::OnceLock<S3Server> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(S3Server::start_owned());
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("shared s3s-fs started")
    })
}

/// A key prefix unique to one gateway's data directory.
pub fn prefix_for(data_dir: &std::path::Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("it-{:016x}", h.finish())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "S3Server kept at {} after a failure; server log:\n{}",
                kept.display(),
                self.log()
            );
        }
    }
}
