"""A C-FIND SCU (pynetdicom) for the Q/R tests.

Usage: qr_find.py --host H --port P --aec AE --aet AE --model study|patient
                  [--charset GB18030] [--cancel-after N] KEYS_JSON
KEYS_JSON maps keywords to values ("" asks for a return key); text values
are encoded in --charset (default ISO_IR 192). Prints one JSON object:
{"status": final status, "matches": [{keyword: value, ...}, ...]}, with
values decoded by pydicom from the response's own Specific Character Set.
With --cancel-after N, a C-CANCEL is sent after the N-th pending response;
with --cancel-at-once, right behind the request (before any response), so
the SCP finds it at its first look whatever the timing.
"""
import argparse
from io import BytesIO
import json
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aec", required=True)
    ap.add_argument("--aet", required=True)
    ap.add_argument("--model", default="study")
    ap.add_argument("--charset", default="ISO_IR 192")
    ap.add_argument("--cancel-after", type=int, default=0)
    ap.add_argument("--cancel-at-once", action="store_true")
    ap.add_argument("keys")
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args()
    if a.debug:
        from pynetdicom import debug_logger
        debug_logger()
    model = (
        StudyRootQueryRetrieveInformationModelFind
        if a.model == "study"
        else PatientRootQueryRetrieveInformationModelFind
    )
    ds = Dataset()
    ds.SpecificCharacterSet = a.charset
    for k, v in json.loads(a.keys).items():
        setattr(ds, k, v)
    ae = AE(ae_title=a.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(model)
    assoc = ae.associate(a.host, a.port, ae_title=a.aec)
    if not assoc.is_established:
        print(json.dumps({"status": None, "error": "association rejected", "matches": []}))
        sys.exit(0)
    matches, final = [], None
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == model)
    if a.cancel_at_once:
        final, matches = find_cancelled(assoc, ds, model, cx)
        assoc.release()
        print(json.dumps({"status": final, "matches": matches}, ensure_ascii=False))
        return
    for status, ident in assoc.send_c_find(ds, model, msg_id=7):
        if status is None:
            break
        if status.Status in (0xFF00, 0xFF01):
            row = {}
            for elem in ident:
                if elem.VR == "SQ":
                    row[elem.keyword] = []
                else:
                    row[elem.keyword] = "" if elem.value is None else str(elem.value)
            matches.append(row)
            if a.cancel_after and len(matches) == a.cancel_after:
                assoc.send_c_cancel(7, cx.context_id)
        else:
            final = status.Status
    assoc.release()
    print(json.dumps({"status": final, "matches": matches}, ensure_ascii=False))


def find_cancelled(assoc, ds, model, cx):
    """C-FIND-RQ then C-CANCEL-RQ back to back, then every response.

    pynetdicom's reactor thread takes queued messages as requests to serve
    unless paused; its own send_*() pause it the same way.
    """
    import time
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode

    req = C_FIND()
    req.MessageID = 7
    req.AffectedSOPClassUID = model
    req.Priority = 2
    ts = cx.transfer_syntax[0]
    req.Identifier = BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated))
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        assoc.send_c_cancel(7, cx.context_id)
        matches = []
        while True:
            _, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:
                return None, matches
            if rsp.Status in (0xFF00, 0xFF01):
                matches.append({})
                continue
            return rsp.Status, matches
    finally:
        assoc._reactor_checkpoint.set()


if __name__ == "__main__":
    main()
