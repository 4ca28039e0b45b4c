"""Reads a study from medrelay's /dicom-web with the PyPI dicomweb-client,
an independent DICOMweb client: WADO-RS retrieve (its multipart parser,
pydicom reading each part) and metadata (DICOM JSON read by pydicom's
Dataset.from_json).

Usage: dicomweb_probe.py BASE_URL TOKEN STUDY_UID
       dicomweb_probe.py BASE_URL TOKEN --search LEVEL FILTERS_JSON [STUDY_UID]
                         QIDO-RS through the client's search_for_studies /
                         _series / _instances: prints the results read by
                         pydicom (Dataset.from_json) as [{keyword: value}]

Prints one JSON object: the retrieved instances (SOP Instance UID, series,
patient name in all its groups, transfer syntax) and, per series, the
metadata (SOP Instance UID, patient name, the Pixel Data BulkDataURI).
Self-signed test certificate: TLS verification is off.
"""

import json
import sys
import warnings

import pydicom
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


def main():
    base, token = sys.argv[1:3]
    session = create_session()
    session.verify = False
    session.trust_env = False  # a CA bundle from the environment would override verify
    client = DICOMwebClient(url=base, session=session, headers={"Authorization": f"Bearer {token}"})
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
