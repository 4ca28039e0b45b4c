//! NACK generation toward a publisher (one instance per inbound RTP stream), plus the RFC 4585
//! generic-NACK (PID, BLP) packing used on both directions.
//!
//! Policy, and why (for 200–800 ms RTT, 1–5 % loss):
//!
//! * **First NACK after a short reorder delay**: clamp(RTT / 10, **10 ms**, **50 ms**). Mobile
//!   links reorder by a few milliseconds (the publisher's pacer sends 5 ms bursts); NACKing at once
//!   (libwebrtc's default delay is 0, relying on a reordering histogram) would waste a retransmission
//!   on every reordered packet, which on a weak uplink costs more than 10–50 ms of extra latency. The
//!   delay grows with RTT because longer paths reorder more and because recovery already takes an
//!   RTT, so the relative cost stays ~10 %; the cap keeps satellite paths from adding much.
//! * **Re-NACK spaced one RTT apart**, RTT clamped to **[20 ms, 1500 ms]**: sooner, the
//!   retransmission cannot have arrived yet (libwebrtc and mediasoup both wait one RTT); the floor
//!   protects LAN peers from a storm, the ceiling keeps a wild estimate from stalling recovery.
//! * **Give up after 10 NACKs** (libwebrtc's `kMaxNackRetries`; mediasoup uses 8) **or 3 s** after the
//!   gap was seen: past that the publisher's own history (libwebrtc keeps max(1 s, 3 × RTT)) no
//!   longer has the packet, and the decoder needs a keyframe instead.
//! * **At most 512 missing entries** (mediasoup 500, libwebrtc 1000), oldest dropped first: the newest
//!   packets are the ones that can still be rendered in time.
//! * **A jump of more than 1000 sequence numbers resets** instead of NACKing a thousand packets: that
//!   is a sender restart or a long outage, and the fix is a keyframe. A backward jump that large is
//!   believed only when the next packet continues from it.
//! * Retransmissions (after RTX decapsulation) and late originals clear their entry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::munger::{SeqUnwrapper, unwrap_seq};

/// NACK generator settings.
#[derive(Debug, Clone)]
pub struct NackConfig {
    pub min_reorder_delay: Duration,
    pub max_reorder_delay: Duration,
    /// The reorder delay is RTT divided by this, within the clamps above.
    pub reorder_rtt_divisor: u32,
    pub min_rtt: Duration,
    pub max_rtt: Duration,
    /// NACKs sent per missing packet before giving up.
    pub max_tries: u8,
    /// Give up on a packet this long after its gap was detected.
    pub max_age: Duration,
    /// Cap on tracked missing packets.
    pub max_missing: usize,
    /// A jump larger than this is a restart, not loss.
    pub max_jump: u16,
}

impl Default for NackConfig {
    fn default() -> Self {
        Self {
            min_reorder_delay: Duration::from_millis(10),
            max_reorder_delay: Duration::from_millis(50),
            reorder_rtt_divisor: 10,
            min_rtt: Duration::from_millis(20),
            max_rtt: Duration::from_millis(1500),
            max_tries: 10,
            max_age: Duration::from_secs(3),
            max_missing: 512,
            max_jump: 1000,
        }
    }
}

/// What an arriving packet meant to the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First packet of the stream (or after a reset).
    First,
    /// Newest so far; `newly_missing` packets were skipped (and are now tracked).
    InOrder { newly_missing: u16 },
    /// Filled a tracked gap (retransmission or reordered original).
    Recovered,
    /// Already seen, or a gap we had given up on.
    Duplicate,
    /// Too far behind to be this stream; kept as a restart candidate.
    TooOld,
    /// Sender restart (huge jump): tracking started over at this packet.
    Reset,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackStats {
    /// Sequence numbers NACKed (each retry counts).
    pub nacked: u64,
    pub recovered: u64,
    /// Entries dropped after `max_tries` or `max_age`.
    pub gave_up: u64,
    /// Entries dropped because the missing list was full.
    pub overflowed: u64,
    pub resets: u64,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    detected_at: Instant,
    last_sent: Option<Instant>,
    tries: u8,
}

/// Tracks one inbound stream's gaps and says when to NACK what.
#[derive(Debug, Clone)]
pub struct NackGenerator {
    cfg: NackConfig,
    unwrapper: SeqUnwrapper,
    missing: BTreeMap<u64, Missing>,
    restart_probe: Option<u16>,
    stats: NackStats,
}

impl NackGenerator {
    pub fn new(cfg: NackConfig) -> Self {
        Self {
            cfg,
            unwrapper: SeqUnwrapper::new(),
            missing: BTreeMap::new(),
            restart_probe: None,
            stats: NackStats::default(),
        }
    }

    pub fn stats(&self) -> NackStats {
        self.stats
    }

    /// Number of packets currently considered missing.
    pub fn missing_len(&self) -> usize {
        self.missing.len()
    }

    /// Delay before the first NACK of a fresh gap, at this RTT.
    pub fn reorder_delay(&self, rtt: Duration) -> Duration {
        (rtt / self.cfg.reorder_rtt_divisor.max(1)).clamp(self.cfg.min_reorder_delay, self.cfg.max_reorder_delay)
    }

    /// Spacing between NACKs of the same packet, at this RTT.
    pub fn retry_interval(&self, rtt: Duration) -> Duration {
        rtt.clamp(self.cfg.min_rtt, self.cfg.max_rtt)
    }

    /// Records an arriving packet: an original, or a retransmission's original seq.
    pub fn on_packet(&mut self, now: Instant, seq: u16) -> Arrival {
        let Some(highest) = self.unwrapper.highest() else {
            self.unwrapper.update(seq);
            return Arrival::First;
        };
        let ext = unwrap_seq(highest, seq);
        let max_jump = u64::from(self.cfg.max_jump);
        if ext > highest {
            self.restart_probe = None;
            if ext - highest > max_jump {
                self.reset(seq);
                return Arrival::Reset;
            }
            self.unwrapper.update(seq);
            let skipped = ext - highest - 1;
            // Only the newest `max_missing` of a burst can be kept anyway.
            let first = (highest + 1).max(ext.saturating_sub(self.cfg.max_missing as u64));
            for gap in first..ext {
                self.missing.insert(
                    gap,
                    Missing {
                        detected_at: now,
                        last_sent: None,
                        tries: 0,
                    },
                );
            }
            self.stats.overflowed += skipped - (ext - first);
            while self.missing.len() > self.cfg.max_missing {
                self.missing.pop_first();
                self.stats.overflowed += 1;
            }
            return Arrival::InOrder {
                newly_missing: skipped as u16,
            };
        }
        if highest - ext > max_jump {
            if self.restart_probe == Some(seq.wrapping_sub(1)) {
                self.reset(seq);
                return Arrival::Reset;
            }
            self.restart_probe = Some(seq);
            return Arrival::TooOld;
        }
        if self.missing.remove(&ext).is_some() {
            self.stats.recovered += 1;
            Arrival::Recovered
        } else {
            Arrival::Duplicate
        }
    }

    /// Sequence numbers to NACK now (ascending), marking them as sent; expired entries are dropped.
    pub fn poll(&mut self, now: Instant, rtt: Duration) -> Vec<u16> {
        let delay = self.reorder_delay(rtt);
        let retry = self.retry_interval(rtt);
        let (max_tries, max_age) = (self.cfg.max_tries, self.cfg.max_age);
        let mut out = Vec::new();
        let mut gave_up = 0;
        self.missing.retain(|&ext, m| {
            if now.saturating_duration_since(m.detected_at) >= max_age {
                gave_up += 1;
                return false;
            }
            let due = match m.last_sent {
                None => m.detected_at + delay,
                Some(sent) => sent + retry,
            };
            if now < due {
                return true;
            }
            if m.tries >= max_tries {
                gave_up += 1;
                return false;
            }
            m.tries += 1;
            m.last_sent = Some(now);
            out.push(ext as u16);
            true
        });
        self.stats.gave_up += gave_up;
        self.stats.nacked += out.len() as u64;
        out
    }

    /// When [`Self::poll`] next has something to do, for timer scheduling.
    pub fn next_deadline(&self, rtt: Duration) -> Option<Instant> {
        let delay = self.reorder_delay(rtt);
        let retry = self.retry_interval(rtt);
        self.missing
            .values()
            .map(|m| {
                let due = m.last_sent.map_or(m.detected_at + delay, |sent| sent + retry);
                due.min(m.detected_at + self.cfg.max_age)
            })
            .min()
    }

    fn reset(&mut self, seq: u16) {
        self.missing.clear();
        self.unwrapper.reset();
        self.unwrapper.update(seq);
        self.restart_probe = None;
        self.stats.resets += 1;
    }
}

/// One RFC 4585 generic NACK FCI entry: `pid` lost, and `pid + i + 1` lost for each set bit `i` of
/// `blp` (bit 0 is the least significant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackPair {
    pub pid: u16,
    pub blp: u16,
}

impl NackPair {
    /// Wire form: PID then BLP, both big-endian.
    pub fn to_bytes(self) -> [u8; 4] {
        let [a, b] = self.pid.to_be_bytes();
        let [c, d] = self.blp.to_be_bytes();
        [a, b, c, d]
    }

    pub fn from_bytes(bytes: [u8; 4]) -> Self {
        Self {
            pid: u16::from_be_bytes([bytes[0], bytes[1]]),
            blp: u16::from_be_bytes([bytes[2], bytes[3]]),
        }
    }

    /// The sequence numbers this entry reports lost, in order.
    pub fn seqs(self) -> impl Iterator<Item = u16> {
        std::iter::once(self.pid).chain(
            (0..16u16)
                .filter(move |i| self.blp & (1 << i) != 0)
                .map(move |i| self.pid.wrapping_add(i + 1)),
        )
    }
}

/// Packs sequence numbers into the fewest (PID, BLP) pairs: ordered wrap-aware, deduplicated, each
/// pair covering up to 17 consecutive numbers (greedy from the oldest is optimal for fixed-width
/// windows).
pub fn pack_nack_pairs(seqs: &[u16]) -> Vec<NackPair> {
    let mut unwrapper = SeqUnwrapper::new();
    let mut ext: Vec<u64> = seqs.iter().map(|&s| unwrapper.update(s)).collect();
    ext.sort_unstable();
    ext.dedup();
    let mut pairs: Vec<NackPair> = Vec::new();
    let mut base = 0u64;
    for e in ext {
        match pairs.last_mut() {
            Some(pair) if e - base <= 16 => pair.blp |= 1 << (e - base - 1),
            _ => {
                base = e;
                pairs.push(NackPair { pid: e as u16, blp: 0 });
            }
        }
    }
    pairs
}

/// Expands (PID, BLP) pairs into the sequence numbers they report lost.
pub fn expand_nack_pairs(pairs: &[NackPair]) -> Vec<u16> {
    pairs.iter().flat_map(|p| p.seqs()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn gen_() -> NackGenerator {
        NackGenerator::new(NackConfig::default())
    }

    #[test]
    fn gap_is_nacked_after_reorder_delay() {
        let t0 = Instant::now();
        let mut g = gen_();
        let rtt = ms(300);
        assert_eq!(g.on_packet(t0, 10), Arrival::First);
        assert_eq!(g.on_packet(t0, 13), Arrival::InOrder { newly_missing: 2 });
        assert_eq!(g.reorder_delay(rtt), ms(30));
        assert!(g.poll(t0 + ms(29), rtt).is_empty());
        assert_eq!(g.poll(t0 + ms(30), rtt), vec![11, 12]);
        assert_eq!(g.stats().nacked, 2);
    }

    #[test]
    fn reorder_delay_is_clamped() {
        let g = gen_();
        assert_eq!(g.reorder_delay(Duration::ZERO), ms(10));
        assert_eq!(g.reorder_delay(ms(200)), ms(20));
        assert_eq!(g.reorder_delay(ms(800)), ms(50));
        assert_eq!(g.retry_interval(ms(5)), ms(20));
        assert_eq!(g.retry_interval(ms(5000)), ms(1500));
    }

    #[test]
    fn reordered_packet_within_delay_is_never_nacked() {
        let t0 = Instant::now();
        let mut g = gen_();
        g.on_packet(t0, 1);
        g.on_packet(t0, 3);
        assert_eq!(g.on_packet(t0 + ms(5), 2), Arrival::Recovered);
        assert!(g.poll(t0 + ms(100), ms(100)).is_empty());
        assert_eq!(g.on_packet(t0 + ms(6), 2), Arrival::Duplicate);
    }

    #[test]
    fn renack_spaced_one_rtt_then_recovered() {
        let t0 = Instant::now();
        let mut g = gen_();
        let rtt = ms(400);
        g.on_packet(t0, 100);
        g.on_packet(t0, 102);
        assert_eq!(g.poll(t0 + ms(40), rtt), vec![101]);
        assert!(g.poll(t0 + ms(439), rtt).is_empty());
        assert_eq!(g.next_deadline(rtt), Some(t0 + ms(440)));
        assert_eq!(g.poll(t0 + ms(440), rtt), vec![101]);
        assert_eq!(g.on_packet(t0 + ms(500), 101), Arrival::Recovered);
        assert!(g.poll(t0 + ms(900), rtt).is_empty());
        assert_eq!(g.stats().recovered, 1);
        assert_eq!(g.next_deadline(rtt), None);
    }

    #[test]
    fn gives_up_after_max_tries() {
        let t0 = Instant::now();
        let mut g = gen_();
        let rtt = ms(20);
        g.on_packet(t0, 0);
        g.on_packet(t0, 2);
        let mut sent = 0;
        for i in 0..40u64 {
            sent += g.poll(t0 + ms(i * 25), rtt).len();
        }
        assert_eq!(sent, 10);
        assert_eq!(g.missing_len(), 0);
        assert_eq!(g.stats().gave_up, 1);
        // A very late arrival is now just a duplicate.
        assert_eq!(g.on_packet(t0 + ms(1000), 1), Arrival::Duplicate);
    }

    #[test]
    fn gives_up_after_max_age() {
        let t0 = Instant::now();
        let mut g = gen_();
        let rtt = ms(1500);
        g.on_packet(t0, 0);
        g.on_packet(t0, 2);
        let mut sent = 0;
        for i in 0..=40u64 {
            sent += g.poll(t0 + ms(i * 100), rtt).len();
        }
        assert_eq!(sent, 2, "sent at 100 ms and 1600 ms, then 3 s elapsed");
        assert_eq!(g.stats().gave_up, 1);
    }

    #[test]
    fn gap_across_wraparound() {
        let t0 = Instant::now();
        let mut g = gen_();
        g.on_packet(t0, 65_533);
        assert_eq!(g.on_packet(t0, 1), Arrival::InOrder { newly_missing: 3 });
        assert_eq!(g.poll(t0 + ms(50), ms(100)), vec![65_534, 65_535, 0]);
        assert_eq!(g.on_packet(t0, 65_535), Arrival::Recovered);
        assert_eq!(g.on_packet(t0, 2), Arrival::InOrder { newly_missing: 0 });
    }

    #[test]
    fn missing_list_is_capped_keeping_newest() {
        let t0 = Instant::now();
        let mut g = gen_();
        g.on_packet(t0, 0);
        g.on_packet(t0, 901); // 900 missing, only 512 kept
        assert_eq!(g.missing_len(), 512);
        assert_eq!(g.stats().overflowed, 388);
        let nacks = g.poll(t0 + ms(50), ms(100));
        assert_eq!(nacks.first(), Some(&389));
        assert_eq!(nacks.last(), Some(&900));
        // A further gap pushes the oldest out.
        g.on_packet(t0, 911);
        assert_eq!(g.missing_len(), 512);
        assert_eq!(g.stats().overflowed, 397);
    }

    #[test]
    fn huge_jump_resets_instead_of_nacking() {
        let t0 = Instant::now();
        let mut g = gen_();
        g.on_packet(t0, 10);
        g.on_packet(t0, 12);
        assert_eq!(g.on_packet(t0, 5000), Arrival::Reset);
        assert_eq!(g.missing_len(), 0);
        assert!(g.poll(t0 + ms(100), ms(100)).is_empty());
        assert_eq!(g.on_packet(t0, 5002), Arrival::InOrder { newly_missing: 1 });
        // Exactly max_jump is still loss (capped list).
        assert_eq!(g.on_packet(t0, 6002), Arrival::InOrder { newly_missing: 999 });
        assert_eq!(g.stats().resets, 1);
    }

    #[test]
    fn backward_restart_needs_two_packets() {
        let t0 = Instant::now();
        let mut g = gen_();
        g.on_packet(t0, 20_000);
        assert_eq!(g.on_packet(t0, 100), Arrival::TooOld);
        assert_eq!(g.on_packet(t0, 20_001), Arrival::InOrder { newly_missing: 0 });
        assert_eq!(g.on_packet(t0, 200), Arrival::TooOld);
        assert_eq!(g.on_packet(t0, 201), Arrival::Reset);
        assert_eq!(g.on_packet(t0, 203), Arrival::InOrder { newly_missing: 1 });
    }

    #[test]
    fn pack_simple_and_blp_bits() {
        assert_eq!(pack_nack_pairs(&[]), vec![]);
        assert_eq!(pack_nack_pairs(&[5]), vec![NackPair { pid: 5, blp: 0 }]);
        assert_eq!(
            pack_nack_pairs(&[5, 6, 8, 21]),
            vec![NackPair {
                pid: 5,
                blp: 0b1000_0000_0000_0101
            }]
        );
        assert_eq!(
            pack_nack_pairs(&[5, 22]),
            vec![NackPair { pid: 5, blp: 0 }, NackPair { pid: 22, blp: 0 }]
        );
    }

    #[test]
    fn pack_sorts_dedups_and_wraps() {
        let pairs = pack_nack_pairs(&[1, 65_535, 0, 1, 65_534]);
        assert_eq!(
            pairs,
            vec![NackPair {
                pid: 65_534,
                blp: 0b111
            }]
        );
        assert_eq!(expand_nack_pairs(&pairs), vec![65_534, 65_535, 0, 1]);
    }

    #[test]
    fn pack_expand_roundtrip() {
        let seqs: Vec<u16> = (0..200u16)
            .filter(|s| s % 3 != 0 || s % 7 == 0)
            .map(|s| s.wrapping_add(65_450))
            .collect();
        let pairs = pack_nack_pairs(&seqs);
        assert_eq!(expand_nack_pairs(&pairs), seqs);
        // 200 consecutive numbers need ceil(200 / 17) pairs at most.
        assert!(pairs.len() <= 12);
    }

    #[test]
    fn pair_wire_form() {
        let p = NackPair {
            pid: 0x1234,
            blp: 0x8001,
        };
        assert_eq!(p.to_bytes(), [0x12, 0x34, 0x80, 0x01]);
        assert_eq!(NackPair::from_bytes(p.to_bytes()), p);
        assert_eq!(p.seqs().collect::<Vec<_>>(), vec![0x1234, 0x1235, 0x1244]);
    }
}
