"""Writes small CT datasets whose Patient Name is Chinese, each in one
Specific Character Set, as a Chinese modality would send them.

Usage: chinese_names.py OUT_DIR

One file per case, named after the case; each is its own study (UIDs from
the case name) with patient ID CN-<case>. Names are written as raw bytes
so the ISO 2022 case carries the escape sequences real devices send
(pydicom itself writes GB 2312 under `\\ISO 2022 IR 58` without them).
"""

import sys
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
GB = "Wang^Xiaodong=王^小东=wang^xiaodong".encode("gb18030")
ISO2022 = b"Wang^Xiaodong=\x1b$)A" + "王".encode("gb2312") + b"^\x1b$)A" + "小东".encode("gb2312") + b"=wang^xiaodong"

# case: (Specific Character Set value bytes, Patient Name bytes, description)
CASES = {
    "gb18030": (b"GB18030", GB, "CT 头颅平扫".encode("gb18030")),
    "utf8": (b"ISO_IR 192", "Wang^Xiaodong=王^小东=wang^xiaodong".encode("utf-8"), "CT 胸部".encode("utf-8")),
    "iso2022": (b"\\ISO 2022 IR 58", ISO2022, b"CT \x1b$)A" + "腹部".encode("gb2312")),
    "gbk": (b"GBK", GB, b"CT"),
    # Only an alphabetic group; only an ideographic one; too many groups
    # with a stray escape byte (malformed, must not break anything).
    "alpha": (b"ISO_IR 192", b"Li^Ming", b"CT"),
    "ideo": (b"ISO_IR 192", "=王^小东".encode("utf-8"), b"CT"),
    "malformed": (b"\\ISO 2022 IR 58", b"Zhao^Lei=\x1b$)A\xd5\xd4^\x1b\xc0\xd7==x=y\x1b", b"CT"),
}


def write(out: Path, case: str, charset: bytes, name: bytes, desc: bytes) -> None:
    root = "1.2.826.0.1.3680043.10.1017." + str(sum(map(ord, case)) * 1000 + len(case))
    ds = Dataset()
    ds.add(DataElement(0x00080005, "CS", charset))
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = root + ".3.1"
    ds.StudyInstanceUID = root + ".1"
    ds.SeriesInstanceUID = root + ".2"
    ds.Modality = "CT"
    ds.add(DataElement(0x00100010, "PN", name))
    ds.PatientID = "CN-" + case
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M"
    ds.StudyDate = "20260301"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-" + case
    ds.add(DataElement(0x00081030, "LO", desc))
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = bytes(range(128))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    ds.file_meta = meta
    ds.save_as(out / f"{case}.dcm", enforce_file_format=True)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for case, (cs, name, desc) in CASES.items():
        write(out, case, cs, name, desc)


if __name__ == "__main__":
    main()
