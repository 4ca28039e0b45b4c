//! Overload limits and exposure of the HTTPS side, against the real gateway
//! binary with real clients (curl, Python's ssl/http.client, DCMTK
//! storescu): a login flood, lockouts that do not lock owners out, stalled
//! study downloads, metrics and health exposure, security headers, file
//! modes, UID checks on path parameters and zip entry names.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PW: &str = "correct-horse-battery";

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn ct(n: usize) -> Vec<PathBuf> {
    (1..=n).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect()
}

/// Response headers (lower-cased names) and status of an HTTPS request.
fn headers(port: u16, path: &str, auth: Option<&Auth>) -> (u16, Vec<(String, String)>) {
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "60", "-o", "/dev/null", "-D", "-"]);
    if let Some(a) = auth {
        c.args(["-b", &a.jar.display().to_string()]);
    }
    c.arg(format!("https://127.0.0.1:{port}{path}"));
    let o = run(c);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let h = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, h)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The session cookie curl stored for `a` (Netscape cookie-jar format).
fn session_cookie(a: &Auth) -> String {
    let jar = std::fs::read_to_string(&a.jar).expect("cookie jar");
    let v = jar
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7 && f[5] == "mr_session").then(|| f[6].to_string())
        })
        .next_back()
        .expect("mr_session in the jar");
    format!("mr_session={v}")
}

fn zip_names(bytes: &[u8], dir: &Path) -> Vec<String> {
    let zip = dir.join(format!("z-{}.zip", bytes.len()));
    std::fs::write(&zip, bytes).expect("write zip");
    let o = run({
        let mut c = Command::new(python());
        c.args([
            "-c",
            "import sys,zipfile,json\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(json.dumps(z.namelist()))",
        ])
        .arg(&zip);
        c
    });
    assert!(o.status.success(), "not a valid zip: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("names")
}

/// Issue 16 item 4: 500 parallel logins with random names from 500
/// addresses (so only global bounds apply) while a modality sends a study.
/// The server's RSS stays within +200 MB, every C-STORE is acknowledged,
/// logins beyond the hashing slots are answered 503 with Retry-After at
/// once, failed-login audit rows are capped (the rest summarised), and the
/// right password works as soon as the flood stops.
#[test]
fn a_login_flood_is_bounded_and_cstore_keeps_flowing() {
    let s = Server::start(ServerOpts::default());
    let pid = s.pid();
    let base = rss_kb(pid);
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let files = ct(100);
    let store = {
        let mut c = s.storescu("CT01");
        c.args(&files);
        std::thread::spawn(move || run(c))
    };
    // Waves of 500 until the study has been sent: the flood covers the
    // whole transfer.
    let mut codes: std::collections::HashMap<String, u64> = Default::default();
    let mut waves = 0;
    while waves == 0 || !store.is_finished() {
        let o = run({
            let mut c = Command::new(python());
            c.arg(script("login_flood.py"))
                .args(["--port", &s.http_port.to_string(), "--count", "500"]);
            c
        });
        assert!(o.status.success(), "flood: {}", text(&o));
        let r: Value = serde_json::from_slice(&o.stdout).expect("flood json");
        assert_eq!(r["retry_after_missing"], 0, "every refusal says when to retry: {r}");
        assert_eq!(r["errors"], json!([]), "{r}");
        for (k, v) in r["codes"].as_object().expect("codes") {
            *codes.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        waves += 1;
    }
    let o = store.join().expect("storescu thread");
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert!(o.status.success(), "storescu during the flood: {}", text(&o));
    assert_eq!(
        s.sqlite("SELECT COUNT(*) FROM instances"),
        "100",
        "every instance acknowledged and stored"
    );
    let grew_mb = peak.load(Ordering::Relaxed).saturating_sub(base) / 1024;
    eprintln!(
        "login flood: {waves} waves of 500, answers {codes:?}, RSS {} MB + {grew_mb} MB at peak",
        base / 1024
    );
    assert!(
        grew_mb <= 200,
        "RSS grew by {grew_mb} MB during {waves} waves of 500 logins ({codes:?})"
    );
    assert!(
        codes.keys().all(|k| ["401", "429", "503"].contains(&k.as_str())),
        "{codes:?}"
    );
    assert!(
        codes.get("503").copied().unwrap_or(0) > 0,
        "the hashing bound answered 503: {codes:?}"
    );
    let failed = codes.get("401").copied().unwrap_or(0);
    assert!(failed > 0, "{codes:?}");

    // The flood is over: the right password works at once.
    s.login("admin", ADMIN_PASSWORD).expect("admin logs in after the flood");

    // Failed logins: at most 60 itemised rows a minute; the rest are counted
    // in one summary row per minute, written once the minute has passed.
    let itemised: u64 = s
        .sqlite("SELECT COUNT(*) FROM audit WHERE action = 'login_failed' AND username != ''")
        .parse()
        .expect("count");
    let summarised = || -> u64 {
        s.sqlite("SELECT detail FROM audit WHERE action = 'login_failed' AND username = ''")
            .lines()
            .filter_map(|d| d.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
            .sum()
    };
    s.wait_for(120, "the summary row of the flood's last minute", || {
        itemised + summarised() == failed
    });
    let minutes = s
        .sqlite("SELECT COUNT(*) FROM audit WHERE action = 'login_failed' AND username = ''")
        .parse::<u64>()
        .expect("count");
    assert!(
        itemised <= 60 * (minutes + 1),
        "{itemised} itemised rows over {minutes} summarised minutes"
    );
}

/// Issue 16 items 4 and 11e: the lockout arithmetic, and an attacker who
/// locks a username out does not lock its owner out: neither her session
/// nor her next login from an address she has used before.
#[test]
fn a_locked_username_does_not_lock_out_its_owner() {
    let s = Server::start(ServerOpts::default());
    s.add_user("dr.li", "expert", PW, &[]);
    let owner = s.login("dr.li", PW).expect("owner logs in from 127.0.0.1");
    // Five free failures, the sixth still answered (and starts the lockout),
    // the seventh refused with 429 and Retry-After; the right password too.
    for i in 1..=6 {
        let (code, body) = s
            .login_from("127.0.0.9", "dr.li", "wrong password!")
            .expect_err("wrong password");
        assert_eq!(code, 401, "attempt {i}: {body}");
    }
    let (code, body) = s
        .login_from("127.0.0.9", "dr.li", "wrong password!")
        .expect_err("locked");
    assert_eq!(code, 429, "{body}");
    let wait = body["retry_after_secs"].as_u64().unwrap_or(0);
    assert!((1..=30).contains(&wait), "the first lockout is 30 s: {body}");
    let (code, _) = s.login_from("127.0.0.9", "dr.li", PW).expect_err("locked");
    assert_eq!(code, 429);
    // From any address the account never used: locked too.
    assert_eq!(s.login_from("127.0.0.10", "dr.li", PW).expect_err("locked").0, 429);
    // The owner's session keeps working, and she logs in again from her address.
    assert_eq!(s.req(Some(&owner), "GET", "/api/me", None).0, 200);
    let again = s.login("dr.li", PW).expect("the owner's known address is not locked");
    assert_eq!(s.req(Some(&again), "GET", "/api/me", None).0, 200);
    // ... and her success did not unlock the attacker.
    assert_eq!(s.login_from("127.0.0.9", "dr.li", PW).expect_err("still locked").0, 429);
}

/// Issue 16 item 5: study zips are bounded globally and per account; a
/// client that stops reading is cut after `write_timeout_secs`, which frees
/// its slot, and then a normal download works.
#[test]
fn stalled_zip_downloads_are_bounded_and_cut() {
    let s = Server::start(ServerOpts {
        config_toml: "[http]\nwrite_timeout_secs = 3\nmax_zip_downloads = 3\nmax_zip_downloads_per_account = 2\n"
            .into(),
        ..Default::default()
    });
    s.add_user("exp1", "expert", PW, &[]);
    s.add_user("exp2", "expert", PW, &[]);
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(ct(100));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let uid = s.sqlite("SELECT study_uid FROM studies");
    let path = format!("/api/studies/{uid}/archive.zip");
    let admin = s.admin.clone().expect("admin session");
    let exp1 = s.login("exp1", PW).expect("exp1");
    let exp2 = s.login("exp2", PW).expect("exp2");
    let stall = |who: &Auth, count: usize| {
        let mut child = Command::new(python())
            .arg(script("zip_stall.py"))
            .args(["--port", &s.http_port.to_string(), "--cookie", &session_cookie(who)])
            .args(["--path", &path, "--count", &count.to_string(), "--hold", "12"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zip_stall.py");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut out, &mut first).expect("first line");
        let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
        (child, out, v)
    };
    let (a, a_out, first) = stall(&admin, 2);
    assert_eq!(first["statuses"], json!([200, 200]), "{first}");
    // A third for the same account: 429, whatever the others do.
    let (code, h) = headers(s.http_port, &path, Some(&admin));
    assert_eq!(code, 429, "{h:?}");
    assert!(header(&h, "retry-after").is_some(), "{h:?}");
    let (b, b_out, first) = stall(&exp1, 1);
    assert_eq!(first["statuses"], json!([200]), "{first}");
    // The gateway's three are taken: 503 for anyone.
    let (code, h) = headers(s.http_port, &path, Some(&exp2));
    assert_eq!(code, 503, "{h:?}");
    assert!(header(&h, "retry-after").is_some(), "{h:?}");
    // The stalled clients are cut by the server (not served to the end).
    for (child, mut out) in [(a, a_out), (b, b_out)] {
        let mut second = String::new();
        std::io::BufRead::read_line(&mut out, &mut second).expect("second line");
        let o = child.wait_with_output().expect("zip_stall.py");
        let v: Value = serde_json::from_str(&second)
            .unwrap_or_else(|e| panic!("{e}: {second:?} {}", String::from_utf8_lossy(&o.stderr)));
        for c in v["conns"].as_array().expect("conns") {
            assert_eq!(c["closed"], true, "the server closed the stalled download: {v}");
            assert_eq!(c["complete"], false, "{v}");
        }
    }
    assert!(s.metric("medrelay_http_write_timeouts_total") >= 3.0);
    assert_eq!(s.metric("medrelay_zip_refused_total"), 2.0);
    // Their slots are free again: a normal download of the whole study works.
    let (code, body) = http_send_as(s.http_port, "GET", &path, None, Some(&exp2));
    assert_eq!(code, 200);
    assert_eq!(zip_names(&body, &s.dir).len(), 100);
}

/// Issue 16 item 8: metrics off the API listener, health without
/// internals for anonymous callers, the security headers on every response,
/// a private data directory after a real ingest, and CSV formula defusing
/// of a leading TAB or CR.
#[test]
fn exposure_headers_file_modes_and_csv() {
    let token = "metrics-token-for-tests-0123456789";
    let s = Server::start(ServerOpts {
        config_toml: format!("[metrics]\ntoken = \"{token}\"\n"),
        ..Default::default()
    });
    // /metrics is not on the API listener; its own listener wants the token.
    assert_eq!(s.req(None, "GET", "/metrics", None).0, 404);
    assert_eq!(s.get("/metrics").0, 404, "not even for admins");
    assert_eq!(s.metrics_get("/metrics", None).0, 401);
    assert_eq!(s.metrics_get("/metrics", Some("wrong")).0, 401);
    let (code, m) = s.metrics_get("/metrics", Some(token));
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&m).contains("medrelay_dicom_associations_total"));
    // Health: status only for anonymous callers; details for admins and the metrics listener.
    let (code, anon) = s.req(None, "GET", "/api/health", None);
    assert_eq!((code, &anon), (200, &json!({ "status": "ok" })));
    let full = s.get_json("/api/health");
    assert!(full["version"].is_string() && full["free_bytes"].is_u64(), "{full}");
    let (code, body) = s.metrics_get("/api/health", Some(token));
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert!(v["free_bytes"].is_u64(), "{v}");

    // Security headers on pages, assets, API answers, errors and downloads.
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(ct(2));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let study = s.sqlite("SELECT study_uid FROM studies");
    let sop = s.sqlite("SELECT sop_instance_uid FROM instances LIMIT 1");
    let admin = s.admin.clone().expect("admin");
    for (path, auth) in [
        ("/login".to_string(), None),
        ("/consult".into(), None),
        ("/web/login.js".into(), None),
        ("/api/health".into(), None),
        ("/api/me".into(), None),
        ("/no/such/route".into(), None),
        (format!("/api/instances/{sop}/file"), Some(&admin)),
        (format!("/api/studies/{study}/archive.zip"), Some(&admin)),
    ] {
        let (code, h) = headers(s.http_port, &path, auth);
        assert!(code > 0, "{path}");
        let hsts = header(&h, "strict-transport-security").unwrap_or("");
        assert!(
            hsts.starts_with("max-age=") && !hsts.starts_with("max-age=0"),
            "{path}: {h:?}"
        );
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header(&h, "referrer-policy"), Some("no-referrer"), "{path}");
        let csp = header(&h, "content-security-policy").unwrap_or("");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        let connect = csp
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("connect-src"))
            .unwrap_or("");
        assert_eq!(connect, "connect-src 'self'", "{path}: {csp}");
    }

    // Data directory 0700, every file 0600 or stricter, after a real ingest
    // with rendered previews (instances, previews, index, WAL, tmp).
    s.wait_for(60, "previews rendered", || {
        s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") == "2"
    });
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&s.data_dir), 0o700);
    let mut seen = 0;
    let mut stack = vec![s.data_dir.clone(), s.dir.join("certs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            let m = mode(&p);
            assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            if p.is_dir() {
                stack.push(p);
            } else {
                seen += 1;
            }
        }
    }
    assert!(seen >= 6, "instances, previews, index: {seen} files");

    // Audit CSV: a leading TAB or CR does not hide a formula.
    for name in ["\t=1+2", "\r=cmd|' /C calc'!A0"] {
        let body = json!({ "username": name, "password": "wrong password!" });
        assert_eq!(s.req(None, "POST", "/api/login", Some(body)).0, 401);
    }
    let (code, csv) = s.get("/api/admin/audit?format=csv&action=login_failed");
    assert_eq!(code, 200);
    let csv = String::from_utf8_lossy(&csv);
    assert!(csv.contains(",'\t=1+2,"), "{csv:?}");
    assert!(csv.contains(",\"'\r=cmd|' /C calc'!A0\","), "{csv:?}");
}

/// Issue 16 item 7, HTTP side: a UID from a request path is checked by the
/// DICOM UID grammar before it reaches a file, a query or a zip entry
/// (400 on every route), and a crafted series UID in the index cannot name
/// a zip entry outside the zip's folder (zip-slip).
#[test]
fn uids_in_paths_and_zip_entries_are_checked() {
    let s = Server::start(ServerOpts::default());
    let o = run({
        let mut c = s.storescu("CT01");
        c.args(ct(2));
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let study = s.sqlite("SELECT study_uid FROM studies");
    let admin = s.admin.clone().expect("admin");
    for bad in ["..%2F..%2F..%2Fetc%2Fpasswd", "1.2.a", "1..2", "1.2.3%00", "%2e%2e"] {
        for (method, path) in [
            ("GET", format!("/api/studies/{bad}")),
            ("GET", format!("/api/studies/{bad}/archive.zip")),
            ("GET", format!("/api/studies/{bad}/key-images")),
            ("GET", format!("/api/studies/{bad}/reports")),
            ("GET", format!("/api/series/{bad}/instances")),
            ("GET", format!("/api/instances/{bad}/file")),
            ("GET", format!("/api/instances/{bad}/thumbnail")),
            ("GET", format!("/api/instances/{bad}/tags")),
            ("GET", format!("/api/worklist/{bad}/history")),
            ("POST", format!("/api/worklist/{bad}/release")),
            ("GET", format!("/api/relay/arriving/{bad}/thumb")),
        ] {
            let (code, body) = s.req(Some(&admin), method, &path, None);
            assert_eq!(code, 400, "{method} {path}: {body}");
        }
    }
    // A series UID that would climb out of the folder, put straight into the index.
    let sop = s.sqlite("SELECT sop_instance_uid FROM instances ORDER BY sop_instance_uid LIMIT 1");
    s.sqlite_exec(&format!(
        "UPDATE instances SET series_uid = '../../../../tmp/evil' WHERE sop_instance_uid = '{sop}'"
    ));
    s.sqlite_exec(&format!(
        "UPDATE instances SET sop_instance_uid = '../../x' WHERE sop_instance_uid != '{sop}'"
    ));
    let (code, body) = s.get(&format!("/api/studies/{study}/archive.zip"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let names = zip_names(&body, &s.dir);
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        let parts: Vec<&str> = n.split('/').collect();
        assert_eq!(parts.len(), 2, "{n}");
        assert!(
            parts.iter().all(|p| !p.is_empty()
                && *p != ".."
                && *p != "."
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))),
            "unsafe entry {n:?}"
        );
    }
    assert!(names.contains(&format!("series-0/{sop}.dcm")), "{names:?}");
}
