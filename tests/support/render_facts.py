#!/usr/bin/env python3
"""Facts about every file of the public sample corpus that matter for
rendering, found with pydicom (and DCMTK's decompressors), never with
medrelay. Used by tests/render.rs.

    render_facts.py --out facts.json ROOT...

Every regular file under the roots (recursively, sorted) gets one entry:

    {"rel": "pydicom/data/test_files/CT_small.dcm",  # relative to the roots' common parent
     "path": "/abs/path",
     "problem": null | "<code>", "detail": "...",    # corpus_classify.py's verdict
     "part10": true,            # 128-byte preamble + "DICM"
     "ts": "1.2.840.10008.1.2.1" | null,
     "pixel_data": true,        # top-level (7FE0,0010)
     "waveform": false,         # top-level Waveform Sequence (5400,0100)
     "rows": 128, "cols": 128, "frames": 1, "spp": 1,
     "photometric": "MONOCHROME2", "bits_allocated": 16, "bits_stored": 16,
     "signed": true,
     "segmented_palette": false,
     "jpeg_sof": [192, 8] | null,   # JPEG family: first SOFn marker and its sample precision
     "decode_error": null | "...",  # pydicom (numpy/Pillow plugins) failing on frame 0
     "frame0_sha256": "..." | null, # sha256 of frame 0's values as int64 LE, with its shape
     "window": [c, w] | null,       # the explicit window both renderers get, see below
     "window_source": "dataset" | "minmax" | null,
     "values_from": "pydicom" | "dcmdjpeg" | ... | null}

The window (monochrome images only; colour and palette images get none) is
the dataset's first Window Center/Width for frame 0 (per-frame functional
group, shared functional group, then top level) when present with a positive
width; otherwise min/max of frame 0's modality values (stored values through
the Rescale Slope/Intercept of frame 0, or pydicom's Modality LUT when the
dataset has a Modality LUT Sequence) as center = (min + max) / 2, width =
max - min (at least 1). Frame 0's values come from pydicom; when pydicom has
no decoder for the transfer syntax, from a copy decompressed by DCMTK
(dcmdjpeg, dcmdjpls, dcmdrle).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus_classify import classify, walk  # noqa: E402

JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
RLE = "1.2.840.10008.1.2.5"


def part10(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def jpeg_sof(ds) -> list[int] | None:
    """First SOFn marker of frame 0 and its sample precision (ITU T.81 B.2.2)."""
    try:
        frag = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:  # noqa: BLE001
        return None
    i = 2 if frag[:2] == b"\xff\xd8" else None
    while i is not None and i + 4 <= len(frag):
        if frag[i] != 0xFF:
            return None
        m = frag[i + 1]
        if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            return [m, frag[i + 4]] if i + 4 < len(frag) else None
        i += 2 + int.from_bytes(frag[i + 2:i + 4], "big")
    return None


def first(v):
    if v is None:
        return None
    try:
        return float(v[0]) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def functional(ds, seq_kw: str):
    """Item of `seq_kw` for frame 0: per-frame group first, then shared (PS3.3 C.7.6.16)."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        g = ds.get(groups)
        if g and len(g) > 0 and seq_kw in g[0] and len(g[0][seq_kw].value) > 0:
            return g[0][seq_kw].value[0]
    return None


def dataset_window(ds):
    for src in (functional(ds, "FrameVOILUTSequence"), ds):
        if src is None:
            continue
        c, w = first(src.get("WindowCenter")), first(src.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            return [c, w]
    return None


def rescale_of(ds):
    item = functional(ds, "PixelValueTransformationSequence")
    for src in (item, ds):
        if src is not None and ("RescaleSlope" in src or "RescaleIntercept" in src):
            return float(src.get("RescaleSlope", 1) or 1), float(src.get("RescaleIntercept", 0) or 0)
    return 1.0, 0.0


def frame0(ds):
    ds.pixel_array_options(index=0)
    return ds.pixel_array


def frame0_via_dcmtk(path: str, ts: str):
    tool = "dcmdjpeg" if ts in JPEG_FAMILY else "dcmdjpls" if ts in JPEG_LS else "dcmdrle" if ts == RLE else None
    if tool is None:
        return None, None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "plain.dcm")
        r = subprocess.run([tool, path, out], capture_output=True)
        if r.returncode != 0 or not os.path.exists(out):
            return None, None
        return frame0(pydicom.dcmread(out)), tool


def facts(path: str) -> dict:
    warnings.simplefilter("ignore")
    e = classify(path)
    e = {k: e[k] for k in ("path", "problem", "detail", "ts", "sop_class")}
    e.update(part10=part10(path), pixel_data=False, waveform=False, rows=None, cols=None, frames=None,
             spp=None, photometric=None, bits_allocated=None, bits_stored=None, signed=None,
             segmented_palette=False, jpeg_sof=None, decode_error=None, window=None,
             window_source=None, values_from=None, frame0_sha256=None)
    try:
        ds = pydicom.dcmread(path, force=True)
        ds.PixelData  # noqa: B018 - force the lazy read, so a broken file fails here
    except Exception:  # noqa: BLE001
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            return e
    ts = e["ts"] or str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "") or None
    e["ts"] = ts
    e["pixel_data"] = "PixelData" in ds
    e["waveform"] = "WaveformSequence" in ds
    e["segmented_palette"] = "SegmentedRedPaletteColorLookupTableData" in ds
    for key, kw in (("rows", "Rows"), ("cols", "Columns"), ("spp", "SamplesPerPixel"),
                    ("bits_allocated", "BitsAllocated"), ("bits_stored", "BitsStored")):
        v = ds.get(kw)
        e[key] = int(v) if isinstance(v, int) else None
    try:
        e["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        e["frames"] = None
    e["photometric"] = str(ds.get("PhotometricInterpretation", "") or "").strip() or None
    e["signed"] = ds.get("PixelRepresentation") == 1
    if not e["pixel_data"] or e["problem"] in ("not-part10", "no-transfer-syntax", "truncated"):
        return e
    if ts in JPEG_FAMILY:
        e["jpeg_sof"] = jpeg_sof(ds)
    arr = None
    try:
        arr = frame0(ds)
        e["values_from"] = "pydicom"
    except Exception as exc:  # noqa: BLE001
        e["decode_error"] = f"{type(exc).__name__}: {exc}"
        if e["frames"] is None:
            # badVR.dcm: Number of Frames "1A" is not an IS; DCMTK reads it as
            # one frame, so read frame 0 the same way for the window.
            try:
                ds.NumberOfFrames = 1
                arr = frame0(ds)
                e["values_from"] = "pydicom (Number of Frames read as 1)"
            except Exception:  # noqa: BLE001
                arr = None
    if arr is not None:
        a = np.ascontiguousarray(arr).astype("<i8")
        e["frame0_sha256"] = hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()
    mono = e["spp"] == 1 and (e["photometric"] or "").startswith("MONOCHROME")
    if not mono:
        return e
    e["window"] = dataset_window(ds)
    if e["window"] is not None:
        e["window_source"] = "dataset"
        return e
    if arr is None:
        try:
            arr, e["values_from"] = frame0_via_dcmtk(path, ts)
        except Exception:  # noqa: BLE001
            arr = None
    if arr is None:
        return e
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds)
    else:
        slope, intercept = rescale_of(ds)
        values = arr.astype(np.float64) * slope + intercept
    lo, hi = float(np.min(values)), float(np.max(values))
    e["window"] = [(lo + hi) / 2.0, max(hi - lo, 1.0)]
    e["window_source"] = "minmax"
    return e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    roots = [os.path.abspath(r) for r in args.roots]
    base = os.path.commonpath([os.path.dirname(r) for r in roots])
    paths = walk(roots)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        entries = list(pool.map(facts, paths, chunksize=4))
    for e in entries:
        e["rel"] = os.path.relpath(e["path"], base)
    with open(args.out, "w") as f:
        json.dump({"base": base, "files": entries}, f, indent=1)
    print(f"facts for {len(entries)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
