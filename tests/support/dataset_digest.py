"""Prints {SOPInstanceUID: sha256(transfer syntax + NUL + dataset bytes)}
for the Part 10 files in a directory: the digest the index keeps per
instance (archive::files), so a retrieved file can be checked byte for
byte against what medrelay stored, on any storage backend.
Usage: dataset_digest.py DIR
"""
import hashlib
import json
import sys
from pathlib import Path

import pydicom

out = {}
for p in sorted(Path(sys.argv[1]).iterdir()):
    data = p.read_bytes()
    if data[128:132] != b"DICM":
        continue
    group = int.from_bytes(data[140:144], "little")
    meta = pydicom.dcmread(p, stop_before_pixels=True).file_meta
    ts = str(meta.TransferSyntaxUID)
    out[str(meta.MediaStorageSOPInstanceUID)] = hashlib.sha256(ts.encode() + b"\0" + data[144 + group:]).hexdigest()
print(json.dumps(out))
