"""Drives medrelay's consultation WebSocket with bad input and reports what
came back, so the Rust test can assert on the server's answers.

usage: signal_probe.py --ws wss://127.0.0.1:PORT/ws/consult --scenario NAME [--token T]
                       [--cookie mr_session=...]  (the session of the token's account)
                       [--presenter-token T --presenter-cookie C]  (scenario floor: a second socket presents)
                       [--hold-secs S] [--silent]  (scenario hold: stay joined until closed or
                       S seconds, with keep-alives unless --silent)

Prints one JSON object: {"messages": [...], "close_code": int|null, "pong_after": bool}
(scenario hold adds "held_secs": seconds from `joined` to the close, and
writes "JOINED" to stderr once joined).
"""
import argparse
import asyncio
import json
import ssl
import sys

import websockets


async def recv_json(ws, timeout=5.0):
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)


async def drain_until(ws, pred, timeout=5.0):
    """Receives messages until pred(msg) is true; returns all received."""
    got = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        m = await recv_json(ws, end - loop.time())
        got.append(m)
        if pred(m):
            break
    return got


def connect(args, ctx, cookie, ping_interval=20):
    """The signaling socket, with the session cookie as a browser sends it
    with the WebSocket handshake."""
    return websockets.connect(
        args.ws,
        ssl=ctx,
        max_size=1 << 20,
        open_timeout=10,
        additional_headers={"Cookie": cookie} if cookie else None,
        ping_interval=ping_interval,
    )


async def run(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {"messages": [], "close_code": None, "pong_after": False}
    try:
        # --silent: not even the library's own WebSocket pings.
        async with connect(args, ctx, args.cookie, ping_interval=None if args.silent else 20) as ws:
            s = args.scenario
            if s == "garbage_first":
                await ws.send("{not json")
            elif s == "offer_first":
                await ws.send(json.dumps({"type": "offer", "pc": "pub", "sdp": "v=0", "tracks": {}}))
            elif s == "token":
                await ws.send(json.dumps({"type": "join", "token": args.token}))
            elif s == "joined_then_garbage":
                await ws.send(json.dumps({"type": "join", "token": args.token}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "joined")
                for bad in ["{{{", json.dumps({"type": "fly"}), json.dumps({"type": "mute", "source": 3})]:
                    await ws.send(bad)
                    out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(b"\x00\x01binary")
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                bogus = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nthis is not sdp\r\n"
                await ws.send(json.dumps({"type": "offer", "pc": "pub", "sdp": bogus, "tracks": {"0": "camera"}}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(json.dumps({"type": "offer", "pc": "pub", "sdp": "garbage", "tracks": {}}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(json.dumps({"type": "answer", "pc": "sub", "sdp": "v=0"}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(json.dumps({"type": "offer", "pc": "sub", "sdp": "v=0", "tracks": {}}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(json.dumps({"type": "ping"}))
                msgs = await drain_until(ws, lambda m: m.get("type") == "pong")
                out["messages"] += msgs
                out["pong_after"] = any(m.get("type") == "pong" for m in msgs)
                await ws.send(json.dumps({"type": "leave"}))
            elif s == "viewer_offers_media":
                await ws.send(json.dumps({"type": "join", "token": args.token}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "joined")
                sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
                await ws.send(json.dumps({"type": "offer", "pc": "pub", "sdp": sdp, "tracks": {"0": "camera"}}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "error")
                await ws.send(json.dumps({"type": "ping"}))
                msgs = await drain_until(ws, lambda m: m.get("type") == "pong")
                out["messages"] += msgs
                out["pong_after"] = any(m.get("type") == "pong" for m in msgs)
                await ws.send(json.dumps({"type": "leave"}))
            elif s == "floor":
                # --presenter-token presents, --token watches. The viewer's
                # socket is `ws`; the presenter's is a second connection.
                out["presenter"] = []
                async with connect(args, ctx, args.presenter_cookie) as pw:
                    async def p_send(m):
                        await pw.send(json.dumps(m))

                    async def p_until(pred, timeout=5.0):
                        got = await drain_until(pw, pred, timeout)
                        out["presenter"].extend(got)
                        return got[-1] if got and pred(got[-1]) else None

                    async def v_send(m):
                        await ws.send(json.dumps(m))

                    async def v_until(pred, timeout=5.0):
                        got = await drain_until(ws, pred, timeout)
                        out["messages"].extend(got)
                        return got[-1] if got and pred(got[-1]) else None

                    def is_type(t):
                        return lambda m: m.get("type") == t

                    await p_send({"type": "join", "token": args.presenter_token})
                    await p_until(is_type("joined"))
                    await v_send({"type": "join", "token": args.token})
                    joined = await v_until(is_type("joined"))
                    me = joined["me"]["id"]
                    await p_send({"type": "live", "live": True})
                    await v_until(is_type("live"))
                    await v_send({"type": "hand", "raised": True})
                    await v_until(is_type("hand"))
                    await v_send({"type": "question", "text": "  Is the fracture displaced?  "})
                    q = await v_until(is_type("question_state"))
                    await v_send({"type": "question", "text": ""})
                    await v_until(is_type("error"))
                    await v_send({"type": "promote", "participant": me})
                    await v_until(is_type("error"))
                    await p_send({"type": "hand", "raised": True})
                    await p_until(is_type("error"))
                    await p_until(lambda m: m.get("type") == "queue" and m.get("questions") and m.get("hands"))
                    await p_send({"type": "question_done", "id": q["id"], "answered": True})
                    await v_until(lambda m: m.get("type") == "question_state" and m.get("state") != "open")
                    await p_send({"type": "promote", "participant": me})
                    await v_until(is_type("floor"))
                    await p_send({"type": "demote", "participant": me})
                    await v_until(lambda m: m.get("type") == "floor" and not m.get("granted"))
                    await p_send({"type": "live", "live": False})
                    await v_until(is_type("live"))
                    await v_send({"type": "ping"})
                    msgs = await drain_until(ws, is_type("pong"))
                    out["messages"] += msgs
                    out["pong_after"] = any(m.get("type") == "pong" for m in msgs)
            elif s == "hold":
                # Joined, then nothing but keep-alives until the server ends it.
                await ws.send(json.dumps({"type": "join", "token": args.token}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") in ("joined", "error"))
                if out["messages"] and out["messages"][-1].get("type") == "joined":
                    print("JOINED", file=sys.stderr, flush=True)
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    try:
                        while loop.time() - t0 < args.hold_secs:
                            try:
                                out["messages"].append(await recv_json(ws, 5.0))
                            except asyncio.TimeoutError:
                                if not args.silent:
                                    await ws.send(json.dumps({"type": "ping"}))
                    except websockets.ConnectionClosed:
                        pass
                    out["held_secs"] = loop.time() - t0
            elif s == "oversized":
                await ws.send(json.dumps({"type": "join", "token": args.token}))
                out["messages"] += await drain_until(ws, lambda m: m.get("type") == "joined")
                await ws.send(json.dumps({"type": "chat", "text": "x" * 200_000}))
            else:
                raise SystemExit(f"unknown scenario {s}")
            # Collect whatever else arrives until the server closes or goes quiet.
            try:
                while True:
                    out["messages"].append(await recv_json(ws, 3.0))
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                pass
            out["close_code"] = ws.close_code
    except websockets.ConnectionClosed as e:
        out["close_code"] = e.rcvd.code if e.rcvd else None
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ws", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--presenter-token", default="")
    p.add_argument("--cookie", default="", help="Cookie header of the token's account session")
    p.add_argument("--presenter-cookie", default="")
    p.add_argument("--hold-secs", type=float, default=30.0)
    p.add_argument("--silent", action="store_true", help="hold: send no keep-alive")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
