#!/usr/bin/env python3
"""Per-packet WAN link emulator between two network namespaces (stdlib only).

    linkemu.py up   --prefix mrl --rtt-ms 200 --loss 0.01 --rate-mbit 50
                    [--jitter-ms 0] [--queue-ms Q] [--seed N]
                    [--stats-file F] [--pid-file F] [--tcp-cc cubic] [--rt-prio 10]
    linkemu.py down --prefix mrl
    kill -USR1 PID   # cut the link (everything dropped, both ways)
    kill -USR2 PID   # restore it

Then run the two ends of whatever is being measured as

    ip netns exec mrl-clinic CMD ...      # this side is 10.201.0.1
    ip netns exec mrl-hub    CMD ...      # this side is 10.201.0.2

Why this exists
---------------
The test kernel has no netem, so the kernel cannot delay packets. `tc tbf`
(rate) and nft `numgen random` (loss) do work, and the older helpers
(udp_impair.py, tcp_impair.py) emulate delay as user-space proxies. A TCP
proxy, however, terminates TCP on both sides: losses it "injects" are never
seen by the end-to-end flow (the proxy's own kernel retransmits them over a
zero-RTT hop), so it cannot show how a real TCP flow (DICOM C-STORE) and a
QUIC flow (the relay link) behave on the same lossy long-RTT path. That needs
packet-level forwarding: every IP packet of every protocol goes through the
same impairments, and both endpoints' congestion controllers see the loss and
the delay.

Topology
--------
`up` creates the namespaces <prefix>-clinic and <prefix>-hub (loopback up in
both; IPv6 disabled so nothing but the traffic under test crosses), opens one
TUN device in each (named <prefix>-tun, IFF_TUN|IFF_NO_PI, MTU 1500,
txqueuelen 4096) by entering the namespace with setns(2) through ctypes,
configures them point-to-point (clinic 10.201.0.1 <-> hub 10.201.0.2) and
then shuttles packets between the two TUN file descriptors from the root
namespace. No offloads (no IFF_VNET_HDR), so TCP sees real 1500-byte packets
just as on a WAN path.

Model (each direction independently: clinic->hub "c2h", hub->clinic "h2c")
--------------------------------------------------------------------------
  1. Link cut (SIGUSR1 .. SIGUSR2): every packet is dropped, both ways,
     on entry and also packets already in flight when they are due.
  2. Bernoulli loss with probability --loss (seeded RNG per direction, so a
     given --seed gives the same loss pattern for the same packet sequence).
  3. Rate cap --rate-mbit: a serialising bottleneck with a drop-tail FIFO.
     A packet starts serialisation at max(arrival, link busy-until) and
     leaves after len*8/rate; if it would wait more than --queue-ms before
     its serialisation starts, it is dropped (cause "queue"). Default queue
     = max(100 ms, one BDP) = max(100, rtt) ms of data.
  4. One-way delay rtt/2 plus uniform jitter in [0, --jitter-ms], clamped so
     a packet is never delivered before an earlier one of its direction (no
     reordering: jitter delays the tail, like a real bufferbloated link).
Because of (4), delivery times are monotonic per direction, so the timer
"heap" is one FIFO (collections.deque) per direction: O(1) per packet and no
tuple-heap churn. The loop is one thread on epoll: TUN fds (non-blocking,
drained up to 256 packets per wakeup) and a signalfd; its timeout
is the earliest head-of-line delivery time, so packets leave within about
a millisecond of their schedule (reported as lateness in the stats).

Prints "READY" on stdout (flushed) once forwarding; stays in the foreground
until SIGTERM/SIGINT, then closes the TUNs and deletes the namespaces
(processes still inside keep their now-anonymous namespace, without link).
`down` SIGTERMs a running `up` of that prefix (pid recorded under
/run/linkemu/) and deletes leftover namespaces. Every signal received is
logged on stderr with a timestamp and the sender's pid and command line
(signalfd), so cuts in a test log line up with the test's events and a
stray kill can be traced.

Stats (--stats-file F): a JSON object rewritten atomically (tmp + rename)
every second and at exit:
    {"uptime_s": 12.0, "cut": false, "cpu_s": 0.8, "config": {...},
     "max_wake_late_ms": 1.2, "max_wake_late_at_s": 7.3,
     "c2h": {"rx_packets", "rx_bytes", "fwd_packets", "fwd_bytes",
             "drop_loss", "drop_queue", "drop_cut", "drop_error" (packets),
             "drop_bytes", "max_queue_ms", "in_flight",
             "max_late_ms", "max_late_at_s", "mean_late_ms",
             "late_over_1ms", "late_over_5ms"},
     "h2c": {...}}
"late" = how long after its scheduled delivery time the emulator actually
wrote a packet (a loaded CPU shows up here); max_wake_late_ms = how much
later than asked epoll returned (the process was not scheduled). cpu_s =
user+system CPU of the emulator process. *_at_s are seconds since start.

The forwarder runs as SCHED_FIFO priority 10 (--rt-prio; 0 = normal): on a
small box the programs under test compete for the same cores, and a link
must not slow down because its endpoints are busy. It needs ~10 % of one
core at 50 Mbit/s, so it cannot starve anyone (and RT throttling caps it at
95 % anyway). Under heavy unrelated load (a parallel cargo build), ordinary
processes saw 200 ms scheduling stalls while the forwarder's worst lateness
stayed at 5-20 ms (mean 0.4-0.6 ms). Stats are written from a helper thread:
file system calls blocked for up to 600 ms behind the build's disk I/O when
they were done inline.

The host default TCP congestion control of this VM is bbr (the namespaces
inherit it); --tcp-cc cubic gives the loss-based behaviour of the Windows
and Linux stacks of real modalities and PACS.

Measured (2-core VM, Python 3.11, kernel 6.18, another engineer's cargo build
running at the same time; iperf3 3.12 and ping between the namespaces):
  * ping, --rtt-ms 200: avg 201.1 ms (min 200.6, max 204.2, mdev 0.8);
    --rtt-ms 600 --jitter-ms 20: min 608 / avg 620 / max 636 ms, no loss.
  * TCP (iperf3, 30 s), --rtt-ms 200 --rate-mbit 50, no loss:
    45.8-46.3 Mbit/s goodput with bbr (92 %; ~96 % counting headers),
    47.9 Mbit/s with cubic (96 %). Emulator CPU 9-10 % of one core.
  * TCP, --rtt-ms 200 --rate-mbit 10: 9.26-9.40 Mbit/s (93-94 %), CPU 5-6 %;
    --rtt-ms 600 --rate-mbit 10: 9.0-9.3 Mbit/s (90-93 %).
  * UDP (iperf3 -u -l 1400), offered 60 Mbit/s into --rate-mbit 50:
    47.9 Mbit/s payload delivered (the rest dropped at the queue).
  * Loss: --loss 0.01, 35 731 UDP packets: 0.99 % dropped (iperf3 receiver
    agrees: 354/35713); --loss 0.02, 8 946 packets: 1.83 %;
    TCP runs: 0.97-1.11 % and 2.00-2.17 % per direction.
  * TCP on the benchmark links (iperf3): (a) 200 ms, 1 %, 50 Mbit/s:
    cubic 1.06 Mbit/s, bbr 41.3 Mbit/s; (b) 600 ms, 2 %, 10 Mbit/s: cubic
    0.53 Mbit/s, bbr 7.2 Mbit/s. (Mathis et al.: a loss-based flow gets
    about MSS/RTT * 1.22/sqrt(p) = 0.7 and 0.2 Mbit/s.)
  * Ceiling: no rate cap, 20 ms RTT: 1.07 Gbit/s TCP through it at 70 % of
    one core (~140 000 packets/s both directions).
  * Cut: SIGUSR1 for 2 s during a 5/s ping: 10 requests dropped (+1 reply
    in flight), SIGUSR2 restores at once.
"""
import argparse
import collections
import ctypes
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 1500
READ_MAX = 65536
DRAIN_BATCH = 256  # packets read from one TUN per wakeup before serving timers
STATE_DIR = "/run/linkemu"
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def open_signalfd(sigs):
    """Block `sigs` (in this thread and the threads it starts later) and return
    a non-blocking signalfd(2) for them: the epoll loop sees signals as
    readable data, with the sender's pid (logged, so a stray kill is traceable)."""
    mask = (ctypes.c_ulong * 16)()  # glibc sigset_t, 1024 bits
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    for sig in sigs:
        mask[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    fd = _libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
        raise OSError(e, f"signalfd: {os.strerror(e)}")
    return fd


def sender(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:120]})"


def log(msg):
    print(f"linkemu {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def run(*cmd, check=True):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def ns_names(prefix):
    return f"{prefix}-clinic", f"{prefix}-hub"


def tun_name(prefix):
    return f"{prefix}-tun"[:15]


def open_tun_in(ns, name):
    """Create a TUN device inside namespace `ns` and return its fd (we stay in
    our own namespace; the device stays where it was created)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return fd


def delete_namespaces(prefix):
    for ns in ns_names(prefix):
        if os.path.exists(os.path.join(NETNS_DIR, ns)):
            run("ip", "netns", "del", ns, check=False)


def set_tcp_cc(ns, cc):
    """Default TCP congestion control of namespace `ns`. Outside the initial
    namespace the kernel only lets a namespace pick algorithms listed in the
    host's net.ipv4.tcp_allowed_congestion_control (EPERM otherwise), so the
    algorithm is appended to that list first if needed (an additive change,
    left in place; it does not alter the host's own default)."""
    key = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
    allowed = open(key).read().split()
    if cc not in allowed:
        avail = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
        if cc not in avail:
            run("modprobe", f"tcp_{cc}", check=False)
        with open(key, "w") as f:
            f.write(" ".join(allowed + [cc]))
        print(f"linkemu: added {cc} to host {key}", file=sys.stderr)
    run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={cc}")


def setup(prefix, clinic_ip, hub_ip, tcp_cc=None):
    """Create both namespaces and TUNs; return (clinic_fd, hub_fd)."""
    clinic, hub = ns_names(prefix)
    dev = tun_name(prefix)
    fds = []
    for ns, local, peer in ((clinic, clinic_ip, hub_ip), (hub, hub_ip, clinic_ip)):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "sysctl", "-qw",
            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", check=False)
        if tcp_cc:
            set_tcp_cc(ns, tcp_cc)
        fds.append(open_tun_in(ns, dev))
        run("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "txqueuelen", "4096")
        run("ip", "-n", ns, "addr", "add", f"{local}/32", "peer", f"{peer}/32", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
    return fds[0], fds[1]


class Direction:
    """Impairments, schedule and counters of one direction."""

    def __init__(self, name, src_fd, dst_fd, args, seed):
        self.name = name
        self.src = src_fd
        self.dst = dst_fd
        self.delay = args.rtt_ms / 2000.0
        self.jitter = max(0.0, args.jitter_ms) / 1000.0
        self.loss = min(max(args.loss, 0.0), 1.0)
        self.bit_time = 8.0 / (args.rate_mbit * 1e6) if args.rate_mbit > 0 else 0.0
        self.queue = args.queue_ms / 1000.0
        self.rng = random.Random(f"{seed}/{name}") if seed is not None else random.Random()
        self.q = collections.deque()  # (deliver_at, packet), deliver_at non-decreasing
        self.busy_until = 0.0
        self.last_deliver = 0.0
        self.rx_packets = self.rx_bytes = 0
        self.fwd_packets = self.fwd_bytes = 0
        self.drop_loss = self.drop_queue = self.drop_cut = self.drop_error = 0
        self.drop_bytes = 0
        self.max_wait = 0.0
        self.max_late = 0.0
        self.max_late_at = 0.0
        self.sum_late = 0.0
        self.late_1ms = self.late_5ms = 0

    def stats(self, start):
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "fwd_packets": self.fwd_packets, "fwd_bytes": self.fwd_bytes,
            "drop_loss": self.drop_loss, "drop_queue": self.drop_queue,
            "drop_cut": self.drop_cut, "drop_error": self.drop_error,
            "drop_bytes": self.drop_bytes,
            "max_queue_ms": round(self.max_wait * 1000.0, 3),
            "in_flight": len(self.q),
            "max_late_ms": round(self.max_late * 1000.0, 3),
            "max_late_at_s": round(self.max_late_at - start, 3) if self.max_late else None,
            "mean_late_ms": round(self.sum_late * 1000.0 / self.fwd_packets, 3) if self.fwd_packets else 0.0,
            "late_over_1ms": self.late_1ms, "late_over_5ms": self.late_5ms,
        }

    def ingest(self, now, cut):
        """Drain the source TUN (up to DRAIN_BATCH packets) into the schedule."""
        read = os.read
        src = self.src
        q_append = self.q.append
        loss = self.loss
        rnd = self.rng.random
        bit_time = self.bit_time
        qlimit = self.queue
        delay = self.delay
        jitter = self.jitter
        busy = self.busy_until
        last = self.last_deliver
        n_rx = b_rx = 0
        for _ in range(DRAIN_BATCH):
            try:
                pkt = read(src, READ_MAX)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    break
                raise
            size = len(pkt)
            n_rx += 1
            b_rx += size
            if cut:
                self.drop_cut += 1
                self.drop_bytes += size
                continue
            if loss and rnd() < loss:
                self.drop_loss += 1
                self.drop_bytes += size
                continue
            if bit_time:
                if busy > now:
                    wait = busy - now
                    if wait > qlimit:
                        self.drop_queue += 1
                        self.drop_bytes += size
                        continue
                    if wait > self.max_wait:
                        self.max_wait = wait
                    busy += size * bit_time
                else:
                    busy = now + size * bit_time
                t = busy + delay
            else:
                t = now + delay
            if jitter:
                t += rnd() * jitter
            if t < last:
                t = last
            last = t
            q_append((t, pkt))
        self.busy_until = busy
        self.last_deliver = last
        self.rx_packets += n_rx
        self.rx_bytes += b_rx
        return n_rx == DRAIN_BATCH  # more may be waiting

    def deliver(self, now, cut):
        """Write every packet due by `now`; return the next due time or None."""
        q = self.q
        write = os.write
        dst = self.dst
        n = b = 0
        while q:
            t, pkt = q[0]
            if t > now:
                break
            q.popleft()
            if cut:
                self.drop_cut += 1
                self.drop_bytes += len(pkt)
                continue
            late = now - t
            try:
                write(dst, pkt)
            except OSError:
                self.drop_error += 1
                self.drop_bytes += len(pkt)
                continue
            n += 1
            b += len(pkt)
            self.sum_late += late
            if late > 0.001:
                self.late_1ms += 1
                if late > 0.005:
                    self.late_5ms += 1
                if late > self.max_late:
                    self.max_late = late
                    self.max_late_at = now
        self.fwd_packets += n
        self.fwd_bytes += b
        return q[0][0] if q else None


class Emulator:
    def __init__(self, args, clinic_fd, hub_fd):
        self.args = args
        self.c2h = Direction("c2h", clinic_fd, hub_fd, args, args.seed)
        self.h2c = Direction("h2c", hub_fd, clinic_fd, args, args.seed)
        self.by_fd = {clinic_fd: self.c2h, hub_fd: self.h2c}
        self.cut = False
        self.stop = False
        self.start = time.monotonic()
        self.max_stall = 0.0  # how much later than asked epoll (i.e. this process) woke up
        self.max_stall_at = 0.0
        self.stats_cv = threading.Condition()
        self.stats_pending = None
        self.sig_fd = None
        self.ep = select.epoll()
        for fd in (clinic_fd, hub_fd):
            self.ep.register(fd, select.EPOLLIN)

    def attach_signals(self, sig_fd):
        """SIGTERM/SIGINT stop, SIGUSR1 cuts the link, SIGUSR2 restores it."""
        self.sig_fd = sig_fd
        self.ep.register(sig_fd, select.EPOLLIN)

    def on_signals(self):
        while True:
            try:
                info = os.read(self.sig_fd, 128)
            except BlockingIOError:
                return
            if len(info) < 128:
                return
            signo, _errno, _code, pid = struct.unpack_from("IiiI", info)
            name = signal.Signals(signo).name
            if signo in (signal.SIGTERM, signal.SIGINT):
                log(f"{name} from {sender(pid)}: stopping")
                self.stop = True
            elif signo == signal.SIGUSR1:
                log(f"{name} from {sender(pid)}: link CUT (dropping everything both ways)")
                self.cut = True
            elif signo == signal.SIGUSR2:
                log(f"{name} from {sender(pid)}: link restored")
                self.cut = False

    def snapshot(self):
        t = os.times()
        a = self.args
        return {
            "uptime_s": round(time.monotonic() - self.start, 3),
            "cut": self.cut,
            "cpu_s": round(t.user + t.system, 3),
            "config": {"prefix": a.prefix, "rtt_ms": a.rtt_ms, "loss": a.loss,
                       "rate_mbit": a.rate_mbit, "jitter_ms": a.jitter_ms,
                       "queue_ms": a.queue_ms, "seed": a.seed, "tcp_cc": a.tcp_cc},
            "max_wake_late_ms": round(self.max_stall * 1000.0, 3),
            "max_wake_late_at_s": round(self.max_stall_at - self.start, 3) if self.max_stall else None,
            "c2h": self.c2h.stats(self.start),
            "h2c": self.h2c.stats(self.start),
        }

    def write_stats(self, sync=False):
        """Hand a snapshot to the writer thread: file system calls can block
        for tens or hundreds of milliseconds while a compiler hammers the disk,
        and the forwarding loop must not stall (it did, before this thread)."""
        if not self.args.stats_file:
            return
        snap = self.snapshot()
        if sync:
            self._write_file(snap)
            return
        with self.stats_cv:
            self.stats_pending = snap
            self.stats_cv.notify()

    def _write_file(self, obj):
        path = self.args.stats_file
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            f.write(json.dumps(obj) + "\n")
        os.replace(tmp, path)

    def _stats_writer(self):
        while True:
            with self.stats_cv:
                while self.stats_pending is None:
                    self.stats_cv.wait()
                snap, self.stats_pending = self.stats_pending, None
            try:
                self._write_file(snap)
            except OSError as e:
                print(f"linkemu: stats file: {e}", file=sys.stderr)

    def start_stats_writer(self):
        if self.args.stats_file:
            threading.Thread(target=self._stats_writer, name="stats", daemon=True).start()

    def loop(self):
        c2h, h2c = self.c2h, self.h2c
        by_fd = self.by_fd
        poll = self.ep.poll
        mono = time.monotonic
        sig_fd = self.sig_fd
        next_stats = mono() + 1.0
        timeout = 0.0
        deadline = mono()
        while not self.stop:
            events = poll(timeout)
            now = mono()
            if now - deadline > self.max_stall:
                self.max_stall = now - deadline
                self.max_stall_at = now
            cut = self.cut
            more = False
            for fd, _ev in events:
                d = by_fd.get(fd)
                if d is not None:
                    if d.ingest(now, cut):
                        more = True
                elif fd == sig_fd:
                    self.on_signals()
            cut = self.cut
            n1 = c2h.deliver(now, cut) if c2h.q else None
            n2 = h2c.deliver(now, cut) if h2c.q else None
            if now >= next_stats:
                self.write_stats()
                next_stats = now + 1.0
            if more:
                timeout = 0.0
                deadline = mono()
                continue
            nxt = next_stats
            if n1 is not None and n1 < nxt:
                nxt = n1
            if n2 is not None and n2 < nxt:
                nxt = n2
            # epoll rounds up to whole milliseconds, so this never wakes early
            t = mono()
            timeout = max(0.0, nxt - t)
            deadline = t + timeout + 0.001  # epoll's millisecond rounding is not a stall
        self.write_stats(sync=True)


def pid_path(prefix):
    return os.path.join(STATE_DIR, f"{prefix}.pid")


def cmd_up(args):
    if os.geteuid() != 0:
        sys.exit("linkemu: needs root (network namespaces, TUN)")
    if args.queue_ms is None:
        args.queue_ms = max(100.0, args.rtt_ms)
    prefix = args.prefix
    os.makedirs(STATE_DIR, exist_ok=True)
    stale = [ns for ns in ns_names(prefix) if os.path.exists(os.path.join(NETNS_DIR, ns))]
    if stale:
        log(f"removing stale namespaces {' '.join(stale)}")
        cmd_down(args, quiet=True)
    emu = None
    # From here on SIGTERM/SIGINT/SIGUSR* are blocked and queue up in the
    # signalfd (read by the loop), so a stop during setup still cleans up.
    # Must happen before any thread is started (threads inherit the mask).
    sig_fd = open_signalfd(HANDLED_SIGNALS)
    try:
        clinic_fd, hub_fd = setup(prefix, args.clinic_ip, args.hub_ip, args.tcp_cc)
        emu = Emulator(args, clinic_fd, hub_fd)
        emu.attach_signals(sig_fd)
        if args.rt_prio > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_prio))
            except OSError as e:
                log(f"SCHED_FIFO not available ({e}); timing will suffer under load")
        with open(pid_path(prefix), "w") as f:
            f.write(f"{os.getpid()}\n")
        if args.pid_file:
            with open(args.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        emu.write_stats(sync=True)
        emu.start_stats_writer()
        print("READY", flush=True)
        log(f"forwarding {args.clinic_ip} <-> {args.hub_ip}: rtt {args.rtt_ms:g} ms, loss {args.loss:g}, "
            f"rate {args.rate_mbit:g} Mbit/s, jitter {args.jitter_ms:g} ms, queue {args.queue_ms:g} ms")
        emu.loop()
    finally:
        # signals stay blocked: another SIGTERM cannot interrupt the cleanup
        if emu is not None:
            for fd in emu.by_fd:
                os.close(fd)
        delete_namespaces(prefix)
        for p in (pid_path(prefix), args.pid_file):
            if p:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        log(f"namespaces {' '.join(ns_names(prefix))} removed")
    return 0


def cmd_down(args, quiet=False):
    path = pid_path(args.prefix)
    try:
        pid = int(open(path).read().strip())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except FileNotFoundError:
            cmdline = b""
        if b"linkemu" in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    delete_namespaces(args.prefix)
    if not quiet:
        print(f"linkemu: {args.prefix} down", file=sys.stderr)
    return 0


def main():
    ap = argparse.ArgumentParser(description="per-packet WAN link emulator between two network namespaces")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create the namespaces and forward until SIGTERM")
    up.add_argument("--prefix", default="mrl")
    up.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip delay added (rtt/2 each way)")
    up.add_argument("--loss", type=float, default=0.0, help="Bernoulli loss probability, each direction")
    up.add_argument("--rate-mbit", type=float, default=0.0, help="rate cap each direction (0 = none)")
    up.add_argument("--jitter-ms", type=float, default=0.0, help="extra uniform one-way delay [0, J], no reordering")
    up.add_argument("--queue-ms", type=float, default=None, help="drop-tail queue in ms of data (default max(100, rtt))")
    up.add_argument("--seed", type=int, default=None)
    up.add_argument("--stats-file")
    up.add_argument("--pid-file")
    up.add_argument("--tcp-cc", help="TCP congestion control inside both namespaces "
                    "(e.g. cubic; default: inherited from the host, which may be bbr)")
    up.add_argument("--rt-prio", type=int, default=10,
                    help="SCHED_FIFO priority of the forwarder (0 = normal scheduling)")
    up.add_argument("--clinic-ip", default="10.201.0.1")
    up.add_argument("--hub-ip", default="10.201.0.2")
    down = sub.add_parser("down", help="stop a running emulator and delete its namespaces")
    down.add_argument("--prefix", default="mrl")
    args = ap.parse_args()
    try:
        if args.cmd == "up":
            return cmd_up(args)
        return cmd_down(args)
    except (RuntimeError, OSError) as e:
        print(f"linkemu: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
