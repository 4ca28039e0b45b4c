#!/usr/bin/env python3
"""Clients that start a download and then never read: COUNT HTTPS/1.1
connections, each with a tiny receive buffer, send GET PATH with the session
cookie, read the status line and headers, and then stop reading for HOLD
seconds. Afterwards each connection is drained (bounded by --drain-timeout)
to see whether the server closed it.

    zip_stall.py --port 8443 --cookie mr_session=... --path /api/studies/UID/archive.zip \
                 --count 2 --hold 10

Output, stdout, two JSON lines:
  1. right after the headers: {"statuses": [200, ...], "retry_after": [..]}
  2. after the hold and drain: {"conns": [{"status", "bytes", "closed", "complete"}]}
     closed: the server ended the connection (EOF, reset or TLS EOF) before the
     drain timeout; complete: the chunked body ended with its terminating
     chunk (i.e. the server sent the whole response).
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cookie", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    a = ap.parse_args()

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    for _ in range(a.count):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A tiny window: the server's writes block as soon as its own send
        # buffer is full, as with a client that has stopped reading.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect((a.host, a.port))
        s = ctx.wrap_socket(raw, server_hostname=a.host)
        req = (
            f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nCookie: {a.cookie}\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        )
        s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        retry = next((l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("retry-after:")), None)
        conns.append({"sock": s, "status": status, "retry_after": retry})
    print(json.dumps({"statuses": [c["status"] for c in conns], "retry_after": [c["retry_after"] for c in conns]}), flush=True)

    time.sleep(a.hold)

    out = []
    for c in conns:
        s = c["sock"]
        total = 0
        tail = b""
        closed = False
        deadline = time.monotonic() + a.drain_timeout
        s.settimeout(5)
        while time.monotonic() < deadline:
            try:
                b = s.recv(1 << 16)
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                closed = True
                break
            except ssl.SSLError:
                closed = True
                break
            except socket.timeout:
                continue
            if not b:
                closed = True
                break
            total += len(b)
            tail = (tail + b)[-16:]
            if tail.endswith(b"0\r\n\r\n"):
                break  # the whole response arrived: the server never cut it
        out.append(
            {
                "status": c["status"],
                "bytes": total,
                "closed": closed,
                "complete": tail.endswith(b"0\r\n\r\n"),
            }
        )
        try:
            s.close()
        except OSError:
            pass
    print(json.dumps({"conns": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
