#!/usr/bin/env python3
"""C-STORE every DICOM file under the given paths over ONE association and
record, durably, which instances the peer acknowledged.

    push_acked.py --host 127.0.0.1 --port 11112 --aec MEDRELAY --aet PUSHER \\
                  --acked /tmp/acked.txt [--skip-acked] [--max-pdu N] PATH...

* Files are sent sequentially, in sorted path order (directories are walked
  recursively; files that are not DICOM Part 10 files are skipped with a warning).
* After each C-STORE-RSP with status 0x0000 (success) or 0xBxxx (warning) the
  SOP Instance UID is appended to --acked as one line, then flush + fsync, so a
  test may kill the receiver at any moment and trust the file: every UID in it
  was acknowledged by the peer.
* --skip-acked: UIDs already listed in --acked are not sent again (resume); they
  count as acked in the summary.
* Files are streamed from disk (pynetdicom STORE_SEND_CHUNKED_DATASET), so a
  1 GB instance is not loaded into memory; this needs the file's own transfer
  syntax to be accepted. If only another transfer syntax was accepted for the
  SOP class, the file is loaded and pynetdicom converts (uncompressed only).
* TCP_NODELAY is set on the socket (pynetdicom has no option; patched in).

Output: one stderr line per non-acked instance, then stdout
"sent S, acked now A, skipped K, failed F" and the last line "acked N of M"
(N = acked incl. skipped, M = DICOM instances found).
Exit codes: 0 all files attempted and association released (per-instance
failure statuses do not change this unless --strict: then 2 if any instance is
not acked); 1 association rejected/aborted/connection lost/timeout (reason on
stderr, the acked file is still exact); 3 usage errors/no files.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import warnings

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pynetdicom import AE, _config, evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

MAX_CONTEXTS = 128
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = {IMPLICIT_LE, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _patch_tcp_nodelay() -> None:
    orig = AssociationSocket._create_socket

    def _create_socket(self, address):  # type: ignore[no-untyped-def]
        sock = orig(self, address)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock

    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]


class PeerGone(Exception):
    pass


def _throttle_send_queue(assoc, max_queued: int = 64) -> None:
    """pynetdicom's chunked send reads the file into an unbounded queue much
    faster than the socket drains it (a 1 GB file grows the sender to ~0.5 GB
    RSS). Make the producer wait while more than max_queued P-DATA PDUs are
    pending, so memory stays at a few MB."""
    dul = assoc.dul
    orig = dul.send_pdu

    def send_pdu(primitive):  # type: ignore[no-untyped-def]
        if isinstance(primitive, P_DATA):
            q = dul.to_provider_queue
            while q.qsize() > max_queued:
                if not (assoc.is_established and dul.is_alive()) or assoc.is_aborted:
                    # the DUL thread is gone (peer closed/aborted): stop reading the file
                    raise PeerGone("connection closed/aborted by peer while sending")
                time.sleep(0.0005)
            if not dul.is_alive():
                raise PeerGone("connection closed/aborted by peer while sending")
        orig(primitive)

    dul.send_pdu = send_pdu


def iter_files(paths: list[str]):
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    yield os.path.join(root, f)
        elif os.path.exists(p):
            yield p
        else:
            print(f"push_acked: no such path: {p}", file=sys.stderr)


def scan(paths: list[str]) -> list[tuple[str, str, str, str]]:
    """Return [(path, sop_class, sop_instance, transfer_syntax)] of Part 10 files."""
    out = []
    for path in iter_files(paths):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True)
            meta = ds.file_meta
            out.append(
                (
                    path,
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID),
                )
            )
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError) as exc:
            print(f"push_acked: skipping {path}: not a usable DICOM Part 10 file ({exc})", file=sys.stderr)
    return out


def load_acked(path: str) -> set[str]:
    try:
        with open(path) as f:
            return {line.strip() for line in f if line.strip()}
    except FileNotFoundError:
        return set()


class PeerEvents:
    """Remembers A-ABORT / A-ASSOCIATE-RJ details and connection close."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.conn_opened = False
        self.conn_closed = False

    def on_open(self, event) -> None:  # type: ignore[no-untyped-def]
        self.conn_opened = True

    def on_pdu(self, event) -> None:  # type: ignore[no-untyped-def]
        pdu = event.pdu
        if isinstance(pdu, A_ABORT_RQ):
            self.reason = f"A-ABORT from peer (source {pdu.source}, reason {pdu.reason_diagnostic})"
        elif isinstance(pdu, A_ASSOCIATE_RJ):
            self.reason = (
                f"A-ASSOCIATE-RJ (result {pdu.result}, source {pdu.source}, "
                f"reason {pdu.reason_diagnostic}: {pdu.reason_str})"
            )

    def on_close(self, event) -> None:  # type: ignore[no-untyped-def]
        self.conn_closed = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="files and/or directories to send")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aec", default="MEDRELAY", help="called AE title (default MEDRELAY)")
    ap.add_argument("--aet", default="PUSHACKED", help="calling AE title (default PUSHACKED)")
    ap.add_argument("--acked", required=True, help="file to append acknowledged SOP Instance UIDs to")
    ap.add_argument("--skip-acked", action="store_true", help="skip UIDs already in --acked")
    ap.add_argument("--max-pdu", type=int, default=16382, help="our maximum receive PDU size (0 = unlimited)")
    ap.add_argument("--timeout", type=float, default=600, help="DIMSE/response timeout, seconds (default 600)")
    ap.add_argument("--connect-timeout", type=float, default=30, help="TCP connect + ACSE timeout (default 30)")
    ap.add_argument("--no-chunked", action="store_true", help="load each dataset instead of streaming the file")
    ap.add_argument("--strict", action="store_true", help="exit 2 if any instance was not acked")
    ap.add_argument("-v", "--verbose", action="store_true", help="pynetdicom debug log")
    args = ap.parse_args(argv)
    # create the acked file up front, so it exists even if nothing gets acked
    open(args.acked, "a").close()

    if args.verbose:
        from pynetdicom import debug_logger

        debug_logger()
    else:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

    files = scan(args.paths)
    total = len(files)
    if total == 0:
        print("push_acked: no DICOM files found", file=sys.stderr)
        print("acked 0 of 0")
        return 3

    already = load_acked(args.acked) if args.skip_acked else set()
    todo = [f for f in files if f[2] not in already]
    skipped = total - len(todo)

    # one presentation context per (SOP class, transfer syntax) pair
    pairs: dict[str, list[str]] = {}
    for _, cls, _, ts in todo:
        lst = pairs.setdefault(cls, [])
        if ts not in lst:
            lst.append(ts)
    n_ctx = sum(len(v) for v in pairs.values())
    # Fallback: Implicit VR LE (which every SCP must support) for SOP classes
    # that have uncompressed files, so pynetdicom can convert if the exact
    # transfer syntax is refused. Only while there is room for it.
    fallback = [
        cls for cls, tss in pairs.items()
        if IMPLICIT_LE not in tss and any(ts in UNCOMPRESSED for ts in tss)
    ]
    fallback = fallback[: max(0, MAX_CONTEXTS - n_ctx)]
    if n_ctx > MAX_CONTEXTS:
        print(f"push_acked: {n_ctx} (SOP class, transfer syntax) pairs > {MAX_CONTEXTS} contexts", file=sys.stderr)
        print(f"acked {skipped} of {total}")
        return 3

    if not todo:
        print(f"sent 0, acked now 0, skipped {skipped}, failed 0")
        print(f"acked {skipped} of {total}")
        return 0

    _patch_tcp_nodelay()
    _config.STORE_SEND_CHUNKED_DATASET = not args.no_chunked

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.connect_timeout
    ae.connection_timeout = args.connect_timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.maximum_pdu_size = args.max_pdu
    for cls, tss in pairs.items():
        for ts in tss:
            ae.add_requested_context(cls, [ts])
    for cls in fallback:
        ae.add_requested_context(cls, [IMPLICIT_LE])

    peer = PeerEvents()
    handlers = [
        (evt.EVT_CONN_OPEN, peer.on_open),
        (evt.EVT_PDU_RECV, peer.on_pdu),
        (evt.EVT_CONN_CLOSE, peer.on_close),
    ]
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, evt_handlers=handlers)
    if not assoc.is_established:
        if not peer.conn_opened:
            why = "TCP connection failed (refused/unreachable/timeout)"
        elif assoc.is_rejected:
            why = peer.reason or "association rejected"
        elif assoc.is_aborted:
            why = peer.reason or "association aborted"
        else:
            why = peer.reason or "could not connect / no A-ASSOCIATE response"
        print(f"push_acked: association to {args.aec}@{args.host}:{args.port} failed: {why}", file=sys.stderr)
        print(f"acked {skipped} of {total}")
        return 1

    _throttle_send_queue(assoc)
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    accepted_cls = {cx.abstract_syntax for cx in assoc.accepted_contexts}

    acked_now = failed = sent = 0
    rc = 0
    t0 = time.monotonic()
    with open(args.acked, "a") as ackf:
        for msg_id, (path, cls, inst, ts) in enumerate(todo, start=1):
            if cls not in accepted_cls:
                print(f"push_acked: NOT SENT {path}: no accepted context for SOP class {cls}", file=sys.stderr)
                failed += 1
                continue
            try:
                if (cls, ts) in accepted and not args.no_chunked:
                    _config.STORE_SEND_CHUNKED_DATASET = True
                    status = assoc.send_c_store(path, msg_id=(msg_id - 1) % 65535 + 1)
                else:
                    _config.STORE_SEND_CHUNKED_DATASET = False
                    status = assoc.send_c_store(dcmread(path), msg_id=(msg_id - 1) % 65535 + 1)
            except (ValueError, AttributeError) as exc:
                print(f"push_acked: NOT SENT {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            except PeerGone as exc:
                status, peer.reason = None, peer.reason or str(exc)
            sent += 1
            code = status.get("Status") if status else None
            if code is None:
                why = peer.reason
                if why is None:
                    if assoc.is_aborted or peer.conn_closed:
                        why = "connection closed/aborted by peer"
                    else:
                        why = f"no C-STORE-RSP within {args.timeout}s or invalid response"
                print(f"push_acked: association lost while storing {path} ({inst}): {why}", file=sys.stderr)
                rc = 1
                break
            code = int(code)
            if code == 0x0000 or (code & 0xF000) == 0xB000:
                ackf.write(inst + "\n")
                ackf.flush()
                os.fsync(ackf.fileno())
                acked_now += 1
            else:
                comment = status.get("ErrorComment", "")
                print(f"push_acked: FAILED {path} ({inst}): status 0x{code:04X} {comment}".rstrip(), file=sys.stderr)
                failed += 1
            if not assoc.is_established:
                print(f"push_acked: association ended after {path}: {peer.reason or 'closed by peer'}", file=sys.stderr)
                rc = 1
                break

    if rc == 0:
        assoc.release()
        if not assoc.is_released:
            # release problems after everything was acked are reported but not fatal
            print(f"push_acked: warning: release not confirmed ({peer.reason or 'no A-RELEASE-RP'})", file=sys.stderr)
    else:
        if assoc.is_established:
            assoc.abort()

    secs = time.monotonic() - t0
    print(f"sent {sent}, acked now {acked_now}, skipped {skipped}, failed {failed} in {secs:.1f}s")
    print(f"acked {acked_now + skipped} of {total}")
    if rc == 0 and args.strict and acked_now + skipped < total:
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
