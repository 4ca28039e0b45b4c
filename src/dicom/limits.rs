//! How much of the SCP one peer may hold, and how long: association slots
//! overall and per calling AE title, the calling AE read from the first
//! bytes of an A-ASSOCIATE-RQ, and the progress a message being received
//! must make. Pure (time is passed in); the SCP applies them.
//!
//! Why: 64 slots and no per-AE cap let one misbehaving sender (a PACS
//! retrying in parallel, a script) take every slot and lock every clinic
//! out; and a peer that connects and sends nothing, or trickles a request
//! or a dataset a byte at a time, held its slot for as long as it liked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which limit refused a new association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every association slot is taken.
    Total,
    /// This calling AE title holds its share already.
    Ae,
}

/// Association slots: at most `max_total` at once, and at most
/// `max_per_ae` for any one calling AE title, so one sender always leaves
/// slots for the others.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_ae: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    /// Only AE titles holding slots (entries go at zero: bounded by
    /// `max_total`).
    per_ae: HashMap<String, usize>,
}

/// One held slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ae: Option<String>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_ae: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_ae,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `ae` (None: not known yet, see [`Slot::bind_ae`]).
    pub fn acquire(self: &Arc<Self>, ae: Option<&str>) -> Result<Slot, Busy> {
        let mut st = self.lock();
        if st.total >= self.max_total {
            return Err(Busy::Total);
        }
        if let Some(ae) = ae {
            take_ae(&mut st, ae, self.max_per_ae)?;
        }
        st.total += 1;
        Ok(Slot {
            slots: self.clone(),
            ae: ae.map(str::to_string),
        })
    }

    /// Slots held by `ae`.
    pub fn held_by(&self, ae: &str) -> usize {
        self.lock().per_ae.get(ae).copied().unwrap_or(0)
    }

    pub fn held(&self) -> usize {
        self.lock().total
    }
}

fn take_ae(st: &mut State, ae: &str, max_per_ae: usize) -> Result<(), Busy> {
    let n = st.per_ae.get(ae).copied().unwrap_or(0);
    if n >= max_per_ae {
        return Err(Busy::Ae);
    }
    st.per_ae.insert(ae.to_string(), n + 1);
    Ok(())
}

impl Slot {
    /// Counts a slot taken before its calling AE was known (DICOM TLS: the
    /// request is read inside the TLS session) against that AE.
    pub fn bind_ae(&mut self, ae: &str) -> Result<(), Busy> {
        if self.ae.is_some() {
            return Ok(());
        }
        let mut st = self.slots.lock();
        take_ae(&mut st, ae, self.slots.max_per_ae)?;
        self.ae = Some(ae.to_string());
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(ae) = &self.ae
            && let Some(n) = st.per_ae.get_mut(ae)
        {
            *n -= 1;
            if *n == 0 {
                st.per_ae.remove(ae);
            }
        }
    }
}

/// What the first bytes on a new connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum RqPrefix {
    /// Not enough bytes yet to see the calling AE title.
    NeedMore,
    /// Not an A-ASSOCIATE-RQ (or too short to be one): the association
    /// layer answers it.
    NotAssociateRq,
    /// An A-ASSOCIATE-RQ from this calling AE title (padding trimmed).
    Calling(String),
}

/// Bytes of an A-ASSOCIATE-RQ up to the end of the Calling AE Title field
/// (PS3.8 §9.3.2: type, reserved, length (4), protocol version (2),
/// reserved (2), called AE (16), calling AE (16)).
pub const RQ_PREFIX_LEN: usize = 42;

/// Reads the calling AE title from the start of an A-ASSOCIATE-RQ.
pub fn parse_rq_prefix(b: &[u8]) -> RqPrefix {
    match b.first() {
        None => return RqPrefix::NeedMore,
        Some(0x01) => {}
        Some(_) => return RqPrefix::NotAssociateRq,
    }
    if let Some(len) = b.get(2..6) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len + 6 < RQ_PREFIX_LEN {
            return RqPrefix::NotAssociateRq;
        }
    }
    match b.get(26..RQ_PREFIX_LEN) {
        None => RqPrefix::NeedMore,
        Some(ae) => RqPrefix::Calling(
            String::from_utf8_lossy(ae)
                .trim_matches(|c: char| c == ' ' || c == '\0')
                .to_string(),
        ),
    }
}

/// How fast a message (a command and its dataset) must arrive once it has
/// started: after `grace`, at least `min_rate` bytes per second on
/// average. 0 disables the check.
#[derive(Debug, Clone, Copy)]
pub struct ProgressRule {
    pub grace: Duration,
    pub min_rate: u64,
}

/// The message being received: when it started and how much has come.
#[derive(Debug, Default)]
pub struct Progress {
    started: Option<Instant>,
    bytes: u64,
}

/// A peer too slow to keep its slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only {bytes} bytes of the message in {secs} s (minimum {min_rate} bytes/s after {grace} s)")]
pub struct TooSlow {
    pub bytes: u64,
    pub secs: u64,
    pub min_rate: u64,
    pub grace: u64,
}

impl Progress {
    /// `bytes` of a message arrived at `now` (the first call starts the
    /// message's clock).
    pub fn on_data(&mut self, rule: &ProgressRule, now: Instant, bytes: u64) -> Result<(), TooSlow> {
        let started = *self.started.get_or_insert(now);
        self.bytes = self.bytes.saturating_add(bytes);
        let elapsed = now.saturating_duration_since(started);
        if rule.min_rate == 0 || elapsed <= rule.grace {
            return Ok(());
        }
        let owed = (elapsed - rule.grace).as_secs_f64() * rule.min_rate as f64;
        if (self.bytes as f64) < owed {
            return Err(TooSlow {
                bytes: self.bytes,
                secs: elapsed.as_secs(),
                min_rate: rule.min_rate,
                grace: rule.grace.as_secs(),
            });
        }
        Ok(())
    }

    /// The message is complete (or none is in progress).
    pub fn reset(&mut self) {
        *self = Progress::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ae_cannot_take_every_slot_and_slots_come_back() {
        let s = Slots::new(4, 2);
        let a1 = s.acquire(Some("PACS")).expect("1");
        let a2 = s.acquire(Some("PACS")).expect("2");
        assert_eq!(s.acquire(Some("PACS")).map(|_| ()), Err(Busy::Ae));
        let b1 = s.acquire(Some("CT01")).expect("another AE");
        let mut t = s.acquire(None).expect("AE not known yet");
        assert_eq!(s.acquire(Some("MR01")).map(|_| ()), Err(Busy::Total));
        assert_eq!(t.bind_ae("CT01"), Ok(()));
        assert_eq!(s.held_by("CT01"), 2);
        drop(a1);
        assert_eq!(s.held_by("PACS"), 1);
        let a3 = s.acquire(Some("PACS")).expect("a freed slot");
        drop((a2, a3, b1, t));
        assert_eq!((s.held(), s.held_by("PACS"), s.held_by("CT01")), (0, 0, 0));
        // A late bind over the AE's share is refused and the slot stays
        // counted until dropped.
        let _p1 = s.acquire(Some("PACS")).expect("p1");
        let _p2 = s.acquire(Some("PACS")).expect("p2");
        let mut late = s.acquire(None).expect("late");
        assert_eq!(late.bind_ae("PACS"), Err(Busy::Ae));
        assert_eq!(s.held(), 3);
        drop(late);
        assert_eq!(s.held(), 2);
    }

    fn rq(calling: &str) -> Vec<u8> {
        let mut b = vec![0x01, 0, 0, 0, 0, 200, 0, 1, 0, 0];
        b.extend_from_slice(format!("{:<16}", "MEDRELAY").as_bytes());
        b.extend_from_slice(format!("{calling:<16}").as_bytes());
        b.extend_from_slice(&[0; 32]);
        b
    }

    #[test]
    fn the_calling_ae_is_read_from_the_request_prefix() {
        let b = rq("CT01");
        for n in 0..RQ_PREFIX_LEN {
            assert_eq!(parse_rq_prefix(&b[..n]), RqPrefix::NeedMore, "{n} bytes");
        }
        assert_eq!(parse_rq_prefix(&b[..RQ_PREFIX_LEN]), RqPrefix::Calling("CT01".into()));
        assert_eq!(parse_rq_prefix(&b), RqPrefix::Calling("CT01".into()));
        assert_eq!(parse_rq_prefix(b"\x04\x00\x00\x00"), RqPrefix::NotAssociateRq);
        assert_eq!(parse_rq_prefix(b"GET / HTTP/1.1\r\n"), RqPrefix::NotAssociateRq);
        // A length too short to hold the AE titles.
        assert_eq!(
            parse_rq_prefix(&[1, 0, 0, 0, 0, 4, 0, 1, 0, 0]),
            RqPrefix::NotAssociateRq
        );
    }

    #[test]
    fn a_message_trickled_below_the_rate_is_cut_after_the_grace() {
        let rule = ProgressRule {
            grace: Duration::from_secs(10),
            min_rate: 1000,
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Progress::default();
        // Slow but within the grace.
        for s in 0..=10 {
            assert_eq!(p.on_data(&rule, at(s), 2), Ok(()));
        }
        // 12 s in: 2 s past the grace owes 2000 bytes; 24 arrived.
        let e = p.on_data(&rule, at(12), 2).expect_err("too slow");
        assert_eq!((e.bytes, e.secs), (24, 12));
        // A fast message is never cut, however long.
        let mut p = Progress::default();
        for s in 0..600 {
            assert_eq!(p.on_data(&rule, at(s), 16_384), Ok(()));
        }
        // A new message starts a new clock.
        p.reset();
        assert_eq!(p.on_data(&rule, at(10_000), 1), Ok(()));
        // 0 disables.
        let off = ProgressRule { min_rate: 0, ..rule };
        let mut p = Progress::default();
        assert_eq!(p.on_data(&off, at(0), 1), Ok(()));
        assert_eq!(p.on_data(&off, at(100_000), 1), Ok(()));
    }
}
