"""A C-MOVE / C-GET SCU (pynetdicom) for the Q/R tests.

Usage: qr_retrieve.py --host H --port P --aec AE --aet AE (--move DEST | --get OUT_DIR)
                      [--model study|patient] [--cancel-after N] KEYS_JSON
Prints one JSON object: {"responses": [{"status", "remaining", "completed",
"failed", "warning"}...], "failed_uids": [...], "received": N}. With --get,
received instances are written to OUT_DIR as <SOPInstanceUID>.dcm exactly
as they arrived (the dataset bytes after a fresh file meta header). With
--cancel-after N, a C-CANCEL follows the N-th pending response.
"""
import argparse
import json
import os

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("--host", "--aec", "--aet"):
        ap.add_argument(k, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--move")
    ap.add_argument("--get")
    ap.add_argument("--model", default="study")
    ap.add_argument("--cancel-after", type=int, default=0)
    ap.add_argument("keys")
    a = ap.parse_args()
    ds = Dataset()
    for k, v in json.loads(a.keys).items():
        setattr(ds, k, v)
    ae = AE(ae_title=a.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    received = []
    handlers = []
    roles = []
    if a.get:
        model = StudyRootQueryRetrieveInformationModelGet if a.model == "study" else PatientRootQueryRetrieveInformationModelGet
        ae.add_requested_context(model)
        # The storage classes the tests retrieve, uncompressed only (as
        # getscu proposes by default): a compressed instance must fail.
        for cx in StoragePresentationContexts[:120]:
            ae.add_requested_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
            roles.append(build_role(cx.abstract_syntax, scp_role=True))

        def on_store(event):
            sop = event.request.AffectedSOPInstanceUID
            path = os.path.join(a.get, sop + ".dcm")
            with open(path, "wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
            received.append(sop)
            return 0x0000

        handlers = [(evt.EVT_C_STORE, on_store)]
    else:
        model = StudyRootQueryRetrieveInformationModelMove if a.model == "study" else PatientRootQueryRetrieveInformationModelMove
        ae.add_requested_context(model)
    assoc = ae.associate(a.host, a.port, ae_title=a.aec, ext_neg=roles, evt_handlers=handlers)
    if not assoc.is_established:
        print(json.dumps({"error": "association rejected", "responses": []}))
        return
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == model)
    responses, failed_uids, pending = [], [], 0
    gen = assoc.send_c_get(ds, model, msg_id=9) if a.get else assoc.send_c_move(ds, a.move, model, msg_id=9)
    for status, ident in gen:
        if status is None:
            break
        r = {"status": status.Status}
        for k, name in (("remaining", "NumberOfRemainingSuboperations"), ("completed", "NumberOfCompletedSuboperations"),
                        ("failed", "NumberOfFailedSuboperations"), ("warning", "NumberOfWarningSuboperations")):
            r[k] = getattr(status, name, None)
        responses.append(r)
        if ident is not None and "FailedSOPInstanceUIDList" in ident:
            v = ident.FailedSOPInstanceUIDList
            failed_uids = [str(v)] if isinstance(v, str) else [str(x) for x in v]
        if status.Status in (0xFF00, 0xFF01):
            pending += 1
            if a.cancel_after and pending == a.cancel_after:
                assoc.send_c_cancel(9, cx.context_id)
    assoc.release()
    print(json.dumps({"responses": responses, "failed_uids": failed_uids, "received": len(received)}))


if __name__ == "__main__":
    main()
