#!/usr/bin/env python3
"""Helper for benches/reading.sh, part 2: the viewer's time to first image.

  reading_viewer.py wait-previews --base URL --user NAME --n 300 [--timeout 300]
        log in, find the study with N instances, wait until study.previews_ready >= N
  reading_viewer.py measure --direct URL --link URL --user NAME [--runs 3] [--grace-s 2]
                            [--tmp DIR] [--json OUT]
        headless Chromium through chromedriver (W3C WebDriver over HTTP, urllib):
        fresh browser profile per measurement, log in, clear the HTTP cache, open
        /viewer?study=UID and read window.mrTest.viewer.firstImageMs (navigation
        start = 0). Cases, interleaved run by run:
          link-cold : log in on the loopback origin, open the viewer on the link
                      origin (the session cookie is per host, not per port): the
                      viewer pays TCP + TLS setup over the link, like a new tab
          link-warm : log in over the link too, then open the viewer: the HTTP/2
                      connection of the login is reused (cache still cleared)
          loopback  : everything on the loopback origin
        and the anchor on the same link: GET /api/instances/{first sop}/file on a
        fresh HTTPS connection (what a viewer that downloads the DICOM file before
        drawing needs at least), plus the first slice's preview alone likewise.

Passwords come from $MR_BENCH_PASSWORD. Stdlib only.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--ignore-certificate-errors",
    "--window-size=1280,800",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

# Runs in every new document before its own scripts: room for all resource
# timings, and the moment the viewer's first full-fidelity image arrives.
PRELUDE = """
try { performance.setResourceTimingBufferSize(10000); } catch (e) {}
window.__bench = { fullMs: null };
(function poll() {
  const h = window.mrTest && window.mrTest.viewer;
  if (h && h.fullLoaded > 0 && window.__bench.fullMs === null) window.__bench.fullMs = performance.now();
  if (window.__bench.fullMs === null) setTimeout(poll, 5);
})();
"""

COLLECT = """
const h = (window.mrTest && window.mrTest.viewer) || {};
const nav = performance.getEntriesByType('navigation')[0] || {};
const res = performance.getEntriesByType('resource').map((r) => ({
  name: r.name, type: r.initiatorType, start: r.startTime, end: r.responseEnd,
  size: r.transferSize, body: r.encodedBodySize, proto: r.nextHopProtocol }));
return { first: h.firstImageMs ?? null, full: window.__bench ? window.__bench.fullMs : null,
  fullLoaded: h.fullLoaded ?? null, showing: h.showing ?? null, ready: !!h.ready,
  previewsLoaded: h.previewsLoaded ?? null, errors: (h.errors || []).slice(0, 5), hook: !!window.mrTest,
  nav: { size: nav.transferSize || 0, end: nav.responseEnd || 0, dcl: nav.domContentLoadedEventEnd || 0,
         load: nav.loadEventEnd || 0, proto: nav.nextHopProtocol || '' },
  res };
"""


def log(msg):
    print(f"reading_viewer: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- plain HTTPS (API, anchors)


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # medrelay's self-signed certificate
    return ctx


def https(base, timeout=120):
    u = urllib.parse.urlsplit(base)
    return http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=tls_ctx())


def login_cookie(base, user, password):
    c = https(base)
    c.request("POST", "/api/login", body=json.dumps({"username": user, "password": password}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"login {user}: HTTP {r.status}: {data[:200]!r}")
    for k, v in r.getheaders():
        if k.lower() == "set-cookie" and v.startswith("mr_session="):
            c.close()
            return v.split(";", 1)[0]
    raise SystemExit("no mr_session cookie")


def get_json(base, path, cookie):
    c = https(base)
    c.request("GET", path, headers={"Cookie": cookie})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def find_study(base, cookie, n):
    """The study with N instances (the pushed CT) and its first instance, as the viewer picks it."""
    for s in get_json(base, "/api/studies?limit=100", cookie)["studies"]:
        if s["num_instances"] == n:
            uid = s["study_uid"]
            d = get_json(base, f"/api/studies/{urllib.parse.quote(uid)}", cookie)
            series = [x for x in d["series"] if (x.get("num_instances") or 0) > 0] or d["series"]
            inst = get_json(base, f"/api/series/{urllib.parse.quote(series[0]['series_uid'])}/instances", cookie)["instances"]
            return uid, d, inst
    return None, None, None


def timed_get(base, path, cookie):
    """Fresh connection (TCP + TLS + request + whole body): ms, bytes, status."""
    t0 = time.perf_counter()
    c = https(base)
    c.connect()
    c.request("GET", path, headers={"Cookie": cookie, "Accept-Encoding": "identity"})
    r = c.getresponse()
    n = 0
    while True:
        b = r.read(65536)
        if not b:
            break
        n += len(b)
    ms = (time.perf_counter() - t0) * 1000
    c.close()
    return ms, n, r.status


# ---------------------------------------------------------------- WebDriver


class WebDriverError(Exception):
    pass


class Driver:
    """chromedriver on a free port, in its own process group (removed with everything it started)."""

    def __init__(self):
        exe = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen(
            [exe, f"--port={self.port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.call("GET", "/status", timeout=2).get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("chromedriver did not become ready")
            time.sleep(0.1)

    def call(self, method, path, body=None, timeout=90):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                out = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                v = json.loads(e.read()).get("value", {})
            except ValueError:
                v = {}
            raise WebDriverError(f"{method} {path}: {v.get('error', e.code)}: {str(v.get('message', ''))[:300]}") from None
        return out.get("value")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:  # the browsers it started, if any are left
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Browser:
    def __init__(self, driver, tmp):
        self.d = driver
        self.profile = tempfile.mkdtemp(prefix="profile-", dir=tmp)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": True,
                    "pageLoadStrategy": "normal",
                    "timeouts": {"script": 60000, "pageLoad": 120000, "implicit": 0},
                    "goog:chromeOptions": {
                        "binary": shutil.which("chromium") or "/usr/bin/chromium",
                        "args": CHROME_ARGS + [f"--user-data-dir={self.profile}"],
                    },
                }
            }
        }
        try:
            v = driver.call("POST", "/session", caps, timeout=120)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.sid = v["sessionId"]

    def s(self, method, path, body=None, timeout=130):
        return self.d.call(method, f"/session/{self.sid}{path}", body, timeout=timeout)

    def goto(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def cdp(self, cmd, params=None):
        return self.s("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params or {}})

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def wait(self, script, timeout, every=0.05):
        deadline = time.monotonic() + timeout
        while True:
            v = self.js(script)
            if v:
                return v
            if time.monotonic() > deadline:
                return None
            time.sleep(every)

    def quit(self):
        try:
            self.d.call("DELETE", f"/session/{self.sid}", timeout=30)
        except Exception:  # noqa: BLE001 - best effort; the driver's group is killed at the end
            pass
        shutil.rmtree(self.profile, ignore_errors=True)


# ---------------------------------------------------------------- one measurement


def viewer_run(driver, tmp, login_origin, view_origin, uid, user, password, grace_s):
    b = Browser(driver, tmp)
    try:
        b.cdp("Page.addScriptToEvaluateOnNewDocument", {"source": PRELUDE})
        b.goto(f"{login_origin}/login")
        b.type("[data-test=username]", user)
        b.type("[data-test=password]", password)
        b.click("[data-test=login]")
        if not b.wait("return location.pathname !== '/login' && document.readyState === 'complete'", 60):
            raise SystemExit("login did not navigate away from /login")
        b.cdp("Network.clearBrowserCache")
        b.goto("about:blank")
        t0 = time.monotonic()
        b.goto(f"{view_origin}/viewer?study={urllib.parse.quote(uid)}")
        got = b.wait(
            "const h = window.mrTest && window.mrTest.viewer;"
            "return h && (h.firstImageMs !== null && h.firstImageMs !== undefined || (h.errors || []).length > 0) ? 1 : 0",
            90,
        )
        wall_ms = (time.monotonic() - t0) * 1000
        if got:
            b.wait("return window.__bench && window.__bench.fullMs !== null ? 1 : 0", grace_s)
        r = b.js(COLLECT)
        r["wall_ms"] = wall_ms
        r["timed_out"] = not got
        return r
    finally:
        b.quit()


def short(url):
    """Path with long UIDs shortened, for printing."""
    path = urllib.parse.urlsplit(url).path
    return "/".join(("{uid}" if len(p) > 24 else p) for p in path.split("/"))


def summarize_run(r):
    first = r.get("first")
    res = r.get("res") or []
    before = [x for x in res if first is not None and x["end"] <= first]
    first_preview = min((x["end"] for x in res if "/preview" in x["name"] or "/rendered" in x["name"]), default=None)
    study_api = min((x["end"] for x in res if "/api/studies/" in x["name"] and "/reports" not in x["name"]), default=None)
    return {
        "first": first,
        "full": r.get("full"),
        "fullLoaded": r.get("fullLoaded"),
        "showing": r.get("showing"),
        "html_end": r["nav"]["end"],
        "study_api_end": study_api,
        "first_preview_end": first_preview,
        "bytes_first": r["nav"]["size"] + sum(x["size"] for x in before),
        "requests_first": 1 + len(before),
        "bytes_total": r["nav"]["size"] + sum(x["size"] for x in res),
        "requests_total": 1 + len(res),
        "proto": r["nav"]["proto"],
        "errors": r.get("errors"),
        "hook": r.get("hook"),
        "timed_out": r.get("timed_out"),
        "before_first": [
            (round(x["start"]), round(x["end"]), x["size"], short(x["name"])) for x in sorted(before, key=lambda x: x["start"])
        ],
    }


# ---------------------------------------------------------------- commands


def cmd_wait_previews(a):
    password = os.environ["MR_BENCH_PASSWORD"]
    cookie = login_cookie(a.base, a.user, password)
    deadline = time.monotonic() + a.timeout
    last = -1
    t0 = time.monotonic()
    while True:
        # the study list carries previews_ready too (and is what the pages poll)
        rows = [s for s in get_json(a.base, "/api/studies?limit=100", cookie)["studies"] if s["num_instances"] == a.n]
        uid = rows[0]["study_uid"] if rows else None
        ready = rows[0]["previews_ready"] if rows else 0
        if ready != last:
            last = ready
        if ready >= a.n:
            print(f"study {uid}: previews_ready {ready}/{a.n} after {time.monotonic() - t0:.1f} s of waiting")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"previews_ready {ready}/{a.n} after {a.timeout} s")
        time.sleep(0.5)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit=" ms", nd=0):
    return "-" if x is None else f"{x:.{nd}f}{unit}"


def cmd_measure(a):
    password = os.environ["MR_BENCH_PASSWORD"]
    os.makedirs(a.tmp, exist_ok=True)
    cookie = login_cookie(a.direct, a.user, password)
    uid, detail, inst = find_study(a.direct, cookie, a.n)
    if not uid:
        raise SystemExit(f"no study with {a.n} instances")
    sop = inst[0]["sop_instance_uid"]
    file_path = f"/api/instances/{urllib.parse.quote(sop)}/file"
    preview_path = f"/api/instances/{urllib.parse.quote(sop)}/preview"
    cases = {
        "link-cold": (a.direct, a.link),
        "link-warm": (a.link, a.link),
        "loopback": (a.direct, a.direct),
    }
    runs = {k: [] for k in cases}
    anchors = {k: {"file": [], "preview": []} for k in ("link", "loopback")}
    driver = Driver()
    try:
        for i in range(a.runs):
            for case, (lo, vo) in cases.items():
                r = viewer_run(driver, a.tmp, lo, vo, uid, a.user, password, a.grace_s)
                s = summarize_run(r)
                runs[case].append(s)
                log(
                    f"run {i + 1} {case:9s}: first image {fmt(s['first'])} (html {fmt(s['html_end'])}, study API "
                    f"{fmt(s['study_api_end'])}, first preview {fmt(s['first_preview_end'])}), full {fmt(s['full'])}, "
                    f"{s['bytes_first'] / 1024:.0f} KB in {s['requests_first']} requests before it, {s['bytes_total'] / 1024:.0f} KB "
                    f"in {s['requests_total']} by the end, {s['proto']}, showing {s['showing']}"
                    + (f", errors {s['errors']}" if s["errors"] else "") + (" TIMED OUT" if s["timed_out"] else "")
                )
            for where, base in (("link", a.link), ("loopback", a.direct)):
                ms, n, st = timed_get(base, file_path, cookie)
                if st != 200:
                    raise SystemExit(f"anchor {file_path}: HTTP {st}")
                anchors[where]["file"].append((ms, n))
                ms2, n2, st2 = timed_get(base, preview_path, cookie)
                anchors[where]["preview"].append((ms2, n2))
                log(f"run {i + 1} anchor {where:8s}: DICOM file {ms:.0f} ms ({n / 1024:.0f} KB), preview alone {ms2:.0f} ms ({n2 / 1024:.0f} KB)")
    finally:
        driver.stop()
    out = {"study_uid": uid, "sop": sop, "runs": runs, "anchors": anchors, "n_instances": a.n}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print_summary(out)


def print_summary(out):
    an = out["anchors"]
    fl = med([x[0] for x in an["link"]["file"]])
    fo = med([x[0] for x in an["loopback"]["file"]])
    pl = med([x[0] for x in an["link"]["preview"]])
    po = med([x[0] for x in an["loopback"]["preview"]])
    fkb = an["link"]["file"][0][1] / 1024 if an["link"]["file"] else 0
    pkb = an["link"]["preview"][0][1] / 1024 if an["link"]["preview"] else 0
    print("   case        TTFI median (runs)              full-fidelity  bytes before 1st image  by end of run | anchor DICOM file  TTFI/anchor  TTFI<=2s")
    for case, rs in out["runs"].items():
        firsts = [r["first"] for r in rs]
        m = med(firsts)
        anchor = fo if case == "loopback" else fl
        ratio = f"{m / anchor:.2f}" if m is not None and anchor else "-"
        ok = "-" if m is None else ("yes" if m <= 2000 else "NO")
        fulls = [r["full"] for r in rs]
        full = "not asked" if all(f is None for f in fulls) else fmt(med(fulls))
        print(
            f"   {case:10s} {fmt(m):>9s} {'(' + ', '.join(fmt(x, '', 0) for x in firsts) + ')':20s}  {full:>13s}"
            f"  {med([r['bytes_first'] for r in rs]) / 1024:8.0f} KB / {med([r['requests_first'] for r in rs]):3.0f} req"
            f"  {med([r['bytes_total'] for r in rs]) / 1024:7.0f} KB |"
            f" {fmt(anchor):>10s}        {ratio:>6s}      {ok}"
        )
    print(f"   anchor: GET /api/instances/{{sop}}/file of the first slice, fresh HTTPS connection: link {fmt(fl)} / loopback {fmt(fo)} ({fkb:.0f} KB)")
    print(f"   floor : the first slice's preview alone, fresh HTTPS connection: link {fmt(pl)} / loopback {fmt(po)} ({pkb:.0f} KB)")
    big = {}
    for r in out["runs"].get("link-cold", []):
        for _, _, size, name in r["before_first"]:
            big[name] = max(big.get(name, 0), size)
    top = sorted(big.items(), key=lambda kv: -kv[1])[:6]
    print("   largest transfers before the first image: " + ", ".join(f"{n} {v / 1024:.0f} KB" for n, v in top))
    cold = out["runs"].get("link-cold") or []
    if cold:
        r = sorted(cold, key=lambda x: x["first"] if x["first"] is not None else 1e12)[len(cold) // 2]
        print("   link-cold waterfall up to the first image (median run; start -> end ms, bytes on the wire):")
        print(f"      {0:5d} -> {r['html_end']:5.0f}  /viewer (HTML)")
        for start, end, size, name in r["before_first"]:
            print(f"      {start:5d} -> {end:5d}  {name} {size} B")
    for case, rs in out["runs"].items():
        r = sorted(rs, key=lambda x: x["first"] if x["first"] is not None else 1e12)[len(rs) // 2]
        print(
            f"   {case:10s} critical path (median run): HTML {fmt(r['html_end'])}, /api/studies/{{uid}} {fmt(r['study_api_end'])}, "
            f"first preview {fmt(r['first_preview_end'])}, drawn {fmt(r['first'])}; protocol {r['proto']}"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-previews")
    w.add_argument("--base", required=True)
    w.add_argument("--user", required=True)
    w.add_argument("--n", type=int, default=300)
    w.add_argument("--timeout", type=float, default=300)
    m = sub.add_parser("measure")
    m.add_argument("--direct", required=True)
    m.add_argument("--link", required=True)
    m.add_argument("--user", required=True)
    m.add_argument("--n", type=int, default=300)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--grace-s", type=float, default=2.0)
    m.add_argument("--tmp", default=tempfile.gettempdir())
    m.add_argument("--json")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.cmd == "wait-previews":
        cmd_wait_previews(a)
    else:
        cmd_measure(a)


if __name__ == "__main__":
    main()
