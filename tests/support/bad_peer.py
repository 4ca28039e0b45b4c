#!/usr/bin/env python3
"""Misbehaving DICOM Upper Layer client for negative tests (stdlib only).

    bad_peer.py CASE --host 127.0.0.1 --port 11112 [--aec MEDRELAY] [--aet BADPEER]
                     [--file CT.dcm] [--wait 10] [--variant V] [--seed 1]

Every PDU is built by hand with struct, so the malformed ones really are
malformed on the wire. Each run prints ONE JSON line on stdout:

    {"case": CASE, "result": R, "detail": {...}}

R is what the server did first after the bad input:
    "abort"   it sent an A-ABORT PDU (detail: abort_source, abort_reason, closed)
    "reject"  it sent an A-ASSOCIATE-RJ PDU (detail: rj_result, rj_source, rj_reason)
    "closed"  it closed the TCP connection (detail: reset = true if by RST), or
              sent A-RELEASE-RQ/RP (detail: pdu)
    "rsp"     it answered with a DIMSE response (detail: status "0xC000",
              status_int, error_comment, command_field, released = whether a
              following A-RELEASE worked, i.e. the association stayed usable)
    "timeout" nothing at all within --wait seconds (connection left open)
    "error"   the case could not be set up (connect refused, association not
              accepted, bad --file...): detail.stage / detail.error say why
detail.seconds = time from the (last) bad send to that outcome.
Exit status: 0 if the case ran (whatever the server did), 2 if "error".

Cases:
  garbage            connect, send 100 random bytes (first byte is not a valid
                     PDU type), report (expect A-ABORT or close).
  bad-pdu-length     associate (CT Image Storage / file TS), then a P-DATA-TF
                     whose lengths lie. --variant huge (default): PDU length
                     field 0x7FFFFFF0, only a small PDV actually sent.
                     --variant short: PDU length field consistent with the bytes
                     sent but smaller than the PDV item length inside it.
                     --variant pdv-zero: PDV item length 0 (< 2 bytes header).
  unknown-pdu-type   associate, then send a PDU of type 0x55.
  truncated-dataset  associate, valid C-STORE-RQ command, then the dataset of
                     --file cut at half, last fragment flagged "last".
  not-dicom          same, but the data set is 4000 bytes of ASCII text.
  sop-mismatch       context negotiated for the file's SOP class (CT), C-STORE-RQ
                     with AffectedSOPClassUID = MR Image Storage, CT dataset.
  pc-not-accepted    propose CT (id 1) and a bogus abstract syntax (id 3); send
                     the C-STORE on id 3 if it was rejected (--variant rejected,
                     default) or on never-proposed id 5 (--variant unproposed).
  hang               associate, then send nothing; report when/how the server
                     ends it (idle timeout), "timeout" if not within --wait.
  silent             connect (TCP only, or the TLS port: it is all the same to
                     us) and send nothing at all; report when/how the server
                     ends it.
  trickle-rq         send a valid A-ASSOCIATE-RQ one byte every --interval
                     seconds (default 0.3); report when/how the server ends
                     it (detail.sent_bytes, detail.rq_bytes).
  trickle-data       associate, send a C-STORE-RQ command, then the data set of
                     --file in tiny P-DATA-TF PDUs (2-byte PDVs) one every
                     --interval seconds: each PDU is complete, so only a
                     minimum progress rate can tell it from a slow link.
  all                every case above except hang, silent and the trickles, one
                     JSON line each.

--file must be a Part 10 file (with file meta); its own transfer syntax is
proposed. Default for the cases that need one: none (not-dicom works without
it, using CT Image Storage and a made-up instance UID).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import struct
import sys
import time

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BOGUS_ABSTRACT = "1.2.826.0.1.3680043.9999.42.1"  # not a storage SOP class
IMPL_CLASS_UID = "1.2.826.0.1.3680043.9999.42.2"
IMPL_VERSION = "BADPEER_1"

PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}


class SetupError(Exception):
    def __init__(self, stage: str, result: str, detail: dict):
        super().__init__(stage)
        self.stage, self.result, self.detail = stage, result, detail


# --------------------------------------------------------------------------- encoding


def _ae(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def _item(itype: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", itype, 0, len(payload)) + payload


def pdu(ptype: int, body: bytes, declared_len: int | None = None) -> bytes:
    n = len(body) if declared_len is None else declared_len
    return struct.pack(">BBI", ptype, 0, n) + body


def assoc_rq(called: str, calling: str, contexts, max_pdu: int) -> bytes:
    """contexts: [(pc_id, abstract_syntax, [transfer_syntax, ...])]"""
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    body += _item(0x10, APP_CONTEXT.encode())
    for pcid, abstract, tss in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in tss)
        body += _item(0x20, struct.pack(">BBBB", pcid, 0, 0, 0) + sub)
    ui = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, IMPL_CLASS_UID.encode()) + _item(0x55, IMPL_VERSION.encode())
    body += _item(0x50, ui)
    return pdu(0x01, body)


def pdv(pcid: int, mch: int, data: bytes, declared_len: int | None = None) -> bytes:
    n = len(data) + 2 if declared_len is None else declared_len
    return struct.pack(">IBB", n, pcid, mch) + data


def _elem(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, elem, len(value)) + value


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str) -> bytes:
    """C-STORE-RQ command set, implicit VR little endian, with group length."""
    els = (
        _elem(0, 0x0002, sop_class.encode())
        + _elem(0, 0x0100, struct.pack("<H", 0x0001))
        + _elem(0, 0x0110, struct.pack("<H", msg_id))
        + _elem(0, 0x0700, struct.pack("<H", 0x0000))
        + _elem(0, 0x0800, struct.pack("<H", 0x0000))  # != 0x0101: data set follows
        + _elem(0, 0x1000, sop_instance.encode())
    )
    return _elem(0, 0x0000, struct.pack("<I", len(els))) + els


def parse_command(data: bytes) -> dict:
    out: dict = {}
    i = 0
    while i + 8 <= len(data):
        g, e, n = struct.unpack_from("<HHI", data, i)
        v = data[i + 8 : i + 8 + n]
        i += 8 + n
        if g != 0:
            break
        if e in (0x0100, 0x0120, 0x0800, 0x0900, 0x0110) and n == 2:
            key = {0x0100: "command_field", 0x0120: "msg_id_responded", 0x0800: "dataset_type",
                   0x0900: "status", 0x0110: "msg_id"}[e]
            out[key] = struct.unpack("<H", v)[0]
        elif e == 0x0902:
            out["error_comment"] = v.rstrip(b"\x00 ").decode("latin-1")
        elif e == 0x0901:
            out["offending_elements"] = [
                "(%04X,%04X)" % struct.unpack_from("<HH", v, k) for k in range(0, len(v) - 3, 4)
            ]
        elif e == 0x0002:
            out["sop_class"] = v.rstrip(b"\x00 ").decode("latin-1")
        elif e == 0x1000:
            out["sop_instance"] = v.rstrip(b"\x00 ").decode("latin-1")
    return out


# --------------------------------------------------------------------------- Part 10 file


def read_part10(path: str) -> dict:
    """Split a Part 10 file: meta UIDs + raw data set bytes (no parsing of the data set)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
    i = 132
    meta: dict[int, bytes] = {}
    while i + 8 <= len(raw):
        g, e = struct.unpack_from("<HH", raw, i)
        if g != 0x0002:
            break
        vr = raw[i + 4 : i + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (n,) = struct.unpack_from("<I", raw, i + 8)
            hdr = 12
        else:
            (n,) = struct.unpack_from("<H", raw, i + 6)
            hdr = 8
        meta[e] = raw[i + hdr : i + hdr + n]
        i += hdr + n

    def uid(e: int) -> str:
        if e not in meta:
            raise ValueError(f"{path}: file meta lacks (0002,{e:04X})")
        return meta[e].rstrip(b"\x00 ").decode("ascii")

    return {"sop_class": uid(0x0002), "sop_instance": uid(0x0003), "ts": uid(0x0010), "dataset": raw[i:]}


# --------------------------------------------------------------------------- connection


class Closed(Exception):
    def __init__(self, reset: bool = False):
        super().__init__("closed")
        self.reset = reset


class Peer:
    def __init__(self, args):
        self.args = args
        self.sock: socket.socket | None = None
        self.buf = b""
        self.peer_max_pdu = 16384
        self.accepted: dict[int, tuple[int, str]] = {}

    # -- transport
    def connect(self) -> None:
        try:
            self.sock = socket.create_connection((self.args.host, self.args.port), timeout=self.args.connect_timeout)
        except OSError as exc:
            raise SetupError("connect", "error", {"error": str(exc)})
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> str | None:
        """Send all; return an error string instead of raising if the peer went away."""
        assert self.sock is not None
        try:
            self.sock.settimeout(max(self.args.wait, 5))
            self.sock.sendall(data)
            return None
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    def _fill(self, n: int, deadline: float) -> None:
        assert self.sock is not None
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                raise TimeoutError
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                raise Closed(reset=True)
            except OSError:
                raise Closed(reset=True)
            if not chunk:
                raise Closed()
            self.buf += chunk

    def recv_pdu(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        self._fill(6, deadline)
        ptype, _, n = struct.unpack_from(">BBI", self.buf, 0)
        if n > 64 * 1024 * 1024:
            raise ValueError(f"server sent PDU type 0x{ptype:02X} with absurd length {n}")
        self._fill(6 + n, deadline)
        body = self.buf[6 : 6 + n]
        self.buf = self.buf[6 + n :]
        return ptype, body

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    # -- association
    def associate(self, contexts) -> None:
        self.connect()
        err = self.send(assoc_rq(self.args.aec, self.args.aet, contexts, self.args.max_pdu))
        if err:
            raise SetupError("associate", "closed", {"error": err})
        try:
            ptype, body = self.recv_pdu(self.args.wait)
        except TimeoutError:
            raise SetupError("associate", "timeout", {})
        except Closed as c:
            raise SetupError("associate", "closed", {"reset": c.reset})
        if ptype == 0x03:
            raise SetupError("associate", "reject", rj_detail(body))
        if ptype == 0x07:
            raise SetupError("associate", "abort", abort_detail(body))
        if ptype != 0x02:
            raise SetupError("associate", "error", {"error": f"unexpected PDU {pdu_name(ptype)}"})
        i = 68
        while i + 4 <= len(body):
            itype, _, n = struct.unpack_from(">BBH", body, i)
            payload = body[i + 4 : i + 4 + n]
            i += 4 + n
            if itype == 0x21:
                pcid, _, result, _ = struct.unpack_from(">BBBB", payload, 0)
                ts = ""
                if len(payload) > 8 and payload[4] == 0x40:
                    (tn,) = struct.unpack_from(">H", payload, 6)
                    ts = payload[8 : 8 + tn].rstrip(b"\x00 ").decode("ascii", "replace")
                self.accepted[pcid] = (result, ts)
            elif itype == 0x50:
                j = 0
                while j + 4 <= len(payload):
                    st, _, sn = struct.unpack_from(">BBH", payload, j)
                    if st == 0x51 and sn == 4:
                        (mx,) = struct.unpack_from(">I", payload, j + 4)
                        self.peer_max_pdu = mx if mx else 1 << 20
                    j += 4 + sn

    def send_message(self, pcid: int, command: bytes, data: bytes) -> str | None:
        """Command (one PDV, last) then data fragmented to the peer's max PDU; last flagged."""
        err = self.send(pdu(0x04, pdv(pcid, 0x03, command)))
        if err:
            return err
        step = max(1, min(self.peer_max_pdu, 1 << 20) - 6)
        if not data:
            return self.send(pdu(0x04, pdv(pcid, 0x02, b"")))
        for off in range(0, len(data), step):
            frag = data[off : off + step]
            last = off + step >= len(data)
            err = self.send(pdu(0x04, pdv(pcid, 0x02 if last else 0x00, frag)))
            if err:
                return err
        return None

    def outcome(self, wait: float) -> tuple[str, dict]:
        """Wait for the server's first meaningful reaction."""
        t0 = time.monotonic()
        cmd = b""
        while True:
            left = wait - (time.monotonic() - t0)
            try:
                ptype, body = self.recv_pdu(max(0.0, left))
            except TimeoutError:
                return "timeout", {"seconds": round(time.monotonic() - t0, 3)}
            except Closed as c:
                return "closed", {"seconds": round(time.monotonic() - t0, 3), "reset": c.reset}
            secs = round(time.monotonic() - t0, 3)
            if ptype == 0x07:
                d = abort_detail(body)
                d["seconds"] = secs
                d["closed"] = self._closes_soon(2.0)
                return "abort", d
            if ptype == 0x03:
                d = rj_detail(body)
                d["seconds"] = secs
                return "reject", d
            if ptype in (0x05, 0x06):
                if ptype == 0x05:
                    self.send(pdu(0x06, bytes(4)))
                return "closed", {"seconds": secs, "pdu": pdu_name(ptype)}
            if ptype == 0x04:
                i = 0
                while i + 6 <= len(body):
                    n, pcid, mch = struct.unpack_from(">IBB", body, i)
                    frag = body[i + 6 : i + 4 + n]
                    i += 4 + max(n, 2)
                    if mch & 0x01:
                        cmd += frag
                        if mch & 0x02:
                            c = parse_command(cmd)
                            d = {"seconds": secs, "pc_id": pcid}
                            if "status" in c:
                                d["status"] = "0x%04X" % c["status"]
                                d["status_int"] = c["status"]
                            for k in ("command_field", "msg_id_responded", "error_comment",
                                      "offending_elements", "sop_class", "sop_instance"):
                                if k in c:
                                    d[k] = ("0x%04X" % c[k]) if k == "command_field" else c[k]
                            return "rsp", d
                continue
            return "closed", {"seconds": secs, "pdu": pdu_name(ptype), "note": "unexpected PDU"}

    def _closes_soon(self, wait: float) -> bool:
        try:
            while True:
                self.recv_pdu(wait)
        except Closed:
            return True
        except (TimeoutError, ValueError):
            return False

    def release(self) -> bool:
        if self.send(pdu(0x05, bytes(4))):
            return False
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                ptype, _ = self.recv_pdu(deadline - time.monotonic())
                if ptype == 0x06:
                    return True
                if ptype in (0x07, 0x03):
                    return False
        except (TimeoutError, Closed, ValueError):
            return False
        return False


def pdu_name(t: int) -> str:
    return PDU_NAMES.get(t, f"0x{t:02X}")


def abort_detail(body: bytes) -> dict:
    src, reason = (body[2], body[3]) if len(body) >= 4 else (None, None)
    return {"abort_source": src, "abort_reason": reason, "abort_reason_str": ABORT_REASONS.get(reason, "?")}


def rj_detail(body: bytes) -> dict:
    if len(body) >= 4:
        return {"rj_result": body[1], "rj_source": body[2], "rj_reason": body[3]}
    return {}


# --------------------------------------------------------------------------- cases


def need_file(args) -> dict:
    if not args.file:
        raise SetupError("args", "error", {"error": "--file PATH (a CT Part 10 file) is required for this case"})
    try:
        return read_part10(args.file)
    except (OSError, ValueError) as exc:
        raise SetupError("args", "error", {"error": str(exc)})


def file_or_default(args) -> dict:
    if args.file:
        return need_file(args)
    rnd = random.Random(args.seed)
    return {"sop_class": CT_IMAGE_STORAGE, "ts": EXPLICIT_LE, "dataset": b"",
            "sop_instance": "2.25.%d" % rnd.getrandbits(120)}


def finish_rsp(peer: Peer, result: str, detail: dict) -> tuple[str, dict]:
    if result == "rsp":
        detail["released"] = peer.release()
    return result, detail


def case_garbage(args, peer: Peer):
    rnd = random.Random(args.seed)
    data = bytearray(rnd.getrandbits(8) for _ in range(100))
    data[0] = rnd.randint(0x08, 0xFF)  # never a valid PDU type
    peer.connect()
    err = peer.send(bytes(data))
    r, d = peer.outcome(args.wait)
    d["first_byte"] = "0x%02X" % data[0]
    if err:
        d["send_error"] = err
    return r, d


def case_bad_pdu_length(args, peer: Peer):
    f = file_or_default(args)
    peer.associate([(1, f["sop_class"], [f["ts"]])])
    variant = args.variant or "huge"
    cmd = c_store_rq(1, f["sop_class"], f["sop_instance"])
    if variant == "huge":
        # the PDU claims ~2 GiB; only the first PDV (the command) is sent
        wire = pdu(0x04, pdv(1, 0x03, cmd), declared_len=0x7FFFFFF0)
        d = {"variant": variant, "declared_pdu_length": 0x7FFFFFF0, "sent_body": len(wire) - 6}
    elif variant == "short":
        # consistent PDU length, but the PDV inside claims more than the PDU holds
        body = pdv(1, 0x03, cmd, declared_len=len(cmd) + 2 + 1000)
        wire = pdu(0x04, body)
        d = {"variant": variant, "pdu_length": len(body), "pdv_item_length": len(cmd) + 1002}
    elif variant == "pdv-zero":
        body = pdv(1, 0x03, cmd, declared_len=0)
        wire = pdu(0x04, body)
        d = {"variant": variant, "pdu_length": len(body), "pdv_item_length": 0}
    else:
        raise SetupError("args", "error", {"error": f"unknown --variant {variant} (huge|short|pdv-zero)"})
    err = peer.send(wire)
    r, od = peer.outcome(args.wait)
    d.update(od)
    if err:
        d["send_error"] = err
    return finish_rsp(peer, r, d)


def case_unknown_pdu_type(args, peer: Peer):
    f = file_or_default(args)
    peer.associate([(1, f["sop_class"], [f["ts"]])])
    err = peer.send(pdu(0x55, b"\x00\x01\x02\x03"))
    r, d = peer.outcome(args.wait)
    d["pdu_type"] = "0x55"
    if err:
        d["send_error"] = err
    return finish_rsp(peer, r, d)


def _store_case(args, peer: Peer, f: dict, data: bytes, cmd_class: str, pcid: int = 1, contexts=None):
    peer.associate(contexts or [(1, f["sop_class"], [f["ts"]])])
    if pcid in peer.accepted and peer.accepted[pcid][0] != 0:
        raise SetupError("associate", "error", {"error": f"context {pcid} not accepted: {peer.accepted[pcid]}"})
    err = peer.send_message(pcid, c_store_rq(1, cmd_class, f["sop_instance"]), data)
    r, d = peer.outcome(args.wait)
    d["sent_bytes"] = len(data)
    if err:
        d["send_error"] = err
    return finish_rsp(peer, r, d)


def case_truncated(args, peer: Peer):
    f = need_file(args)
    ds = f["dataset"]
    half = (len(ds) // 2) & ~1  # even cut: fragments must stay even-length
    r, d = _store_case(args, peer, f, ds[:half], f["sop_class"])
    d["full_bytes"] = len(ds)
    return r, d


def case_not_dicom(args, peer: Peer):
    f = file_or_default(args)
    text = (b"This is not a DICOM data set, just plain text sent as one. " * 100)[:4000]
    return _store_case(args, peer, f, text, f["sop_class"])


def case_sop_mismatch(args, peer: Peer):
    f = need_file(args)
    other = MR_IMAGE_STORAGE if f["sop_class"] != MR_IMAGE_STORAGE else CT_IMAGE_STORAGE
    r, d = _store_case(args, peer, f, f["dataset"], other)
    d["negotiated_sop_class"] = f["sop_class"]
    d["command_sop_class"] = other
    return r, d


def case_pc_not_accepted(args, peer: Peer):
    f = need_file(args)
    peer.associate([(1, f["sop_class"], [f["ts"]]), (3, BOGUS_ABSTRACT, [EXPLICIT_LE])])
    variant = args.variant or "rejected"
    ctx3 = peer.accepted.get(3)
    if variant == "rejected" and ctx3 is not None and ctx3[0] != 0:
        pcid, state = 3, f"rejected (result {ctx3[0]})"
    elif variant in ("rejected", "unproposed"):
        pcid, state = 5, "never proposed"
    else:
        raise SetupError("args", "error", {"error": f"unknown --variant {variant} (rejected|unproposed)"})
    err = peer.send_message(pcid, c_store_rq(1, f["sop_class"], f["sop_instance"]), f["dataset"])
    r, d = peer.outcome(args.wait)
    d.update({"pc_id_used": pcid, "pc_state": state, "sent_bytes": len(f["dataset"])})
    if err:
        d["send_error"] = err
    return finish_rsp(peer, r, d)


def case_silent(args, peer: Peer):
    peer.connect()
    r, d = peer.outcome(args.wait)
    return r, d


def _outcome_while_sending(args, peer: Peer, chunks) -> tuple[str, dict]:
    """Send `chunks` one per --interval; stop at the server's first reaction."""
    t0 = time.monotonic()
    sent = 0
    for chunk in chunks:
        if time.monotonic() - t0 > args.wait:
            return "timeout", {"seconds": round(time.monotonic() - t0, 3), "sent_bytes": sent}
        if peer.send(chunk):
            return "closed", {"seconds": round(time.monotonic() - t0, 3), "sent_bytes": sent, "note": "send failed"}
        sent += len(chunk)
        try:
            r, d = peer.outcome(args.interval)
        except ValueError as e:
            return "closed", {"seconds": round(time.monotonic() - t0, 3), "sent_bytes": sent, "note": str(e)}
        if r != "timeout":
            d["seconds"] = round(time.monotonic() - t0, 3)
            d["sent_bytes"] = sent
            return r, d
    r, d = peer.outcome(max(0.0, args.wait - (time.monotonic() - t0)))
    d["seconds"] = round(time.monotonic() - t0, 3)
    d["sent_bytes"] = sent
    return r, d


def case_trickle_rq(args, peer: Peer):
    f = file_or_default(args)
    rq = assoc_rq(args.aec, args.aet, [(1, f["sop_class"], [f["ts"]])], args.max_pdu)
    peer.connect()
    r, d = _outcome_while_sending(args, peer, (rq[i : i + 1] for i in range(len(rq))))
    d["rq_bytes"] = len(rq)
    return r, d


def case_trickle_data(args, peer: Peer):
    f = need_file(args)
    peer.associate([(1, f["sop_class"], [f["ts"]])])
    err = peer.send(pdu(0x04, pdv(1, 0x03, c_store_rq(1, f["sop_class"], f["sop_instance"]))))
    if err:
        raise SetupError("command", "closed", {"error": err})
    ds = f["dataset"]
    pdus = (pdu(0x04, pdv(1, 0x00, ds[i : i + 2])) for i in range(0, len(ds) - 2, 2))
    return _outcome_while_sending(args, peer, pdus)


def case_hang(args, peer: Peer):
    f = file_or_default(args)
    peer.associate([(1, f["sop_class"], [f["ts"]])])
    r, d = peer.outcome(args.wait)
    if r == "rsp":  # should not happen; release to be tidy
        d["released"] = peer.release()
    return r, d


CASES = {
    "garbage": case_garbage,
    "bad-pdu-length": case_bad_pdu_length,
    "unknown-pdu-type": case_unknown_pdu_type,
    "truncated-dataset": case_truncated,
    "not-dicom": case_not_dicom,
    "sop-mismatch": case_sop_mismatch,
    "pc-not-accepted": case_pc_not_accepted,
    "hang": case_hang,
    "silent": case_silent,
    "trickle-rq": case_trickle_rq,
    "trickle-data": case_trickle_data,
}


def run_case(name: str, args) -> int:
    peer = Peer(args)
    try:
        result, detail = CASES[name](args, peer)
        rc = 0
    except SetupError as e:
        result, detail = "error", dict(e.detail, stage=e.stage, server=e.result)
        rc = 2
    except ValueError as e:
        result, detail, rc = "error", {"stage": "protocol", "error": str(e)}, 2
    finally:
        peer.close()
    print(json.dumps({"case": name, "result": result, "detail": detail}), flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=list(CASES) + ["all"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aec", default="MEDRELAY", help="called AE title (default MEDRELAY)")
    ap.add_argument("--aet", default="BADPEER", help="calling AE title (default BADPEER)")
    ap.add_argument("--file", help="Part 10 file (CT) for the valid parts")
    ap.add_argument("--wait", type=float, default=10.0, help="max seconds to wait for the server's reaction")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--max-pdu", type=int, default=16384, help="max PDU length we announce")
    ap.add_argument("--variant", help="bad-pdu-length: huge|short|pdv-zero; pc-not-accepted: rejected|unproposed")
    ap.add_argument("--seed", type=int, default=1, help="seed for random bytes / made-up UIDs")
    ap.add_argument("--interval", type=float, default=0.3, help="trickle cases: seconds between sends")
    args = ap.parse_args(argv)
    if args.case == "all":
        rc = 0
        for name in CASES:
            if name not in ("hang", "silent", "trickle-rq", "trickle-data"):
                rc = max(rc, run_case(name, args))
        return rc
    return run_case(args.case, args)


if __name__ == "__main__":
    sys.exit(main())
