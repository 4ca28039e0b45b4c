#!/usr/bin/env python3
"""pynetdicom SCU for the corpus test (tests/corpus.rs): C-ECHO, then C-STORE
every file under the roots, each in its own SOP class and its own transfer
syntax, its dataset bytes streamed unchanged from the file (no transcoding).

    corpus_push.py --port N [--host H] [--aec MEDRELAY] [--aet CORPUSPY]
                   --out results.jsonl [--echo] ROOT...

* Files are taken in the same order as corpus_classify.py (os.walk, sorted).
* A file is sent when it is a Part 10 file whose meta has a Transfer Syntax
  UID and when a SOP Class UID and SOP Instance UID can be found: the
  dataset's own (0008,0016)/(0008,0018) if present, else the file meta's Media
  Storage ones (so a dataset lacking them still reaches the SCP, which must
  refuse it). Everything else is recorded as "skipped".
* Presentation contexts: one per (SOP class, transfer syntax) pair, with just
  that transfer syntax; files are grouped, in order, into associations of at
  most 128 contexts.
* The dataset is streamed from the file (pynetdicom STORE_SEND_CHUNKED_DATASET),
  so the bytes on the wire are exactly the file's bytes after its meta group.
  pynetdicom takes the command's Affected SOP Class/Instance UIDs from the file
  meta in that mode; we substitute the UIDs chosen above (some sample files
  carry a file meta that disagrees with their dataset).
* TCP_NODELAY is set on the socket.

Output, one JSON object per line:
  {"echo": status}                                         (with --echo)
  {"path": ..., "outcome": "status", "status": int, "comment": str}
  {"path": ..., "outcome": "skipped", "reason": str}        (not sent by us)
  {"path": ..., "outcome": "refused-context", "reason": str} (SCP refused the context)
  {"path": ..., "outcome": "error", "reason": str}           (association problem)
Exit code 0 when every association was established and released, else 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import warnings

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

import pynetdicom.association as pn_association
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.transport import AssociationSocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus_classify import walk  # noqa: E402  (same file order as the classifier)

MAX_CONTEXTS = 128
VERIFICATION = "1.2.840.10008.1.1"


def _patch_tcp_nodelay() -> None:
    orig = AssociationSocket._create_socket

    def _create_socket(self, address):  # type: ignore[no-untyped-def]
        sock = orig(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]


# path -> (sop class, sop instance) to put into the C-STORE command
UIDS: dict[str, tuple[str, str]] = {}


def _patch_split_dataset() -> None:
    orig = pn_association.split_dataset

    def split(path):  # type: ignore[no-untyped-def]
        meta, offset = orig(path)
        cls, inst = UIDS[os.path.abspath(os.fspath(path))]
        meta.MediaStorageSOPClassUID = cls
        meta.MediaStorageSOPInstanceUID = inst
        return meta, offset

    pn_association.split_dataset = split


def plan(path: str):
    """(sop_class, sop_instance, ts) or a reason string for skipping."""
    try:
        meta, _ = split_dataset(path)
    except Exception as exc:  # noqa: BLE001
        return f"cannot read file meta: {exc}"
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) < 132 or head[128:132] != b"DICM" or len(meta) == 0:
        return "not a DICOM Part 10 file (no preamble/DICM/file meta)"
    ts = str(meta.get("TransferSyntaxUID", "") or "").strip("\0 ")
    if not ts:
        return "file meta has no Transfer Syntax UID"
    cls = inst = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True)
        cls = str(ds.get("SOPClassUID", "") or "")
        inst = str(ds.get("SOPInstanceUID", "") or "")
    except (InvalidDicomError, Exception):  # noqa: BLE001 - fall back to the meta
        pass
    cls = cls or str(meta.get("MediaStorageSOPClassUID", "") or "").strip("\0 ")
    inst = inst or str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip("\0 ")
    if not cls or not inst:
        return "neither dataset nor file meta name a SOP Class and SOP Instance UID"
    return cls, inst, ts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aec", default="MEDRELAY")
    ap.add_argument("--aet", default="CORPUSPY")
    ap.add_argument("--out", required=True)
    ap.add_argument("--echo", action="store_true", help="C-ECHO on the first association")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--log", help="pynetdicom's debug log (PDUs, DIMSE) to this file")
    args = ap.parse_args()
    if args.log:
        # Which side stalled when a DIMSE timeout ends a run: this log shows
        # what the SCU sent and received; the SCP's debug log the rest.
        h = logging.FileHandler(args.log)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s"))
        lg = logging.getLogger("pynetdicom")
        lg.addHandler(h)
        lg.setLevel(logging.DEBUG)
    elif args.verbose:
        from pynetdicom import debug_logger

        debug_logger()
    else:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    _patch_tcp_nodelay()
    _patch_split_dataset()
    _config.STORE_SEND_CHUNKED_DATASET = True

    out = open(args.out, "w")

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    # group sendable files into associations of <= MAX_CONTEXTS contexts
    groups: list[tuple[list[tuple[str, str]], list[tuple[str, str, str, str]]]] = []
    ctx: list[tuple[str, str]] = []
    files: list[tuple[str, str, str, str]] = []
    for path in walk(args.roots):
        p = plan(path)
        if isinstance(p, str):
            emit({"path": path, "outcome": "skipped", "reason": p})
            continue
        cls, inst, ts = p
        UIDS[path] = (cls, inst)
        if (cls, ts) not in ctx:
            if len(ctx) == MAX_CONTEXTS - (1 if args.echo and not groups else 0):
                groups.append((ctx, files))
                ctx, files = [], []
            ctx.append((cls, ts))
        files.append((path, cls, inst, ts))
    if files:
        groups.append((ctx, files))

    ok = True
    for n, (contexts, members) in enumerate(groups):
        ae = AE(ae_title=args.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for cls, ts in contexts:
            ae.add_requested_context(cls, [ts])
        if args.echo and n == 0:
            ae.add_requested_context(VERIFICATION)
        assoc = ae.associate(args.host, args.port, ae_title=args.aec)
        if not assoc.is_established:
            ok = False
            for path, *_ in members:
                emit({"path": path, "outcome": "error", "reason": "association not established"})
            continue
        if args.echo and n == 0:
            st = assoc.send_c_echo()
            emit({"echo": int(st.Status) if st and "Status" in st else None})
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for msg_id, (path, cls, inst, ts) in enumerate(members, start=1):
            if not assoc.is_established:
                ok = False
                emit({"path": path, "outcome": "error", "reason": "association ended before this file"})
                continue
            if (cls, ts) not in accepted:
                emit({"path": path, "outcome": "refused-context", "reason": f"SCP did not accept ({cls}, {ts})"})
                continue
            try:
                st = assoc.send_c_store(path, msg_id=msg_id)
            except (ValueError, AttributeError) as exc:
                emit({"path": path, "outcome": "error", "reason": f"{type(exc).__name__}: {exc}"})
                continue
            if not st or "Status" not in st:
                ok = False
                emit({"path": path, "outcome": "error", "reason": "no C-STORE-RSP (association lost?)"})
                continue
            emit({"path": path, "outcome": "status", "status": int(st.Status),
                  "comment": str(st.get("ErrorComment", "") or "")})
        if assoc.is_established:
            assoc.release()
        if not assoc.is_released:
            ok = False
    out.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
