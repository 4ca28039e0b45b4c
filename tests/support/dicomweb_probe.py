"""Reads a study from medrelay's /dicom-web with the PyPI dicomweb-client,
an independent DICOMweb client: WADO-RS retrieve (its multipart parser,
pydicom reading each part) and metadata (DICOM JSON read by pydicom's
Dataset.from_json).

Usage: dicomweb_probe.py BASE_URL TOKEN STUDY_UID
       dicomweb_probe.py BASE_URL TOKEN --search LEVEL FILTERS_JSON [STUDY_UID]
                         QIDO-RS through the client's search_for_studies /
                         _series / _instances: prints the results read by
                         pydicom (Dataset.from_json) as [{keyword: value}]
       dicomweb_probe.py BASE_URL TOKEN --store [--study STUDY_UID] FILE...
                         STOW-RS through the client's store_instances: prints
                         {"status", "stored": [{sop, class, url, warning}],
                         "failed": [{sop, reason}], "sent": {sop: SHA-256 of
                         the dataset bytes sent}} (an HTTP error: its status
                         and body)

Prints one JSON object: the retrieved instances (SOP Instance UID, series,
patient name in all its groups, transfer syntax) and, per series, the
metadata (SOP Instance UID, patient name, the Pixel Data BulkDataURI).
Self-signed test certificate: TLS verification is off.
"""

import hashlib
import io
import json
import sys
import warnings

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session

warnings.filterwarnings("ignore")


def name(pn):
    # all three component groups (pydicom joins them with "=")
    return str(pn) if pn is not None else None


def search(client, level, filters, study):
    fn = {
        "studies": client.search_for_studies,
        "series": client.search_for_series,
        "instances": client.search_for_instances,
    }[level]
    kwargs = {"search_filters": filters}
    if study:
        kwargs["study_instance_uid"] = study
    out = []
    for m in fn(**kwargs):
        ds = pydicom.Dataset.from_json(m)
        out.append({e.keyword: (str(e.value) if e.value is not None else "") for e in ds})
    json.dump(out, sys.stdout, ensure_ascii=False)


def store(client, args):
    study = None
    if args and args[0] == "--study":
        study, args = args[1], args[2:]
    datasets = [pydicom.dcmread(f) for f in args]
    sent = {}
    for ds in datasets:
        # what the client sends: pydicom's encoding of the file (as store_instances does)
        with io.BytesIO() as b:
            pydicom.dcmwrite(b, ds)
            raw = b.getvalue()
        group = int.from_bytes(raw[140:144], "little")
        sent[str(ds.SOPInstanceUID)] = hashlib.sha256(raw[144 + group :]).hexdigest()
    out = {"sent": sent, "stored": [], "failed": []}
    try:
        rsp = client.store_instances(datasets, study_instance_uid=study)
    except requests.exceptions.HTTPError as e:
        out["status"] = e.response.status_code
        out["body"] = e.response.text
        json.dump(out, sys.stdout)
        return
    out["status"] = 200
    for item in rsp.get("ReferencedSOPSequence", []):
        out["stored"].append(
            {
                "sop": item.ReferencedSOPInstanceUID,
                "class": item.ReferencedSOPClassUID,
                "url": str(item.get("RetrieveURL", "")),
                "warning": item.get("WarningReason"),
            }
        )
    for item in rsp.get("FailedSOPSequence", []):
        out["failed"].append({"sop": item.get("ReferencedSOPInstanceUID", ""), "reason": int(item.FailureReason)})
    json.dump(out, sys.stdout)


def main():
    base, token = sys.argv[1:3]
    session = create_session()
    session.verify = False
    session.trust_env = False  # a CA bundle from the environment would override verify
    client = DICOMwebClient(url=base, session=session, headers={"Authorization": f"Bearer {token}"})
    if sys.argv[3] == "--store":
        return store(client, sys.argv[4:])
    if sys.argv[3] == "--search":
        level, filters = sys.argv[4], json.loads(sys.argv[5])
        return search(client, level, filters, sys.argv[6] if len(sys.argv) > 6 else None)
    study = sys.argv[3]
    out = {"instances": [], "metadata": []}
    series = set()
    for ds in client.retrieve_study(study):
        series.add(ds.SeriesInstanceUID)
        out["instances"].append(
            {
                "sop": ds.SOPInstanceUID,
                "series": ds.SeriesInstanceUID,
                "patient_name": name(ds.get("PatientName")),
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            }
        )
    for se in sorted(series):
        for m in client.retrieve_series_metadata(study, se):
            bulk = m.get("7FE00010", {}).get("BulkDataURI")
            ds = pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda tag, vr, uri: b"")
            out["metadata"].append(
                {
                    "sop": ds.SOPInstanceUID,
                    "series": se,
                    "patient_name": name(ds.get("PatientName")),
                    "pixel_bulk": bulk,
                }
            )
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
