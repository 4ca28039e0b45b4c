//! Previews for the whole public sample corpus (pydicom's test files and
//! pydicom-data's NEMA set, see ../shared/dicom-samples/INDEX.md):
//!
//! 1. every file renders (an image of Rows x Columns) or fails with a reason
//!    that is true: the files that do not render are listed below, each with
//!    the error kind, the words of the reason, and a fact about the file that
//!    pydicom establishes independently of medrelay;
//! 2. what renders agrees with a reference renderer no one here wrote: DCMTK
//!    (dcmj2pnm, dcml2pnm for JPEG-LS) renders the same frame with the same
//!    explicit window, and the 8-bit outputs must reach PSNR >= 40 dB.
//!
//! The facts (and the window for part 2) come from tests/support/render_facts.py
//! (pydicom, with DCMTK's decompressors where pydicom has no codec).
//!
//! Part 2 in detail. Every corpus file with Pixel Data is rendered by DCMTK
//! (`dcmj2pnm -O +F 1 +op`, `dcml2pnm` for JPEG-LS) and by `medrelay render
//! --frame 0 --size 0 -o x.png`, frame 0 at full size. The window, the same
//! for both: the dataset's first Window Center/Width for frame 0 if present,
//! else center = (min + max) / 2 and width = max - min of frame 0's modality
//! values as pydicom computes them (render_facts.py); given to DCMTK as
//! `+Ww c w +Wfl` (linear, as ours with an explicit window) and to us as
//! `--wc c --ww w`. Colour images (RGB, YBR, palette) get no window and are
//! compared as RGB. PSNR is over all 8-bit samples; identical images count as
//! infinite. Files DCMTK cannot render are excluded (and printed), except
//! where DCMTK_TWINS gives a twin DCMTK can render that pydicom decodes to
//! the same values. Files we refuse must be on NOT_RENDERED (and are printed).
//! Expect about 50 dB rather than infinity on most grayscale files: DCMTK's
//! VOI LUT mostly truncates where the standard's formula, which we follow, rounds,
//! so about half the pixels differ by one grey level.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use medrelay::imaging::decode::DecodeError;
use medrelay::imaging::render::{RenderParams, render_any};
use serde_json::Value;
use support::*;

/// The error kind a file that does not render must fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotAnImage,
    Unsupported,
    Corrupt,
}

fn kind_of(e: &DecodeError) -> Option<Kind> {
    match e {
        DecodeError::NotAnImage(_) => Some(Kind::NotAnImage),
        DecodeError::Unsupported(_) => Some(Kind::Unsupported),
        DecodeError::Corrupt(_) => Some(Kind::Corrupt),
        DecodeError::Io(_) => None,
    }
}

/// A fact about the file, established by render_facts.py (pydicom), that
/// makes the listed reason true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    /// No 128-byte preamble + "DICM": text, JSON, ICC, gzip, or a bare dataset.
    NotPart10,
    /// File meta without (0002,0010).
    NoTransferSyntax,
    /// A Part 10 file whose dataset has no Pixel Data and no Waveform Sequence.
    NoPixelData,
    /// A Waveform Sequence and no Pixel Data.
    Waveform,
    /// The file ends inside an element (corpus_classify.py: "truncated").
    Truncated,
    /// The dataset is not encoded as its transfer syntax says.
    TsEncodingMismatch,
    /// Pixel Data without Rows/Columns/Bits Allocated.
    PixelsWithoutImageAttributes,
    /// Structurally valid, but the codestream does not decode with pydicom's
    /// codecs either (Pillow/OpenJPEG).
    UndecodableCodestream,
}

struct NotRendered {
    /// Path relative to .cache/dicom-samples; a trailing `*` matches a prefix.
    pattern: &'static str,
    /// How many files the pattern matches.
    count: usize,
    kind: Kind,
    /// Words the reason must contain.
    says: &'static str,
    fact: Fact,
    why: &'static str,
}

const fn n(pattern: &'static str, kind: Kind, says: &'static str, fact: Fact, why: &'static str) -> NotRendered {
    NotRendered {
        pattern,
        count: 1,
        kind,
        says,
        fact,
        why,
    }
}

const NOT_PART10: &str = "not a DICOM Part 10 file";
const NO_PIXELS: &str = "no pixel data";
const TRUNCATED: &str = "truncated";

/// Every corpus file that does not render, and why. A file missing from this
/// list must render; a file on it must fail exactly so.
const NOT_RENDERED: &[NotRendered] = &[
    // --- not DICOM Part 10 files: stored instances are always Part 10 (the
    // archive writes them), so a bare dataset is not guessed at.
    n(
        "pydicom/data/test_files/README.txt",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "text",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/README.txt",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "text",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/README",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "text (a Python script)",
    ),
    n(
        "pydicom/data/test_files/rtplan.dump",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "dcmdump text",
    ),
    n(
        "pydicom/data/test_files/rtstruct.dump",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "dcmdump text",
    ),
    n(
        "pydicom/data/test_files/test1.json",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "DICOM JSON",
    ),
    n(
        "pydicom/data/test_files/test_PN.json",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "DICOM JSON",
    ),
    n(
        "pydicom/data/test_files/crayons.icc",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "ICC profile",
    ),
    n(
        "pydicom/data/test_files/zipMR.gz",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "gzip",
    ),
    n(
        "pydicom/data/test_files/ExplVR_BigEndNoMeta.dcm",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "bare dataset (and no Pixel Data)",
    ),
    n(
        "pydicom/data/test_files/ExplVR_LitEndNoMeta.dcm",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "bare dataset (and no Pixel Data)",
    ),
    n(
        "pydicom/data/test_files/no_meta.dcm",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "bare dataset",
    ),
    n(
        "pydicom/data/test_files/rtstruct.dcm",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "bare dataset (RT Structure Set, no Pixel Data)",
    ),
    n(
        "data_store/data/OT-PAL-8-face.dcm",
        Kind::Unsupported,
        NOT_PART10,
        Fact::NotPart10,
        "ACR-NEMA style palette image without file meta; DCMTK guesses the encoding and renders it",
    ),
    // --- file meta without a transfer syntax: the dataset's encoding is unknown
    n(
        "pydicom/data/test_files/meta_missing_tsyntax.dcm",
        Kind::Corrupt,
        "no Transfer Syntax UID",
        Fact::NoTransferSyntax,
        "meta lacks (0002,0010)",
    ),
    // --- DICOM, but nothing to show
    n(
        "pydicom/data/test_files/UN_sequence.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "one private UN sequence only",
    ),
    n(
        "pydicom/data/test_files/empty_charset_LEI.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "two attributes only",
    ),
    n(
        "pydicom/data/test_files/no_meta_group_length.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "test fragment; meta without (0002,0000)",
    ),
    n(
        "pydicom/data/test_files/priv_SQ.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "private sequence only",
    ),
    n(
        "pydicom/data/test_files/reportsi.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "structured report",
    ),
    n(
        "pydicom/data/test_files/reportsi_with_empty_number_tags.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "structured report",
    ),
    n(
        "pydicom/data/test_files/test-SR.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "structured report",
    ),
    n(
        "pydicom/data/test_files/rtplan.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "RT Plan",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-bigEnd",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-empty.dcm",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-implicit",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-nooffset",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-nopatient",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/DICOMDIR-reordered",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    n(
        "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/DICOMDIR",
        Kind::NotAnImage,
        NO_PIXELS,
        Fact::NoPixelData,
        "DICOMDIR",
    ),
    NotRendered {
        pattern: "pydicom/data/test_files/dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM*",
        count: 50,
        kind: Kind::NotAnImage,
        says: NO_PIXELS,
        fact: Fact::NoPixelData,
        why: "File-set members: CT Image Storage with patient/study/series attributes only",
    },
    // --- damaged files
    n(
        "pydicom/data/test_files/MR_truncated.dcm",
        Kind::Corrupt,
        TRUNCATED,
        Fact::Truncated,
        "Pixel Data declares 8192 bytes, 8130 present",
    ),
    n(
        "pydicom/data/test_files/rtplan_truncated.dcm",
        Kind::Corrupt,
        TRUNCATED,
        Fact::Truncated,
        "ends inside an RT Plan attribute",
    ),
    n(
        "data_store/data/emri_small_jpeg_2k_lossless_too_short.dcm",
        Kind::Corrupt,
        TRUNCATED,
        Fact::Truncated,
        "ends inside the encapsulated pixel data (no sequence delimiter)",
    ),
    n(
        "pydicom/data/test_files/SC_rgb_jpeg.dcm",
        Kind::Corrupt,
        "not encoded as its transfer syntax",
        Fact::TsEncodingMismatch,
        "implicit VR dataset under an explicit VR (JPEG Baseline) transfer syntax",
    ),
    n(
        "pydicom/data/test_files/nested_priv_SQ.dcm",
        Kind::Corrupt,
        "invalid Rows/Columns",
        Fact::PixelsWithoutImageAttributes,
        "test fragment: a 2-byte Pixel Data and no image attributes",
    ),
    n(
        "pydicom/data/test_files/JPEG2000-embedded-sequence-delimiter.dcm",
        Kind::Corrupt,
        "cannot decode",
        Fact::UndecodableCodestream,
        "copy of JPEG2000.dcm with 4 codestream bytes overwritten by a sequence delimiter (pydicom's README)",
    ),
];

/// Waveforms that render_any draws on ECG paper (no Rows/Columns to check:
/// a non-empty image is enough here; the ECG layout has its own tests).
const WAVEFORMS: &[&str] = &["pydicom/data/test_files/waveform_ecg.dcm"];

/// One corpus file and its pydicom facts.
struct Entry {
    rel: String,
    path: PathBuf,
    f: Value,
}

impl Entry {
    fn s(&self, k: &str) -> Option<&str> {
        self.f.get(k).and_then(Value::as_str)
    }
    fn b(&self, k: &str) -> bool {
        self.f.get(k).and_then(Value::as_bool).unwrap_or(false)
    }
    fn u(&self, k: &str) -> Option<u64> {
        self.f.get(k).and_then(Value::as_u64)
    }
    fn photometric(&self) -> &str {
        self.s("photometric").unwrap_or("")
    }
    fn monochrome(&self) -> bool {
        self.u("spp") == Some(1) && self.photometric().starts_with("MONOCHROME")
    }
    fn window(&self) -> Option<(f64, f64)> {
        let w = self.f.get("window")?.as_array()?;
        Some((w.first()?.as_f64()?, w.get(1)?.as_f64()?))
    }
    fn ts(&self) -> &str {
        self.s("ts").unwrap_or("")
    }

    fn holds(&self, fact: Fact) -> bool {
        let problem = self.s("problem");
        match fact {
            Fact::NotPart10 => !self.b("part10"),
            Fact::NoTransferSyntax => self.b("part10") && problem == Some("no-transfer-syntax"),
            Fact::NoPixelData => self.b("part10") && !self.b("pixel_data") && !self.b("waveform"),
            Fact::Waveform => self.b("waveform") && !self.b("pixel_data"),
            Fact::Truncated => problem == Some("truncated"),
            Fact::TsEncodingMismatch => problem == Some("ts-encoding-mismatch"),
            Fact::PixelsWithoutImageAttributes => {
                self.b("pixel_data") && self.u("rows").is_none() && self.u("bits_allocated").is_none()
            }
            Fact::UndecodableCodestream => {
                problem.is_none() && self.b("pixel_data") && self.s("decode_error").is_some()
            }
        }
    }
}

/// The facts for every corpus file, computed once per test binary.
fn corpus() -> &'static Vec<Entry> {
    static FACTS: OnceLock<Vec<Entry>> = OnceLock::new();
    FACTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("facts.json");
        let o = run({
            let mut c = Command::new(python());
            c.arg(script("render_facts.py"))
                .arg("--out")
                .arg(&out)
                .arg(corpus_pydicom())
                .arg(corpus_nema());
            c
        });
        assert!(o.status.success(), "render_facts.py: {}", text(&o));
        let doc: Value = serde_json::from_slice(&std::fs::read(&out).expect("facts.json")).expect("facts json");
        let files = doc["files"].as_array().expect("files");
        let v: Vec<Entry> = files
            .iter()
            .map(|f| Entry {
                rel: f["rel"].as_str().expect("rel").to_string(),
                path: PathBuf::from(f["path"].as_str().expect("path")),
                f: f.clone(),
            })
            .collect();
        // The helper saw every file there is.
        let mut on_disk = BTreeSet::new();
        for root in [corpus_pydicom(), corpus_nema()] {
            list_files(&root, &mut on_disk);
        }
        let seen: BTreeSet<PathBuf> = v.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            seen, on_disk,
            "render_facts.py and the corpus disagree on the file list"
        );
        assert!(v.len() > 200, "corpus has only {} files", v.len());
        v
    })
}

fn list_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            list_files(&p, out);
        } else if p.is_file() {
            out.insert(p);
        }
    }
}

fn listed(rel: &str) -> Option<&'static NotRendered> {
    NOT_RENDERED.iter().find(|k| match k.pattern.strip_suffix('*') {
        Some(prefix) => rel.starts_with(prefix),
        None => rel == k.pattern,
    })
}

/// Run `f` over `items` on a few threads; results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn every_corpus_file_renders_or_says_truthfully_why_not() {
    let files = corpus();
    let params = RenderParams {
        window: None,
        frame: 0,
        max_side: 0,
    };
    let results = par_map(files, |e| {
        std::panic::catch_unwind(|| render_any(&e.path, &params)).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    let mut problems = Vec::new();
    let mut matched: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rendered = 0;
    for (e, r) in files.iter().zip(results) {
        let expected = listed(&e.rel);
        if let Some(k) = expected {
            *matched.entry(k.pattern).or_default() += 1;
        }
        match (r, expected) {
            (Err(panic), _) => problems.push(format!("{}: PANICKED: {panic}", e.rel)),
            (Ok(r), None) if WAVEFORMS.contains(&e.rel.as_str()) => {
                if !e.holds(Fact::Waveform) {
                    problems.push(format!("{}: listed as a waveform, pydicom finds none: {}", e.rel, e.f));
                }
                match r {
                    Ok(img) if !img.data.is_empty() && img.width > 0 && img.height > 0 => rendered += 1,
                    Ok(img) => problems.push(format!("{}: empty ECG image {}x{}", e.rel, img.width, img.height)),
                    Err(err) => problems.push(format!("{}: ECG does not render: {err}", e.rel)),
                }
            }
            (Ok(Ok(img)), None) => {
                rendered += 1;
                let (rows, cols) = (e.u("rows"), e.u("cols"));
                let channels = if e.monochrome() { 1 } else { 3 };
                if (Some(u64::from(img.height)), Some(u64::from(img.width))) != (rows, cols)
                    || img.channels != channels
                    || img.data.len() != (img.width * img.height) as usize * usize::from(img.channels)
                    || img.data.is_empty()
                {
                    problems.push(format!(
                        "{}: rendered {}x{}x{} ({} bytes), pydicom says Rows {rows:?} Columns {cols:?}, {} ({channels} channels)",
                        e.rel,
                        img.width,
                        img.height,
                        img.channels,
                        img.data.len(),
                        e.photometric()
                    ));
                }
            }
            (Ok(Ok(_)), Some(k)) => problems.push(format!(
                "{}: renders now, but is listed as not renderable ({:?} \"{}\": {}); take it off NOT_RENDERED",
                e.rel, k.kind, k.says, k.why
            )),
            (Ok(Err(err)), None) => problems.push(format!("{}: NEW FAILURE: no preview: {err}", e.rel)),
            (Ok(Err(err)), Some(k)) => {
                let text = err.to_string();
                if kind_of(&err) != Some(k.kind) || !text.contains(k.says) {
                    problems.push(format!(
                        "{}: fails with \"{text}\", expected {:?} saying \"{}\"",
                        e.rel, k.kind, k.says
                    ));
                }
                if !e.holds(k.fact) {
                    problems.push(format!(
                        "{}: listed as {:?} ({}), but pydicom does not confirm {:?}: {}",
                        e.rel, k.kind, k.why, k.fact, e.f
                    ));
                }
            }
        }
    }
    for k in NOT_RENDERED {
        let got = matched.get(k.pattern).copied().unwrap_or(0);
        if got != k.count {
            problems.push(format!(
                "{}: matches {got} corpus files, expected {}",
                k.pattern, k.count
            ));
        }
    }
    println!(
        "{} corpus files: {rendered} render, {} do not (listed)",
        files.len(),
        files.len() - rendered
    );
    assert!(
        problems.is_empty(),
        "{} surprise(s) rendering the corpus:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------ DCMTK

const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

fn ts_name(uid: &str) -> &str {
    match uid {
        "1.2.840.10008.1.2" => "ImplicitLE",
        "1.2.840.10008.1.2.1" => "ExplicitLE",
        "1.2.840.10008.1.2.2" => "ExplicitBE",
        "1.2.840.10008.1.2.1.99" => "DeflatedLE",
        "1.2.840.10008.1.2.5" => "RLE",
        "1.2.840.10008.1.2.4.50" => "JPEG-Baseline",
        "1.2.840.10008.1.2.4.51" => "JPEG-Extended",
        "1.2.840.10008.1.2.4.57" => "JPEG-Lossless",
        "1.2.840.10008.1.2.4.70" => "JPEG-LosslessSV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS-Near",
        "1.2.840.10008.1.2.4.90" => "J2K-Lossless",
        "1.2.840.10008.1.2.4.91" => "J2K",
        "" => "-",
        other => other,
    }
}

/// An 8-bit image as both renderers wrote it.
#[derive(Debug)]
struct Gray8OrRgb {
    width: u32,
    height: u32,
    channels: u8,
    data: Vec<u8>,
}

impl Gray8OrRgb {
    fn rgb(&self) -> Vec<u8> {
        if self.channels == 3 {
            self.data.clone()
        } else {
            self.data.iter().flat_map(|&v| [v, v, v]).collect()
        }
    }
}

/// Binary PGM (P5) / PPM (P6) with maxval 255, as dcmj2pnm +op writes.
fn read_pnm(bytes: &[u8]) -> Result<Gray8OrRgb, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'#') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("PNM header ends early".into());
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).to_string());
    }
    i += 1; // the single whitespace before the raster
    let channels = match fields[0].as_str() {
        "P5" => 1,
        "P6" => 3,
        m => return Err(format!("PNM magic {m}")),
    };
    let num = |s: &str| s.parse::<u32>().map_err(|e| format!("PNM header {s}: {e}"));
    let (width, height, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if max != 255 {
        return Err(format!("PNM maxval {max}, expected 8-bit"));
    }
    let n = (width * height) as usize * channels as usize;
    let data = bytes.get(i..i + n).ok_or("PNM raster short")?.to_vec();
    Ok(Gray8OrRgb {
        width,
        height,
        channels,
        data,
    })
}

fn read_png(path: &Path) -> Result<Gray8OrRgb, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (width, height) = (img.width(), img.height());
    Ok(match img {
        image::DynamicImage::ImageLuma8(g) => Gray8OrRgb {
            width,
            height,
            channels: 1,
            data: g.into_raw(),
        },
        other => Gray8OrRgb {
            width,
            height,
            channels: 3,
            data: other.to_rgb8().into_raw(),
        },
    })
}

/// PSNR of two 8-bit images in dB (MSE over all samples; a grey image is
/// compared as RGB against an RGB one). Identical images: infinity.
fn psnr(a: &Gray8OrRgb, b: &Gray8OrRgb) -> Result<f64, String> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(format!(
            "sizes differ: {}x{} vs {}x{}",
            a.width, a.height, b.width, b.height
        ));
    }
    let (x, y) = if a.channels == b.channels {
        (a.data.clone(), b.data.clone())
    } else {
        (a.rgb(), b.rgb())
    };
    let se: f64 = x
        .iter()
        .zip(&y)
        .map(|(&p, &q)| {
            let d = f64::from(p) - f64::from(q);
            d * d
        })
        .sum();
    let mse = se / x.len().max(1) as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    })
}

/// Why a file is compared with DCMTK's rendering of a twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TwinKind {
    /// DCMTK renders the file unlike pydicom (and us), for a reason given;
    /// its rendering of the file itself must still differ from the twin's.
    DcmtkMisreads,
    /// DCMTK has no codec for it (JPEG 2000 is not in open-source DCMTK);
    /// it must still fail on the file itself.
    DcmtkCannotDecode,
}

/// Files compared against DCMTK's rendering of a twin whose frame 0 pydicom
/// decodes to exactly the same values (same frame0_sha256), with the same
/// photometric interpretation and window. When DCMTK changes so that the
/// reason no longer holds, the entry must go.
struct DcmtkTwin {
    file: &'static str,
    twin: &'static str,
    kind: TwinKind,
    why: &'static str,
}

const BE_OW_32: &str = "32-bit samples in an OW value under Explicit VR Big Endian (retired): pydicom and we \
     read each sample as a big-endian 32-bit number (bytes 00 13 0E E8 = 1249000, the value the \
     little-endian twin holds); DCMTK swaps the two 16-bit words into little-endian order \
     (0x0EE80013), so its output differs from its own rendering of the twin";
const J2K_LOSSLESS: &str =
    "JPEG 2000 coded losslessly (pydicom decodes it to the twin's values); DCMTK has no JPEG 2000 codec";

const fn twin(file: &'static str, twin: &'static str, kind: TwinKind, why: &'static str) -> DcmtkTwin {
    DcmtkTwin { file, twin, kind, why }
}

const DCMTK_TWINS: &[DcmtkTwin] = &[
    twin(
        "pydicom/data/test_files/rtdose_expb.dcm",
        "pydicom/data/test_files/rtdose.dcm",
        TwinKind::DcmtkMisreads,
        BE_OW_32,
    ),
    twin(
        "pydicom/data/test_files/rtdose_expb_1frame.dcm",
        "pydicom/data/test_files/rtdose_1frame.dcm",
        TwinKind::DcmtkMisreads,
        BE_OW_32,
    ),
    twin(
        "data_store/data/693_J2KR.dcm",
        "data_store/data/693_UNCR.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "pydicom/data/test_files/693_J2KI.dcm",
        "data_store/data/693_UNCI.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "data_store/data/MR2_J2KR.dcm",
        "data_store/data/MR2_UNCR.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "data_store/data/RG1_J2KR.dcm",
        "data_store/data/RG1_UNCR.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "data_store/data/RG3_J2KR.dcm",
        "data_store/data/RG3_UNCR.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "data_store/data/US1_J2KR.dcm",
        "data_store/data/US1_UNCR.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "data_store/data/emri_small_jpeg_2k_lossless.dcm",
        "data_store/data/emri_small.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "pydicom/data/test_files/MR_small_jp2klossless.dcm",
        "pydicom/data/test_files/MR_small.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
    twin(
        "pydicom/data/test_files/JPEG2000.dcm",
        "data_store/data/JPEG2000_UNC.dcm",
        TwinKind::DcmtkCannotDecode,
        J2K_LOSSLESS,
    ),
];

enum Compared {
    /// DCMTK cannot render it: excluded, with DCMTK's words.
    DcmtkFails(String),
    /// DCMTK renders it; medrelay refuses (must be on NOT_RENDERED).
    OursFails(String),
    /// PSNR, the window, and the twin DCMTK rendered instead, if any.
    Psnr(f64, Option<(f64, f64)>, Option<&'static str>),
    /// Monochrome without a window from render_facts.py.
    NoWindow,
    Broken(String),
}

/// DCMTK's rendering of frame 0: -O no overlays (we do not burn them in),
/// +F 1 the first frame, no scaling (the default), +op binary 8-bit PGM/PPM;
/// with a window, +Ww and +Wfl (a LINEAR VOI function whatever the dataset
/// says, as ours with an explicit window).
fn dcmtk_render(e: &Entry, path: &Path, window: Option<(f64, f64)>, out: &Path) -> Result<Gray8OrRgb, String> {
    let prog = if JPEG_LS.contains(&e.ts()) {
        "dcml2pnm"
    } else {
        "dcmj2pnm"
    };
    let mut c = Command::new(prog);
    c.args(["-O", "+F", "1", "+op"]);
    if let Some((wc, ww)) = window {
        c.args(["+Ww", &wc.to_string(), &ww.to_string(), "+Wfl"]);
    }
    c.arg(path).arg(out);
    let o = run(c);
    if !o.status.success() || !out.exists() {
        let t = text(&o);
        let why = t
            .lines()
            .find(|l| l.starts_with("E:") || l.starts_with("F:"))
            .unwrap_or(t.trim());
        return Err(why.to_string());
    }
    std::fs::read(out)
        .map_err(|e| e.to_string())
        .and_then(|b| read_pnm(&b))
        .map_err(|e| format!("DCMTK output unreadable: {e}"))
}

fn compare_with_dcmtk(e: &Entry, by_rel: &BTreeMap<&str, &Entry>, dir: &Path, idx: usize) -> Compared {
    let window = match (e.monochrome(), e.window()) {
        (false, _) => None,
        (true, Some(w)) => Some(w),
        // not rendered by us anyway: DCMTK's default (no VOI) just tells whether it renders
        (true, None) if listed(&e.rel).is_some() => None,
        (true, None) => return Compared::NoWindow,
    };
    let own = dcmtk_render(e, &e.path, window, &dir.join(format!("{idx}-dcmtk.pnm")));
    let twin = DCMTK_TWINS.iter().find(|t| t.file == e.rel);
    let reference = match (twin, own) {
        (None, Err(why)) => return Compared::DcmtkFails(why),
        (None, Ok(own)) => own,
        (Some(t), own) => {
            let Some(other) = by_rel.get(t.twin) else {
                return Compared::Broken(format!("twin {} not in the corpus", t.twin));
            };
            let same = |k: &str| e.f.get(k) == other.f.get(k) && e.f.get(k).is_some_and(|v| !v.is_null());
            // JPEG 2000's YBR_RCT/YBR_ICT are colour transforms inside the codestream: decoded, it is RGB
            let decoded_pi = |x: &Entry| match x.photometric() {
                "YBR_RCT" | "YBR_ICT" => "RGB".to_string(),
                p => p.to_string(),
            };
            let same_pi = !e.photometric().is_empty() && decoded_pi(e) == decoded_pi(other);
            if !(same("frame0_sha256") && same_pi && (same("window") || !e.monochrome())) {
                return Compared::Broken(format!(
                    "pydicom does not find {} and its twin {} equal (frame 0 values, photometric, window)",
                    e.rel, t.twin
                ));
            }
            let reference = match dcmtk_render(other, &other.path, window, &dir.join(format!("{idx}-dcmtk-twin.pnm"))) {
                Ok(i) => i,
                Err(why) => return Compared::Broken(format!("DCMTK cannot render the twin {}: {why}", t.twin)),
            };
            match (t.kind, own) {
                (TwinKind::DcmtkCannotDecode, Err(_)) => {}
                (TwinKind::DcmtkMisreads, Ok(own)) if psnr(&own, &reference).is_ok_and(|p| p < 40.0) => {}
                (kind, own) => {
                    return Compared::Broken(format!(
                        "DCMTK_TWINS says {kind:?}, but DCMTK now {} {}: compare it directly, take it off DCMTK_TWINS",
                        if own.is_ok() { "renders" } else { "fails on" },
                        e.rel
                    ));
                }
            }
            reference
        }
    };
    let ours = dir.join(format!("{idx}-medrelay.png"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
    c.arg("render")
        .arg(&e.path)
        .args(["--frame", "0", "--size", "0", "-o"])
        .arg(&ours);
    if let Some((wc, ww)) = window {
        c.args(["--wc", &wc.to_string(), "--ww", &ww.to_string()]);
    }
    let o = run(c);
    if !o.status.success() {
        return Compared::OursFails(text(&o).trim().to_string());
    }
    let ours = match read_png(&ours) {
        Ok(i) => i,
        Err(err) => return Compared::Broken(format!("our PNG: {err}")),
    };
    match psnr(&ours, &reference) {
        Ok(p) => Compared::Psnr(p, window, twin.map(|t| t.twin)),
        Err(err) => Compared::Broken(err),
    }
}

#[test]
fn renders_agree_with_dcmtk_psnr_at_least_40_db() {
    let files: Vec<&Entry> = corpus().iter().filter(|e| e.b("pixel_data")).collect();
    let dir = tempfile::tempdir().expect("tmp");
    let numbered: Vec<(usize, &Entry)> = files.iter().copied().enumerate().collect();
    let by_rel: BTreeMap<&str, &Entry> = corpus().iter().map(|e| (e.rel.as_str(), e)).collect();
    let results = par_map(&numbered, |(i, e)| compare_with_dcmtk(e, &by_rel, dir.path(), *i));
    let mut table = Vec::new();
    let (mut excluded, mut refused, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let (mut values, mut twins) = (Vec::new(), Vec::new());
    for (e, r) in files.iter().zip(results) {
        match r {
            Compared::DcmtkFails(why) => excluded.push(format!("{} [{}]: {why}", e.rel, ts_name(e.ts()))),
            Compared::OursFails(why) => match listed(&e.rel) {
                Some(k) => refused.push(format!("{}: {why} (listed: {})", e.rel, k.why)),
                None => problems.push(format!("{}: DCMTK renders it, we do not: {why}", e.rel)),
            },
            Compared::NoWindow => problems.push(format!(
                "{}: monochrome, but render_facts.py found no window: {}",
                e.rel, e.f
            )),
            Compared::Broken(why) => problems.push(format!("{}: {why}", e.rel)),
            Compared::Psnr(p, window, twin) => {
                values.push(p);
                if let Some(t) = twin.and_then(|t| DCMTK_TWINS.iter().find(|x| x.twin == t && x.file == e.rel)) {
                    twins.push(format!("{} vs DCMTK on {}: {}", e.rel, t.twin, t.why));
                }
                let w = window.map_or("-".to_string(), |(c, w)| {
                    format!("{c}/{w} ({})", e.s("window_source").unwrap_or("?"))
                });
                table.push(format!(
                    "{:<62} {:<17} {:<14} {:<28} {:>7}",
                    format!("{}{}", e.rel, if twin.is_some() { " (*)" } else { "" }),
                    ts_name(e.ts()),
                    e.photometric(),
                    w,
                    if p.is_infinite() {
                        "inf".to_string()
                    } else {
                        format!("{p:.2}")
                    }
                ));
                if p < 40.0 {
                    problems.push(format!("{}: PSNR {p:.2} dB < 40 dB", e.rel));
                }
            }
        }
    }
    println!(
        "{:<62} {:<17} {:<14} {:<28} {:>7}",
        "file", "transfer syntax", "photometric", "window c/w (source)", "PSNR dB"
    );
    for l in &table {
        println!("{l}");
    }
    values.sort_by(f64::total_cmp);
    let fmt = |v: Option<&f64>| {
        v.map_or("-".into(), |p| {
            if p.is_infinite() {
                "inf".into()
            } else {
                format!("{p:.2}")
            }
        })
    };
    println!(
        "\ncompared {} files: min PSNR {} dB, median {} dB, {} identical",
        values.len(),
        fmt(values.first()),
        fmt(values.get(values.len() / 2)),
        values.iter().filter(|p| p.is_infinite()).count()
    );
    println!("\n(*) compared with DCMTK's rendering of a twin (DCMTK_TWINS):");
    for l in &twins {
        println!("  {l}");
    }
    println!("\nexcluded, DCMTK cannot render them ({}):", excluded.len());
    for l in &excluded {
        println!("  {l}");
    }
    println!(
        "\nDCMTK renders, medrelay says why not (on NOT_RENDERED) ({}):",
        refused.len()
    );
    for l in &refused {
        println!("  {l}");
    }
    assert!(values.len() >= 100, "only {} files compared", values.len());
    assert!(
        problems.is_empty(),
        "{} file(s) disagree with DCMTK:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
