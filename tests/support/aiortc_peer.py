#!/usr/bin/env python3
"""Independent WebRTC participant (aiortc, no browser) for consultation rooms.

    aiortc_peer.py --ws wss://127.0.0.1:PORT/ws/consult --token TOKEN --cookie mr_session=...
                   [--duration 20] [--publish audio,video] [--chat TEXT]
                   [--send-dc JSON ...] [--mute SOURCE ...] [--until-frames N]
                   [--video-codec any|vp8|h264] [--media-via HOST:PORT]
                   [--ice-host 127.0.0.1|all] [--origin URL] [--out result.json]

Speaks web/PROTOCOL.md: JSON over one WebSocket (TLS not verified: self-signed
dev cert), `join`, then two peer connections:
  pub  we offer: data channel "room" (ordered) + the synthetic tracks named by
       --publish (audio|mic: 48 kHz sine, 20 ms frames; video|camera: moving
       pattern 640x360 @ 15 fps; screen: pattern 1280x720 @ 5 fps), sending
       `tracks` {mid: source}; the server's `answer` is applied.
  sub  the server offers (again whenever forwarded tracks change); we set it,
       add nothing, answer. Every received track is drained in a task and its
       frames counted per (participant, kind) using the offer's `tracks`
       mapping mid -> {participant, source, kind} (last known mapping per mid).
--chat TEXT and each --send-dc JSON are sent on "room" once it is open;
--mute SOURCE sends {"type":"mute","source":SOURCE,"muted":true} after join.
--media-via HOST:PORT rewrites the address/port of every UDP candidate the
server sends (SDP and trickle) so media goes through e.g. udp_impair.py.
--ice-host: the only local address aiortc gathers host candidates on
(default 127.0.0.1; "all" = aioice's default, which skips loopback). No STUN
or TURN server is ever used.

Runs --duration seconds after `joined` (or until some participant's
video_frames reaches --until-frames, or the server closes the socket), then
sends `leave`, closes, and writes one JSON object to --out (or stdout):

  {"joined": true, "me": {participant}, "room": {...},
   "received": {"<participant id>": {"video_frames": N, "audio_frames": M,
                "sources": {"camera": N, "mic": M}, "video_size": [w, h],
                "first_frame_s": 1.23}},
   "chat": [{"t":"chat","text":..,"from":..,"ts":..}], "views": [...],
   "dc_other": [...], "dc_open": true, "dc_sent": 1,
   "errors": [{"where": "server|connect|join|pub|sub|dc|close", "code": .., "message": ..}],
   "pub_state": "connected", "sub_state": "connected",
   "pub_ever_connected": true, "sub_ever_connected": true,
   "pub_tracks": {mid: source}, "sub_tracks": {mid: {...}}, "sub_offers": 2,
   "events": [{"t": 1.2, "type": "participant_joined", ...}, ...],
   "link": [{"t": 3.4, "state": "good", "bwe_kbps": 1500}],
   "stats": {"pub": {"audio": {"packets_sent":..,"bytes_sent":..,"rtt_s":..,
                      "remote_packets_lost":..}, "video": {...}},
             "sub": {"<mid>": {"packets_received":..,"packets_lost":..,"jitter":..}}},
   "close": {"code": 1000, "reason": ""}, "elapsed_s": 20.1}

Exit status 0 whatever was (not) received; 2 when the join failed (cannot
connect, `error` or close before `joined`), also recorded in the JSON with
"joined": false. SIGTERM ends the run early (still leaves and writes the
JSON). Logs at INFO to stderr; never logs the token.
"""
import argparse
import asyncio
import fractions
import json
import logging
import os
import signal
import ssl
import sys
import time

import av
import numpy as np
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger("aiortc_peer")

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


# ---------------------------------------------------------------- synthetic media
class PatternVideoTrack(MediaStreamTrack):
    """Moving pattern (diagonal ramp + bouncing box), built in yuv420p."""

    kind = "video"

    def __init__(self, width=640, height=360, fps=15):
        super().__init__()
        self.w, self.h, self.fps = width, height, fps
        self.n = 0
        self.t0 = None
        yy, xx = np.mgrid[0:height, 0:width]
        self.ramp = ((xx + yy) & 0xFF).astype(np.uint8)
        self.time_base = fractions.Fraction(1, VIDEO_CLOCK)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self.t0 is None:
            self.t0 = loop.time()
        wait = self.t0 + self.n / self.fps - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        n = self.n
        self.n += 1
        w, h = self.w, self.h
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y = buf[:h]
        np.add(self.ramp, (n * 3) & 0xFF, out=y, casting="unsafe")
        bw, bh = w // 8, h // 6
        bx = (n * 7) % (2 * (w - bw))
        bx = bx if bx < w - bw else 2 * (w - bw) - bx
        by = (n * 5) % (2 * (h - bh))
        by = by if by < h - bh else 2 * (h - bh) - by
        y[by:by + bh, bx:bx + bw] = 235
        buf[h:h + h // 4] = 128 + int(40 * np.sin(n / 20.0))  # U
        buf[h + h // 4:] = 128 + int(40 * np.cos(n / 20.0))  # V
        frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = self.time_base
        return frame


class SineAudioTrack(MediaStreamTrack):
    """440 Hz sine, mono s16, 48 kHz, 20 ms frames."""

    kind = "audio"

    def __init__(self, freq=440.0):
        super().__init__()
        self.n = 0
        self.t0 = None
        self.freq = freq
        self.time_base = fractions.Fraction(1, AUDIO_RATE)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self.t0 is None:
            self.t0 = loop.time()
        wait = self.t0 + self.n * AUDIO_SAMPLES / AUDIO_RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        start = self.n * AUDIO_SAMPLES
        self.n += 1
        t = (np.arange(start, start + AUDIO_SAMPLES) / AUDIO_RATE).astype(np.float64)
        samples = (np.sin(2 * np.pi * self.freq * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = self.time_base
        return frame


# ---------------------------------------------------------------- helpers
def restrict_host_candidates(ip):
    """Make aioice gather host candidates on `ip` only (it skips loopback by default)."""
    if ip in (None, "", "all"):
        return
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [ip]


def rewrite_candidate(cand, via):
    """`candidate:...` (without a=) with UDP address/port replaced by `via`."""
    parts = cand.split()
    if len(parts) >= 8 and parts[2].lower() == "udp":
        parts[4], parts[5] = via[0], str(via[1])
    return " ".join(parts)


def rewrite_sdp(sdp, via):
    if not via:
        return sdp
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            line = "a=" + rewrite_candidate(line[2:], via)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def parse_hostport(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def participant_id(p):
    if isinstance(p, dict):
        return str(p.get("id"))
    return str(p)


# ---------------------------------------------------------------- the peer
class Peer:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.ws = None
        self.pub = None
        self.sub = None
        self.dc = None
        self.sub_tracks = {}
        self.consumed = set()
        self.tasks = []
        self.reader = None
        self.done = asyncio.Event()
        self.leaving = False
        self.via = parse_hostport(args.media_via) if args.media_via else None
        self.ever = {"pub": False, "sub": False}
        self.r = {
            "joined": False, "me": None, "room": None, "received": {}, "chat": [],
            "views": [], "dc_other": [], "dc_open": False, "dc_sent": 0, "errors": [],
            "pub_state": None, "sub_state": None, "pub_tracks": {}, "sub_tracks": {},
            "sub_offers": 0, "events": [], "link": [], "stats": {}, "close": None,
        }

    def now(self):
        return round(time.monotonic() - self.t0, 3)

    def error(self, where, code, message):
        log.info("error [%s] %s: %s", where, code, message)
        self.r["errors"].append({"where": where, "code": code, "message": str(message)[:500]})

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    def new_pc(self, name):
        # No STUN/TURN (the default would be a public STUN server); max-bundle:
        # one ICE/DTLS transport per connection, as a single-port SFU expects.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))

        @pc.on("connectionstatechange")
        def _state():
            st = pc.connectionState
            log.info("%s connection state %s", name, st)
            self.r["events"].append({"t": self.now(), "type": f"{name}_state", "state": st})
            if st == "connected":
                self.ever[name] = True

        return pc

    # ------------------------------------------------------------ join
    async def connect_and_join(self):
        a = self.args
        ctx = None
        if a.ws.startswith("wss:"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        kwargs = {"ssl": ctx} if ctx else {}
        if a.origin:
            kwargs["origin"] = a.origin
        if a.cookie:
            # The join token works only with a session of its own account,
            # which a browser sends as its cookie with the handshake.
            kwargs["additional_headers"] = {"Cookie": a.cookie}
        try:
            async def _connect():
                return await websockets.connect(a.ws, max_size=1 << 20, open_timeout=10, **kwargs)

            self.ws = await asyncio.wait_for(_connect(), 15)
        except Exception as e:  # noqa: BLE001
            self.error("connect", type(e).__name__, e)
            return False
        log.info("connected to %s", a.ws)
        await self.send({"type": "join", "token": a.token})
        try:
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), 10)
                msg = json.loads(raw)
                typ = msg.get("type")
                if typ == "joined":
                    break
                if typ == "error":
                    self.error("join", msg.get("code"), msg.get("message"))
                    # a fatal error is followed by the server's close frame
                    try:
                        await asyncio.wait_for(self.ws.wait_closed(), 2)
                    except Exception:  # noqa: BLE001
                        pass
                    await self.close_ws()
                    self.record_close()
                    return False
                self.r["events"].append({"t": self.now(), **msg})
        except websockets.ConnectionClosed as e:
            self.record_close(e)
            self.error("join", "closed", f"socket closed before joined: {self.r['close']}")
            return False
        except Exception as e:  # noqa: BLE001
            self.error("join", type(e).__name__, e)
            await self.close_ws()
            return False
        self.r["joined"] = True
        self.r["me"] = msg.get("me")
        self.r["room"] = msg.get("room")
        self.r["participants"] = msg.get("participants")
        self.r["limits"] = msg.get("limits")
        log.info("joined as %s", participant_id(msg.get("me")))
        return True

    def record_close(self, exc=None):
        """Close code/reason the server sent (from the exception or the socket)."""
        rcvd = getattr(exc, "rcvd", None) if exc is not None else None
        if rcvd is not None:
            code, reason = rcvd.code, rcvd.reason
        else:
            code = getattr(self.ws, "close_code", None)
            reason = getattr(self.ws, "close_reason", None)
        self.r["close"] = {"code": code, "reason": reason}

    async def close_ws(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------ pub
    async def start_pub(self):
        a = self.args
        pc = self.pub = self.new_pc("pub")

        @pc.on("datachannel")
        def _dc(ch):
            self.r["events"].append({"t": self.now(), "type": "remote_datachannel", "label": ch.label})
            ch.on("message", self.dc_message)

        sources = []
        for item in [s.strip().lower() for s in a.publish.split(",") if s.strip()]:
            if item in ("audio", "mic"):
                sources.append(("mic", SineAudioTrack()))
            elif item in ("video", "camera"):
                sources.append(("camera", PatternVideoTrack(640, 360, 15)))
            elif item == "screen":
                sources.append(("screen", PatternVideoTrack(1280, 720, 5)))
            elif item != "none":
                raise SystemExit(f"unknown --publish item {item!r}")
        by_sender = {}
        for source, track in sources:
            t = pc.addTransceiver(track, direction="sendonly")
            by_sender[id(t)] = source
            if track.kind == "video" and a.video_codec != "any":
                caps = RTCRtpSender.getCapabilities("video").codecs
                want = a.video_codec.lower()
                prefs = [c for c in caps if c.mimeType.lower() in (f"video/{want}", "video/rtx")]
                t.setCodecPreferences(prefs)
        # The data channel must come after the transceivers: with max-bundle,
        # aiortc 1.16 discards the shared transport on the answer if the SCTP
        # transport was created first (the connection then never starts).
        dc = self.dc = pc.createDataChannel("room", ordered=True)

        @dc.on("open")
        def _open():
            asyncio.ensure_future(self.dc_opened())

        @dc.on("message")
        def _msg(m):
            self.dc_message(m)

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        tracks = {}
        for t in pc.getTransceivers():
            if id(t) in by_sender:
                tracks[t.mid] = by_sender[id(t)]
        self.r["pub_tracks"] = tracks
        await self.send({"type": "offer", "pc": "pub", "sdp": pc.localDescription.sdp, "tracks": tracks})
        log.info("sent pub offer, tracks %s", tracks)
        for source in a.mute:
            await self.send({"type": "mute", "source": source, "muted": True})

    async def dc_opened(self):
        self.r["dc_open"] = True
        self.r["events"].append({"t": self.now(), "type": "dc_open"})
        log.info("data channel room open")
        msgs = []
        if self.args.chat is not None:
            msgs.append({"t": "chat", "text": self.args.chat})
        for raw in self.args.send_dc:
            msgs.append(json.loads(raw))
        for m in msgs:
            try:
                self.dc.send(json.dumps(m))
                self.r["dc_sent"] += 1
            except Exception as e:  # noqa: BLE001
                self.error("dc", type(e).__name__, e)

    def dc_message(self, m):
        try:
            obj = json.loads(m)
        except (TypeError, ValueError):
            self.r["dc_other"].append({"raw": str(m)[:200]})
            return
        kind = obj.get("t") if isinstance(obj, dict) else None
        if kind == "chat":
            self.r["chat"].append(obj)
        elif kind == "view":
            self.r["views"].append(obj)
        else:
            self.r["dc_other"].append(obj)

    # ------------------------------------------------------------ sub
    async def on_sub_offer(self, msg):
        if self.sub is None:
            self.sub = self.new_pc("sub")
        pc = self.sub
        self.r["sub_offers"] += 1
        tracks = msg.get("tracks") or {}
        self.sub_tracks.update(tracks)
        self.r["sub_tracks"] = dict(self.sub_tracks)
        await pc.setRemoteDescription(RTCSessionDescription(rewrite_sdp(msg["sdp"], self.via), "offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await self.send({"type": "answer", "pc": "sub", "sdp": pc.localDescription.sdp})
        log.info("answered sub offer #%d (%d tracks)", self.r["sub_offers"], len(tracks))
        for t in pc.getTransceivers():
            track = t.receiver.track
            if track is not None and id(t) not in self.consumed:
                self.consumed.add(id(t))
                self.tasks.append(asyncio.ensure_future(self.consume(t, track)))

    async def consume(self, transceiver, track):
        until = self.args.until_frames
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.error("sub", type(e).__name__, e)
                return
            info = self.sub_tracks.get(transceiver.mid) or {}
            pid = participant_id(info["participant"]) if info.get("participant") is not None \
                else f"mid:{transceiver.mid}"
            kind = info.get("kind") or track.kind
            source = info.get("source") or kind
            rec = self.r["received"].get(pid)
            if rec is None:
                rec = self.r["received"][pid] = {"video_frames": 0, "audio_frames": 0,
                                                 "sources": {}, "first_frame_s": self.now()}
                log.info("first %s frame from %s", kind, pid)
            key = "video_frames" if kind == "video" else "audio_frames"
            rec[key] += 1
            rec["sources"][source] = rec["sources"].get(source, 0) + 1
            if kind == "video":
                rec["video_size"] = [frame.width, frame.height]
                if until and rec["video_frames"] >= until:
                    self.done.set()

    # ------------------------------------------------------------ signaling loop
    async def read_loop(self):
        try:
            async for raw in self.ws:
                try:
                    msg = json.loads(raw)
                    await self.handle(msg)
                except Exception as e:  # noqa: BLE001
                    self.error("signaling", type(e).__name__, e)
        except websockets.ConnectionClosed as e:
            self.record_close(e)
        else:
            self.record_close()
        if not self.leaving:
            log.info("server closed the socket: %s", self.r["close"])
        self.done.set()

    async def handle(self, msg):
        typ = msg.get("type")
        if typ == "answer" and msg.get("pc", "pub") == "pub":
            try:
                await self.pub.setRemoteDescription(
                    RTCSessionDescription(rewrite_sdp(msg["sdp"], self.via), "answer"))
                log.info("applied pub answer")
            except Exception as e:  # noqa: BLE001
                self.error("pub", type(e).__name__, e)
        elif typ == "offer" and msg.get("pc", "sub") == "sub":
            try:
                await self.on_sub_offer(msg)
            except Exception as e:  # noqa: BLE001
                self.error("sub", type(e).__name__, e)
        elif typ == "candidate":
            pc = self.pub if msg.get("pc") == "pub" else self.sub
            c = msg.get("candidate") or {}
            text = c.get("candidate") or ""
            if pc is not None and text:
                if text.startswith("a="):
                    text = text[2:]
                if self.via:
                    text = rewrite_candidate(text, self.via)
                cand = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
                cand.sdpMid = c.get("sdpMid")
                cand.sdpMLineIndex = c.get("sdpMLineIndex")
                await pc.addIceCandidate(cand)
        elif typ == "error":
            self.error("server", msg.get("code"), msg.get("message"))
        elif typ == "link":
            self.r["link"].append({"t": self.now(), "state": msg.get("state"), "bwe_kbps": msg.get("bwe_kbps")})
        elif typ == "pong":
            pass
        else:
            ev = {"t": self.now(), **{k: v for k, v in msg.items() if k != "sdp"}}
            self.r["events"].append(ev)

    async def ping_loop(self):
        while True:
            await asyncio.sleep(15)
            try:
                await self.send({"type": "ping"})
            except Exception:  # noqa: BLE001
                return

    # ------------------------------------------------------------ stats + teardown
    async def collect_stats(self):
        out = {}
        if self.pub is not None:
            pub = {}
            for t in self.pub.getTransceivers():
                source = self.r["pub_tracks"].get(t.mid)
                if source is None:
                    continue
                d = {}
                try:
                    report = await asyncio.wait_for(t.sender.getStats(), 3)
                    for st in report.values():
                        if st.type == "outbound-rtp":
                            d["packets_sent"] = st.packetsSent
                            d["bytes_sent"] = st.bytesSent
                        elif st.type == "remote-inbound-rtp":
                            d["rtt_s"] = st.roundTripTime
                            d["remote_packets_lost"] = st.packetsLost
                            d["remote_fraction_lost"] = st.fractionLost
                except Exception as e:  # noqa: BLE001
                    self.error("stats", type(e).__name__, e)
                pub[source] = d
            out["pub"] = pub
        if self.sub is not None:
            sub = {}
            for t in self.sub.getTransceivers():
                if t.receiver.track is None:
                    continue
                d = {"kind": t.kind, "packets_received": 0, "packets_lost": 0}
                try:
                    report = await asyncio.wait_for(t.receiver.getStats(), 3)
                    for st in report.values():
                        if st.type == "inbound-rtp":
                            d["packets_received"] += st.packetsReceived
                            d["packets_lost"] += st.packetsLost
                            d["jitter"] = st.jitter
                except Exception as e:  # noqa: BLE001
                    self.error("stats", type(e).__name__, e)
                sub[str(t.mid)] = d
            out["sub"] = sub
        self.r["stats"] = out

    async def finish(self):
        self.leaving = True
        try:
            await self.send({"type": "leave"})
        except Exception:  # noqa: BLE001
            pass
        await self.collect_stats()
        self.r["pub_state"] = self.pub.connectionState if self.pub else None
        self.r["sub_state"] = self.sub.connectionState if self.sub else None
        self.r["pub_ever_connected"] = self.ever["pub"]
        self.r["sub_ever_connected"] = self.ever["sub"]
        # give the server a moment to close the socket after `leave`
        reader = self.reader
        if reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(reader), 3)
            except Exception:  # noqa: BLE001
                pass
        await self.close_ws()
        for t in self.tasks:
            t.cancel()
        for name, pc in (("pub", self.pub), ("sub", self.sub)):
            if pc is not None:
                try:
                    await asyncio.wait_for(pc.close(), 5)
                except Exception as e:  # noqa: BLE001
                    self.error("close", type(e).__name__, f"{name}: {e}")
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def run(self):
        if not await self.connect_and_join():
            return 2
        self.reader = asyncio.ensure_future(self.read_loop())
        self.tasks.append(self.reader)
        self.tasks.append(asyncio.ensure_future(self.ping_loop()))
        try:
            await self.start_pub()
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001
            self.error("pub", type(e).__name__, e)
        try:
            await asyncio.wait_for(self.done.wait(), self.args.duration)
        except asyncio.TimeoutError:
            pass
        await self.finish()
        return 0


def write_result(result, path):
    text = json.dumps(result, indent=1, default=str)
    if path:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", required=True, help="wss://HOST:PORT/ws/consult")
    p.add_argument("--token", required=True)
    p.add_argument("--cookie", default="", help="Cookie header of the token's account session (mr_session=...)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds after joined")
    p.add_argument("--publish", default="audio,video", help="comma list: audio|mic, video|camera, screen, none")
    p.add_argument("--chat", default=None, help="chat text sent once the data channel opens")
    p.add_argument("--send-dc", action="append", default=[], help="extra JSON message for the data channel")
    p.add_argument("--mute", action="append", default=[], help="source to report muted after join")
    p.add_argument("--until-frames", type=int, default=0, help="stop once someone's video_frames >= N")
    p.add_argument("--video-codec", default="any", choices=["any", "vp8", "h264"])
    p.add_argument("--media-via", default=None, help="HOST:PORT replacing the server's UDP candidates")
    p.add_argument("--ice-host", default="127.0.0.1", help="local address for host candidates, or 'all'")
    p.add_argument("--origin", default=None, help="Origin header for the WebSocket")
    p.add_argument("--out", default=None, help="result JSON path (default stdout)")
    args = p.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="aiortc_peer: %(message)s")
    for noisy in ("aiortc", "aioice", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    restrict_host_candidates(args.ice_host)

    async def amain():
        peer = Peer(args)
        # SIGTERM/SIGINT end the run early but still leave, close and write the JSON
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, peer.done.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            rc = await peer.run()
        except Exception as e:  # noqa: BLE001
            peer.error("peer", type(e).__name__, e)
            rc = 0 if peer.r["joined"] else 2
        peer.r["elapsed_s"] = peer.now()
        return rc, peer.r

    rc, result = asyncio.run(amain())
    write_result(result, args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
