//! SFU forwarding cost against its physical floor, measured side by side.
//!
//! One publisher streams 1 Mbit/s of VP8-sized packets (1100-byte payload)
//! to N subscribers through the real engine (real ICE, DTLS, SRTP and SDP,
//! in-memory wire, see `sfu::sim`). Reported per N:
//! - engine CPU time per forwarded packet, and its ratio to the cost of
//!   SRTP-protecting the same packet once (the floor: a forwarder must at
//!   least encrypt every copy it sends), measured in the same run;
//! - ingress -> egress latency: the time from a publisher datagram entering
//!   the engine until its last forwarded copy is ready to send, p50/p99;
//! - heap held by the engine per subscriber (allocations made inside engine
//!   calls and still live), with 3 s of retransmission history filled.
//!
//! Run: `cargo bench --bench sfu_forward` (release build).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use medrelay::sfu::sim::Net;

// Allocation attribution: every block carries a one-word header saying
// whether it was allocated inside an engine call; live bytes are tracked per
// owner so the engine's share can be told from the simulated browsers'.
struct Counting;

thread_local! {
    static IN_ENGINE: Cell<bool> = const { Cell::new(false) };
}
static ENGINE_LIVE: AtomicI64 = AtomicI64::new(0);
const HDR: usize = 16;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(l.size() + HDR, l.align().max(HDR)) else {
            return std::ptr::null_mut();
        };
        // SAFETY: layout has non-zero size (HDR > 0).
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            return p;
        }
        let engine = IN_ENGINE.try_with(|f| f.get()).unwrap_or(false);
        // SAFETY: p is valid for HDR bytes and suitably aligned for u64.
        unsafe { (p as *mut u64).write(engine as u64) };
        if engine {
            ENGINE_LIVE.fetch_add(l.size() as i64, Relaxed);
        }
        // SAFETY: within the allocation.
        unsafe { p.add(HDR) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, l: Layout) {
        // SAFETY: ptr came from alloc above, so the header precedes it.
        let p = unsafe { ptr.sub(HDR) };
        // SAFETY: header written at allocation.
        let engine = unsafe { (p as *const u64).read() } == 1;
        if engine {
            ENGINE_LIVE.fetch_sub(l.size() as i64, Relaxed);
        }
        if let Ok(layout) = Layout::from_size_align(l.size() + HDR, l.align().max(HDR)) {
            // SAFETY: same layout as allocated.
            unsafe { System.dealloc(p, layout) };
        }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn scope(on: bool) {
    IN_ENGINE.with(|f| f.set(on));
}

const PAYLOAD: usize = 1100;
/// 1 Mbit/s of 1100-byte packets.
const INTERVAL: Duration = Duration::from_micros(8_800);

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

struct Run {
    per_packet: Duration,
    p50: Duration,
    p99: Duration,
    mem_per_sub: f64,
    forwarded: u64,
}

fn run(subscribers: usize, packets: u16) -> Run {
    let names: Vec<String> = (0..=subscribers).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut net = Net::with_scope(|c| c.max_participants = subscribers + 1, &refs, scope);
    let base_mem = ENGINE_LIVE.load(Relaxed);
    net.publish_video(0);
    net.run_for(Duration::from_secs(2), Duration::from_millis(5));
    let mut seq: u16 = 0;
    let mut send = |net: &mut Net, n: u16| {
        for _ in 0..n {
            net.send_video(0, seq, seq as u32 * 792, seq.is_multiple_of(100), PAYLOAD);
            net.now += INTERVAL;
            net.timers();
            seq = seq.wrapping_add(1);
        }
    };
    // Warm-up: tracks open, subscribers renegotiate and get a keyframe, and
    // 3.5 s of history fills up.
    send(&mut net, 400);
    let mem = ENGINE_LIVE.load(Relaxed) - base_mem;
    let out0 = net.metrics.rtp_out.load(Relaxed);
    net.measure = true;
    net.engine_busy = Duration::ZERO;
    net.timer_busy = Duration::ZERO;
    net.latencies.clear();
    send(&mut net, packets);
    net.measure = false;
    let forwarded = net.metrics.rtp_out.load(Relaxed) - out0;
    let mut lat = std::mem::take(&mut net.latencies);
    eprintln!(
        "  ({subscribers} subscribers: {:.0} % of engine time in timers)",
        100.0 * net.timer_busy.as_secs_f64() / net.engine_busy.as_secs_f64().max(1e-9)
    );
    Run {
        per_packet: net.engine_busy / forwarded.max(1) as u32,
        p50: percentile(&mut lat, 0.50),
        p99: percentile(&mut lat, 0.99),
        mem_per_sub: mem as f64 / subscribers as f64,
        forwarded,
    }
}

/// Cost of SRTP-protecting the same RTP packet, per packet.
fn srtp_floor(profile: rtc::srtp::protection_profile::ProtectionProfile) -> Duration {
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let key = vec![7u8; profile.key_len()];
    let salt = vec![9u8; profile.salt_len()];
    let mut ctx =
        rtc::srtp::context::Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("srtp context");
    let mut pkt = vec![0u8; 12 + PAYLOAD];
    pkt[0] = 0x80;
    pkt[1] = 96;
    pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    let n = 200_000u32;
    // Warm up, then measure.
    for i in 0..10_000u32 {
        pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        let _ = ctx.encrypt_rtp(&pkt);
    }
    let t0 = Instant::now();
    for i in 0..n {
        pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        std::hint::black_box(ctx.encrypt_rtp(std::hint::black_box(&pkt)).ok());
    }
    t0.elapsed() / n
}

/// What one `send_to` of a 1200-byte datagram costs on this machine
/// (loopback), to turn the engine's ingress->last-copy time into an
/// ingress->last-datagram-sent estimate: the I/O loop sends every copy.
fn udp_send_cost() -> Duration {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let to = rx.local_addr().expect("addr");
    let buf = [0u8; 1200];
    let n = 20_000u32;
    let t0 = Instant::now();
    for i in 0..n {
        let _ = tx.send_to(&buf, to);
        if i % 64 == 63 {
            // Keep the receiver's buffer from filling up.
            let mut r = [0u8; 1500];
            rx.set_nonblocking(true).ok();
            while rx.recv(&mut r).is_ok() {}
        }
    }
    t0.elapsed() / n
}

/// The same 1200-byte datagrams sent as one `sendmmsg` burst of `n`, per datagram.
fn udp_batch_cost(n: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _g = rt.enter();
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    rx.set_nonblocking(true).ok();
    let to = rx.local_addr().expect("addr");
    let std_tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    std_tx.set_nonblocking(true).ok();
    let tx = tokio::net::UdpSocket::from_std(std_tx).expect("tokio socket");
    let burst: Vec<medrelay::sfu::engine::Transmit> = (0..n)
        .map(|_| medrelay::sfu::engine::Transmit {
            to,
            data: bytes::BytesMut::from(&[0u8; 1200][..]),
        })
        .collect();
    let rounds = 400u32;
    let mut total = Duration::ZERO;
    let mut r = [0u8; 1500];
    for _ in 0..rounds {
        let t0 = Instant::now();
        let sent = medrelay::sfu::io::send_batch(&tx, &burst);
        total += t0.elapsed();
        assert_eq!(sent, n, "loopback burst not fully sent");
        while rx.recv(&mut r).is_ok() {}
    }
    total / (rounds * n as u32)
}

fn main() {
    use rtc::srtp::protection_profile::ProtectionProfile;
    let gcm = srtp_floor(ProtectionProfile::AeadAes128Gcm);
    let cm = srtp_floor(ProtectionProfile::Aes128CmHmacSha1_80);
    println!("floor: SRTP-protect one {PAYLOAD}-byte packet: AEAD_AES_128_GCM {gcm:?}, AES128_CM_HMAC_SHA1_80 {cm:?}");
    let single = udp_send_cost();
    let send = udp_batch_cost(50);
    println!(
        "UDP, one 1200-byte datagram (loopback): send_to {single:?}, sendmmsg in bursts of 50 {send:?} ({:.2}x cheaper)",
        single.as_secs_f64() / send.as_secs_f64()
    );
    // SFU_BENCH_SUBS=50 runs one size only (for profiling).
    let sizes: Vec<usize> = std::env::var("SFU_BENCH_SUBS")
        .ok()
        .and_then(|v| v.split(',').map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 50]);
    for subs in sizes {
        let r = run(subs, 2000);
        // The engine negotiates AEAD_AES_128_GCM first (sfu/media.rs).
        let floor = gcm;
        println!(
            "{subs:>2} subscribers: {} packets forwarded; engine {:?}/packet = {:.2}x the SRTP floor ({:.2}x GCM, {:.2}x CM); \
             ingress->last egress p50 {:?} p99 {:?} (+{} sends: p99 {:?}); engine heap {:.1} KiB/subscriber",
            r.forwarded,
            r.per_packet,
            r.per_packet.as_secs_f64() / floor.as_secs_f64(),
            r.per_packet.as_secs_f64() / gcm.as_secs_f64(),
            r.per_packet.as_secs_f64() / cm.as_secs_f64(),
            r.p50,
            r.p99,
            subs,
            r.p99 + send * subs as u32,
            r.mem_per_sub / 1024.0
        );
    }
}
