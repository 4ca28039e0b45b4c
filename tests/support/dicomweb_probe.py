"""Reads a study from medrelay's /dicom-web with the PyPI dicomweb-client,
an independent DICOMweb client: WADO-RS retrieve (its multipart parser,
pydicom reading each part) and metadata (DICOM JSON read by pydicom's
Dataset.from_json).

Usage: dicomweb_probe.py BASE_URL TOKEN STUDY_UID

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


def main():
    base, token, study = sys.argv[1:4]
    session = create_session()
    session.verify = False
    session.trust_env = False  # a CA bundle from the environment would override verify
    client = DICOMwebClient(url=base, session=session, headers={"Authorization": f"Bearer {token}"})
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
