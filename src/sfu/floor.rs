//! The floor of a teaching broadcast: whether it is on air, the raised
//! hands, the text questions, and which viewers the presenter has let speak.
//!
//! A plain state machine (time passed in as Unix milliseconds, since
//! presenters see when a hand went up); the engine applies its answers
//! (messages, forwarding changes). Every list is bounded: a broadcast has
//! hundreds of viewers, and a page that floods questions must cost the
//! presenter nothing but a refusal to that page.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Longest question accepted: a few sentences, read out by the presenter.
pub const MAX_QUESTION_CHARS: usize = 500;
/// Open questions one viewer may have at once.
pub const MAX_OPEN_PER_VIEWER: usize = 3;
/// Open questions in one broadcast; beyond this the presenter cannot read
/// them anyway, and the queue message must stay well under a frame.
pub const MAX_QUESTIONS: usize = 100;
/// Hands listed to presenters (the total is sent too); the oldest first.
pub const MAX_HANDS_LISTED: usize = 100;
/// Viewers allowed to speak at the same time: each is a stream every viewer
/// receives, and a township link carries two or three audio streams easily
/// but not a panel discussion of video.
pub const MAX_SPEAKERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FloorError {
    #[error("a question needs some text")]
    EmptyQuestion,
    #[error("a question is at most {MAX_QUESTION_CHARS} characters")]
    QuestionTooLong,
    #[error("you already have {MAX_OPEN_PER_VIEWER} questions waiting; wait for an answer first")]
    TooManyOpen,
    #[error("the question queue is full ({MAX_QUESTIONS}); try again later")]
    QueueFull,
    #[error("at most {MAX_SPEAKERS} viewers may speak at once; end one first")]
    TooManySpeakers,
    #[error("no such question")]
    NoSuchQuestion,
    #[error("the broadcast is not on air")]
    NotLive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionState {
    Open,
    Answered,
    Dismissed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandInfo {
    pub id: String,
    pub name: String,
    /// When the hand went up (ms since the Unix epoch).
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionInfo {
    pub id: u64,
    pub from: String,
    pub name: String,
    pub text: String,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeakerInfo {
    pub id: String,
    pub name: String,
    pub video: bool,
}

/// What presenters see of the floor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueView {
    pub hands: Vec<HandInfo>,
    pub hands_total: usize,
    pub questions: Vec<QuestionInfo>,
    pub speakers: Vec<SpeakerInfo>,
}

#[derive(Debug, Default)]
pub struct Floor {
    live: bool,
    /// Raised hands in the order they went up.
    hands: VecDeque<HandInfo>,
    questions: VecDeque<QuestionInfo>,
    speakers: BTreeMap<String, SpeakerInfo>,
    next_question: u64,
    /// Changed since presenters were last sent the queue.
    dirty: bool,
}

impl Floor {
    pub fn new(live: bool) -> Floor {
        Floor {
            live,
            ..Floor::default()
        }
    }

    pub fn live(&self) -> bool {
        self.live
    }

    /// Returns whether the state changed. Going off air ends every
    /// viewer's turn to speak (the engine stops their streams) and lowers
    /// the hands: they were raised for the part that just ended.
    pub fn set_live(&mut self, live: bool) -> bool {
        if self.live == live {
            return false;
        }
        self.live = live;
        if !live {
            self.hands.clear();
            self.speakers.clear();
        }
        self.dirty = true;
        true
    }

    pub fn hand_raised(&self, pid: &str) -> bool {
        self.hands.iter().any(|h| h.id == pid)
    }

    /// Raises or lowers `pid`'s hand; returns whether it changed.
    pub fn set_hand(&mut self, pid: &str, name: &str, raised: bool, now_ms: u64) -> bool {
        let had = self.hand_raised(pid);
        if had == raised {
            return false;
        }
        if raised {
            self.hands.push_back(HandInfo {
                id: pid.to_string(),
                name: name.to_string(),
                since: now_ms,
            });
        } else {
            self.hands.retain(|h| h.id != pid);
        }
        self.dirty = true;
        true
    }

    /// Queues a question; returns its id and the text as stored (trimmed).
    pub fn ask(&mut self, pid: &str, name: &str, text: &str, now_ms: u64) -> Result<(u64, String), FloorError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(FloorError::EmptyQuestion);
        }
        if text.chars().count() > MAX_QUESTION_CHARS {
            return Err(FloorError::QuestionTooLong);
        }
        if self.questions.iter().filter(|q| q.from == pid).count() >= MAX_OPEN_PER_VIEWER {
            return Err(FloorError::TooManyOpen);
        }
        if self.questions.len() >= MAX_QUESTIONS {
            return Err(FloorError::QueueFull);
        }
        self.next_question += 1;
        let id = self.next_question;
        self.questions.push_back(QuestionInfo {
            id,
            from: pid.to_string(),
            name: name.to_string(),
            text: text.to_string(),
            ts: now_ms,
        });
        self.dirty = true;
        Ok((id, text.to_string()))
    }

    /// Takes a question off the queue; returns it so the asker can be told.
    pub fn close_question(&mut self, id: u64) -> Result<QuestionInfo, FloorError> {
        let at = self
            .questions
            .iter()
            .position(|q| q.id == id)
            .ok_or(FloorError::NoSuchQuestion)?;
        self.dirty = true;
        self.questions.remove(at).ok_or(FloorError::NoSuchQuestion)
    }

    /// `pid`'s open questions (for a page that reconnects).
    pub fn open_questions_of(&self, pid: &str) -> Vec<QuestionInfo> {
        self.questions.iter().filter(|q| q.from == pid).cloned().collect()
    }

    pub fn speaker(&self, pid: &str) -> Option<&SpeakerInfo> {
        self.speakers.get(pid)
    }

    /// Lets `pid` speak (its hand goes down). Re-granting changes whether
    /// video is allowed. Only on air: off air there is nobody to speak to.
    pub fn promote(&mut self, pid: &str, name: &str, video: bool) -> Result<(), FloorError> {
        if !self.live {
            return Err(FloorError::NotLive);
        }
        if !self.speakers.contains_key(pid) && self.speakers.len() >= MAX_SPEAKERS {
            return Err(FloorError::TooManySpeakers);
        }
        self.hands.retain(|h| h.id != pid);
        self.speakers.insert(
            pid.to_string(),
            SpeakerInfo {
                id: pid.to_string(),
                name: name.to_string(),
                video,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Ends `pid`'s turn; returns whether it had one.
    pub fn demote(&mut self, pid: &str) -> bool {
        let had = self.speakers.remove(pid).is_some();
        self.dirty |= had;
        had
    }

    /// A viewer's connection ended: its hand and turn go; its questions
    /// stay (the presenter may still answer them aloud, and a page that
    /// reconnects is shown them again).
    pub fn left(&mut self, pid: &str) -> bool {
        let before = self.hands.len();
        self.hands.retain(|h| h.id != pid);
        let spoke = self.speakers.remove(pid).is_some();
        let changed = self.hands.len() != before || spoke;
        self.dirty |= changed;
        changed
    }

    /// The queue for presenters, if it changed since the last call.
    pub fn take_update(&mut self) -> Option<QueueView> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.view())
    }

    pub fn view(&self) -> QueueView {
        QueueView {
            hands: self.hands.iter().take(MAX_HANDS_LISTED).cloned().collect(),
            hands_total: self.hands.len(),
            questions: self.questions.iter().cloned().collect(),
            speakers: self.speakers.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_air() -> Floor {
        let mut f = Floor::default();
        assert!(f.set_live(true));
        f.take_update();
        f
    }

    #[test]
    fn hands_keep_their_order_and_changes_are_reported_once() {
        let mut f = on_air();
        assert!(f.set_hand("a", "A", true, 10));
        assert!(f.set_hand("b", "B", true, 20));
        assert!(!f.set_hand("a", "A", true, 30), "raising twice is no change");
        let v = f.take_update().expect("changed");
        assert_eq!(v.hands.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(v.hands[0].since, 10);
        assert_eq!(f.take_update(), None);
        assert!(f.set_hand("a", "A", false, 40));
        assert_eq!(f.take_update().expect("changed").hands_total, 1);
    }

    #[test]
    fn questions_are_validated_and_bounded() {
        let mut f = on_air();
        assert_eq!(f.ask("a", "A", "   ", 1), Err(FloorError::EmptyQuestion));
        let long = "x".repeat(MAX_QUESTION_CHARS + 1);
        assert_eq!(f.ask("a", "A", &long, 1), Err(FloorError::QuestionTooLong));
        // Characters, not bytes: 500 Tibetan letters are a valid question.
        let tibetan = "ཀ".repeat(MAX_QUESTION_CHARS);
        assert!(f.ask("a", "A", &tibetan, 1).is_ok());
        let (id, text) = f.ask("a", "A", "  Is this a fracture?  ", 2).expect("queued");
        assert_eq!(text, "Is this a fracture?");
        f.ask("a", "A", "third", 3).expect("queued");
        assert_eq!(f.ask("a", "A", "fourth", 4), Err(FloorError::TooManyOpen));
        // Answering one frees a slot for the same viewer.
        let q = f.close_question(id).expect("closed");
        assert_eq!(q.from, "a");
        assert_eq!(f.close_question(id), Err(FloorError::NoSuchQuestion));
        f.ask("a", "A", "fourth", 4).expect("queued after an answer");
        for i in 0..MAX_QUESTIONS {
            let _ = f.ask(&format!("v{i}"), "V", "q", 5);
        }
        assert_eq!(f.ask("late", "L", "q", 6), Err(FloorError::QueueFull));
        assert_eq!(f.view().questions.len(), MAX_QUESTIONS);
    }

    #[test]
    fn speakers_are_few_on_air_only_and_lose_their_hand() {
        let mut f = Floor::default();
        assert_eq!(f.promote("a", "A", false), Err(FloorError::NotLive));
        f.set_live(true);
        f.set_hand("a", "A", true, 1);
        f.promote("a", "A", false).expect("promoted");
        assert!(!f.hand_raised("a"));
        assert!(f.speaker("a").is_some_and(|s| !s.video));
        f.promote("a", "A", true).expect("re-grant with video");
        assert!(f.speaker("a").is_some_and(|s| s.video));
        for p in ["b", "c"] {
            f.promote(p, p, false).expect("promoted");
        }
        assert_eq!(f.promote("d", "D", false), Err(FloorError::TooManySpeakers));
        assert!(f.demote("b"));
        assert!(!f.demote("b"));
        f.promote("d", "D", false).expect("a turn was freed");
    }

    #[test]
    fn going_off_air_ends_turns_and_hands_but_keeps_questions() {
        let mut f = on_air();
        f.set_hand("a", "A", true, 1);
        f.promote("b", "B", false).expect("promoted");
        f.ask("c", "C", "why?", 2).expect("queued");
        assert!(f.set_live(false));
        assert!(!f.set_live(false));
        let v = f.view();
        assert!(v.hands.is_empty() && v.speakers.is_empty());
        assert_eq!(v.questions.len(), 1);
    }

    #[test]
    fn a_viewer_who_leaves_takes_hand_and_turn_but_not_questions() {
        let mut f = on_air();
        f.set_hand("a", "A", true, 1);
        f.ask("a", "A", "q", 1).expect("queued");
        f.promote("b", "B", false).expect("promoted");
        f.take_update();
        assert!(f.left("a"));
        assert!(f.left("b"));
        assert!(!f.left("c"));
        let v = f.take_update().expect("changed");
        assert!(v.hands.is_empty() && v.speakers.is_empty());
        assert_eq!(f.open_questions_of("a").len(), 1);
    }
}
