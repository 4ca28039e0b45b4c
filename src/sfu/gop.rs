//! The late-joiner cache: per published video stream (one simulcast layer),
//! the packets from its last keyframe on.
//!
//! Why: a viewer who joins a broadcast mid-lecture otherwise waits for a
//! keyframe, and asking the presenter for one costs every viewer a keyframe's
//! burst (5–10× a delta frame) on their weak links; with hundreds of clinics
//! joining at the start of a lecture the requests alone would keep the
//! presenter's encoder emitting keyframes. Replaying the cached group of
//! pictures gives the newcomer a decodable picture within one burst, with no
//! request upstream.
//!
//! Policy, and why:
//! * **Only whole groups.** The cache is usable only if it holds the
//!   keyframe's first packet and every packet after it without a gap: a
//!   decoder fed a group with a hole shows garbage until the next keyframe,
//!   which is worse than waiting. Late packets (retransmissions answering the
//!   SFU's own NACKs) fill holes in sequence order.
//! * **Bounded** by bytes, packets and age ([`GopConfig`]): when a group grows
//!   past a bound it is dropped (the cache waits for the next keyframe) rather
//!   than trimmed, since a trimmed group is not decodable.
//! * **Refreshed.** Browsers send keyframes only when asked, so a group could
//!   grow for minutes. [`GopCache::wants_refresh`] says when the group is old
//!   enough that a new keyframe is worth asking for (in broadcast rooms the
//!   engine does, through the same coalescing, throttled requester as every
//!   other keyframe request); a replay then stays short for the viewer's link.
//!
//! Pure: time is passed in, packets are plain values with shared payloads.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::munger::SeqUnwrapper;

#[derive(Debug, Clone, Copy)]
pub struct GopConfig {
    pub max_bytes: usize,
    pub max_packets: usize,
    /// A group older than this is not replayed (its replay would be a long
    /// burst of stale video) ...
    pub max_age: Duration,
    /// ... unless it is at most this big: a quiet stream (a static screen
    /// share sends next to nothing) still has its current picture in an
    /// old group, and replaying it is short.
    pub stale_bytes: usize,
    /// Age at which a fresh keyframe is worth asking for.
    pub refresh_after: Duration,
}

impl Default for GopConfig {
    fn default() -> Self {
        // 4 s of a 2.5 Mbit/s 720p layer is ~1.25 MB; the bounds leave room
        // for a screen share's big keyframes.
        GopConfig {
            max_bytes: 4 << 20,
            max_packets: 4096,
            max_age: Duration::from_secs(10),
            stale_bytes: 256 << 10,
            refresh_after: Duration::from_secs(4),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachedPacket {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GopStats {
    /// Groups started (keyframes seen).
    pub groups: u64,
    /// Groups dropped for outgrowing a bound.
    pub overflows: u64,
    /// Packets out of order that filled a hole.
    pub filled: u64,
}

#[derive(Debug)]
pub struct GopCache {
    cfg: GopConfig,
    /// (extended sequence number, packet), ascending.
    packets: VecDeque<(u64, CachedPacket)>,
    bytes: usize,
    /// Arrival of the keyframe that starts the group.
    started: Option<Instant>,
    ssrc: Option<u32>,
    unwrap: SeqUnwrapper,
    stats: GopStats,
}

impl GopCache {
    pub fn new(cfg: GopConfig) -> GopCache {
        GopCache {
            cfg,
            packets: VecDeque::new(),
            bytes: 0,
            started: None,
            ssrc: None,
            unwrap: SeqUnwrapper::new(),
            stats: GopStats::default(),
        }
    }

    pub fn stats(&self) -> &GopStats {
        &self.stats
    }

    fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.started = None;
    }

    /// One packet of the stream, in arrival order. `keyframe`: it starts a
    /// keyframe (see `keyframe::is_keyframe`).
    pub fn push(&mut self, now: Instant, pkt: CachedPacket, keyframe: bool) {
        if self.ssrc != Some(pkt.ssrc) {
            // A new encoder (publisher restarted the track): its sequence
            // numbers have nothing to do with the old ones.
            self.ssrc = Some(pkt.ssrc);
            self.unwrap.reset();
            self.clear();
        }
        let ext = self.unwrap.update(pkt.seq);
        if keyframe {
            self.clear();
            self.started = Some(now);
            self.stats.groups += 1;
        } else if self.started.is_none() {
            return;
        }
        let first = self.packets.front().map(|(e, _)| *e);
        if first.is_some_and(|f| ext < f) {
            // Older than the group's keyframe: belongs to the previous group.
            return;
        }
        let size = pkt.payload.len() + 12;
        // Sorted insert; nearly always at the back.
        let pos = self.packets.partition_point(|(e, _)| *e < ext);
        if self.packets.get(pos).is_some_and(|(e, _)| *e == ext) {
            return; // duplicate
        }
        if pos < self.packets.len() {
            self.stats.filled += 1;
        }
        self.packets.insert(pos, (ext, pkt));
        self.bytes += size;
        if self.bytes > self.cfg.max_bytes || self.packets.len() > self.cfg.max_packets {
            self.stats.overflows += 1;
            self.clear();
        }
    }

    /// The group to replay to a newcomer, if whole and fresh enough.
    pub fn replay(&self, now: Instant) -> Option<impl Iterator<Item = &CachedPacket>> {
        let started = self.started?;
        if now.saturating_duration_since(started) > self.cfg.max_age && self.bytes > self.cfg.stale_bytes {
            return None;
        }
        let (first, _) = self.packets.front()?;
        let (last, _) = self.packets.back()?;
        // Whole: no gaps between the keyframe and the newest packet.
        if last - first + 1 != self.packets.len() as u64 {
            return None;
        }
        Some(self.packets.iter().map(|(_, p)| p))
    }

    /// Packets and bytes a replay would send now (0 when there is none).
    pub fn replay_size(&self, now: Instant) -> (usize, usize) {
        match self.replay(now) {
            Some(_) => (self.packets.len(), self.bytes),
            None => (0, 0),
        }
    }

    /// True when a new keyframe should be asked for so that replays stay
    /// short: the group is older than `refresh_after`, or there is no usable
    /// group at all.
    pub fn wants_refresh(&self, now: Instant) -> bool {
        match self.started {
            Some(s) => now.saturating_duration_since(s) >= self.cfg.refresh_after,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, ts: u32, len: usize) -> CachedPacket {
        CachedPacket {
            ssrc: 7,
            seq,
            timestamp: ts,
            marker: false,
            payload_type: 96,
            payload: Bytes::from(vec![seq as u8; len]),
        }
    }

    fn seqs(c: &GopCache, now: Instant) -> Option<Vec<u16>> {
        c.replay(now).map(|it| it.map(|p| p.seq).collect())
    }

    #[test]
    fn replays_from_the_last_keyframe_on() {
        let t = Instant::now();
        let mut c = GopCache::new(GopConfig::default());
        c.push(t, pkt(10, 0, 100), false); // before any keyframe: not kept
        assert_eq!(seqs(&c, t), None);
        c.push(t, pkt(11, 0, 100), true);
        c.push(t, pkt(12, 0, 100), false);
        c.push(t, pkt(13, 3000, 100), false);
        assert_eq!(seqs(&c, t), Some(vec![11, 12, 13]));
        c.push(t, pkt(14, 6000, 100), true);
        c.push(t, pkt(15, 6000, 100), false);
        assert_eq!(seqs(&c, t), Some(vec![14, 15]));
        assert_eq!(c.stats().groups, 2);
    }

    #[test]
    fn a_hole_blocks_the_replay_until_the_retransmission_fills_it() {
        let t = Instant::now();
        let mut c = GopCache::new(GopConfig::default());
        c.push(t, pkt(65534, 0, 10), true);
        c.push(t, pkt(65535, 0, 10), false);
        c.push(t, pkt(1, 0, 10), false); // 0 lost, across the wrap
        assert_eq!(seqs(&c, t), None, "a group with a hole is not decodable");
        c.push(t, pkt(0, 0, 10), false); // the retransmission
        assert_eq!(seqs(&c, t), Some(vec![65534, 65535, 0, 1]));
        assert_eq!(c.stats().filled, 1);
        c.push(t, pkt(0, 0, 10), false); // duplicate: ignored
        assert_eq!(seqs(&c, t).map(|v| v.len()), Some(4));
        c.push(t, pkt(65530, 0, 10), false); // previous group: ignored
        assert_eq!(seqs(&c, t).map(|v| v.len()), Some(4));
    }

    #[test]
    fn bounds_drop_the_group_and_age_ends_replays() {
        let t = Instant::now();
        let cfg = GopConfig {
            max_bytes: 1000,
            max_packets: 100,
            max_age: Duration::from_secs(10),
            stale_bytes: 0,
            refresh_after: Duration::from_secs(4),
        };
        let mut c = GopCache::new(cfg);
        c.push(t, pkt(1, 0, 400), true);
        c.push(t, pkt(2, 0, 400), false);
        assert!(seqs(&c, t).is_some());
        c.push(t, pkt(3, 0, 400), false);
        assert_eq!(seqs(&c, t), None, "over max_bytes: dropped, not trimmed");
        assert_eq!(c.stats().overflows, 1);
        c.push(t, pkt(4, 0, 10), false);
        assert_eq!(seqs(&c, t), None, "waits for the next keyframe");
        assert!(c.wants_refresh(t));

        c.push(t, pkt(5, 0, 10), true);
        assert!(!c.wants_refresh(t + Duration::from_secs(3)));
        assert!(c.wants_refresh(t + Duration::from_secs(4)));
        assert!(seqs(&c, t + Duration::from_secs(10)).is_some());
        assert_eq!(seqs(&c, t + Duration::from_secs(11)), None);
        assert_eq!(c.replay_size(t), (1, 22));
    }

    #[test]
    fn a_new_ssrc_starts_over() {
        let t = Instant::now();
        let mut c = GopCache::new(GopConfig::default());
        c.push(t, pkt(100, 0, 10), true);
        let mut p = pkt(5, 0, 10);
        p.ssrc = 8;
        c.push(t, p, false);
        assert_eq!(seqs(&c, t), None);
    }
}
