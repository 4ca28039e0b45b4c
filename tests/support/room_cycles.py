"""Create -> join -> leave cycles against medrelay's rooms API and signaling
WebSocket, as one logged-in expert would run them one after another.

usage: room_cycles.py --base https://127.0.0.1:PORT --cookie mr_session=... --csrf TOKEN
                      --cycles N [--invite USERNAME]

Each cycle: POST /api/rooms (the caller is the room's first participant),
open the signaling WebSocket with the session cookie, `join` with the
caller's token, wait for `joined`, send `leave`, close. Stops at the first
failure. Prints one JSON object:
{"done": cycles completed, "error": null|"what failed"}.
"""
import argparse
import asyncio
import http.client
import json
import ssl
import sys

import websockets


def tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Api:
    def __init__(self, base, cookie, csrf):
        host, port = base.removeprefix("https://").rstrip("/").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.cookie, self.csrf = cookie, csrf
        self.conn = None

    def post(self, path, body):
        data = json.dumps(body).encode()
        headers = {
            "Cookie": self.cookie,
            "X-CSRF-Token": self.csrf,
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
        }
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=tls(), timeout=30)
            try:
                self.conn.request("POST", path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, json.loads(r.read() or b"null")
            except (http.client.HTTPException, OSError):
                # A keep-alive connection the server closed: once more, fresh.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


async def cycle(api, ws_url, invite):
    body = {"title": "Cycle", "participants": [invite] if invite else []}
    code, v = api.post("/api/rooms", body)
    if code != 201:
        return f"create: HTTP {code} {v}"
    token = v["participants"][0]["token"]
    async with websockets.connect(
        ws_url, ssl=tls(), open_timeout=10, additional_headers={"Cookie": api.cookie}
    ) as ws:
        await ws.send(json.dumps({"type": "join", "token": token}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if m.get("type") == "joined":
                break
            if m.get("type") == "error":
                return f"join: {m}"
        await ws.send(json.dumps({"type": "leave"}))
    return None


async def run(a):
    api = Api(a.base, a.cookie, a.csrf)
    ws_url = a.base.replace("https://", "wss://").rstrip("/") + "/ws/consult"
    out = {"done": 0, "error": None}
    for i in range(a.cycles):
        try:
            err = await cycle(api, ws_url, a.invite)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            err = f"{type(e).__name__}: {e}"
        if err:
            out["error"] = f"cycle {i + 1}: {err}"
            break
        out["done"] += 1
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--cookie", required=True)
    p.add_argument("--csrf", required=True)
    p.add_argument("--cycles", type=int, required=True)
    p.add_argument("--invite", default="")
    asyncio.run(run(p.parse_args()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
