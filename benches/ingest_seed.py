#!/usr/bin/env python3
"""Helper for benches/ingest_scale.sh: test data and index rows for the ingest benchmark.

  ingest_seed.py copies SRC OUT N        N copies of the CT series in SRC (OUT/c01 .. OUT/cNN), each
                                         with new Study/Series/SOP Instance UIDs (pydicom), so every
                                         push is new data; OUT/cNN.uid holds the copy's Study UID
  ingest_seed.py sqlite DB --batch K --n N
                                         N instance rows (and their patients, studies, series,
                                         worklist entries and name keys) into medrelay's SQLite
                                         index DB, the server stopped; one transaction (no ANALYZE:
                                         the server never runs it on SQLite)
  ingest_seed.py pg-sql --batch K --n N  the same rows for medrelay's PostgreSQL index, as SQL on
                                         stdout (INSERT ... SELECT ... generate_series, for psql)
  ingest_seed.py orthanc-sql --batch K --n N
                                         the same archive as Orthanc's PostgreSQL index plugin (4.0)
                                         stores it, as SQL for psql: Resources, MainDicomTags,
                                         DicomIdentifiers, Metadata, AttachedFiles, Changes,
                                         PatientRecyclingOrder, GlobalIntegers

Index rows only, no files. The shape, identical on every backend: ~300 instances
per study (every study 300, the batch's last one the remainder), 1-4 series per
study (instances dealt round-robin), one patient per 3 studies, patients spread
over the 20 clinics t01..t20 of benches/reading_api.py, CT 512x512, dates over
two years, Pinyin-like names. The UIDs start with a hashed component, so they
land all over the UID indexes as real ones do. K (1, 2, ...) numbers the seeding
batch: each batch has its own UIDs and patients, so an index grows batch by batch.
Per instance, the columns the server itself writes (src/archive/index.rs
apply_store; Orthanc: what Orthanc 1.10 wrote for .cache/ct300), previews 'ok' so
the server's preview worker leaves the seeded rows alone.
"""

import argparse
import hashlib
import os
import sqlite3
import sys
import time

PER_STUDY = 300
INST_BYTES = 525_000
MULT = 2654435761  # Knuth's multiplicative hash, mod 2^32
BATCH_STRIDE = 10_000_000
DAY_MS = 86_400_000
SURNAMES = "WANG LI ZHANG LIU CHEN YANG HUANG ZHAO WU ZHOU XU SUN MA ZHU HU GUO HE GAO LIN LUO ZHENG LIANG XIE SONG TANG HAN FENG DENG CAO PENG".split()
GIVEN = "WEI FANG NA MIN JING QIANG LEI JUN YANG YONG YAN JIE JUAN TAO MING CHAO XIU XIA PING GANG HUA HUI YU LING DAN BIN BO HONG YING LAN".split()
PARTS = ["HEAD", "CHEST", "ABDOMEN", "PELVIS", "SPINE"]
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.10.543"


def h32(x):
    return (x * MULT) % 4294967296


def shape(n):
    """(studies, patients) of a batch of n instances."""
    studies = -(-n // PER_STUDY)
    return studies, -(-studies // 3)


# ---------------------------------------------------------------- copies


def copies(src, out, n):
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".dcm"))
    if not files:
        raise SystemExit(f"no .dcm files in {src}")
    t0 = time.monotonic()
    for c in range(1, n + 1):
        d = os.path.join(out, f"c{c:02d}")
        os.makedirs(d, exist_ok=True)
        study = generate_uid()
        series = {}
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
            sop = generate_uid()
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.AccessionNumber = f"BENCH{c:05d}"
            ds.save_as(os.path.join(d, os.path.basename(f)), write_like_original=True)
        with open(d + ".uid", "w") as fh:
            fh.write(study + "\n")
    print(f"{n} copies of {len(files)} files in {time.monotonic() - t0:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------- medrelay, SQLite


def rows(k, n, now_ms):
    """The batch's patients and studies as Python tuples (SQLite), and per study a
    generator of its instance rows (5 M of them would not fit in memory at once);
    pg_sql() is the same in SQL."""
    n_studies, n_pat = shape(n)
    pats, studies = [], []
    pat = {}
    for p in range(n_pat):
        hp = h32(p + BATCH_STRIDE * k)
        c = p % 20 + 1
        pid = f"T{c:02d}-{k}-{p:07d}"
        sur, giv = SURNAMES[hp % len(SURNAMES)], GIVEN[(hp >> 8) % len(GIVEN)]
        birth = f"{1935 + hp % 88:04d}{1 + (hp >> 7) % 12:02d}{1 + (hp >> 11) % 28:02d}"
        pats.append((f"t{c:02d}", f"id:{pid}", pid, f"{sur}^{giv}", birth, "MF"[(hp >> 3) % 2]))
        pat[p] = (c, pid, sur, giv)
    for s in range(n_studies):
        gs = s + BATCH_STRIDE * k
        hs = h32(gs)
        cnt = min(PER_STUDY, n - PER_STUDY * s)
        nser = min(cnt, 1 + hs % 4)
        c, pid, sur, giv = pat[s // 3]
        uid = f"{UID_ROOT}.{1_000_000_000 + hs}.{k}.{s + 1}"
        t = now_ms - 3_600_000 - (h32(gs + 1) % 730) * DAY_MS - h32(gs + 2) % 43_200_000
        lt = time.gmtime((t + 8 * 3_600_000) // 1000)
        studies.append(dict(s=s, uid=uid, pid=pid, c=c, clinic=f"t{c:02d}", ae=f"T{c:02d}_CT", sur=sur, giv=giv, cnt=cnt,
                            nser=nser, t=t, first=t - 600_000, part=PARTS[hs % 5],
                            sdate=time.strftime("%Y%m%d", lt), stime=time.strftime("%H%M%S", lt)))
    return pats, studies


def instance_rows(studies):
    for st in studies:
        uid, nser, first, ae = st["uid"], st["nser"], st["first"], st["ae"]
        for i in range(st["cnt"]):
            se = f"{uid}.{i % nser + 1}"
            num = i // nser + 1
            sop = f"{se}.{num}"
            sha = hashlib.sha256(sop.encode()).hexdigest()
            rt = first + 2000 * i
            yield (sop, 1, se, uid, CT_CLASS, EXPLICIT_LE, num, 512, 512, None, sha, INST_BYTES,
                   f"instances/{sha[:2]}/{sha}.dcm", ae, rt, "ok", rt + 500)


def seed_sqlite(db, k, n):
    t0 = time.monotonic()
    pats, studies = rows(k, n, int(time.time() * 1000))
    con = sqlite3.connect(db, isolation_level=None, timeout=60)
    con.execute("PRAGMA cache_size = -1000000")  # 1 GB: the UID indexes take inserts all over
    con.execute("BEGIN IMMEDIATE")
    cur = con.cursor()
    cur.executemany("INSERT INTO patients (clinic_id, patient_key, patient_id, patient_name, birth_date, sex) VALUES (?, ?, ?, ?, ?, ?)", pats)
    ids = dict(con.execute("SELECT patient_key, id FROM patients WHERE patient_key LIKE ?", (f"id:T__-{k}-%",)))
    cur.executemany(
        """INSERT INTO studies (study_uid, patient_row, clinic_id, calling_ae, patient_name, patient_id,
             study_date, study_time, accession_number, description, referring_physician, modalities,
             body_parts, num_series, num_instances, size_bytes, first_received_ms, last_received_ms,
             stable_after_ms, stable_at_ms, status, completed_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        ((x["uid"], ids["id:" + x["pid"]], x["clinic"], x["ae"], f"{x['sur']}^{x['giv']}", x["pid"], x["sdate"], x["stime"],
          f"A{x['c']:02d}{k}{x['s']:07d}", f"CT {x['part']}", "", "CT", x["part"], x["nser"], x["cnt"], x["cnt"] * INST_BYTES,
          x["first"], x["t"], 60_000, x["t"] + 60_000, "complete", x["t"] + 60_000) for x in studies))
    cur.executemany("INSERT INTO study_names (key, study_uid) VALUES (?, ?)",
                    ((key, x["uid"]) for x in studies for key in sorted({x["sur"].lower(), x["giv"].lower(), (x["sur"] + x["giv"]).lower()})))
    cur.executemany(
        """INSERT INTO worklist (study_uid, state, priority, enqueued_ms, updated_ms, completions,
             priority_rank, clinic_id, modalities, body_parts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        ((x["uid"], "delivered", "routine", x["t"] + 60_000, x["t"] + 3_600_000, 1, 2, x["clinic"], "CT", x["part"]) for x in studies))
    cur.executemany(
        """INSERT INTO series (series_uid, study_uid, modality, series_number, description, body_part,
             num_instances, size_bytes, first_received_ms, last_received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        ((f"{x['uid']}.{j + 1}", x["uid"], "CT", j + 1, f"CT series {j + 1}", x["part"], m, m * INST_BYTES, x["first"], x["t"])
         for x in studies for j in range(x["nser"]) for m in [(x["cnt"] - 1 - j) // x["nser"] + 1]))
    cur.executemany(
        """INSERT INTO instances (sop_instance_uid, version, series_uid, study_uid, sop_class_uid, transfer_syntax,
             instance_number, rows, columns, frames, sha256, size_bytes, path, calling_ae, received_ms,
             preview_status, preview_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        instance_rows(studies))
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    print(f"sqlite: batch {k}: {n} instances, {len(studies)} studies, {len(pats)} patients "
          f"in {time.monotonic() - t0:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------- SQL common to both PostgreSQL seeders


def sql_arr(words):
    return "ARRAY[" + ", ".join(f"'{w}'" for w in words) + "]"


def pg_common(k, n):
    """Temp tables pt (patients) and st (studies) with the same values as rows()."""
    n_studies, n_pat = shape(n)
    return f"""
\\set ON_ERROR_STOP 1
SET synchronous_commit = off;
SET session_replication_role = replica;  -- rows consistent by construction: no FK checks, no triggers
SET work_mem = '256MB';
BEGIN;
CREATE TEMP TABLE pt ON COMMIT DROP AS
SELECT p, c, 't' || lpad(c::text, 2, '0') AS clinic, 'T' || lpad(c::text, 2, '0') || '-{k}-' || lpad(p::text, 7, '0') AS pid,
       ({sql_arr(SURNAMES)})[1 + hp % {len(SURNAMES)}] AS sur, ({sql_arr(GIVEN)})[1 + (hp >> 8) % {len(GIVEN)}] AS giv,
       lpad((1935 + hp % 88)::text, 4, '0') || lpad((1 + (hp >> 7) % 12)::text, 2, '0') || lpad((1 + (hp >> 11) % 28)::text, 2, '0') AS birth,
       substr('MF', 1 + ((hp >> 3) % 2)::int, 1) AS sex
FROM (SELECT p, p % 20 + 1 AS c, ((p + {BATCH_STRIDE * k}::bigint) * {MULT}) % 4294967296 AS hp
      FROM generate_series(0, {n_pat - 1}) p) x;
CREATE TEMP TABLE st ON COMMIT DROP AS
SELECT s, cnt, least(cnt, 1 + hs % 4)::int AS nser, s / 3 AS p, '{UID_ROOT}.' || (1000000000 + hs) || '.{k}.' || (s + 1) AS uid,
       t, t - 600000 AS first, ({sql_arr(PARTS)})[1 + hs % 5] AS part,
       to_char(to_timestamp((t + 8 * 3600000) / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD') AS sdate,
       to_char(to_timestamp((t + 8 * 3600000) / 1000) AT TIME ZONE 'UTC', 'HH24MISS') AS stime
FROM (SELECT s, least({PER_STUDY}, {n} - {PER_STUDY} * s) AS cnt, ((s + {BATCH_STRIDE * k}::bigint) * {MULT}) % 4294967296 AS hs,
             :now_ms - 3600000 - (((s + {BATCH_STRIDE * k}::bigint + 1) * {MULT}) % 4294967296 % 730) * {DAY_MS}
               - ((s + {BATCH_STRIDE * k}::bigint + 2) * {MULT}) % 4294967296 % 43200000 AS t
      FROM generate_series(0, {n_studies - 1}) s) x;
CREATE TEMP TABLE ps ON COMMIT DROP AS  -- a study with its patient
SELECT st.*, pt.c, pt.clinic, pt.pid, pt.sur, pt.giv, pt.birth, pt.sex, 'T' || lpad(pt.c::text, 2, '0') || '_CT' AS ae
FROM st JOIN pt ON pt.p = st.p;
"""


def pg_sql(k, n):
    return pg_common(k, n) + f"""
INSERT INTO patients (clinic_id, patient_key, patient_id, patient_name, birth_date, sex)
SELECT clinic, 'id:' || pid, pid, sur || '^' || giv, birth, sex FROM pt;
INSERT INTO studies (study_uid, patient_row, clinic_id, calling_ae, patient_name, patient_id,
  study_date, study_time, accession_number, description, referring_physician, modalities,
  body_parts, num_series, num_instances, size_bytes, first_received_ms, last_received_ms,
  stable_after_ms, stable_at_ms, status, completed_ms)
SELECT uid, pa.id, ps.clinic, ae, sur || '^' || giv, pid, sdate, stime, 'A' || lpad(c::text, 2, '0') || '{k}' || lpad(s::text, 7, '0'),
       'CT ' || part, '', 'CT', part, nser, cnt, cnt * {INST_BYTES}, first, t, 60000, t + 60000, 'complete', t + 60000
FROM ps JOIN patients pa ON pa.clinic_id = ps.clinic AND pa.patient_key = 'id:' || ps.pid;
INSERT INTO study_names (key, study_uid)
SELECT DISTINCT key, uid FROM ps CROSS JOIN LATERAL (VALUES (lower(sur)), (lower(giv)), (lower(sur || giv))) v(key);
INSERT INTO worklist (study_uid, state, priority, enqueued_ms, updated_ms, completions, priority_rank, clinic_id, modalities, body_parts)
SELECT uid, 'delivered', 'routine', t + 60000, t + 3600000, 1, 2, clinic, 'CT', part FROM ps;
INSERT INTO series (series_uid, study_uid, modality, series_number, description, body_part,
  num_instances, size_bytes, first_received_ms, last_received_ms)
SELECT uid || '.' || (j + 1), uid, 'CT', j + 1, 'CT series ' || (j + 1), part, m, m * {INST_BYTES}, first, t
FROM st CROSS JOIN LATERAL generate_series(0, nser - 1) j CROSS JOIN LATERAL (SELECT (cnt - 1 - j) / nser + 1 AS m) x;
INSERT INTO instances (sop_instance_uid, version, series_uid, study_uid, sop_class_uid, transfer_syntax,
  instance_number, rows, columns, frames, sha256, size_bytes, path, calling_ae, received_ms, preview_status, preview_ms)
SELECT sop, 1, se, uid, '{CT_CLASS}', '{EXPLICIT_LE}', num, 512, 512, NULL, sha, {INST_BYTES},
       'instances/' || substr(sha, 1, 2) || '/' || sha || '.dcm', ae, rt, 'ok', rt + 500
FROM ps CROSS JOIN LATERAL generate_series(0, cnt - 1) i
CROSS JOIN LATERAL (SELECT uid || '.' || (i % nser + 1) AS se, i / nser + 1 AS num, first + 2000 * i AS rt) a
CROSS JOIN LATERAL (SELECT se || '.' || num AS sop) b
CROSS JOIN LATERAL (SELECT md5(sop) || md5(sop || '.') AS sha) c;
COMMIT;
"""


def orthanc_sql(k, n):
    """Orthanc's rows for the same archive. Ids: patients base+p, studies base+P+s,
    series base+P+S+4s+j, instances base+P+5S+300s+i (gaps allowed); the sequence is
    moved past them. Triggers are off while seeding (GlobalIntegers is set once at the end)."""
    n_studies, n_pat = shape(n)
    P, S = n_pat, n_studies
    ins = f":base + {P} + {5 * S} + {PER_STUDY} * s + i"
    se_id = f":base + {P} + {S} + 4 * s + (i % nser)"
    pub = "(SELECT substr(m, 1, 8) || '-' || substr(m, 9, 8) || '-' || substr(m, 17, 8) || '-' || substr(m, 25, 8) || '-' || substr(m, 33, 8) FROM (SELECT md5({0}) || md5({0} || '.') AS m) q)"
    dt = "to_char(to_timestamp(({0}) / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS')"
    return (
        "SELECT COALESCE(MAX(internalid), 0) + 1 AS base FROM resources \\gset\n"
        + pg_common(k, n)
        + f"""
CREATE TEMP TABLE se ON COMMIT DROP AS
SELECT ps.*, j, :base + {P} + {S} + 4 * s + j AS id, uid || '.' || (j + 1) AS suid, (cnt - 1 - j) / nser + 1 AS m
FROM ps CROSS JOIN LATERAL generate_series(0, nser - 1) j;
CREATE TEMP TABLE it ON COMMIT DROP AS
SELECT {ins} AS id, {se_id} AS parent, uid || '.' || (i % nser + 1) || '.' || (i / nser + 1) AS sop, i / nser + 1 AS num,
       first + 2000 * i AS rt, sdate, ae
FROM ps CROSS JOIN LATERAL generate_series(0, cnt - 1) i;
INSERT INTO resources (internalid, resourcetype, publicid, parentid)
SELECT :base + p, 0, {pub.format("'p' || pid")}, NULL FROM pt;
INSERT INTO resources (internalid, resourcetype, publicid, parentid)
SELECT :base + {P} + s, 1, {pub.format("'s' || uid")}, :base + p FROM st;
INSERT INTO resources (internalid, resourcetype, publicid, parentid)
SELECT id, 2, {pub.format("'e' || suid")}, :base + {P} + s FROM se;
INSERT INTO resources (internalid, resourcetype, publicid, parentid)
SELECT id, 3, {pub.format("'i' || sop")}, parent FROM it;
SELECT setval('resources_internalid_seq', :base + {P} + {5 * S} + {PER_STUDY * S});

INSERT INTO maindicomtags (id, taggroup, tagelement, value)
SELECT :base + p, g, e, v FROM pt CROSS JOIN LATERAL (VALUES
  (16, 16, sur || '^' || giv), (16, 32, pid), (16, 48, birth), (16, 64, sex)) x(g, e, v);
INSERT INTO maindicomtags (id, taggroup, tagelement, value)
SELECT :base + {P} + s, g, e, v FROM ps CROSS JOIN LATERAL (VALUES
  (8, 32, sdate), (8, 48, stime), (8, 80, 'A' || lpad(c::text, 2, '0') || '{k}' || lpad(s::text, 7, '0')),
  (8, 128, 'Township Clinic ' || lpad(c::text, 2, '0')), (8, 144, ''), (8, 4144, 'CT ' || part),
  (16, 16, sur || '^' || giv), (16, 32, pid), (16, 48, birth), (16, 64, sex), (32, 13, uid), (32, 16, (s + 1)::text)) x(g, e, v);
INSERT INTO maindicomtags (id, taggroup, tagelement, value)
SELECT id, g, e, v FROM se CROSS JOIN LATERAL (VALUES
  (8, 33, sdate), (8, 49, stime), (8, 96, 'CT'), (8, 112, 'medrelay-bench'), (8, 4158, 'CT series ' || (j + 1)),
  (24, 21, part), (32, 14, suid), (32, 17, (j + 1)::text), (32, 55, '1\\0\\0\\0\\1\\0')) x(g, e, v);
INSERT INTO maindicomtags (id, taggroup, tagelement, value)
SELECT id, g, e, v FROM it CROSS JOIN LATERAL (VALUES
  (8, 18, sdate), (8, 24, sop), (32, 18, '1'), (32, 19, num::text), (32, 50, '-179.6484\\-179.6484\\-' || num || '.0'),
  (32, 55, '1\\0\\0\\0\\1\\0')) x(g, e, v);

INSERT INTO dicomidentifiers (id, taggroup, tagelement, value)
SELECT :base + p, g, e, v FROM pt CROSS JOIN LATERAL (VALUES (16, 16, sur || '^' || giv), (16, 32, pid), (16, 48, birth)) x(g, e, v);
INSERT INTO dicomidentifiers (id, taggroup, tagelement, value)
SELECT :base + {P} + s, g, e, v FROM ps CROSS JOIN LATERAL (VALUES
  (8, 32, sdate), (8, 80, 'A' || lpad(c::text, 2, '0') || '{k}' || lpad(s::text, 7, '0')), (8, 4144, 'CT ' || part),
  (16, 16, sur || '^' || giv), (16, 32, pid), (16, 48, birth), (32, 13, uid)) x(g, e, v);
INSERT INTO dicomidentifiers (id, taggroup, tagelement, value) SELECT id, 32, 14, suid FROM se;
INSERT INTO dicomidentifiers (id, taggroup, tagelement, value) SELECT id, 8, 24, sop FROM it;

INSERT INTO metadata (id, type, value, revision)
SELECT :base + p, 7, {dt.format(':now_ms')}, 0 FROM pt;
INSERT INTO metadata (id, type, value, revision)
SELECT :base + {P} + s, 7, {dt.format('t + 60000')}, 0 FROM st;
INSERT INTO metadata (id, type, value, revision)
SELECT id, ty, v, 0 FROM se CROSS JOIN LATERAL (VALUES (3, ae), (7, {dt.format('t + 60000')})) x(ty, v);
INSERT INTO metadata (id, type, value, revision)
SELECT id, ty, v, 0 FROM it CROSS JOIN LATERAL (VALUES
  (1, num::text), (2, {dt.format('rt')}), (3, ae), (8, 'DicomProtocol'), (9, '{EXPLICIT_LE}'), (10, '{CT_CLASS}'),
  (11, '127.0.0.1'), (12, 'ORTHANC'), (14, '1598')) x(ty, v);

INSERT INTO attachedfiles (id, filetype, uuid, compressedsize, uncompressedsize, compressiontype, uncompressedhash, compressedhash, revision)
SELECT id, 1, substr(m, 1, 8) || '-' || substr(m, 9, 4) || '-' || substr(m, 13, 4) || '-' || substr(m, 17, 4) || '-' || substr(m, 21, 12),
       {INST_BYTES}, {INST_BYTES}, 1, h, h, 0
FROM it CROSS JOIN LATERAL (SELECT md5('f' || sop) AS m, md5('h' || sop) AS h) x;

INSERT INTO patientrecyclingorder (patientid) SELECT :base + p FROM pt ORDER BY p;
-- the change log: New* for every resource, Stable* for patients, studies, series (as Orthanc writes them)
INSERT INTO changes (changetype, internalid, resourcetype, date)
SELECT ct, id, rt, d FROM (
  SELECT 2 AS ct, id, 3 AS rt, {dt.format('rt')} AS d, rt AS o FROM it
  UNION ALL SELECT 4, id, 2, {dt.format('first')}, first FROM se
  UNION ALL SELECT 14, id, 2, {dt.format('t + 60000')}, t + 60000 FROM se
  UNION ALL SELECT 5, :base + {P} + s, 1, {dt.format('first')}, first FROM st
  UNION ALL SELECT 13, :base + {P} + s, 1, {dt.format('t + 60000')}, t + 60000 FROM st
  UNION ALL SELECT 3, :base + p, 0, {dt.format(':now_ms')}, 0 FROM pt
  UNION ALL SELECT 12, :base + p, 0, {dt.format(':now_ms')}, 0 FROM pt) x ORDER BY o;

UPDATE globalintegers SET value = value + {n} * {INST_BYTES}::bigint WHERE key IN (0, 1);
UPDATE globalintegers SET value = value + {P} WHERE key = 2;
UPDATE globalintegers SET value = value + {S} WHERE key = 3;
UPDATE globalintegers SET value = value + (SELECT COUNT(*) FROM se) WHERE key = 4;
UPDATE globalintegers SET value = value + {n} WHERE key = 5;
UPDATE globalintegers SET value = (SELECT MAX(seq) FROM changes) WHERE key = 6;
COMMIT;
"""
    )


def main():
    global PER_STUDY
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("copies")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("n", type=int)
    for name in ("sqlite", "pg-sql", "orthanc-sql"):
        s = sub.add_parser(name)
        if name == "sqlite":
            s.add_argument("db")
        s.add_argument("--batch", type=int, required=True, help="1, 2, ...: each batch has its own UIDs")
        s.add_argument("--n", type=int, required=True, help="instance rows")
        s.add_argument("--per-study", type=int, default=PER_STUDY,
                       help="instances per study (default 300; 1 for a study-count benchmark such as benches/qr.sh)")
    a = ap.parse_args()
    if a.cmd != "copies":
        PER_STUDY = max(1, a.per_study)
    if a.cmd == "copies":
        copies(a.src, a.out, a.n)
    elif a.cmd == "sqlite":
        seed_sqlite(a.db, a.batch, a.n)
    elif a.cmd == "pg-sql":
        sys.stdout.write(pg_sql(a.batch, a.n))
    else:
        sys.stdout.write(orthanc_sql(a.batch, a.n))


if __name__ == "__main__":
    main()
