#!/usr/bin/env python3
"""Helper for benches/previews.sh (stdlib only).

  previews_load.py orthanc-upload BASE DIR OUT       POST every file of DIR to BASE/instances,
                                                     write the Orthanc instance IDs (file order)
  previews_load.py medrelay-uids BASE OUT            SOP Instance UIDs of the (single) study,
                                                     in instance-number order
  previews_load.py load --name N --base URL --path '/x/{id}/y' --ids FILE
                        [--accept T] [--conns C] [--passes P]
                                                     warm-up pass + P timed passes, C keep-alive
                                                     connections; prints one RESULT line
  previews_load.py wait-previews DB N TIMEOUT        until N instances are no longer 'pending'
  previews_load.py preview-delay DB                  preview_ms - received_ms percentiles
  previews_load.py wait-quiet MAX_PCT TIMEOUT        until other CPU use is below MAX_PCT % (noise)
"""

import argparse
import http.client
import json
import multiprocessing as mp
import os
import sqlite3
import ssl
import sys
import time
import urllib.parse


def connect(base: str) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(base)
    if u.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # medrelay's self-signed certificate
        return http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=60, context=ctx)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)


class Client:
    """One keep-alive connection; reconnects (and counts it) if the server closes."""

    def __init__(self, base: str):
        self.base = base
        self.conn = None
        self.connects = 0

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = connect(self.base)
                self.connects += 1
            try:
                h = dict(headers or {})
                # medrelay needs a session (benches/previews.sh logs in as the
                # generated first admin); other servers ignore the cookie.
                if os.environ.get("MEDRELAY_COOKIE"):
                    h.setdefault("Cookie", os.environ["MEDRELAY_COOKIE"])
                self.conn.request(method, path, body=body, headers=h)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.conn.close()
                    self.conn = None
                return resp.status, resp.getheader("Content-Type", ""), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # a keep-alive connection the server closed in between: retry once
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def get_json(self, path):
        st, _, data = self.request("GET", path)
        if st != 200:
            raise SystemExit(f"GET {self.base}{path}: HTTP {st}: {data[:200]!r}")
        return json.loads(data)


def jpeg_size(data: bytes):
    """(width, height) from the first SOFn marker, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + seg
    return None


# ---------------------------------------------------------------- setup


def orthanc_upload(base, directory, out):
    c = Client(base)
    files = sorted(os.listdir(directory))
    ids = []
    for f in files:
        with open(os.path.join(directory, f), "rb") as fh:
            body = fh.read()
        st, _, data = c.request("POST", "/instances", body=body, headers={"Content-Type": "application/dicom"})
        if st != 200:
            raise SystemExit(f"orthanc: POST /instances {f}: HTTP {st}: {data[:200]!r}")
        j = json.loads(data)
        if j.get("Status") not in ("Success", "AlreadyStored"):
            raise SystemExit(f"orthanc: {f}: {j}")
        ids.append(j["ID"])
    with open(out, "w") as fh:
        fh.write("\n".join(ids) + "\n")
    print(f"uploaded {len(ids)} instances to Orthanc")


def medrelay_uids(base, out):
    c = Client(base)
    studies = c.get_json("/api/studies?limit=100")["studies"]
    uids = []
    for s in studies:
        inst = c.get_json(f"/api/studies/{urllib.parse.quote(s['study_uid'])}/instances")["instances"]
        inst.sort(key=lambda r: (r.get("instance_number") or 0, r["sop_instance_uid"]))
        uids += [r["sop_instance_uid"] for r in inst]
    with open(out, "w") as fh:
        fh.write("\n".join(uids) + "\n")
    print(f"medrelay has {len(uids)} instances in {len(studies)} studies")


# ---------------------------------------------------------------- load


def worker(k, args, ids, barrier, results):
    c = Client(args.base)
    headers = {"Accept": args.accept} if args.accept else {}
    conns = args.conns
    mine = [ids[i] for i in range(len(ids)) if i % conns == k]

    def one(id_, stats):
        t = time.monotonic()
        try:
            st, ctype, data = c.request("GET", args.path.replace("{id}", id_), headers=headers)
        except Exception as e:  # noqa: BLE001 - counted, reported
            stats["errors"] += 1
            stats["why"].setdefault(type(e).__name__, 0)
            stats["why"][type(e).__name__] += 1
            return
        stats["lat"].append((time.monotonic() - t) * 1000.0)
        size = jpeg_size(data) if st == 200 else None
        if size is None:
            stats["errors"] += 1
            key = f"HTTP {st} {ctype}" if st != 200 else f"not JPEG ({ctype})"
            stats["why"][key] = stats["why"].get(key, 0) + 1
            return
        stats["ok"] += 1
        stats["bytes"] += len(data)
        stats["sizes"][f"{size[0]}x{size[1]}"] = stats["sizes"].get(f"{size[0]}x{size[1]}", 0) + 1

    warm = {"ok": 0, "errors": 0, "bytes": 0, "lat": [], "why": {}, "sizes": {}}
    for id_ in mine:  # warm-up pass: every instance once (page cache, connections, lazy init)
        one(id_, warm)
    barrier.wait()
    stats = {"ok": 0, "errors": 0, "bytes": 0, "lat": [], "why": {}, "sizes": {}}
    cpu0 = time.process_time()
    for _ in range(args.passes):
        for id_ in mine:
            one(id_, stats)
    stats["end"] = time.monotonic()
    stats["cpu"] = time.process_time() - cpu0
    stats["connects"] = c.connects
    stats["warm_errors"] = warm["errors"]
    stats["warm_why"] = warm["why"]
    results.put(stats)


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, round((len(sorted_vals) - 1) * p))]


def proc_cpu_s(pid):
    """user+system CPU seconds of a process (all its threads), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def system_busy_s():
    """CPU seconds all cores spent not idle (from /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


def load(args):
    with open(args.ids) as fh:
        ids = [l.strip() for l in fh if l.strip()]
    if not ids:
        raise SystemExit("no ids")
    barrier = mp.Barrier(args.conns + 1)
    results = mp.Queue()
    procs = [mp.Process(target=worker, args=(k, args, ids, barrier, results)) for k in range(args.conns)]
    for p in procs:
        p.start()
    barrier.wait()  # all warm-up passes done
    t0 = time.monotonic()
    srv0, sys0 = proc_cpu_s(args.server_pid), system_busy_s()
    got = [results.get(timeout=3600) for _ in procs]
    srv1, sys1 = proc_cpu_s(args.server_pid), system_busy_s()
    for p in procs:
        p.join()
    wall = max(g["end"] for g in got) - t0
    ok = sum(g["ok"] for g in got)
    errors = sum(g["errors"] for g in got)
    lat = sorted(x for g in got for x in g["lat"])
    why, sizes, warm_why = {}, {}, {}
    for g in got:
        for d, src in ((why, g["why"]), (sizes, g["sizes"]), (warm_why, g["warm_why"])):
            for k, v in src.items():
                d[k] = d.get(k, 0) + v
    nbytes = sum(g["bytes"] for g in got)
    # CPU per preview: server (all threads) and this client (TLS, HTTP, JPEG check)
    srv = f"{(srv1 - srv0) * 1000 / max(ok, 1):.2f}" if srv0 is not None and srv1 is not None else "?"
    cli = f"{sum(g['cpu'] for g in got) * 1000 / max(ok, 1):.2f}"
    # whatever else ran meanwhile (other builds/tests on the machine): noise indicator
    other = "?"
    if srv0 is not None and srv1 is not None:
        busy_other = (sys1 - sys0) - (srv1 - srv0) - sum(g["cpu"] for g in got)
        other = f"{max(0.0, busy_other) * 100 / (wall * (os.cpu_count() or 1)):.0f}"
    print(
        f"RESULT name={args.name} conns={args.conns} requests={ok + errors} ok={ok} errors={errors} "
        f"wall_s={wall:.3f} rate={ok / wall:.2f} p50_ms={pct(lat, 0.5):.1f} p95_ms={pct(lat, 0.95):.1f} "
        f"mean_kb={(nbytes / max(ok, 1)) / 1024:.1f} "
        f"sizes={','.join(f'{k}:{v}' for k, v in sorted(sizes.items())) or '-'} "
        f"connects={sum(g['connects'] for g in got)} warmup_errors={sum(g['warm_errors'] for g in got)} "
        f"server_cpu_ms={srv} client_cpu_ms={cli} other_cpu_pct={other}"
    )
    if why or warm_why:
        print(f"  {args.name} errors: {why} warm-up errors: {warm_why}", file=sys.stderr)


# ---------------------------------------------------------------- index.db


def db(path):
    # read-only readers of a WAL database the server is writing
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    return con


def wait_previews(path, n, timeout):
    t0 = time.monotonic()
    last = -1
    while time.monotonic() - t0 < timeout:
        try:
            con = db(path)
            total, done = con.execute(
                "SELECT COUNT(*), COALESCE(SUM(preview_status != 'pending'), 0) FROM instances"
            ).fetchone()
            con.close()
        except sqlite3.Error:
            total, done = 0, 0
        if done != last:
            last = done
        if total >= n and done >= total:
            print(f"all {total} previews done {time.monotonic() - t0:.2f} s after the last C-STORE-RSP")
            return
        time.sleep(0.1)
    raise SystemExit(f"timeout: only {last} of {n} previews done after {timeout} s")


def preview_delay(path):
    con = db(path)
    rows = con.execute("SELECT preview_ms - received_ms, preview_status FROM instances").fetchall()
    con.close()
    d = sorted(r[0] for r in rows if r[0] is not None)
    statuses = {}
    for _, s in rows:
        s = "no preview" if s.startswith("no preview") else s
        statuses[s] = statuses.get(s, 0) + 1
    print(
        f"RESULT n={len(d)} p50_ms={pct(d, 0.5):.0f} p95_ms={pct(d, 0.95):.0f} max_ms={d[-1] if d else float('nan'):.0f} "
        f"statuses={','.join(f'{k}:{v}' for k, v in sorted(statuses.items())).replace(' ', '_')}"
    )


def wait_quiet(max_pct, timeout):
    """Wait (up to timeout s) until the machine's CPU use over 1 s is below max_pct % of all cores."""
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    while True:
        b0, w0 = system_busy_s(), time.monotonic()
        time.sleep(1.0)
        pct_busy = (system_busy_s() - b0) * 100 / ((time.monotonic() - w0) * ncpu)
        waited = time.monotonic() - t0
        if pct_busy < max_pct:
            if waited > 1.5:
                print(f"machine quiet ({pct_busy:.0f}% busy) after {waited:.0f} s", file=sys.stderr)
            return
        if waited >= timeout:
            print(f"machine still {pct_busy:.0f}% busy after {waited:.0f} s; measuring anyway (noisy)", file=sys.stderr)
            return


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("orthanc-upload")
    p.add_argument("base"), p.add_argument("dir"), p.add_argument("out")
    p = sub.add_parser("medrelay-uids")
    p.add_argument("base"), p.add_argument("out")
    p = sub.add_parser("load")
    p.add_argument("--name", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--accept", default="")
    p.add_argument("--conns", type=int, default=2)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--server-pid", type=int, default=0, help="report this process's CPU per preview")
    p = sub.add_parser("wait-previews")
    p.add_argument("db"), p.add_argument("n", type=int), p.add_argument("timeout", type=float)
    p = sub.add_parser("wait-quiet")
    p.add_argument("max_pct", type=float), p.add_argument("timeout", type=float)
    p = sub.add_parser("preview-delay")
    p.add_argument("db")
    a = ap.parse_args()
    if a.cmd == "orthanc-upload":
        orthanc_upload(a.base, a.dir, a.out)
    elif a.cmd == "medrelay-uids":
        medrelay_uids(a.base, a.out)
    elif a.cmd == "load":
        load(a)
    elif a.cmd == "wait-quiet":
        wait_quiet(a.max_pct, a.timeout)
    elif a.cmd == "wait-previews":
        wait_previews(a.db, a.n, a.timeout)
    else:
        preview_delay(a.db)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
