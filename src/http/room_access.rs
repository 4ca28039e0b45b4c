//! Who may do what with a consultation room or a broadcast, decided from
//! the caller's account, the room's owner (kept by the engine with the
//! room) and the alliance configuration, with no I/O.
//!
//! - An ad-hoc room belongs to the expert (or admin) who created it.
//! - A consultation request's room belongs to the request: its accepted
//!   expert manages it; doctors of the clinic that raised it may join it
//!   themselves while it is open.
//! - A broadcast belongs to the expert who started it; the colleagues it
//!   named present with it; everyone else who may see it watches.
//! - Admins may do everything.
//!
//! Invitees are named by account and must be in the inviter's scope:
//! doctors of clinics the expert's hospital serves, experts of the same
//! hospital. With no `[[hospital]]` configured there is one implicit
//! hospital serving every clinic, as for reading (`access::scope_of`).
//! Callers with no right at all get 404, as elsewhere, so room ids cannot
//! be probed.

use crate::config::Config;
use crate::reading::access::{Caller, Role, User};
use crate::reading::requests::{ReqAction, ReqState, Request, decide};
use crate::sfu::BroadcastInfo;
use crate::sfu::engine::RoomOwner;
use crate::sfu::protocol::Role as SfuRole;

/// A room's owner as the HTTP layer resolved it (a request's row read
/// from the index).
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Account(&'a str),
    /// None: the request no longer exists.
    Request(Option<&'a Request>),
    Broadcast(&'a BroadcastInfo),
}

impl<'a> Owner<'a> {
    pub fn of(owner: &'a RoomOwner, request: Option<&'a Request>) -> Owner<'a> {
        match owner {
            RoomOwner::Account(u) => Owner::Account(u),
            RoomOwner::Request(_) => Owner::Request(request),
            RoomOwner::Broadcast(b) => Owner::Broadcast(b),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    /// Read the room's status (who is in it).
    pub see: bool,
    /// Add itself (a clinic doctor to its request's open room, a named
    /// co-presenter to its broadcast).
    pub join: bool,
    /// Invite others in scope and end the room.
    pub manage: bool,
}

impl Rights {
    const ALL: Rights = Rights {
        see: true,
        join: true,
        manage: true,
    };

    /// Nothing at all: the room answers 404 to this caller.
    pub fn none(self) -> bool {
        self == Rights::default()
    }
}

/// What `c` may do with a room of `owner` whose invitations are held by
/// `accounts`. `now_ms` decides whether a request's room is open yet.
pub fn rights(c: &Caller, owner: Owner<'_>, accounts: &[String], now_ms: i64) -> Rights {
    if c.is(Role::Admin) {
        return Rights::ALL;
    }
    let me = c.user.username.as_str();
    let invited = Rights {
        see: accounts.iter().any(|a| a == me),
        ..Rights::default()
    };
    match owner {
        Owner::Account(creator) if creator == me => Rights::ALL,
        Owner::Account(_) => invited,
        Owner::Request(None) => Rights::default(),
        Owner::Request(Some(r)) => {
            let open = ReqState::parse(&r.state).is_some_and(|state| {
                decide(
                    state,
                    r.scheduled_ms,
                    r.expert.as_deref(),
                    &ReqAction::Join,
                    c.role(),
                    me,
                    now_ms,
                )
                .is_ok()
            });
            match c.role() {
                Role::Expert if r.expert.as_deref() == Some(me) => Rights {
                    see: true,
                    join: open,
                    manage: open,
                },
                Role::Clinic if c.user.clinic_id.as_deref() == Some(r.clinic_id.as_str()) => Rights {
                    see: true,
                    join: open,
                    manage: false,
                },
                _ => invited,
            }
        }
        Owner::Broadcast(b) if b.presenter == me => Rights::ALL,
        Owner::Broadcast(b) if b.presenters.iter().any(|p| p == me) => Rights {
            see: true,
            join: true,
            manage: false,
        },
        // Viewers take their seat through the broadcast API and learn
        // nothing about the audience.
        Owner::Broadcast(_) => Rights::default(),
    }
}

/// Experts of one hospital; with no `[[hospital]]` configured, every
/// expert belongs to the one implicit hospital.
pub fn same_hospital(a: &User, b: &User, cfg: &Config) -> bool {
    cfg.hospitals.is_empty() || (a.hospital_id.is_some() && a.hospital_id == b.hospital_id)
}

/// Whether `u` may see (list, join) broadcast `b`: the experts of its
/// hospital and the doctors of the clinics that hospital serves.
pub fn sees_broadcast(u: &User, b: &BroadcastInfo, cfg: &Config) -> bool {
    if u.disabled {
        return false;
    }
    match u.role {
        Role::Admin => true,
        Role::Expert => cfg.hospitals.is_empty() || (u.hospital_id.is_some() && u.hospital_id == b.hospital_id),
        Role::Clinic => match &b.hospital_id {
            None => cfg.hospitals.is_empty() && u.clinic_id.is_some(),
            Some(h) => cfg
                .hospitals
                .iter()
                .find(|x| &x.id == h)
                .is_some_and(|x| u.clinic_id.as_ref().is_some_and(|k| x.serves.contains(k))),
        },
    }
}

/// Whether `c` may invite `invitee` into a room of `owner`.
pub fn may_invite(c: &Caller, owner: Owner<'_>, invitee: &User, cfg: &Config) -> bool {
    if invitee.disabled {
        return false;
    }
    if c.is(Role::Admin) {
        return true;
    }
    match (owner, invitee.role) {
        (_, Role::Admin) => false,
        (Owner::Broadcast(b), _) => sees_broadcast(invitee, b, cfg),
        // A request's consultation is about one clinic's patient.
        (Owner::Request(r), Role::Clinic) => r.is_some_and(|r| invitee.clinic_id.as_deref() == Some(&r.clinic_id)),
        (Owner::Account(_), Role::Clinic) => invitee.clinic_id.as_deref().is_some_and(|k| c.sees(k)),
        (_, Role::Expert) => same_hospital(&c.user, invitee, cfg),
    }
}

/// Whether `u` may present in broadcast `b`.
pub fn presents(u: &User, b: &BroadcastInfo) -> bool {
    b.presenters.iter().any(|p| p == &u.username)
}

/// The role a participant has in a room, from its account: in a broadcast
/// presenters are experts and everyone else a (receive-only) viewer; in a
/// consultation clinic doctors are the clinic side, experts and admins the
/// expert side.
pub fn sfu_role(u: &User, owner: &RoomOwner) -> SfuRole {
    match owner {
        RoomOwner::Broadcast(b) if presents(u, b) => SfuRole::Expert,
        RoomOwner::Broadcast(_) => SfuRole::Clinic,
        _ if u.role == Role::Clinic => SfuRole::Clinic,
        _ => SfuRole::Expert,
    }
}

/// Whether `c` (an expert or admin) may start broadcasts, and for which
/// hospital's audience: `Ok(None)` is the implicit hospital.
pub fn broadcast_hospital(c: &Caller, cfg: &Config) -> Result<Option<String>, &'static str> {
    if cfg.hospitals.is_empty() {
        return Ok(None);
    }
    match c.user.hospital_id.as_deref() {
        Some(h) if cfg.hospitals.iter().any(|x| x.id == h) => Ok(Some(h.to_string())),
        _ => Err("an expert without a configured hospital has no audience"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HospitalConfig;
    use crate::reading::access::testing::{caller, clinic, named as user};

    fn alliance() -> Config {
        Config {
            clinics: vec![clinic("t1"), clinic("t2"), clinic("t3")],
            hospitals: vec![
                HospitalConfig {
                    id: "city".into(),
                    name: "City".into(),
                    serves: vec!["t1".into(), "t2".into()],
                    ae_titles: Vec::new(),
                },
                HospitalConfig {
                    id: "other".into(),
                    name: "Other".into(),
                    serves: vec!["t3".into()],
                    ae_titles: Vec::new(),
                },
            ],
            ..Config::default()
        }
    }

    fn request(state: &str, expert: Option<&str>) -> Request {
        Request {
            id: 7,
            clinic_id: "t1".into(),
            requested_by: "doc1".into(),
            requested_by_name: "doc1".into(),
            patient_id: String::new(),
            patient_name: String::new(),
            question: "?".into(),
            study_uids: vec![],
            urgency: "routine".into(),
            preferred_from_ms: None,
            preferred_to_ms: None,
            state: state.into(),
            expert: expert.map(String::from),
            expert_name: None,
            scheduled_ms: Some(1_000_000),
            room_id: None,
            cancel_reason: None,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn broadcast(hospital: Option<&str>) -> BroadcastInfo {
        BroadcastInfo {
            title: "t".into(),
            hospital_id: hospital.map(String::from),
            presenter: "exp1".into(),
            presenter_name: "exp1".into(),
            presenters: vec!["exp1".into(), "exp2".into()],
            started_unix: 0,
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn ad_hoc_rooms_belong_to_their_creator_and_invitees_only_see_them() {
        let cfg = alliance();
        let exp1 = caller(user("exp1", Role::Expert, None, Some("city")), &cfg);
        let doc1 = caller(user("doc1", Role::Clinic, Some("t1"), None), &cfg);
        let doc3 = caller(user("doc3", Role::Clinic, Some("t3"), None), &cfg);
        let admin = caller(user("root", Role::Admin, None, None), &cfg);
        let owner = Owner::Account("exp1");
        let accounts = vec!["doc1".to_string(), "exp1".to_string()];
        assert_eq!(rights(&exp1, owner, &accounts, NOW), Rights::ALL);
        assert_eq!(rights(&admin, owner, &accounts, NOW), Rights::ALL);
        let seen = rights(&doc1, owner, &accounts, NOW);
        assert!(seen.see && !seen.manage && !seen.join, "{seen:?}");
        assert!(rights(&doc3, owner, &accounts, NOW).none());
    }

    #[test]
    fn invitees_must_be_in_the_inviters_scope() {
        let cfg = alliance();
        let exp1 = caller(user("exp1", Role::Expert, None, Some("city")), &cfg);
        let owner = Owner::Account("exp1");
        let doc1 = user("doc1", Role::Clinic, Some("t1"), None);
        let doc3 = user("doc3", Role::Clinic, Some("t3"), None);
        let exp2 = user("exp2", Role::Expert, None, Some("city"));
        let exp3 = user("exp3", Role::Expert, None, Some("other"));
        let root = user("root", Role::Admin, None, None);
        assert!(may_invite(&exp1, owner, &doc1, &cfg));
        assert!(may_invite(&exp1, owner, &exp2, &cfg));
        assert!(
            !may_invite(&exp1, owner, &doc3, &cfg),
            "a clinic the hospital does not serve"
        );
        assert!(!may_invite(&exp1, owner, &exp3, &cfg), "another hospital's expert");
        assert!(!may_invite(&exp1, owner, &root, &cfg));
        let mut off = doc1.clone();
        off.disabled = true;
        assert!(!may_invite(&exp1, owner, &off, &cfg), "a disabled account");
        // A request's room: only its own clinic's doctors.
        let r = request("scheduled", Some("exp1"));
        let doc2 = user("doc2", Role::Clinic, Some("t2"), None);
        assert!(may_invite(&exp1, Owner::Request(Some(&r)), &doc1, &cfg));
        assert!(!may_invite(&exp1, Owner::Request(Some(&r)), &doc2, &cfg));
        // No hospitals configured: one implicit hospital, every clinic.
        let flat = Config {
            clinics: alliance().clinics,
            ..Config::default()
        };
        let lone = caller(user("lone", Role::Expert, None, None), &flat);
        assert!(may_invite(&lone, Owner::Account("lone"), &doc3, &flat));
        assert!(may_invite(&lone, Owner::Account("lone"), &exp3, &flat));
    }

    #[test]
    fn a_requests_room_is_managed_by_its_expert_and_joined_by_its_clinic() {
        let cfg = alliance();
        let exp1 = caller(user("exp1", Role::Expert, None, Some("city")), &cfg);
        let exp2 = caller(user("exp2", Role::Expert, None, Some("city")), &cfg);
        let doc1 = caller(user("doc1", Role::Clinic, Some("t1"), None), &cfg);
        let doc2 = caller(user("doc2", Role::Clinic, Some("t2"), None), &cfg);
        let r = request("scheduled", Some("exp1"));
        let o = Owner::Request(Some(&r));
        assert_eq!(rights(&exp1, o, &[], NOW), Rights::ALL);
        assert_eq!(
            rights(&doc1, o, &[], NOW),
            Rights {
                see: true,
                join: true,
                manage: false
            }
        );
        assert!(rights(&exp2, o, &[], NOW).none());
        assert!(rights(&doc2, o, &[], NOW).none());
        // A colleague the expert invited sees it.
        assert!(rights(&exp2, o, &["exp2".into()], NOW).see);
        // Cancelled or finished: nobody joins or invites any more.
        for state in ["cancelled", "done"] {
            let r = request(state, Some("exp1"));
            let o = Owner::Request(Some(&r));
            let e = rights(&exp1, o, &[], NOW);
            assert!(e.see && !e.join && !e.manage, "{state}: {e:?}");
            assert!(!rights(&doc1, o, &[], NOW).join);
        }
        assert!(rights(&exp1, Owner::Request(None), &[], NOW).none());
    }

    #[test]
    fn only_named_presenters_present_and_only_the_starter_ends_a_broadcast() {
        let cfg = alliance();
        let b = broadcast(Some("city"));
        let exp1 = user("exp1", Role::Expert, None, Some("city"));
        let exp2 = user("exp2", Role::Expert, None, Some("city"));
        let exp4 = user("exp4", Role::Expert, None, Some("city"));
        let doc1 = user("doc1", Role::Clinic, Some("t1"), None);
        let doc3 = user("doc3", Role::Clinic, Some("t3"), None);
        let exp3 = user("exp3", Role::Expert, None, Some("other"));
        let owner = RoomOwner::Broadcast(b.clone());
        assert_eq!(sfu_role(&exp1, &owner), SfuRole::Expert);
        assert_eq!(sfu_role(&exp2, &owner), SfuRole::Expert);
        assert_eq!(
            sfu_role(&exp4, &owner),
            SfuRole::Clinic,
            "a colleague not named watches"
        );
        assert_eq!(sfu_role(&doc1, &owner), SfuRole::Clinic);
        for (u, sees) in [
            (&exp1, true),
            (&exp4, true),
            (&doc1, true),
            (&doc3, false),
            (&exp3, false),
        ] {
            assert_eq!(sees_broadcast(u, &b, &cfg), sees, "{}", u.username);
        }
        let o = Owner::Broadcast(&b);
        assert_eq!(rights(&caller(exp1, &cfg), o, &[], NOW), Rights::ALL);
        let co = rights(&caller(exp2, &cfg), o, &[], NOW);
        assert!(co.see && co.join && !co.manage, "{co:?}");
        // A viewer (even one holding an invitation) cannot touch the room.
        assert!(rights(&caller(doc1, &cfg), o, &["doc1".into()], NOW).none());
        assert!(rights(&caller(exp4, &cfg), o, &[], NOW).none());
    }

    #[test]
    fn with_no_hospital_configured_one_implicit_hospital_serves_every_clinic() {
        let flat = Config {
            clinics: alliance().clinics,
            ..Config::default()
        };
        let lone = caller(user("lone", Role::Expert, None, None), &flat);
        assert_eq!(broadcast_hospital(&lone, &flat), Ok(None));
        let b = broadcast(None);
        assert!(sees_broadcast(&user("doc3", Role::Clinic, Some("t3"), None), &b, &flat));
        assert!(sees_broadcast(&user("any", Role::Expert, None, None), &b, &flat));
        // Hospitals configured: an expert needs one of them.
        let cfg = alliance();
        assert!(broadcast_hospital(&caller(user("x", Role::Expert, None, None), &cfg), &cfg).is_err());
        assert!(broadcast_hospital(&caller(user("x", Role::Expert, None, Some("gone")), &cfg), &cfg).is_err());
        assert_eq!(
            broadcast_hospital(&caller(user("x", Role::Expert, None, Some("city")), &cfg), &cfg),
            Ok(Some("city".into()))
        );
        // ... and an implicit-hospital broadcast is nobody's audience then.
        assert!(!sees_broadcast(&user("doc1", Role::Clinic, Some("t1"), None), &b, &cfg));
    }
}
