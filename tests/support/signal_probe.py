"""Drives medrelay's consultation WebSocket with bad input and reports what
came back, so the Rust test can assert on the server's answers.

usage: signal_probe.py --ws wss://127.0.0.1:PORT/ws/consult --scenario NAME [--token T]
                       [--cookie mr_session=...]  (the session of the token's account)
                       [--presenter-token T --presenter-cookie C]  (scenarios floor, flood,
                                               stall, viewers: a second socket presents)
                       [--other-token T --other-cookie C]  (scenarios stall, viewers: a
                                               third participant)
                       [--hold-secs S] [--silent]  (scenario hold: stay joined until closed or
                       S seconds, with keep-alives unless --silent)

Prints one JSON object: {"messages": [...], "close_code": int|null, "pong_after": bool}
and, by scenario, the other sockets' messages (scenario hold adds "held_secs":
seconds from `joined` to the close, and writes "JOINED" to stderr once joined).

Every socket carries the session cookie of the account its token was issued
to, as a browser does with the WebSocket handshake.

Scenarios with a second participant:
- flood: the --token viewer overshoots its budget once ("overshoot": what
  it was sent), then sends pings as fast as it can while the presenter
  waits, then tries to join again at once ("rejoin", "rejoin_close_code");
  then the presenter pings. "messages"/"close_code" are the flooder's.
- stall: the --presenter-token socket (small receive window) stops reading
  after sending pub offers, whose answers are large; then the second
  presenter (--other-token) toggles its mute, each a message to the stalled
  page, within the rate limit, until it is told the stalled page left; then
  the stalled page reads what reached it. "messages"/"close_code" are the
  stalled socket's; "witness" the other presenter's.
- viewers: viewer A (--token) mutes, raises a hand and asks before, during
  and after its turn to speak (given and ended by the presenter); "other"
  is everything viewer B (--other-token) was sent, "a" is A's id.
"""
import argparse
import asyncio
import json
import socket
import ssl
import sys
import threading
import time
from urllib.parse import urlparse

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


def is_type(t):
    return lambda m: m.get("type") == t


def join_msg(token):
    return json.dumps({"type": "join", "token": token})


async def answers_ping(ws, got):
    """Whether the session of `ws` still works: a ping is answered."""
    await ws.send(json.dumps({"type": "ping"}))
    msgs = await drain_until(ws, is_type("pong"))
    got += msgs
    return any(m.get("type") == "pong" for m in msgs)


async def pub_offer():
    """A real pub offer (aiortc): two sending video m-lines and fourteen
    receive-only ones, the most the server takes; its answer is large."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(2):
        pc.addTransceiver("video", direction="sendonly")
    for _ in range(14):
        pc.addTransceiver("video", direction="recvonly")
    offer = await pc.createOffer()
    await pc.close()
    return {"type": "offer", "pc": "pub", "sdp": offer.sdp, "tracks": {"0": "camera", "1": "screen"}}


def small_window_socket(url):
    """A TCP connection that takes little in flight: a small receive buffer,
    and a small MSS so the server's send buffer stays small too (Linux sizes
    it from the peer's segment size)."""
    u = urlparse(url)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect((u.hostname, u.port))
    return s


class StalledClient:
    """A WebSocket client that reads only when told to, over a blocking TLS
    socket and the websockets sans-I/O protocol: nothing reads ahead (an
    asyncio connection would keep reading into its own buffers), so when it
    stops reading, what the server sends piles up on the server's side."""

    def __init__(self, url, ctx, cookie):
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self.sock = ctx.wrap_socket(small_window_socket(url), server_hostname="127.0.0.1")
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        request = self.proto.connect()
        if cookie:
            request.headers["Cookie"] = cookie
        self.proto.send_request(request)
        self.flush()
        while self.proto.state is State.CONNECTING:
            self.read(10.0)

    def flush(self):
        for d in self.proto.data_to_send():
            if d:
                self.sock.sendall(d)

    def send(self, obj):
        self.proto.send_text(json.dumps(obj).encode())
        self.flush()

    def read(self, timeout):
        """Reads once; returns the JSON messages it completed, None at the end."""
        from websockets.frames import Opcode

        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        self.flush()
        out = []
        for e in self.proto.events_received():
            if getattr(e, "opcode", None) is Opcode.TEXT:
                out.append(json.loads(e.data))
        return out if data else None

    def read_until(self, pred, out, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for m in self.read(end - time.monotonic()) or []:
                out.append(m)
                if pred(m):
                    return m
        raise TimeoutError("no such message")

    def read_to_close(self, out, timeout):
        """Reads until the server closes; returns its close code."""
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                got = self.read(end - time.monotonic())
                if got is None:
                    break
                out.extend(got)
                if self.proto.close_rcvd is not None:
                    break
        except (socket.timeout, OSError):
            pass
        rcvd = self.proto.close_rcvd
        return rcvd.code if rcvd is not None else None


async def read_to_close(ws, out, timeout=3.0):
    """Appends what arrives until the server closes or goes quiet; returns the close code."""
    try:
        while True:
            out.append(await recv_json(ws, timeout))
    except (asyncio.TimeoutError, websockets.ConnectionClosed):
        pass
    return ws.close_code


async def flood(args, ctx, out):
    out["presenter"] = []
    out["overshoot"] = []
    async with connect(args, ctx, args.presenter_cookie) as pw, connect(args, ctx, args.cookie) as vw:
        await pw.send(join_msg(args.presenter_token))
        out["presenter"] += await drain_until(pw, is_type("joined"))
        await vw.send(join_msg(args.token))
        out["messages"] += await drain_until(vw, is_type("joined"))
        me = out["messages"][-1]["me"]["id"]
        # Overshoot once: 110 pings at once (the budget is 100), then a
        # pause, then one more ping.
        for _ in range(110):
            await vw.send(json.dumps({"type": "ping"}))
        try:
            while True:
                out["overshoot"].append(await recv_json(vw, 2.0))
        except asyncio.TimeoutError:
            pass
        await vw.send(json.dumps({"type": "ping"}))
        out["overshoot"] += await drain_until(vw, is_type("pong"))
        # Then a flood.
        sent = 0

        async def send_all():
            nonlocal sent
            try:
                for _ in range(1000):
                    await vw.send(json.dumps({"type": "ping"}))
                    sent += 1
            except websockets.ConnectionClosed:
                pass

        sender = asyncio.ensure_future(send_all())
        out["close_code"] = await read_to_close(vw, out["messages"], 10.0)
        await sender
        out["sent"] = sent
        # Straight back in with the same token: not yet.
        out["rejoin"] = []
        async with connect(args, ctx, args.cookie) as again:
            await again.send(join_msg(args.token))
            out["rejoin_close_code"] = await read_to_close(again, out["rejoin"], 10.0)
        # The presenter was told the flooder left, and its own session works.
        try:
            out["presenter"] += await drain_until(
                pw, lambda m: m.get("type") == "participant_left" and m.get("id") == me, 10.0
            )
        except asyncio.TimeoutError:
            out["presenter_timeout"] = True
        out["pong_after"] = await answers_ping(pw, out["presenter"])


async def stall(args, ctx, out):
    out["witness"] = []
    async with connect(args, ctx, args.other_cookie) as ww:
        await ww.send(join_msg(args.other_token))
        out["witness"] += await drain_until(ww, is_type("queue"))
        offer = await pub_offer()
        ready = threading.Event()
        left = threading.Event()
        sent = {"offer": 0}

        def stalled():
            c = StalledClient(args.ws, ctx, args.presenter_cookie)
            c.send({"type": "join", "token": args.presenter_token})
            c.read_until(is_type("queue"), out["messages"])
            out["me"] = next(m for m in out["messages"] if m.get("type") == "joined")["me"]["id"]
            # From here on it reads nothing: 18 offers (90 tokens of its
            # 100), whose ~200 KB of answers are more than the buffers
            # between the server and this page hold.
            try:
                for _ in range(18):
                    c.send(offer)
                    sent["offer"] += 1
            except OSError:
                pass
            ready.set()
            left.wait(30)
            # Reading again: what had reached the page, then how it ended.
            out["close_code"] = c.read_to_close(out["messages"], 15.0)

        async def witness():
            try:
                await asyncio.to_thread(ready.wait, 30)
                await asyncio.sleep(1.0)
                me = out.get("me")
                # The other presenter toggles its mute, each one a message
                # to the stalled page: 90 of them, within its budget.
                started = time.monotonic()
                for i in range(90):
                    await ww.send(json.dumps({"type": "mute", "source": "mic", "muted": i % 2 == 0}))
                try:
                    out["witness"] += await drain_until(
                        ww, lambda m: m.get("type") == "participant_left" and m.get("id") == me, 20.0
                    )
                except asyncio.TimeoutError:
                    out["witness_timeout"] = True
                out["cut_after_s"] = round(time.monotonic() - started, 1)
            finally:
                left.set()

        await asyncio.gather(witness(), asyncio.to_thread(stalled))
        out["sent"] = sent
        out["pong_after"] = await answers_ping(ww, out["witness"])


async def viewers(args, ctx, out):
    out["other"] = []
    out["presenter"] = []
    async with connect(args, ctx, args.presenter_cookie) as pw, connect(args, ctx, args.cookie) as aw, connect(
        args, ctx, args.other_cookie
    ) as bw:

        async def p_until(pred, timeout=5.0):
            out["presenter"].extend(await drain_until(pw, pred, timeout))

        async def a_until(pred, timeout=5.0):
            out["messages"].extend(await drain_until(aw, pred, timeout))

        async def a_send(m):
            await aw.send(json.dumps(m))

        await pw.send(join_msg(args.presenter_token))
        await p_until(is_type("queue"))
        await aw.send(join_msg(args.token))
        await a_until(is_type("joined"))
        a = out["messages"][-1]["me"]["id"]
        out["a"] = a
        await bw.send(join_msg(args.other_token))
        out["other"] += await drain_until(bw, is_type("joined"))
        await pw.send(json.dumps({"type": "live", "live": True}))
        await a_until(is_type("live"))

        async def a_acts(tag):
            await a_send({"type": "mute", "source": "mic", "muted": True})
            await a_send({"type": "mute", "source": "mic", "muted": False})
            await a_send({"type": "hand", "raised": True})
            await a_until(is_type("hand"))
            await a_send({"type": "question", "text": f"question {tag}"})
            await a_until(is_type("question_state"))
            # The presenter heard of the second mute: everything before it
            # was relayed by then.
            await p_until(
                lambda m: m.get("type") == "mute" and m.get("participant") == a and m.get("muted") is False
            )

        await a_acts("before")
        await pw.send(json.dumps({"type": "promote", "participant": a}))
        await a_until(is_type("floor"))
        await a_acts("during")
        await pw.send(json.dumps({"type": "demote", "participant": a}))
        await a_until(lambda m: m.get("type") == "floor" and not m.get("granted"))
        await a_acts("after")
        await pw.send(json.dumps({"type": "live", "live": False}))
        await p_until(is_type("live"))
        # Everything B was sent, up to the end of the broadcast's part.
        out["other"] += await drain_until(bw, lambda m: m.get("type") == "live" and not m.get("live"), 10.0)
        out["pong_after"] = await answers_ping(bw, out["other"])


async def run(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {"messages": [], "close_code": None, "pong_after": False}
    if args.scenario in ("flood", "stall", "viewers"):
        try:
            await {"flood": flood, "stall": stall, "viewers": viewers}[args.scenario](args, ctx, out)
        except websockets.ConnectionClosed as e:
            out["error"] = f"connection closed: {e}"
        print(json.dumps(out))
        return
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
    p.add_argument("--other-token", default="")
    p.add_argument("--other-cookie", default="")
    p.add_argument("--hold-secs", type=float, default=30.0)
    p.add_argument("--silent", action="store_true", help="hold: send no keep-alive")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
