#!/usr/bin/env python3
"""User-space TCP link emulator: a forwarding proxy (stdlib only, asyncio).

    tcp_impair.py --listen [HOST:]PORT --to HOST:PORT
                  [--delay-ms 0] [--rate-kbit 0]
                  [--up-delay-ms X] [--down-delay-ms X] [--up-rate-kbit R] [--down-rate-kbit R]
                  [--initcwnd 10] [--mss 1448] [--queue-ms 200] [--no-handshake]
                  [--buffer-kb 256] [--stats-file F]

The kernel here has no netem, so delay needs a user-space forwarder. Clients
connect to --listen; each connection is forwarded to --to over its own
upstream connection, byte order preserved, both directions independent:

    up   = client   -> upstream     (--up-* overrides)
    down = upstream -> client       (--down-* overrides)

Link model, per direction (a bottleneck link shared by all connections, like
a real access line):

  * rate: --rate-kbit kbit/s (1 kbit = 1000 bit; 0 = unlimited). A chunk that
    may leave at time t departs at start = max(t, link_free) and occupies the
    link for size/rate: link_free = start + size/rate (FIFO, work-conserving,
    no head-of-line blocking beyond that of the one shared line).
  * delay: delivered at start + size/rate + --delay-ms (one way; the RTT grows
    by the sum of both directions' delays).
  * TCP over that path (what a proxy that terminates TCP on loopback would
    otherwise hide; both are on by default, see below):
      - handshake: a client's connect() returns at once on loopback, but on
        the emulated path its first bytes could only leave one RTT later
        (after SYN / SYN-ACK). So data of the up direction departs no
        earlier than accept + RTT, data of the down direction no earlier than
        accept + RTT + up delay. --no-handshake turns this off.
      - slow start: each connection and direction has a congestion window
        that starts at --initcwnd segments of --mss bytes (Linux: 10), grows
        by the bytes acknowledged (an ack comes back one reverse-direction
        delay after delivery) and is capped at the path's BDP plus
        --queue-ms of queueing; after an idle period longer than RTO
        (RTT + 200 ms, as Linux) it shrinks back (halved per RTO idle, not
        below the initial window). No loss is modelled, so there is no
        congestion avoidance. --initcwnd 0 turns the window off (pure
        rate + delay, the bytes of a connection leave as fast as the link
        takes them).
  * buffers are bounded: at most max(--buffer-kb KiB, twice the path's BDP +
    queue) per connection and direction is read and not yet written on (then
    the proxy stops reading and the sender's socket fills up, i.e.
    back-pressure). Without a rate, --buffer-kb is what may be on the wire,
    so it also caps a connection at buffer/delay bytes per second.

Chunks are at most max(mss, 10 ms of the rate) bytes, so delivery is smooth at
low rates and cheap at high ones. Delivery times are kept to about a
millisecond (asyncio timers); the lateness of actual writes against the
model is reported in the stats.

Prints "ready <port>" on stdout (flushed) once listening (--listen 0 or
HOST:0 picks a free port). Exits 0 on SIGTERM/SIGINT, closing every
connection. With --stats-file, writes a JSON object every second and on exit
(replaced atomically):

    {"uptime_s": 1.0, "connections": N, "open": N,
     "up": {"bytes": N, "max_late_ms": 0.4, "late_over_5ms": N},
     "down": {...}}
"""
import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time

READ_MAX = 65536
SOCK_BUF = 256 * 1024


def parse_hostport(text, default_host="127.0.0.1", need_host=False):
    host, sep, port = text.rpartition(":")
    if not sep:
        if need_host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        host, port = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, port


class Link:
    """One direction of the shared bottleneck: rate, delay, and when it is free."""

    def __init__(self, name, rate_kbit, delay_ms):
        self.name = name
        self.rate = rate_kbit * 1000.0 / 8.0 if rate_kbit > 0 else 0.0  # bytes/s, 0 = unlimited
        self.delay = max(0.0, delay_ms) / 1000.0
        self.free = 0.0
        self.bytes = 0
        self.max_late = 0.0
        self.late_over_5ms = 0

    def stats(self):
        return {
            "bytes": self.bytes,
            "max_late_ms": round(self.max_late * 1000.0, 2),
            "late_over_5ms": self.late_over_5ms,
        }


class Flow:
    """One connection's bytes in one direction: sender buffer, window, the wire, delivery."""

    def __init__(self, proxy, link, rev_link, reader, writer, not_before, on_done):
        a = proxy.args
        self.loop = asyncio.get_running_loop()
        self.link = link
        self.reader = reader
        self.writer = writer
        self.not_before = not_before
        self.on_done = on_done
        self.mss = a.mss
        self.chunk_max = max(a.mss, int(link.rate * 0.010)) if link.rate else READ_MAX
        rtt = link.delay + rev_link.delay
        # what is on the wire counts against the buffer too: keep room for the path's BDP + queue
        path = int(link.rate * (rtt + a.queue_ms / 1000.0)) if link.rate else 0
        self.buffer_limit = max(a.buffer_kb * 1024, 2 * self.chunk_max, 2 * path)
        self.ack_delay = rev_link.delay
        self.rto = rtt + 0.2
        self.initcwnd = a.initcwnd * a.mss
        if a.initcwnd > 0:
            if link.rate:
                cap = link.rate * (rtt + a.queue_ms / 1000.0)
            else:
                cap = 64 * 1024 * 1024
            self.cwnd_max = max(float(self.initcwnd), cap)
        self.cwnd = float(self.initcwnd)
        self.inflight = 0
        self.acks = collections.deque()  # (ack_time, size), in time order
        self.last_send = None  # departure end of the last chunk
        self.pending = bytearray()  # read, not yet on the wire
        self.wire = collections.deque()  # (deliver_time, bytes or None = FIN)
        self.wire_bytes = 0
        self.last_deliver = 0.0
        self.eof = False
        self.fin_queued = False
        self.timer = None
        self.wake = asyncio.Event()  # writer: something new on the wire
        self.space = asyncio.Event()  # reader: the buffer drained
        self.closed = False

    # -------------------------------------------------------- the model

    def _acks_until(self, now):
        while self.acks and self.acks[0][0] <= now:
            _, n = self.acks.popleft()
            self.inflight -= n
            self.cwnd = min(self.cwnd + n, self.cwnd_max)  # slow start, no loss

    def pump(self):
        """Put on the wire whatever the window allows now; re-arm for the next ack."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        t0 = max(now, self.not_before)
        use_window = self.initcwnd > 0
        if use_window:
            self._acks_until(now)
            if self.inflight == 0 and self.last_send is not None and self.pending:
                idle = t0 - self.last_send
                if idle > self.rto:
                    halvings = min(int(idle / self.rto), 30)
                    self.cwnd = max(float(self.initcwnd), self.cwnd / (1 << halvings))
        link = self.link
        while self.pending:
            n = min(len(self.pending), self.chunk_max)
            if use_window:
                room = self.cwnd - self.inflight
                if room < min(n, self.mss) and self.inflight > 0:
                    # window full: continue when the oldest outstanding ack is back
                    self.timer = self.loop.call_at(self.acks[0][0], self.pump)
                    break
                n = min(n, max(int(room), self.mss))
            data = bytes(self.pending[:n])
            del self.pending[:n]
            start = max(t0, link.free)
            end = start + (n / link.rate if link.rate else 0.0)
            link.free = end
            deliver = max(end + link.delay, self.last_deliver)
            self.last_deliver = deliver
            self.last_send = end
            self.wire.append((deliver, data))
            self.wire_bytes += n
            if use_window:
                self.acks.append((deliver + self.ack_delay, n))
                self.inflight += n
        if self.eof and not self.pending and not self.fin_queued:
            self.fin_queued = True
            self.wire.append((max(t0 + link.delay, self.last_deliver), None))
        self.wake.set()

    # -------------------------------------------------------- I/O

    async def read_loop(self):
        try:
            while not self.closed:
                while len(self.pending) + self.wire_bytes >= self.buffer_limit and not self.closed:
                    self.space.clear()
                    await self.space.wait()
                if self.closed:
                    return
                data = await self.reader.read(READ_MAX)
                if not data:
                    self.eof = True
                    self.pump()
                    return
                self.pending += data
                self.pump()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - reset, closed: the connection ends
            self.on_done(self, error=True)

    async def write_loop(self):
        link = self.link
        try:
            while not self.closed:
                if not self.wire:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                due = self.wire[0][0]
                now = self.loop.time()
                if due > now:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), due - now)
                    except asyncio.TimeoutError:
                        pass
                    continue
                late = now - due
                if late > link.max_late:
                    link.max_late = late
                if late > 0.005:
                    link.late_over_5ms += 1
                parts, fin = [], False
                while self.wire and self.wire[0][0] <= now + 0.0005:
                    _, d = self.wire.popleft()
                    if d is None:
                        fin = True
                        break
                    parts.append(d)
                if parts:
                    blob = b"".join(parts)
                    self.writer.write(blob)
                    await self.writer.drain()
                    self.wire_bytes -= len(blob)
                    link.bytes += len(blob)
                    self.space.set()
                if fin:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    self.on_done(self, error=False)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - reset, closed: the connection ends
            self.on_done(self, error=True)

    def close(self):
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.wake.set()
        self.space.set()


class Proxy:
    def __init__(self, args):
        self.args = args
        d_up = args.up_delay_ms if args.up_delay_ms is not None else args.delay_ms
        d_down = args.down_delay_ms if args.down_delay_ms is not None else args.delay_ms
        r_up = args.up_rate_kbit if args.up_rate_kbit is not None else args.rate_kbit
        r_down = args.down_rate_kbit if args.down_rate_kbit is not None else args.rate_kbit
        self.up = Link("up", r_up, d_up)
        self.down = Link("down", r_down, d_down)
        self.connections = 0
        self.open = 0
        self.tasks = set()
        self.writers = set()
        self.started = time.monotonic()

    async def handle(self, c_reader, c_writer):
        self.connections += 1
        self.open += 1
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        tune(c_writer)
        self.writers.add(c_writer)
        u_writer = None
        try:
            host, port = self.args.to
            try:
                u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                print(f"tcp_impair: connect {host}:{port}: {e}", file=sys.stderr, flush=True)
                return
            tune(u_writer)
            self.writers.add(u_writer)
            rtt = self.up.delay + self.down.delay
            hs = not self.args.no_handshake
            done = asyncio.get_running_loop().create_future()
            state = {"finished": 0}

            def on_done(flow, error):
                if error:
                    if not done.done():
                        done.set_result(True)
                    return
                state["finished"] += 1
                if state["finished"] >= 2 and not done.done():
                    done.set_result(True)

            up = Flow(self, self.up, self.down, c_reader, u_writer, accepted + rtt if hs else 0.0, on_done)
            down = Flow(
                self, self.down, self.up, u_reader, c_writer, accepted + rtt + self.up.delay if hs else 0.0, on_done
            )
            tasks = [asyncio.ensure_future(x) for x in (up.read_loop(), up.write_loop(), down.read_loop(), down.write_loop())]
            try:
                await done
            finally:
                up.close()
                down.close()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.open -= 1
            for w in (c_writer, u_writer):
                if w is None:
                    continue
                self.writers.discard(w)
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def stats(self):
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "connections": self.connections,
            "open": self.open,
            "up": self.up.stats(),
            "down": self.down.stats(),
        }


def tune(writer):
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # keep the loopback side's kernel buffers small: the model's buffers are ours
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    except OSError:
        pass


def write_stats(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


async def amain(args):
    proxy = Proxy(args)

    def spawn(r, w):
        t = asyncio.ensure_future(proxy.handle(r, w))
        proxy.tasks.add(t)
        t.add_done_callback(proxy.tasks.discard)

    host, port = args.listen
    server = await asyncio.start_server(spawn, host, port, reuse_address=True, backlog=128)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)

    async def stats_loop():
        while True:
            await asyncio.sleep(1.0)
            write_stats(args.stats_file, proxy.stats())

    st = asyncio.ensure_future(stats_loop()) if args.stats_file else None
    await stop.wait()
    server.close()
    if st:
        st.cancel()
    for t in list(proxy.tasks):
        t.cancel()
    await asyncio.gather(*proxy.tasks, return_exceptions=True)
    if args.stats_file:
        write_stats(args.stats_file, proxy.stats())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, type=parse_hostport, help="[HOST:]PORT (port 0 = any; host 127.0.0.1)")
    p.add_argument("--to", required=True, type=lambda t: parse_hostport(t, need_host=True), help="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument("--rate-kbit", type=float, default=0.0, help="link rate per direction, kbit/s (0 = unlimited)")
    for d in ("up", "down"):
        p.add_argument(f"--{d}-delay-ms", type=float, default=None)
        p.add_argument(f"--{d}-rate-kbit", type=float, default=None)
    p.add_argument("--initcwnd", type=int, default=10, help="initial TCP window in segments (0 = no window model)")
    p.add_argument("--mss", type=int, default=1448, help="segment size for the window model")
    p.add_argument("--queue-ms", type=float, default=200.0, help="queueing the window may build beyond the BDP")
    p.add_argument("--no-handshake", action="store_true", help="do not model the one-RTT TCP handshake")
    p.add_argument("--buffer-kb", type=int, default=256, help="bytes read and not yet forwarded, per flow")
    p.add_argument("--stats-file", default=None)
    args = p.parse_args()
    if args.mss < 64:
        p.error("--mss must be at least 64")
    try:
        asyncio.run(amain(args))
    except OSError as e:
        print(f"tcp_impair: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
