//! Minimal synchronous W3C WebDriver client for headless Chromium (via chromedriver).
//!
//! Self-contained (std, ureq 3 without default features + `json`, serde_json, tempfile) so
//! integration tests can `mod webdriver;` it. Nothing here panics; every error is a `String`
//! carrying the WebDriver error code and message; every HTTP call has a timeout.
//!
//! ```ignore
//! let chrome = Chromium::launch()?;
//! let s = chrome.session(&SessionOpts::default())?;
//! s.goto("https://127.0.0.1:8443/consult")?;
//! s.wait_for("document.readyState === 'complete'", Duration::from_secs(10))?;
//! let v = s.execute_async("const done = arguments[arguments.length - 1]; done(1 + 1);", vec![])?;
//! ```
//!
//! One chromedriver serves any number of concurrent sessions (each is its own browser with
//! its own temporary profile). chromedriver is shut down when the [`Chromium`] handle *and*
//! every [`Session`] created from it are dropped, so drop order does not matter and no
//! browser is orphaned.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Arguments always passed to Chromium (before [`SessionOpts::extra_args`]).
pub const DEFAULT_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--ignore-certificate-errors",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--mute-audio",
    "--window-size=1280,800",
    // ICE host candidates carry real IPs instead of random `*.local` mDNS names (which a
    // non-browser peer cannot resolve and whose resolution multicasts on the LAN).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    // No phoning home from the test browser.
    "--no-first-run",
    "--disable-component-update",
    "--disable-domain-reliability",
];

const DRIVER_CANDIDATES: &[&str] = &[
    "chromedriver",
    "/usr/bin/chromedriver",
    "/usr/lib/chromium/chromedriver",
];
const BROWSER_CANDIDATES: &[&str] = &[
    "chromium",
    "/usr/bin/chromium",
    "/usr/lib/chromium/chromium",
    "chromium-browser",
    "google-chrome",
];
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
const NEW_SESSION_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// Options for [`Chromium::session`].
#[derive(Clone, Debug)]
pub struct SessionOpts {
    /// Browser binary; `None` = auto-detect (`chromium` on PATH, then Debian paths).
    pub binary: Option<PathBuf>,
    /// Appended after [`DEFAULT_ARGS`], e.g. `--use-file-for-fake-video-capture=/x.y4m`.
    pub extra_args: Vec<String>,
    /// Timeout for `execute_async` scripts (W3C `script` timeout).
    pub script_timeout: Duration,
    /// Timeout for `goto` (W3C `pageLoad` timeout).
    pub page_load_timeout: Duration,
}

impl Default for SessionOpts {
    fn default() -> Self {
        SessionOpts {
            binary: None,
            extra_args: Vec::new(),
            script_timeout: Duration::from_secs(30),
            page_load_timeout: Duration::from_secs(30),
        }
    }
}

/// A running chromedriver (`chromedriver --port=P` on 127.0.0.1).
pub struct Chromium {
    driver: Arc<Driver>,
}

/// One browser (W3C session). Deleted (browser closed, profile removed) on drop.
pub struct Session {
    driver: Arc<Driver>,
    id: String,
    base: String,
    script_timeout: Duration,
    page_load_timeout: Duration,
    closed: bool,
    profile: Option<tempfile::TempDir>,
}

struct Driver {
    child: Mutex<Child>,
    url: String,
    agent: ureq::Agent,
}

impl Chromium {
    /// Spawn chromedriver on a free port and wait (up to 20 s) until `/status` reports ready.
    pub fn launch() -> Result<Chromium, String> {
        let bin = find_binary(DRIVER_CANDIDATES).ok_or_else(|| {
            format!("chromedriver not found (tried {DRIVER_CANDIDATES:?}); run tests/support/setup.sh")
        })?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .max_idle_connections_per_host(16)
            .build()
            .into();
        let mut last_err = String::new();
        // The free-port probe is racy (another process may grab the port): retry a few times.
        for _ in 0..3 {
            let port = free_port()?;
            let child = Command::new(&bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
            let driver = Driver {
                child: Mutex::new(child),
                url: format!("http://127.0.0.1:{port}"),
                agent: agent.clone(),
            };
            match driver.wait_ready() {
                Ok(()) => {
                    return Ok(Chromium {
                        driver: Arc::new(driver),
                    });
                }
                Err(e) => last_err = e, // `driver` dropped here: child killed
            }
        }
        Err(format!("chromedriver did not become ready: {last_err}"))
    }

    /// chromedriver base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.driver.url
    }

    /// Start a new headless browser session.
    pub fn session(&self, opts: &SessionOpts) -> Result<Session, String> {
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => find_binary(BROWSER_CANDIDATES).ok_or_else(|| {
                format!("chromium not found (tried {BROWSER_CANDIDATES:?}); run tests/support/setup.sh")
            })?,
        };
        let profile = tempfile::Builder::new()
            .prefix("wd-profile-")
            .tempdir()
            .map_err(|e| format!("create profile dir: {e}"))?;
        let mut args: Vec<String> = DEFAULT_ARGS.iter().map(|s| s.to_string()).collect();
        args.extend(opts.extra_args.iter().cloned());
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "pageLoadStrategy": "normal",
                    "timeouts": {
                        "script": ms(opts.script_timeout),
                        "pageLoad": ms(opts.page_load_timeout),
                        "implicit": 0
                    },
                    "goog:chromeOptions": {
                        "binary": binary.to_string_lossy(),
                        "args": args,
                    },
                    "goog:loggingPrefs": { "browser": "ALL" }
                }
            }
        });
        let v = self
            .driver
            .request("POST", "/session", Some(&caps), NEW_SESSION_TIMEOUT)?;
        let id = v
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("POST /session: no sessionId in {v}"))?
            .to_string();
        Ok(Session {
            driver: self.driver.clone(),
            base: format!("/session/{id}"),
            id,
            script_timeout: opts.script_timeout,
            page_load_timeout: opts.page_load_timeout,
            closed: false,
            profile: Some(profile),
        })
    }
}

impl Session {
    /// The WebDriver session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Navigate and wait for the page load (per `page_load_timeout`).
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd(
            "POST",
            "/url",
            Some(&json!({ "url": url })),
            self.page_load_timeout + Duration::from_secs(15),
        )
        .map(|_| ())
    }

    /// Sets a cookie for the current page's origin (navigate there first):
    /// how a test hands a browser the session an API login made.
    pub fn add_cookie(&self, name: &str, value: &str) -> Result<(), String> {
        let cookie = json!({ "cookie": {
            "name": name, "value": value, "path": "/", "secure": true, "httpOnly": true, "sameSite": "Strict",
        }});
        self.cmd("POST", "/cookie", Some(&cookie), HTTP_TIMEOUT).map(|_| ())
    }

    /// Current page URL.
    pub fn current_url(&self) -> Result<String, String> {
        let v = self.cmd("GET", "/url", None, HTTP_TIMEOUT)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Run a script (function body; use `return`, `arguments[i]`). A returned Promise is awaited
    /// (bounded by the script timeout); a rejection or throw is an `Err` with "javascript error".
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        let body = json!({ "script": script, "args": args });
        self.cmd("POST", "/execute/sync", Some(&body), HTTP_TIMEOUT)
    }

    /// Run an asynchronous script: the last argument is the completion callback, which MUST be
    /// called (a returned Promise is ignored: script timeout), e.g.
    /// `const done = arguments[arguments.length - 1]; f().then(done, e => done({error: String(e)}));`.
    /// Note [`Session::execute`] also awaits a returned Promise: `return (async () => {...})()`.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        let body = json!({ "script": script, "args": args });
        self.cmd(
            "POST",
            "/execute/async",
            Some(&body),
            self.script_timeout + Duration::from_secs(15),
        )
    }

    /// Poll the JS expression `expr` every 200 ms until it is truthy; returns its value.
    /// `expr` may evaluate to a Promise (awaited), e.g. `pc.getStats().then(...)`.
    /// On timeout the error contains the last value (or the last script error).
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let script = format!("return ({expr});");
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.execute(&script, Vec::new()) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "wait_for `{expr}` timed out after {timeout:?}; last value: {last}"
                ));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Browser console messages since the last call, as `LEVEL message` (chromedriver's
    /// non-W3C `/se/log`; enabled via `goog:loggingPrefs`).
    pub fn console_logs(&self) -> Result<Vec<String>, String> {
        let v = self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" })), HTTP_TIMEOUT)?;
        let entries = v.as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .map(|e| {
                let level = e.get("level").and_then(Value::as_str).unwrap_or("?");
                let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                format!("{level} {msg}")
            })
            .collect())
    }

    /// Clicks the first element matching a CSS selector. A WebDriver click is
    /// a trusted user gesture, which APIs such as getDisplayMedia require.
    pub fn click(&self, css: &str) -> Result<(), String> {
        let el = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
            HTTP_TIMEOUT,
        )?;
        let id = el
            .get("element-6066-11e4-a52e-4f735466cecf")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("click {css}: no element id in {el}"))?
            .to_string();
        self.cmd("POST", &format!("/element/{id}/click"), Some(&json!({})), HTTP_TIMEOUT)
            .map(|_| ())
    }

    fn element(&self, css: &str) -> Result<String, String> {
        let el = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
            HTTP_TIMEOUT,
        )?;
        el.get("element-6066-11e4-a52e-4f735466cecf")
            .and_then(|v| v.as_str())
            .map(String::from)
            .ok_or_else(|| format!("{css}: no element id in {el}"))
    }

    /// Types into the first element matching `css` as a user would (trusted
    /// key events, so input handlers and autosave run).
    pub fn send_keys(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.element(css)?;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
            HTTP_TIMEOUT,
        )
        .map(|_| ())
    }

    /// A pointer drag starting at the centre of `css`, moving by (dx, dy)
    /// in `steps`, with mouse `button` (0 left, 2 right).
    pub fn drag(&self, css: &str, dx: i64, dy: i64, button: u8, steps: i64) -> Result<(), String> {
        let id = self.element(css)?;
        let origin = json!({ "element-6066-11e4-a52e-4f735466cecf": id });
        let mut actions = vec![
            json!({ "type": "pointerMove", "duration": 0, "origin": origin, "x": 0, "y": 0 }),
            json!({ "type": "pointerDown", "button": button }),
        ];
        for i in 1..=steps.max(1) {
            actions.push(json!({
                "type": "pointerMove", "duration": 30, "origin": origin,
                "x": dx * i / steps.max(1), "y": dy * i / steps.max(1),
            }));
        }
        actions.push(json!({ "type": "pointerUp", "button": button }));
        let body = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" }, "actions": actions,
        }]});
        self.cmd("POST", "/actions", Some(&body), HTTP_TIMEOUT)?;
        self.cmd("DELETE", "/actions", None, HTTP_TIMEOUT).map(|_| ())
    }

    /// Mouse-wheel ticks over the centre of `css` (positive = down).
    pub fn wheel(&self, css: &str, delta_y: i64, ticks: u32) -> Result<(), String> {
        let id = self.element(css)?;
        let origin = json!({ "element-6066-11e4-a52e-4f735466cecf": id });
        let actions: Vec<Value> = (0..ticks)
            .map(|_| json!({ "type": "scroll", "x": 0, "y": 0, "deltaX": 0, "deltaY": delta_y, "duration": 50, "origin": origin }))
            .collect();
        let body = json!({ "actions": [{ "type": "wheel", "id": "wheel", "actions": actions }] });
        self.cmd("POST", "/actions", Some(&body), HTTP_TIMEOUT).map(|_| ())
    }

    /// Saves a screenshot under `target/screenshots/<name>.png`; returns the path.
    pub fn save_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = self.screenshot_png()?;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let p = dir.join(format!("{name}.png"));
        std::fs::write(&p, png).map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Screenshot of the viewport as PNG bytes.
    pub fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        let v = self.cmd("GET", "/screenshot", None, HTTP_TIMEOUT)?;
        let b64 = v
            .as_str()
            .ok_or_else(|| format!("screenshot: expected base64 string, got {v}"))?;
        base64_decode(b64)
    }

    /// Close the browser and end the session.
    pub fn quit(mut self) -> Result<(), String> {
        self.delete()
    }

    fn delete(&mut self) -> Result<(), String> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let r = self
            .driver
            .request("DELETE", &self.base, None, Duration::from_secs(20))
            .map(|_| ());
        // Remove the profile only after the browser has exited.
        if let Some(p) = self.profile.take() {
            let _ = p.close();
        }
        r
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, String> {
        if self.closed {
            return Err("session already closed".into());
        }
        self.driver
            .request(method, &format!("{}{path}", self.base), body, timeout)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

impl Driver {
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::from("no answer");
        loop {
            if let Ok(mut c) = self.child.lock()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!("chromedriver exited early ({st}); last /status: {last}"));
            }
            match self.request("GET", "/status", None, Duration::from_secs(2)) {
                Ok(v) if v.get("ready").and_then(Value::as_bool) == Some(true) => return Ok(()),
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {STARTUP_TIMEOUT:?}; last /status: {last}"));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command; returns the response's `value`, or the WebDriver error as text.
    fn request(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, String> {
        let url = format!("{}{path}", self.url);
        let what = format!("{method} {path}");
        let t = Some(timeout);
        let resp = match method {
            "GET" => self.agent.get(&url).config().timeout_global(t).build().call(),
            "DELETE" => self.agent.delete(&url).config().timeout_global(t).build().call(),
            _ => {
                let empty = json!({});
                let b = body.unwrap_or(&empty);
                self.agent.post(&url).config().timeout_global(t).build().send_json(b)
            }
        };
        let mut resp = resp.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| format!("{what}: reading response (HTTP {status}): {e}"))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{what}: HTTP {status}, non-JSON body ({e}): {}", clip(&text)))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        let err = value.get("error").and_then(Value::as_str);
        if (200..300).contains(&status) && err.is_none() {
            return Ok(value);
        }
        let msg = value.get("message").and_then(Value::as_str).unwrap_or("");
        Err(format!(
            "{what}: HTTP {status}: {}: {msg}",
            err.unwrap_or("unknown error")
        ))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Graceful: /shutdown makes chromedriver quit its remaining browsers (SIGKILL would orphan them).
        let _ = self.request("GET", "/shutdown", None, Duration::from_secs(5));
        let Ok(mut child) = self.child.lock() else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("local_addr: {e}"))
}

/// First candidate that is an executable path, or a name found on PATH.
fn find_binary(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        if c.contains('/') {
            if is_executable(Path::new(c)) {
                return Some(PathBuf::from(c));
            }
            continue;
        }
        let path = std::env::var_os("PATH")?;
        for dir in std::env::split_paths(&path) {
            let p = dir.join(c);
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// JavaScript truthiness of a JSON-serialised value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(300) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        if c.is_ascii_whitespace() {
            continue;
        }
        let d = val(c).ok_or_else(|| format!("base64: invalid byte 0x{c:02x}"))?;
        acc = (acc << 6) | d;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
