#!/usr/bin/env python3
"""Classify every file of the public sample corpus: is it a valid, storable
DICOM instance, and if not, why not. Used by tests/corpus.rs.

    corpus_classify.py --out classes.json [--storescu-config storescu.cfg] ROOT...

Every regular file under the roots (recursively, sorted) gets one entry:

    {"rel": "pydicom/data/test_files/MR_small.dcm",   # relative to the roots' common parent
     "path": "/abs/path",
     "problem": null | "<code>",     # first failed check, see CHECKS below
     "detail": "...",                # human-readable explanation of the problem
     "ts": ..., "meta_sop_class": ..., "meta_sop_instance": ...,
     "sop_class": ..., "sop_instance": ...,   # from the dataset
     "wire_sha256": ...}             # sha256(ts + b"\\0" + dataset bytes as in the file),
                                     # i.e. what medrelay records when the file's dataset
                                     # bytes arrive unchanged (pynetdicom streaming)

The checks use pydicom only (independent of medrelay's parser), in this order;
the first failing one is the file's "problem":

  not-part10            no 128-byte preamble + "DICM" + file meta (pydicom refuses it)
  no-transfer-syntax    file meta without (0002,0010) Transfer Syntax UID
  truncated             the file ends inside a data element: a top-level element's
                        value is shorter than its declared length, or an
                        undefined-length element lacks its delimiter
  ts-encoding-mismatch  the dataset is not encoded as its transfer syntax says
                        (pydicom had to guess explicit/implicit VR)
  no-sop-class          dataset without (0008,0016) SOP Class UID
  not-storage-class     SOP Class UID is not a Storage SOP class (e.g. DICOMDIR)
  missing-uid           SOP Instance / Study Instance / Series Instance UID absent
                        or not a valid UID
  image-without-pixels  an Image Storage SOP class without Pixel Data
  pixel-data-short      native (uncompressed) pixel data shorter than
                        Rows x Columns x Samples x BitsAllocated x Frames

--storescu-config writes a DCMTK association profile "Corpus" that proposes,
for every (SOP class, transfer syntax) pair storescu will find in the corpus,
one presentation context with exactly that transfer syntax, so storescu can
send every file in its own transfer syntax (no decompression, no conversion).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import warnings

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, UID_dictionary

from pynetdicom.dsutils import split_dataset

UNDEFINED = 0xFFFFFFFF
# The gateway's UID grammar (src/dicom/meta.rs is_valid_uid): digits and
# dots, no empty component, at most 64 characters; a component with a
# leading zero is accepted (real devices send them).
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def walk(roots: list[str]) -> list[str]:
    out = []
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                if os.path.isfile(p):
                    out.append(os.path.abspath(p))
    return out


def is_storage_class(uid: str) -> bool:
    info = UID_dictionary.get(uid)
    if info is None:
        return False
    name, kind = info[0], info[1]
    return (
        kind == "SOP Class"
        and "Storage" in name
        and "Commitment" not in name
        and "Media Storage Directory" not in name
        and "Storage Management" not in name
    )


def is_image_class(uid: str) -> bool:
    info = UID_dictionary.get(uid)
    return info is not None and "Image Storage" in info[0]


def valid_uid(v) -> bool:
    s = str(v or "").strip().rstrip("\0")
    return 0 < len(s) <= 64 and bool(UID_RE.match(s))


def classify(path: str) -> dict:
    e: dict = {"path": path, "problem": None, "detail": "", "ts": None, "meta_sop_class": None,
               "meta_sop_instance": None, "sop_class": None, "sop_instance": None, "wire_sha256": None}

    def bad(code: str, detail: str) -> dict:
        e["problem"], e["detail"] = code, detail
        return e

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, defer_size=None)
        except InvalidDicomError as exc:
            return bad("not-part10", str(exc))
        except Exception as exc:  # noqa: BLE001 - anything pydicom cannot read at all
            return bad("truncated" if "EOF" in str(exc) or "end of file" in str(exc).lower() else "not-part10",
                       f"{type(exc).__name__}: {exc}")
    msgs = [str(w.message) for w in caught]
    fm = ds.file_meta
    ts = fm.get("TransferSyntaxUID")
    e["meta_sop_class"] = str(fm.get("MediaStorageSOPClassUID", "") or "") or None
    e["meta_sop_instance"] = str(fm.get("MediaStorageSOPInstanceUID", "") or "") or None
    if ts is None or not str(ts).strip():
        return bad("no-transfer-syntax", "file meta has no (0002,0010) Transfer Syntax UID")
    ts = UID(str(ts).strip().rstrip("\0"))
    e["ts"] = str(ts)
    _, offset = split_dataset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        e["wire_sha256"] = hashlib.sha256(str(ts).encode() + b"\0" + f.read()).hexdigest()

    eof = [m for m in msgs if "end of file" in m.lower() or "delimiter" in m.lower()]
    if eof:
        return bad("truncated", eof[0])
    for tag, raw in ds._dict.items():
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length is not None and length != UNDEFINED and isinstance(value, (bytes, bytearray)) and len(value) < length:
            return bad("truncated", f"element {tag} declares {length} bytes, file has {len(value)}")
    vr_guess = [m for m in msgs if "Expected explicit VR" in m or "Expected implicit VR" in m]
    if vr_guess:
        return bad("ts-encoding-mismatch", vr_guess[0])

    sop_class = ds.get("SOPClassUID")
    e["sop_class"] = str(sop_class) if sop_class else None
    e["sop_instance"] = str(ds.get("SOPInstanceUID", "") or "") or None
    if not sop_class:
        return bad("no-sop-class", "dataset has no (0008,0016) SOP Class UID")
    if not is_storage_class(str(sop_class)):
        return bad("not-storage-class", f"{sop_class} ({UID(str(sop_class)).name}) is not a Storage SOP class")
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not valid_uid(ds.get(kw)):
            return bad("missing-uid", f"{kw} absent or invalid: {ds.get(kw)!r}")
    if e["meta_sop_class"] != e["sop_class"] or e["meta_sop_instance"] != e["sop_instance"]:
        # Not a problem of the instance (its identity is the dataset's UIDs; the
        # meta is only the file's wrapper), but worth knowing: an SCU that takes
        # the C-STORE UIDs from the file meta would send a mismatching request.
        e["note"] = (f"file meta says ({e['meta_sop_class']}, {e['meta_sop_instance']}), dataset says "
                     f"({e['sop_class']}, {e['sop_instance']})")
    has_pixels = any(t in ds._dict for t in PIXEL_TAGS)
    if is_image_class(str(sop_class)) and not has_pixels:
        return bad("image-without-pixels", f"{UID(str(sop_class)).name} without Pixel Data")
    if 0x7FE00010 in ds._dict and not ts.is_encapsulated:
        try:
            # handles YBR_FULL_422 (2 bytes per pixel), 1-bit data, multi-frame
            expected = get_expected_length(ds, "bytes")
            if not isinstance(expected, int):
                expected = None  # badVR.dcm: NumberOfFrames "1A" makes pydicom compute a str
        except (AttributeError, TypeError, ValueError, KeyError):
            expected = None  # e.g. badVR.dcm: NumberOfFrames "1A"; length not computable
        actual = len(ds._dict[0x7FE00010].value or b"")
        if expected is not None and actual < expected:
            return bad("pixel-data-short", f"Pixel Data has {actual} bytes, needs {expected}")
    return e


def storescu_config(entries: list[dict], out: str) -> int:
    # storescu picks the SOP class from the dataset and the transfer syntax from the meta
    pairs: list[tuple[str, str]] = []
    for e in entries:
        if e["ts"] and e["sop_class"]:
            p = (e["sop_class"], e["ts"])
            if p not in pairs:
                pairs.append(p)
    pairs.sort()
    tss = sorted({ts for _, ts in pairs})
    name = {ts: f"TS{i + 1}" for i, ts in enumerate(tss)}
    lines = ["# generated by tests/support/corpus_classify.py", "[[TransferSyntaxes]]"]
    for ts in tss:
        lines += [f"[{name[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[CorpusContexts]"]
    for i, (cls, ts) in enumerate(pairs):
        lines.append(f"PresentationContext{i + 1} = {cls}\\{name[ts]}")
    lines += ["[[Profiles]]", "[Corpus]", "PresentationContexts = CorpusContexts", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    return len(pairs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--storescu-config")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # classify() records the warnings it cares about itself
    roots = [os.path.abspath(r) for r in args.roots]
    base = os.path.commonpath([os.path.dirname(r) for r in roots])
    entries = []
    for p in walk(roots):
        e = classify(p)
        e["rel"] = os.path.relpath(p, base)
        entries.append(e)
    doc = {"base": base, "files": entries}
    if args.storescu_config:
        doc["storescu_contexts"] = storescu_config(entries, args.storescu_config)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    bad = sum(1 for e in entries if e["problem"])
    print(f"classified {len(entries)} files: {len(entries) - bad} valid, {bad} not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
