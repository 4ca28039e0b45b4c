#!/usr/bin/env python3
"""User-space UDP link emulator (stdlib only; the test kernel has no netem).

    udp_impair.py --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT
                  [--delay-ms 0] [--jitter-ms 0] [--loss 0] [--rate-kbps 0]
                  [--queue-ms 200] [--reorder] [--seed N] [--stats-file F]
                  [--up-delay-ms X] [--down-delay-ms X] [--up-loss P] [--down-loss P]
                  [--up-rate-kbps R] [--down-rate-kbps R] [--idle-timeout 120]
                  [--strand-dtls-secs S]

Clients send to the --listen socket. Each distinct client address gets its
own upstream socket (bound to an ephemeral port on the upstream's loopback
family), so the upstream server sees one distinct source address per client,
like a NAT. Packets are forwarded in both directions:

    up   = client   -> upstream     (--up-* overrides)
    down = upstream -> client       (--down-* overrides)

Each direction independently (per client) is:
  * dropped with probability --loss (Bernoulli, seeded RNG per direction),
  * if --rate-kbps > 0: serialised through a shaper at that rate with a
    drop-tail queue holding at most --queue-ms of data (a token bucket of one
    packet; packets that would wait longer than --queue-ms are dropped),
  * delayed by --delay-ms (one way: the RTT grows by twice that) plus a
    uniform random jitter in [0, --jitter-ms]. Without --reorder a packet is
    never delivered before an earlier one of the same flow and direction.

With --strand-dtls-secs S, DTLS records (first byte 20..63) sent by clients
first seen within S seconds of the first client are dropped for good, as when a handshake
is stranded by loss: ICE connects, DTLS never does. Later clients (a page
that started over) pass untouched.

Prints "READY <listen port>" on stdout (flushed) once bound; --listen with port
0 picks a free port. With --stats-file, writes a JSON object every second (and
on exit), replaced atomically (max_late_ms / late_over_5ms: how late the
emulator itself sent packets relative to schedule, e.g. on a loaded CPU):

    {"uptime_s": 12.0, "clients": 1,
     "up":   {"received": N, "forwarded": N, "dropped": N, "dropped_loss": N,
              "dropped_queue": N, "bytes_forwarded": N, "max_late_ms": 0.8,
              "late_over_5ms": N},
     "down": {...}}

"received" counts packets read from the socket; "forwarded" those actually
sent on; "dropped" = dropped_loss + dropped_queue (+ send errors). Packets still
in flight at exit are neither. Exits 0 on SIGTERM/SIGINT.

Implementation: one thread, a selector over all sockets and a heap of
scheduled sends; the selector timeout is the next deadline, so the added delay
is accurate to about a millisecond at hundreds of packets per second.
"""
import argparse
import heapq
import itertools
import json
import os
import random
import selectors
import signal
import socket
import sys
import time

RECV_MAX = 65535
SOCK_BUF = 4 * 1024 * 1024
DRAIN_BATCH = 64  # packets read from one socket per wakeup before yielding


def parse_addr(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, host, port


class Direction:
    """Impairment parameters, RNG and counters of one direction."""

    def __init__(self, name, delay_ms, jitter_ms, loss, rate_kbps, queue_ms, reorder, seed):
        self.name = name
        self.delay = max(0.0, delay_ms) / 1000.0
        self.jitter = max(0.0, jitter_ms) / 1000.0
        self.loss = min(max(loss, 0.0), 1.0)
        self.rate_bps = max(0.0, rate_kbps) * 1000.0
        self.queue = max(0.0, queue_ms) / 1000.0
        self.reorder = reorder
        self.rng = random.Random(f"{seed}/{name}") if seed is not None else random.Random()
        self.received = 0
        self.forwarded = 0
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.dropped_error = 0
        self.bytes_forwarded = 0
        self.max_late = 0.0
        self.late_5ms = 0

    def stats(self):
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": self.dropped_loss + self.dropped_queue + self.dropped_error,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.dropped_queue,
            "dropped_error": self.dropped_error,
            "bytes_forwarded": self.bytes_forwarded,
            "max_late_ms": round(self.max_late * 1000.0, 3),
            "late_over_5ms": self.late_5ms,
        }


class FlowDir:
    """Per client, per direction state: shaper and ordering."""

    __slots__ = ("link_free", "last_deliver")

    def __init__(self):
        self.link_free = 0.0
        self.last_deliver = 0.0


class Client:
    __slots__ = ("addr", "sock", "up", "down", "last_seen", "strand_dtls")

    def __init__(self, addr, sock, now, strand_dtls):
        self.addr = addr
        self.sock = sock
        self.up = FlowDir()
        self.down = FlowDir()
        self.last_seen = now
        self.strand_dtls = strand_dtls


class Impair:
    def __init__(self, args):
        self.args = args
        fam, host, port = args.listen
        self.listen = socket.socket(fam, socket.SOCK_DGRAM)
        self._tune(self.listen)
        self.listen.bind((host, port))
        self.listen.setblocking(False)
        self.up_family, up_host, up_port = args.upstream
        self.upstream = (up_host, up_port)
        self.up_bind = "::1" if self.up_family == socket.AF_INET6 else "127.0.0.1"
        if up_host not in ("127.0.0.1", "::1", "localhost"):
            self.up_bind = "::" if self.up_family == socket.AF_INET6 else "0.0.0.0"

        def pick(specific, common):
            return common if specific is None else specific

        a = args
        self.dirs = {
            "up": Direction("up", pick(a.up_delay_ms, a.delay_ms), a.jitter_ms,
                            pick(a.up_loss, a.loss), pick(a.up_rate_kbps, a.rate_kbps),
                            a.queue_ms, a.reorder, a.seed),
            "down": Direction("down", pick(a.down_delay_ms, a.delay_ms), a.jitter_ms,
                              pick(a.down_loss, a.loss), pick(a.down_rate_kbps, a.rate_kbps),
                              a.queue_ms, a.reorder, a.seed),
        }
        self.clients = {}  # client addr -> Client
        self.heap = []  # (deadline, seq, sock, dest or None, data, Direction)
        self.seq = itertools.count()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listen, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.stop = False
        self.start = time.monotonic()
        self.first_client = None

    @staticmethod
    def _tune(sock):
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            except OSError:
                pass

    def port(self):
        return self.listen.getsockname()[1]

    # ------------------------------------------------------------ scheduling
    def _schedule(self, now, d, flow, sock, dest, data):
        d.received += 1
        if d.loss > 0.0 and d.rng.random() < d.loss:
            d.dropped_loss += 1
            return
        t = now
        if d.rate_bps > 0.0:
            start = max(now, flow.link_free)
            if start - now > d.queue:
                d.dropped_queue += 1
                return
            flow.link_free = start + len(data) * 8.0 / d.rate_bps
            t = flow.link_free
        t += d.delay
        if d.jitter > 0.0:
            t += d.rng.uniform(0.0, d.jitter)
        if not d.reorder:
            t = max(t, flow.last_deliver)
            flow.last_deliver = t
        heapq.heappush(self.heap, (t, next(self.seq), sock, dest, data, d))

    def _flush_due(self):
        heap = self.heap
        while heap:
            now = time.monotonic()
            if heap[0][0] > now:
                return
            t, _, sock, dest, data, d = heapq.heappop(heap)
            late = now - t
            if late > d.max_late:
                d.max_late = late
            if late > 0.005:
                d.late_5ms += 1
            try:
                if dest is None:
                    sock.send(data)
                else:
                    sock.sendto(data, dest)
            except (BlockingIOError, ConnectionRefusedError, OSError):
                d.dropped_error += 1
                continue
            d.forwarded += 1
            d.bytes_forwarded += len(data)

    # ------------------------------------------------------------ receiving
    def _client_for(self, addr, now):
        c = self.clients.get(addr)
        if c is None:
            s = socket.socket(self.up_family, socket.SOCK_DGRAM)
            self._tune(s)
            s.bind((self.up_bind, 0))
            s.connect(self.upstream)
            s.setblocking(False)
            # Timed from the first client, not from start-up: a browser on a
            # loaded CI machine may take longer than S to send anything.
            if self.first_client is None:
                self.first_client = now
            strand = now - self.first_client < self.args.strand_dtls_secs
            c = Client(addr, s, now, strand)
            self.clients[addr] = c
            self.sel.register(s, selectors.EVENT_READ, c)
            log(f"new client {addr[0]}:{addr[1]} -> upstream via local port {s.getsockname()[1]}")
        c.last_seen = now
        return c

    def _read_listen(self):
        up = self.dirs["up"]
        for _ in range(DRAIN_BATCH):
            try:
                data, addr = self.listen.recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ICMP port unreachable from a vanished client
                continue
            now = time.monotonic()
            c = self._client_for(addr, now)
            if c.strand_dtls and data and 20 <= data[0] <= 63:
                up.received += 1
                up.dropped_loss += 1
                continue
            self._schedule(now, up, c.up, c.sock, None, data)

    def _read_upstream(self, c):
        down = self.dirs["down"]
        for _ in range(DRAIN_BATCH):
            try:
                data = c.sock.recv(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ConnectionRefused: upstream not listening (yet); keep going
                continue
            now = time.monotonic()
            c.last_seen = now
            self._schedule(now, down, c.down, self.listen, c.addr, data)

    def _expire_idle(self, now):
        limit = self.args.idle_timeout
        if limit <= 0:
            return
        for addr, c in list(self.clients.items()):
            if now - c.last_seen > limit:
                if any(e[2] is c.sock for e in self.heap):
                    continue
                self.sel.unregister(c.sock)
                c.sock.close()
                del self.clients[addr]
                log(f"client {addr[0]}:{addr[1]} idle, dropped")

    # ------------------------------------------------------------ stats
    def stats(self):
        return {
            "uptime_s": round(time.monotonic() - self.start, 3),
            "clients": len(self.clients),
            "listen_port": self.port(),
            "up": self.dirs["up"].stats(),
            "down": self.dirs["down"].stats(),
        }

    def write_stats(self):
        path = self.args.stats_file
        if not path:
            return
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.stats(), f)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            log(f"cannot write stats file: {e}")

    # ------------------------------------------------------------ main loop
    def run(self):
        next_stats = time.monotonic() + 1.0
        while not self.stop:
            now = time.monotonic()
            timeout = next_stats - now
            if self.heap:
                timeout = min(timeout, self.heap[0][0] - now)
            events = self.sel.select(max(0.0, timeout))
            # send what is due first: receiving never delays a due packet
            self._flush_due()
            for key, _ in events:
                if key.data is None:
                    self._read_listen()
                elif key.data == "wake":
                    try:
                        while self.wake_r.recv(64):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                else:
                    self._read_upstream(key.data)
            self._flush_due()
            now = time.monotonic()
            if now >= next_stats:
                self.write_stats()
                self._expire_idle(now)
                next_stats = now + 1.0
        self.write_stats()
        for c in self.clients.values():
            c.sock.close()
        self.listen.close()


def log(msg):
    print(f"udp_impair: {msg}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, type=parse_addr, help="HOST:PORT (port 0 = any)")
    p.add_argument("--upstream", required=True, type=parse_addr, help="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra uniform delay in [0, J]")
    p.add_argument("--loss", type=float, default=0.0, help="drop probability, each direction")
    p.add_argument("--rate-kbps", type=float, default=0.0, help="rate limit per direction per client (0 = none)")
    p.add_argument("--queue-ms", type=float, default=200.0, help="drop-tail queue bound of the shaper")
    p.add_argument("--reorder", action="store_true", help="let jitter reorder packets")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats-file", default=None)
    p.add_argument("--strand-dtls-secs", type=float, default=0.0,
                   help="drop DTLS from clients first seen in the first S seconds")
    p.add_argument("--idle-timeout", type=float, default=120.0, help="forget a client after S idle seconds (0 = never)")
    for d in ("up", "down"):
        p.add_argument(f"--{d}-delay-ms", type=float, default=None)
        p.add_argument(f"--{d}-loss", type=float, default=None)
        p.add_argument(f"--{d}-rate-kbps", type=float, default=None)
    args = p.parse_args()

    imp = Impair(args)

    def on_signal(signum, frame):
        imp.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.set_wakeup_fd(imp.wake_w.fileno(), warn_on_full_buffer=False)

    up, down = imp.dirs["up"], imp.dirs["down"]
    log(f"listening on port {imp.port()} -> {args.upstream[1]}:{args.upstream[2]}; "
        f"up delay {up.delay*1000:.0f}ms loss {up.loss} rate {up.rate_bps/1000:.0f}kbps; "
        f"down delay {down.delay*1000:.0f}ms loss {down.loss} rate {down.rate_bps/1000:.0f}kbps; "
        f"jitter {args.jitter_ms}ms reorder {args.reorder}")
    print(f"READY {imp.port()}", flush=True)
    imp.write_stats()
    imp.run()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
