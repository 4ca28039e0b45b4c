#!/usr/bin/env python3
"""Check, for every acknowledged corpus file, that medrelay stored its dataset
faithfully. Used by tests/corpus.rs.

    compare_stored.py --data-dir DIR --acked acked.json --out summary.json [--raw]

acked.json: [{"path": "/abs/original.dcm", "sop_instance": "1.2...", "rel": "..."}]
(the files the SCP acknowledged with Success or Warning; sop_instance is the
dataset's SOP Instance UID, under which the index must hold it).

For each acknowledged file, every stored version of its SOP Instance UID is
read from DIR/index.db (table instances) and DIR/<path>, and:

* the stored file must be a Part 10 file whose meta agrees with the index row
  (transfer syntax, SOP Class/Instance UID) and whose recorded SHA-256
  (sha256(transfer syntax + NUL + dataset bytes)) matches its content;
* at least one version must hold the same dataset as the original: every data
  element outside group 0002 present on both sides with equal VR and value,
  recursing into sequence items (values are compared as pydicom decodes them,
  not as raw bytes, because storescu re-encodes datasets). Pixel Data (and
  Float/Double Float Pixel Data) must be byte-equal when the transfer syntax is
  unchanged; if the SCU converted between uncompressed syntaxes, the decoded
  numpy pixel arrays must be equal instead; any other change of transfer
  syntax is a mismatch. Excluded from the element comparison, and listed in
  the summary when they differ: group length elements (gggg,0000), which
  PS3.5 7.2 makes optional and an SCU may drop or recompute, and trailing
  Data Set Trailing Padding (FFFC,FFFC), which PS3.10 7.2 lets any
  application drop. Also tolerated (and listed): encapsulated Pixel Data
  whose VR changed between OW and OB with identical bytes (PS3.5 A.4 says OB;
  storescu corrects sample files that say OW);
* with --raw (the SCU streamed the file's bytes unchanged), the matching
  version must also have the original's transfer syntax and byte-identical
  dataset bytes (everything after the file meta group).

Also reported: stored versions that no acknowledged file matches (the index
holds something nobody sent), and index rows whose file is missing.

summary.json: {"checked": N, "matched": N, "versions": N, "mismatches": [...],
               "orphans": [...], "tolerated": [...]}; exit code 0 even when
there are mismatches (the caller asserts on the summary).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import warnings

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pynetdicom.dsutils import split_dataset

PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
SWAPPABLE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
PADDING = 0xFFFCFFFC
MAX_DIFFS = 8


def dataset_bytes(path: str) -> bytes:
    _, offset = split_dataset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def read(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, defer_size=None)


def same_bytes_modulo_order(a: bytes, b: bytes, vr: str, swap: bool) -> bool:
    if a == b:
        return True
    if not swap or vr not in SWAPPABLE or len(a) != len(b) or len(a) % SWAPPABLE[vr]:
        return False
    w = SWAPPABLE[vr]
    return np.array_equal(np.frombuffer(a, f"<u{w}"), np.frombuffer(b, f">u{w}"))


def compare(orig: Dataset, stored: Dataset, ts_orig: UID, ts_stored: UID, tolerated: list[str]) -> list[str]:
    """Differences between the two datasets (empty = equal)."""
    diffs: list[str] = []
    same_ts = ts_orig == ts_stored
    if not same_ts and (ts_orig.is_compressed or ts_stored.is_compressed):
        return [f"transfer syntax changed {ts_orig} -> {ts_stored} (compressed data transcoded)"]
    swap = ts_orig.is_little_endian != ts_stored.is_little_endian

    def walk(a: Dataset, b: Dataset, where: str, top: bool) -> None:
        tags = sorted(set(a.keys()) | set(b.keys()))
        for tag in tags:
            if len(diffs) >= MAX_DIFFS:
                return
            if tag.group == 0x0002:
                continue
            ea, eb = a.get(tag), b.get(tag)
            if tag.element == 0x0000 or tag == PADDING:
                if (ea is None) != (eb is None) or (ea is not None and ea.value != eb.value):
                    what = "group length" if tag.element == 0 else "trailing padding"
                    if ea is not None and eb is not None:
                        tolerated.append(f"{where}{tag}: {what} {ea.value!r:.40} in original, {eb.value!r:.40} in stored")
                    else:
                        tolerated.append(f"{where}{tag}: {what} {'absent' if ea is None else 'present'} in original, "
                                         f"{'absent' if eb is None else 'present'} in stored")
                continue
            name = f"{where}{tag}"
            if ea is None or eb is None:
                diffs.append(f"{name} {'missing in stored' if eb is None else 'only in stored'}")
                continue
            if ea.VR != eb.VR:
                if (top and int(tag) in PIXEL_KEYWORDS and ts_orig.is_encapsulated and same_ts
                        and {ea.VR, eb.VR} == {"OB", "OW"}):
                    # PS3.5 A.4: encapsulated Pixel Data is OB; some sample
                    # files say OW and storescu corrects it. Bytes compared below.
                    tolerated.append(f"{name}: encapsulated Pixel Data VR {ea.VR} in original, {eb.VR} in stored")
                else:
                    diffs.append(f"{name} VR {ea.VR} != {eb.VR}")
                    continue
            if ea.VR == "SQ":
                if len(ea.value) != len(eb.value):
                    diffs.append(f"{name} {len(ea.value)} items != {len(eb.value)}")
                    continue
                for i, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                    walk(ia, ib, f"{name}[{i}].", False)
                continue
            if top and int(tag) in PIXEL_KEYWORDS:
                if same_ts:
                    if ea.value != eb.value:
                        diffs.append(f"{name} {PIXEL_KEYWORDS[int(tag)]} bytes differ "
                                     f"({len(ea.value or b'')} vs {len(eb.value or b'')} bytes)")
                else:
                    try:
                        equal = np.array_equal(orig.pixel_array, stored.pixel_array)
                    except Exception as exc:  # noqa: BLE001
                        diffs.append(f"{name} pixel arrays not comparable after {ts_orig} -> {ts_stored}: {exc}")
                        continue
                    if not equal:
                        diffs.append(f"{name} decoded pixel arrays differ after {ts_orig} -> {ts_stored}")
                continue
            va, vb = ea.value, eb.value
            if isinstance(va, (bytes, bytearray)) and isinstance(vb, (bytes, bytearray)):
                if not same_bytes_modulo_order(va, vb, ea.VR, swap):
                    diffs.append(f"{name} {ea.VR} bytes differ ({len(va)} vs {len(vb)} bytes)")
            elif va != vb:
                diffs.append(f"{name} {ea.VR} {va!r:.80} != {vb!r:.80}")

    walk(orig, stored, "", True)
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--acked", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", action="store_true", help="also require byte-identical dataset bytes and transfer syntax")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # pydicom value/pixel warnings about odd sample files

    acked = json.load(open(args.acked))
    db = sqlite3.connect(os.path.join(args.data_dir, "index.db"))
    rows = db.execute(
        "SELECT sop_instance_uid, version, sop_class_uid, transfer_syntax, sha256, path FROM instances"
    ).fetchall()
    by_uid: dict[str, list[tuple]] = {}
    for r in rows:
        by_uid.setdefault(r[0], []).append(r)

    mismatches: list[dict] = []
    tolerated: list[str] = []
    matched_versions: set[tuple[str, int]] = set()
    stored_cache: dict[tuple[str, int], tuple[Dataset, bytes] | str] = {}

    def load_stored(r: tuple):
        key = (r[0], r[1])
        if key not in stored_cache:
            path = os.path.join(args.data_dir, r[5])
            try:
                ds = read(path)
                raw = dataset_bytes(path)
            except Exception as exc:  # noqa: BLE001
                stored_cache[key] = f"stored file {r[5]} unreadable: {type(exc).__name__}: {exc}"
                return stored_cache[key]
            problems = []
            fm = ds.file_meta
            if str(fm.get("TransferSyntaxUID", "")) != r[3]:
                problems.append(f"meta transfer syntax {fm.get('TransferSyntaxUID')} != index {r[3]}")
            if str(fm.get("MediaStorageSOPInstanceUID", "")) != r[0]:
                problems.append(f"meta SOP instance {fm.get('MediaStorageSOPInstanceUID')} != index {r[0]}")
            if str(fm.get("MediaStorageSOPClassUID", "")) != r[2]:
                problems.append(f"meta SOP class {fm.get('MediaStorageSOPClassUID')} != index {r[2]}")
            if hashlib.sha256(r[3].encode() + b"\0" + raw).hexdigest() != r[4]:
                problems.append("content does not match the index SHA-256")
            stored_cache[key] = "; ".join(problems) if problems else (ds, raw)
        return stored_cache[key]

    for a in acked:
        path, uid, rel = a["path"], a["sop_instance"], a.get("rel", a["path"])
        versions = by_uid.get(uid, [])
        if not versions:
            mismatches.append({"file": rel, "uid": uid, "why": "acknowledged but not in the index"})
            continue
        orig = read(path)
        orig_ts = UID(str(orig.file_meta.TransferSyntaxUID).strip("\0 "))
        orig_raw = dataset_bytes(path) if args.raw else b""
        per_version = {}
        hit = None
        for r in sorted(versions, key=lambda r: r[1]):
            s = load_stored(r)
            if isinstance(s, str):
                per_version[r[1]] = [s]
                continue
            sds, sraw = s
            tol: list[str] = []
            diffs = compare(orig, sds, orig_ts, UID(r[3]), tol)
            if args.raw and not diffs:
                if r[3] != orig_ts:
                    diffs.append(f"transfer syntax {r[3]} != original {orig_ts}")
                elif sraw != orig_raw:
                    diffs.append(f"dataset bytes differ ({len(sraw)} vs {len(orig_raw)} bytes)")
            per_version[r[1]] = diffs
            if not diffs and hit is None:
                hit = r[1]
                tolerated.extend(f"{rel} (version {r[1]}): {t}" for t in tol)
        if hit is None:
            mismatches.append({"file": rel, "uid": uid, "why": "no stored version equals the original",
                               "versions": {str(k): v for k, v in per_version.items()}})
        else:
            for v, d in per_version.items():
                if not d:
                    matched_versions.add((uid, v))
    acked_uids = {a["sop_instance"] for a in acked}
    orphans = [
        {"uid": r[0], "version": r[1], "path": r[5]}
        for r in rows
        if r[0] in acked_uids and (r[0], r[1]) not in matched_versions
    ] + [{"uid": r[0], "version": r[1], "path": r[5], "why": "no acknowledged file has this UID"}
         for r in rows if r[0] not in acked_uids]
    missing_files = [r[5] for r in rows if not os.path.isfile(os.path.join(args.data_dir, r[5]))]
    summary = {
        "checked": len(acked),
        "matched": len(acked) - len(mismatches),
        "versions": len(rows),
        "mismatches": mismatches,
        "orphans": orphans,
        "missing_files": missing_files,
        "tolerated": tolerated,
    }
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"checked {summary['checked']}, matched {summary['matched']}, versions {summary['versions']}, "
          f"mismatches {len(mismatches)}, orphans {len(orphans)}, missing files {len(missing_files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
