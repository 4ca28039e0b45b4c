//! The engine side of a broadcast's floor (`floor.rs` decides; this applies
//! it): who is on stage, what viewers receive, and the floor messages.
//!
//! A viewer receives the presenters only while the broadcast is on air, so
//! a presenter can set up camera and screen before the audience sees them.
//! A viewer the presenter lets speak goes on stage: its microphone (and
//! camera, if granted) is forwarded to everyone and it is announced to the
//! other viewers; when its turn ends both are taken back.

use std::collections::BTreeSet;

use super::*;
use crate::sfu::floor::{FloorError, QuestionState};

/// Presents in this room (a broadcast's experts; everyone in a consultation).
pub(super) fn is_presenter(room: &Room, p: &Participant) -> bool {
    room.kind.may_publish(p.role)
}

/// Seen and heard by everyone in the room: presenters, and viewers while
/// they have the floor.
pub(super) fn on_stage(room: &Room, p: &Participant) -> bool {
    is_presenter(room, p) || room.floor.speaker(&p.id).is_some()
}

/// Whether `a` and `b` hear of each other (joins, leaves, participant
/// lists). Viewers are not announced to one another: with hundreds of
/// them every join would be a message to every page.
pub(super) fn announces(room: &Room, a: &Participant, b: &Participant) -> bool {
    on_stage(room, a) || on_stage(room, b)
}

/// Whether `sub` is sent what `publisher` publishes.
pub(super) fn receives(room: &Room, sub: &Participant, publisher: &Participant) -> bool {
    room.kind == RoomKind::Consultation || is_presenter(room, sub) || (room.floor.live() && on_stage(room, publisher))
}

/// What `p` may publish in `room`.
pub(super) fn may_send(room: &Room, p: &Participant, source: Source) -> bool {
    if is_presenter(room, p) {
        return true;
    }
    match room.floor.speaker(&p.id) {
        Some(s) => source == Source::Mic || (source == Source::Camera && s.video),
        None => false,
    }
}

fn floor_error(e: FloorError) -> ErrorCode {
    match e {
        FloorError::EmptyQuestion | FloorError::QuestionTooLong => ErrorCode::BadMessage,
        FloorError::TooManyOpen | FloorError::QueueFull | FloorError::TooManySpeakers => ErrorCode::Limit,
        FloorError::NoSuchQuestion | FloorError::NotLive => ErrorCode::BadState,
    }
}

/// Who may make a floor request.
enum Need {
    Presenter,
    Viewer,
}

impl Engine {
    /// The room of a joined broadcast participant, if `need` holds; refuses
    /// the request otherwise.
    fn floor_room(&self, pid: &str, need: Need) -> Option<String> {
        let p = self.parts.get(pid)?;
        let Some(r) = self.rooms.get(&p.room).filter(|r| r.kind == RoomKind::Broadcast) else {
            self.reply_err(pid, ErrorCode::NotAllowed, "only in a teaching broadcast");
            return None;
        };
        let ok = match need {
            Need::Presenter => is_presenter(r, p),
            Need::Viewer => !is_presenter(r, p),
        };
        if !ok {
            let why = match need {
                Need::Presenter => "only a presenter may do this",
                Need::Viewer => "only a viewer may do this",
            };
            self.reply_err(pid, ErrorCode::NotAllowed, why);
            return None;
        }
        Some(p.room.clone())
    }

    /// A viewer of `room` by id, for a presenter's request about it.
    fn viewer_in(&self, pid: &str, room: &str, target: &str) -> Option<String> {
        let found = self
            .parts
            .get(target)
            .zip(self.rooms.get(room))
            .filter(|(t, r)| t.room == room && !is_presenter(r, t))
            .map(|(t, _)| t.name.clone());
        if found.is_none() {
            self.reply_err(pid, ErrorCode::BadState, "no such viewer in this broadcast");
        }
        found
    }

    pub(super) fn floor_signal(&mut self, now: Instant, pid: &str, msg: ClientMsg) {
        match msg {
            ClientMsg::Hand {
                raised,
                participant: Some(target),
            } if target != pid => {
                // A presenter lowers a viewer's hand (raising one for them
                // would be speaking for them).
                let Some(room) = self.floor_room(pid, Need::Presenter) else {
                    return;
                };
                if raised {
                    return self.reply_err(pid, ErrorCode::NotAllowed, "a presenter may only lower a viewer's hand");
                }
                let Some(name) = self.viewer_in(pid, &room, &target) else {
                    return;
                };
                if let Some(r) = self.rooms.get_mut(&room)
                    && r.floor.set_hand(&target, &name, false, unix_ms())
                    && let Some(t) = self.parts.get(&target)
                {
                    t.send(ServerMsg::Hand { raised: false });
                }
            }
            ClientMsg::Hand { raised, .. } => {
                let Some(room) = self.floor_room(pid, Need::Viewer) else {
                    return;
                };
                let Some(p) = self.parts.get(pid) else { return };
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.floor.set_hand(pid, &p.name, raised, unix_ms());
                }
                p.send(ServerMsg::Hand { raised });
            }
            ClientMsg::Question { text } => {
                let Some(room) = self.floor_room(pid, Need::Viewer) else {
                    return;
                };
                let Some(p) = self.parts.get(pid) else { return };
                let Some(r) = self.rooms.get_mut(&room) else { return };
                match r.floor.ask(pid, &p.name, &text, unix_ms()) {
                    Ok((id, text)) => {
                        p.send(ServerMsg::QuestionState {
                            id,
                            state: QuestionState::Open,
                            text,
                        });
                    }
                    Err(e) => self.reply_err(pid, floor_error(e), &e.to_string()),
                }
            }
            ClientMsg::QuestionDone { id, answered } => {
                let Some(room) = self.floor_room(pid, Need::Presenter) else {
                    return;
                };
                let Some(r) = self.rooms.get_mut(&room) else { return };
                match r.floor.close_question(id) {
                    Ok(q) => {
                        if let Some(asker) = self.parts.get(&q.from) {
                            asker.send(ServerMsg::QuestionState {
                                id,
                                state: if answered {
                                    QuestionState::Answered
                                } else {
                                    QuestionState::Dismissed
                                },
                                text: q.text,
                            });
                        }
                    }
                    Err(e) => self.reply_err(pid, floor_error(e), &e.to_string()),
                }
            }
            ClientMsg::Promote { participant, video } => {
                let Some(room) = self.floor_room(pid, Need::Presenter) else {
                    return;
                };
                let Some(name) = self.viewer_in(pid, &room, &participant) else {
                    return;
                };
                let Some(r) = self.rooms.get_mut(&room) else { return };
                let was = r.floor.speaker(&participant).map(|s| s.video);
                let had_hand = r.floor.hand_raised(&participant);
                if let Err(e) = r.floor.promote(&participant, &name, video) {
                    return self.reply_err(pid, floor_error(e), &e.to_string());
                }
                info!(room = %room, participant = %participant, video, "viewer given the floor");
                if let Some(t) = self.parts.get(&participant) {
                    if had_hand {
                        t.send(ServerMsg::Hand { raised: false });
                    }
                    t.send(ServerMsg::Floor { granted: true, video });
                }
                match was {
                    None => self.went_on_stage(now, &room, &participant),
                    // Video taken back from a speaker who keeps the audio.
                    Some(true) if !video => self.drop_tracks(now, &participant, |s| s != Source::Mic),
                    Some(_) => {}
                }
            }
            ClientMsg::Demote { participant } => {
                let Some(p) = self.parts.get(pid) else { return };
                let own = participant == pid;
                let room = p.room.clone();
                if !own && self.floor_room(pid, Need::Presenter).is_none() {
                    return;
                }
                let Some(r) = self.rooms.get_mut(&room) else { return };
                if !r.floor.demote(&participant) {
                    return self.reply_err(pid, ErrorCode::BadState, "that viewer does not have the floor");
                }
                self.left_stage(now, &room, &participant);
            }
            ClientMsg::Live { live } => {
                let Some(room) = self.floor_room(pid, Need::Presenter) else {
                    return;
                };
                self.set_live(now, &room, live);
            }
            _ => {}
        }
    }

    /// Goes on or off air: viewers start or stop receiving the presenters.
    pub(super) fn set_live(&mut self, now: Instant, room: &str, live: bool) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let before = r.floor.view();
        let speakers: Vec<String> = before.speakers.into_iter().map(|s| s.id).collect();
        let hands: Vec<String> = before.hands.into_iter().map(|h| h.id).collect();
        if !r.floor.set_live(live) {
            return;
        }
        info!(room, live, "broadcast on air changed");
        let joined = r.joined.clone();
        for s in &speakers {
            // Off air ends every turn (the floor already forgot them).
            self.left_stage(now, room, s);
        }
        for h in &hands {
            if let Some(p) = self.parts.get(h) {
                p.send(ServerMsg::Hand { raised: false });
            }
        }
        for v in &joined {
            let Some(r) = self.rooms.get(room) else { return };
            let Some(vp) = self.parts.get(v) else { continue };
            vp.send(ServerMsg::Live { live });
            if is_presenter(r, vp) {
                continue;
            }
            let changed = if live {
                self.subscribe_to_stage(now, room, v)
            } else {
                self.unsubscribe(v, |_| true)
            };
            if changed {
                self.renegotiate_sub(now, v);
            }
        }
    }

    /// Adds down-tracks for everything `sub` should receive and does not;
    /// returns whether any was added.
    pub(super) fn subscribe_to_stage(&mut self, now: Instant, room: &str, sub: &str) -> bool {
        let joined: Vec<String> = self.rooms.get(room).map(|r| r.joined.clone()).unwrap_or_default();
        let mut added = false;
        for o in joined.iter().filter(|o| *o != sub) {
            let tracks: Vec<String> = self
                .parts
                .get(o)
                .map(|op| op.uptracks.keys().cloned().collect())
                .unwrap_or_default();
            for t in tracks {
                added |= self.add_downtrack(now, sub, o, &t);
            }
        }
        added
    }

    /// Removes `sub`'s down-tracks whose publisher matches; returns whether
    /// any was removed (the caller renegotiates).
    pub(super) fn unsubscribe(&mut self, sub: &str, publisher: impl Fn(&str) -> bool) -> bool {
        let Some(sp) = self.parts.get_mut(sub) else {
            return false;
        };
        let keys: Vec<(String, String)> = sp.down.keys().filter(|k| publisher(&k.0)).cloned().collect();
        for k in &keys {
            if let Some(d) = sp.down.remove(k) {
                sp.down_by_ssrc.remove(&d.ssrc);
                sp.down_by_ssrc.remove(&d.rtx_ssrc);
                let _ = sp.subc.pc.remove_track(d.sender);
            }
        }
        !keys.is_empty()
    }

    /// A viewer was let speak: the other viewers now hear of it (and it of
    /// the other speakers); its tracks, once published, go to everyone.
    fn went_on_stage(&mut self, now: Instant, room: &str, speaker: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        let Some(sp) = self.parts.get(speaker) else { return };
        let info = sp.info();
        let mut others_on_stage = Vec::new();
        for o in r.joined.iter().filter(|o| *o != speaker) {
            let Some(op) = self.parts.get(o) else { continue };
            if is_presenter(r, op) {
                // Presenters hear of every viewer already; a fresh list
                // shows the new speaker's sources.
                op.send(ServerMsg::ParticipantJoined {
                    participant: info.clone(),
                });
                continue;
            }
            op.send(ServerMsg::ParticipantJoined {
                participant: info.clone(),
            });
            if r.floor.speaker(o).is_some() {
                others_on_stage.push(op.info());
            }
        }
        for o in others_on_stage {
            sp.send(ServerMsg::ParticipantJoined { participant: o });
        }
        // Anything it already publishes (a grant renewed after a reconnect).
        let joined = r.joined.clone();
        let tracks: Vec<String> = sp.uptracks.keys().cloned().collect();
        for o in joined.iter().filter(|o| *o != speaker) {
            let mut added = false;
            for t in &tracks {
                added |= self.add_downtrack(now, o, speaker, t);
            }
            if added {
                self.renegotiate_sub(now, o);
            }
        }
    }

    /// A speaker's turn ended (the floor already forgot it): its tracks are
    /// dropped, the viewers forget it, and its page is told to stop sending.
    pub(super) fn left_stage(&mut self, now: Instant, room: &str, speaker: &str) {
        info!(room, participant = speaker, "viewer's floor ended");
        self.drop_tracks(now, speaker, |_| true);
        let Some(r) = self.rooms.get(room) else { return };
        let speakers: BTreeSet<String> = r.floor.view().speakers.into_iter().map(|s| s.id).collect();
        if let Some(sp) = self.parts.get(speaker) {
            sp.send(ServerMsg::Floor {
                granted: false,
                video: false,
            });
            for s in &speakers {
                sp.send(ServerMsg::ParticipantLeft { id: s.clone() });
            }
        }
        let info = self.parts.get(speaker).map(|s| s.info());
        for o in r.joined.iter().filter(|o| *o != speaker) {
            let Some(op) = self.parts.get(o) else { continue };
            if !is_presenter(r, op) {
                op.send(ServerMsg::ParticipantLeft {
                    id: speaker.to_string(),
                });
            } else if let Some(info) = &info {
                // Presenters keep knowing the viewer, now without sources.
                op.send(ServerMsg::ParticipantJoined {
                    participant: info.clone(),
                });
            }
        }
    }

    /// Forgets `pid`'s published tracks whose source matches, as if they
    /// had closed: nobody receives them any more. The browser's m-lines stay
    /// until its page renegotiates; packets on them are dropped.
    fn drop_tracks(&mut self, now: Instant, pid: &str, which: impl Fn(Source) -> bool) {
        let Some(p) = self.parts.get(pid) else { return };
        let ids: Vec<String> = p
            .uptracks
            .iter()
            .filter(|(_, u)| which(u.source))
            .map(|(t, _)| t.clone())
            .collect();
        for t in ids {
            self.on_track_close(now, pid, &t);
        }
    }

    /// Presenters get the floor's queue when it changed.
    pub(super) fn send_queues(&mut self) {
        for r in self.rooms.values_mut() {
            if r.kind != RoomKind::Broadcast {
                continue;
            }
            let Some(queue) = r.floor.take_update() else { continue };
            for pid in &r.joined {
                if let Some(p) = self.parts.get(pid)
                    && is_presenter(r, p)
                {
                    p.send(ServerMsg::Queue { queue: queue.clone() });
                }
            }
        }
    }

    /// A participant arrived: a presenter is sent the queue, a viewer its
    /// open questions (a page that reconnected shows them again).
    pub(super) fn floor_on_join(&self, room: &str, pid: &str) {
        let (Some(r), Some(p)) = (self.rooms.get(room), self.parts.get(pid)) else {
            return;
        };
        if r.kind != RoomKind::Broadcast {
            return;
        }
        if is_presenter(r, p) {
            p.send(ServerMsg::Queue { queue: r.floor.view() });
            return;
        }
        for q in r.floor.open_questions_of(pid) {
            p.send(ServerMsg::QuestionState {
                id: q.id,
                state: QuestionState::Open,
                text: q.text,
            });
        }
    }
}
