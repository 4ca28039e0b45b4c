//! Reading worklist states and claims, as a pure state machine.
//!
//! A complete study enters as `New`. An expert claims it with a lease; the
//! lease must be renewed while reading (the viewer does so in the
//! background) and an abandoned claim returns the study to `New` when the
//! lease expires, so a study is never stuck behind a closed laptop. Only the
//! claim holder may report; a signed report moves the study to `Reported`,
//! and delivery to the clinic to `Delivered`. An expert may return a study
//! for more images, and the clinic or an admin may cancel it. Every accepted
//! transition yields a `Transition` record (who, when, from, to) for the
//! audit trail; refused ones yield a `WorklistError` saying why.
//!
//! A signed report may later be amended by its author (the study goes back
//! to `Reported` until the amendment is delivered); the clinic, an admin or
//! the relay may change the reading priority while the study waits to be
//! read; a study that completes again after being returned is reopened
//! (`on_completion`).
//!
//! `store::worklist` is the only code that reads and writes the worklist
//! tables: it reads the row inside the caller's transaction, asks these rules,
//! and writes the new state with one transition row, so of two experts racing
//! for one study exactly one wins; this module decides what is allowed, the
//! database decides who was first.

use std::time::Duration;

/// Who acts on the worklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    Expert(&'a str),
    ClinicDoctor(&'a str),
    Admin(&'a str),
    /// The gateway itself (lease expiry, delivery acknowledgements).
    System,
}

impl Actor<'_> {
    pub fn name(&self) -> &str {
        match self {
            Actor::Expert(n) | Actor::ClinicDoctor(n) | Actor::Admin(n) => n,
            Actor::System => "system",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    New,
    Claimed { by: String, lease_until_ms: i64 },
    Reported { by: String },
    Delivered,
    Returned { reason: String },
    Cancelled,
}

impl State {
    /// The name stored in the `worklist.state` column.
    pub fn name(&self) -> &'static str {
        match self {
            State::New => "new",
            State::Claimed { .. } => "claimed",
            State::Reported { .. } => "reported",
            State::Delivered => "delivered",
            State::Returned { .. } => "returned",
            State::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Claim {
        lease: Duration,
    },
    Renew {
        lease: Duration,
    },
    Release,
    /// The report was signed.
    Report,
    /// The clinic received the report.
    Deliver,
    ReturnForMoreImages {
        reason: String,
    },
    /// New images arrived for a returned study: it is read again.
    Reopen,
    Cancel,
    /// Periodic sweep: an expired lease frees the study.
    Expire,
    /// The signed report was amended (a new signed version): the study is
    /// `Reported` again until the amendment reaches the clinic. Only the
    /// author of the last signed report (`signed_by`, from the reports
    /// table) may amend it.
    Amend {
        signed_by: String,
    },
    /// The reading priority changes from `current` (the stored one) to
    /// `wanted`; the clinical question travels with it. Only while the
    /// study waits to be read or is being read.
    SetPriority {
        current: Priority,
        wanted: Priority,
    },
}

/// Reading priority, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Stat,
    Urgent,
    Routine,
}

impl Priority {
    /// Parses the stored / API name.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "stat" => Some(Priority::Stat),
            "urgent" => Some(Priority::Urgent),
            "routine" => Some(Priority::Routine),
            _ => None,
        }
    }

    /// The name stored in `worklist.priority` and used by the API.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Stat => "stat",
            Priority::Urgent => "urgent",
            Priority::Routine => "routine",
        }
    }

    /// `worklist.priority_rank`: the queue sorts on it (0 first).
    pub fn rank(self) -> i64 {
        match self {
            Priority::Stat => 0,
            Priority::Urgent => 1,
            Priority::Routine => 2,
        }
    }

    /// The priority of a stored rank; unknown ranks read as routine.
    pub fn from_rank(rank: i64) -> Priority {
        match rank {
            0 => Priority::Stat,
            1 => Priority::Urgent,
            _ => Priority::Routine,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorklistError {
    #[error("only experts can claim studies")]
    NotAnExpert,
    #[error("the study is being read by {0}")]
    ClaimedByOther(String),
    #[error("claim the study first")]
    NotClaimed,
    #[error("the claim expired; claim the study again")]
    LeaseExpired,
    #[error("a study that is {0} cannot be {1}")]
    Invalid(&'static str, &'static str),
    #[error("not allowed for this role")]
    Forbidden,
    #[error("lease must be between 1 minute and 4 hours")]
    BadLease,
    #[error("only the author of the signed report can amend it")]
    NotAuthor,
    #[error("clinics can raise the priority, not lower it")]
    PriorityLower,
    #[error("a study that is {0} has no reading priority")]
    NoPriority(&'static str),
}

/// A recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: State,
    pub by: String,
    pub at_ms: i64,
}

const MIN_LEASE: Duration = Duration::from_secs(60);
const MAX_LEASE: Duration = Duration::from_secs(4 * 3600);

fn lease_end(now_ms: i64, lease: Duration) -> Result<i64, WorklistError> {
    if lease < MIN_LEASE || lease > MAX_LEASE {
        return Err(WorklistError::BadLease);
    }
    Ok(now_ms.saturating_add(lease.as_millis() as i64))
}

fn verb(a: &Action) -> &'static str {
    match a {
        Action::Claim { .. } => "claimed",
        Action::Renew { .. } => "renewed",
        Action::Release => "released",
        Action::Report => "reported",
        Action::Deliver => "delivered",
        Action::ReturnForMoreImages { .. } => "returned",
        Action::Reopen => "reopened",
        Action::Cancel => "cancelled",
        Action::Expire => "expired",
        Action::Amend { .. } => "amended",
        Action::SetPriority { .. } => "reprioritised",
    }
}

/// Decides one transition. `now_ms` is passed in (ms since the Unix epoch,
/// the unit of the index's timestamps).
pub fn apply(state: &State, action: &Action, actor: Actor<'_>, now_ms: i64) -> Result<Transition, WorklistError> {
    let from = state.name();
    let invalid = || WorklistError::Invalid(from, verb(action));
    let holder_ok = |by: &str, lease_until_ms: i64| -> Result<(), WorklistError> {
        match actor {
            Actor::Expert(n) if n == by => {
                if now_ms >= lease_until_ms {
                    Err(WorklistError::LeaseExpired)
                } else {
                    Ok(())
                }
            }
            Actor::Expert(_) | Actor::Admin(_) | Actor::ClinicDoctor(_) | Actor::System => {
                Err(WorklistError::ClaimedByOther(by.to_string()))
            }
        }
    };
    let to = match (state, action) {
        (State::New, Action::Claim { lease }) => match actor {
            Actor::Expert(n) => State::Claimed {
                by: n.to_string(),
                lease_until_ms: lease_end(now_ms, *lease)?,
            },
            _ => return Err(WorklistError::NotAnExpert),
        },
        // An expired claim can be taken over directly by another expert.
        (State::Claimed { by, lease_until_ms }, Action::Claim { lease }) => match actor {
            Actor::Expert(n) if n == by || now_ms >= *lease_until_ms => State::Claimed {
                by: n.to_string(),
                lease_until_ms: lease_end(now_ms, *lease)?,
            },
            Actor::Expert(_) => return Err(WorklistError::ClaimedByOther(by.clone())),
            _ => return Err(WorklistError::NotAnExpert),
        },
        (State::Claimed { by, lease_until_ms }, Action::Renew { lease }) => {
            holder_ok(by, *lease_until_ms)?;
            State::Claimed {
                by: by.clone(),
                lease_until_ms: lease_end(now_ms, *lease)?,
            }
        }
        (State::Claimed { by, lease_until_ms }, Action::Release) => {
            if !matches!(actor, Actor::Admin(_)) {
                holder_ok(by, *lease_until_ms)?;
            }
            State::New
        }
        (State::Claimed { by, lease_until_ms }, Action::Report) => {
            holder_ok(by, *lease_until_ms)?;
            State::Reported { by: by.clone() }
        }
        (State::Claimed { by, lease_until_ms }, Action::ReturnForMoreImages { reason }) => {
            holder_ok(by, *lease_until_ms)?;
            State::Returned { reason: reason.clone() }
        }
        (State::Claimed { lease_until_ms, .. }, Action::Expire) => {
            if actor != Actor::System {
                return Err(WorklistError::Forbidden);
            }
            if now_ms < *lease_until_ms {
                return Err(invalid());
            }
            State::New
        }
        (State::New | State::Reported { .. }, Action::Report) => return Err(WorklistError::NotClaimed),
        (State::Reported { .. }, Action::Deliver) => match actor {
            Actor::System | Actor::Admin(_) => State::Delivered,
            _ => return Err(WorklistError::Forbidden),
        },
        (State::Returned { .. }, Action::Reopen) => match actor {
            Actor::System | Actor::ClinicDoctor(_) | Actor::Admin(_) => State::New,
            _ => return Err(WorklistError::Forbidden),
        },
        (State::New | State::Claimed { .. } | State::Returned { .. }, Action::Cancel) => match actor {
            Actor::ClinicDoctor(_) | Actor::Admin(_) => State::Cancelled,
            _ => return Err(WorklistError::Forbidden),
        },
        (State::Reported { .. } | State::Delivered, Action::Amend { signed_by }) => match actor {
            Actor::Expert(n) if n == signed_by => State::Reported { by: n.to_string() },
            Actor::Expert(_) => return Err(WorklistError::NotAuthor),
            _ => return Err(WorklistError::Forbidden),
        },
        (State::New | State::Claimed { .. } | State::Returned { .. }, Action::SetPriority { current, wanted }) => {
            match actor {
                // An admin sets any priority; the clinic (and the relay,
                // carrying the clinic's choice from the edge) only raises it,
                // so a re-sent study never undoes the hub's triage.
                Actor::Admin(_) => {}
                Actor::ClinicDoctor(_) | Actor::System if wanted <= current => {}
                Actor::ClinicDoctor(_) | Actor::System => return Err(WorklistError::PriorityLower),
                Actor::Expert(_) => return Err(WorklistError::Forbidden),
            }
            state.clone()
        }
        (_, Action::SetPriority { .. }) => return Err(WorklistError::NoPriority(from)),
        _ => return Err(invalid()),
    };
    Ok(Transition {
        from,
        to,
        by: actor.name().to_string(),
        at_ms: now_ms,
    })
}

/// What a study completing (again) does to its worklist row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// First completion: the study enters the worklist as `New`.
    Enqueue,
    /// It had been returned for more images and they arrived: read again.
    Reopen(Transition),
    /// Already on the worklist in another state: only its completion count
    /// and modality list change (late images of a study being read or
    /// already reported do not send it back).
    Keep,
}

/// Decides what a completion does; `existing` is the stored state, if the
/// study has a worklist row. `now_ms` is passed in.
pub fn on_completion(existing: Option<&State>, now_ms: i64) -> Completion {
    match existing {
        None => Completion::Enqueue,
        Some(s @ State::Returned { .. }) => match apply(s, &Action::Reopen, Actor::System, now_ms) {
            Ok(t) => Completion::Reopen(t),
            Err(_) => Completion::Keep,
        },
        Some(_) => Completion::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const T0: i64 = 1_800_000_000_000;

    fn claimed(by: &str, until: i64) -> State {
        State::Claimed {
            by: by.into(),
            lease_until_ms: until,
        }
    }

    #[test]
    fn an_expert_claims_reads_and_reports() {
        let t = apply(&State::New, &Action::Claim { lease: 10 * MIN }, Actor::Expert("li"), T0).unwrap();
        assert_eq!(t.to, claimed("li", T0 + 600_000));
        assert_eq!((t.from, t.by.as_str(), t.at_ms), ("new", "li", T0));
        let t = apply(
            &t.to,
            &Action::Renew { lease: 10 * MIN },
            Actor::Expert("li"),
            T0 + 500_000,
        )
        .unwrap();
        assert_eq!(t.to, claimed("li", T0 + 1_100_000));
        let t = apply(&t.to, &Action::Report, Actor::Expert("li"), T0 + 900_000).unwrap();
        assert_eq!(t.to, State::Reported { by: "li".into() });
        let t = apply(&t.to, &Action::Deliver, Actor::System, T0 + 901_000).unwrap();
        assert_eq!(t.to, State::Delivered);
        assert_eq!(
            apply(&t.to, &Action::Claim { lease: MIN }, Actor::Expert("li"), T0),
            Err(WorklistError::Invalid("delivered", "claimed"))
        );
    }

    #[test]
    fn nobody_else_can_act_on_a_live_claim() {
        let s = claimed("li", T0 + 60_000);
        for a in [
            Action::Claim { lease: MIN },
            Action::Report,
            Action::Renew { lease: MIN },
        ] {
            assert_eq!(
                apply(&s, &a, Actor::Expert("wang"), T0),
                Err(WorklistError::ClaimedByOther("li".into())),
                "{a:?}"
            );
        }
        assert_eq!(
            apply(
                &State::New,
                &Action::Claim { lease: MIN },
                Actor::ClinicDoctor("zhao"),
                T0
            ),
            Err(WorklistError::NotAnExpert)
        );
        assert_eq!(
            apply(&State::New, &Action::Claim { lease: MIN }, Actor::Admin("root"), T0),
            Err(WorklistError::NotAnExpert)
        );
        assert_eq!(
            apply(&State::New, &Action::Report, Actor::Expert("li"), T0),
            Err(WorklistError::NotClaimed)
        );
    }

    #[test]
    fn an_abandoned_claim_expires_back_to_new_or_is_taken_over() {
        let s = claimed("li", T0 + 60_000);
        // Not yet expired.
        assert!(apply(&s, &Action::Expire, Actor::System, T0 + 59_999).is_err());
        assert_eq!(
            apply(&s, &Action::Expire, Actor::Expert("li"), T0 + 70_000),
            Err(WorklistError::Forbidden)
        );
        assert_eq!(
            apply(&s, &Action::Expire, Actor::System, T0 + 60_000).unwrap().to,
            State::New
        );
        // The holder cannot report on an expired claim...
        assert_eq!(
            apply(&s, &Action::Report, Actor::Expert("li"), T0 + 60_000),
            Err(WorklistError::LeaseExpired)
        );
        // ...and another expert can take it over.
        let t = apply(&s, &Action::Claim { lease: MIN }, Actor::Expert("wang"), T0 + 60_000).unwrap();
        assert_eq!(t.to, claimed("wang", T0 + 120_000));
    }

    #[test]
    fn returns_cancels_and_bad_leases() {
        let s = claimed("li", T0 + 60_000);
        let t = apply(
            &s,
            &Action::ReturnForMoreImages {
                reason: "need lateral view".into(),
            },
            Actor::Expert("li"),
            T0,
        )
        .unwrap();
        assert_eq!(t.to.name(), "returned");
        assert_eq!(
            apply(&t.to, &Action::Reopen, Actor::Expert("li"), T0),
            Err(WorklistError::Forbidden)
        );
        assert_eq!(apply(&t.to, &Action::Reopen, Actor::System, T0).unwrap().to, State::New);
        assert_eq!(
            apply(&State::New, &Action::Cancel, Actor::ClinicDoctor("zhao"), T0)
                .unwrap()
                .to,
            State::Cancelled
        );
        assert_eq!(
            apply(&State::New, &Action::Cancel, Actor::Expert("li"), T0),
            Err(WorklistError::Forbidden)
        );
        assert_eq!(
            apply(
                &State::New,
                &Action::Claim {
                    lease: Duration::from_secs(5)
                },
                Actor::Expert("li"),
                T0
            ),
            Err(WorklistError::BadLease)
        );
        assert_eq!(
            apply(
                &State::New,
                &Action::Claim {
                    lease: Duration::from_secs(5 * 3600)
                },
                Actor::Expert("li"),
                T0
            ),
            Err(WorklistError::BadLease)
        );
        // An admin may free a claim; the holder may release it; others may not.
        assert_eq!(
            apply(&s, &Action::Release, Actor::Admin("root"), T0).unwrap().to,
            State::New
        );
        assert_eq!(
            apply(&s, &Action::Release, Actor::Expert("li"), T0).unwrap().to,
            State::New
        );
        assert!(apply(&s, &Action::Release, Actor::Expert("wang"), T0).is_err());
        assert_eq!(
            apply(
                &State::Reported { by: "li".into() },
                &Action::Deliver,
                Actor::Expert("li"),
                T0
            ),
            Err(WorklistError::Forbidden)
        );
    }

    fn amend(by: &str) -> Action {
        Action::Amend { signed_by: by.into() }
    }

    #[test]
    fn only_the_author_amends_a_reported_or_delivered_study() {
        let reported = State::Reported { by: "li".into() };
        for s in [&reported, &State::Delivered] {
            let t = apply(s, &amend("li"), Actor::Expert("li"), T0).unwrap();
            assert_eq!(t.to, State::Reported { by: "li".into() }, "{s:?}");
            assert_eq!((t.from, t.by.as_str(), t.at_ms), (s.name(), "li", T0));
            assert_eq!(
                apply(s, &amend("li"), Actor::Expert("wang"), T0),
                Err(WorklistError::NotAuthor)
            );
            for who in [Actor::Admin("root"), Actor::ClinicDoctor("zhao"), Actor::System] {
                assert_eq!(
                    apply(s, &amend("li"), who, T0),
                    Err(WorklistError::Forbidden),
                    "{who:?}"
                );
            }
        }
        // Nothing signed yet, or no longer readable: not an amendment.
        for s in [
            State::New,
            claimed("li", T0 + 60_000),
            State::Returned { reason: "x".into() },
            State::Cancelled,
        ] {
            assert_eq!(
                apply(&s, &amend("li"), Actor::Expert("li"), T0),
                Err(WorklistError::Invalid(s.name(), "amended")),
                "{s:?}"
            );
        }
        // The amendment is delivered again like the first report.
        let t = apply(&reported, &amend("li"), Actor::Expert("li"), T0).unwrap();
        assert_eq!(
            apply(&t.to, &Action::Deliver, Actor::System, T0).unwrap().to,
            State::Delivered
        );
    }

    fn prio(current: Priority, wanted: Priority) -> Action {
        Action::SetPriority { current, wanted }
    }

    #[test]
    fn clinics_and_the_relay_raise_priority_admins_set_it_experts_do_not() {
        use Priority::*;
        let waiting = [
            State::New,
            claimed("li", T0 + 60_000),
            State::Returned { reason: "x".into() },
        ];
        for s in &waiting {
            for who in [Actor::ClinicDoctor("zhao"), Actor::System, Actor::Admin("root")] {
                let t = apply(s, &prio(Routine, Stat), who, T0).unwrap();
                // The state itself does not change; the transition records who and when.
                assert_eq!((&t.to, t.from, t.by.as_str(), t.at_ms), (s, s.name(), who.name(), T0));
                assert!(apply(s, &prio(Urgent, Urgent), who, T0).is_ok(), "{who:?} same");
            }
            for who in [Actor::ClinicDoctor("zhao"), Actor::System] {
                assert_eq!(
                    apply(s, &prio(Stat, Routine), who, T0),
                    Err(WorklistError::PriorityLower),
                    "{who:?}"
                );
            }
            assert_eq!(apply(s, &prio(Stat, Routine), Actor::Admin("root"), T0).unwrap().to, *s);
            assert_eq!(
                apply(s, &prio(Routine, Stat), Actor::Expert("li"), T0),
                Err(WorklistError::Forbidden)
            );
        }
        // Read, delivered or cancelled: no reading priority any more, for anyone.
        for s in [State::Reported { by: "li".into() }, State::Delivered, State::Cancelled] {
            for who in [Actor::ClinicDoctor("zhao"), Actor::System, Actor::Admin("root")] {
                assert_eq!(
                    apply(&s, &prio(Routine, Stat), who, T0),
                    Err(WorklistError::NoPriority(s.name())),
                    "{s:?} {who:?}"
                );
            }
        }
        assert_eq!(
            WorklistError::NoPriority("cancelled").to_string(),
            "a study that is cancelled has no reading priority"
        );
    }

    #[test]
    fn priorities_round_trip_their_names_and_ranks() {
        for p in [Priority::Stat, Priority::Urgent, Priority::Routine] {
            assert_eq!(Priority::parse(p.name()), Some(p));
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
        assert_eq!(Priority::parse("STAT"), None);
        assert!(Priority::Stat < Priority::Routine);
    }

    #[test]
    fn only_the_system_delivers_and_only_a_reported_study() {
        let reported = State::Reported { by: "li".into() };
        let t = apply(&reported, &Action::Deliver, Actor::System, T0).unwrap();
        assert_eq!((t.from, t.to, t.by.as_str()), ("reported", State::Delivered, "system"));
        assert_eq!(
            apply(&reported, &Action::Deliver, Actor::ClinicDoctor("zhao"), T0),
            Err(WorklistError::Forbidden)
        );
        for s in [
            State::New,
            claimed("li", T0 + 60_000),
            State::Delivered,
            State::Cancelled,
        ] {
            assert_eq!(
                apply(&s, &Action::Deliver, Actor::System, T0),
                Err(WorklistError::Invalid(s.name(), "delivered")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_completion_enqueues_reopens_a_returned_study_or_keeps_the_row() {
        assert_eq!(on_completion(None, T0), Completion::Enqueue);
        let returned = State::Returned {
            reason: "need lateral view".into(),
        };
        assert_eq!(
            on_completion(Some(&returned), T0),
            Completion::Reopen(Transition {
                from: "returned",
                to: State::New,
                by: "system".into(),
                at_ms: T0,
            })
        );
        for s in [
            State::New,
            claimed("li", T0 + 60_000),
            State::Reported { by: "li".into() },
            State::Delivered,
            State::Cancelled,
        ] {
            assert_eq!(on_completion(Some(&s), T0), Completion::Keep, "{s:?}");
        }
    }
}
