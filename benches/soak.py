#!/usr/bin/env python3
"""Soak run of a hub and an edge under mixed load, with kill -9 (benches/soak.sh).

    soak.py --bin target/release/medrelay --work DIR [--secs 1800] [--seed 1]
            [--kills-hub 2] [--kills-edge 2] [--viewers 50] [--consultations 2]
            [--slices 20] [--study-every 45] [--json OUT]

What runs at once, for --secs:
  * a hub (DICOM, HTTPS, SFU, relay listener) and an edge (a clinic box) whose
    QUIC relay link to the hub crosses tests/support/udp_impair.py
    (50 ms one way, 1 % loss, 8 Mbit/s);
  * 4 clinics pushing new CT studies (--slices instances each, fresh UIDs):
    t01 and t02 with pynetdicom (each acknowledged instance recorded durably,
    with its C-STORE latency), t03 with DCMTK storescu, t04 with
    `medrelay store` into the edge, which relays to the hub;
  * 2 experts reading through the API: worklist, claim, study, previews, an
    on-demand render, draft, sign (each signed version recorded durably);
  * a teaching broadcast with --viewers `medrelay loadtest` viewers, and
    --consultations consultations of `medrelay loadtest --consultation` peers
    when the binary has that mode;
  * kill -9 of the hub and of the edge at random moments in the first half
    of the run (restarted after 1-5 s); the load generators carry on (the
    video loads start over, as the hub's rooms died with it).

Then the load stops, the edge's outbox drains, and the run reports:
  * acknowledged instances lost (goal 0): acked by the hub but not in its
    index or without their file; acked by the edge but not at the edge; and
    acked by the edge but not relayed to the hub after the drain;
  * signed reports lost (goal 0);
  * RSS and runtime task counts of each process incarnation, 5 min after it
    started and at its end (goal <= 10 % growth over the final incarnation,
    which runs at least the second half);
  * C-STORE ack p99 and API p95 per 5-minute window;
  * errors by kind (load-generator side and the servers' ERROR/WARN lines).

Needs the venv of tests/support/setup.sh (pydicom, pynetdicom), DCMTK and
.cache/ct300. Everything is written under --work.
"""

from __future__ import annotations

import argparse
import collections
import copy
import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PW = "soak-password-1"
WINDOW = 300.0  # seconds per reporting window
# Growth is measured from this long after a process started (caches, pools
# and the SQLite page cache fill first) to its end.
WARMUP = 300.0

T0 = time.monotonic()


def now() -> float:
    return time.monotonic() - T0


def say(msg: str) -> None:
    print(f"[{now():7.1f}s] {msg}", flush=True)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsync_append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> list[str]:
    try:
        return [x.strip() for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


class Stats:
    """Thread-safe event sink: latencies per kind and errors per kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self.errors: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()

    def latency(self, kind: str, ms: float) -> None:
        with self.lock:
            self.lat[kind].append((now(), ms))

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def count(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.counts[kind] += n


STATS = Stats()
STOP = threading.Event()


# ---------------------------------------------------------------- processes


class Gateway:
    """One medrelay process (hub or edge) that may be killed and restarted."""

    def __init__(self, name: str, args: list[str], work: Path, http_port: int, metrics_url: str):
        self.name = name
        self.args = args
        self.work = work
        self.http_port = http_port
        self.metrics_url = metrics_url
        self.proc: subprocess.Popen | None = None
        self.lives: list[dict] = []
        self.lock = threading.Lock()
        self.log_path = work / f"{name}.log"

    def start(self) -> None:
        with self.lock:
            log = open(self.log_path, "a")
            log.write(f"\n===== start at {now():.1f}s =====\n")
            log.flush()
            env = dict(os.environ, RUST_LOG=os.environ.get("SOAK_RUST_LOG", "info"))
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
            self.lives.append({"pid": self.proc.pid, "start": now(), "samples": [], "end": None, "how": None})
        self.wait_ready()

    def wait_ready(self, secs: float = 120) -> None:
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            try:
                c = https(self.http_port, timeout=2)
                c.request("GET", "/api/health")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    return
            except OSError:
                pass
            if self.proc and self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited during start-up; see {self.log_path}")
            time.sleep(0.3)
        raise SystemExit(f"{self.name} not ready after {secs} s; see {self.log_path}")

    def kill9(self) -> None:
        with self.lock:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self.lives[-1]["end"] = now()
                self.lives[-1]["how"] = "kill -9"

    def terminate(self) -> None:
        with self.lock:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.lives[-1]["end"] = now()
                self.lives[-1]["how"] = "SIGTERM"

    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p and p.poll() is None else None

    def sample(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        rss = None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        except OSError:
            return
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = None
        tasks = metric(self, "medrelay_runtime_tasks")
        with self.lock:
            if self.lives and self.lives[-1]["pid"] == pid:
                self.lives[-1]["samples"].append((now(), rss, tasks, fds))


_CTX = ssl.create_default_context()
_CTX.check_hostname = False
_CTX.verify_mode = ssl.CERT_NONE


def https(port: int, timeout: float = 30) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=_CTX, timeout=timeout)


def metric(g: Gateway, name: str) -> float | None:
    """A gauge from the gateway's Prometheus text (its metrics URL)."""
    url = g.metrics_url
    m = re.match(r"(https?)://([^/:]+):(\d+)(/.*)", url)
    if not m:
        return None
    scheme, host, port, path = m.groups()
    try:
        if scheme == "https":
            c = http.client.HTTPSConnection(host, int(port), context=_CTX, timeout=5)
        else:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
        headers = {}
        if os.environ.get("SOAK_METRICS_TOKEN"):
            headers["authorization"] = "Bearer " + os.environ["SOAK_METRICS_TOKEN"]
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        if r.status != 200:
            return None
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def cli(bin_: str, cfg: Path, data: Path, certs: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [bin_, *args, "--config", str(cfg), "--data-dir", str(data)]
    if args and args[0] == "relay":
        cmd += ["--cert-dir", str(certs)]
    o = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if o.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {o.stdout}{o.stderr}")
    return o.stdout


# ---------------------------------------------------------------- studies


class StudyMaker:
    """New studies from the template CT slices, with fresh UIDs each time."""

    def __init__(self, slices: int) -> None:
        from pydicom import dcmread

        src = REPO / ".cache" / "ct300"
        files = sorted(src.glob("CT*.dcm"))[:slices]
        if len(files) < slices:
            raise SystemExit(f"{src}: run tests/support/setup.sh first (need {slices} slices)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.template = [dcmread(str(f)) for f in files]
        self.lock = threading.Lock()

    def make(self, clinic: str, k: int) -> list:
        from pydicom.uid import generate_uid

        study, series = generate_uid(), generate_uid()
        out = []
        with self.lock:
            for i, t in enumerate(self.template):
                # Deep: a shallow Dataset copy shares its elements, so
                # setting a UID would rewrite the template and every sibling.
                ds = copy.deepcopy(t)
                sop = generate_uid()
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = series
                ds.SOPInstanceUID = sop
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.PatientID = f"SOAK-{clinic}-{k}"
                ds.PatientName = f"SOAK^{clinic.upper()}{k}"
                ds.AccessionNumber = f"{clinic}{k:05d}"
                ds.InstanceNumber = i + 1
                out.append(ds)
        return out

    @staticmethod
    def write(datasets: list, d: Path) -> list[Path]:
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for ds in datasets:
            p = d / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(str(p), enforce_file_format=True)
            paths.append(p)
        return paths


# ---------------------------------------------------------------- pushers


class Pusher(threading.Thread):
    """One clinic: a new study every --study-every seconds, resent until every
    instance is acknowledged (across kills of the receiver)."""

    def __init__(self, clinic: str, ae: str, port_fn, maker: StudyMaker, every: float, work: Path, how: str, bin_: str):
        super().__init__(daemon=True, name=f"push-{clinic}")
        self.clinic, self.ae, self.port_fn, self.maker = clinic, ae, port_fn, maker
        self.every, self.how, self.bin = every, how, bin_
        self.acked_path = work / f"acked-{clinic}.txt"
        self.dir = work / f"push-{clinic}"
        self.rng = random.Random(hash(clinic))

    def run(self) -> None:
        k = 0
        while not STOP.is_set():
            k += 1
            start = time.monotonic()
            study = self.maker.make(self.clinic, k)
            pending = {ds.SOPInstanceUID: ds for ds in study}
            paths = None
            if self.how != "pynetdicom":
                paths = {p.stem: p for p in StudyMaker.write(study, self.dir / f"s{k:04d}")}
            while pending and not STOP.is_set():
                try:
                    if self.how == "pynetdicom":
                        self.push_pynetdicom(pending)
                    elif self.how == "storescu":
                        self.push_storescu(pending, paths)
                    else:
                        self.push_medrelay(pending, paths)
                except Exception as e:  # noqa: BLE001 - counted by kind, retried
                    STATS.error(f"push {self.how}: {type(e).__name__}")
                if pending:
                    STOP.wait(2.0)
            STATS.count(f"studies pushed complete ({self.clinic})", 0 if pending else 1)
            if paths:
                for p in paths.values():
                    p.unlink(missing_ok=True)
            STOP.wait(max(0.0, self.every - (time.monotonic() - start)))

    def acked(self, uid: str) -> None:
        fsync_append(self.acked_path, uid)
        STATS.count(f"instances acked ({self.clinic})")

    def push_pynetdicom(self, pending: dict) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.ae)
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", self.port_fn(), ae_title="MEDRELAY")
        if not assoc.is_established:
            STATS.error("push pynetdicom: association not established")
            return
        try:
            for uid in list(pending):
                t = time.monotonic()
                st = assoc.send_c_store(pending[uid])
                ms = (time.monotonic() - t) * 1000
                code = getattr(st, "Status", None)
                if code is None:
                    STATS.error("push pynetdicom: no response (connection lost)")
                    return
                if code == 0 or (code & 0xF000) == 0xB000:
                    self.acked(uid)
                    STATS.latency("c-store ack", ms)
                    del pending[uid]
                else:
                    STATS.error(f"push pynetdicom: status 0x{code:04X}")
                    return
        finally:
            if assoc.is_established:
                assoc.release()

    def push_storescu(self, pending: dict, paths: dict) -> None:
        files = [str(paths[u]) for u in pending]
        env = dict(os.environ, TCP_NODELAY="1")
        o = subprocess.run(
            ["storescu", "-v", "-aet", self.ae, "-aec", "MEDRELAY", "127.0.0.1", str(self.port_fn()), *files],
            capture_output=True, text=True, env=env, timeout=600,
        )
        # -v: "Sending Store Request (MsgID n, CT)" then "Received Store
        # Response (Success)" per file, in the order given.
        sent = 0
        order = list(pending)
        for line in (o.stdout + o.stderr).splitlines():
            if "Sending Store Request" in line:
                sent += 1
            elif "Received Store Response" in line and sent:
                if "(Success)" in line or "Warning" in line:
                    uid = order[sent - 1]
                    if uid in pending:
                        self.acked(uid)
                        del pending[uid]
                else:
                    STATS.error("push storescu: failure status")
        if o.returncode != 0:
            STATS.error(f"push storescu: exit {o.returncode}")

    def push_medrelay(self, pending: dict, paths: dict) -> None:
        files = [str(paths[u]) for u in pending]
        o = subprocess.run(
            [self.bin, "store", *files, "--to", f"MEDRELAY@127.0.0.1:{self.port_fn()}", "--aet", self.ae,
             "--parallel", "2", "--quiet"],
            capture_output=True, text=True, timeout=600,
        )
        if not re.search(r"^sent \d+ of \d+ files", o.stdout, re.M):
            STATS.error(f"push medrelay store: no summary (exit {o.returncode})")
            return
        failed = set()
        for line in o.stdout.splitlines():
            m = re.match(r"FAILED (.+?): ", line)
            if m:
                failed.add(Path(m.group(1)).stem)
        for uid in list(pending):
            if uid not in failed:
                self.acked(uid)
                del pending[uid]
        if failed:
            STATS.error("push medrelay store: failed files")


# ---------------------------------------------------------------- readers


class Api:
    """A logged-in HTTPS client that logs in again when the server forgot it."""

    def __init__(self, port: int, user: str) -> None:
        self.port, self.user = port, user
        self.cookie = self.csrf = None
        self.conn: http.client.HTTPSConnection | None = None

    def _raw(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = https(self.port)
        headers = {"content-type": "application/json"}
        if self.cookie:
            headers["cookie"] = self.cookie
        if self.csrf and method != "GET":
            headers["x-csrf-token"] = self.csrf
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            payload = r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if r.status == 200 and path == "/api/login":
            sc = r.getheader("set-cookie") or ""
            self.cookie = sc.split(";", 1)[0]
            self.csrf = json.loads(payload)["csrf"]
        return r.status, payload

    def call(self, label: str, method: str, path: str, body=None) -> tuple[int, object]:
        for _ in range(2):
            if self.cookie is None:
                st, _ = self._raw("POST", "/api/login", {"username": self.user, "password": PW})
                if st != 200:
                    raise RuntimeError(f"login {st}")
            t = time.monotonic()
            st, payload = self._raw(method, path, body)
            STATS.latency("api", (time.monotonic() - t) * 1000)
            if st == 401:
                self.cookie = None
                continue
            if st >= 500:
                STATS.error(f"api {label}: {st}")
            try:
                return st, json.loads(payload) if payload[:1] in (b"{", b"[") else payload
            except ValueError:
                return st, payload
        return 401, None


class Reader(threading.Thread):
    def __init__(self, port: int, user: str, work: Path) -> None:
        super().__init__(daemon=True, name=f"read-{user}")
        self.api = Api(port, user)
        self.user = user
        self.signed_path = work / f"signed-{user}.txt"

    def run(self) -> None:
        while not STOP.is_set():
            try:
                if not self.read_one():
                    STOP.wait(3.0)
            except (OSError, http.client.HTTPException) as e:
                STATS.error(f"api connection: {type(e).__name__}")
                STOP.wait(2.0)
            except Exception as e:  # noqa: BLE001
                STATS.error(f"reader: {type(e).__name__}: {str(e)[:60]}")
                STOP.wait(2.0)

    def read_one(self) -> bool:
        a = self.api
        st, wl = a.call("worklist", "GET", "/api/worklist?state=new&limit=10")
        if st != 200 or not wl.get("items"):
            return False
        item = random.choice(wl["items"])
        uid = item["study_uid"]
        st, _ = a.call("claim", "POST", f"/api/worklist/{uid}/claim")
        if st != 200:
            if st != 409:
                STATS.error(f"api claim: {st}")
            return True
        st, study = a.call("study", "GET", f"/api/studies/{uid}")
        if st != 200:
            return True
        series = study.get("series") or []
        if series:
            st, inst = a.call("instances", "GET", f"/api/series/{series[0]['series_uid']}/instances")
            if st == 200 and inst.get("instances"):
                ii = inst["instances"]
                for x in (ii[0], ii[len(ii) // 2]):
                    a.call("preview", "GET", f"/api/instances/{x['sop_instance_uid']}/preview")
                a.call("rendered", "GET",
                       f"/api/instances/{ii[len(ii) // 2]['sop_instance_uid']}/rendered?window_center=40&window_width=400&size=512")
        text = {"findings": f"Soak read by {self.user}.", "impression": "No acute findings."}
        a.call("draft", "PUT", f"/api/studies/{uid}/report/draft", text)
        st, rep = a.call("sign", "POST", f"/api/studies/{uid}/report/sign", text)
        if st == 200 and isinstance(rep, dict) and rep.get("report"):
            fsync_append(self.signed_path, f"{uid} {rep['report']['version']}")
            STATS.count("reports signed")
        elif st != 200:
            STATS.error(f"api sign: {st}")
        return True


# ---------------------------------------------------------------- video load


class Looped(threading.Thread):
    """Runs a load command again whenever it ends (a hub kill ends it)."""

    def __init__(self, name: str, make_cmd, env: dict, work: Path) -> None:
        super().__init__(daemon=True, name=name)
        self.make_cmd, self.env, self.label = make_cmd, env, name
        self.out = work / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def run(self) -> None:
        while not STOP.is_set():
            self.runs += 1
            with open(self.out, "a") as log:
                log.write(f"\n===== run {self.runs} at {now():.1f}s =====\n")
                log.flush()
                self.proc = subprocess.Popen(self.make_cmd(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
                self.proc.wait()
            if not STOP.is_set():
                STATS.count(f"{self.label} restarts")
                STOP.wait(3.0)

    def restart(self) -> None:
        """Ends the current run (its rooms died with the hub); the loop
        starts the next one."""
        p = self.proc
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)

    def delivered(self) -> list[str]:
        """Each completed run's delivery line ("delivered: A of N viewers ...")."""
        try:
            return re.findall(r"^delivered: .*$", self.out.read_text(errors="replace"), re.M)
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        p = self.proc
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


# ---------------------------------------------------------------- report


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))]


def windows(kind: str, secs: float, p: float) -> list[tuple[int, int, float | None]]:
    out = []
    lat = STATS.lat.get(kind, [])
    n = int(secs // WINDOW) + (1 if secs % WINDOW else 0)
    for w in range(n):
        xs = [ms for t, ms in lat if w * WINDOW <= t < (w + 1) * WINDOW]
        out.append((w, len(xs), pct(xs, p)))
    return out


def server_errors(log: Path) -> collections.Counter:
    c: collections.Counter = collections.Counter()
    pat = re.compile(r"\s(ERROR|WARN)\s+([\w:]+):\s+(.*)")
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in log.read_text(errors="replace").splitlines():
        m = pat.search(ansi.sub("", line))
        if m:
            msg = re.sub(r"\b[\w.:/-]*\d[\w.:/-]*\b", "#", m.group(3))[:90]
            c[f"{m.group(1)} {m.group(2)}: {msg}"] += 1
    return c


def index_uids(db: Path, data: Path) -> tuple[set[str], set[str]]:
    """(SOP UIDs in the index, those whose file is missing or empty)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    rows = con.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    con.close()
    have, missing = set(), set()
    for uid, rel in rows:
        have.add(uid)
        p = data / rel
        if not p.exists() or p.stat().st_size == 0:
            missing.add(uid)
    return have, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--secs", type=float, default=1800)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kills-hub", type=int, default=2)
    ap.add_argument("--kills-edge", type=int, default=2)
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--consultations", type=int, default=2)
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--study-every", type=float, default=45)
    ap.add_argument("--drain-secs", type=float, default=600)
    ap.add_argument("--json")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bin_ = str(Path(a.bin).resolve())

    # ---- hub
    hub_dir, edge_dir = work / "hub", work / "edge"
    for d in (hub_dir, edge_dir):
        d.mkdir(exist_ok=True)
    hub_dicom, hub_http, hub_sfu, relay_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    hub_metrics_port = free_port()
    clinics = [("t01", "T01_CT"), ("t02", "T02_CT"), ("t03", "T03_CT"), ("t04", "T04_HUBSIDE")]
    hub_cfg = hub_dir / "medrelay.toml"
    lines = [
        f'[relay]\nlisten = "127.0.0.1:{relay_port}"\nname = "medrelay-hub"\n',
        "[render]\nworkers = 1\n",
    ]
    for cid, ae in clinics:
        lines.append(f'[[clinic]]\nid = "{cid}"\nname = "Township {cid}"\nae_titles = ["{ae}"]\n')
    lines.append('[[hospital]]\nid = "city"\nname = "City Hospital"\nserves = ["t01", "t02", "t03", "t04"]\n')
    hub_cfg.write_text("\n".join(lines))
    hub_args = [
        bin_, "serve", "--config", str(hub_cfg), "--data-dir", str(hub_dir / "data"), "--cert-dir", str(hub_dir / "certs"),
        "--http-listen", f"127.0.0.1:{hub_http}", "--dicom-listen", f"127.0.0.1:{hub_dicom}",
        "--ae-title", "MEDRELAY", "--stable-after-secs", "5", "--min-free-bytes", "0",
        "--sfu-udp-listen", f"127.0.0.1:{hub_sfu}", "--metrics-listen", f"127.0.0.1:{hub_metrics_port}",
    ]
    for user, role, extra in [
        ("exp1", "expert", ["--hospital", "city"]), ("exp2", "expert", ["--hospital", "city"]),
        ("lecturer", "expert", ["--hospital", "city"]), ("viewer", "clinic", ["--clinic", "t01"]),
        ("cons-exp", "expert", ["--hospital", "city"]), ("cons-doc", "clinic", ["--clinic", "t02"]),
    ]:
        cli(bin_, hub_cfg, hub_dir / "data", hub_dir / "certs", "user", "add", user, "--role", role, *extra,
            "--password-stdin", stdin=PW + "\n")
    hub = Gateway("hub", hub_args, work, hub_http, f"http://127.0.0.1:{hub_metrics_port}/metrics")
    say("starting hub")
    hub.start()
    cli(bin_, hub_cfg, hub_dir / "data", hub_dir / "certs", "relay", "issue-edge", "--name", "t04-edge",
        "--clinic", "t04", "--out", str(edge_dir / "relay"))

    # ---- emulated WAN between the edge and the hub's relay port
    impair = subprocess.Popen(
        [str(REPO / ".cache" / "venv" / "bin" / "python"), str(REPO / "tests" / "support" / "udp_impair.py"),
         "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{relay_port}", "--delay-ms", "50",
         "--loss", "0.01", "--rate-kbps", "8000", "--seed", str(a.seed), "--idle-timeout", "3600"],
        stdout=subprocess.PIPE, text=True,
    )
    ready = impair.stdout.readline().split()
    link_port = int(ready[1])

    # ---- edge
    edge_dicom, edge_http, edge_sfu, edge_metrics = free_port(), free_port(), free_port(socket.SOCK_DGRAM), free_port()
    edge_cfg = edge_dir / "medrelay.toml"
    r = edge_dir / "relay"
    edge_cfg.write_text(
        f'role = "edge"\n\n[edge]\nhub = "127.0.0.1:{link_port}"\nhub_name = "medrelay-hub"\n'
        f'cert = "{r}/edge-cert.pem"\nkey = "{r}/edge-key.pem"\nhub_ca = "{r}/hub-ca.pem"\n'
        f'rate_mbit = 6\n\n[render]\nworkers = 1\n\n'
        f'[[clinic]]\nid = "t04"\nname = "Township t04"\nae_titles = ["T04_CT"]\n'
    )
    edge_args = [
        bin_, "serve", "--config", str(edge_cfg), "--data-dir", str(edge_dir / "data"), "--cert-dir", str(edge_dir / "certs"),
        "--http-listen", f"127.0.0.1:{edge_http}", "--dicom-listen", f"127.0.0.1:{edge_dicom}",
        "--ae-title", "MEDRELAY", "--stable-after-secs", "5", "--min-free-bytes", "0",
        "--sfu-udp-listen", f"127.0.0.1:{edge_sfu}", "--metrics-listen", f"127.0.0.1:{edge_metrics}",
    ]
    edge = Gateway("edge", edge_args, work, edge_http, f"http://127.0.0.1:{edge_metrics}/metrics")
    say("starting edge")
    edge.start()

    # ---- load
    maker = StudyMaker(a.slices)
    pushers = [
        Pusher("t01", "T01_CT", lambda: hub_dicom, maker, a.study_every, work, "pynetdicom", bin_),
        Pusher("t02", "T02_CT", lambda: hub_dicom, maker, a.study_every, work, "pynetdicom", bin_),
        Pusher("t03", "T03_CT", lambda: hub_dicom, maker, a.study_every, work, "storescu", bin_),
        Pusher("t04", "T04_CT", lambda: edge_dicom, maker, a.study_every, work, "medrelay", bin_),
    ]
    readers = [Reader(hub_http, "exp1", work), Reader(hub_http, "exp2", work)]
    cert = str(hub_dir / "certs" / "medrelay.crt")
    lenv = dict(os.environ, MEDRELAY_PRESENTER_PASSWORD=PW, MEDRELAY_VIEWER_PASSWORD=PW)
    help_text = subprocess.run([bin_, "loadtest", "--help"], capture_output=True, text=True).stdout
    loads = []
    if a.viewers > 0:
        loads.append(Looped("broadcast", lambda: [
            bin_, "loadtest", "--server", f"https://127.0.0.1:{hub_http}", "--ca", cert,
            "--presenter", "lecturer", "--viewer", "viewer", "--viewers", str(a.viewers),
            "--join-secs", "20", "--settle-secs", "5", "--secs", "240"], lenv, work))
    consult_mode = "--consultation" in help_text
    if a.consultations > 0 and consult_mode:
        for i in range(a.consultations):
            loads.append(Looped(f"consultation{i + 1}", lambda: [
                bin_, "loadtest", "--server", f"https://127.0.0.1:{hub_http}", "--ca", cert,
                "--consultation", "--presenter", "cons-exp", "--viewer", "cons-doc",
                "--secs", "240"], lenv, work))
    elif a.consultations > 0:
        say("this medrelay loadtest has no --consultation mode: consultations not loaded")

    for t in [*pushers, *readers, *loads]:
        t.start()

    # ---- kills at random moments in the first 80 % of the run
    plan = sorted([(rng.uniform(0.1, 0.5) * a.secs, "hub") for _ in range(a.kills_hub)]
                  + [(rng.uniform(0.1, 0.5) * a.secs, "edge") for _ in range(a.kills_edge)])
    say(f"kills planned at {[(round(t), w) for t, w in plan]}")
    kills = []
    start = now()
    next_sample = 0.0
    while now() - start < a.secs:
        if plan and now() - start >= plan[0][0]:
            _, who = plan.pop(0)
            g = hub if who == "hub" else edge
            say(f"kill -9 {who}")
            g.kill9()
            down = rng.uniform(1, 5)
            time.sleep(down)
            t = time.monotonic()
            g.start()
            if who == "hub":
                for ld in loads:
                    ld.restart()
            kills.append({"who": who, "at_s": round(now() - start, 1), "down_s": round(down, 1),
                          "restart_s": round(time.monotonic() - t, 1)})
            say(f"{who} back after {down:.1f} s down, ready in {time.monotonic() - t:.1f} s")
        if now() >= next_sample:
            hub.sample()
            edge.sample()
            next_sample = now() + 5
            if int(now()) % 60 < 5:
                say(f"acked {sum(v for k, v in STATS.counts.items() if k.startswith('instances acked'))}, "
                    f"signed {STATS.counts['reports signed']}, errors {sum(STATS.errors.values())}")
        time.sleep(0.5)
    run_secs = now() - start

    # ---- stop the load, drain, verify
    say("stopping the load")
    STOP.set()
    for ld in loads:
        ld.stop()
    for t in [*pushers, *readers, *loads]:
        t.join(timeout=120)
    hub.sample()
    edge.sample()
    acked = {c: set(read_lines(work / f"acked-{c}.txt")) for c, _ in clinics}
    signed = [tuple(x.split()) for r in readers for x in read_lines(r.signed_path)]

    say("waiting for the edge to relay what it holds")
    deadline = time.monotonic() + a.drain_secs
    while time.monotonic() < deadline:
        hub_have, _ = index_uids(hub_dir / "data" / "index.db", hub_dir / "data")
        if acked["t04"] <= hub_have:
            break
        time.sleep(5)
    edge.terminate()
    hub.terminate()
    impair.terminate()

    hub_have, hub_missing = index_uids(hub_dir / "data" / "index.db", hub_dir / "data")
    edge_have, edge_missing = index_uids(edge_dir / "data" / "index.db", edge_dir / "data")
    direct = acked["t01"] | acked["t02"] | acked["t03"]
    lost_hub = (direct - hub_have) | (direct & hub_missing)
    lost_edge = (acked["t04"] - edge_have) | (acked["t04"] & edge_missing)
    not_relayed = acked["t04"] - hub_have
    con = sqlite3.connect(f"file:{hub_dir / 'data' / 'index.db'}?mode=ro", uri=True)
    have_reports = {(u, str(v)): s for u, v, s in con.execute("SELECT study_uid, version, status FROM reports")}
    con.close()
    lost_reports = [s for s in signed if have_reports.get(s) not in ("signed", "amended")]

    # ---- report
    def life_rows(g: Gateway) -> list[dict]:
        rows = []
        for life in g.lives:
            s = life["samples"]
            if not s:
                continue
            base = next((x for x in s if x[0] - life["start"] >= WARMUP), s[0])
            end = s[-1]
            rows.append({
                "pid": life["pid"], "start_s": round(life["start"], 1),
                "end_s": round(life["end"] or end[0], 1), "how": life["how"],
                "rss_mb_base": round(base[1] / 1e6, 1) if base[1] else None,
                "rss_mb_end": round(end[1] / 1e6, 1) if end[1] else None,
                "tasks_base": base[2], "tasks_end": end[2], "fds_base": base[3], "fds_end": end[3],
                "lived_s": round(end[0] - life["start"], 1),
            })
        return rows

    def growth(rows: list[dict], key: str) -> float | None:
        if not rows:
            return None
        last = rows[-1]
        b, e = last.get(f"{key}_base"), last.get(f"{key}_end")
        return None if not b or e is None else (e - b) / b

    hub_lives, edge_lives = life_rows(hub), life_rows(edge)
    result = {
        "secs": round(run_secs), "seed": a.seed, "kills": kills,
        "instances_acked": {c: len(v) for c, v in acked.items()},
        "lost_acked_hub": len(lost_hub), "lost_acked_edge": len(lost_edge),
        "not_relayed_after_drain": len(not_relayed),
        "reports_signed": len(signed), "reports_lost": len(lost_reports),
        "hub_lives": hub_lives, "edge_lives": edge_lives,
        "hub_rss_growth": growth(hub_lives, "rss_mb"), "hub_tasks_growth": growth(hub_lives, "tasks"),
        "edge_rss_growth": growth(edge_lives, "rss_mb"), "edge_tasks_growth": growth(edge_lives, "tasks"),
        "cstore_ack_p99_ms": windows("c-store ack", run_secs, 0.99),
        "api_p95_ms": windows("api", run_secs, 0.95),
        "client_errors": dict(STATS.errors.most_common()), "counts": dict(STATS.counts),
        "server_errors": {"hub": dict(server_errors(hub.log_path).most_common(25)),
                          "edge": dict(server_errors(edge.log_path).most_common(25))},
        "consultations_loaded": consult_mode and a.consultations > 0,
        "load_runs": {ld.label: ld.runs for ld in loads},
        "load_delivery": {ld.label: ld.delivered() for ld in loads},
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))

    print()
    print(f"== soak: {result['secs']} s, seed {a.seed}, kills: " +
          ", ".join(f"{k['who']}@{k['at_s']}s" for k in kills))
    print(f"instances acked: {result['instances_acked']}")
    print(f"acked instances lost: hub {len(lost_hub)}, edge {len(lost_edge)} (goal 0); "
          f"acked at the edge but not at the hub after the drain: {len(not_relayed)}")
    print(f"signed reports: {len(signed)}, lost {len(lost_reports)} (goal 0)")
    for name, rows, gr, gt in (("hub", hub_lives, result["hub_rss_growth"], result["hub_tasks_growth"]),
                               ("edge", edge_lives, result["edge_rss_growth"], result["edge_tasks_growth"])):
        for x in rows:
            print(f"{name} pid {x['pid']} {x['start_s']}-{x['end_s']} s ({x['how'] or 'SIGTERM'}): "
                  f"RSS {x['rss_mb_base']} -> {x['rss_mb_end']} MB, tasks {x['tasks_base']} -> {x['tasks_end']}, "
                  f"fds {x['fds_base']} -> {x['fds_end']} (from +{int(WARMUP)} s or its first sample)")
        fmt = lambda v: "n/a" if v is None else f"{v * 100:+.1f} %"
        print(f"{name} final incarnation growth: RSS {fmt(gr)}, tasks {fmt(gt)} (goal <= +10 %)")
    print("window   C-STORE acks  p99 ms   API calls  p95 ms")
    for (w, n1, p1), (_, n2, p2) in zip(result["cstore_ack_p99_ms"], result["api_p95_ms"]):
        f = lambda v: "-" if v is None else f"{v:.1f}"
        print(f"{w * 5:>3}-{(w + 1) * 5:<3}min {n1:>9} {f(p1):>8} {n2:>10} {f(p2):>8}")
    print("client-side errors by kind:", json.dumps(result["client_errors"], indent=1))
    print("server ERROR/WARN lines by kind:", json.dumps(result["server_errors"], indent=1, ensure_ascii=False))
    print("load runs:", result["load_runs"], "counts:", result["counts"])
    for label, lines_ in result["load_delivery"].items():
        for i, x in enumerate(lines_):
            print(f"{label} run {i + 1}: {x}")
    ok = not lost_hub and not lost_edge and not lost_reports
    print("RESULT:", "PASS (nothing acknowledged or signed was lost)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
