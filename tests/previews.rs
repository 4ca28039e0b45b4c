//! Previews made as instances arrive: a 300-slice burst gets thumbnails and
//! previews, bad pixel data gets "no preview: reason" while the worker keeps
//! going, and a restart renders what was missed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

fn store(s: &Server, files: &[PathBuf]) -> std::process::Output {
    run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args(["store", "--quiet", "--to", &s.target()]).args(files);
        c
    })
}

fn jpeg_size(bytes: &[u8]) -> (u32, u32) {
    // Walk JPEG markers to the SOF: independent of our encoder.
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            break;
        }
        let marker = bytes[i + 1];
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if matches!(marker, 0xC0..=0xC2) {
            let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as u32;
            let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]) as u32;
            return (w, h);
        }
        i += 2 + len;
    }
    panic!("no SOF in JPEG of {} bytes", bytes.len());
}

fn statuses(s: &Server) -> String {
    s.sqlite("SELECT preview_status, COUNT(*) FROM instances GROUP BY 1 ORDER BY 1")
}

#[test]
fn a_300_slice_burst_gets_thumbnails_and_previews() {
    let s = Server::start(ServerOpts::default());
    let o = run({
        let mut c = s.storescu("CT01");
        c.arg("+sd").arg(ct300());
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    s.wait_for(300, "300 previews", || {
        s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") == "300"
    });
    let j = s.get_json("/api/studies");
    assert_eq!(j["studies"][0]["previews_ready"], 300);
    let study = j["studies"][0]["study_uid"].as_str().expect("uid").to_string();
    let inst = s.get_json(&format!("/api/studies/{study}/instances"));
    let sop = inst["instances"][150]["sop_instance_uid"]
        .as_str()
        .expect("sop")
        .to_string();
    assert_eq!(inst["instances"][150]["preview_status"], "ok");

    let (code, thumb) = s.get(&format!("/api/instances/{sop}/thumbnail"));
    assert_eq!(code, 200);
    let (w, h) = jpeg_size(&thumb);
    assert!((128..=256).contains(&w.max(h)), "thumbnail {w}x{h}");
    let (code, preview) = s.get(&format!("/api/instances/{sop}/preview"));
    assert_eq!(code, 200);
    assert_eq!(
        jpeg_size(&preview),
        (512, 512),
        "512x512 CT previews at full size (<= 1024)"
    );
    let (code, strip) = s.get(&format!("/api/studies/{study}/key-images"));
    assert_eq!(code, 200);
    assert!(jpeg_size(&strip).1 <= 256);

    // On-demand render with an explicit window, and PNG at full size.
    let (code, body) = s.get(&format!(
        "/api/instances/{sop}/rendered?window_center=40&window_width=400&size=256"
    ));
    assert_eq!(code, 200);
    assert_eq!(jpeg_size(&body), (256, 256));
    let (code, png) = s.get(&format!("/api/instances/{sop}/rendered?format=png"));
    assert_eq!((code, &png[1..4]), (200, &b"PNG"[..]));
    let (code, _) = s.get(&format!("/api/instances/{sop}/rendered?window_center=40"));
    assert_eq!(code, 400, "a centre without a width is refused");
    let (code, _) = s.get(&format!("/api/instances/{sop}/rendered?frame=5"));
    assert_eq!(code, 400, "frame out of range");
}

/// Datasets that store fine but whose pixels cannot be decoded.
fn bad_pixel_files(dir: &Path) -> Vec<PathBuf> {
    let script = r#"
import sys, copy, pydicom
from pydicom.encaps import encapsulate
src, out = sys.argv[1], sys.argv[2]
ct = pydicom.dcmread(src + '/ct.dcm')
# 1. lying Rows/Columns: header claims twice the rows the pixel data holds
a = copy.deepcopy(ct); a.Rows = ct.Rows * 2; a.SOPInstanceUID = pydicom.uid.generate_uid(); a.file_meta.MediaStorageSOPInstanceUID = a.SOPInstanceUID
a.save_as(out + '/lying_rows.dcm')
# 2. wrong length: pixel data cut to a third (still a well-formed element)
b = copy.deepcopy(ct); b.PixelData = ct.PixelData[: len(ct.PixelData) // 3]; b.SOPInstanceUID = pydicom.uid.generate_uid()
b.file_meta.MediaStorageSOPInstanceUID = b.SOPInstanceUID
b.save_as(out + '/short_pixels.dcm')
# 3. truncated JPEG 2000 fragment (encapsulation intact, codestream cut)
j = pydicom.dcmread(src + '/j2k.dcm')
frag = next(pydicom.encaps.generate_frames(j.PixelData, number_of_frames=1))
j.PixelData = encapsulate([frag[: (len(frag) // 4) & ~1]])
j.SOPInstanceUID = pydicom.uid.generate_uid(); j.file_meta.MediaStorageSOPInstanceUID = j.SOPInstanceUID
j.save_as(out + '/truncated_j2k.dcm')
"#;
    std::fs::copy(ct300().join("CT000001.dcm"), dir.join("ct.dcm")).expect("copy");
    std::fs::copy(corpus_nema().join("MR2_J2KR.dcm"), dir.join("j2k.dcm")).expect("copy");
    let o = run({
        let mut c = Command::new(python());
        c.args(["-c", script]).arg(dir).arg(dir);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    ["lying_rows.dcm", "short_pixels.dcm", "truncated_j2k.dcm"]
        .iter()
        .map(|n| dir.join(n))
        .collect()
}

#[test]
fn bad_pixel_data_gets_a_reason_and_the_worker_keeps_going() {
    let s = Server::start(ServerOpts::default());
    let dir = tempfile::tempdir().expect("tmp");
    let bad = bad_pixel_files(dir.path());
    let o = store(&s, &bad);
    assert!(o.status.success(), "bad pixels still store: {}", text(&o));
    // a good instance after the bad ones is rendered: the worker kept going
    let good = corpus_pydicom().join("CT_small.dcm");
    assert!(store(&s, &[good]).status.success());
    s.wait_for(120, "all previews settled", || {
        s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'pending'") == "0"
    });
    let rows = s.sqlite("SELECT preview_status FROM instances ORDER BY received_ms");
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 4, "{}", statuses(&s));
    assert!(
        rows[0].starts_with("no preview: bad pixel data: pixel data has"),
        "lying rows: {}",
        rows[0]
    );
    assert!(
        rows[1].starts_with("no preview: bad pixel data: pixel data has"),
        "short pixels: {}",
        rows[1]
    );
    assert!(
        rows[2].starts_with("no preview: bad pixel data: cannot decode"),
        "truncated j2k: {}",
        rows[2]
    );
    assert_eq!(rows[3], "ok");
    // the API shows the reason, and the thumbnail is a placeholder image
    let sop = s.sqlite("SELECT sop_instance_uid FROM instances ORDER BY received_ms LIMIT 1");
    let j = s.get_json(&format!("/api/instances/{sop}"));
    assert!(
        j["instance"]["preview_status"]
            .as_str()
            .unwrap_or("")
            .starts_with("no preview:")
    );
    let o = run({
        let mut c = Command::new("curl");
        let admin = s.admin.as_ref().expect("admin session");
        c.args([
            "-sk",
            "-b",
            &admin.jar.display().to_string(),
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("https://127.0.0.1:{}/api/instances/{sop}/thumbnail", s.http_port),
        ]);
        c
    });
    let h = text(&o).to_lowercase();
    assert!(
        h.contains("200") && h.contains("image/jpeg") && h.contains("x-preview-status: no preview"),
        "{h}"
    );
}

#[test]
fn a_restart_renders_what_was_missed() {
    let cfg = "[render]\nenabled = false\n";
    let mut s = Server::start(ServerOpts {
        config_toml: cfg.into(),
        ..Default::default()
    });
    let files: Vec<PathBuf> = (1..=5).map(|i| ct300().join(format!("CT{i:06}.dcm"))).collect();
    assert!(store(&s, &files).status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'pending'"),
        "5"
    );
    // same data directory, rendering on
    std::fs::write(s.dir.join("medrelay.toml"), "").expect("config");
    s.restart();
    s.wait_for(60, "catch-up renders", || {
        s.sqlite("SELECT COUNT(*) FROM instances WHERE preview_status = 'ok'") == "5"
    });
}

#[test]
fn a_township_ecg_renders_on_ecg_paper() {
    let s = Server::start(ServerOpts::default());
    let ecg = corpus_pydicom().join("waveform_ecg.dcm");
    assert!(store(&s, &[ecg]).status.success());
    s.wait_for(60, "ECG preview", || {
        s.sqlite("SELECT preview_status FROM instances") == "ok"
    });
    let sop = s.sqlite("SELECT sop_instance_uid FROM instances");
    let (code, body) = s.get(&format!("/api/instances/{sop}/preview"));
    assert_eq!(code, 200);
    let (w, h) = jpeg_size(&body);
    assert!(w == 1024 && h > 500, "ECG preview {w}x{h}");
    // full resolution: 5 px/mm, so the 10 s rhythm strip at 25 mm/s spans 1250 px
    let (code, png) = s.get(&format!("/api/instances/{sop}/rendered?format=png"));
    assert_eq!((code, &png[1..4]), (200, &b"PNG"[..]));
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert!(width >= 1250, "{width}");
}

/// Peak RSS (kB) of `medrelay render` on `file`, via GNU time.
fn render_peak_rss(file: &Path, out: &Path, extra: &[&str]) -> u64 {
    let o = run({
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "MAXRSS %M", env!("CARGO_BIN_EXE_medrelay"), "render"])
            .arg(file)
            .args(extra)
            .arg("-o")
            .arg(out);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
        .lines()
        .find_map(|l| l.strip_prefix("MAXRSS ").and_then(|v| v.trim().parse().ok()))
        .expect("MAXRSS")
}

#[test]
fn very_large_images_render_with_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    // A 4096 x 5120 16-bit MONOCHROME1 mammogram-sized image (40 MB of pixels).
    let mg = dir.path().join("mg.dcm");
    let script = r#"
import sys, numpy as np, pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
rows, cols = 5120, 4096
y, x = np.mgrid[0:rows, 0:cols]
img = (((x * 7 + y * 3) % 16384)).astype(np.uint16)
ds = Dataset(); ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1.2'; ds.SOPInstanceUID = generate_uid()
ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID; ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
ds.StudyInstanceUID = generate_uid(); ds.SeriesInstanceUID = generate_uid(); ds.Modality = 'MG'
ds.Rows, ds.Columns = rows, cols; ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = 'MONOCHROME1'
ds.BitsAllocated = 16; ds.BitsStored = 14; ds.HighBit = 13; ds.PixelRepresentation = 0
ds.PixelData = img.tobytes()
ds.save_as(sys.argv[1], enforce_file_format=True)
"#;
    let o = run({
        let mut c = Command::new(python());
        c.args(["-c", script]).arg(&mg);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let kb = render_peak_rss(&mg, &dir.path().join("mg.jpg"), &["--size", "1024"]);
    // one frame's values (80 MB as i32) plus the 20 MB display buffer, not more
    assert!(kb < 200 * 1024, "4k x 5k render peaked at {kb} kB");

    // A 512 MB multi-frame: only the requested frame is read.
    let big = dir.path().join("big.dcm");
    gen_big(&big, 512);
    let kb = render_peak_rss(&big, &dir.path().join("big.jpg"), &["--frame", "300"]);
    assert!(kb < 64 * 1024, "512 MB multi-frame render peaked at {kb} kB");
}
