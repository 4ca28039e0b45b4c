//! A throwaway PostgreSQL cluster for tests: Debian's server binaries
//! (`initdb`, `postgres`; `bash tests/support/setup.sh` installs them),
//! a data directory in a temp dir, a free TCP port on 127.0.0.1, a password
//! user owning one database. The real server, fsync on: the storage tests
//! are about durability, so the cluster must make the same promises as a
//! production one (only `initdb` skips its final sync, which no test relies
//! on: a killed server never loses what the kernel already has).
//!
//! PostgreSQL refuses to run as root, and the tests run as root (here and in
//! CI). So when we are root, `initdb` and `postgres` run as the system user
//! `medrelay-test` (created on first use with `useradd --system`, no home, no
//! shell), switched to with `setpriv` — which execs in place, so the child we
//! hold IS the postmaster and killing it kills the server. The temp dir is
//! chowned to that user. As an ordinary user (a developer's laptop) they run
//! as that user.
//!
//! `stop()` and `start()` keep the directory and the port, for the "database
//! goes away mid-push" tests; Drop kills the server (SIGQUIT, then SIGKILL).
//! A test that panics keeps the directory and prints the server log.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged system user the cluster runs as when the tests run as root.
pub const PG_USER: &str = "medrelay-test";
const ADMIN: &str = "pgadmin";
const USER: &str = "medrelay";
const PASSWORD: &str = "medrelay-test-pw";
const DB: &str = "medrelay";

/// Where Debian puts the server binaries (`postgresql-15` on bookworm); the
/// newest version present wins. `PG_BIN` overrides.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries missing under /usr/lib/postgresql: run `bash tests/support/setup.sh` (the README's test command does)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Create the system user once (concurrent tests may race: "already exists" is fine).
fn ensure_user() {
    let exists = || {
        Command::new("id")
            .arg("-u")
            .arg(PG_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists() {
        return;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_USER,
        ])
        .output()
        .expect("useradd");
    assert!(
        exists(),
        "could not create system user {PG_USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command that runs as the cluster's owner (see the module docs).
fn as_owner(prog: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", PG_USER, "--regid", PG_USER, "--clear-groups", "--"])
            .arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn chown_to_owner(path: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_USER}:{PG_USER}"))
            .arg(path)
            .status()
            .expect("chown");
        assert!(st.success(), "chown {} failed", path.display());
    }
}

pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
    bin: PathBuf,
}

impl PgCluster {
    /// initdb, start, create the user and its database; ready to connect.
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        if is_root() {
            ensure_user();
        }
        let dir = tempfile::Builder::new()
            .prefix("medrelay-pg-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        // The owner must reach its files through the temp dir.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        fs::create_dir(root.join("sock")).expect("socket dir");
        let pwfile = root.join("pwfile");
        fs::File::create(&pwfile)
            .and_then(|mut f| f.write_all(PASSWORD.as_bytes()))
            .expect("pwfile");
        chown_to_owner(&root);

        let out = as_owner(&bin.join("initdb"))
            .current_dir(&root)
            .env("LC_ALL", "C.UTF-8")
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", ADMIN, "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgCluster {
            dir: Some(dir),
            root,
            port: super::free_port(),
            child: None,
            bin,
        };
        pg.start_server();
        // Two commands: psql runs one `-c` string as a single transaction,
        // and CREATE DATABASE refuses to run inside one.
        pg.psql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        pg.psql(&format!("CREATE DATABASE {DB} OWNER {USER}"));
        pg
    }

    fn start_server(&mut self) {
        assert!(self.child.is_none(), "cluster already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        chown_to_owner(&self.log_path());
        let child = as_owner(&self.bin.join("postgres"))
            .current_dir(&self.root)
            .env("LC_ALL", "C.UTF-8")
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.root.join("sock").display()))
            // Durability as in production (these are the defaults; said here
            // so that nobody "speeds the tests up" by turning them off).
            .args([
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "full_page_writes=on",
            ])
            // Small: several clusters may run at once on a 2-core CI machine.
            .args(["-c", "shared_buffers=32MB", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postgres exited during start ({st}): {}", self.log());
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-d",
                    "postgres",
                    "-U",
                    ADMIN,
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "postgres not ready in 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start again after `stop()`: same directory, same port, same data.
    pub fn start_again(&mut self) {
        self.start_server();
    }

    /// Fast shutdown (SIGINT: open transactions rolled back, clients
    /// disconnected, a checkpoint written) and wait for the server to exit.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGINT, Duration::from_secs(30));
    }

    /// Immediate shutdown without a checkpoint (SIGQUIT, like a crash: the
    /// next start replays the WAL).
    pub fn crash(&mut self) {
        self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(30));
    }

    fn signal_and_wait(&mut self, sig: i32, within: Duration) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t0 = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The postmaster's pid (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://medrelay:…@127.0.0.1:PORT/medrelay` — the password user and its database.
    pub fn url(&self) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DB}", self.port)
    }

    /// A new empty database `name` owned by the password user, and its URL:
    /// one cluster serves many tests, each on a database of its own.
    pub fn fresh_db(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE {name} OWNER {USER}"));
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}", self.port)
    }

    /// The superuser's URL (same password), for tests that inspect or break things.
    pub fn admin_url(&self) -> String {
        format!("postgres://{ADMIN}:{PASSWORD}@127.0.0.1:{}/{DB}", self.port)
    }

    /// Run SQL as the superuser with psql; panics with psql's message on failure.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", ADMIN, "-d", "postgres", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The server's log across all starts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(5));
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "PgCluster kept at {} after a failure; server log:\n{}",
                kept.display(),
                self.log()
            );
        }
    }
}

/// The test knob `MEDRELAY_TEST_INDEX=pg`: every gateway `support::Server`
/// starts runs its index on PostgreSQL instead of the embedded SQLite. One
/// cluster per test process (started on first use, stopped and removed at
/// exit), one fresh database per data directory (a server restarted on the
/// same data directory finds its index again). None without the knob.
pub fn test_index_url(data_dir: &Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};
    static SHARED: OnceLock<Mutex<PgCluster>> = OnceLock::new();
    static DBS: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    static N: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn stop_shared() {
        if let Some(m) = SHARED.get() {
            let mut pg = m.lock().unwrap_or_else(|e| e.into_inner());
            pg.stop();
            pg.dir.take();
        }
    }
    if std::env::var("MEDRELAY_TEST_INDEX").ok().as_deref() != Some("pg") {
        return None;
    }
    let shared = SHARED.get_or_init(|| {
        let pg = PgCluster::start();
        // SAFETY: registers a plain extern "C" fn to run at process exit.
        unsafe { libc::atexit(stop_shared) };
        Mutex::new(pg)
    });
    let mut dbs = DBS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let url = dbs.entry(data_dir.to_path_buf()).or_insert_with(|| {
        let name = format!("it_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        shared.lock().unwrap_or_else(|e| e.into_inner()).fresh_db(&name)
    });
    Some(url.clone())
}

/// Runs SQL on the database at `url` with psql, rows as `a|b` lines and
/// NULL as `None`: the output format of `Server::sqlite`, so a test reads
/// the index the same way on either backend.
pub fn psql_url(url: &str, sql: &str) -> String {
    let out = Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "|",
            "-P",
            "null=None",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-d", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
