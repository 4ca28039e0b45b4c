#!/usr/bin/env python3
"""A login flood: COUNT logins with random usernames and passwords, all fired
at once (one thread each, released together), each from its own loopback
source address (127.1.x.y; Linux routes all of 127/8 to lo), so no per-user
or per-address limit of the server applies and only its global bounds do.

    login_flood.py --port 8443 --count 500

Output (stdout, one JSON object): {"codes": {"401": n, "503": m, ...},
"retry_after_missing": k (refusals 429/503 without a Retry-After header),
"errors": [first few transport errors], "seconds": wall time}.
Exit code 0 unless the arguments are wrong.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import ssl
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    lock = threading.Lock()
    codes: dict[str, int] = {}
    errors: list[str] = []
    missing = [0]
    start = threading.Barrier(a.count)

    def one(i: int) -> None:
        src = f"127.1.{i // 250}.{i % 250 + 1}"
        body = json.dumps({"username": "u" + secrets.token_hex(6), "password": secrets.token_hex(8)})
        try:
            start.wait(timeout=a.timeout)
        except threading.BrokenBarrierError:
            pass
        try:
            c = http.client.HTTPSConnection(
                a.host, a.port, timeout=a.timeout, context=ctx, source_address=(src, 0)
            )
            c.request("POST", "/api/login", body=body, headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            key = str(r.status)
            lacks = r.status in (429, 503) and not r.getheader("retry-after")
            c.close()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            key = "error"
            with lock:
                if len(errors) < 5:
                    errors.append(f"{src}: {e!r}")
            lacks = False
        with lock:
            codes[key] = codes.get(key, 0) + 1
            if lacks:
                missing[0] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.timeout + 10)
    print(
        json.dumps(
            {
                "codes": codes,
                "retry_after_missing": missing[0],
                "errors": errors,
                "seconds": round(time.monotonic() - t0, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
