//! The consultation signaling messages (web/PROTOCOL.md is the reference the
//! page and the tests are written against). Parsing is strict on types and
//! lenient on unknown fields, so an old page keeps working with a newer server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest signaling frame we accept; an SDP with a dozen m-lines is ~10 KiB.
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;
/// Largest data-channel message relayed between participants: chat and
/// viewer sync must stay small on a few-hundred-kbit/s link.
pub const MAX_DC_BYTES: usize = 4096;
pub const MAX_CHAT_CHARS: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    Pub,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Mic,
    Camera,
    Screen,
}

impl Source {
    pub fn kind(self) -> &'static str {
        match self {
            Source::Mic => "audio",
            Source::Camera | Source::Screen => "video",
        }
    }
}

/// A consultation: everyone publishes and sees everyone. A broadcast
/// (teaching): experts present, clinics watch; viewers publish nothing, are
/// not announced to each other (with hundreds of viewers each join would
/// otherwise be a message to every page), and presenters get a viewer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    #[default]
    Consultation,
    Broadcast,
}

impl RoomKind {
    /// Whether a participant of this role may publish media here.
    pub fn may_publish(self, role: Role) -> bool {
        match self {
            RoomKind::Consultation => true,
            RoomKind::Broadcast => role == Role::Expert,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Clinic,
    Expert,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default)]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_mline_index: Option<u16>,
}

/// Serialize and PartialEq serve the round-trip fuzz target (`crate::fuzz`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Join {
        token: String,
    },
    Offer {
        pc: PcKind,
        sdp: String,
        #[serde(default)]
        tracks: BTreeMap<String, Source>,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: CandidateInit,
    },
    Mute {
        source: Source,
        muted: bool,
    },
    /// Broadcasts. A viewer raises or lowers its own hand; a presenter may
    /// lower a viewer's (`participant`).
    Hand {
        raised: bool,
        #[serde(default)]
        participant: Option<String>,
    },
    /// Broadcasts, viewers: a text question for the presenters' queue.
    Question {
        text: String,
    },
    /// Broadcasts, presenters: take a question off the queue.
    QuestionDone {
        id: u64,
        #[serde(default)]
        answered: bool,
    },
    /// Broadcasts, presenters: let a viewer speak (audio; video too if asked).
    Promote {
        participant: String,
        #[serde(default)]
        video: bool,
    },
    /// Broadcasts: end a viewer's turn to speak (a presenter, or the
    /// speaker itself).
    Demote {
        participant: String,
    },
    /// Broadcasts, presenters: go on or off air.
    Live {
        live: bool,
    },
    Leave,
    Ping,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceInfo {
    pub source: Source,
    pub kind: &'static str,
    pub muted: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub sources: Vec<SourceInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomInfo {
    pub id: String,
    pub title: String,
    pub kind: RoomKind,
    /// A broadcast is on air (viewers receive the presenters); always true
    /// for a consultation.
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limits {
    pub max_participants: usize,
    pub max_tracks: usize,
    pub max_dc_bytes: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackInfo {
    pub participant: String,
    pub source: Source,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Good,
    Weak,
    AudioOnly,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        me: ParticipantInfo,
        room: RoomInfo,
        participants: Vec<ParticipantInfo>,
        limits: Limits,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        id: String,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Offer {
        pc: PcKind,
        sdp: String,
        tracks: BTreeMap<String, TrackInfo>,
    },
    Mute {
        participant: String,
        source: Source,
        muted: bool,
    },
    Link {
        state: LinkState,
        bwe_kbps: u64,
        /// Simulcast: the layer being sent (0 = lowest) of `layers`;
        /// absent when the video has a single layer.
        #[serde(skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        layers: Option<u8>,
    },
    /// Broadcast rooms, to presenters: viewers connected (at most once a
    /// second).
    Viewers {
        count: usize,
    },
    /// Broadcasts, to presenters: hands, questions and speakers, when they
    /// change (coalesced).
    Queue {
        #[serde(flatten)]
        queue: super::floor::QueueView,
    },
    /// Broadcasts, to everyone: on or off air.
    Live {
        live: bool,
    },
    /// Broadcasts, to a viewer: its own hand (a presenter may lower it).
    Hand {
        raised: bool,
    },
    /// Broadcasts, to the asker: a question was queued or taken off.
    QuestionState {
        id: u64,
        state: super::floor::QuestionState,
        text: String,
    },
    /// Broadcasts, to a viewer: it may speak (publish its microphone, and
    /// its camera if `video`), or its turn ended.
    Floor {
        granted: bool,
        video: bool,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    NotJoined,
    BadToken,
    ExpiredToken,
    RoomFull,
    RoomClosed,
    BadSdp,
    BadState,
    TooManyTracks,
    /// The action is not open to this participant (a viewer publishing).
    NotAllowed,
    /// A bound was reached (questions queued, speakers at once).
    Limit,
    Replaced,
    /// The login session the socket was opened with ended (logout, expiry,
    /// the account disabled), or there was none: join tokens work only
    /// together with a session of the account they were issued to.
    SessionEnded,
    /// Too many messages: this one was refused (see `ratelimit`); fatal
    /// (close 4029) when the page keeps sending regardless.
    RateLimited,
    /// The page did not read its messages fast enough to be sent one it
    /// must not miss; fatal (close 4008), the page reconnects.
    TooSlow,
    Internal,
}

impl ErrorCode {
    /// WebSocket close code for errors that end the session; `None` keeps it open.
    pub fn close_code(self) -> Option<u16> {
        match self {
            ErrorCode::BadToken | ErrorCode::ExpiredToken => Some(4001),
            ErrorCode::SessionEnded => Some(4002),
            ErrorCode::RoomFull => Some(4003),
            ErrorCode::RoomClosed => Some(4004),
            ErrorCode::Replaced => Some(4009),
            ErrorCode::TooSlow => Some(4008),
            // Sent alone, the refusal of one message; the code is for the
            // session it ends.
            ErrorCode::RateLimited => Some(4029),
            _ => None,
        }
    }
}

impl ServerMsg {
    /// Superseded by the next of its kind, so it may be dropped for a page
    /// that does not keep up (see `client_queue`); everything else changes
    /// the page's picture of the room and is never dropped.
    pub fn droppable(&self) -> bool {
        matches!(
            self,
            ServerMsg::Link { .. } | ServerMsg::Viewers { .. } | ServerMsg::Pong
        )
    }
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error {
        code,
        message: message.into(),
    }
}

/// Parses one text frame; the error text is safe to send back (no echo of
/// the input, which could be large or contain SDP). Memory: at most 32 × the
/// frame + 8 KiB (serde buffers a tagged message before picking its variant;
/// checked by the `signaling` fuzz target).
pub fn parse_client(text: &str) -> Result<ClientMsg, String> {
    if text.len() > MAX_SIGNAL_BYTES {
        return Err(format!("message larger than {MAX_SIGNAL_BYTES} bytes"));
    }
    serde_json::from_str(text).map_err(|e| {
        // serde's message names the field or type at fault, which is what a
        // page developer needs; cut it so it cannot grow unbounded.
        let mut m = e.to_string();
        m.truncate(200);
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        let m = parse_client(r#"{"type":"offer","pc":"pub","sdp":"v=0","tracks":{"0":"mic","1":"camera"}}"#).unwrap();
        match m {
            ClientMsg::Offer { pc, tracks, .. } => {
                assert_eq!(pc, PcKind::Pub);
                assert_eq!(tracks.get("1"), Some(&Source::Camera));
            }
            other => panic!("{other:?}"),
        }
        let c = parse_client(
            r#"{"type":"candidate","pc":"sub","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        assert!(matches!(c, ClientMsg::Candidate { pc: PcKind::Sub, .. }));
        assert!(matches!(
            parse_client(r#"{"type":"leave","extra":1}"#),
            Ok(ClientMsg::Leave)
        ));
    }

    #[test]
    fn rejects_bad_messages_with_short_errors() {
        for bad in [
            "",
            "not json",
            r#"{"type":"nope"}"#,
            r#"{"type":"offer","pc":"side","sdp":"x"}"#,
            r#"{"type":"mute","source":"camera"}"#,
            r#"[1,2,3]"#,
        ] {
            let e = parse_client(bad).unwrap_err();
            assert!(e.len() <= 200, "{e}");
        }
        let huge = format!(r#"{{"type":"join","token":"{}"}}"#, "a".repeat(MAX_SIGNAL_BYTES));
        assert!(parse_client(&huge).unwrap_err().contains("larger"));
    }

    #[test]
    fn server_messages_serialize_as_documented() {
        let m = ServerMsg::Link {
            state: LinkState::AudioOnly,
            bwe_kbps: 80,
            layer: None,
            layers: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"link","state":"audio_only","bwe_kbps":80}"#
        );
        let e = error(ErrorCode::ExpiredToken, "x");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","code":"expired_token","message":"x"}"#
        );
        assert_eq!(ErrorCode::RoomFull.close_code(), Some(4003));
        assert_eq!(ErrorCode::BadSdp.close_code(), None);
        assert_eq!(ErrorCode::TooSlow.close_code(), Some(4008));
        assert_eq!(ErrorCode::RateLimited.close_code(), Some(4029));
        assert_eq!(
            serde_json::to_string(&error(ErrorCode::RateLimited, "x")).unwrap(),
            r#"{"type":"error","code":"rate_limited","message":"x"}"#
        );
        assert!(ServerMsg::Pong.droppable());
        assert!(!ServerMsg::Live { live: true }.droppable());
    }
}
