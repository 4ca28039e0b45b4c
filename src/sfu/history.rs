//! Retransmission history of one downtrack, RTX framing, and the policy for answering a subscriber's
//! NACKs.
//!
//! Policy, and why:
//!
//! * **Sized by time, not by count.** A subscriber at 800 ms RTT that NACKs, misses the
//!   retransmission and NACKs again needs the packet ~2–3 RTT after it was first sent. The default
//!   window is **3 s** (mediasoup keeps 2 s for video in older releases and 4 s in newer ones;
//!   libwebrtc keeps max(1 s, 3 × RTT)). A count-sized buffer would hold 3 s at 300 kbit/s but only
//!   0.3 s at 3 Mbit/s.
//! * **And capped by count** (`max_packets`, **4096**): a memory bound whatever the bitrate. 4096
//!   packets in 3 s is ~1365 packets/s, about 13 Mbit/s of full-size packets, far above our links
//!   (libwebrtc caps at 9600).
//! * **Keyed by outgoing sequence number** (what the subscriber NACKs), in a ring indexed by the
//!   extended sequence number, so push, lookup and eviction are O(1); the munger keeps outgoing numbers
//!   contiguous, so the ring has few holes. Payloads are `Bytes`: storing is a reference-count bump.
//! * **Duplicate NACKs.** A packet retransmitted less than 0.8 × RTT ago (clamped to **20 ms … 1 s**)
//!   is not sent again: a receiver re-NACKs at most once per RTT (libwebrtc's NackRequester; early
//!   LiveKit used a fixed 100 ms), so anything sooner is a duplicate. The 0.8 allows for our RTT
//!   estimate disagreeing with the receiver's; the 1 s cap keeps a bad estimate from silencing us.
//! * **At most 5 retransmissions per packet**: at 5 % loss the chance that five copies are all lost
//!   is 3·10⁻⁷; beyond that, the subscriber should ask for a keyframe instead.
//! * **Bytes-per-second cap** (token bucket, default **500 kbit/s**, **500 ms** deep, like libwebrtc's
//!   retransmission rate limiter window): retransmissions compete with fresh media on the same weak
//!   link and must not starve it. The forwarder should set the rate to ~25 % of the subscriber's
//!   bandwidth estimate with [`NackResponder::set_max_rate_bps`]: 1–5 % loss needs ≤ 5 %, and 25 %
//!   leaves room for loss bursts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::munger::SeqUnwrapper;

/// Fixed RTP header size, counted against the retransmission budget with the payload.
pub const RTP_HEADER_LEN: usize = 12;

/// History settings.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// How long a packet stays available for retransmission.
    pub window: Duration,
    /// Hard cap on ring slots (stored packets plus holes), whatever the bitrate.
    pub max_packets: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3),
            max_packets: 4096,
        }
    }
}

/// An already-munged packet, ready to be resent as-is or wrapped in RTX. Header extensions are
/// written fresh by the sender on every transmission (transport-wide seq, abs-send-time), so they are
/// not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPacket {
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Bytes,
}

impl HistoryPacket {
    /// Size counted against the retransmission rate budget.
    pub fn wire_len(&self) -> usize {
        RTP_HEADER_LEN + self.payload.len()
    }
}

#[derive(Debug, Clone)]
struct Slot {
    packet: HistoryPacket,
    stored_at: Instant,
    retransmits: u8,
    last_retransmit: Option<Instant>,
}

/// Time-windowed, count-capped store of sent packets of one downtrack, keyed by outgoing seq.
#[derive(Debug, Clone)]
pub struct RetransmitHistory {
    cfg: HistoryConfig,
    slots: VecDeque<Option<Slot>>,
    /// Extended seq of `slots[0]`.
    base: u64,
    unwrapper: SeqUnwrapper,
    stored: usize,
    bytes: usize,
}

impl RetransmitHistory {
    pub fn new(cfg: HistoryConfig) -> Self {
        Self {
            cfg: HistoryConfig {
                max_packets: cfg.max_packets.max(1),
                ..cfg
            },
            slots: VecDeque::new(),
            base: 0,
            unwrapper: SeqUnwrapper::new(),
            stored: 0,
            bytes: 0,
        }
    }

    /// Number of stored packets.
    pub fn len(&self) -> usize {
        self.stored
    }

    pub fn is_empty(&self) -> bool {
        self.stored == 0
    }

    /// Payload bytes held (shared with other downtracks, so an upper bound on what we own).
    pub fn stored_bytes(&self) -> usize {
        self.bytes
    }

    /// Stores a sent packet; returns false if it is older than anything still kept.
    pub fn push(&mut self, now: Instant, out_seq: u16, packet: HistoryPacket) -> bool {
        let ext = self.unwrapper.update(out_seq);
        let max = self.cfg.max_packets as u64;
        if self.slots.is_empty() || ext >= self.base + self.slots.len() as u64 + max {
            // Empty, or so far ahead that nothing kept would survive the cap anyway.
            self.clear_slots();
            self.base = ext;
        } else if ext < self.base {
            return false;
        }
        let mut idx = (ext - self.base) as usize;
        while self.slots.len() <= idx {
            self.slots.push_back(None);
        }
        while self.slots.len() > self.cfg.max_packets {
            self.pop_front();
            idx -= 1;
        }
        let slot = Slot {
            stored_at: now,
            retransmits: 0,
            last_retransmit: None,
            packet,
        };
        self.bytes += slot.packet.payload.len();
        self.stored += 1;
        if let Some(old) = self.slots[idx].replace(slot) {
            self.bytes -= old.packet.payload.len();
            self.stored -= 1;
        }
        self.evict(now);
        true
    }

    /// The stored packet for an outgoing seq. Does not look at the clock: call [`Self::evict`] first
    /// when exact expiry matters (the NACK responder does).
    pub fn get(&self, out_seq: u16) -> Option<&HistoryPacket> {
        self.slot(out_seq).map(|s| &s.packet)
    }

    /// Drops packets older than the window relative to `now`, and holes in front of them.
    pub fn evict(&mut self, now: Instant) {
        while let Some(front) = self.slots.front() {
            let expired = front
                .as_ref()
                .is_none_or(|s| now.saturating_duration_since(s.stored_at) >= self.cfg.window);
            if !expired {
                break;
            }
            self.pop_front();
        }
    }

    fn index(&self, out_seq: u16) -> Option<usize> {
        let ext = self.unwrapper.peek(out_seq)?;
        let idx = ext.checked_sub(self.base)?;
        (idx < self.slots.len() as u64).then_some(idx as usize)
    }

    fn slot(&self, out_seq: u16) -> Option<&Slot> {
        self.slots.get(self.index(out_seq)?)?.as_ref()
    }

    fn slot_mut(&mut self, out_seq: u16) -> Option<&mut Slot> {
        let idx = self.index(out_seq)?;
        self.slots.get_mut(idx)?.as_mut()
    }

    fn pop_front(&mut self) {
        if let Some(Some(old)) = self.slots.pop_front() {
            self.bytes -= old.packet.payload.len();
            self.stored -= 1;
        }
        self.base += 1;
    }

    fn clear_slots(&mut self) {
        self.slots.clear();
        self.stored = 0;
        self.bytes = 0;
    }
}

/// RFC 4588 RTX payload: the original sequence number (big-endian) followed by the original payload.
/// One copy is unavoidable because of the 2-byte prefix.
pub fn rtx_payload(osn: u16, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + payload.len());
    buf.put_u16(osn);
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// Splits an RTX payload into (original seq, original payload); `None` if too short. Used on the
/// publisher side to feed recovered packets back into the receive path.
pub fn parse_rtx_payload(rtx: &[u8]) -> Option<(u16, &[u8])> {
    let (osn, rest) = rtx.split_first_chunk::<2>()?;
    Some((u16::from_be_bytes(*osn), rest))
}

/// Sequence numbers of a downtrack's RTX stream, which has its own SSRC and numbering (RFC 4588 §4).
#[derive(Debug, Clone)]
pub struct RtxSequencer {
    next: u16,
}

impl RtxSequencer {
    /// `start` should be random (RFC 3550 §5.1); chosen by the caller to keep this deterministic.
    pub fn new(start: u16) -> Self {
        Self { next: start }
    }

    pub fn next_seq(&mut self) -> u16 {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        seq
    }
}

/// NACK responder settings.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// Lower clamp of the duplicate-suppression interval (LAN, or no RTT estimate yet).
    pub min_interval: Duration,
    /// Upper clamp of the duplicate-suppression interval.
    pub max_interval: Duration,
    /// Retransmissions allowed per packet.
    pub max_retransmits: u8,
    /// Retransmission budget in bits per second.
    pub max_rate_bps: u64,
    /// Depth of the token bucket, as time at `max_rate_bps`.
    pub burst: Duration,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(1),
            max_retransmits: 5,
            max_rate_bps: 500_000,
            burst: Duration::from_millis(500),
        }
    }
}

/// Outcome counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    pub sent: u64,
    pub sent_bytes: u64,
    /// Not (or no longer) in the history.
    pub missing: u64,
    /// Retransmitted too recently: a duplicate NACK.
    pub too_soon: u64,
    /// Already retransmitted `max_retransmits` times.
    pub exhausted: u64,
    /// Over the byte budget.
    pub rate_limited: u64,
}

impl ResponderStats {
    /// All NACKed packets not sent for policy reasons.
    pub fn throttled(&self) -> u64 {
        self.too_soon + self.exhausted + self.rate_limited
    }
}

/// Byte budget refilled continuously from the time passed in.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate_bps: u64,
    burst: Duration,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Never smaller than two full-size packets, or a low rate could never send anything.
    const MIN_CAPACITY: f64 = 3000.0;

    fn new(rate_bps: u64, burst: Duration) -> Self {
        let mut bucket = Self {
            rate_bps,
            burst,
            tokens: 0.0,
            last: None,
        };
        bucket.tokens = bucket.capacity();
        bucket
    }

    fn capacity(&self) -> f64 {
        (self.rate_bps as f64 / 8.0 * self.burst.as_secs_f64()).max(Self::MIN_CAPACITY)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate_bps as f64 / 8.0).min(self.capacity());
        }
        if self.last.is_none_or(|last| now > last) {
            self.last = Some(now);
        }
    }

    fn try_take(&mut self, bytes: usize) -> bool {
        let bytes = bytes as f64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

/// Decides which NACKed packets of one downtrack to retransmit.
#[derive(Debug, Clone)]
pub struct NackResponder {
    cfg: ResponderConfig,
    bucket: TokenBucket,
    stats: ResponderStats,
}

impl NackResponder {
    pub fn new(cfg: ResponderConfig) -> Self {
        let bucket = TokenBucket::new(cfg.max_rate_bps, cfg.burst);
        Self {
            cfg,
            bucket,
            stats: ResponderStats::default(),
        }
    }

    pub fn stats(&self) -> ResponderStats {
        self.stats
    }

    /// Follows the subscriber's bandwidth estimate (recommended: ~25 % of it).
    pub fn set_max_rate_bps(&mut self, bps: u64) {
        self.cfg.max_rate_bps = bps;
        self.bucket.rate_bps = bps;
        self.bucket.tokens = self.bucket.tokens.min(self.bucket.capacity());
    }

    /// Minimum spacing between two retransmissions of one packet at this RTT.
    pub fn resend_interval(&self, rtt: Duration) -> Duration {
        rtt.mul_f64(0.8).clamp(self.cfg.min_interval, self.cfg.max_interval)
    }

    /// Handles one NACK (outgoing seqs): returns, in request order, the seqs to retransmit now (fetch
    /// them with [`RetransmitHistory::get`]) and marks them as retransmitted.
    pub fn on_nack(&mut self, history: &mut RetransmitHistory, now: Instant, rtt: Duration, seqs: &[u16]) -> Vec<u16> {
        history.evict(now);
        self.bucket.refill(now);
        let interval = self.resend_interval(rtt);
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let Some(slot) = history.slot_mut(seq) else {
                self.stats.missing += 1;
                continue;
            };
            if slot.retransmits >= self.cfg.max_retransmits {
                self.stats.exhausted += 1;
                continue;
            }
            if slot
                .last_retransmit
                .is_some_and(|t| now.saturating_duration_since(t) < interval)
            {
                self.stats.too_soon += 1;
                continue;
            }
            let len = slot.packet.wire_len();
            if !self.bucket.try_take(len) {
                self.stats.rate_limited += 1;
                continue;
            }
            slot.retransmits += 1;
            slot.last_retransmit = Some(now);
            self.stats.sent += 1;
            self.stats.sent_bytes += len as u64;
            out.push(seq);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ts: u32, len: usize) -> HistoryPacket {
        HistoryPacket {
            timestamp: ts,
            marker: false,
            payload_type: 96,
            payload: Bytes::from(vec![ts as u8; len]),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn push_and_get_across_wrap() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig::default());
        assert!(h.is_empty());
        for (i, seq) in [65_533u16, 65_534, 65_535, 0, 1, 2].into_iter().enumerate() {
            assert!(h.push(t0, seq, packet(i as u32, 100)));
        }
        assert_eq!(h.len(), 6);
        assert_eq!(h.stored_bytes(), 600);
        assert_eq!(h.get(65_535).map(|p| p.timestamp), Some(2));
        assert_eq!(h.get(0).map(|p| p.timestamp), Some(3));
        assert_eq!(h.get(2).map(|p| p.timestamp), Some(5));
        assert!(h.get(3).is_none());
        assert!(h.get(65_532).is_none());
        assert!(h.get(30_000).is_none());
    }

    #[test]
    fn storing_is_a_refcount_bump() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig::default());
        let p = packet(1, 1200);
        let ptr = p.payload.as_ptr();
        h.push(t0, 7, p.clone());
        assert_eq!(h.get(7).map(|p| p.payload.as_ptr()), Some(ptr));
    }

    #[test]
    fn evicts_by_time_window() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig::default());
        for i in 0..300u16 {
            // 100 packets per second.
            h.push(t0 + ms(u64::from(i) * 10), i, packet(u32::from(i), 10));
        }
        // At 2.99 s nothing has expired yet.
        assert_eq!(h.len(), 300);
        h.evict(t0 + ms(3000));
        assert!(h.get(0).is_none());
        assert!(h.get(1).is_some());
        h.evict(t0 + ms(4000));
        assert_eq!(h.len(), 199);
        assert!(h.get(100).is_none());
        assert!(h.get(101).is_some());
        h.evict(t0 + ms(10_000));
        assert!(h.is_empty());
        assert_eq!(h.stored_bytes(), 0);
    }

    #[test]
    fn window_is_configurable() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig {
            window: ms(500),
            ..HistoryConfig::default()
        });
        h.push(t0, 1, packet(1, 10));
        h.push(t0 + ms(499), 2, packet(2, 10));
        assert!(h.get(1).is_some());
        h.push(t0 + ms(500), 3, packet(3, 10));
        assert!(h.get(1).is_none());
        assert!(h.get(2).is_some());
    }

    #[test]
    fn capped_by_packet_count() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig {
            max_packets: 64,
            ..HistoryConfig::default()
        });
        for i in 0..1000u16 {
            h.push(t0, i.wrapping_add(65_000), packet(u32::from(i), 10));
        }
        assert_eq!(h.len(), 64);
        assert_eq!(h.stored_bytes(), 640);
        assert!(h.get(65_000u16.wrapping_add(935)).is_none());
        assert!(h.get(65_000u16.wrapping_add(936)).is_some());
        assert!(h.get(65_000u16.wrapping_add(999)).is_some());
    }

    #[test]
    fn late_packet_fills_its_hole_but_too_old_is_rejected() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig {
            max_packets: 8,
            ..HistoryConfig::default()
        });
        h.push(t0, 10, packet(10, 10));
        h.push(t0, 12, packet(12, 10));
        assert!(h.get(11).is_none());
        assert!(h.push(t0, 11, packet(11, 10)));
        assert_eq!(h.get(11).map(|p| p.timestamp), Some(11));
        for s in 13..20 {
            h.push(t0, s, packet(u32::from(s), 10));
        }
        assert!(!h.push(t0, 10, packet(10, 10)), "slot already evicted");
        // Replacing a stored packet keeps the accounting right.
        h.push(t0, 19, packet(99, 20));
        assert_eq!(h.len(), 8);
        assert_eq!(h.stored_bytes(), 7 * 10 + 20);
    }

    #[test]
    fn huge_jump_starts_over() {
        let t0 = Instant::now();
        let mut h = RetransmitHistory::new(HistoryConfig {
            max_packets: 16,
            ..HistoryConfig::default()
        });
        h.push(t0, 1, packet(1, 10));
        h.push(t0, 1000, packet(2, 10));
        assert_eq!(h.len(), 1);
        assert!(h.get(1).is_none());
        assert!(h.get(1000).is_some());
    }

    #[test]
    fn rtx_payload_roundtrip() {
        let rtx = rtx_payload(0xBEEF, &[1, 2, 3]);
        assert_eq!(&rtx[..], &[0xBE, 0xEF, 1, 2, 3]);
        assert_eq!(parse_rtx_payload(&rtx), Some((0xBEEF, &[1u8, 2, 3][..])));
        assert_eq!(parse_rtx_payload(&[0, 5]), Some((5, &[][..])));
        assert_eq!(parse_rtx_payload(&[1]), None);
    }

    #[test]
    fn rtx_sequencer_wraps() {
        let mut s = RtxSequencer::new(65_535);
        assert_eq!(s.next_seq(), 65_535);
        assert_eq!(s.next_seq(), 0);
        assert_eq!(s.next_seq(), 1);
    }

    fn filled(n: u16, len: usize, t0: Instant) -> RetransmitHistory {
        let mut h = RetransmitHistory::new(HistoryConfig::default());
        for s in 0..n {
            h.push(t0, s, packet(u32::from(s), len));
        }
        h
    }

    #[test]
    fn responder_sends_and_counts_missing() {
        let t0 = Instant::now();
        let mut h = filled(10, 100, t0);
        let mut r = NackResponder::new(ResponderConfig::default());
        let sent = r.on_nack(&mut h, t0 + ms(5), ms(200), &[3, 4, 500]);
        assert_eq!(sent, vec![3, 4]);
        let st = r.stats();
        assert_eq!((st.sent, st.missing, st.sent_bytes), (2, 1, 224));
    }

    #[test]
    fn duplicate_nacks_within_rtt_are_suppressed() {
        let t0 = Instant::now();
        let mut h = filled(10, 100, t0);
        let mut r = NackResponder::new(ResponderConfig::default());
        let rtt = ms(300);
        assert_eq!(r.on_nack(&mut h, t0, rtt, &[5, 5]), vec![5]);
        assert_eq!(r.stats().too_soon, 1);
        assert!(r.on_nack(&mut h, t0 + ms(239), rtt, &[5]).is_empty());
        assert_eq!(r.on_nack(&mut h, t0 + ms(240), rtt, &[5]), vec![5]);
        assert_eq!(r.stats().too_soon, 2);
    }

    #[test]
    fn resend_interval_is_clamped() {
        let r = NackResponder::new(ResponderConfig::default());
        assert_eq!(r.resend_interval(Duration::ZERO), ms(20));
        assert_eq!(r.resend_interval(ms(100)), ms(80));
        assert_eq!(r.resend_interval(ms(5000)), ms(1000));
    }

    #[test]
    fn retransmits_per_packet_are_capped() {
        let t0 = Instant::now();
        let mut h = filled(4, 100, t0);
        let mut r = NackResponder::new(ResponderConfig::default());
        let mut sent = 0;
        for i in 0..8u64 {
            sent += r.on_nack(&mut h, t0 + ms(i * 100), ms(50), &[1]).len();
        }
        assert_eq!(sent, 5);
        assert_eq!(r.stats().exhausted, 3);
    }

    #[test]
    fn rate_limit_in_virtual_time() {
        let t0 = Instant::now();
        let mut h = filled(100, 988, t0); // 1000 bytes on the wire each
        // 80 kbit/s = 10 kB/s, 500 ms deep = 5000 bytes.
        let mut r = NackResponder::new(ResponderConfig {
            max_rate_bps: 80_000,
            ..ResponderConfig::default()
        });
        let all: Vec<u16> = (0..20).collect();
        assert_eq!(r.on_nack(&mut h, t0, ms(100), &all).len(), 5);
        assert_eq!(r.stats().rate_limited, 15);
        // 100 ms later the bucket holds 1000 bytes: one more packet.
        assert_eq!(r.on_nack(&mut h, t0 + ms(100), ms(100), &all[5..]), vec![5]);
        // A long pause refills only up to the bucket depth.
        assert_eq!(r.on_nack(&mut h, t0 + ms(2100), ms(100), &all[6..]).len(), 5);
        // Raising the rate takes effect on refill.
        r.set_max_rate_bps(800_000);
        assert_eq!(r.on_nack(&mut h, t0 + ms(2200), ms(100), &all[11..]).len(), 9);
    }

    #[test]
    fn expired_packets_are_missing() {
        let t0 = Instant::now();
        let mut h = filled(4, 10, t0);
        let mut r = NackResponder::new(ResponderConfig::default());
        assert!(r.on_nack(&mut h, t0 + ms(3000), ms(100), &[1]).is_empty());
        assert_eq!(r.stats().missing, 1);
    }
}
