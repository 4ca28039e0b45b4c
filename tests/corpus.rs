//! The whole public sample corpus (pydicom's test files and pydicom-data's
//! NEMA set, see ../shared/dicom-samples/INDEX.md) through two independent
//! SCUs: DCMTK storescu and pynetdicom. Every valid instance is acknowledged
//! and indexed, and the stored dataset equals the sent one (byte-equal pixel
//! data, equal attributes); every file that is not a valid instance is either
//! not sent by the SCU or refused by the SCP, never acknowledged.
//!
//! Validity is decided independently of medrelay, with pydicom
//! (tests/support/corpus_classify.py). The invalid files are listed below,
//! each with the outcome we expect per SCU; a file classified differently, a
//! new file, or a different outcome fails the test.
//!
//! Helpers: tests/support/corpus_classify.py (classification + storescu
//! association profile), corpus_push.py (pynetdicom SCU), compare_stored.py
//! (stored vs original).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// What should happen to one corpus file with one SCU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Acknowledged (Success, or Warning 0xB000 for a new version of a SOP
    /// Instance UID already stored with other content) and indexed.
    Stored,
    /// The SCU does not send it (not DICOM, no file meta, nothing to address
    /// the C-STORE with, or an SCU limitation).
    NotSent,
    /// Sent, and the SCP answers with this failure status.
    Fails(u16),
    /// The SCP does not accept a presentation context for its SOP class.
    ContextRefused,
}
use Expect::*;

const MISMATCH: u16 = 0xA900; // dataset does not match SOP class / missing UIDs / image w/o pixels
const CANNOT_UNDERSTAND: u16 = 0xC000; // unreadable / truncated dataset
const INVALID_SOP_INSTANCE: u16 = 0x0117; // Affected SOP Instance UID is not a UID
const NEW_VERSION: u16 = 0xB000; // same SOP Instance UID, other content: kept as a new version

/// A corpus file (or, with a trailing `*`, all files starting with the
/// prefix; `count` of them) that corpus_classify.py must find invalid with
/// `problem`, and what each SCU does with it.
struct Known {
    pattern: &'static str,
    count: usize,
    problem: &'static str,
    dcmtk: Expect,
    pynetdicom: Expect,
    why: &'static str,
}

const fn k(
    pattern: &'static str,
    problem: &'static str,
    dcmtk: Expect,
    pynetdicom: Expect,
    why: &'static str,
) -> Known {
    Known {
        pattern,
        count: 1,
        problem,
        dcmtk,
        pynetdicom,
        why,
    }
}

const PD: &str = "pydicom/data/test_files/";

/// Every corpus file that is NOT a valid, storable instance. Paths are
/// relative to .cache/dicom-samples. storescu (+fo) skips files it cannot
/// parse or address; corpus_push.py sends everything that has a file meta with
/// a transfer syntax and some SOP Class/Instance UID (from the dataset, else
/// the meta), so the SCP's own checks are exercised on those.
const KNOWN_INVALID: &[Known] = &[
    // --- not DICOM Part 10 files at all: no preamble/"DICM"/file meta
    k(
        "pydicom/data/test_files/ExplVR_BigEndNoMeta.dcm",
        "not-part10",
        NotSent,
        NotSent,
        "bare dataset, no file meta",
    ),
    k(
        "pydicom/data/test_files/ExplVR_LitEndNoMeta.dcm",
        "not-part10",
        NotSent,
        NotSent,
        "bare dataset, no file meta",
    ),
    k(
        "pydicom/data/test_files/no_meta.dcm",
        "not-part10",
        NotSent,
        NotSent,
        "bare dataset, no file meta",
    ),
    k(
        "pydicom/data/test_files/rtstruct.dcm",
        "not-part10",
        NotSent,
        NotSent,
        "bare dataset, no file meta",
    ),
    k(
        "data_store/data/OT-PAL-8-face.dcm",
        "not-part10",
        NotSent,
        NotSent,
        "ACR-NEMA style, no file meta",
    ),
    k(
        "pydicom/data/test_files/README.txt",
        "not-part10",
        NotSent,
        NotSent,
        "text",
    ),
    k(
        "pydicom/data/test_files/dicomdirtests/README.txt",
        "not-part10",
        NotSent,
        NotSent,
        "text",
    ),
    k(
        "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/README",
        "not-part10",
        NotSent,
        NotSent,
        "text",
    ),
    k(
        "pydicom/data/test_files/rtplan.dump",
        "not-part10",
        NotSent,
        NotSent,
        "dcmdump text",
    ),
    k(
        "pydicom/data/test_files/rtstruct.dump",
        "not-part10",
        NotSent,
        NotSent,
        "dcmdump text",
    ),
    k(
        "pydicom/data/test_files/test1.json",
        "not-part10",
        NotSent,
        NotSent,
        "DICOM JSON",
    ),
    k(
        "pydicom/data/test_files/test_PN.json",
        "not-part10",
        NotSent,
        NotSent,
        "DICOM JSON",
    ),
    k(
        "pydicom/data/test_files/crayons.icc",
        "not-part10",
        NotSent,
        NotSent,
        "ICC profile",
    ),
    k(
        "pydicom/data/test_files/zipMR.gz",
        "not-part10",
        NotSent,
        NotSent,
        "gzip",
    ),
    // --- file meta without a transfer syntax: nobody can tell how to read it
    k(
        "pydicom/data/test_files/meta_missing_tsyntax.dcm",
        "no-transfer-syntax",
        NotSent,
        NotSent,
        "meta lacks (0002,0010)",
    ),
    // --- truncated: storescu cannot parse them; streamed as-is, the SCP must notice
    k(
        "pydicom/data/test_files/MR_truncated.dcm",
        "truncated",
        NotSent,
        Fails(CANNOT_UNDERSTAND),
        "Pixel Data declares 8192 bytes, 8130 present",
    ),
    k(
        "pydicom/data/test_files/rtplan_truncated.dcm",
        "truncated",
        NotSent,
        Fails(CANNOT_UNDERSTAND),
        "ends inside a sequence",
    ),
    k(
        "data_store/data/emri_small_jpeg_2k_lossless_too_short.dcm",
        "truncated",
        NotSent,
        Fails(CANNOT_UNDERSTAND),
        "encapsulated Pixel Data without its sequence delimiter",
    ),
    // --- dataset encoded implicit VR while the meta says explicit VR LE
    k(
        "pydicom/data/test_files/SC_rgb_jpeg.dcm",
        "ts-encoding-mismatch",
        NotSent,
        Fails(CANNOT_UNDERSTAND),
        "storescu cannot parse it; the raw bytes are not explicit VR",
    ),
    // --- no Study/Series Instance UID (or a non-UID SOP Instance UID)
    k(
        "pydicom/data/test_files/JPEGLSNearLossless_08.dcm",
        "missing-uid",
        Fails(MISMATCH),
        Fails(MISMATCH),
        "no Study/Series UID",
    ),
    k(
        "pydicom/data/test_files/JPEGLSNearLossless_16.dcm",
        "missing-uid",
        Fails(MISMATCH),
        Fails(MISMATCH),
        "no Study/Series UID",
    ),
    k(
        "pydicom/data/test_files/SC_rgb_jls_lossy_line.dcm",
        "missing-uid",
        Fails(MISMATCH),
        Fails(MISMATCH),
        "no Study/Series UID",
    ),
    k(
        "pydicom/data/test_files/SC_rgb_jls_lossy_sample.dcm",
        "missing-uid",
        Fails(MISMATCH),
        Fails(MISMATCH),
        "no Study/Series UID",
    ),
    k(
        "data_store/data/bad_sequence.dcm",
        "missing-uid",
        Fails(INVALID_SOP_INSTANCE),
        Fails(INVALID_SOP_INSTANCE),
        "SOP Instance UID is a hex digest, not a UID: refused from the command",
    ),
    // --- no SOP Class UID in the dataset (fragments, DICOMDIRs)
    k(
        "pydicom/data/test_files/UN_sequence.dcm",
        "no-sop-class",
        NotSent,
        Fails(MISMATCH),
        "test fragment; sent with the meta's UIDs, the dataset does not match",
    ),
    k(
        "pydicom/data/test_files/priv_SQ.dcm",
        "no-sop-class",
        NotSent,
        Fails(MISMATCH),
        "test fragment",
    ),
    k(
        "pydicom/data/test_files/no_meta_group_length.dcm",
        "no-sop-class",
        NotSent,
        Fails(MISMATCH),
        "test fragment",
    ),
    k(
        "pydicom/data/test_files/nested_priv_SQ.dcm",
        "no-sop-class",
        NotSent,
        NotSent,
        "test fragment, meta has no SOP UIDs",
    ),
    k(
        "pydicom/data/test_files/empty_charset_LEI.dcm",
        "no-sop-class",
        NotSent,
        NotSent,
        "test fragment, meta has no SOP UIDs",
    ),
    Known {
        pattern: "pydicom/data/test_files/dicomdirtests/DICOMDIR*",
        count: 7,
        problem: "no-sop-class",
        dcmtk: NotSent,
        pynetdicom: ContextRefused,
        why: "DICOMDIRs: Media Storage Directory is not a Storage SOP class",
    },
    k(
        "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/DICOMDIR",
        "no-sop-class",
        NotSent,
        ContextRefused,
        "DICOMDIR",
    ),
    // --- CT Image Storage instances without Pixel Data (a DICOMDIR test set)
    Known {
        pattern: "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM*",
        count: 50,
        problem: "image-without-pixels",
        dcmtk: Fails(MISMATCH),
        pynetdicom: Fails(MISMATCH),
        why: "image SOP class without Pixel Data",
    },
];

/// Valid instances that storescu (DCMTK 3.6.7) cannot send: every data
/// element is encoded with VR UN, and storescu does not look into UN values
/// for the SOP Class/Instance UID ("No SOP Class or Instance UID in file").
/// pynetdicom sends them and they must be stored.
const DCMTK_CANNOT_SEND: &[&str] = &[
    "pydicom/data/test_files/rtdose_rle.dcm",
    "pydicom/data/test_files/rtdose_rle_1frame.dcm",
    "data_store/data/explicit_VR-UN.dcm",
];

#[derive(Debug, Clone, serde::Deserialize)]
struct Classified {
    rel: String,
    path: String,
    problem: Option<String>,
    detail: String,
    sop_instance: Option<String>,
    wire_sha256: Option<String>,
}

#[derive(serde::Deserialize)]
struct Classes {
    files: Vec<Classified>,
    storescu_contexts: Option<usize>,
}

/// What actually happened to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    NotSent(String),
    Status(u16, String),
    ContextRefused,
    ClientError(String),
}

fn classify(dir: &Path, with_storescu_config: bool) -> (Vec<Classified>, PathBuf) {
    let out = dir.join("classes.json");
    let cfg = dir.join("storescu-corpus.cfg");
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("corpus_classify.py")).arg("--out").arg(&out);
        if with_storescu_config {
            c.arg("--storescu-config").arg(&cfg);
        }
        c.arg(corpus_pydicom()).arg(corpus_nema());
        c
    });
    assert!(o.status.success(), "corpus_classify.py: {}", text(&o));
    let classes: Classes = serde_json::from_slice(&std::fs::read(&out).expect("classes.json")).expect("classes json");
    if let Some(n) = classes.storescu_contexts {
        // one association carries at most 128 presentation contexts; past
        // that, the storescu run would have to be split into batches
        assert!(
            n <= 128,
            "corpus needs {n} presentation contexts: split the storescu run into batches"
        );
    }
    (classes.files, cfg)
}

fn known_for(rel: &str) -> Option<&'static Known> {
    KNOWN_INVALID.iter().find(|k| match k.pattern.strip_suffix('*') {
        Some(prefix) => rel.starts_with(prefix),
        None => rel == k.pattern,
    })
}

/// Expected outcome per file (by rel path) for one SCU; fails on any file
/// whose classification disagrees with the lists above.
fn expectations(files: &[Classified], dcmtk: bool) -> BTreeMap<String, Expect> {
    assert!(files.len() >= 240, "corpus looks incomplete: {} files", files.len());
    let mut surprises = Vec::new();
    let mut matched: HashMap<&str, usize> = HashMap::new();
    let mut out = BTreeMap::new();
    for f in files {
        let known = known_for(&f.rel);
        let e = match (&f.problem, known) {
            (Some(p), Some(k)) if p == k.problem => {
                *matched.entry(k.pattern).or_default() += 1;
                if dcmtk { k.dcmtk } else { k.pynetdicom }
            }
            (Some(p), Some(k)) => {
                surprises.push(format!(
                    "{}: classified {p} ({}), listed as {} ({})",
                    f.rel, f.detail, k.problem, k.why
                ));
                continue;
            }
            (Some(p), None) => {
                surprises.push(format!(
                    "{}: classified invalid ({p}: {}) but not in KNOWN_INVALID",
                    f.rel, f.detail
                ));
                continue;
            }
            (None, Some(k)) => {
                surprises.push(format!(
                    "{}: classified valid but listed in KNOWN_INVALID as {} ({})",
                    f.rel, k.problem, k.why
                ));
                continue;
            }
            (None, None) if dcmtk && DCMTK_CANNOT_SEND.contains(&f.rel.as_str()) => NotSent,
            (None, None) => Stored,
        };
        out.insert(f.rel.clone(), e);
    }
    for k in KNOWN_INVALID {
        let n = matched.get(k.pattern).copied().unwrap_or(0);
        if n != k.count {
            surprises.push(format!("{}: listed for {} file(s), matched {n}", k.pattern, k.count));
        }
    }
    for rel in DCMTK_CANNOT_SEND {
        match files.iter().find(|f| f.rel == *rel) {
            Some(f) if f.problem.is_none() => {}
            Some(f) => surprises.push(format!("{rel}: in DCMTK_CANNOT_SEND but classified {:?}", f.problem)),
            None => surprises.push(format!("{rel}: in DCMTK_CANNOT_SEND but not in the corpus")),
        }
    }
    assert!(
        surprises.is_empty(),
        "corpus classification surprises:\n  {}",
        surprises.join("\n  ")
    );
    out
}

/// Compare actual outcomes with expectations, listing every difference (with
/// the server's C-STORE failure log lines) on failure.
fn check_outcomes(
    scu: &str,
    files: &[Classified],
    expect: &BTreeMap<String, Expect>,
    actual: &HashMap<String, Outcome>,
    server_log: &str,
) {
    let mut bad = Vec::new();
    for f in files {
        let e = expect[&f.rel];
        let a = actual.get(&f.path);
        let ok = match (e, a) {
            (Stored, Some(Outcome::Status(s, _))) => *s == 0 || *s == NEW_VERSION,
            (NotSent, Some(Outcome::NotSent(_))) => true,
            (Fails(code), Some(Outcome::Status(s, _))) => *s == code,
            (ContextRefused, Some(Outcome::ContextRefused)) => true,
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "{}: expected {e:?}, got {a:?} (classified {:?}: {})",
                f.rel, f.problem, f.detail
            ));
        }
    }
    if !bad.is_empty() {
        // The SCP logs failures without file names; show the distinct reasons.
        let mut reasons: Vec<&str> = server_log
            .lines()
            .filter(|l| l.contains("C-STORE failed"))
            .map(|l| l.split_once("status=").map_or(l, |(_, r)| r))
            .collect();
        reasons.sort();
        reasons.dedup();
        bad.push(format!("server C-STORE failures (distinct): {reasons:#?}"));
    }
    assert!(
        bad.is_empty(),
        "{scu}: {} unexpected outcome(s):\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

/// The DIMSE status behind storescu's status text (DCMTK DU_cstoreStatusString).
fn dcmtk_status(s: &str) -> u16 {
    match s {
        "Success" => 0x0000,
        "Warning: CoercionOfDataElements" => 0xB000,
        "Warning: DataSetDoesNotMatchSOPClass" => 0xB007,
        "Warning: ElementsDiscarded" => 0xB006,
        "Error: DataSetDoesNotMatchSOPClass" => 0xA900,
        "Error: CannotUnderstand" => 0xC000,
        "Refused: OutOfResources" => 0xA700,
        "Refused: SOPClassNotSupported" => 0x0122,
        other => other
            .rsplit("0x")
            .next()
            .and_then(|h| u16::from_str_radix(h.trim(), 16).ok())
            .unwrap_or_else(|| panic!("unknown storescu status text {other:?}")),
    }
}

/// Per-file outcomes from `storescu -v` output, plus the send order of the
/// files that got a response.
fn parse_storescu(out: &str) -> (HashMap<String, Outcome>, Vec<String>) {
    let mut res = HashMap::new();
    let mut order = Vec::new();
    let mut current: Option<String> = None;
    let mut lines = out.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(p) = line.strip_prefix("I: Sending file: ") {
            current = Some(p.trim().to_string());
        } else if let Some(r) = line.strip_prefix("I: Received Store Response (") {
            let st = r.trim_end().trim_end_matches(')');
            if let Some(p) = current.take() {
                order.push(p.clone());
                res.insert(p, Outcome::Status(dcmtk_status(st), st.to_string()));
            }
        } else if let Some(r) = line.strip_prefix("E: Bad DICOM file: ") {
            // "E: Bad DICOM file: PATH: reason"
            let (p, why) = r.rsplit_once(": ").unwrap_or((r, ""));
            res.insert(p.to_string(), Outcome::NotSent(why.to_string()));
        } else if let Some(p) = line.strip_prefix("E: No SOP Class or Instance UID in file: ") {
            res.insert(
                p.trim().to_string(),
                Outcome::NotSent("no SOP Class or Instance UID".into()),
            );
        } else if let Some(r) = line.strip_prefix("W: missing SOP class (or instance) in file: ") {
            let p = r.trim_end_matches(", ignoring file");
            res.insert(
                p.to_string(),
                Outcome::NotSent("missing SOP class (or instance)".into()),
            );
        } else if let Some(r) = line.strip_prefix("E: Store Failed, file: ") {
            let p = r.trim_end_matches(':').to_string();
            let why = lines.peek().map(|l| l.to_string()).unwrap_or_default();
            res.insert(p, Outcome::ClientError(why));
            current = None;
        }
    }
    (res, order)
}

/// Versions per SOP Instance UID and sha256 set per UID, from the index.
fn index_versions(s: &Server) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for line in s
        .sqlite("SELECT sop_instance_uid, sha256 FROM instances ORDER BY sop_instance_uid, version")
        .lines()
    {
        let (uid, sha) = line.split_once('|').expect("row");
        m.entry(uid.to_string()).or_default().push(sha.to_string());
    }
    m
}

/// Run compare_stored.py over the acknowledged files; assert zero mismatches.
fn compare_stored(s: &Server, files: &[Classified], acked: &[String], raw: bool) -> serde_json::Value {
    let by_path: HashMap<&str, &Classified> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let list: Vec<serde_json::Value> = acked
        .iter()
        .map(|p| {
            let f = by_path[p.as_str()];
            serde_json::json!({"path": f.path, "rel": f.rel, "sop_instance": f.sop_instance})
        })
        .collect();
    let acked_json = s.dir.join(if raw { "acked-raw.json" } else { "acked.json" });
    std::fs::write(&acked_json, serde_json::to_vec(&list).expect("json")).expect("write acked");
    run_compare(&s.data_dir, &acked_json, raw, &s.dir)
}

fn run_compare(data_dir: &Path, acked_json: &Path, raw: bool, dir: &Path) -> serde_json::Value {
    let summary = dir.join(format!(
        "compare-{}.json",
        acked_json.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("compare_stored.py"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--acked")
            .arg(acked_json)
            .arg("--out")
            .arg(&summary);
        if raw {
            c.arg("--raw");
        }
        c
    });
    assert!(o.status.success(), "compare_stored.py: {}", text(&o));
    eprintln!("compare_stored.py: {}", text(&o).trim());
    serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("summary json")
}

fn assert_faithful(scu: &str, summary: &serde_json::Value, acked: usize, versions: usize) {
    let pretty = serde_json::to_string_pretty(summary).unwrap_or_default();
    assert_eq!(summary["checked"], acked, "{scu}: {pretty}");
    for key in ["mismatches", "orphans", "missing_files"] {
        assert_eq!(
            summary[key].as_array().map(Vec::len),
            Some(0),
            "{scu}: stored data not faithful ({key}):\n{pretty}"
        );
    }
    assert_eq!(summary["matched"], acked, "{scu}: {pretty}");
    assert_eq!(summary["versions"], versions, "{scu}: {pretty}");
    if let Some(t) = summary["tolerated"].as_array().filter(|t| !t.is_empty()) {
        eprintln!("{scu}: tolerated differences (group lengths, trailing padding, OW/OB of encapsulated Pixel Data):");
        for x in t {
            eprintln!("  {x}");
        }
    }
}

#[test]
fn dcmtk_echoscu_and_storescu_store_the_whole_corpus() {
    let s = Server::start(ServerOpts::default());
    let o = run({
        let mut c = dcmtk("echoscu");
        c.args([
            "-v",
            "-aet",
            "CORPUS",
            "-aec",
            &s.ae_title,
            "127.0.0.1",
            &s.dicom_port.to_string(),
        ]);
        c
    });
    assert!(o.status.success(), "echoscu: {}", text(&o));
    assert_eq!(s.metric("medrelay_dicom_echo_total"), 1.0);

    let (files, cfg) = classify(&s.dir, true);
    let expect = expectations(&files, true);

    // One association over both corpus directories. The generated profile
    // proposes each (SOP class, transfer syntax) pair of the corpus with just
    // that transfer syntax, so storescu sends every file in its own transfer
    // syntax: nothing is decompressed or converted (checked below). +fo: only
    // Part 10 files; -nh: keep going after a refused instance.
    let o = run({
        let mut c = s.storescu("CORPUS");
        c.args(["-v", "+fo", "+sd", "+r", "-nh", "-xf"]).arg(&cfg).arg("Corpus");
        c.arg(corpus_pydicom()).arg(corpus_nema());
        c
    });
    let out = text(&o);
    assert!(o.status.success(), "storescu failed:\n{out}\nserver log:\n{}", s.log());
    let conversions: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("I: Converting transfer syntax: "))
        .filter(|c| c.split_once(" -> ").is_none_or(|(a, b)| a != b))
        .collect();
    assert!(
        conversions.is_empty(),
        "storescu converted transfer syntaxes: {conversions:?}"
    );
    let (actual, order) = parse_storescu(&out);
    check_outcomes("storescu", &files, &expect, &actual, &s.log());

    // Acknowledged files, in send order; the index holds exactly their UIDs.
    let by_path: HashMap<&str, &Classified> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let acked: Vec<String> = order
        .iter()
        .filter(|p| matches!(actual[*p], Outcome::Status(s, _) if s == 0 || s == NEW_VERSION))
        .cloned()
        .collect();
    let stored_expected = expect.values().filter(|e| **e == Stored).count();
    assert_eq!(acked.len(), stored_expected);
    let versions = index_versions(&s);
    // Per SOP Instance UID: the first acknowledged file is a plain Success,
    // and each 0xB000 added exactly one version (identical resends add none).
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new(); // uid -> (files, warnings)
    let mut first_not_success = Vec::new();
    for p in &acked {
        let uid = by_path[p.as_str()].sop_instance.as_deref().expect("uid");
        let Outcome::Status(st, _) = actual[p] else {
            unreachable!()
        };
        let e = seen.entry(uid).or_default();
        if e.0 == 0 && st != 0 {
            first_not_success.push(format!("{p}: {st:#06x}"));
        }
        e.0 += 1;
        e.1 += usize::from(st == NEW_VERSION);
    }
    assert!(
        first_not_success.is_empty(),
        "first instance of a UID not a plain success: {first_not_success:?}"
    );
    let mut wrong_versions = Vec::new();
    for (uid, (_, warnings)) in &seen {
        let n = versions.get(*uid).map(Vec::len).unwrap_or(0);
        if n != warnings + 1 {
            wrong_versions.push(format!(
                "{uid}: {n} version(s) indexed, {warnings} new-version warning(s)"
            ));
        }
    }
    assert!(wrong_versions.is_empty(), "versions vs warnings: {wrong_versions:?}");
    let extra: Vec<&String> = versions.keys().filter(|u| !seen.contains_key(u.as_str())).collect();
    assert!(extra.is_empty(), "indexed but never acknowledged: {extra:?}");
    let total_versions: usize = versions.values().map(Vec::len).sum();
    let warnings: usize = seen.values().map(|v| v.1).sum();
    assert!(
        warnings > 0,
        "the corpus has SOP Instance UIDs shared by different files; expected 0xB000 warnings"
    );
    assert_eq!(s.metric("medrelay_dicom_instances_stored_total") as usize, seen.len());
    assert_eq!(
        s.metric("medrelay_dicom_instances_new_version_total") as usize,
        warnings
    );
    let refused = expect.values().filter(|e| matches!(e, Fails(_))).count();
    assert_eq!(
        s.metric("medrelay_dicom_store_failures_invalid_total") as usize,
        refused
    );

    // The stored datasets equal the sent ones.
    let summary = compare_stored(&s, &files, &acked, false);
    assert_faithful("storescu", &summary, acked.len(), total_versions);
}

#[test]
fn pynetdicom_echo_and_store_the_whole_corpus_byte_exact() {
    let s = Server::start(ServerOpts::default());
    let (files, _) = classify(&s.dir, false);
    let expect = expectations(&files, false);

    let results = s.dir.join("push.jsonl");
    let scu_log = s.dir.join("pynetdicom.log");
    let o = run({
        let mut c = Command::new(python());
        c.arg(script("corpus_push.py"))
            .args([
                "--port",
                &s.dicom_port.to_string(),
                "--aec",
                &s.ae_title,
                "--aet",
                "CORPUSPY",
                "--echo",
            ])
            .arg("--out")
            .arg(&results)
            .arg("--log")
            .arg(&scu_log)
            .arg(corpus_pydicom())
            .arg(corpus_nema());
        c
    });
    if !o.status.success() {
        let log = std::fs::read_to_string(&scu_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "corpus_push.py: {}\npynetdicom's log (last 150 lines):\n{}\nserver log:\n{}",
            text(&o),
            lines[lines.len().saturating_sub(150)..].join("\n"),
            s.log()
        );
    }
    let mut actual = HashMap::new();
    let mut order = Vec::new();
    let mut echo = None;
    for line in std::fs::read_to_string(&results).expect("results").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("jsonl");
        if let Some(e) = v.get("echo") {
            echo = e.as_u64();
            continue;
        }
        let path = v["path"].as_str().expect("path").to_string();
        let reason = v["reason"].as_str().unwrap_or_default().to_string();
        let outcome = match v["outcome"].as_str().expect("outcome") {
            "status" => {
                order.push(path.clone());
                Outcome::Status(
                    v["status"].as_u64().expect("status") as u16,
                    v["comment"].as_str().unwrap_or_default().into(),
                )
            }
            "skipped" => Outcome::NotSent(reason),
            "refused-context" => Outcome::ContextRefused,
            _ => Outcome::ClientError(reason),
        };
        actual.insert(path, outcome);
    }
    assert_eq!(echo, Some(0), "pynetdicom C-ECHO");
    assert_eq!(s.metric("medrelay_dicom_echo_total"), 1.0);
    check_outcomes("pynetdicom", &files, &expect, &actual, &s.log());

    // The dataset bytes arrive unchanged, so each status is predictable: per
    // SOP Instance UID, new content is Success the first time and 0xB000
    // (new version) after that; content already stored is a Success that adds
    // nothing. The index must hold exactly the distinct contents.
    let by_path: HashMap<&str, &Classified> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut contents: HashMap<String, Vec<String>> = HashMap::new();
    let mut wrong = Vec::new();
    let mut acked = Vec::new();
    for p in &order {
        let f = by_path[p.as_str()];
        if expect[&f.rel] != Stored {
            continue;
        }
        let uid = f.sop_instance.clone().expect("uid");
        let sha = f.wire_sha256.clone().expect("sha");
        let known = contents.entry(uid).or_default();
        let want = if known.is_empty() || known.contains(&sha) {
            0
        } else {
            NEW_VERSION
        };
        if !known.contains(&sha) {
            known.push(sha);
        }
        let Outcome::Status(got, ref comment) = actual[p] else {
            unreachable!()
        };
        if got != want {
            wrong.push(format!(
                "{}: status {got:#06x} ({comment}), expected {want:#06x}",
                f.rel
            ));
        }
        acked.push(p.clone());
    }
    assert!(wrong.is_empty(), "unexpected statuses:\n  {}", wrong.join("\n  "));
    let mut versions = index_versions(&s);
    for v in versions.values_mut() {
        v.sort();
    }
    for v in contents.values_mut() {
        v.sort();
    }
    assert_eq!(
        versions, contents,
        "index (uid -> content hashes) differs from what was acknowledged"
    );
    let total_versions: usize = versions.values().map(Vec::len).sum();
    assert!(
        total_versions > versions.len(),
        "expected some SOP Instance UIDs with several versions"
    );
    assert!(acked.len() > total_versions, "expected some identical resends");

    // Stored datasets equal the sent ones, byte for byte.
    let summary = compare_stored(&s, &files, &acked, true);
    assert_faithful("pynetdicom", &summary, acked.len(), total_versions);

    // The comparison is not vacuous: tamper with a copy of one stored file.
    tamper_is_detected(&s, &files);
}

/// Copy the index and one stored instance (CT_small.dcm) elsewhere, flip a
/// Pixel Data byte, and check compare_stored.py reports it: first via the
/// index hash, then (hash updated to match) via the element comparison; the
/// same for a changed attribute value.
fn tamper_is_detected(s: &Server, files: &[Classified]) {
    let f = files
        .iter()
        .find(|f| f.rel == format!("{PD}CT_small.dcm"))
        .expect("CT_small.dcm");
    let uid = f.sop_instance.as_deref().expect("uid");
    let rel_path = s.sqlite(&format!("SELECT path FROM instances WHERE sop_instance_uid = '{uid}'"));
    assert_eq!(rel_path.lines().count(), 1, "{rel_path}");
    let work = s.dir.join("tamper");
    let acked_json = work.join("acked-one.json");
    std::fs::create_dir_all(work.join(Path::new(&rel_path).parent().expect("parent"))).expect("mkdir");
    std::fs::write(
        &acked_json,
        serde_json::json!([{"path": f.path, "rel": f.rel, "sop_instance": uid}]).to_string(),
    )
    .expect("write");
    let stored = std::fs::read(s.data_dir.join(&rel_path)).expect("stored file");
    let reindex = |bytes: &[u8], sql_fix_hash: bool| {
        let _ = std::fs::remove_file(work.join("index.db"));
        let o = run({
            let mut c = Command::new(python());
            c.args([
                "-c",
                "import sqlite3,sys\nsrc=sqlite3.connect(sys.argv[1]); dst=sqlite3.connect(sys.argv[2]); src.backup(dst)",
            ])
            .arg(s.index_db())
            .arg(work.join("index.db"));
            c
        });
        assert!(o.status.success(), "{}", text(&o));
        std::fs::write(work.join(&rel_path), bytes).expect("write tampered");
        if sql_fix_hash {
            let o = run({
                let mut c = Command::new(python());
                c.args([
                    "-c",
                    "import sqlite3,sys,hashlib\nfrom pynetdicom.dsutils import split_dataset\n\
                     db,rel,root=sys.argv[1:4]\nc=sqlite3.connect(db)\nts=c.execute('select transfer_syntax from instances where path=?',(rel,)).fetchone()[0]\n\
                     _,off=split_dataset(root+'/'+rel)\nh=hashlib.sha256(ts.encode()+b'\\0'+open(root+'/'+rel,'rb').read()[off:]).hexdigest()\n\
                     c.execute('update instances set sha256=? where path=?',(h,rel)); c.commit()",
                ])
                .arg(work.join("index.db"))
                .arg(&rel_path)
                .arg(&work);
                c
            });
            assert!(o.status.success(), "{}", text(&o));
        }
        run_compare(&work, &acked_json, true, &work)
    };
    let why = |summary: &serde_json::Value| serde_json::to_string(&summary["mismatches"]).unwrap_or_default();

    // untouched copy: matches
    let sum = reindex(&stored, false);
    assert_eq!(sum["matched"], 1, "{sum}");
    // a byte inside Pixel Data (explicit VR LE: tag, "OW", 2 reserved, 4 length)
    let tag = [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
    let px = stored
        .windows(tag.len())
        .position(|w| w == tag)
        .expect("Pixel Data in CT_small")
        + 12;
    let mut pixels = stored.clone();
    pixels[px + 1000] ^= 0x55;
    let sum = reindex(&pixels, false);
    assert!(
        why(&sum).contains("SHA-256"),
        "tampered pixels not detected via hash: {sum}"
    );
    let sum = reindex(&pixels, true);
    assert!(
        why(&sum).contains("PixelData bytes differ"),
        "tampered pixels not detected: {sum}"
    );
    // an attribute value: the patient name, same length
    let name = b"CompressedSamples^CT1";
    let at = stored
        .windows(name.len())
        .position(|w| w == name)
        .expect("PatientName in CT_small");
    let mut attr = stored.clone();
    attr[at] = b'X';
    let sum = reindex(&attr, true);
    assert!(
        why(&sum).contains("(0010,0010)"),
        "tampered attribute not detected: {sum}"
    );
}
