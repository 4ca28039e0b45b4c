//! Integration-test helpers: start the real `medrelay` binary on free ports
//! with its own data directory, and run real peers (DCMTK, pynetdicom).
//!
//! The peers and the sample corpus come from `tests/support/setup.sh` (the
//! README's test command runs it). A missing peer fails the test with a clear
//! message rather than skipping: a skipped peer test proves nothing.
#![allow(dead_code)]

pub mod i18n;
pub mod orthanc;
pub mod pg;
pub mod s3;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cache() -> PathBuf {
    repo().join(".cache")
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} missing at {}: run `bash tests/support/setup.sh` (the README's test command does)",
        path.display()
    );
    path
}

pub fn corpus_pydicom() -> PathBuf {
    require(
        cache().join("dicom-samples/pydicom/data/test_files"),
        "pydicom sample corpus",
    )
}

pub fn corpus_nema() -> PathBuf {
    require(
        cache().join("dicom-samples/data_store/data"),
        "pydicom-data sample corpus",
    )
}

pub fn ct300() -> PathBuf {
    require(cache().join("ct300"), "generated 300-slice CT")
}

/// A small runtime for tests that drive sqlx or object_store directly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn python() -> PathBuf {
    require(cache().join("venv/bin/python"), "test venv")
}

pub fn script(name: &str) -> PathBuf {
    repo().join("tests/support").join(name)
}

/// A single multi-frame instance of about `mb` MiB (fixtures/gen_ct.py).
pub fn gen_big(path: &Path, mb: u32) {
    let o = run({
        let mut c = Command::new(python());
        c.arg(repo().join("fixtures/gen_ct.py"))
            .args(["--size-mb", &mb.to_string(), "--out"])
            .arg(path);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
}

/// A camera clip for Chromium's `--use-file-for-fake-video-capture`: 720p,
/// 24 fps, 2 s looped, mostly flat grey with a moving bar and a patch of
/// fresh noise in every frame.
///
/// Why: Chromium's built-in fake camera compresses so well that its 720p
/// layer needs well under 1 Mbit/s, so a 1 Mbit/s viewer could honestly be
/// given the top layer. Fresh noise cannot be predicted from earlier frames,
/// so the encoder spends every layer's whole budget (the page's caps:
/// 150 k / 500 k / 1.5 Mbit/s), as a real camera does; the patch is small
/// so that even the top layer stays under its cap at the coarsest quantizer
/// (no dropped frames) and encoding it costs little CPU.
pub fn busy_camera_y4m(path: &Path) {
    use std::io::Write;
    const W: usize = 1280;
    const H: usize = 720;
    const FRAMES: usize = 48;
    const PATCH: (usize, usize) = (192, 108);
    let f = std::fs::File::create(path).expect("y4m file");
    let mut out = std::io::BufWriter::new(f);
    writeln!(out, "YUV4MPEG2 W{W} H{H} F24:1 Ip A1:1 C420jpeg").expect("y4m header");
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut y = vec![0u8; W * H];
    let chroma = vec![128u8; W * H / 4];
    for n in 0..FRAMES {
        y.fill(110);
        // A bar sweeping across the frame: something that moves.
        let bar = n * (W - 64) / FRAMES;
        for row in y.chunks_mut(W) {
            row[bar..bar + 64].fill(200);
        }
        let (px, py) = ((W - PATCH.0) / 2, (H - PATCH.1) / 2);
        for r in 0..PATCH.1 {
            let row = &mut y[(py + r) * W + px..(py + r) * W + px + PATCH.0];
            for chunk in row.chunks_mut(8) {
                // xorshift64: cheap, and unpredictable to a video encoder.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = (rng >> (i * 8)) as u8;
                }
            }
        }
        out.write_all(b"FRAME\n").expect("y4m frame");
        out.write_all(&y).expect("y4m frame");
        out.write_all(&chroma).expect("y4m frame");
        out.write_all(&chroma).expect("y4m frame");
    }
    out.flush().expect("y4m file");
}
/// Resident memory of process `pid`, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// A logged-in browser-like client: a curl cookie jar and the session's
/// CSRF token, sent on every request that is not a GET.
#[derive(Debug, Clone)]
pub struct Auth {
    pub jar: PathBuf,
    pub csrf: String,
}

impl Auth {
    /// `mr_session=…` from the curl jar: the session cookie for clients
    /// that are not curl (signaling WebSocket peers, a browser).
    pub fn session_cookie(&self) -> String {
        let jar = std::fs::read_to_string(&self.jar).unwrap_or_default();
        jar.lines()
            .rev()
            .find_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 7 && f[5] == "mr_session").then(|| format!("mr_session={}", f[6]))
            })
            .unwrap_or_else(|| panic!("no session cookie in {}", self.jar.display()))
    }

    /// Just the cookie's value.
    pub fn session_token(&self) -> String {
        self.session_cookie().trim_start_matches("mr_session=").to_string()
    }
}

/// HTTPS request with a JSON body (curl, like `http_get`).
pub fn http_send(port: u16, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, Vec<u8>) {
    http_send_as(port, method, path, body, None)
}

pub fn http_send_as(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    auth: Option<&Auth>,
) -> (u16, Vec<u8>) {
    let out = std::env::temp_dir().join(format!("medrelay-it-body-{}-{}", std::process::id(), rand_suffix()));
    let o = run({
        let mut c = Command::new("curl");
        c.args([
            "-sk",
            "--max-time",
            "60",
            "-X",
            method,
            "-o",
            &out.display().to_string(),
            "-w",
            "%{http_code}",
        ]);
        if let Some(a) = auth {
            let jar = a.jar.display().to_string();
            c.args(["-b", &jar, "-c", &jar, "-H", &format!("x-csrf-token: {}", a.csrf)]);
        }
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "--data-binary", &b.to_string()]);
        }
        c.arg(format!("https://127.0.0.1:{port}{path}"));
        c
    });
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (code, body)
}

/// Password of the admin account every test server gets.
/// One township clinic, t01 (AE T01_CT), served by the "city" hospital.
pub const ONE_HOSPITAL: &str = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]
"#;

/// Two township clinics, each served by its own city hospital: t01 by
/// "city", t03 by "other" (the alliance the room and broadcast tests use).
pub const TWO_HOSPITALS: &str = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t03"
name = "Township 03"
ae_titles = ["T03_CT"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]

[[hospital]]
id = "other"
name = "Other Hospital"
serves = ["t03"]
"#;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A DCMTK (or other) command with Nagle off, as DESIGN.md says.
pub fn dcmtk(prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env("TCP_NODELAY", "1");
    c
}

pub fn run(mut c: Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub struct ServerOpts {
    pub ae_title: String,
    pub stable_after_secs: f64,
    pub config_toml: String,
    pub min_free_bytes: u64,
    pub data_dir: Option<PathBuf>,
    /// `MEDRELAY_INDEX_URL` for this server (else the `MEDRELAY_TEST_INDEX` knob, else SQLite).
    pub index_url: Option<String>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            ae_title: "MEDRELAY".into(),
            stable_after_secs: 60.0,
            config_toml: String::new(),
            min_free_bytes: 0,
            data_dir: None,
            index_url: None,
        }
    }
}

pub struct Server {
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub dicom_port: u16,
    pub http_port: u16,
    /// Plain-HTTP metrics listener (loopback): `/metrics`, detailed `/api/health`.
    pub metrics_port: u16,
    /// UDP port of the consultation media (SFU).
    pub sfu_port: u16,
    pub ae_title: String,
    child: Option<Child>,
    pub log: Arc<Mutex<String>>,
    opts_args: Vec<String>,
    /// The admin session `get`/`post_json`/`delete` use.
    pub admin: Option<Auth>,
    config: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The PostgreSQL index under `MEDRELAY_TEST_INDEX=pg` (see `pg::test_index_url`).
    index_url: Option<String>,
}

impl Server {
    pub fn start(opts: ServerOpts) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("medrelay-it-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let config = dir.join("medrelay.toml");
        std::fs::write(&config, &opts.config_toml).expect("write config");
        let dicom_port = free_port();
        let http_port = free_port();
        let metrics_port = free_port();
        let sfu_port = free_udp_port();
        let args = vec![
            "serve".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--cert-dir".into(),
            dir.join("certs").display().to_string(),
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--dicom-listen".into(),
            format!("127.0.0.1:{dicom_port}"),
            "--ae-title".into(),
            opts.ae_title.clone(),
            "--stable-after-secs".into(),
            opts.stable_after_secs.to_string(),
            "--min-free-bytes".into(),
            opts.min_free_bytes.to_string(),
            "--sfu-udp-listen".into(),
            format!("127.0.0.1:{sfu_port}"),
        ];
        let mut s = Server {
            dir,
            data_dir,
            dicom_port,
            http_port,
            metrics_port,
            sfu_port,
            ae_title: opts.ae_title,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            opts_args: args,
            admin: None,
            config: config.clone(),
            _tmp: Some(tmp),
            index_url: None,
        };
        s.index_url = opts.index_url.clone().or_else(|| pg::test_index_url(&s.data_dir));
        // A reused data directory already has its admin.
        let _ = s.try_add_user("admin", "admin", ADMIN_PASSWORD, &[]);
        s.spawn();
        // Not fatal: a server on a full disk cannot store a session, and its
        // tests only use DICOM and /metrics (on its own listener).
        s.admin = s.login("admin", ADMIN_PASSWORD).ok();
        s
    }

    /// `medrelay user add` against this server's data directory.
    pub fn add_user(&self, name: &str, role: &str, password: &str, extra: &[&str]) {
        if let Err(e) = self.try_add_user(name, role, password, extra) {
            panic!("user add {name}: {e}");
        }
    }

    pub fn try_add_user(&self, name: &str, role: &str, password: &str, extra: &[&str]) -> Result<(), String> {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"))
            .args(["user", "add", name, "--role", role, "--password-stdin", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.index_env())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn medrelay user add");
        if let Some(mut i) = c.stdin.take() {
            let _ = writeln!(i, "{password}");
        }
        let o = c.wait_with_output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Logs in; Err((status, body)) when refused.
    pub fn login(&self, user: &str, password: &str) -> Result<Auth, (u16, serde_json::Value)> {
        let jar = self.dir.join(format!("cookies-{user}-{}", rand_suffix()));
        let a = Auth {
            jar: jar.clone(),
            csrf: String::new(),
        };
        let (code, body) = http_send_as(
            self.http_port,
            "POST",
            "/api/login",
            Some(&serde_json::json!({ "username": user, "password": password })),
            Some(&a),
        );
        login_answer(jar, code, &body)
    }

    /// Logs in from another loopback address (`127.x.y.z`; Linux routes all
    /// of 127/8 to lo), as a client elsewhere would; Err((status, body)).
    pub fn login_from(&self, from: &str, user: &str, password: &str) -> Result<Auth, (u16, serde_json::Value)> {
        let jar = self.dir.join(format!("cookies-{user}-{}", rand_suffix()));
        let (code, body) = curl_status_body(&self.dir, |c| {
            c.args(["-k", "--interface", from, "-c", &jar.display().to_string()])
                .args(["-H", "content-type: application/json", "--data-binary"])
                .arg(serde_json::json!({ "username": user, "password": password }).to_string())
                .arg(format!("https://127.0.0.1:{}/api/login", self.http_port));
        });
        login_answer(jar, code, &body)
    }

    /// A request as `auth` (None: anonymous); the body parsed as JSON.
    pub fn req(
        &self,
        auth: Option<&Auth>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (code, b) = http_send_as(self.http_port, method, path, body.as_ref(), auth);
        (code, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        storage_env(&mut cmd, &self.data_dir);
        let mut child = cmd
            .args(&self.opts_args)
            .envs(self.index_env())
            .env("RUST_LOG", "info,medrelay=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn medrelay");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("medrelay ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("medrelay did not become ready; log:\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    pub fn dicom_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dicom_port))
    }

    pub fn target(&self) -> String {
        format!("{}@127.0.0.1:{}", self.ae_title, self.dicom_port)
    }

    /// `kill -9`: no flush, no shutdown path.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = c.try_wait() {
                    return st.success();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
        }
        false
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.log.lock().map(|mut l| l.clear()).ok();
        self.spawn();
    }

    pub fn index_db(&self) -> PathBuf {
        self.data_dir.join("index.db")
    }

    /// GET as the test admin.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_send_as(self.http_port, "GET", path, None, self.admin.as_ref())
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (code, b) = http_send_as(self.http_port, "POST", path, Some(body), self.admin.as_ref());
        (code, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
    }

    pub fn delete(&self, path: &str) -> u16 {
        http_send_as(self.http_port, "DELETE", path, None, self.admin.as_ref()).0
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("json")
    }

    /// GET on the metrics listener (plain HTTP, loopback), e.g. "/metrics".
    pub fn metrics_get(&self, path: &str, bearer: Option<&str>) -> (u16, Vec<u8>) {
        curl_status_body(&self.dir, |c| {
            if let Some(t) = bearer {
                c.args(["-H", &format!("authorization: Bearer {t}")]);
            }
            c.arg(format!("http://127.0.0.1:{}{path}", self.metrics_port));
        })
    }

    /// The Prometheus text from the metrics listener.
    pub fn metrics_text(&self) -> String {
        let (code, body) = self.metrics_get("/metrics", None);
        assert_eq!(code, 200, "GET /metrics: {}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body).into_owned()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Poll until `f` is true, failing with the server log after `secs`.
    pub fn wait_for(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; server log:\n{}", self.log());
    }

    /// One of our Python peers (tests/support/NAME) aimed at this server:
    /// `python NAME --host 127.0.0.1 --port P --aec AE`, more arguments to follow.
    pub fn peer(&self, name: &str) -> Command {
        let mut c = Command::new(python());
        c.arg(script(name)).args([
            "--host",
            "127.0.0.1",
            "--port",
            &self.dicom_port.to_string(),
            "--aec",
            &self.ae_title,
        ]);
        c
    }

    /// A DCMTK storescu command aimed at this server.
    pub fn storescu(&self, calling: &str) -> Command {
        self.dcmtk_to("storescu", calling)
    }

    /// DCMTK's echoscu from `calling` to this gateway.
    pub fn echoscu(&self, calling: &str) -> Command {
        self.dcmtk_to("echoscu", calling)
    }

    /// A DCMTK network tool, calling as `calling`, pointed at this gateway.
    pub fn dcmtk_to(&self, prog: &str, calling: &str) -> Command {
        let mut c = dcmtk(prog);
        c.args([
            "-aet",
            calling,
            "-aec",
            &self.ae_title,
            "127.0.0.1",
            &self.dicom_port.to_string(),
        ]);
        c
    }

    pub fn sqlite(&self, sql: &str) -> String {
        if let Some(url) = &self.index_url {
            return pg::psql_url(url, sql);
        }
        let o = run({
            let mut c = Command::new(python());
            c.args(["-c", "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]): print('|'.join(str(x) for x in r))", &self.index_db().display().to_string(), sql]);
            c
        });
        assert!(o.status.success(), "sqlite: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Server {
    /// `medrelay ARGS --config … --data-dir …` on this server's files: the
    /// command line an operator uses, in a process of its own.
    pub fn cli(&self, args: &[&str]) -> Output {
        run({
            let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
            c.args(args)
                .arg("--config")
                .arg(&self.config)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .envs(self.index_env());
            c
        })
    }

    /// Runs a writing statement (committed), e.g. to age a session.
    pub fn sqlite_exec(&self, sql: &str) {
        if let Some(url) = &self.index_url {
            pg::psql_url(url, sql);
            return;
        }
        let o = run({
            let mut c = Command::new(python());
            c.args([
                "-c",
                "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1], timeout=30)\nc.execute(sys.argv[2])\nc.commit()",
                &self.index_db().display().to_string(),
                sql,
            ]);
            c
        });
        assert!(o.status.success(), "sqlite: {}", text(&o));
    }
}

impl Server {
    /// `MEDRELAY_INDEX_URL` for every medrelay process of this server, when
    /// its index is on PostgreSQL.
    pub fn index_env(&self) -> Vec<(&'static str, String)> {
        self.index_url
            .iter()
            .map(|u| ("MEDRELAY_INDEX_URL", u.clone()))
            .collect()
    }

    /// Whether this server's index is on PostgreSQL (`MEDRELAY_TEST_INDEX=pg`).
    pub fn index_on_pg(&self) -> bool {
        self.index_url.is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTPS GET against the self-signed dev certificate, with curl (a
/// real, independent client) so tests do not need a TLS stack of their own.
pub fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    http_send(port, "GET", path, None)
}

/// The session a login answered with, or Err((status, body)).
fn login_answer(jar: PathBuf, code: u16, body: &[u8]) -> Result<Auth, (u16, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if code != 200 {
        return Err((code, v));
    }
    Ok(Auth {
        jar,
        csrf: v["csrf"].as_str().unwrap_or_default().to_string(),
    })
}

/// Runs curl (silent, 60 s at most) with the arguments `args` adds; its
/// status code and body (kept in a file under `dir` meanwhile).
fn curl_status_body(dir: &Path, args: impl FnOnce(&mut Command)) -> (u16, Vec<u8>) {
    let out = dir.join(format!("curl-body-{}", rand_suffix()));
    let o = run({
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "--max-time",
            "60",
            "-o",
            &out.display().to_string(),
            "-w",
            "%{http_code}",
        ]);
        args(&mut c);
        c
    });
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (code, body)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
}

pub fn copy_dir_files(from: &Path, to: &Path, filter: impl Fn(&Path) -> bool) -> usize {
    std::fs::create_dir_all(to).expect("mkdir");
    let mut n = 0;
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_file() && filter(&p) {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
            n += 1;
        }
    }
    n
}

/// A DCMTK storescp (AE CLINICPACS) standing in for a clinic PACS; killed
/// when dropped.
pub struct Pacs {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Pacs {
    pub fn start() -> Pacs {
        Pacs::start_on(free_port())
    }

    /// On `port`, once it accepts connections.
    pub fn start_on(port: u16) -> Pacs {
        let dir = tempfile::tempdir().expect("tmp");
        let child = dcmtk("storescp")
            .args(["-aet", "CLINICPACS", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pacs { child, dir, port }
    }

    /// Received files, sorted by name.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `signal_probe.py` against the server's signaling WebSocket (a
/// scenario of good and bad messages) and returns what came back:
/// `{messages, close_code, pong_after}`.
/// Logs `user` in on the real login page and waits until the browser has
/// been sent on to `next`.
pub fn ui_login(sess: &webdriver::Session, s: &Server, user: &str, password: &str, next: &str) {
    let t = Duration::from_secs(60);
    sess.goto(&format!("https://127.0.0.1:{}/login?next={next}", s.http_port))
        .expect("login page");
    if let Err(e) = sess.wait_for("window.mrTest && window.mrTest.login && window.mrTest.login.ready", t) {
        panic!("login page not ready: {e}; console: {:?}", sess.console_logs());
    }
    sess.send_keys("[data-test=username]", user).expect("type user");
    sess.send_keys("[data-test=password]", password).expect("type password");
    sess.click("[data-test=login]").expect("click login");
    let deadline = Instant::now() + t;
    loop {
        let url = sess.current_url().unwrap_or_default();
        if url.contains(next) && !url.contains("/login") {
            break;
        }
        assert!(Instant::now() < deadline, "{user}: still on {url} after logging in");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `signal_probe` on the session of `auth` (the WebSocket handshake sends
/// its cookie, as a browser does); None: no session.
pub fn signal_probe_as(
    s: &Server,
    auth: Option<&Auth>,
    scenario: &str,
    token: &str,
    extra: &[&str],
) -> serde_json::Value {
    let cookie = auth.map(Auth::session_cookie).unwrap_or_default();
    let mut args: Vec<&str> = vec!["--cookie", &cookie];
    args.extend_from_slice(extra);
    signal_probe_with(s, scenario, token, &args)
}

/// A signaling participant that joins with `token` on the session of
/// `auth` and stays until the server ends its session (signal_probe.py's
/// `hold` scenario); started in the background.
pub struct SignalHold {
    child: Option<Child>,
}

impl SignalHold {
    /// Returns once the participant has joined (panics if it was refused).
    pub fn join(s: &Server, auth: &Auth, token: &str, hold_secs: u32) -> SignalHold {
        Self::join_with(s, auth, token, hold_secs, &[])
    }

    /// `join` with more arguments for signal_probe.py (`--silent`).
    pub fn join_with(s: &Server, auth: &Auth, token: &str, hold_secs: u32, extra: &[&str]) -> SignalHold {
        let mut child = Command::new(python())
            .arg(script("signal_probe.py"))
            .args([
                "--ws",
                &format!("wss://127.0.0.1:{}/ws/consult", s.http_port),
                "--scenario",
                "hold",
                "--token",
                token,
                "--cookie",
                &auth.session_cookie(),
                "--hold-secs",
                &hold_secs.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("signal_probe.py hold");
        let stderr = child.stderr.take().expect("stderr");
        let mut said = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.trim() == "JOINED" {
                return SignalHold { child: Some(child) };
            }
            said.push(line);
        }
        let out = child.wait_with_output().expect("probe output");
        panic!(
            "hold: not joined: {} {}",
            String::from_utf8_lossy(&out.stdout),
            said.join("\n")
        );
    }

    /// Waits for the participant's end: `{messages, close_code, held_secs}`.
    pub fn finish(mut self) -> serde_json::Value {
        let child = self.child.take().expect("running");
        let o = child.wait_with_output().expect("probe output");
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("hold output: {e}: {}", String::from_utf8_lossy(&o.stdout)))
    }
}

impl Drop for SignalHold {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal_probe(s: &Server, scenario: &str, token: &str) -> serde_json::Value {
    signal_probe_with(s, scenario, token, &[])
}

/// The `code` of every `error` a signaling probe was sent.
pub fn error_codes(v: &serde_json::Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "error")
        .filter_map(|m| m["code"].as_str().map(String::from))
        .collect()
}

pub fn signal_probe_with(s: &Server, scenario: &str, token: &str, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(python())
        .arg(script("signal_probe.py"))
        .args([
            "--ws",
            &format!("wss://127.0.0.1:{}/ws/consult", s.http_port),
            "--scenario",
            scenario,
            "--token",
            token,
        ])
        .args(extra)
        .output()
        .expect("signal_probe.py");
    assert!(
        o.status.success(),
        "probe {scenario}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("probe {scenario} output: {e}"))
}

/// `MEDRELAY_TEST_STORAGE=s3`: every `Server` of this test process stores its
/// instances and previews on one real s3s-fs (started on first use), each
/// under a prefix of its own (stable across restarts of that server);
/// otherwise the default local files. `tests/run` runs the storage-relevant
/// suites once more this way.
pub fn storage_is_s3() -> bool {
    std::env::var("MEDRELAY_TEST_STORAGE").as_deref() == Ok("s3")
}

/// Where the object a server's index calls `rel_path` (`instances/ab/….dcm`)
/// lies on disk: under its data directory, or in the shared s3s-fs's
/// directory (it keeps each object as a plain file under bucket/prefix).
pub fn stored_path(s: &Server, rel_path: &str) -> PathBuf {
    if !storage_is_s3() {
        return s.data_dir.join(rel_path);
    }
    stored_root(s).join(rel_path.strip_prefix("instances/").unwrap_or(rel_path))
}

/// The directory holding a server's instances (see `stored_path`).
pub fn stored_root(s: &Server) -> PathBuf {
    if !storage_is_s3() {
        return s.data_dir.join("instances");
    }
    s3::shared()
        .data_dir()
        .join(s3::BUCKET)
        .join(s3::prefix_for(&s.data_dir))
}

fn storage_env(cmd: &mut Command, data_dir: &Path) {
    if !storage_is_s3() {
        return;
    }
    let server = s3::shared();
    cmd.env("MEDRELAY_STORAGE_URL", server.url(&s3::prefix_for(data_dir)))
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY);
}

/// The datasets of `tests/support/chinese_names.py` written into `dir`
/// (one small CT per Specific Character Set case), by case name.
pub fn chinese_datasets(dir: &Path) -> std::collections::HashMap<String, PathBuf> {
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("chinese_names.py")).arg(dir);
        c
    });
    assert!(o.status.success(), "chinese_names.py: {}", text(&o));
    std::fs::read_dir(dir)
        .expect("datasets")
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect()
}
