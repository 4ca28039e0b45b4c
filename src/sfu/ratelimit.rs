//! What one participant may make the server do over signaling, per second.
//!
//! Every signaling message costs the server something, and some cost the
//! other participants too (a `mute` is a message to each of them, `live`
//! renegotiates every viewer, a re-join tells everyone twice). A token
//! bucket per participant bounds that: each message costs tokens by what it
//! makes the server do, the bucket refills at a steady rate, and a message
//! the bucket cannot pay for is refused with `error` `rate_limited`.
//!
//! Refusing is not enough against a page that ignores the refusals, so each
//! refused message is also a strike; strikes leak away at a steady rate, and
//! a participant whose strikes pile up is cut (close 4029). A browser that
//! overshoots once, by a few messages, never gets there.
//!
//! The bounds are sized from what the page does at its busiest, with a wide
//! margin: a join is one `pub` offer per source switched on (three at most)
//! and a `sub` answer per change of the room (a consultation filling up at
//! once: about twenty), the page trickles no candidates, pings every 15 s,
//! and floor clicks come at human speed. That is under 40 tokens in a burst
//! and well under one per second sustained; the bucket holds 100 and refills
//! 10 a second. `ratelimit::tests` plays that page against it.
//!
//! The state is keyed by participant, not by connection, so reconnecting
//! does not refill the bucket. Joining is bounded on its own (each one
//! tells the whole room twice): a few a second at most, and none while the
//! participant's strikes are still high from being cut. A join grants a few
//! tokens (a reconnecting page needs an offer and an answer at once), which
//! is all a page that reconnects in a loop gains by it. Pure: time
//! is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::protocol::ClientMsg;

/// Tokens a participant may spend at once.
pub const BURST: f64 = 100.0;
/// Tokens regained per second.
pub const REFILL_PER_SEC: f64 = 10.0;
/// Outstanding strikes (refused messages, leaking away) beyond which the
/// participant is cut.
pub const MAX_STRIKES: f64 = 50.0;
/// Strikes forgiven per second.
pub const STRIKE_LEAK_PER_SEC: f64 = 2.0;
/// A refused participant is told at most this often (the refusals must not
/// become a flood of their own).
pub const NOTICE_EVERY: Duration = Duration::from_secs(1);
/// Joins a participant may make at once, and regains per second. A page
/// rejoins after a dropped link with a backoff of seconds; a join, connect
/// and leave cycle as fast as Chromium connects on loopback (the leak
/// test) is about 10 a second. A loop faster than that is stopped here.
pub const JOIN_BURST: f64 = 60.0;
pub const JOINS_PER_SEC: f64 = 20.0;
/// Tokens a join adds (up to [`BURST`]): a fresh page's offer and first
/// answer, so such a cycle pays for itself, and a loop of rejoins gains no
/// more than this per join.
pub const JOIN_GRANT: f64 = 10.0;
/// Participants remembered at once (far above the rooms' seats; at-rest
/// entries are forgotten first, and forgetting one loses nothing).
const MAX_TRACKED: usize = 1 << 16;

/// What a message costs: what it makes the server (and the room) do.
/// `None` is a frame that did not parse (answered with `bad_message`).
pub fn cost(msg: Option<&ClientMsg>) -> u32 {
    match msg {
        // Parse the SDP, apply it, build an answer.
        Some(ClientMsg::Offer { .. }) => 5,
        Some(ClientMsg::Answer { .. }) => 2,
        // Renegotiates every viewer of the broadcast.
        Some(ClientMsg::Live { .. }) => 5,
        // Adds or ends a stream every viewer receives.
        Some(ClientMsg::Promote { .. } | ClientMsg::Demote { .. }) => 2,
        // Always let a participant go.
        Some(ClientMsg::Leave) => 0,
        Some(_) | None => 1,
    }
}

/// A token bucket: `capacity` tokens, `per_sec` regained per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Adds `n` tokens, up to the capacity.
    pub fn grant(&mut self, now: Instant, n: f64) {
        self.refill(now);
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// A full bucket.
    pub fn new(capacity: f64, per_sec: f64) -> TokenBucket {
        TokenBucket {
            capacity,
            per_sec,
            tokens: capacity,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Takes `cost` tokens if there are that many.
    pub fn try_take(&mut self, now: Instant, cost: f64) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Full again: indistinguishable from a new bucket.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refused; `notify`: tell the page (`error` `rate_limited`), which
    /// happens at most once per [`NOTICE_EVERY`].
    Refuse { notify: bool },
    /// Refusals ignored for too long: end the session (close 4029).
    Cut,
}

/// One participant's budget.
#[derive(Debug, Clone)]
pub struct SignalLimiter {
    bucket: TokenBucket,
    joins: TokenBucket,
    strikes: f64,
    strikes_at: Option<Instant>,
    noticed_at: Option<Instant>,
}

impl Default for SignalLimiter {
    fn default() -> Self {
        SignalLimiter {
            bucket: TokenBucket::new(BURST, REFILL_PER_SEC),
            joins: TokenBucket::new(JOIN_BURST, JOINS_PER_SEC),
            strikes: 0.0,
            strikes_at: None,
            noticed_at: None,
        }
    }
}

impl SignalLimiter {
    fn leak(&mut self, now: Instant) {
        if let Some(at) = self.strikes_at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.strikes = (self.strikes - dt * STRIKE_LEAK_PER_SEC).max(0.0);
        }
        self.strikes_at = Some(self.strikes_at.map_or(now, |a| a.max(now)));
    }

    /// Whether the participant may join (again) now; a join grants
    /// [`JOIN_GRANT`] tokens.
    pub fn join(&mut self, now: Instant) -> bool {
        self.leak(now);
        // Cut for going on over the limit: not back before half the strikes
        // have leaked away.
        if self.strikes >= MAX_STRIKES / 2.0 || !self.joins.try_take(now, 1.0) {
            return false;
        }
        self.bucket.grant(now, JOIN_GRANT);
        true
    }

    /// Whether a message costing `cost` may go through now.
    pub fn check(&mut self, now: Instant, cost: u32) -> Verdict {
        self.leak(now);
        if self.bucket.try_take(now, f64::from(cost)) {
            return Verdict::Allow;
        }
        self.strikes += 1.0;
        if self.strikes > MAX_STRIKES {
            return Verdict::Cut;
        }
        let notify = self
            .noticed_at
            .is_none_or(|t| now.saturating_duration_since(t) >= NOTICE_EVERY);
        if notify {
            self.noticed_at = Some(now);
        }
        Verdict::Refuse { notify }
    }

    /// Nothing owed: forgetting this limiter changes nothing.
    fn at_rest(&mut self, now: Instant) -> bool {
        self.leak(now);
        self.strikes == 0.0 && self.bucket.is_full(now) && self.joins.is_full(now)
    }
}

/// Every participant's limiter, by participant id: shared by its
/// connections, so neither a reconnect nor a second tab starts afresh.
#[derive(Debug, Default)]
pub struct Limits {
    by_participant: Mutex<HashMap<String, SignalLimiter>>,
}

impl Limits {
    /// A message of `participant` costing `cost`.
    pub fn check(&self, participant: &str, now: Instant, cost: u32) -> Verdict {
        self.with(participant, now, |l| l.check(now, cost))
    }

    /// `participant` joins (see [`SignalLimiter::join`]).
    pub fn join(&self, participant: &str, now: Instant) -> bool {
        self.with(participant, now, |l| l.join(now))
    }

    fn with<T>(&self, participant: &str, now: Instant, f: impl FnOnce(&mut SignalLimiter) -> T) -> T {
        let mut map = self.by_participant.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get_mut(participant) {
            return f(l);
        }
        if map.len() >= MAX_TRACKED {
            map.retain(|_, l| !l.at_rest(now));
            if map.len() >= MAX_TRACKED
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        let mut l = SignalLimiter::default();
        let v = f(&mut l);
        map.insert(participant.to_string(), l);
        v
    }

    /// Participants remembered (for tests).
    pub fn tracked(&self) -> usize {
        self.by_participant.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::protocol::parse_client;

    fn msg(json: &str) -> ClientMsg {
        parse_client(json).expect("valid message")
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        for _ in 0..10 {
            assert!(b.try_take(t0, 1.0));
        }
        assert!(!b.try_take(t0, 1.0));
        // 5 tokens a second: 1 after 200 ms, not 2.
        let t = t0 + Duration::from_millis(200);
        assert!(b.try_take(t, 1.0));
        assert!(!b.try_take(t, 1.0));
        // A long pause fills it, but not beyond its capacity.
        let t = t + Duration::from_secs(60);
        assert!(b.is_full(t));
        assert!(b.try_take(t, 10.0));
        assert!(!b.try_take(t, 1.0));
        // Time going backwards (two threads' clocks) gives nothing away.
        assert!(!b.try_take(t0, 1.0));
    }

    /// The busiest page: joining a consultation that fills up at once,
    /// switching camera and screen, a presenter clicking through the floor,
    /// pings; then an hour of ordinary use. Never refused.
    #[test]
    fn a_real_browser_never_hits_the_limit() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        let mut t = t0;
        let spent = |l: &mut SignalLimiter, t: Instant, m: &str, n: usize| {
            for _ in 0..n {
                assert_eq!(l.check(t, cost(Some(&msg(m)))), Verdict::Allow, "{m} refused");
            }
        };
        assert!(l.join(t));
        let offer = r#"{"type":"offer","pc":"pub","sdp":"v=0","tracks":{}}"#;
        let answer = r#"{"type":"answer","pc":"sub","sdp":"v=0"}"#;
        spent(&mut l, t, offer, 3);
        spent(&mut l, t, answer, 20);
        spent(&mut l, t, r#"{"type":"mute","source":"mic","muted":true}"#, 4);
        t += Duration::from_secs(2);
        // A presenter: on air, promote and demote three viewers, lower hands.
        spent(&mut l, t, r#"{"type":"live","live":true}"#, 1);
        for _ in 0..3 {
            spent(&mut l, t, r#"{"type":"promote","participant":"p_x","video":true}"#, 1);
            spent(&mut l, t, r#"{"type":"hand","raised":false,"participant":"p_y"}"#, 2);
            spent(&mut l, t, r#"{"type":"demote","participant":"p_x"}"#, 1);
            spent(&mut l, t, r#"{"type":"question_done","id":1,"answered":true}"#, 1);
        }
        // A dropped link: the page rejoins (same participant) and starts over.
        t += Duration::from_secs(1);
        assert!(l.join(t));
        spent(&mut l, t, offer, 3);
        spent(&mut l, t, answer, 5);
        // An hour: a ping every 15 s, a screen share toggled every minute.
        for i in 0..240 {
            t += Duration::from_secs(15);
            spent(&mut l, t, r#"{"type":"ping"}"#, 1);
            if i % 4 == 0 {
                spent(&mut l, t, offer, 1);
                spent(&mut l, t, answer, 6);
            }
        }
    }

    #[test]
    fn a_flood_is_refused_told_once_a_second_and_then_cut() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        let ping = cost(Some(&msg(r#"{"type":"ping"}"#)));
        let mut verdicts = Vec::new();
        // 1000 messages a second.
        for i in 0..1000u64 {
            let v = l.check(t0 + Duration::from_millis(i), ping);
            verdicts.push(v);
            if v == Verdict::Cut {
                break;
            }
        }
        let allowed = verdicts.iter().filter(|v| **v == Verdict::Allow).count();
        let notices = verdicts
            .iter()
            .filter(|v| **v == Verdict::Refuse { notify: true })
            .count();
        assert_eq!(verdicts.last(), Some(&Verdict::Cut), "a flood must be cut");
        // The burst, plus what refilled meanwhile.
        assert!((100..=103).contains(&allowed), "{allowed} allowed");
        assert_eq!(notices, 1, "told once, not once per message");
        assert!(verdicts.len() < 200, "cut only after {} messages", verdicts.len());
    }

    #[test]
    fn a_page_that_backs_off_when_told_is_not_cut() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        let mut t = t0;
        // Ten minutes of a page that spends its whole budget every 10 s and
        // overshoots each time by ten messages, refused.
        let mut refused = 0;
        for _ in 0..60 {
            for _ in 0..110 {
                match l.check(t, 1) {
                    Verdict::Allow => {}
                    Verdict::Refuse { .. } => refused += 1,
                    Verdict::Cut => panic!("cut a page that backs off"),
                }
            }
            t += Duration::from_secs(10);
        }
        assert!(refused >= 60 * 10, "{refused}");
    }

    /// A test page that joins, negotiates and leaves over and over, ten
    /// times a second: never refused. A loop of rejoins faster than that is.
    #[test]
    fn rejoining_pays_for_its_negotiation_but_a_join_loop_is_stopped() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        let offer = cost(Some(&msg(r#"{"type":"offer","pc":"pub","sdp":"v=0","tracks":{}}"#)));
        let answer = cost(Some(&msg(r#"{"type":"answer","pc":"sub","sdp":"v=0"}"#)));
        let mut t = t0;
        for i in 0..1000 {
            assert!(l.join(t), "join {i} refused");
            assert_eq!(l.check(t, offer), Verdict::Allow, "cycle {i}");
            assert_eq!(l.check(t, answer), Verdict::Allow, "cycle {i}");
            t += Duration::from_millis(100);
        }
        let joined = (0..100).filter(|_| l.join(t)).count();
        assert_eq!(joined, JOIN_BURST as usize, "a join loop");
    }

    #[test]
    fn a_participant_cut_for_flooding_cannot_rejoin_at_once_or_refill_by_rejoining() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        assert!(l.join(t0));
        while l.check(t0, 1) != Verdict::Cut {}
        assert!(!l.join(t0), "rejoined right after being cut");
        // Once most strikes have leaked away it may come back, with what
        // its bucket regained and the join's grant, not a full bucket.
        let later = t0 + Duration::from_secs(15);
        assert!(l.join(later));
        let allowed = (0..1000).take_while(|_| l.check(later, 1) == Verdict::Allow).count();
        assert!(allowed <= BURST as usize, "{allowed}");
        // Rejoining in a loop (100 times a second) gains only the grants of
        // the joins it is allowed: over ten seconds, the join burst, then
        // about 200 messages a second, not thousands.
        let mut t = later + Duration::from_secs(60);
        assert!(l.join(t));
        while l.check(t, 1) == Verdict::Allow {}
        let mut gained = 0;
        for _ in 0..1000 {
            t += Duration::from_millis(10);
            if l.join(t) {
                gained += (0..1000).take_while(|_| l.check(t, 1) == Verdict::Allow).count();
            }
        }
        let bound = 10.0 * (REFILL_PER_SEC + JOINS_PER_SEC * JOIN_GRANT) + JOIN_BURST * JOIN_GRANT;
        assert!(gained as f64 <= bound + 1.0, "{gained} > {bound}");
    }

    #[test]
    fn offers_cost_more_than_pings_and_leaving_is_free() {
        let t0 = Instant::now();
        let mut l = SignalLimiter::default();
        let offer = cost(Some(&msg(r#"{"type":"offer","pc":"pub","sdp":"v=0","tracks":{}}"#)));
        let n = (0..1000).take_while(|_| l.check(t0, offer) == Verdict::Allow).count();
        assert_eq!(n, 20, "a burst of offers");
        assert_eq!(l.check(t0, cost(Some(&msg(r#"{"type":"leave"}"#)))), Verdict::Allow);
        assert_eq!(cost(None), 1, "garbage costs like a ping");
    }

    #[test]
    fn limits_follow_the_participant_across_connections() {
        let t0 = Instant::now();
        let limits = Limits::default();
        for _ in 0..100 {
            assert_eq!(limits.check("p_a", t0, 1), Verdict::Allow);
        }
        // Another connection of the same participant: the same budget.
        assert_eq!(limits.check("p_a", t0, 1), Verdict::Refuse { notify: true });
        // Somebody else is not affected.
        assert_eq!(limits.check("p_b", t0, 1), Verdict::Allow);
        assert_eq!(limits.tracked(), 2);
    }
}
