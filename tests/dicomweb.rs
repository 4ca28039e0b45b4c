//! DICOMweb over the real peers: studies pushed by DCMTK storescu, API
//! tokens made with the real `medrelay api-token` command, WADO-RS read by
//! curl (raw bytes, headers) and by the PyPI dicomweb-client (an
//! independent multipart and DICOM JSON reader): scope by token (404 out
//! of scope, 401 unknown or revoked), byte-identical retrieve, metadata
//! with Chinese names and bulk data URIs, its cache replaced when a series
//! grows, CORS for listed origins only, the audit trail.
//!
//! Runs on the embedded defaults and, with `MEDRELAY_TEST_INDEX=pg
//! MEDRELAY_TEST_STORAGE=s3`, on PostgreSQL and S3.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

const CONFIG: &str = r#"
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[clinic]]
id = "t02"
name = "Township 02"
ae_titles = ["T02_MR"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]

[dicomweb]
cors_origins = ["https://ohif.example"]
"#;

/// An HTTPS answer: status, headers (names lower case), body.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

/// curl against the gateway with extra arguments (headers, method).
fn curl(s: &Server, path: &str, args: &[&str]) -> Answer {
    let tag = format!("{}-{}", std::process::id(), rand_id());
    let body = s.dir.join(format!("dw-body-{tag}"));
    let heads = s.dir.join(format!("dw-heads-{tag}"));
    let o = run({
        let mut c = Command::new("curl");
        c.args(["-sk", "--max-time", "120", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&heads)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("https://127.0.0.1:{}{path}", s.http_port));
        c
    });
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
    let headers = std::fs::read_to_string(&heads)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body_bytes = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    let _ = std::fs::remove_file(&heads);
    Answer {
        code,
        headers,
        body: body_bytes,
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn bearer(s: &Server, path: &str, token: &str, extra: &[&str]) -> Answer {
    let auth = format!("Authorization: Bearer {token}");
    let mut args = vec!["-H", auth.as_str()];
    args.extend_from_slice(extra);
    curl(s, path, &args)
}

/// The DICOM parts of a multipart/related body.
fn parts(a: &Answer) -> Vec<Vec<u8>> {
    let ct = a.header("content-type").expect("content type");
    assert!(ct.contains("type=\"application/dicom\""), "{ct}");
    parts_typed(a)
        .into_iter()
        .map(|(t, b)| {
            assert_eq!(t, "application/dicom");
            b
        })
        .collect()
}

/// The parts of a multipart/related body, split at the boundary its
/// Content-Type names: each part's Content-Type and bytes.
fn parts_typed(a: &Answer) -> Vec<(String, Vec<u8>)> {
    let ct = a.header("content-type").expect("content type");
    assert!(ct.starts_with("multipart/related"), "{ct}");
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .expect("boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let mut out = Vec::new();
    let body = &a.body;
    let find = |from: usize| {
        body[from..]
            .windows(delim.len())
            .position(|w| w == delim.as_slice())
            .map(|p| p + from)
    };
    let mut at = find(0).expect("first boundary");
    loop {
        let after = at + delim.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let head_end = body[after..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part headers")
            + after
            + 4;
        let head = String::from_utf8_lossy(&body[after..head_end]).to_string();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| panic!("part without {name}: {head}"))
        };
        let len: usize = field("content-length").parse().expect("part length");
        out.push((field("content-type"), body[head_end..head_end + len].to_vec()));
        at = find(head_end + len).expect("next boundary");
    }
    out
}

/// The dataset of a Part 10 file: what follows the file meta group, whose
/// length (0002,0000) is its first element.
fn dataset_of(b: &[u8]) -> &[u8] {
    assert!(
        b.len() > 144 && &b[128..132] == b"DICM" && b[132..134] == [2, 0],
        "Part 10"
    );
    let group_len = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
    &b[144 + group_len..]
}

/// SOP Instance UID of a Part 10 file in memory (its meta's (0002,0003)).
fn sop_in(b: &[u8]) -> String {
    let meta = &b[132..b.len() - dataset_of(b).len()];
    let at = meta.windows(4).position(|w| w == [2, 0, 3, 0]).expect("(0002,0003)");
    let len = u16::from_le_bytes([meta[at + 6], meta[at + 7]]) as usize;
    String::from_utf8_lossy(&meta[at + 8..at + 8 + len])
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn token_add(s: &Server, name: &str, scope: &str) -> String {
    let o = s.cli(&["api-token", "add", name, "--scope", scope]);
    assert!(o.status.success(), "api-token add {name}: {}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(token.starts_with("mrt_") && token.len() == 68, "{token}");
    token
}

fn push(s: &Server, ae: &str, files: &[PathBuf]) {
    let o = run({
        let mut c = s.storescu(ae);
        c.args(files);
        c
    });
    assert!(o.status.success(), "storescu: {}", text(&o));
}

/// A JPEG Baseline file, sent as it is (storescu proposes JPEG with -xy).
fn push_jpeg(s: &Server, ae: &str, file: &Path) {
    let o = run({
        let mut c = s.storescu(ae);
        c.arg("-xy").arg(file);
        c
    });
    assert!(o.status.success(), "storescu -xy: {}", text(&o));
}

fn study_of(s: &Server, sop: &str) -> (String, String) {
    let row = s.sqlite(&format!(
        "SELECT study_uid, series_uid FROM instances WHERE sop_instance_uid = '{sop}'"
    ));
    let (a, b) = row.split_once('|').expect("indexed");
    (a.to_string(), b.to_string())
}

/// SOP Instance UID of a file (DCMTK's dcmdump).
fn sop_of(p: &Path) -> String {
    let o = run({
        let mut c = Command::new("dcmdump");
        c.args(["+P", "0008,0018", "-q"]).arg(p);
        c
    });
    let t = text(&o);
    t.split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| panic!("no SOP Instance UID in {}: {t}", p.display()))
        .to_string()
}

#[test]
fn wado_rs_with_tokens_scope_metadata_and_cors() {
    let s = Server::start(ServerOpts {
        config_toml: CONFIG.into(),
        ..Default::default()
    });
    // Clinic t01: three CT slices of one series. Clinic t02: MR_small and
    // Chinese names in GB18030 and `\ISO 2022 IR 58`.
    let ct: Vec<PathBuf> = (1..=3).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    push(&s, "T01_CT", &ct);
    let tmp = tempfile::tempdir().expect("tmp");
    let cn = chinese_datasets(tmp.path());
    let mr = corpus_pydicom().join("MR_small.dcm");
    let jpeg_file = corpus_pydicom().join("SC_rgb_jpeg_dcmtk.dcm");
    push(
        &s,
        "T02_MR",
        &[mr.clone(), cn["gb18030"].clone(), cn["iso2022"].clone()],
    );
    push_jpeg(&s, "T02_MR", &jpeg_file);
    let ecg = corpus_pydicom().join("waveform_ecg.dcm");
    push(&s, "T02_MR", std::slice::from_ref(&ecg));
    let (study_a, series_a) = study_of(&s, &sop_of(&ct[0]));
    let (study_b, _) = study_of(&s, &sop_of(&mr));
    let (study_gb, series_gb) = study_of(&s, &sop_of(&cn["gb18030"]));
    let (study_iso, series_iso) = study_of(&s, &sop_of(&cn["iso2022"]));

    // ---- tokens through the real binary
    let tok_a = token_add(&s, "viewer-a", "clinic:t01");
    let tok_b = token_add(&s, "viewer-b", "clinic:t02");
    let tok_city = token_add(&s, "city-pacs", "hospital:city");
    for (args, want) in [
        (vec!["api-token", "add", "x", "--scope", "clinic:t99"], "unknown clinic"),
        (
            vec!["api-token", "add", "x", "--scope", "hospital:nowhere"],
            "unknown hospital",
        ),
        (vec!["api-token", "add", "a b", "--scope", "all"], "token name"),
        (vec!["api-token", "add", "viewer-a", "--scope", "all"], "exists"),
        (vec!["api-token", "add", "x", "--scope", "ward:1"], "scope"),
    ] {
        let o = s.cli(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    let o = s.cli(&["api-token", "list"]);
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        list.contains("viewer-a\tclinic:t01") && list.contains("city-pacs\thospital:city"),
        "{list}"
    );
    for t in [&tok_a, &tok_b, &tok_city] {
        assert!(!list.contains(&t[4..]), "list shows a token");
    }
    let stored = s.sqlite("SELECT token_hash FROM api_tokens WHERE name = 'viewer-a'");
    assert_eq!(stored, sha(tok_a.as_bytes()), "only the SHA-256 is stored");

    // ---- scope: out of scope is 404 at every level; unknown tokens 401
    let study_path = |st: &str| format!("/dicom-web/studies/{st}");
    assert_eq!(bearer(&s, &study_path(&study_a), &tok_b, &[]).code, 404);
    assert_eq!(
        bearer(
            &s,
            &format!("{}/series/{series_a}/metadata", study_path(&study_a)),
            &tok_b,
            &[]
        )
        .code,
        404
    );
    let ct0 = sop_of(&ct[0]);
    assert_eq!(
        bearer(
            &s,
            &format!("{}/series/{series_a}/instances/{ct0}", study_path(&study_a)),
            &tok_b,
            &[]
        )
        .code,
        404
    );
    // a real instance under the wrong series is not found either
    assert_eq!(
        bearer(
            &s,
            &format!("{}/series/{series_gb}/instances/{ct0}", study_path(&study_a)),
            &tok_a,
            &[]
        )
        .code,
        404
    );
    assert_eq!(bearer(&s, &study_path(&study_b), &tok_a, &[]).code, 404);
    assert_eq!(bearer(&s, &study_path(&study_b), &tok_city, &[]).code, 404);
    assert_eq!(bearer(&s, &study_path("1.2.3.4.5"), &tok_a, &[]).code, 404);
    assert_eq!(bearer(&s, &study_path("1.2.x"), &tok_a, &[]).code, 400);
    let fake = format!("mrt_{}", "0".repeat(64));
    for t in [fake.as_str(), "not-a-token"] {
        let a = bearer(&s, &study_path(&study_a), t, &[]);
        assert_eq!(a.code, 401, "{t}");
        assert!(a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    }
    let anon = curl(&s, &study_path(&study_a), &[]);
    assert_eq!(anon.code, 401);
    assert!(anon.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    // Tokens open /dicom-web only, not the rest of the API.
    assert_eq!(bearer(&s, "/api/studies", &tok_a, &[]).code, 401);

    // ---- retrieve: the stored objects byte for byte, whose datasets are
    // the pushed files' (the gateway writes its own file meta: source AE)
    let a = bearer(&s, &study_path(&study_a), &tok_a, &[]);
    assert_eq!(a.code, 200, "{}", String::from_utf8_lossy(&a.body));
    let got = parts(&a);
    assert_eq!(got.len(), 3);
    for p in &got {
        let sop = sop_in(p);
        let rel = s.sqlite(&format!(
            "SELECT path FROM instances WHERE sop_instance_uid = '{sop}' ORDER BY version DESC LIMIT 1"
        ));
        let stored = std::fs::read(stored_path(&s, &rel)).expect("stored object");
        assert_eq!(sha(p), sha(&stored), "part {sop} is the stored object");
    }
    let mut got_ds: Vec<String> = got.iter().map(|p| sha(dataset_of(p))).collect();
    let mut want_ds: Vec<String> = ct
        .iter()
        .map(|p| sha(dataset_of(&std::fs::read(p).expect("source"))))
        .collect();
    got_ds.sort();
    want_ds.sort();
    assert_eq!(got_ds, want_ds, "the datasets are the pushed files', byte for byte");
    let a = bearer(&s, &study_path(&study_a), &tok_city, &[]);
    assert_eq!(
        (a.code, parts(&a).len()),
        (200, 3),
        "the hospital's token sees its clinic"
    );
    let one = bearer(
        &s,
        &format!("{}/series/{series_a}/instances/{ct0}", study_path(&study_a)),
        &tok_a,
        &[
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        ],
    );
    assert_eq!(one.code, 200);
    let one = parts(&one);
    assert_eq!(
        (one.len(), dataset_of(&one[0])),
        (1, dataset_of(&std::fs::read(&ct[0]).expect("source")))
    );
    // Another transfer syntax than the stored one: no transcoding, 406.
    let jpeg = bearer(
        &s,
        &study_path(&study_a),
        &tok_a,
        &[
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50",
        ],
    );
    assert_eq!(jpeg.code, 406);

    // ---- metadata: DICOM JSON with Unicode names and bulk data URIs
    for (st, se, what) in [
        (&study_gb, &series_gb, "GB18030"),
        (&study_iso, &series_iso, "ISO 2022 IR 58"),
    ] {
        let m = bearer(
            &s,
            &format!("{}/series/{se}/metadata", study_path(st)),
            &tok_b,
            &["-H", "Accept: application/dicom+json"],
        );
        assert_eq!(m.code, 200, "{what}");
        assert_eq!(m.header("content-type"), Some("application/dicom+json"));
        let v = m.json();
        let pn = &v[0]["00100010"];
        assert_eq!(pn["vr"], "PN");
        assert_eq!(
            pn["Value"][0],
            serde_json::json!({ "Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东", "Phonetic": "wang^xiaodong" }),
            "{what}"
        );
        let sop = v[0]["00080018"]["Value"][0].as_str().expect("sop");
        let uri = v[0]["7FE00010"]["BulkDataURI"]
            .as_str()
            .expect("pixel data is bulk data");
        assert_eq!(
            uri,
            format!("/dicom-web/studies/{st}/series/{se}/instances/{sop}/bulkdata/7FE00010")
        );
        assert!(v[0]["7FE00010"].get("InlineBinary").is_none());
    }
    let desc = bearer(
        &s,
        &format!("{}/series/{series_iso}/metadata", study_path(&study_iso)),
        &tok_b,
        &[],
    )
    .json();
    assert_eq!(desc[0]["00081030"]["Value"][0], "CT 腹部", "escape sequences gone");

    // The series' JSON is built once and kept through the storage
    // boundary; gzip as stored for clients that take it.
    let meta_path = format!("{}/series/{series_a}/metadata", study_path(&study_a));
    let m1 = bearer(&s, &meta_path, &tok_a, &[]).json();
    assert_eq!(m1.as_array().map(Vec::len), Some(3));
    let cached = format!("dicomweb/metadata/{series_a}.json.gz");
    let cache_file = stored_root(&s).join(&cached);
    assert!(cache_file.exists(), "{} cached", cache_file.display());
    let before = std::fs::read(&cache_file).expect("cache");
    let gz = bearer(&s, &meta_path, &tok_a, &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        &before[before.iter().position(|b| *b == b'\n').expect("header line") + 1..],
        &gz.body[..],
        "the cached object is what is sent"
    );
    // The series gains an instance: the cached JSON is replaced.
    push(&s, "T01_CT", &[ct300().join("CT000004.dcm")]);
    let m2 = bearer(&s, &meta_path, &tok_a, &[]).json();
    assert_eq!(m2.as_array().map(Vec::len), Some(4));
    assert_ne!(std::fs::read(&cache_file).expect("cache"), before);
    // Study and instance levels.
    let ms = bearer(&s, &format!("{}/metadata", study_path(&study_a)), &tok_a, &[]).json();
    assert_eq!(ms.as_array().map(Vec::len), Some(4));
    let mi = bearer(
        &s,
        &format!("{}/series/{series_a}/instances/{ct0}/metadata", study_path(&study_a)),
        &tok_a,
        &[],
    )
    .json();
    assert_eq!(mi[0]["00080018"]["Value"][0], ct0.as_str());
    assert_eq!(mi.as_array().map(Vec::len), Some(1));
    // A browser session works as for the API (GET: no CSRF needed).
    let admin = s.admin.as_ref().expect("admin session");
    let (code, body) = http_send_as(
        s.http_port,
        "GET",
        &format!("{}/metadata", study_path(&study_b)),
        None,
        Some(admin),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // ---- bulk data where metadata points: Pixel Data, and a waveform in
    // a sequence item (compared with what pydicom reads from the file)
    let pixel_uri = m2
        .as_array()
        .and_then(|a| a.iter().find(|i| i["00080018"]["Value"][0] == ct0.as_str()))
        .and_then(|i| i["7FE00010"]["BulkDataURI"].as_str())
        .expect("pixel data URI")
        .to_string();
    let b = bearer(&s, &pixel_uri, &tok_a, &[]);
    assert_eq!(b.code, 200, "{pixel_uri}");
    let src = std::fs::read(&ct[0]).expect("source");
    let px = parts_typed(&b);
    assert_eq!(&src[src.len() - px[0].1.len()..], &px[0].1[..], "Pixel Data bulk data");
    let sop_ecg = sop_of(&ecg);
    let (study_ecg, series_ecg) = study_of(&s, &sop_ecg);
    let me = bearer(
        &s,
        &format!("/dicom-web/studies/{study_ecg}/series/{series_ecg}/instances/{sop_ecg}/metadata"),
        &tok_b,
        &[],
    )
    .json();
    let wave_uri = me[0]["54000100"]["Value"][0]["54001010"]["BulkDataURI"]
        .as_str()
        .unwrap_or_else(|| panic!("waveform data URI: {}", me[0]["54000100"]))
        .to_string();
    assert!(wave_uri.ends_with("/bulkdata/54000100/0/54001010"), "{wave_uri}");
    let w = bearer(&s, &wave_uri, &tok_b, &[]);
    assert_eq!(w.code, 200, "{wave_uri}");
    let o = run({
        let mut c = Command::new(python());
        c.args([
            "-c",
            "import sys,hashlib,pydicom\nd=pydicom.dcmread(sys.argv[1])\nprint(hashlib.sha256(d.WaveformSequence[0].WaveformData).hexdigest())",
        ])
        .arg(&ecg);
        c
    });
    assert_eq!(sha(&parts_typed(&w)[0].1), text(&o).trim(), "waveform bytes");
    assert_eq!(bearer(&s, &wave_uri, &tok_a, &[]).code, 404, "out of scope");

    // ---- frames as stored; rendered and thumbnail
    let inst_a = format!("{}/series/{series_a}/instances/{ct0}", study_path(&study_a));
    let star = "Accept: multipart/related; type=\"application/octet-stream\"; transfer-syntax=*";
    let f = bearer(&s, &format!("{inst_a}/frames/1"), &tok_a, &["-H", star]);
    assert_eq!(f.code, 200, "{}", String::from_utf8_lossy(&f.body));
    let fp = parts_typed(&f);
    let src = std::fs::read(&ct[0]).expect("source");
    assert_eq!(fp.len(), 1);
    assert!(fp[0].0.starts_with("application/octet-stream"), "{}", fp[0].0);
    // the generated CT's Pixel Data is its last element: the frame is its tail
    assert_eq!(
        &src[src.len() - fp[0].1.len()..],
        &fp[0].1[..],
        "native frame bytes as stored"
    );
    assert_eq!(bearer(&s, &format!("{inst_a}/frames/2"), &tok_a, &[]).code, 404);
    assert_eq!(bearer(&s, &format!("{inst_a}/frames/0"), &tok_a, &[]).code, 400);
    assert_eq!(bearer(&s, &format!("{inst_a}/frames/1"), &tok_b, &[]).code, 404);
    let sop_jpeg = sop_of(&jpeg_file);
    let (study_jpeg, series_jpeg) = study_of(&s, &sop_jpeg);
    let inst_jpeg = format!("/dicom-web/studies/{study_jpeg}/series/{series_jpeg}/instances/{sop_jpeg}");
    let f = bearer(&s, &format!("{inst_jpeg}/frames/1"), &tok_b, &["-H", star]);
    assert_eq!(f.code, 200, "{}", String::from_utf8_lossy(&f.body));
    let fp = parts_typed(&f);
    assert_eq!(
        fp[0].0, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50",
        "compressed frame, its transfer syntax named"
    );
    assert_eq!(&fp[0].1[..2], &[0xFF, 0xD8], "a JPEG stream as stored");
    let jpeg_accept = "Accept: multipart/related; type=\"image/jpeg\"";
    let f = bearer(&s, &format!("{inst_jpeg}/frames/1"), &tok_b, &["-H", jpeg_accept]);
    assert_eq!(
        parts_typed(&f)[0].0,
        "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    );
    // No decompression: uncompressed frames of a JPEG instance are 406.
    let native = "Accept: multipart/related; type=\"application/octet-stream\"";
    assert_eq!(
        bearer(&s, &format!("{inst_jpeg}/frames/1"), &tok_b, &["-H", native]).code,
        406
    );
    for (what, path) in [
        ("rendered", format!("{inst_a}/rendered?window=40,400&viewport=128,128")),
        ("thumbnail", format!("{inst_a}/thumbnail")),
    ] {
        let r = bearer(&s, &path, &tok_a, &[]);
        assert_eq!(r.code, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("image/jpeg"), "{what}");
        assert_eq!(&r.body[..2], &[0xFF, 0xD8], "{what}");
        assert_eq!(bearer(&s, &path, &tok_b, &[]).code, 404, "{what} out of scope");
    }

    // ---- an independent client: dicomweb-client (retrieve + metadata)
    let base = format!("https://127.0.0.1:{}/dicom-web", s.http_port);
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("dicomweb_probe.py")).args([&base, &tok_b, &study_gb]);
        c
    });
    assert!(o.status.success(), "dicomweb_probe.py: {}", text(&o));
    let probe: Value = serde_json::from_slice(&o.stdout).expect("probe JSON");
    let sop_gb = sop_of(&cn["gb18030"]);
    assert_eq!(probe["instances"][0]["sop"], sop_gb.as_str(), "{probe}");
    assert_eq!(
        probe["instances"][0]["patient_name"], "Wang^Xiaodong=王^小东=wang^xiaodong",
        "{probe}"
    );
    assert_eq!(probe["metadata"][0]["sop"], sop_gb.as_str(), "{probe}");
    assert_eq!(
        probe["metadata"][0]["patient_name"], "Wang^Xiaodong=王^小东=wang^xiaodong",
        "{probe}"
    );
    assert!(
        probe["metadata"][0]["pixel_bulk"]
            .as_str()
            .is_some_and(|u| u.ends_with("/bulkdata/7FE00010")),
        "{probe}"
    );

    // ---- CORS: listed origin only
    let pre = |origin: &str| {
        curl(
            &s,
            &study_path(&study_a),
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: GET",
                "-H",
                "Access-Control-Request-Headers: authorization",
            ],
        )
    };
    let ok = pre("https://ohif.example");
    assert_eq!(ok.code, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://ohif.example"));
    assert!(
        ok.header("access-control-allow-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("authorization")),
        "{:?}",
        ok.headers
    );
    let no = pre("https://evil.example");
    assert_eq!(no.code, 403);
    assert_eq!(no.header("access-control-allow-origin"), None);
    let get = bearer(&s, &meta_path, &tok_a, &["-H", "Origin: https://ohif.example"]);
    assert_eq!(get.header("access-control-allow-origin"), Some("https://ohif.example"));
    let get = bearer(&s, &meta_path, &tok_a, &["-H", "Origin: https://evil.example"]);
    assert_eq!((get.code, get.header("access-control-allow-origin")), (200, None));

    // ---- audit: the token's name is the actor
    let rows = s.sqlite("SELECT action, study_uid FROM audit WHERE username = 'token:viewer-a' AND role = 'token'");
    assert!(rows.contains(&format!("download|{study_a}")), "{rows}");
    assert!(rows.contains(&format!("view|{study_a}")), "{rows}");

    // ---- revoke: refused from the next request on
    let o = s.cli(&["api-token", "revoke", "viewer-a"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(bearer(&s, &study_path(&study_a), &tok_a, &[]).code, 401);
    let o = s.cli(&["api-token", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("REVOKED"), "{}", text(&o));
    let used = s.sqlite("SELECT last_used_ms FROM api_tokens WHERE name = 'viewer-b'");
    assert!(used.parse::<i64>().is_ok_and(|t| t > 0), "last use recorded: {used}");
}

/// QIDO-RS through dicomweb-client (`dicomweb_probe.py --search`).
fn qido(s: &Server, token: &str, level: &str, filters: Value, study: Option<&str>) -> Vec<Value> {
    let base = format!("https://127.0.0.1:{}/dicom-web", s.http_port);
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("dicomweb_probe.py"))
            .args([base.as_str(), token, "--search", level])
            .arg(filters.to_string())
            .args(study);
        c
    });
    assert!(o.status.success(), "dicomweb_probe --search: {}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

#[test]
fn qido_rs_searches_every_level_with_c_find_matching_within_the_token_scope() {
    let s = Server::start(ServerOpts {
        config_toml: CONFIG.into(),
        ..Default::default()
    });
    let ct: Vec<PathBuf> = (1..=3).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    push(&s, "T01_CT", &ct);
    let tmp = tempfile::tempdir().expect("tmp");
    let cn = chinese_datasets(tmp.path());
    push(
        &s,
        "T02_MR",
        &[cn["gb18030"].clone(), cn["utf8"].clone(), cn["alpha"].clone()],
    );
    let (study_ct, series_ct) = study_of(&s, &sop_of(&ct[0]));
    let (study_gb, _) = study_of(&s, &sop_of(&cn["gb18030"]));
    let tok_a = token_add(&s, "qido-a", "clinic:t01");
    let tok_b = token_add(&s, "qido-b", "clinic:t02");
    let ids = |v: &[Value]| -> Vec<String> {
        let mut x: Vec<String> = v
            .iter()
            .map(|r| r["PatientID"].as_str().unwrap_or("").to_string())
            .collect();
        x.sort();
        x
    };

    // Studies: a Chinese wildcard, a date range, an exact ID; names come
    // back with their groups, counts as numbers pydicom reads.
    let m = qido(&s, &tok_b, "studies", serde_json::json!({"PatientName": "王*"}), None);
    assert_eq!(ids(&m), ["CN-gb18030", "CN-utf8"]);
    assert!(
        m.iter()
            .all(|r| r["PatientName"].as_str().is_some_and(|n| n.contains("王^小东"))),
        "{m:?}"
    );
    assert!(m.iter().all(|r| r["NumberOfStudyRelatedInstances"] == "1"), "{m:?}");
    let m = qido(
        &s,
        &tok_b,
        "studies",
        serde_json::json!({"StudyDate": "20260301-20260302", "PatientID": "CN-a*"}),
        None,
    );
    assert_eq!(ids(&m), ["CN-alpha"]);
    // Scope: clinic t01's token finds none of t02's studies, even by UID.
    let m = qido(
        &s,
        &tok_a,
        "studies",
        serde_json::json!({"StudyInstanceUID": study_gb}),
        None,
    );
    assert!(m.is_empty(), "{m:?}");
    let m = qido(&s, &tok_a, "studies", serde_json::json!({}), None);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["StudyInstanceUID"], study_ct.as_str());

    // Series of a study, instances of a study with includefield.
    let m = qido(
        &s,
        &tok_a,
        "series",
        serde_json::json!({"Modality": "CT"}),
        Some(&study_ct),
    );
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["SeriesInstanceUID"], series_ct.as_str());
    assert_eq!(m[0]["NumberOfSeriesRelatedInstances"], "3");
    let m = qido(
        &s,
        &tok_a,
        "instances",
        serde_json::json!({"includefield": "StudyDescription"}),
        Some(&study_ct),
    );
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(
        m.iter()
            .all(|r| r.get("SOPInstanceUID").is_some() && r.get("StudyDescription").is_some())
    );

    // limit / offset page through, with a Warning while more remain.
    let page = |q: &str| bearer(&s, &format!("/dicom-web/instances?{q}"), &tok_a, &[]);
    let a = page("limit=2");
    assert_eq!(a.code, 200);
    assert_eq!(a.json().as_array().map(Vec::len), Some(2));
    assert!(
        a.header("warning").is_some_and(|w| w.starts_with("299")),
        "{:?}",
        a.headers
    );
    let b = page("limit=2&offset=2");
    assert_eq!(b.json().as_array().map(Vec::len), Some(1));
    assert!(b.header("warning").is_none());
    assert_eq!(b.header("content-type"), Some("application/dicom+json"));
    // Bad parameters are 400; no credentials 401.
    assert_eq!(page("NoSuchKey=1").code, 400);
    assert_eq!(page("StudyInstanceUID=1.2.*").code, 400);
    assert_eq!(page("limit=100000").code, 400);
    assert_eq!(curl(&s, "/dicom-web/studies", &[]).code, 401);
    // Browser sessions of every role get the API's scope: admin all,
    // the expert of "city" (serves t01) and t01's doctor clinic t01 only,
    // t02's doctor clinic t02 only.
    s.add_user("qexp", "expert", "qido-pass-1234", &["--hospital", "city"]);
    s.add_user("qdoc1", "clinic", "qido-pass-1234", &["--clinic", "t01"]);
    s.add_user("qdoc2", "clinic", "qido-pass-1234", &["--clinic", "t02"]);
    let studies_as = |a: &Auth| -> Vec<String> {
        let jar = a.jar.display().to_string();
        let r = curl(&s, "/dicom-web/studies", &["-b", &jar]);
        assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
        let mut v: Vec<String> = r
            .json()
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["0020000D"]["Value"][0].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let login = |u: &str| {
        s.login(u, "qido-pass-1234")
            .unwrap_or_else(|e| panic!("login {u}: {e:?}"))
    };
    let admin = s.admin.clone().expect("admin session");
    assert_eq!(studies_as(&admin).len(), 4, "admin sees every clinic");
    assert_eq!(
        studies_as(&login("qexp")),
        std::slice::from_ref(&study_ct),
        "expert: the clinics its hospital serves"
    );
    assert_eq!(studies_as(&login("qdoc1")), std::slice::from_ref(&study_ct));
    let t02 = studies_as(&login("qdoc2"));
    assert_eq!(t02.len(), 3);
    assert!(!t02.contains(&study_ct), "clinic t02's doctor does not see t01");
    let audit = s.sqlite("SELECT username || ' ' || detail FROM audit WHERE action = 'search'");
    assert!(audit.contains("token:qido-a qido level=IMAGE"), "{audit}");
}

/// STOW-RS through dicomweb-client (`dicomweb_probe.py --store`): the
/// parsed response, and the SHA-256 of each dataset as sent.
fn stow_probe(s: &Server, token: &str, study: Option<&str>, files: &[PathBuf]) -> Value {
    let base = format!("https://127.0.0.1:{}/dicom-web", s.http_port);
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("dicomweb_probe.py")).args([&base, token, "--store"]);
        if let Some(st) = study {
            c.args(["--study", st]);
        }
        c.args(files);
        c
    });
    assert!(o.status.success(), "dicomweb_probe --store: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("probe JSON")
}

/// A multipart/related body of `parts` (Content-Type, bytes), written to
/// a file for `curl --data-binary @file`.
fn multipart_file(s: &Server, boundary: &str, parts: &[(&str, Vec<u8>)]) -> PathBuf {
    let mut body = Vec::new();
    for (ct, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let p = s.dir.join(format!("stow-body-{}", rand_id()));
    std::fs::write(&p, body).expect("body");
    p
}

fn sequence<'a>(v: &'a Value, tag: &str) -> Vec<&'a Value> {
    v[tag]["Value"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[test]
fn stow_rs_stores_into_the_callers_clinic_through_the_c_store_pipeline() {
    let s = Server::start(ServerOpts {
        config_toml: CONFIG.into(),
        ..Default::default()
    });
    // Clinic t01 owns a CT study (pushed by its modality).
    let ct: Vec<PathBuf> = (1..=4).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    push(&s, "T01_CT", &ct[..1]);
    let tok_b = token_add(&s, "stow-b", "clinic:t02");
    let tok_city = token_add(&s, "stow-city", "hospital:city");
    let tok_all = token_add(&s, "stow-all", "all");
    let mr = corpus_pydicom().join("MR_small.dcm");
    let ecg = corpus_pydicom().join("waveform_ecg.dcm");

    // ---- dicomweb-client, clinic:t02 token: stored under t02, durable,
    // retrievable byte for byte (the datasets as sent)
    let r = stow_probe(&s, &tok_b, None, &[mr.clone(), ecg.clone()]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["failed"].as_array().map(Vec::len), Some(0), "{r}");
    let stored = r["stored"].as_array().expect("stored").clone();
    assert_eq!(stored.len(), 2, "{r}");
    for item in &stored {
        let sop = item["sop"].as_str().expect("sop");
        let (study, _) = study_of(&s, sop);
        assert_eq!(
            s.sqlite(&format!("SELECT clinic_id FROM studies WHERE study_uid = '{study}'")),
            "t02"
        );
        let url = item["url"].as_str().expect("RetrieveURL");
        let path = url
            .split_once("/dicom-web")
            .map(|(_, p)| format!("/dicom-web{p}"))
            .expect("url");
        let a = bearer(&s, &path, &tok_b, &[]);
        assert_eq!(a.code, 200, "{url}");
        let got = parts(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(
            sha(dataset_of(&got[0])),
            r["sent"][sop].as_str().expect("sent"),
            "{sop}"
        );
    }
    let mr_sop = sop_of(&mr);
    let src = std::fs::read(&mr).expect("mr");
    let (mr_study, mr_series) = study_of(&s, &mr_sop);
    let a = bearer(
        &s,
        &format!("/dicom-web/studies/{mr_study}/series/{mr_series}/instances/{mr_sop}"),
        &tok_b,
        &[],
    );
    assert_eq!(dataset_of(&parts(&a)[0]), dataset_of(&src), "MR_small as in the file");
    // the same again: a duplicate, still 200
    let again = stow_probe(&s, &tok_b, None, std::slice::from_ref(&mr));
    assert_eq!(again["status"], 200, "{again}");

    // ---- callers that may read but not store: 403, nothing stored
    for t in [&tok_city, &tok_all] {
        let r = stow_probe(&s, t, None, &ct[1..2]);
        assert_eq!(r["status"], 403, "{r}");
        assert!(r["body"].as_str().unwrap_or("").contains("clinic:ID"), "{r}");
    }
    assert_eq!(
        s.sqlite(&format!(
            "SELECT COUNT(*) FROM instances WHERE sop_instance_uid = '{}'",
            sop_of(&ct[1])
        )),
        "0"
    );

    // ---- t01's UIDs from a t02 caller: that part 0x0124, the rest stored (202)
    let cn_dir = tempfile::tempdir().expect("tmp");
    let cn = chinese_datasets(cn_dir.path());
    let r = stow_probe(&s, &tok_b, None, &[ct[0].clone(), cn["gb18030"].clone()]);
    assert_eq!(r["status"], 200, "202 is a success for the client: {r}");
    let failed = r["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(
        (failed[0]["sop"].as_str(), failed[0]["reason"].as_u64()),
        (Some(sop_of(&ct[0]).as_str()), Some(0x0124))
    );
    assert_eq!(r["stored"].as_array().map(Vec::len), Some(1), "{r}");
    let (ct_study, _) = study_of(&s, &sop_of(&ct[0]));
    assert_eq!(
        s.sqlite(&format!("SELECT clinic_id FROM studies WHERE study_uid = '{ct_study}'")),
        "t01",
        "t01's study stays t01's"
    );
    let refusals = s.sqlite("SELECT username || ' ' || role FROM audit WHERE action = 'ingest_refused'");
    assert!(refusals.contains("token:stow-b token"), "{refusals}");

    // ---- POST /studies/{study}: an instance of another study fails (A900)
    let r = stow_probe(&s, &tok_b, Some(&mr_study), &[cn["iso2022"].clone()]);
    assert_eq!(r["status"], 409, "all failed: {r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("")).expect("dicom+json");
    let f = sequence(&body, "00081198");
    assert_eq!(f.len(), 1, "{body}");
    assert_eq!(f[0]["00081197"]["Value"][0], 0xA900, "{body}");

    // ---- raw requests (curl): status codes and failure reasons
    // (another study than t01's CT: those UIDs are t01's)
    let small = corpus_pydicom().join("CT_small.dcm");
    let ct2 = std::fs::read(&small).expect("CT_small");
    let ct3 = std::fs::read(&ct[3]).expect("ct");
    let truncated = ct3[..ct3.len() / 2].to_vec();
    let body = multipart_file(
        &s,
        "xyzzy",
        &[
            ("application/dicom", ct2.clone()),
            ("application/dicom", truncated),
            ("image/jpeg", vec![0xFF, 0xD8, 0xFF]),
        ],
    );
    let data = format!("@{}", body.display());
    let ct_multi = "Content-Type: multipart/related; type=\"application/dicom\"; boundary=xyzzy";
    let a = bearer(
        &s,
        "/dicom-web/studies",
        &tok_b,
        &["-X", "POST", "-H", ct_multi, "--data-binary", &data],
    );
    assert_eq!(a.code, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("application/dicom+json"));
    let v = a.json();
    let ok = sequence(&v, "00081199");
    let bad = sequence(&v, "00081198");
    assert_eq!((ok.len(), bad.len()), (1, 2), "{v}");
    assert_eq!(ok[0]["00081155"]["Value"][0], sop_of(&small).as_str());
    assert!(
        ok[0]["00081190"]["Value"][0]
            .as_str()
            .is_some_and(|u| u.contains("/dicom-web/studies/"))
    );
    assert_eq!(bad[0]["00081155"]["Value"][0], sop_of(&ct[3]).as_str());
    let reason = bad[0]["00081197"]["Value"][0].as_u64();
    assert!(matches!(reason, Some(0xC000) | Some(0xA900)), "truncated: {v}");
    assert!(bad[1]["00081197"]["Value"][0].as_u64().is_some(), "{v}");
    assert_eq!(
        s.sqlite(&format!(
            "SELECT COUNT(*) FROM instances WHERE sop_instance_uid = '{}'",
            sop_of(&ct[3])
        )),
        "0"
    );
    // wrong media types: 415
    for ctype in [
        "Content-Type: application/dicom",
        "Content-Type: multipart/related; type=\"application/dicom+json\"; boundary=xyzzy",
    ] {
        let a = bearer(
            &s,
            "/dicom-web/studies",
            &tok_b,
            &["-X", "POST", "-H", ctype, "--data-binary", &data],
        );
        assert_eq!(a.code, 415, "{ctype}");
    }
    // a body without its closing boundary: 400
    let cut = s.dir.join("stow-cut");
    std::fs::write(&cut, b"--xyzzy\r\nContent-Type: application/dicom\r\n\r\nabc").expect("cut");
    let a = bearer(
        &s,
        "/dicom-web/studies",
        &tok_b,
        &[
            "-X",
            "POST",
            "-H",
            ct_multi,
            "--data-binary",
            &format!("@{}", cut.display()),
        ],
    );
    assert_eq!(a.code, 400, "{}", String::from_utf8_lossy(&a.body));

    // ---- a clinic doctor's session: needs the CSRF header
    s.add_user("stowdoc", "clinic", "stow-pass-1234", &["--clinic", "t02"]);
    let doc = s.login("stowdoc", "stow-pass-1234").expect("login");
    let jar = doc.jar.display().to_string();
    let rle = std::fs::read(corpus_pydicom().join("SC_rgb_rle.dcm")).expect("SC_rgb_rle");
    let one = multipart_file(&s, "sess", &[("application/dicom", rle)]);
    let one = format!("@{}", one.display());
    let ct_sess = "Content-Type: multipart/related; type=\"application/dicom\"; boundary=sess";
    let a = curl(
        &s,
        "/dicom-web/studies",
        &["-b", &jar, "-X", "POST", "-H", ct_sess, "--data-binary", &one],
    );
    assert_eq!(a.code, 403, "no CSRF: {}", String::from_utf8_lossy(&a.body));
    let csrf = format!("X-CSRF-Token: {}", doc.csrf);
    let a = curl(
        &s,
        "/dicom-web/studies",
        &[
            "-b",
            &jar,
            "-H",
            &csrf,
            "-X",
            "POST",
            "-H",
            ct_sess,
            "--data-binary",
            &one,
        ],
    );
    assert_eq!(a.code, 200, "{}", String::from_utf8_lossy(&a.body));

    // ---- audited as uploads
    let audit = s.sqlite("SELECT username || ' ' || detail FROM audit WHERE action = 'upload' ORDER BY id");
    assert!(audit.contains("token:stow-b stow n=2 failed=0"), "{audit}");
    assert!(audit.contains("token:stow-b stow n=1 failed=2"), "{audit}");
    assert!(audit.contains("stowdoc stow n=1 failed=0"), "{audit}");
}

/// STOW-RS: a part over `[dicomweb] max_stow_mb` ends the request with 413
/// and leaves nothing behind.
#[test]
fn stow_rs_part_over_the_size_limit_is_413() {
    let s = Server::start(ServerOpts {
        config_toml: format!("{CONFIG}max_stow_mb = 1\n"),
        ..Default::default()
    });
    let tok = token_add(&s, "stow-small", "clinic:t02");
    let mut big = std::fs::read(ct300().join("CT000001.dcm")).expect("ct");
    while big.len() <= 1 << 20 {
        big.extend_from_slice(&[0u8; 64 * 1024]);
    }
    let body = multipart_file(&s, "big", &[("application/dicom", big)]);
    let a = bearer(
        &s,
        "/dicom-web/studies",
        &tok,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: multipart/related; type=\"application/dicom\"; boundary=big",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    assert_eq!(a.code, 413, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "0");
}
