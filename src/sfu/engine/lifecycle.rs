//! How rooms end on their own, and whom a room belongs to.
//!
//! Rooms used to end only when someone deleted them, while the room limit
//! counted every room still in memory: consultation requests create rooms
//! nobody deletes, so after a few hundred consultations every new room
//! failed. Now a room ends when nobody has been in it for the grace period
//! (a room nobody joined yet counts as empty from its creation), or at its
//! expiry; the HTTP side closes it at once when its owner ends (a request
//! cancelled or finished, a broadcast ended). Ended rooms leave the map, so
//! `max_rooms` counts live rooms.
//!
//! The owner lives with the room, so permissions decided by the HTTP layer
//! read the one copy that cannot go stale (a broadcast whose room ended is
//! gone from the broadcast list with it).

use super::*;
use crate::sfu::BroadcastInfo;

/// How often rooms are checked for their end. A grace of seconds is for
/// tests; deployments use minutes.
pub(super) const SWEEP: Duration = Duration::from_millis(500);

/// Whom a room belongs to: who may add participants to it and end it (the
/// HTTP layer decides that from this and the caller's account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOwner {
    /// An ad-hoc room (`POST /api/rooms`): the account that created it.
    Account(String),
    /// A consultation request's room.
    Request(i64),
    /// A teaching broadcast: its presenters and audience.
    Broadcast(BroadcastInfo),
}

/// Why a room ends now, if it does: the rule, as a pure function of the
/// room's timestamps.
pub(super) fn end_reason(
    empty_since: Option<Instant>,
    expires_at: Instant,
    grace: Duration,
    now: Instant,
) -> Option<&'static str> {
    if now >= expires_at {
        return Some("the room has expired");
    }
    match empty_since {
        Some(t) if now.saturating_duration_since(t) >= grace => Some("the room was empty"),
        _ => None,
    }
}

impl Engine {
    /// Ends every room that is empty past the grace period or expired.
    pub(super) fn end_rooms(&mut self, now: Instant) {
        let grace = self.cfg.empty_room_grace;
        let ending: Vec<(String, &'static str)> = self
            .rooms
            .values()
            .filter_map(|r| end_reason(r.empty_since, r.expires_at, grace, now).map(|why| (r.id.clone(), why)))
            .collect();
        for (room, why) in ending {
            self.close_room(now, &room, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::client_queue::{ClientRx, client_queue};

    const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 7882);

    fn engine(max_rooms: usize, grace: Duration, now: Instant) -> (Engine, Arc<SfuMetrics>) {
        let metrics = Arc::new(SfuMetrics::default());
        let cfg = EngineConfig {
            local_addr: ADDR,
            announce: vec![ADDR],
            max_rooms,
            max_participants: 8,
            max_viewers: 100,
            max_tracks: 3,
            peer_timeout: Duration::from_secs(20),
            history: Duration::from_secs(3),
            pli_interval: Duration::from_millis(500),
            empty_room_grace: grace,
        };
        (Engine::new(cfg, metrics.clone(), now), metrics)
    }

    fn create(e: &mut Engine, now: Instant, ttl: Duration) -> Result<CreatedRoom, SfuError> {
        let (tx, mut rx) = oneshot::channel();
        e.handle_command(
            now,
            Command::CreateRoom {
                title: "t".into(),
                kind: RoomKind::Consultation,
                owner: RoomOwner::Account("exp1".into()),
                ttl,
                participants: vec![NewParticipant {
                    account: "exp1".into(),
                    name: "Dr. One".into(),
                    role: Role::Expert,
                }],
                reply: tx,
            },
        );
        rx.try_recv().expect("reply")
    }

    fn join(e: &mut Engine, now: Instant, room: &str, pid: &str, account: &str) -> (JoinResult, ClientRx) {
        let (tx, rx) = client_queue(64, Arc::new(SfuMetrics::default()));
        let (rtx, mut rrx) = oneshot::channel();
        e.handle_command(
            now,
            Command::Join {
                room: room.into(),
                participant: pid.into(),
                account: account.into(),
                conn: 1,
                tx,
                reply: rtx,
            },
        );
        (rrx.try_recv().expect("join reply"), rx)
    }

    /// Drives the engine's timers over `d` (virtual time).
    fn run(e: &mut Engine, from: Instant, d: Duration) -> Instant {
        let mut t = from;
        while t < from + d {
            t += Duration::from_millis(100);
            e.handle_timeout(t);
        }
        t
    }

    #[test]
    fn the_room_limit_counts_live_rooms_and_unjoined_rooms_end_after_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let (mut e, m) = engine(2, s(10), t0);
        let live = || m.rooms_active.load(Relaxed);
        create(&mut e, t0, s(3600)).expect("first");
        create(&mut e, t0, s(3600)).expect("second");
        assert_eq!(create(&mut e, t0, s(3600)).unwrap_err(), SfuError::TooManyRooms(2));
        let t = run(&mut e, t0, s(9));
        assert_eq!(live(), 2, "still within the grace");
        let t = run(&mut e, t, s(2));
        assert_eq!(live(), 0, "nobody ever joined: ended after the grace");
        // The limit counted live rooms: new ones can be made again.
        create(&mut e, t, s(3600)).expect("after the sweep");
        assert_eq!(live(), 1);
    }

    #[test]
    fn an_occupied_room_ends_at_its_expiry_and_its_participant_is_told() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let (mut e, m) = engine(10, s(60), t0);
        let room = create(&mut e, t0, s(5)).expect("room");
        let pid = room.participants[0].id.clone();
        let (joined, mut rx) = join(&mut e, t0, &room.id, &pid, "exp1");
        joined.expect("joined");
        let t = run(&mut e, t0, s(4));
        assert_eq!(m.rooms_active.load(Relaxed), 1);
        run(&mut e, t, s(2));
        assert_eq!(m.rooms_active.load(Relaxed), 0);
        assert_eq!(m.participants_active.load(Relaxed), 0);
        while rx.try_recv().is_some() {}
        assert_eq!(
            rx.end_reason(),
            Some((ErrorCode::RoomClosed, "the room has expired".to_string()))
        );
    }

    #[test]
    fn an_invitation_is_joined_only_by_its_own_account() {
        let t0 = Instant::now();
        let (mut e, m) = engine(10, Duration::from_secs(60), t0);
        let room = create(&mut e, t0, Duration::from_secs(60)).expect("room");
        let pid = room.participants[0].id.clone();
        let (refused, _rx) = join(&mut e, t0, &room.id, &pid, "doc1");
        assert_eq!(refused.unwrap_err().0, ErrorCode::BadToken);
        assert_eq!(m.participants_active.load(Relaxed), 0);
        let (ok, _rx) = join(&mut e, t0, &room.id, &pid, "exp1");
        ok.expect("its own account joins");
        assert_eq!(m.participants_active.load(Relaxed), 1);
    }

    #[test]
    fn a_room_ends_when_empty_past_the_grace_or_at_its_expiry() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let exp = t0 + s(3600);
        // Nobody joined yet: empty from creation.
        assert_eq!(end_reason(Some(t0), exp, s(60), t0 + s(59)), None);
        assert_eq!(end_reason(Some(t0), exp, s(60), t0 + s(60)), Some("the room was empty"));
        // Occupied rooms stay, until their expiry.
        assert_eq!(end_reason(None, exp, s(60), t0 + s(3599)), None);
        assert_eq!(end_reason(None, exp, s(60), exp), Some("the room has expired"));
        // Emptied later: the grace counts from then.
        assert_eq!(end_reason(Some(t0 + s(100)), exp, s(60), t0 + s(150)), None);
        assert_eq!(
            end_reason(Some(t0 + s(100)), exp, s(60), t0 + s(160)),
            Some("the room was empty")
        );
    }
}
