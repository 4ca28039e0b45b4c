//! Per-subscriber RTP rewriting: every downtrack owns its outgoing SSRC, sequence-number space and
//! timestamp space, independent of whichever publisher stream (simulcast layer, or a new SSRC after
//! renegotiation) currently feeds it.
//!
//! Policy, and why:
//!
//! * **Contiguous sequence numbers across deliberate drops.** A packet the SFU chooses not to forward
//!   (paused layer, filtered temporal layer, padding) is absorbed by bumping an offset, so the subscriber
//!   sees no hole. A hole it saw would look like loss: it would NACK, we would answer "missing", and
//!   its loss statistics (and with them its bandwidth estimate) would be wrong.
//! * **Real upstream loss stays visible.** A gap in the incoming sequence is kept as a gap in the
//!   outgoing one, so the subscriber NACKs it and the packet can still arrive late (from the
//!   publisher's retransmission) and be mapped to exactly the slot it would have had.
//! * **Late packets** (reordered or retransmitted upstream) map through a short list of "drop ranges":
//!   the offset in force at that point of the incoming sequence. Each contiguous run of dropped packets
//!   costs one entry, entries older than `max_jump` are pruned and the list is capped
//!   (`max_drop_ranges`, 1024), so the memory is bounded even when every other packet is dropped. A
//!   late copy of a packet we dropped is dropped again (mapping it would collide with its successor).
//! * **Source switch** (a different `source` id: simulcast layer change or a new publisher SSRC): the
//!   outgoing sequence continues at last + 1 and the outgoing timestamp at last + wall-clock time since
//!   the last forwarded packet × clock rate (at least one tick). This is what LiveKit's RTPMunger and
//!   mediasoup's SimulcastConsumer do: the receiver's jitter buffer and A/V sync see one continuous,
//!   plausible timeline instead of a jump into an unrelated random timestamp base.
//! * **Restart within one source.** A forward jump of more than `max_jump` (1000, the same threshold
//!   the NACK generator uses) is treated as a sender restart and re-anchored like a switch, instead of
//!   presenting the subscriber with a thousand "lost" packets. A backward jump of more than `max_jump`
//!   is only believed when the next packet continues from it (one packet is sacrificed), because a
//!   single ancient straggler must not yank the whole timeline back.
//!
//! Extended values start in cycle 1 (value + 2^16 or + 2^32) so that a packet reordered across the
//! wrap before the very first one seen still has a representable, smaller extended value.
//!
//! The munger trusts its caller ([`super::layer::LayerSwitch`]) to hand it only packets of the source it
//! has chosen; a packet of another source *is* a switch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Extended values are placed in cycle 1 so that values reordered across the wrap before the first
/// one seen do not underflow.
const FIRST_CYCLE: u64 = 1;

/// The extended value closest to `reference` whose low `bits` bits equal `value`; a distance of exactly
/// half the modulus counts as forward, matching [`seq_is_newer`].
fn unwrap_near(reference: u64, value: u64, bits: u32) -> u64 {
    let modulus = 1u64 << bits;
    let mask = modulus - 1;
    let forward = value.wrapping_sub(reference & mask) & mask;
    if forward <= modulus / 2 {
        reference + forward
    } else {
        let back = modulus - forward;
        // Never go below zero: with extended values starting in cycle 1 this only happens for
        // callers that pass a tiny reference themselves.
        reference.checked_sub(back).unwrap_or(reference + forward)
    }
}

/// Extends a 16-bit sequence number to the 64-bit value closest to `reference` (an extended value).
pub fn unwrap_seq(reference: u64, seq: u16) -> u64 {
    unwrap_near(reference, u64::from(seq), 16)
}

/// Extends a 32-bit RTP timestamp to the 64-bit value closest to `reference` (an extended value).
pub fn unwrap_ts(reference: u64, ts: u32) -> u64 {
    unwrap_near(reference, u64::from(ts), 32)
}

/// `a` comes after `b` in RTP order (RFC 3550 serial arithmetic; exactly half-way counts as newer).
pub fn seq_is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) <= 0x8000
}

/// `a` comes after `b` in RTP timestamp order (serial arithmetic).
pub fn ts_is_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) <= 0x8000_0000
}

#[derive(Debug, Clone, Default)]
struct Unwrapper<const BITS: u32> {
    highest: Option<u64>,
}

impl<const BITS: u32> Unwrapper<BITS> {
    fn update(&mut self, value: u64) -> u64 {
        match self.highest {
            None => {
                let ext = (FIRST_CYCLE << BITS) + value;
                self.highest = Some(ext);
                ext
            }
            Some(highest) => {
                let ext = unwrap_near(highest, value, BITS);
                if ext > highest {
                    self.highest = Some(ext);
                }
                ext
            }
        }
    }

    fn peek(&self, value: u64) -> Option<u64> {
        self.highest.map(|h| unwrap_near(h, value, BITS))
    }
}

/// Extends u16 sequence numbers to u64 relative to the highest value seen so far, so that ordering,
/// gaps and windows can be computed with plain integer arithmetic across 65535 → 0.
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper(Unwrapper<16>);

impl SeqUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Extends `seq` and advances the highest value if it is newer.
    pub fn update(&mut self, seq: u16) -> u64 {
        self.0.update(u64::from(seq))
    }

    /// Extends `seq` without advancing; `None` until the first [`Self::update`].
    pub fn peek(&self, seq: u16) -> Option<u64> {
        self.0.peek(u64::from(seq))
    }

    pub fn highest(&self) -> Option<u64> {
        self.0.highest
    }

    pub fn reset(&mut self) {
        self.0.highest = None;
    }
}

/// Extends u32 RTP timestamps to u64 (same contract as [`SeqUnwrapper`]); at 90 kHz the 32-bit
/// timestamp wraps every 13.25 h, well within a teaching broadcast's lifetime.
#[derive(Debug, Clone, Default)]
pub struct TsUnwrapper(Unwrapper<32>);

impl TsUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, ts: u32) -> u64 {
        self.0.update(u64::from(ts))
    }

    pub fn peek(&self, ts: u32) -> Option<u64> {
        self.0.peek(u64::from(ts))
    }

    pub fn highest(&self) -> Option<u64> {
        self.0.highest
    }

    pub fn reset(&mut self) {
        self.0.highest = None;
    }
}

/// Per-downtrack munger settings.
#[derive(Debug, Clone)]
pub struct MungerConfig {
    /// Outgoing SSRC of this downtrack.
    pub ssrc: u32,
    /// RTP clock rate of the codec (90 000 for video, 48 000 for Opus); used to turn wall-clock time
    /// into timestamp ticks on a switch.
    pub clock_rate: u32,
    /// First outgoing sequence number; the caller picks it at random (RFC 3550 §5.1), the munger
    /// stays free of randomness so that it is reproducible in tests.
    pub start_seq: u16,
    /// First outgoing timestamp; random for the same reason.
    pub start_timestamp: u32,
    /// A jump of more than this many sequence numbers is a sender restart, not loss; packets further
    /// back than this are too late to be mapped.
    pub max_jump: u16,
    /// Cap on remembered drop ranges, bounding memory when drops interleave with forwards.
    pub max_drop_ranges: usize,
}

impl Default for MungerConfig {
    fn default() -> Self {
        Self {
            ssrc: 0,
            clock_rate: 90_000,
            start_seq: 0,
            start_timestamp: 0,
            max_jump: 1000,
            max_drop_ranges: 1024,
        }
    }
}

/// The parts of an incoming packet the munger needs; independent of any RTP library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPacket {
    /// Identifies the incoming sequence space: the publisher SSRC of the layer being forwarded.
    pub source: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
}

/// How a forwarded packet relates to the outgoing sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MungeKind {
    /// Newest packet so far.
    InOrder,
    /// Reordered or retransmitted upstream, placed in the slot it would have had.
    Late,
    /// First packet after start, a source switch or a restart: the timeline was re-anchored.
    Anchored,
}

/// Rewritten header fields for the outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Munged {
    pub ssrc: u32,
    pub seq: u16,
    /// Extended outgoing sequence number (cycle 1 based), handy as a history key.
    pub ext_seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub kind: MungeKind,
}

/// Why the munger refused to forward a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than `max_jump` behind the newest packet (or the unconfirmed first packet of a backward
    /// restart).
    TooOld,
    /// Predates the current source's first forwarded packet, or its mapping was already forgotten.
    Unmappable,
    /// A copy of a packet the SFU already chose to drop; its outgoing slot was given away.
    PreviouslyDropped,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MungerStats {
    pub forwarded: u64,
    pub late: u64,
    pub dropped_by_sfu: u64,
    pub refused: u64,
    pub switches: u64,
    pub restarts: u64,
}

#[derive(Debug, Clone, Copy)]
struct DropRange {
    /// First dropped extended incoming seq.
    start: u64,
    /// One past the last dropped one.
    end: u64,
    /// Offset in force just before `start`.
    offset_before: i64,
}

/// Mapping of one incoming source onto the outgoing timeline.
#[derive(Debug, Clone)]
struct Epoch {
    source: u32,
    unwrapper: SeqUnwrapper,
    /// Incoming packets before this cannot be mapped.
    min_mappable: u64,
    /// `out_ext = in_ext - offset` for packets after the last drop range.
    seq_offset: i64,
    /// `out_ts = in_ts - ts_offset` (mod 2^32).
    ts_offset: u32,
    drops: VecDeque<DropRange>,
}

impl Epoch {
    fn offset_at(&self, ext: u64) -> Result<i64, DropReason> {
        let idx = self.drops.partition_point(|r| r.start <= ext);
        if idx == 0 {
            return Ok(self.drops.front().map_or(self.seq_offset, |r| r.offset_before));
        }
        let range = &self.drops[idx - 1];
        if ext < range.end {
            Err(DropReason::PreviouslyDropped)
        } else {
            Ok(range.offset_before + (range.end - range.start) as i64)
        }
    }

    fn prune(&mut self, max_jump: u16, max_ranges: usize) {
        let Some(highest) = self.unwrapper.highest() else {
            return;
        };
        let horizon = highest.saturating_sub(u64::from(max_jump));
        while self.drops.front().is_some_and(|r| r.end <= horizon) {
            self.drops.pop_front();
        }
        while self.drops.len() > max_ranges {
            if let Some(r) = self.drops.pop_front() {
                self.min_mappable = self.min_mappable.max(r.end);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct OutState {
    highest_ext: u64,
    highest_ts: u32,
    highest_at: Instant,
}

/// Where an incoming packet falls relative to the current epoch.
enum Position {
    /// Not the current source, or no epoch yet, or a (confirmed) restart: re-anchor here.
    Anchor {
        restart: bool,
    },
    Ahead(u64),
    Behind(u64),
    Refused(DropReason),
}

/// Per-downtrack RTP sequence/timestamp rewriter.
#[derive(Debug, Clone)]
pub struct Munger {
    cfg: MungerConfig,
    epoch: Option<Epoch>,
    out: Option<OutState>,
    restart_probe: Option<(u32, u16)>,
    stats: MungerStats,
}

impl Munger {
    pub fn new(cfg: MungerConfig) -> Self {
        Self {
            cfg,
            epoch: None,
            out: None,
            restart_probe: None,
            stats: MungerStats::default(),
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.cfg.ssrc
    }

    pub fn stats(&self) -> MungerStats {
        self.stats
    }

    /// Last in-order outgoing (seq, timestamp), e.g. for sender reports; `None` before the first packet.
    pub fn last_out(&self) -> Option<(u16, u32)> {
        self.out.map(|o| (o.highest_ext as u16, o.highest_ts))
    }

    /// Rewrites a packet the SFU decided to forward.
    pub fn forward(&mut self, now: Instant, pkt: &InPacket) -> Result<Munged, DropReason> {
        let ext = match self.classify(pkt) {
            Position::Anchor { restart } => return Ok(self.anchor(now, pkt, restart)),
            Position::Refused(reason) => {
                self.stats.refused += 1;
                return Err(reason);
            }
            Position::Ahead(ext) | Position::Behind(ext) => ext,
        };
        let Some(epoch) = self.epoch.as_mut() else {
            return Ok(self.anchor(now, pkt, false));
        };
        let highest = epoch.unwrapper.highest().unwrap_or(ext);
        let (offset, kind) = if ext > highest {
            epoch.unwrapper.update(pkt.seq);
            epoch.prune(self.cfg.max_jump, self.cfg.max_drop_ranges);
            (epoch.seq_offset, MungeKind::InOrder)
        } else {
            if ext < epoch.min_mappable {
                self.stats.refused += 1;
                return Err(DropReason::Unmappable);
            }
            match epoch.offset_at(ext) {
                Ok(offset) => (offset, MungeKind::Late),
                Err(reason) => {
                    self.stats.refused += 1;
                    return Err(reason);
                }
            }
        };
        let out_ext = (ext as i64 - offset) as u64;
        let timestamp = pkt.timestamp.wrapping_sub(epoch.ts_offset);
        if kind == MungeKind::InOrder {
            self.out = Some(OutState {
                highest_ext: out_ext,
                highest_ts: timestamp,
                highest_at: now,
            });
        } else {
            self.stats.late += 1;
        }
        self.stats.forwarded += 1;
        Ok(self.munged(out_ext, timestamp, pkt.marker, kind))
    }

    /// Records that the SFU chose not to forward `pkt` (a packet of the current source), so that the
    /// outgoing sequence closes over it instead of showing a loss.
    pub fn drop_packet(&mut self, pkt: &InPacket) {
        let ext = match self.classify(pkt) {
            Position::Ahead(ext) => ext,
            Position::Anchor { restart: true } => {
                // The next forwarded packet re-anchors; nothing of the old mapping is worth keeping.
                self.epoch = None;
                self.stats.restarts += 1;
                return;
            }
            // Late drops cannot be absorbed: their outgoing slot already exists and stays a gap.
            Position::Anchor { restart: false } | Position::Behind(_) | Position::Refused(_) => return,
        };
        let Some(epoch) = self.epoch.as_mut() else {
            return;
        };
        match epoch.drops.back_mut() {
            Some(last) if last.end == ext => last.end += 1,
            _ => epoch.drops.push_back(DropRange {
                start: ext,
                end: ext + 1,
                offset_before: epoch.seq_offset,
            }),
        }
        epoch.seq_offset += 1;
        epoch.unwrapper.update(pkt.seq);
        epoch.prune(self.cfg.max_jump, self.cfg.max_drop_ranges);
        self.stats.dropped_by_sfu += 1;
    }

    fn classify(&mut self, pkt: &InPacket) -> Position {
        let Some(epoch) = self.epoch.as_ref().filter(|e| e.source == pkt.source) else {
            return Position::Anchor { restart: false };
        };
        let (Some(highest), Some(ext)) = (epoch.unwrapper.highest(), epoch.unwrapper.peek(pkt.seq)) else {
            return Position::Anchor { restart: false };
        };
        let max_jump = u64::from(self.cfg.max_jump);
        if ext > highest {
            self.restart_probe = None;
            if ext - highest > max_jump {
                return Position::Anchor { restart: true };
            }
            return Position::Ahead(ext);
        }
        if highest - ext > max_jump {
            let confirmed = self.restart_probe == Some((pkt.source, pkt.seq.wrapping_sub(1)));
            if confirmed {
                self.restart_probe = None;
                return Position::Anchor { restart: true };
            }
            self.restart_probe = Some((pkt.source, pkt.seq));
            return Position::Refused(DropReason::TooOld);
        }
        Position::Behind(ext)
    }

    fn anchor(&mut self, now: Instant, pkt: &InPacket, restart: bool) -> Munged {
        let (out_ext, out_ts, kind_is_switch) = match self.out {
            None => (
                (FIRST_CYCLE << 16) + u64::from(self.cfg.start_seq),
                self.cfg.start_timestamp,
                false,
            ),
            Some(o) => {
                let ticks = elapsed_ticks(now.saturating_duration_since(o.highest_at), self.cfg.clock_rate);
                (o.highest_ext + 1, o.highest_ts.wrapping_add(ticks), true)
            }
        };
        if restart {
            self.stats.restarts += 1;
        } else if kind_is_switch {
            self.stats.switches += 1;
        }
        let mut unwrapper = SeqUnwrapper::new();
        let in_ext = unwrapper.update(pkt.seq);
        self.epoch = Some(Epoch {
            source: pkt.source,
            unwrapper,
            min_mappable: in_ext,
            seq_offset: in_ext as i64 - out_ext as i64,
            ts_offset: pkt.timestamp.wrapping_sub(out_ts),
            drops: VecDeque::new(),
        });
        self.restart_probe = None;
        self.out = Some(OutState {
            highest_ext: out_ext,
            highest_ts: out_ts,
            highest_at: now,
        });
        self.stats.forwarded += 1;
        self.munged(out_ext, out_ts, pkt.marker, MungeKind::Anchored)
    }

    fn munged(&self, ext_seq: u64, timestamp: u32, marker: bool, kind: MungeKind) -> Munged {
        Munged {
            ssrc: self.cfg.ssrc,
            seq: ext_seq as u16,
            ext_seq,
            timestamp,
            marker,
            kind,
        }
    }
}

/// Wall-clock time as RTP ticks, at least one (the next frame must not share the previous frame's
/// timestamp) and below half the timestamp space (so it still reads as "later").
fn elapsed_ticks(elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    ticks.clamp(1, i32::MAX as u128) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(start_seq: u16, start_timestamp: u32) -> MungerConfig {
        MungerConfig {
            ssrc: 0xABCD,
            start_seq,
            start_timestamp,
            ..MungerConfig::default()
        }
    }

    fn pkt(source: u32, seq: u16, timestamp: u32) -> InPacket {
        InPacket {
            source,
            seq,
            timestamp,
            marker: false,
        }
    }

    fn fwd(m: &mut Munger, now: Instant, p: InPacket) -> (u16, u32) {
        let out = m.forward(now, &p).expect("forwarded");
        (out.seq, out.timestamp)
    }

    #[test]
    fn unwrap_seq_crosses_wrap_both_ways() {
        let base = (1u64 << 16) + 65_530;
        assert_eq!(unwrap_seq(base, 65_535), base + 5);
        assert_eq!(unwrap_seq(base, 0), base + 6);
        assert_eq!(unwrap_seq(base, 3), base + 9);
        let after = (2u64 << 16) + 2;
        assert_eq!(unwrap_seq(after, 65_534), after - 4);
        assert_eq!(unwrap_seq(after, 2), after);
        // Exactly half-way is forward, consistent with seq_is_newer.
        assert_eq!(unwrap_seq(1 << 16, 0x8000), (1 << 16) + 0x8000);
        assert!(seq_is_newer(0x8000, 0));
        assert!(!seq_is_newer(0x8001, 0));
        assert!(seq_is_newer(0, 0x8001));
        // A tiny reference never underflows.
        assert_eq!(unwrap_seq(1, 65_535), 65_535);
    }

    #[test]
    fn seq_unwrapper_tracks_highest_and_reordering() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.peek(5), None);
        let first = u.update(65_534);
        assert_eq!(first, (1 << 16) + 65_534);
        assert_eq!(u.update(1), first + 3);
        assert_eq!(u.update(65_535), first + 1, "reordered packet before the wrap");
        assert_eq!(u.highest(), Some(first + 3));
        assert_eq!(u.peek(0), Some(first + 2));
        // A packet reordered before the very first one across the wrap stays representable.
        let mut v = SeqUnwrapper::new();
        let a = v.update(0);
        assert_eq!(v.update(65_535), a - 1);
        v.reset();
        assert_eq!(v.highest(), None);
    }

    #[test]
    fn ts_unwrapper_crosses_u32_max() {
        let mut u = TsUnwrapper::new();
        let a = u.update(u32::MAX - 10);
        assert_eq!(a, (1u64 << 32) + u64::from(u32::MAX) - 10);
        assert_eq!(u.update(5), a + 16);
        assert_eq!(u.update(u32::MAX), a + 10, "older timestamp does not advance");
        assert_eq!(u.highest(), Some(a + 16));
        assert_eq!(u.peek(100), Some(a + 111));
        assert_eq!(unwrap_ts(a + 16, u32::MAX - 20), a - 10);
        assert!(ts_is_newer(3, u32::MAX));
        assert!(!ts_is_newer(u32::MAX, 3));
    }

    #[test]
    fn first_packet_anchors_on_configured_start() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(100, 5000));
        let out = m.forward(t0, &pkt(1, 40_000, 777)).expect("forwarded");
        assert_eq!((out.ssrc, out.seq, out.timestamp), (0xABCD, 100, 5000));
        assert_eq!(out.kind, MungeKind::Anchored);
        assert_eq!(fwd(&mut m, t0, pkt(1, 40_001, 777 + 3000)), (101, 8000));
        assert_eq!(m.last_out(), Some((101, 8000)));
        assert_eq!(m.stats().switches, 0);
    }

    #[test]
    fn outgoing_seq_and_ts_wrap() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(65_534, u32::MAX - 1500));
        assert_eq!(fwd(&mut m, t0, pkt(1, 10, 0)), (65_534, u32::MAX - 1500));
        assert_eq!(fwd(&mut m, t0, pkt(1, 11, 3000)), (65_535, 1499));
        assert_eq!(fwd(&mut m, t0, pkt(1, 12, 6000)), (0, 4499));
        assert_eq!(fwd(&mut m, t0, pkt(1, 13, 9000)), (1, 7499));
    }

    #[test]
    fn incoming_seq_and_ts_wrap() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(500, 0));
        fwd(&mut m, t0, pkt(1, 65_534, u32::MAX - 2999));
        assert_eq!(fwd(&mut m, t0, pkt(1, 65_535, u32::MAX - 2999)), (501, 0));
        assert_eq!(fwd(&mut m, t0, pkt(1, 0, 0)), (502, 3000));
        assert_eq!(fwd(&mut m, t0, pkt(1, 1, 3000)), (503, 6000));
    }

    #[test]
    fn sfu_drops_leave_no_gap_but_upstream_loss_does() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 10, 0));
        m.drop_packet(&pkt(1, 11, 0));
        m.drop_packet(&pkt(1, 12, 0));
        assert_eq!(fwd(&mut m, t0, pkt(1, 13, 0)).0, 1, "drops absorbed");
        // 14 and 15 lost upstream: the gap is kept so the subscriber NACKs.
        assert_eq!(fwd(&mut m, t0, pkt(1, 16, 0)).0, 4);
        // The publisher's retransmissions fill exactly those slots.
        let late = m.forward(t0, &pkt(1, 15, 0)).expect("late mapped");
        assert_eq!((late.seq, late.kind), (3, MungeKind::Late));
        assert_eq!(fwd(&mut m, t0, pkt(1, 14, 0)).0, 2);
        assert_eq!(m.stats().dropped_by_sfu, 2);
        assert_eq!(m.stats().late, 2);
    }

    #[test]
    fn drop_after_upstream_gap_keeps_the_gap() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 10, 0));
        m.drop_packet(&pkt(1, 13, 0)); // 11, 12 still missing upstream
        assert_eq!(fwd(&mut m, t0, pkt(1, 14, 0)).0, 3);
        assert_eq!(fwd(&mut m, t0, pkt(1, 12, 0)).0, 2);
        assert_eq!(fwd(&mut m, t0, pkt(1, 11, 0)).0, 1);
        assert_eq!(m.forward(t0, &pkt(1, 13, 0)), Err(DropReason::PreviouslyDropped));
    }

    #[test]
    fn late_copy_of_dropped_packet_is_refused() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 1, 0));
        m.drop_packet(&pkt(1, 2, 0));
        m.drop_packet(&pkt(1, 3, 0));
        fwd(&mut m, t0, pkt(1, 4, 0));
        assert_eq!(m.forward(t0, &pkt(1, 2, 0)), Err(DropReason::PreviouslyDropped));
        assert_eq!(m.forward(t0, &pkt(1, 3, 0)), Err(DropReason::PreviouslyDropped));
        // A duplicate of a forwarded packet maps onto its own slot again.
        assert_eq!(fwd(&mut m, t0, pkt(1, 1, 0)).0, 0);
        // Dropping a late packet changes nothing.
        m.drop_packet(&pkt(1, 1, 0));
        assert_eq!(fwd(&mut m, t0, pkt(1, 5, 0)).0, 2);
    }

    #[test]
    fn interleaved_drops_across_wrap_map_late_packets() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(65_530, 0));
        // Forward even, drop odd (a filtered temporal layer), across the incoming wrap.
        let mut expected_out = 65_530u16;
        let mut seq = 65_520u16;
        fwd(&mut m, t0, pkt(1, seq, 0));
        for _ in 0..20 {
            seq = seq.wrapping_add(1);
            m.drop_packet(&pkt(1, seq, 0));
            seq = seq.wrapping_add(2); // seq+1 lost upstream
            expected_out = expected_out.wrapping_add(2);
            assert_eq!(fwd(&mut m, t0, pkt(1, seq, 0)).0, expected_out);
        }
        // The lost ones arrive late and land in the holes.
        let mut s = 65_520u16;
        let mut out = 65_530u16;
        for _ in 0..20 {
            s = s.wrapping_add(3);
            out = out.wrapping_add(2);
            assert_eq!(fwd(&mut m, t0, pkt(1, s.wrapping_sub(1), 0)).0, out.wrapping_sub(1));
        }
    }

    #[test]
    fn pause_then_resume_same_source_is_contiguous() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 100, 9000));
        for s in 101..600 {
            m.drop_packet(&pkt(1, s, 9000 + u32::from(s)));
        }
        let (seq, ts) = fwd(&mut m, t0, pkt(1, 600, 99_000));
        assert_eq!(seq, 1);
        assert_eq!(ts, 90_000, "same source keeps its own timing");
    }

    #[test]
    fn switch_continues_seq_and_advances_ts_by_wall_clock() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(1000, 50_000));
        fwd(&mut m, t0, pkt(1, 7, 123));
        fwd(&mut m, t0, pkt(1, 8, 3123));
        let t1 = t0 + Duration::from_millis(100);
        let out = m.forward(t1, &pkt(2, 40_000, 999_999)).expect("switch");
        assert_eq!(out.kind, MungeKind::Anchored);
        assert_eq!(out.seq, 1002);
        assert_eq!(out.timestamp, 53_000 + 9000);
        assert_eq!(fwd(&mut m, t1, pkt(2, 40_001, 999_999 + 3000)), (1003, 65_000));
        assert_eq!(m.stats().switches, 1);
        // Old source's stragglers are a switch back (LayerSwitch keeps them away in practice).
        let back = m.forward(t1, &pkt(1, 9, 6123)).expect("switch back");
        assert_eq!((back.seq, back.timestamp), (1004, 65_001));
    }

    #[test]
    fn switch_at_same_instant_advances_one_tick_and_handles_ts_wrap() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(65_535, u32::MAX));
        fwd(&mut m, t0, pkt(1, 7, 123));
        let (seq, ts) = fwd(&mut m, t0, pkt(2, 9, 5));
        assert_eq!((seq, ts), (0, 0));
    }

    #[test]
    fn switch_refuses_packets_older_than_new_sources_first() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 7, 0));
        fwd(&mut m, t0, pkt(2, 500, 0));
        assert_eq!(m.forward(t0, &pkt(2, 499, 0)), Err(DropReason::Unmappable));
        assert_eq!(fwd(&mut m, t0, pkt(2, 502, 0)).0, 3, "gap after switch kept");
        assert_eq!(fwd(&mut m, t0, pkt(2, 501, 0)).0, 2);
    }

    #[test]
    fn huge_forward_jump_reanchors() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 10, 0));
        fwd(&mut m, t0, pkt(1, 11, 3000));
        let t1 = t0 + Duration::from_millis(10);
        let out = m.forward(t1, &pkt(1, 5000, 77)).expect("restart");
        assert_eq!((out.seq, out.timestamp, out.kind), (2, 3900, MungeKind::Anchored));
        assert_eq!(m.stats().restarts, 1);
        assert_eq!(fwd(&mut m, t1, pkt(1, 5001, 77)).0, 3);
        // A jump within max_jump is plain loss.
        assert_eq!(fwd(&mut m, t1, pkt(1, 6001, 77)).0, 1003);
    }

    #[test]
    fn huge_jump_while_dropping_reanchors_on_next_forward() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 10, 0));
        m.drop_packet(&pkt(1, 30_000, 0));
        let out = m.forward(t0, &pkt(1, 30_001, 0)).expect("anchored");
        assert_eq!((out.seq, out.kind), (1, MungeKind::Anchored));
    }

    #[test]
    fn backward_restart_needs_confirmation() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 20_000, 0));
        // A single ancient straggler is refused and does not move the timeline.
        assert_eq!(m.forward(t0, &pkt(1, 15_000, 0)), Err(DropReason::TooOld));
        assert_eq!(fwd(&mut m, t0, pkt(1, 20_001, 0)).0, 1);
        // Two consecutive far-behind packets are a restart.
        assert_eq!(m.forward(t0, &pkt(1, 100, 0)), Err(DropReason::TooOld));
        let out = m.forward(t0, &pkt(1, 101, 0)).expect("restart");
        assert_eq!((out.seq, out.kind), (2, MungeKind::Anchored));
        assert_eq!(fwd(&mut m, t0, pkt(1, 102, 0)).0, 3);
    }

    #[test]
    fn drop_ranges_are_capped() {
        let t0 = Instant::now();
        let mut m = Munger::new(MungerConfig {
            max_drop_ranges: 4,
            ..cfg(0, 0)
        });
        fwd(&mut m, t0, pkt(1, 0, 0));
        // 1 and 2 lost upstream, then interleaved drops create many ranges.
        let mut s = 3u16;
        for _ in 0..10 {
            m.drop_packet(&pkt(1, s, 0));
            fwd(&mut m, t0, pkt(1, s + 1, 0));
            s += 2;
        }
        assert!(m.epoch.as_ref().is_some_and(|e| e.drops.len() <= 4));
        // The early hole's mapping was forgotten: refused rather than mis-mapped.
        assert_eq!(m.forward(t0, &pkt(1, 1, 0)), Err(DropReason::Unmappable));
        // Recent late packets still map.
        let newest_drop = s - 2;
        assert_eq!(
            m.forward(t0, &pkt(1, newest_drop, 0)),
            Err(DropReason::PreviouslyDropped)
        );
    }

    #[test]
    fn old_drop_ranges_are_pruned_by_distance() {
        let t0 = Instant::now();
        let mut m = Munger::new(cfg(0, 0));
        fwd(&mut m, t0, pkt(1, 0, 0));
        m.drop_packet(&pkt(1, 1, 0));
        for s in 2..1500u16 {
            fwd(&mut m, t0, pkt(1, s, 0));
        }
        assert!(m.epoch.as_ref().is_some_and(|e| e.drops.is_empty()));
        assert_eq!(fwd(&mut m, t0, pkt(1, 1400, 0)).0, 1399);
        assert_eq!(m.forward(t0, &pkt(1, 1, 0)), Err(DropReason::TooOld));
    }

    #[test]
    fn elapsed_ticks_is_clamped() {
        assert_eq!(elapsed_ticks(Duration::ZERO, 90_000), 1);
        assert_eq!(elapsed_ticks(Duration::from_millis(20), 48_000), 960);
        assert_eq!(elapsed_ticks(Duration::from_secs(1_000_000), 90_000), i32::MAX as u32);
    }
}
