#!/usr/bin/env python3
"""Helper for benches/qr.sh: C-FIND latency, side by side.

  qr_timing.py sample DB N            N query values from medrelay's SQLite index (JSON on stdout)
  qr_timing.py find SAMPLE ROUNDS NAME=AE@HOST:PORT...
                                      each query of SAMPLE, ROUNDS times, on every target in turn
                                      (one association per target, kept open), timed from the
                                      request to the final response; prints per target and query
                                      kind p50 / p95 ms and matches, and the ratios against the
                                      last target (the anchor)

Query kinds (Study Root, STUDY level, the return keys a PACS worklist asks for):
  date     StudyDate = one day
  pid      PatientID = one patient
  acc      AccessionNumber = one study
  name     PatientName = SUR^GIV (exact, case-insensitive at both)
  range    StudyDate = a 7-day range and ModalitiesInStudy = CT
"""
import json
import sqlite3
import statistics
import sys
import time

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

RETURN = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
          "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedInstances"]


def sample(db, n):
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT study_date, patient_id, accession_number, patient_name FROM studies ORDER BY random() LIMIT ?", (n,)
    ).fetchall()
    out = []
    for d, pid, acc, name in rows:
        y, m, day = int(d[:4]), int(d[4:6]), int(d[6:8])
        end = time.strftime("%Y%m%d", time.gmtime(time.mktime((y, m, day, 12, 0, 0, 0, 0, 0)) + 6 * 86400))
        out += [
            ("date", {"StudyDate": d}),
            ("pid", {"PatientID": pid}),
            ("acc", {"AccessionNumber": acc}),
            ("name", {"PatientName": name}),
            ("range", {"StudyDate": f"{d}-{end}", "ModalitiesInStudy": "CT"}),
        ]
    json.dump(out, sys.stdout)


def connect(target):
    name, spec = target.split("=", 1)
    aec, hostport = spec.split("@", 1)
    host, port = hostport.rsplit(":", 1)
    ae = AE(ae_title="BENCH_WS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(FIND)
    assoc = ae.associate(host, int(port), ae_title=aec)
    if not assoc.is_established:
        raise SystemExit(f"{name}: association rejected")
    return name, assoc


def one(assoc, keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in RETURN:
        setattr(ds, k, "")
    for k, v in keys.items():
        setattr(ds, k, v)
    t0 = time.perf_counter()
    n, final = 0, None
    for status, _ in assoc.send_c_find(ds, FIND):
        if status is None:
            raise SystemExit("association lost")
        if status.Status in (0xFF00, 0xFF01):
            n += 1
        else:
            final = status.Status
    dt = (time.perf_counter() - t0) * 1000
    if final != 0:
        raise SystemExit(f"C-FIND {keys}: final status {final:#06x}")
    return dt, n


def find(sample_path, rounds, targets):
    queries = json.load(open(sample_path))
    conns = [connect(t) for t in targets]
    res = {(name, kind): [] for name, _ in conns for kind, _ in queries}
    hits = {(name, kind): [] for name, _ in conns for kind, _ in queries}
    # warm-up: every query once on every target, untimed
    for _, keys in queries:
        for _, a in conns:
            one(a, keys)
    for r in range(rounds):
        for kind, keys in queries:
            order = conns if r % 2 == 0 else list(reversed(conns))
            for name, a in order:
                dt, n = one(a, keys)
                res[(name, kind)].append(dt)
                hits[(name, kind)].append(n)
    for _, a in conns:
        a.release()
    kinds = list(dict.fromkeys(k for k, _ in queries))
    anchor = conns[-1][0]
    print(f"{'kind':<6} {'target':<10} {'p50 ms':>8} {'p95 ms':>8} {'matches':>8}   ratio p50 / p95 vs {anchor}")
    for kind in kinds:
        a = res[(anchor, kind)]
        a50, a95 = statistics.median(a), statistics.quantiles(a, n=20)[18]
        for name, _ in conns:
            v = res[(name, kind)]
            p50, p95 = statistics.median(v), statistics.quantiles(v, n=20)[18]
            m = statistics.median(hits[(name, kind)])
            ratio = "" if name == anchor else f"   {a50 / p50:.1f}x / {a95 / p95:.1f}x faster"
            print(f"{kind:<6} {name:<10} {p50:8.2f} {p95:8.2f} {m:8.0f}{ratio}")
        # same answers: the same number of matches per query on every target
        for name, _ in conns:
            if hits[(name, kind)] != hits[(anchor, kind)]:
                print(f"WARNING: {kind}: {name} and {anchor} disagree on match counts")


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "find":
        find(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(__doc__)
