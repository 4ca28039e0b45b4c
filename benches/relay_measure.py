#!/usr/bin/env python3
"""Timing helper of benches/relay.sh (stdlib only).

    relay_measure.py run --method direct|relay --n N --study-bytes B
                         --hub-db HUB/index.db [--edge-db EDGE/index.db]
                         --link a --rtt-ms 200 --rate-mbit 50 [--linkemu-stats F]
                         [--linkemu-pid PID] [--timeout 5400] [--log F] --out RESULT.json -- CMD ...
    relay_measure.py summary RESULT.json ...

`run` notes t0 (unix ms), starts CMD (storescu, in the clinic namespace) and
polls the medrelay index databases read-only every 100 ms until the study is
complete at the hub:

  direct: the hub's `studies` row has status 'complete' and N instances.
          arrived       = MAX(instances.received_ms)   (last instance stored)
          complete      = studies.completed_ms          (arrived + stable_after)
          first preview = MIN(instances.preview_ms) WHERE preview_status='ok'
          WAN time      = arrived - t0
  relay:  the hub's `relay_inbound` row has state 'committed'.
          complete      = relay_inbound.committed_ms    (= arrived, atomic commit)
          first preview = relay_inbound.first_preview_ms
          edge complete = the edge's studies.completed_ms (LAN push + stable_after)
          WAN time      = committed_ms - edge complete  (the relay starts then)

Goodput = study bytes (the DICOM files) * 8 / WAN time, also as a fraction of
the link rate. Times are reported in seconds from t0 (storescu start). With
--linkemu-stats, the emulator's counters are snapshotted at t0 and at the
end, and the difference (wire bytes, drops by cause, emulator lateness) goes
into the result.

`summary` prints one table over all results and, per link, the ratios of the
relay to the direct path.
"""
import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time


def now_ms():
    return int(time.time() * 1000)


def ro(path):
    """A read-only connection, or None while the database does not exist yet."""
    if not os.path.exists(path):
        return None
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        c.execute("PRAGMA busy_timeout = 2000")
        return c
    except sqlite3.Error:
        return None


def query(conn, sql, args=()):
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:  # table not created yet, busy, ...
        return None


def linkemu_stats(path):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def link_delta(a, b):
    if not a or not b:
        return None
    out = {"emulator_cpu_s": round(b["cpu_s"] - a["cpu_s"], 2)}
    for d in ("c2h", "h2c"):
        x, y = a[d], b[d]
        out[d] = {k: y[k] - x[k] for k in ("rx_packets", "fwd_packets", "fwd_bytes",
                                            "drop_loss", "drop_queue", "drop_cut", "drop_error")}
        out[d]["max_late_ms_total"] = y["max_late_ms"]
    return out


def poll_direct(hub, n):
    r = query(hub, "SELECT study_uid, status, completed_ms, num_instances, size_bytes FROM studies")
    if not r:
        return None
    uid, status, completed_ms, count, size = r[0]
    if len(r) > 1:
        raise SystemExit(f"expected one study at the hub, found {len(r)}")
    if status != "complete" or count < n:
        return {"progress": count}
    arrived = query(hub, "SELECT MAX(received_ms) FROM instances WHERE study_uid = ?", (uid,))[0][0]
    return {"study_uid": uid, "count": count, "hub_size_bytes": size,
            "complete_ms": completed_ms, "arrived_ms": arrived}


def first_preview_direct(hub):
    r = query(hub, "SELECT MIN(CASE WHEN preview_status = 'ok' THEN preview_ms END), "
                   "SUM(preview_status = 'ok'), COUNT(*) FROM instances")
    return r[0] if r else (None, 0, 0)


def poll_relay(hub, edge, n):
    r = query(hub, "SELECT study_uid, edge, state, total, began_ms, first_preview_ms, "
                   "first_instance_ms, committed_ms FROM relay_inbound")
    if not r:
        return None
    uid, edge_name, state, total, began, first_prev, first_inst, committed = r[0]
    if state != "committed":
        return {"progress": state}
    hub_count = query(hub, "SELECT COUNT(*) FROM instances WHERE study_uid = ?", (uid,))
    e = query(edge, "SELECT completed_ms, num_instances, last_received_ms FROM studies WHERE study_uid = ?", (uid,)) if edge else None
    return {"study_uid": uid, "edge": edge_name, "total": total,
            "count": hub_count[0][0] if hub_count else None,
            "began_ms": began, "first_preview_ms": first_prev, "first_instance_ms": first_inst,
            "complete_ms": committed, "arrived_ms": committed,
            "edge_complete_ms": e[0][0] if e else None,
            "edge_count": e[0][1] if e else None,
            "edge_arrived_ms": e[0][2] if e else None}


def cmd_run(a):
    if not a.cmd or a.cmd[0] != "--":
        raise SystemExit("run: the command to time goes after --")
    cmd = a.cmd[1:]
    log = open(a.log, "wb") if a.log else subprocess.DEVNULL
    stats0 = linkemu_stats(a.linkemu_stats)
    t0 = now_ms()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def on_signal(signum, frame):  # do not leave storescu running
        proc.terminate()
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sender_rc = sender_end = None
    hub = edge = None
    done = None
    first_prev = None
    deadline = time.monotonic() + a.timeout
    failed = None
    last_progress = None
    last_report = time.monotonic()
    while True:
        if sender_rc is None:
            rc = proc.poll()
            if rc is not None:
                sender_rc, sender_end = rc, now_ms()
                if rc != 0:
                    fail_at = time.monotonic() + 30.0
        if sender_rc not in (None, 0) and time.monotonic() > fail_at:
            failed = f"sender exited with {sender_rc} and the study did not complete"
            break
        if hub is None:
            hub = ro(a.hub_db)
        if a.method == "relay" and edge is None and a.edge_db:
            edge = ro(a.edge_db)
        if hub is not None:
            if a.method == "direct":
                st = poll_direct(hub, a.n)
                if first_prev is None:
                    fp = first_preview_direct(hub)[0]
                    if fp is not None:
                        first_prev = fp
            else:
                st = poll_relay(hub, edge, a.n)
            if st and "progress" not in st:
                done = st
                break
            if st and time.monotonic() - last_report > 30:
                last_progress = st["progress"]
                print(f"  ... {(now_ms() - t0) / 1000:.0f} s: {last_progress}", file=sys.stderr, flush=True)
                last_report = time.monotonic()
        if a.linkemu_pid and not os.path.exists(f"/proc/{a.linkemu_pid}"):
            failed = "the link emulator exited during the run (see linkemu.err)"
            break
        if time.monotonic() > deadline:
            failed = f"timeout after {a.timeout} s (last progress: {last_progress})"
            break
        time.sleep(0.1)
    # The emulator rewrites its stats file once a second: wait for a rewrite
    # that covers the end of the transfer (only keep-alives move after it).
    if a.linkemu_stats:
        time.sleep(1.2)
    stats1 = linkemu_stats(a.linkemu_stats)
    if sender_rc is None:
        # the study is complete once the hub has it; storescu may still be
        # waiting for the release, give it a moment
        try:
            sender_rc = proc.wait(timeout=30 if not failed else 1)
            sender_end = now_ms()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            sender_rc = "killed"

    res = {"link": a.link, "method": a.method, "n": a.n, "study_bytes": a.study_bytes,
           "rtt_ms": a.rtt_ms, "rate_mbit": a.rate_mbit, "loss": a.loss, "t0_ms": t0,
           "sender_rc": sender_rc,
           "sender_s": round((sender_end - t0) / 1000, 3) if sender_end else None}
    if failed:
        res["error"] = failed
    if done:
        if a.method == "direct":
            # previews may lag the arrival a little; the first one is in by now
            fp = first_preview_direct(hub)
            res["previews_ok"] = fp[1]
            first_prev = fp[0] if fp[0] is not None else first_prev
            done["first_preview_ms"] = first_prev
            wan_start = t0
        else:
            wan_start = done.get("edge_complete_ms") or t0
            if done.get("edge_complete_ms"):
                res["edge_complete_s"] = round((done["edge_complete_ms"] - t0) / 1000, 3)
                res["edge_arrived_s"] = round((done["edge_arrived_ms"] - t0) / 1000, 3)
                if done.get("first_preview_ms"):
                    res["preview_after_edge_complete_s"] = round(
                        (done["first_preview_ms"] - done["edge_complete_ms"]) / 1000, 3)
                    res["preview_goal_s"] = round(3 * a.rtt_ms / 1000 + 1, 3)
        res.update(done)
        res["complete_s"] = round((done["complete_ms"] - t0) / 1000, 3)
        res["arrived_s"] = round((done["arrived_ms"] - t0) / 1000, 3)
        res["first_preview_s"] = round((done["first_preview_ms"] - t0) / 1000, 3) if done.get("first_preview_ms") else None
        wan_s = (done["arrived_ms"] - wan_start) / 1000
        res["wan_s"] = round(wan_s, 3)
        if wan_s > 0:
            gp = a.study_bytes * 8 / wan_s / 1e6
            res["goodput_mbit"] = round(gp, 3)
            res["goodput_frac"] = round(gp / a.rate_mbit, 4) if a.rate_mbit else None
        if done.get("count") is not None and done["count"] != a.n:
            res["error"] = f"hub has {done['count']} instances, expected {a.n}"
    res["link_stats"] = link_delta(stats0, stats1)
    # Wire utilisation: what the bottleneck carried clinic -> hub (packets,
    # headers, retransmissions, after compression) over the WAN time, as a
    # fraction of the link rate. Goodput above counts study bytes instead.
    try:
        if res.get("wan_s") and a.rate_mbit:
            wire = res["link_stats"]["c2h"]["fwd_bytes"] * 8 / res["wan_s"] / 1e6
            res["wire_mbit"] = round(wire, 3)
            res["wire_frac"] = round(wire / a.rate_mbit, 4)
    except (KeyError, TypeError):
        pass
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(one_line(res), flush=True)
    return 0 if "error" not in res else 1


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def one_line(r):
    if "error" in r and "complete_s" not in r:
        return f"[{r['link']}/{r['method']}] FAILED: {r['error']}"
    s = (f"[{r['link']}/{r['method']}] complete {fmt(r.get('complete_s'))} s, arrived "
         f"{fmt(r.get('arrived_s'))} s, first preview {fmt(r.get('first_preview_s'))} s, "
         f"WAN {fmt(r.get('wan_s'))} s, goodput {fmt(r.get('goodput_mbit'), '.2f')} Mbit/s "
         f"({fmt(100 * r['goodput_frac'] if r.get('goodput_frac') is not None else None)} % of link), "
         f"storescu {fmt(r.get('sender_s'))} s")
    if r.get("preview_after_edge_complete_s") is not None:
        s += (f", preview {r['preview_after_edge_complete_s']:.2f} s after edge complete "
              f"(goal <= {r['preview_goal_s']:.1f} s)")
    ls = r.get("link_stats")
    if ls:
        c = ls["c2h"]
        s += (f"; wire c2h {c['fwd_bytes'] / 1e6:.1f} MB, drops loss/queue {c['drop_loss']}/{c['drop_queue']}"
              f", emulator cpu {ls['emulator_cpu_s']} s")
    if "error" in r:
        s += f"  ERROR: {r['error']}"
    return s


def cmd_summary(a):
    rows = []
    for p in a.results:
        try:
            with open(p) as f:
                rows.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"skip {p}: {e}", file=sys.stderr)
    if not rows:
        print("no results")
        return 1
    hdr = ("link", "method", "complete_s", "arrived_s", "1st_prev_s", "wan_s",
           "goodput_Mbit", "%link", "wire_%link", "storescu_s", "prev-edge_s", "status")
    lines = [hdr]
    for r in rows:
        lines.append((f"{r['link']} ({r['rtt_ms']:g}ms {100 * r['loss']:g}% {r['rate_mbit']:g}M)",
                      r["method"], fmt(r.get("complete_s")), fmt(r.get("arrived_s")),
                      fmt(r.get("first_preview_s")), fmt(r.get("wan_s")),
                      fmt(r.get("goodput_mbit"), ".2f"),
                      fmt(100 * r["goodput_frac"] if r.get("goodput_frac") is not None else None),
                      fmt(100 * r["wire_frac"] if r.get("wire_frac") is not None else None),
                      fmt(r.get("sender_s")),
                      fmt(r.get("preview_after_edge_complete_s"), ".2f"),
                      "ok" if "error" not in r else "ERROR"))
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(hdr))]
    for l in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(l, widths)))
    print()
    by_link = {}
    for r in rows:
        by_link.setdefault(r["link"], {})[r["method"]] = r
    for link, m in by_link.items():
        d, r = m.get("direct"), m.get("relay")
        if not d or not r or "error" in d or "error" in r:
            continue

        def ratio(key, inverse=False):
            x, y = d.get(key), r.get(key)
            if not x or not y:
                return "-"
            return f"{(y / x) if inverse else (x / y):.2f}x"
        print(f"link {link}: direct/relay (> 1: the relay is better)")
        print(f"  time to complete  {ratio('complete_s')}  (direct {d['complete_s']:.1f} s, relay {r['complete_s']:.1f} s)")
        print(f"  first preview     {ratio('first_preview_s')}  (direct {fmt(d.get('first_preview_s'))} s, "
              f"relay {fmt(r.get('first_preview_s'))} s; relay previews leave once the study is complete at the edge)")
        print(f"  WAN goodput       {ratio('goodput_mbit', inverse=True)}  (relay {fmt(r.get('goodput_mbit'), '.2f')} "
              f"Mbit/s, direct {fmt(d.get('goodput_mbit'), '.2f')} Mbit/s of {r['rate_mbit']:g})")
        if r.get("preview_after_edge_complete_s") is not None:
            ok = r["preview_after_edge_complete_s"] <= r["preview_goal_s"]
            print(f"  relay first preview {r['preview_after_edge_complete_s']:.2f} s after the study was complete "
                  f"at the edge (goal <= 3 RTT + 1 s = {r['preview_goal_s']:.1f} s: {'met' if ok else 'MISSED'})")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="sub", required=True)
    r = sub.add_parser("run")
    r.add_argument("--method", choices=("direct", "relay"), required=True)
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--study-bytes", type=int, required=True)
    r.add_argument("--hub-db", required=True)
    r.add_argument("--edge-db")
    r.add_argument("--link", default="?")
    r.add_argument("--rtt-ms", type=float, default=0.0)
    r.add_argument("--rate-mbit", type=float, default=0.0)
    r.add_argument("--loss", type=float, default=0.0)
    r.add_argument("--linkemu-stats")
    r.add_argument("--linkemu-pid", type=int, help="fail the run if this process (the emulator) exits")
    r.add_argument("--timeout", type=float, default=5400.0)
    r.add_argument("--log")
    r.add_argument("--out", required=True)
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("summary")
    s.add_argument("results", nargs="+")
    a = ap.parse_args()
    return cmd_run(a) if a.sub == "run" else cmd_summary(a)


if __name__ == "__main__":
    sys.exit(main())
