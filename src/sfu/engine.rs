//! The SFU core: every room, participant and peer connection, driven without
//! sockets or clocks.
//!
//! Inputs are `handle_datagram`, `handle_command` and `handle_timeout`, each
//! with the current `Instant`; outputs are `poll_transmit` (datagrams to send),
//! messages on each participant's bounded signaling channel, and
//! `poll_timeout`. `io.rs` is the only place that touches the UDP socket or
//! reads the clock. This is the str0m / quinn-proto shape, and it is why the
//! hot path can be measured and tested in isolation.
//!
//! Each participant has two `rtc` (webrtc-rs sans-IO) peer connections: `pub`
//! (browser offers, carries what it publishes plus the `room` data channel)
//! and `sub` (we offer, carries what it receives). Forwarding a packet is:
//! find the up-track, and for each subscriber's down-track decide (forward or
//! drop), rewrite SSRC/PT/sequence/timestamp (munger), remember it for
//! retransmission (history), and hand it to the subscriber's connection,
//! which SRTP-protects it. The decisions themselves live in pure modules
//! (munger, history, nack, keyframe, layer) with their own tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::data_channel::RTCDataChannelId;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

mod broadcast;
mod lifecycle;

pub use lifecycle::RoomOwner;

use super::client_queue::ClientTx;
use super::demux::{PacketClass, classify, stun_local_ufrag};
use super::floor::Floor;
use super::gop::{CachedPacket, GopCache, GopConfig};
use super::history::{
    HistoryConfig, HistoryPacket, NackResponder, ResponderConfig, RetransmitHistory, RtxSequencer, rtx_payload,
};
use super::keyframe::{Codec, KeyframeConfig, KeyframeReason, KeyframeRequester, is_keyframe};
use super::layer::{
    BitrateMeter, LayerDecision, LayerSelector, LayerSwitch, LinkClassifier, PauseGate, ResumeProbe, SelectorConfig,
    Target, UpProbe,
};
use super::media::{MIME_TYPE_RED, candidates_in_every_section, new_peer_connection, random_credentials};
use super::munger::{InPacket, Munger, MungerConfig};
use super::nack::{NackConfig, NackGenerator, pack_nack_pairs};
use super::protocol::{
    ClientMsg, ErrorCode, LinkState, ParticipantInfo, PcKind, Role, RoomInfo, RoomKind, ServerMsg, Source, SourceInfo,
    TrackInfo, error,
};
use super::ratelimit::TokenBucket;
use super::vp8::Vp8Rewriter;
use super::{SfuMetrics, tokens::new_id};

/// Policy tick: NACK generation, keyframe requests, link state, timeouts.
/// 20 ms is below one frame interval at 30 fps and well below any RTT here.
const TICK: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub local_addr: SocketAddr,
    pub announce: Vec<SocketAddr>,
    pub max_rooms: usize,
    pub max_participants: usize,
    /// Participants of a broadcast room (viewers cost one fan-out copy each,
    /// not a full mesh).
    pub max_viewers: usize,
    pub max_tracks: usize,
    pub peer_timeout: Duration,
    pub history: Duration,
    pub pli_interval: Duration,
    /// A room with nobody in it (or nobody yet) this long ends.
    pub empty_room_grace: Duration,
}

pub struct Transmit {
    pub to: SocketAddr,
    pub data: BytesMut,
}

/// An invitation: who may join (the account, checked against the
/// signaling session), and as what (name and role, from that account).
#[derive(Debug, Clone)]
pub struct NewParticipant {
    pub account: String,
    pub name: String,
    pub role: Role,
}

/// An invitation as issued: its participant id and how long it can be used
/// (the room's time left).
#[derive(Debug, Clone)]
pub struct Invited {
    pub id: String,
    pub participant: NewParticipant,
    pub expires_in: Duration,
}

#[derive(Debug, Clone)]
pub struct CreatedRoom {
    pub id: String,
    pub title: String,
    pub participants: Vec<Invited>,
}

#[derive(Debug, Clone)]
pub struct RoomStatus {
    pub id: String,
    pub title: String,
    pub kind: RoomKind,
    pub owner: RoomOwner,
    pub invited: usize,
    /// The accounts holding an invitation, sorted, each once.
    pub accounts: Vec<String>,
    pub connected: Vec<ParticipantInfo>,
    /// A broadcast is on air (always true for a consultation).
    pub live: bool,
    pub expires_in: Duration,
}

/// A room in a listing: what the broadcast list shows, without walking
/// hundreds of viewers.
#[derive(Debug, Clone)]
pub struct RoomSummary {
    pub id: String,
    pub owner: RoomOwner,
    pub live: bool,
    pub connected: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SfuError {
    #[error("room limit reached ({0} rooms)")]
    TooManyRooms(usize),
    #[error("no such room")]
    NoSuchRoom,
    #[error("room is full ({0} participants)")]
    RoomFull(usize),
}

pub type JoinResult = Result<(), (ErrorCode, String)>;

pub enum Command {
    CreateRoom {
        title: String,
        kind: RoomKind,
        owner: RoomOwner,
        /// The room ends this long after creation whatever happens in it.
        ttl: Duration,
        participants: Vec<NewParticipant>,
        reply: oneshot::Sender<Result<CreatedRoom, SfuError>>,
    },
    AddParticipant {
        room: String,
        participant: NewParticipant,
        reply: oneshot::Sender<Result<Invited, SfuError>>,
    },
    /// A room's owner (cheap, unlike `RoomStatus`: a signaling session asks
    /// at every join, hundreds at once for a broadcast).
    Owner {
        room: String,
        reply: oneshot::Sender<Option<RoomOwner>>,
    },
    /// Rooms of one kind (live ones: ended rooms are gone).
    ListRooms {
        kind: RoomKind,
        reply: oneshot::Sender<Vec<RoomSummary>>,
    },
    CloseRoom {
        room: String,
        reply: oneshot::Sender<bool>,
    },
    RoomStatus {
        room: String,
        reply: oneshot::Sender<Option<RoomStatus>>,
    },
    Join {
        room: String,
        participant: String,
        /// The account of the signaling session (its invitation must match).
        account: String,
        conn: u64,
        tx: ClientTx,
        reply: oneshot::Sender<JoinResult>,
    },
    Signal {
        participant: String,
        conn: u64,
        msg: ClientMsg,
    },
    Leave {
        participant: String,
        conn: u64,
    },
}

struct Room {
    id: String,
    title: String,
    kind: RoomKind,
    owner: RoomOwner,
    /// When the room ends whatever happens in it.
    expires_at: Instant,
    /// Since when nobody is in the room (from its creation until the first
    /// join); None while someone is.
    empty_since: Option<Instant>,
    /// Broadcast rooms: the viewer count last sent to presenters.
    viewers_sent: Option<usize>,
    invited: HashMap<String, NewParticipant>,
    joined: Vec<String>,
    /// Latest shared-viewer state, replayed to late joiners.
    last_view: Option<String>,
    /// Recent chat, replayed to late joiners and to a participant who
    /// reconnects after a dropped link, so nothing said is lost to them.
    chat_log: VecDeque<String>,
    /// Broadcasts: on air, hands, questions, speakers.
    floor: Floor,
}

/// Below this much room for video (after audio), a subscriber gets audio only:
/// roughly the floor at which browsers still send a usable low-rate 320x180
/// picture. Set low on purpose: a receive estimate also sags when the
/// receiving device is busy (a clinic PC decoding three streams), and a
/// slow picture is worth more to a consultation than none.
const VIDEO_MIN_BPS: u64 = 100_000;

/// The layer a new subscriber starts on, before its link has been measured:
/// the middle one (360p of 180p/360p/720p), which a 1 Mbit/s township link
/// still carries. A good link is then probed up to the top layer; starting
/// at the top would make a weak link's first seconds one long stall.
const START_QUALITY: u8 = 1;

fn target_quality(t: Target) -> u8 {
    match t {
        Target::Layer(q) => q,
        Target::Paused => START_QUALITY,
    }
}

/// Simulcast layers kept per track (browsers send at most 3; a bound all the
/// same, as each costs a cache and a requester).
const MAX_LAYERS: usize = 4;

/// Chat lines kept per room for replay.
const CHAT_REPLAY: usize = 50;

/// Remote ICE candidates taken per peer connection. The page trickles
/// none (the SFU learns the browser's address from its checks); a browser
/// that does sends one per interface and protocol, a dozen at most. Each
/// one costs the ICE agent a pair and checks, so beyond this they are
/// refused (`limit`).
const MAX_REMOTE_CANDIDATES: usize = 32;

/// m-lines in a `pub` offer. The page sends at most mic, camera, screen and
/// the data channel, and reuses an m-line when a source comes back; each
/// m-line is a transceiver the server keeps for the connection's life.
const MAX_PUB_MLINES: usize = 16;

/// Data-channel messages one participant may send (chat, `view`, `point`):
/// a burst and a steady rate. The page sends `view` at most 5 times a
/// second and the rest at human speed; each message is copied to every
/// other participant, so beyond this they are dropped (and counted).
const DC_BURST: f64 = 50.0;
const DC_PER_SEC: f64 = 10.0;

struct Peer {
    pc: RTCPeerConnection,
    ufrag: String,
    deadline: Option<Instant>,
    state: RTCPeerConnectionState,
    /// Remote candidates taken (see MAX_REMOTE_CANDIDATES).
    candidates: usize,
}

/// (payload type, lower-case mime type, fmtp line) of one negotiated codec.
type PtInfo = (u8, String, String);

fn pt_infos(codecs: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters]) -> Vec<PtInfo> {
    codecs
        .iter()
        .map(|c| {
            (
                c.payload_type,
                c.rtp_codec.mime_type.to_ascii_lowercase(),
                c.rtp_codec.sdp_fmtp_line.clone(),
            )
        })
        .collect()
}

/// One incoming RTP stream of a published track: the whole track, or one
/// simulcast layer of it. Repair, keyframe requests, rate and the
/// late-joiner cache are all per stream, since each layer is its own
/// encoder with its own sequence space and keyframes.
struct UpLayer {
    /// Learned from the first packet (simulcast layers announce no SSRC).
    ssrc: Option<u32>,
    /// Empty without simulcast.
    rid: String,
    /// 0 = lowest resolution; the identity layer switches use.
    quality: u8,
    nack: NackGenerator,
    keyframes: KeyframeRequester,
    meter: BitrateMeter,
    /// Video only: the packets since the last keyframe, replayed to
    /// newcomers instead of asking the publisher for a keyframe.
    gop: Option<GopCache>,
}

/// A track a participant publishes.
struct UpTrack {
    receiver: RTCRtpReceiverId,
    source: Source,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    keyframe_codec: Option<Codec>,
    /// Incoming payload type -> (mime, fmtp), from the publisher's negotiation.
    pts: Vec<(u8, String, String)>,
    /// Sorted by quality; one entry for a track without simulcast.
    layers: Vec<UpLayer>,
}

/// Simulcast layer order from its RTP stream id. Browsers leave the names to
/// the page: ours (and LiveKit's) use q/h/f (quarter, half, full), others
/// r0/r1/r2, 0/1/2 or low/mid/high; an unknown name ranks after the known
/// ones in order of arrival.
fn rid_quality(rid: &str) -> Option<u8> {
    match rid.to_ascii_lowercase().as_str() {
        "q" | "l" | "low" | "r0" | "0" => Some(0),
        "h" | "m" | "mid" | "r1" | "1" => Some(1),
        "f" | "high" | "hi" | "r2" | "2" => Some(2),
        _ => None,
    }
}

impl UpTrack {
    fn layer_mut(&mut self, quality: u8) -> Option<&mut UpLayer> {
        self.layers.iter_mut().find(|l| l.quality == quality)
    }

    /// The layer a subscriber aiming at `want` should get: the best one
    /// being received at or below it, else the lowest being received (a
    /// publisher whose uplink shrank stops its top layers), else `want`.
    fn pick(&self, now: Instant, want: u8) -> u8 {
        let live: Vec<u8> = self
            .layers
            .iter()
            .filter(|l| l.meter.bps(now) > 0)
            .map(|l| l.quality)
            .collect();
        live.iter()
            .copied()
            .filter(|&q| q <= want)
            .max()
            .or_else(|| live.iter().copied().min())
            .unwrap_or(want)
    }

    fn bps(&self, now: Instant) -> u64 {
        self.layers.iter().map(|l| l.meter.bps(now)).sum()
    }

    /// A new subscriber needs a keyframe of `quality`: a cached group at or
    /// below it serves it if one can; only otherwise is the publisher asked.
    /// True if the publisher was asked.
    fn keyframe_for_newcomer(&mut self, now: Instant, quality: u8) -> bool {
        if self.kind != RtpCodecKind::Video || self.replay_layer(now, quality).is_some() {
            return false;
        }
        let i = self.layers.iter().position(|l| l.quality == quality).unwrap_or(0);
        let Some(l) = self.layers.get_mut(i) else { return false };
        l.keyframes.request(now, KeyframeReason::NewSubscriber);
        true
    }

    /// The best layer at or below `want` whose cache can be replayed now.
    fn replay_layer(&self, now: Instant, want: u8) -> Option<u8> {
        self.layers
            .iter()
            .rev()
            .filter(|l| l.quality <= want)
            .find(|l| l.gop.as_ref().is_some_and(|g| g.replay(now).is_some()))
            .map(|l| l.quality)
    }
}

/// One up-track as forwarded to one subscriber.
struct DownTrack {
    sender: RTCRtpSenderId,
    transceiver: usize,
    source: Source,
    publisher: String,
    kind: RtpCodecKind,
    ssrc: u32,
    rtx_ssrc: u32,
    /// Incoming PT -> outgoing PT, resolved after each `sub` answer.
    pt_map: Vec<(u8, u8)>,
    rtx_pt: Option<u8>,
    munger: Munger,
    history: RetransmitHistory,
    responder: NackResponder,
    rtx_seq: RtxSequencer,
    /// Video: which layer is forwarded, switching only at keyframes (so
    /// until the subscriber has a keyframe, delta frames are held back:
    /// they would only produce undecodable video).
    switch: LayerSwitch,
    /// VP8 picture-id continuity across layer switches.
    vp8: Option<Vp8Rewriter>,
    /// Nothing forwarded yet: a cached group may be replayed (never to a
    /// subscriber that already has later packets of this stream).
    fresh: bool,
    /// A keyframe was requested for this newcomer (counted once).
    asked_newcomer: bool,
}

impl DownTrack {
    /// A retransmission (RFC 4588) of outgoing packet `seq` from the history,
    /// on this downtrack's RTX stream; None if it is gone or RTX was not
    /// negotiated. Answers NACKs, and pads probes.
    fn rtx_copy(&mut self, seq: u16) -> Option<rtc::rtp::Packet> {
        let rtx_pt = self.rtx_pt?;
        let orig = self.history.get(seq)?;
        Some(rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: orig.marker,
                payload_type: rtx_pt,
                sequence_number: self.rtx_seq.next_seq(),
                timestamp: orig.timestamp,
                ssrc: self.rtx_ssrc,
                ..Default::default()
            },
            payload: rtx_payload(seq, &orig.payload),
        })
    }
}

#[derive(Default)]
struct SubNegotiation {
    outstanding: bool,
    dirty: bool,
}

struct Participant {
    id: String,
    room: String,
    name: String,
    role: Role,
    conn: u64,
    tx: ClientTx,
    pubc: Peer,
    subc: Peer,
    mid_sources: BTreeMap<String, Source>,
    muted: BTreeMap<Source, bool>,
    uptracks: HashMap<String, UpTrack>,
    down: HashMap<(String, String), DownTrack>,
    down_by_ssrc: HashMap<u32, (String, String)>,
    sub_neg: SubNegotiation,
    dc: Option<RTCDataChannelId>,
    /// What this participant may relay on the data channel.
    dc_budget: TokenBucket,
    last_rx: Instant,
    rtt: Duration,
    link_state: LinkState,
    /// The last `link` could not be sent (the page was behind).
    link_stale: bool,
    bwe_bps: Option<u64>,
    /// When the receive estimate last went down, and up (see `update_link`).
    bwe_fell_at: Option<Instant>,
    bwe_rose_at: Option<Instant>,
    audio_only: bool,
    /// The simulcast layer chosen for this subscriber's video (the same
    /// quality for every track it receives; a track with fewer layers gets
    /// its best one at or below it).
    video_target: Target,
    up_probe: UpProbe,
    /// Bytes of probe padding owed (carried between ticks).
    probe_credit: f64,
    selector: LayerSelector,
    classifier: LinkClassifier,
    probe: ResumeProbe,
    gate: PauseGate,
}

impl Participant {
    fn peer(&mut self, kind: PcKind) -> &mut Peer {
        match kind {
            PcKind::Pub => &mut self.pubc,
            PcKind::Sub => &mut self.subc,
        }
    }

    fn info(&self) -> ParticipantInfo {
        let mut sources: Vec<SourceInfo> = self
            .uptracks
            .values()
            .map(|u| SourceInfo {
                source: u.source,
                kind: u.source.kind(),
                muted: self.muted.get(&u.source).copied().unwrap_or(false),
            })
            .collect();
        sources.sort_by_key(|s| s.source);
        ParticipantInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            sources,
        }
    }

    /// Never blocks the engine. A page that cannot keep up with its queue
    /// loses only droppable messages; a control message that does not fit
    /// ends its session instead (`client_queue`), and the next tick removes
    /// it from the room.
    fn send(&self, m: ServerMsg) -> bool {
        self.tx.send(m)
    }
}

pub struct Engine {
    cfg: EngineConfig,
    rooms: HashMap<String, Room>,
    parts: HashMap<String, Participant>,
    by_ufrag: HashMap<String, (String, PcKind)>,
    by_addr: HashMap<SocketAddr, (String, PcKind)>,
    out: VecDeque<Transmit>,
    metrics: Arc<SfuMetrics>,
    next_tick: Instant,
    ticks: u64,
    /// Participants to drop at the end of the current input (failed peer
    /// connections, closed signaling channels); removing them mid-iteration
    /// would invalidate what the caller is walking.
    doomed: Vec<(String, &'static str)>,
    /// Next look for rooms that are empty past the grace or expired.
    next_room_sweep: Instant,
}

fn transport(local: SocketAddr, peer: SocketAddr) -> TransportContext {
    super::media::udp_context(local, peer)
}

fn keyframe_codec(mime: &str) -> Option<Codec> {
    let m = mime.to_ascii_lowercase();
    match m.as_str() {
        "video/vp8" => Some(Codec::Vp8),
        "video/vp9" => Some(Codec::Vp9),
        "video/h264" => Some(Codec::H264),
        _ => None,
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, metrics: Arc<SfuMetrics>, now: Instant) -> Engine {
        Engine {
            cfg,
            rooms: HashMap::new(),
            parts: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            out: VecDeque::new(),
            metrics,
            next_tick: now + TICK,
            ticks: 0,
            doomed: Vec::new(),
            next_room_sweep: now + lifecycle::SWEEP,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        for p in self.parts.values() {
            for d in [p.pubc.deadline, p.subc.deadline].into_iter().flatten() {
                t = t.min(d);
            }
        }
        t
    }

    pub fn participants(&self) -> usize {
        self.parts.len()
    }

    // ---------------------------------------------------------------- commands

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::CreateRoom {
                title,
                kind,
                owner,
                ttl,
                participants,
                reply,
            } => {
                let _ = reply.send(self.create_room(now, title, kind, owner, ttl, participants));
            }
            Command::AddParticipant {
                room,
                participant,
                reply,
            } => {
                // Invitations outnumber seats (people rejoin from another
                // device, or after a dropped link, each time with a new
                // token), but not without bound.
                let max_viewers = self.cfg.max_viewers;
                let max_participants = self.cfg.max_participants;
                let r = match self.rooms.get_mut(&room) {
                    None => Err(SfuError::NoSuchRoom),
                    Some(r)
                        if r.invited.len()
                            >= 4 * match r.kind {
                                RoomKind::Consultation => max_participants,
                                RoomKind::Broadcast => max_viewers,
                            } =>
                    {
                        Err(SfuError::RoomFull(r.invited.len()))
                    }
                    Some(r) => {
                        let id = new_id("p_");
                        r.invited.insert(id.clone(), participant.clone());
                        Ok(Invited {
                            id,
                            participant,
                            expires_in: r.expires_at.saturating_duration_since(now),
                        })
                    }
                };
                let _ = reply.send(r);
            }
            Command::Owner { room, reply } => {
                let _ = reply.send(self.rooms.get(&room).map(|r| r.owner.clone()));
            }
            Command::ListRooms { kind, reply } => {
                let list = self
                    .rooms
                    .values()
                    .filter(|r| r.kind == kind)
                    .map(|r| RoomSummary {
                        id: r.id.clone(),
                        owner: r.owner.clone(),
                        live: r.floor.live(),
                        connected: r.joined.len(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::CloseRoom { room, reply } => {
                let existed = self.close_room(now, &room, "the room was closed");
                let _ = reply.send(existed);
            }
            Command::RoomStatus { room, reply } => {
                let st = self.rooms.get(&room).map(|r| RoomStatus {
                    id: r.id.clone(),
                    title: r.title.clone(),
                    kind: r.kind,
                    owner: r.owner.clone(),
                    invited: r.invited.len(),
                    accounts: r
                        .invited
                        .values()
                        .map(|p| p.account.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    expires_in: r.expires_at.saturating_duration_since(now),
                    connected: r
                        .joined
                        .iter()
                        .filter_map(|p| self.parts.get(p))
                        .map(|p| p.info())
                        .collect(),
                    live: r.floor.live(),
                });
                let _ = reply.send(st);
            }
            Command::Join {
                room,
                participant,
                account,
                conn,
                tx,
                reply,
            } => {
                let r = self.join(now, &room, &participant, &account, conn, tx);
                let _ = reply.send(r);
            }
            Command::Signal { participant, conn, msg } => {
                if self.parts.get(&participant).is_some_and(|p| p.conn == conn) {
                    self.signal(now, &participant, msg);
                }
            }
            Command::Leave { participant, conn } => {
                if self.parts.get(&participant).is_some_and(|p| p.conn == conn) {
                    self.remove_participant(now, &participant, "left");
                }
            }
        }
        self.reap(now);
    }

    fn create_room(
        &mut self,
        now: Instant,
        title: String,
        kind: RoomKind,
        owner: RoomOwner,
        ttl: Duration,
        participants: Vec<NewParticipant>,
    ) -> Result<CreatedRoom, SfuError> {
        // Ended rooms are already gone (see `lifecycle`): this counts live ones.
        if self.rooms.len() >= self.cfg.max_rooms {
            return Err(SfuError::TooManyRooms(self.cfg.max_rooms));
        }
        let id = new_id("r_");
        let mut invited = HashMap::new();
        let mut out = Vec::new();
        for p in participants {
            let pid = new_id("p_");
            out.push(Invited {
                id: pid.clone(),
                participant: p.clone(),
                expires_in: ttl,
            });
            invited.insert(pid, p);
        }
        self.rooms.insert(
            id.clone(),
            Room {
                id: id.clone(),
                title: title.clone(),
                kind,
                owner,
                expires_at: now + ttl,
                empty_since: Some(now),
                viewers_sent: None,
                invited,
                joined: Vec::new(),
                last_view: None,
                chat_log: VecDeque::new(),
                // A consultation is always on air.
                floor: Floor::new(kind == RoomKind::Consultation),
            },
        );
        self.metrics.rooms_active.store(self.rooms.len() as u64, Relaxed);
        info!(room = %id, "room created");
        Ok(CreatedRoom {
            id,
            title,
            participants: out,
        })
    }

    pub fn close_room(&mut self, now: Instant, room: &str, why: &str) -> bool {
        let Some(r) = self.rooms.get(room) else {
            return false;
        };
        for pid in r.joined.clone() {
            if let Some(p) = self.parts.get(&pid) {
                p.tx.close(ErrorCode::RoomClosed, why);
            }
            self.remove_participant(now, &pid, "room closed");
        }
        self.rooms.remove(room);
        self.metrics.rooms_active.store(self.rooms.len() as u64, Relaxed);
        info!(room, "room closed");
        true
    }

    fn join(&mut self, now: Instant, room_id: &str, pid: &str, account: &str, conn: u64, tx: ClientTx) -> JoinResult {
        let Some(room) = self.rooms.get(room_id) else {
            return Err((ErrorCode::RoomClosed, "this room no longer exists".into()));
        };
        let Some(invitee) = room.invited.get(pid).cloned() else {
            return Err((ErrorCode::BadToken, "not a participant of this room".into()));
        };
        if invitee.account != account {
            return Err((ErrorCode::BadToken, "this invitation belongs to another account".into()));
        }
        if self.parts.contains_key(pid) {
            // Same person, new tab or reconnect after a network change: the
            // new connection wins, the old one is told why it was dropped.
            if let Some(old) = self.parts.get(pid) {
                old.tx
                    .close(ErrorCode::Replaced, "you joined this room from another window");
            }
            self.remove_participant(now, pid, "replaced");
        }
        let Some(room) = self.rooms.get(room_id) else {
            return Err((ErrorCode::RoomClosed, "this room no longer exists".into()));
        };
        let limit = match room.kind {
            RoomKind::Consultation => self.cfg.max_participants,
            RoomKind::Broadcast => self.cfg.max_viewers,
        };
        if room.joined.len() >= limit {
            return Err((ErrorCode::RoomFull, format!("the room is full ({limit} participants)")));
        }
        let make = |kind| -> Result<Peer, (ErrorCode, String)> {
            let (ufrag, pwd) = random_credentials();
            let pc = new_peer_connection(kind, &ufrag, &pwd, &self.cfg.announce, now)
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            Ok(Peer {
                pc,
                ufrag,
                deadline: None,
                state: RTCPeerConnectionState::New,
                candidates: 0,
            })
        };
        let pubc = make(PcKind::Pub)?;
        let subc = make(PcKind::Sub)?;
        self.by_ufrag.insert(pubc.ufrag.clone(), (pid.to_string(), PcKind::Pub));
        self.by_ufrag.insert(subc.ufrag.clone(), (pid.to_string(), PcKind::Sub));
        let p = Participant {
            id: pid.to_string(),
            room: room_id.to_string(),
            name: invitee.name,
            role: invitee.role,
            conn,
            tx,
            pubc,
            subc,
            mid_sources: BTreeMap::new(),
            muted: BTreeMap::new(),
            uptracks: HashMap::new(),
            down: HashMap::new(),
            down_by_ssrc: HashMap::new(),
            sub_neg: SubNegotiation::default(),
            dc: None,
            dc_budget: TokenBucket::new(DC_BURST, DC_PER_SEC),
            last_rx: now,
            rtt: Duration::from_millis(300),
            link_state: LinkState::Good,
            link_stale: false,
            bwe_bps: None,
            bwe_fell_at: None,
            bwe_rose_at: None,
            audio_only: false,
            video_target: Target::Paused,
            up_probe: UpProbe::default(),
            probe_credit: 0.0,
            selector: LayerSelector::new(SelectorConfig::default()),
            classifier: LinkClassifier::default(),
            probe: ResumeProbe::default(),
            gate: PauseGate::default(),
        };
        // In a broadcast, a viewer sees the presenters only, and only
        // presenters hear of a viewer.
        let kind = room.kind;
        let my_role = p.role;
        let others: Vec<ParticipantInfo> = room
            .joined
            .iter()
            .filter_map(|o| self.parts.get(o))
            .filter(|o| broadcast::announces(room, o, &p))
            .map(|o| o.info())
            .collect();
        let me = p.info();
        p.send(ServerMsg::Joined {
            me: me.clone(),
            room: RoomInfo {
                id: room.id.clone(),
                title: room.title.clone(),
                kind: room.kind,
                live: room.floor.live(),
            },
            participants: others,
            limits: super::protocol::Limits {
                max_participants: self.cfg.max_participants,
                max_tracks: self.cfg.max_tracks,
                max_dc_bytes: super::protocol::MAX_DC_BYTES,
            },
        });
        let joined = room.joined.clone();
        self.parts.insert(pid.to_string(), p);
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.joined.push(pid.to_string());
            room.empty_since = None;
            if kind.may_publish(my_role) {
                // A presenter arriving gets the current count at the next send.
                room.viewers_sent = None;
            }
        }
        if let (Some(room), Some(mp)) = (self.rooms.get(room_id), self.parts.get(pid)) {
            for o in &joined {
                if let Some(op) = self.parts.get(o)
                    && broadcast::announces(room, op, mp)
                {
                    op.send(ServerMsg::ParticipantJoined {
                        participant: me.clone(),
                    });
                }
            }
        }
        self.floor_on_join(room_id, pid);
        // Subscribe the newcomer to everything already published (that it
        // may receive: nothing of a broadcast that is off air).
        if self.subscribe_to_stage(now, room_id, pid) {
            self.renegotiate_sub(now, pid);
        }
        self.metrics.participants_active.store(self.parts.len() as u64, Relaxed);
        self.metrics.joins.fetch_add(1, Relaxed);
        info!(room = room_id, participant = pid, "participant joined");
        Ok(())
    }

    pub fn remove_participant(&mut self, now: Instant, pid: &str, why: &str) {
        let Some(mut p) = self.parts.remove(pid) else {
            return;
        };
        for peer in [&mut p.pubc, &mut p.subc] {
            let _ = peer.pc.close();
            while let Some(w) = peer.pc.poll_write() {
                self.out.push_back(Transmit {
                    to: w.transport.peer_addr,
                    data: w.message,
                });
            }
            self.by_ufrag.remove(&peer.ufrag);
        }
        self.by_addr.retain(|_, (owner, _)| owner != pid);
        let mut others = Vec::new();
        // Who heard of it, decided before the floor forgets its turn.
        let mut told = std::collections::HashSet::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.joined.retain(|x| x != pid);
            if room.joined.is_empty() {
                room.empty_since = Some(now);
            }
            others = room.joined.clone();
            for o in &others {
                if let Some(op) = self.parts.get(o)
                    && broadcast::announces(room, op, &p)
                {
                    told.insert(o.clone());
                }
            }
            room.floor.left(pid);
        }
        for o in &others {
            if let Some(op) = self.parts.get(o)
                && told.contains(o)
            {
                op.send(ServerMsg::ParticipantLeft { id: pid.to_string() });
            }
            if self.unsubscribe(o, |publisher| publisher == pid) {
                self.renegotiate_sub(now, o);
            }
        }
        self.metrics.participants_active.store(self.parts.len() as u64, Relaxed);
        self.metrics.leaves.fetch_add(1, Relaxed);
        info!(room = %p.room, participant = pid, reason = why, "participant left");
    }

    /// Drops participants marked during this input.
    fn reap(&mut self, now: Instant) {
        while let Some((pid, why)) = self.doomed.pop() {
            if let Some(p) = self.parts.get(&pid) {
                // A session already ended (too slow) keeps its first reason.
                p.tx.close(ErrorCode::Internal, format!("media connection {why}"));
            }
            self.remove_participant(now, &pid, why);
        }
    }

    // --------------------------------------------------------------- signaling

    fn signal(&mut self, now: Instant, pid: &str, msg: ClientMsg) {
        match msg {
            ClientMsg::Join { .. } => self.reply_err(pid, ErrorCode::BadState, "already joined"),
            ClientMsg::Ping => {
                if let Some(p) = self.parts.get(pid) {
                    p.send(ServerMsg::Pong);
                }
            }
            ClientMsg::Leave => self.remove_participant(now, pid, "left"),
            ClientMsg::Mute { source, muted } => {
                let Some(p) = self.parts.get_mut(pid) else { return };
                p.muted.insert(source, muted);
                // Only to those who know of it: in a broadcast, a viewer's
                // mute is news to the presenters, not to the other viewers.
                self.tell_about(
                    pid,
                    ServerMsg::Mute {
                        participant: pid.to_string(),
                        source,
                        muted,
                    },
                );
            }
            ClientMsg::Candidate { pc, candidate } => {
                let Some(p) = self.parts.get_mut(pid) else { return };
                let peer = p.peer(pc);
                if peer.candidates >= MAX_REMOTE_CANDIDATES {
                    return self.reply_err(
                        pid,
                        ErrorCode::Limit,
                        &format!("at most {MAX_REMOTE_CANDIDATES} candidates per connection"),
                    );
                }
                peer.candidates += 1;
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    ..Default::default()
                };
                // A lite agent learns the browser's address from its checks;
                // remote candidates are optional, so a bad one is only noted.
                if let Err(e) = peer.pc.add_remote_candidate(init) {
                    debug!(participant = pid, error = %e, "remote candidate ignored");
                }
            }
            ClientMsg::Offer { pc: PcKind::Sub, .. } => self.reply_err(
                pid,
                ErrorCode::BadState,
                "the server makes the offers for the sub connection",
            ),
            ClientMsg::Answer { pc: PcKind::Pub, .. } => self.reply_err(
                pid,
                ErrorCode::BadState,
                "the browser makes the offers for the pub connection",
            ),
            ClientMsg::Offer {
                pc: PcKind::Pub,
                sdp,
                tracks,
            } => self.pub_offer(now, pid, sdp, tracks),
            ClientMsg::Answer { pc: PcKind::Sub, sdp } => self.sub_answer(now, pid, sdp),
            m @ (ClientMsg::Hand { .. }
            | ClientMsg::Question { .. }
            | ClientMsg::QuestionDone { .. }
            | ClientMsg::Promote { .. }
            | ClientMsg::Demote { .. }
            | ClientMsg::Live { .. }) => {
                self.floor_signal(now, pid, m);
                return;
            }
        }
        self.process(now, pid, PcKind::Pub);
        self.process(now, pid, PcKind::Sub);
    }

    fn reply_err(&self, pid: &str, code: ErrorCode, msg: &str) {
        self.metrics.signal_errors.fetch_add(1, Relaxed);
        if let Some(p) = self.parts.get(pid) {
            p.send(error(code, msg));
        }
    }

    /// Sends `m`, news about `pid`, to everyone in its room who hears of
    /// it (`broadcast::announces`: in a broadcast, nothing about a viewer
    /// reaches another viewer unless one of them is on stage).
    fn tell_about(&self, pid: &str, m: ServerMsg) {
        let Some(p) = self.parts.get(pid) else { return };
        let Some(r) = self.rooms.get(&p.room) else { return };
        for o in &r.joined {
            if o != pid
                && let Some(op) = self.parts.get(o)
                && broadcast::announces(r, op, p)
            {
                op.send(m.clone());
            }
        }
    }

    fn pub_offer(&mut self, now: Instant, pid: &str, sdp: String, tracks: BTreeMap<String, Source>) {
        let max_tracks = self.cfg.max_tracks;
        let Some(p) = self.parts.get_mut(pid) else { return };
        let sending = sdp.matches("\r\na=sendonly").count() + sdp.matches("\r\na=sendrecv").count();
        if let Some(r) = self.rooms.get(&p.room)
            && !broadcast::is_presenter(r, p)
        {
            let speaker = r.floor.speaker(pid).is_some();
            if !speaker && (!tracks.is_empty() || sending > 0) {
                return self.reply_err(
                    pid,
                    ErrorCode::NotAllowed,
                    "viewers of a broadcast receive only until a presenter lets them speak",
                );
            }
            if tracks.values().any(|s| !broadcast::may_send(r, p, *s)) || sending > tracks.len() {
                return self.reply_err(
                    pid,
                    ErrorCode::NotAllowed,
                    "you may send only what the presenter allowed (your microphone, or camera if granted)",
                );
            }
        }
        let mlines = sdp.matches("\nm=").count() + usize::from(sdp.starts_with("m="));
        if mlines > MAX_PUB_MLINES {
            return self.reply_err(
                pid,
                ErrorCode::TooManyTracks,
                &format!("at most {MAX_PUB_MLINES} m-lines in an offer"),
            );
        }
        if tracks.len() > max_tracks || sending > max_tracks {
            return self.reply_err(
                pid,
                ErrorCode::TooManyTracks,
                &format!("at most {max_tracks} published tracks per participant"),
            );
        }
        let desc = match RTCSessionDescription::offer(sdp) {
            Ok(d) => d,
            Err(e) => return self.reply_err(pid, ErrorCode::BadSdp, &format!("offer refused: {e}")),
        };
        if let Err(e) = p.pubc.pc.set_remote_description(now, desc) {
            return self.reply_err(pid, ErrorCode::BadSdp, &format!("offer refused: {e}"));
        }
        p.mid_sources = tracks;
        let answer = match p.pubc.pc.create_answer(None) {
            Ok(a) => a,
            Err(e) => return self.reply_err(pid, ErrorCode::BadSdp, &format!("cannot answer this offer: {e}")),
        };
        if let Err(e) = p.pubc.pc.set_local_description(now, answer) {
            return self.reply_err(pid, ErrorCode::BadSdp, &format!("cannot answer this offer: {e}"));
        }
        let sdp = p.pubc.pc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
        p.send(ServerMsg::Answer {
            pc: PcKind::Pub,
            sdp: candidates_in_every_section(&sdp),
        });
        // Sources can be re-labelled by a renegotiation (camera <-> screen).
        let relabel: Vec<(String, Source)> = p
            .uptracks
            .iter()
            .filter_map(|(t, u)| {
                let mid = mid_of_receiver(&mut p.pubc.pc, u.receiver)?;
                let s = *p.mid_sources.get(&mid)?;
                (s != u.source).then(|| (t.clone(), s))
            })
            .collect();
        for (t, s) in relabel {
            if let Some(u) = p.uptracks.get_mut(&t) {
                u.source = s;
            }
        }
    }

    fn sub_answer(&mut self, now: Instant, pid: &str, sdp: String) {
        let Some(p) = self.parts.get_mut(pid) else { return };
        if !p.sub_neg.outstanding {
            return self.reply_err(
                pid,
                ErrorCode::BadState,
                "no offer is outstanding on the sub connection",
            );
        }
        let desc = match RTCSessionDescription::answer(sdp) {
            Ok(d) => d,
            Err(e) => return self.reply_err(pid, ErrorCode::BadSdp, &format!("answer refused: {e}")),
        };
        if let Err(e) = p.subc.pc.set_remote_description(now, desc) {
            return self.reply_err(pid, ErrorCode::BadSdp, &format!("answer refused: {e}"));
        }
        p.sub_neg.outstanding = false;
        self.resolve_payload_types(pid);
        let dirty = self.parts.get(pid).is_some_and(|p| p.sub_neg.dirty);
        if dirty {
            self.renegotiate_sub(now, pid);
        }
    }

    /// After negotiation, map each publisher PT to the PT this subscriber
    /// agreed for the same codec (browsers may pick different numbers).
    fn resolve_payload_types(&mut self, pid: &str) {
        let Some(p) = self.parts.get(pid) else { return };
        let mut pubs: HashMap<(String, String), Vec<PtInfo>> = HashMap::new();
        for (key, _) in p.down.iter() {
            if let Some(u) = self.parts.get(&key.0).and_then(|pp| pp.uptracks.get(&key.1)) {
                pubs.insert(key.clone(), u.pts.clone());
            }
        }
        let Some(p) = self.parts.get_mut(pid) else { return };
        for (key, d) in p.down.iter_mut() {
            let Some(mut sender) = p.subc.pc.rtp_sender(d.sender) else {
                continue;
            };
            let params = sender.get_parameters();
            let negotiated = pt_infos(&params.rtp_parameters.codecs);
            let Some(up_pts) = pubs.get(key) else { continue };
            d.pt_map.clear();
            for (in_pt, mime, fmtp) in up_pts {
                let exact = negotiated.iter().find(|(_, m, f)| m == mime && f == fmtp);
                let by_mime = negotiated.iter().find(|(_, m, _)| m == mime);
                if let Some((out_pt, _, _)) = exact.or(by_mime) {
                    d.pt_map.push((*in_pt, *out_pt));
                }
            }
            let main_out = d.pt_map.iter().find_map(|(_, o)| {
                negotiated
                    .iter()
                    .find(|(pt, m, _)| pt == o && !m.ends_with("/rtx") && !m.ends_with("/red"))
                    .map(|x| x.0)
            });
            d.rtx_pt = main_out.and_then(|main| {
                negotiated
                    .iter()
                    .find(|(_, m, f)| m.ends_with("/rtx") && f.split(';').any(|kv| kv.trim() == format!("apt={main}")))
                    .map(|x| x.0)
            });
        }
    }

    fn renegotiate_sub(&mut self, now: Instant, pid: &str) {
        let Some(p) = self.parts.get_mut(pid) else { return };
        if p.sub_neg.outstanding {
            p.sub_neg.dirty = true;
            return;
        }
        p.sub_neg.dirty = false;
        let offer = match p.subc.pc.create_offer(None) {
            Ok(o) => o,
            Err(e) => {
                warn!(participant = pid, error = %e, "cannot create sub offer");
                return;
            }
        };
        if let Err(e) = p.subc.pc.set_local_description(now, offer) {
            warn!(participant = pid, error = %e, "cannot apply sub offer");
            return;
        }
        let sdp = p.subc.pc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
        let mut tracks = BTreeMap::new();
        for d in p.down.values() {
            if let Some(t) = p.subc.pc.rtp_transceiver(d.transceiver)
                && let Some(mid) = t.mid().clone()
            {
                tracks.insert(
                    mid,
                    TrackInfo {
                        participant: d.publisher.clone(),
                        source: d.source,
                        kind: d.source.kind(),
                    },
                );
            }
        }
        p.sub_neg.outstanding = true;
        p.send(ServerMsg::Offer {
            pc: PcKind::Sub,
            sdp: candidates_in_every_section(&sdp),
            tracks,
        });
        self.process(now, pid, PcKind::Sub);
    }

    /// Adds a sending transceiver for `publisher`'s `track` to `sub`'s `sub`
    /// connection. Returns whether a renegotiation is needed.
    fn add_downtrack(&mut self, now: Instant, sub: &str, publisher: &str, track: &str) -> bool {
        if let (Some(sp), Some(pp)) = (self.parts.get(sub), self.parts.get(publisher))
            && self
                .rooms
                .get(&sp.room)
                .is_some_and(|r| !broadcast::receives(r, sp, pp))
        {
            return false;
        }
        let want = self
            .parts
            .get(sub)
            .map_or(START_QUALITY, |s| target_quality(s.video_target));
        let Some(u) = self.parts.get_mut(publisher).and_then(|p| p.uptracks.get_mut(track)) else {
            return false;
        };
        let (kind, source, codec) = (u.kind, u.source, u.codec.clone());
        let want = u.pick(now, want);
        let asked = u.keyframe_for_newcomer(now, want);
        let vp8 = codec.mime_type.eq_ignore_ascii_case("video/vp8");
        let history = self.cfg.history;
        let Some(s) = self.parts.get_mut(sub) else { return false };
        let key = (publisher.to_string(), track.to_string());
        if s.down.contains_key(&key) {
            return false;
        }
        if asked {
            self.metrics.keyframe_newcomer.fetch_add(1, Relaxed);
            debug!(
                subscriber = sub,
                publisher,
                ?source,
                "newcomer keyframe requested (no usable cache)"
            );
        }
        let ssrc: u32 = rand::random();
        let rtx_ssrc: u32 = rand::random();
        let video = kind == RtpCodecKind::Video;
        let mst = MediaStreamTrack::new(
            publisher.to_string(),
            format!("{publisher}-{}", track_slug(source)),
            format!("{publisher} {}", track_slug(source)),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: video.then_some(RTCRtpRtxParameters { ssrc: rtx_ssrc }),
                    ..Default::default()
                },
                active: true,
                codec: codec.clone(),
                ..Default::default()
            }],
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![publisher.to_string()],
            send_encodings: vec![],
        };
        let tid = match s.subc.pc.add_transceiver_from_track(mst, Some(init)) {
            Ok(t) => t,
            Err(e) => {
                warn!(participant = sub, error = %e, "cannot add a forwarded track");
                return false;
            }
        };
        let Some(sender) = s.subc.pc.rtp_transceiver(tid).and_then(|t| t.sender()) else {
            return false;
        };
        s.down_by_ssrc.insert(ssrc, key.clone());
        s.down.insert(
            key,
            DownTrack {
                sender,
                transceiver: tid,
                source,
                publisher: publisher.to_string(),
                kind,
                ssrc,
                rtx_ssrc,
                pt_map: Vec::new(),
                rtx_pt: None,
                munger: Munger::new(MungerConfig {
                    ssrc,
                    clock_rate: codec.clock_rate.max(1),
                    start_seq: rand::random(),
                    start_timestamp: rand::random(),
                    ..Default::default()
                }),
                history: RetransmitHistory::new(HistoryConfig {
                    window: history,
                    ..Default::default()
                }),
                responder: NackResponder::new(ResponderConfig::default()),
                rtx_seq: RtxSequencer::new(rand::random()),
                switch: {
                    let mut sw = LayerSwitch::new();
                    if video {
                        sw.set_target(Target::Layer(want));
                    }
                    sw
                },
                vp8: vp8.then(Vp8Rewriter::new),
                fresh: true,
                asked_newcomer: asked,
            },
        );
        true
    }

    // ------------------------------------------------------------------ media

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let class = classify(data);
        let mut key = self.by_addr.get(&from).cloned();
        if class == PacketClass::Stun
            && let Some(ufrag) = stun_local_ufrag(data)
            && let Some(k) = self.by_ufrag.get(ufrag)
            && key.as_ref() != Some(k)
        {
            // New address for this connection (first check, or the browser
            // moved from Wi-Fi to 4G): the ICE agent decides whether to use it.
            if let Some(old) = key.as_ref() {
                debug!(%from, old = %old.0, old_pc = ?old.1, new = %k.0, new_pc = ?k.1, "address moves to another connection");
            }
            if self.by_addr.len() < 4 * self.by_ufrag.len() + 64 {
                self.by_addr.insert(from, k.clone());
            }
            key = Some(k.clone());
        }
        let Some((pid, kind)) = key else {
            self.metrics.udp_unknown.fetch_add(1, Relaxed);
            return;
        };
        if class == PacketClass::Other {
            self.metrics.udp_unknown.fetch_add(1, Relaxed);
            return;
        }
        let local = self.cfg.local_addr;
        let Some(p) = self.parts.get_mut(&pid) else { return };
        p.last_rx = now;
        let peer = p.peer(kind);
        let r = peer.pc.handle_read(TaggedBytesMut {
            now,
            transport: transport(local, from),
            message: BytesMut::from(data),
        });
        if let Err(e) = r {
            debug!(participant = %pid, error = %e, "datagram refused by the connection");
        }
        self.process(now, &pid, kind);
        self.reap(now);
    }

    /// Drains everything a connection produced: datagrams, events, messages.
    fn process(&mut self, now: Instant, pid: &str, kind: PcKind) {
        for _ in 0..64 {
            let Some(p) = self.parts.get_mut(pid) else { return };
            let peer = p.peer(kind);
            while let Some(w) = peer.pc.poll_write() {
                self.out.push_back(Transmit {
                    to: w.transport.peer_addr,
                    data: w.message,
                });
            }
            let mut events = Vec::new();
            while let Some(e) = peer.pc.poll_event() {
                events.push(e);
            }
            let mut msgs = Vec::new();
            while let Some(m) = peer.pc.poll_read() {
                msgs.push(m);
            }
            let peer = p.peer(kind);
            peer.deadline = peer.pc.poll_timeout().map(|d| d.max(now + Duration::from_millis(1)));
            if events.is_empty() && msgs.is_empty() {
                return;
            }
            for e in events {
                self.on_event(now, pid, kind, e);
            }
            for m in msgs {
                self.on_message(now, pid, kind, m);
            }
        }
    }

    fn on_event(&mut self, now: Instant, pid: &str, kind: PcKind, e: RTCPeerConnectionEvent) {
        match e {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(st) => {
                if let Some(p) = self.parts.get_mut(pid) {
                    p.peer(kind).state = st;
                }
                debug!(participant = pid, pc = ?kind, state = %st, "connection state");
                if st == RTCPeerConnectionState::Failed {
                    self.doomed.push((pid.to_string(), "failed (ICE/DTLS timeout)"));
                }
                if st == RTCPeerConnectionState::Connected && kind == PcKind::Sub {
                    // Fresh subscriber: every video it receives needs a keyframe.
                    let keys: Vec<(String, String, u8)> = self
                        .parts
                        .get(pid)
                        .map(|p| {
                            p.down
                                .iter()
                                .map(|(k, d)| (k.0.clone(), k.1.clone(), target_quality(d.switch.target())))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (publisher, t, q) in keys {
                        if let Some(u) = self.parts.get_mut(&publisher).and_then(|pp| pp.uptracks.get_mut(&t)) {
                            // Counted by the tick, once per downtrack.
                            u.keyframe_for_newcomer(now, q);
                        }
                    }
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) if kind == PcKind::Pub => {
                self.on_track_open(now, pid, init.receiver_id, init.track_id, init.ssrc, init.rid);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) if kind == PcKind::Pub => {
                self.on_track_close(now, pid, &track_id);
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) if kind == PcKind::Pub => {
                let Some(p) = self.parts.get_mut(pid) else { return };
                p.dc = Some(id);
                let (chat, view) = self
                    .rooms
                    .get(&p.room)
                    .map(|r| (r.chat_log.iter().cloned().collect::<Vec<_>>(), r.last_view.clone()))
                    .unwrap_or_default();
                if let Some(mut dc) = p.pubc.pc.data_channel(id) {
                    for line in chat.into_iter().chain(view) {
                        let _ = dc.send_text(now, line);
                    }
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(_)) if kind == PcKind::Pub => {
                if let Some(p) = self.parts.get_mut(pid) {
                    p.dc = None;
                }
            }
            _ => {}
        }
    }

    fn on_track_open(
        &mut self,
        now: Instant,
        pid: &str,
        receiver: RTCRtpReceiverId,
        track_id: String,
        ssrc: u32,
        rid: Option<String>,
    ) {
        let pli_interval = self.cfg.pli_interval;
        let history = self.cfg.history;
        let Some(p) = self.parts.get_mut(pid) else { return };
        if self.rooms.get(&p.room).is_some_and(|r| !broadcast::on_stage(r, p)) {
            // pub_offer refuses media from viewers; this catches an offer
            // that carried media without saying so.
            warn!(participant = pid, "media from a broadcast viewer ignored");
            return;
        }
        let rid = rid.unwrap_or_default();
        let new_layer = |quality: u8, kind: RtpCodecKind| UpLayer {
            ssrc: (ssrc != 0).then_some(ssrc),
            rid: rid.clone(),
            quality,
            nack: NackGenerator::new(NackConfig {
                max_age: history,
                ..Default::default()
            }),
            keyframes: KeyframeRequester::new(KeyframeConfig {
                min_interval: pli_interval,
                ..Default::default()
            }),
            meter: BitrateMeter::new(Duration::from_secs(1)),
            gop: (kind == RtpCodecKind::Video).then(|| GopCache::new(GopConfig::default())),
        };
        if let Some(u) = p.uptracks.get_mut(&track_id) {
            // Another simulcast layer of a track already published (an
            // open for a stream already bound is a repeat, not a layer).
            if u.layers
                .iter()
                .any(|l| (l.rid == rid && !rid.is_empty()) || (ssrc != 0 && l.ssrc == Some(ssrc)))
                || u.layers.len() >= MAX_LAYERS
            {
                return;
            }
            let used: Vec<u8> = u.layers.iter().map(|l| l.quality).collect();
            let quality = rid_quality(&rid)
                .filter(|q| !used.contains(q))
                .unwrap_or_else(|| (0..=u8::MAX).find(|q| !used.contains(q)).unwrap_or(u8::MAX));
            let layer = new_layer(quality, u.kind);
            u.layers.push(layer);
            u.layers.sort_by_key(|l| l.quality);
            info!(participant = pid, track = %track_id, ssrc, rid = %rid, quality, "simulcast layer published");
            return;
        }
        if p.uptracks.len() >= self.cfg.max_tracks {
            p.send(error(
                ErrorCode::TooManyTracks,
                "track ignored: too many published tracks",
            ));
            return;
        }
        let mid = mid_of_receiver(&mut p.pubc.pc, receiver);
        let Some(mut r) = p.pubc.pc.rtp_receiver(receiver) else {
            return;
        };
        let kind = r.track().kind();
        let first_ssrc = r.track().ssrcs().next();
        let track_codec = first_ssrc.and_then(|s| r.track().codec(s).cloned());
        let params = r.get_parameters();
        let codec = track_codec.or_else(|| params.rtp_parameters.codecs.first().map(|c| c.rtp_codec.clone()));
        let pts = pt_infos(&params.rtp_parameters.codecs);
        let Some(codec) = codec else {
            warn!(participant = pid, "published track without a negotiated codec ignored");
            return;
        };
        let source =
            mid.as_ref()
                .and_then(|m| p.mid_sources.get(m).copied())
                .unwrap_or(if kind == RtpCodecKind::Audio {
                    Source::Mic
                } else {
                    Source::Camera
                });
        if self
            .rooms
            .get(&p.room)
            .is_some_and(|r| !broadcast::may_send(r, p, source))
        {
            warn!(participant = pid, ?source, "a speaker's track beyond its grant ignored");
            return;
        }
        if kind == RtpCodecKind::Audio && codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_RED) {
            debug!(participant = pid, "publisher sends RED audio");
        }
        let quality = if rid.is_empty() {
            0
        } else {
            rid_quality(&rid).unwrap_or(0)
        };
        let layer = new_layer(quality, kind);
        p.uptracks.insert(
            track_id.clone(),
            UpTrack {
                receiver,
                source,
                kind,
                keyframe_codec: keyframe_codec(&codec.mime_type),
                codec,
                pts,
                layers: vec![layer],
            },
        );
        let room = p.room.clone();
        let info = p.info();
        info!(participant = pid, track = %track_id, ssrc, rid = %rid, source = ?source, "track published");
        let subs: Vec<String> = self
            .rooms
            .get(&room)
            .map(|r| r.joined.iter().filter(|x| *x != pid).cloned().collect())
            .unwrap_or_default();
        for s in subs {
            if self.add_downtrack(now, &s, pid, &track_id) {
                self.renegotiate_sub(now, &s);
            }
            if let (Some(sp), Some(pp), Some(r)) = (self.parts.get(&s), self.parts.get(pid), self.rooms.get(&room))
                && broadcast::announces(r, sp, pp)
            {
                // Refresh the publisher's source list on the others' pages.
                sp.send(ServerMsg::ParticipantJoined {
                    participant: info.clone(),
                });
            }
        }
    }

    fn on_track_close(&mut self, now: Instant, pid: &str, track_id: &str) {
        let Some(p) = self.parts.get_mut(pid) else { return };
        if p.uptracks.remove(track_id).is_none() {
            return;
        }
        let room = p.room.clone();
        let key = (pid.to_string(), track_id.to_string());
        let subs: Vec<String> = self.rooms.get(&room).map(|r| r.joined.clone()).unwrap_or_default();
        for s in subs {
            let mut changed = false;
            if let Some(sp) = self.parts.get_mut(&s)
                && let Some(d) = sp.down.remove(&key)
            {
                sp.down_by_ssrc.remove(&d.ssrc);
                sp.down_by_ssrc.remove(&d.rtx_ssrc);
                let _ = sp.subc.pc.remove_track(d.sender);
                changed = true;
            }
            if changed {
                self.renegotiate_sub(now, &s);
            }
        }
    }

    fn on_message(&mut self, now: Instant, pid: &str, kind: PcKind, m: TaggedRTCMessage) {
        match (kind, m.message) {
            (PcKind::Pub, RTCMessage::RtpPacket(track_id, pkt)) => self.forward(m.now, pid, &track_id, pkt),
            (PcKind::Pub, RTCMessage::DataChannelMessage(_, msg)) => self.relay_data(now, pid, &msg.data),
            (PcKind::Sub, RTCMessage::RtcpPacket(_, pkts)) => self.on_subscriber_rtcp(now, pid, pkts),
            _ => {}
        }
    }

    /// The hot path: one published RTP packet to every subscriber.
    fn forward(&mut self, now: Instant, pid: &str, track_id: &str, pkt: rtc::rtp::Packet) {
        self.metrics.rtp_in.fetch_add(1, Relaxed);
        let Some(p) = self.parts.get_mut(pid) else { return };
        let Some(u) = p.uptracks.get_mut(track_id) else { return };
        let seq = pkt.header.sequence_number;
        let ssrc = pkt.header.ssrc;
        let li = match u.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            Some(i) => i,
            // Without simulcast the one stream may change SSRC (a
            // renegotiation, an encoder restart): follow it.
            None if u.layers.len() == 1 && u.layers[0].rid.is_empty() => {
                u.layers[0].ssrc = Some(ssrc);
                0
            }
            // A simulcast layer not opened yet: its OnOpen binds it.
            None => return,
        };
        let video = u.kind == RtpCodecKind::Video;
        let keyframe = u.keyframe_codec.is_some_and(|c| is_keyframe(c, &pkt.payload));
        let layer = &mut u.layers[li];
        let quality = layer.quality;
        layer.meter.record(now, pkt.payload.len() + 12);
        if video {
            layer.nack.on_packet(now, seq);
        }
        if keyframe {
            layer.keyframes.on_keyframe(now);
        }
        // Out of the up-track for the loop over subscribers (which borrows
        // the participants map); put back after it.
        let mut gop = layer.gop.take();
        if let Some(g) = gop.as_mut()
            && !pkt.payload.is_empty()
        {
            g.push(
                now,
                CachedPacket {
                    ssrc,
                    seq,
                    timestamp: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    payload_type: pkt.header.payload_type,
                    payload: pkt.payload.clone(),
                },
                keyframe,
            );
        }
        // Which layers' caches could serve a newcomer now (to send it this
        // packet's layer only if that is the one it should start from).
        let replayable: u8 = u
            .layers
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                if *i == li {
                    gop.as_ref().is_some_and(|g| g.replay(now).is_some())
                } else {
                    l.gop.as_ref().is_some_and(|g| g.replay(now).is_some())
                }
            })
            .fold(0u8, |m, (_, l)| m | (1u8 << l.quality.min(7)));
        // One key and room name per inbound packet, none per subscriber.
        let key = (pid.to_string(), track_id.to_string());
        let room = p.room.clone();
        let Engine {
            rooms,
            parts,
            out: transmits,
            metrics,
            ..
        } = self;
        let Some(r) = rooms.get(&room) else { return };
        for sid in &r.joined {
            if sid == pid {
                continue;
            }
            let Some(s) = parts.get_mut(sid.as_str()) else {
                continue;
            };
            // Nothing reaches a subscriber before its connection is up; a
            // keyframe "forwarded" then would be lost and counted as sent.
            // (Disconnected is a pause in consent checks, not a dead link:
            // media keeps flowing, audio above all.)
            if !matches!(
                s.subc.state,
                RTCPeerConnectionState::Connected | RTCPeerConnectionState::Disconnected
            ) {
                continue;
            }
            let Some(d) = s.down.get_mut(&key) else { continue };
            let Some(out_pt) = d
                .pt_map
                .iter()
                .find(|(i, _)| *i == pkt.header.payload_type)
                .map(|x| x.1)
            else {
                continue;
            };
            let inp = InPacket {
                source: ssrc,
                seq,
                timestamp: pkt.header.timestamp,
                marker: pkt.header.marker,
            };
            // Padding-only packets are bandwidth probes for the publisher's
            // own link; forwarding them would only cost the subscriber.
            if pkt.payload.is_empty() {
                d.munger.drop_packet(&inp);
                continue;
            }
            if video && d.switch.current().is_none() && !keyframe {
                // A newcomer is served the cached group of the best layer
                // at or below its target, this packet included, instead of
                // a keyframe request to the publisher.
                let Target::Layer(want) = d.switch.target() else {
                    d.munger.drop_packet(&inp);
                    continue;
                };
                let serve = (0..=want.min(7)).rev().find(|q| replayable & (1 << q) != 0);
                if d.fresh
                    && serve == Some(quality)
                    && let Some(replay) = gop.as_ref().and_then(|g| g.replay(now))
                {
                    let mut sent = 0u64;
                    for c in replay {
                        let Some(pt) = d.pt_map.iter().find(|(i, _)| *i == c.payload_type).map(|x| x.1) else {
                            continue;
                        };
                        let cin = InPacket {
                            source: c.ssrc,
                            seq: c.seq,
                            timestamp: c.timestamp,
                            marker: c.marker,
                        };
                        let payload = match d.vp8.as_mut() {
                            Some(v) => v.rewrite(c.ssrc, &c.payload),
                            None => c.payload.clone(),
                        };
                        if write_munged(now, &mut s.subc.pc, d, &cin, pt, payload, transmits) {
                            sent += 1;
                        }
                    }
                    d.switch.set_current(quality);
                    d.fresh = false;
                    metrics.gop_replays.fetch_add(1, Relaxed);
                    metrics.rtp_out.fetch_add(sent, Relaxed);
                }
                d.munger.drop_packet(&inp);
                continue;
            }
            if video {
                let before = d.switch.current();
                if d.switch.on_packet(quality, keyframe) == LayerDecision::Drop {
                    d.munger.drop_packet(&inp);
                    continue;
                }
                if before.is_some_and(|b| b != quality) {
                    metrics.layer_switches.fetch_add(1, Relaxed);
                }
            }
            let payload = match d.vp8.as_mut() {
                Some(v) => v.rewrite(ssrc, &pkt.payload),
                None => pkt.payload.clone(),
            };
            if write_munged(now, &mut s.subc.pc, d, &inp, out_pt, payload, transmits) {
                metrics.rtp_out.fetch_add(1, Relaxed);
            }
            d.fresh = false;
        }
        if let Some(l) = parts
            .get_mut(pid)
            .and_then(|p| p.uptracks.get_mut(track_id))
            .and_then(|u| u.layers.get_mut(li))
        {
            l.gop = gop;
        }
    }

    fn on_subscriber_rtcp(&mut self, now: Instant, pid: &str, pkts: Vec<Box<dyn rtcp::Packet>>) {
        let mut keyframe_for: Vec<(String, String, u8)> = Vec::new();
        let Some(s) = self.parts.get_mut(pid) else { return };
        for pkt in &pkts {
            let any = pkt.as_any();
            if let Some(n) = any.downcast_ref::<rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>() {
                self.metrics.nack_in.fetch_add(1, Relaxed);
                let Some(key) = s.down_by_ssrc.get(&n.media_ssrc).cloned() else { continue };
                let Some(d) = s.down.get_mut(&key) else { continue };
                let seqs: Vec<u16> = n.nacks.iter().flat_map(|p| p.packet_list()).collect();
                let resend = d.responder.on_nack(&mut d.history, now, s.rtt, &seqs);
                for seq in resend {
                    let Some(out) = d.rtx_copy(seq) else { continue };
                    if s
                        .subc
                        .pc
                        .handle_write(TaggedRTCMessage {
                            now,
                            message: RTCMessage::RtpPacket(String::new(), out),
                        })
                        .is_ok()
                    {
                        self.metrics.rtx_sent.fetch_add(1, Relaxed);
                    }
                }
            } else if let Some(p) =
                any.downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            {
                if let Some(k) = s.down_by_ssrc.get(&p.media_ssrc)
                    && let Some(d) = s.down.get(k)
                {
                    keyframe_for.push((k.0.clone(), k.1.clone(), downtrack_quality(d)));
                }
            } else if let Some(f) = any.downcast_ref::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
            {
                for e in &f.fir {
                    if let Some(k) = s.down_by_ssrc.get(&e.ssrc)
                        && let Some(d) = s.down.get(k)
                    {
                        keyframe_for.push((k.0.clone(), k.1.clone(), downtrack_quality(d)));
                    }
                }
            } else if let Some(r) = any.downcast_ref::<
                rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate,
            >() {
                let bps = r.bitrate.max(0.0) as u64;
                if s.bwe_bps.is_some_and(|prev| bps < prev / 100 * 97) {
                    s.bwe_fell_at = Some(now);
                }
                if s.bwe_bps.is_none_or(|prev| bps > prev / 100 * 101) {
                    s.bwe_rose_at = Some(now);
                }
                s.bwe_bps = Some(bps);
            } else if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                for rep in &rr.reports {
                    if let Some(rtt) = rtt_from_report(rep.last_sender_report, rep.delay, now_ntp_middle()) {
                        s.rtt = rtt;
                    }
                }
            }
        }
        while let Some(w) = s.subc.pc.poll_write() {
            self.out.push_back(Transmit {
                to: w.transport.peer_addr,
                data: w.message,
            });
        }
        for (publisher, t, q) in keyframe_for {
            self.metrics.pli_in.fetch_add(1, Relaxed);
            if let Some(l) = self
                .parts
                .get_mut(&publisher)
                .and_then(|p| p.uptracks.get_mut(&t))
                .and_then(|u| u.layer_mut(q))
            {
                l.keyframes.request(now, KeyframeReason::SubscriberPli);
            }
        }
    }

    fn relay_data(&mut self, now: Instant, pid: &str, data: &[u8]) {
        let Some(stamped) = stamp_dc_message(data, pid, unix_ms()) else {
            self.metrics.dc_dropped.fetch_add(1, Relaxed);
            return;
        };
        let Some(p) = self.parts.get_mut(pid) else { return };
        if !p.dc_budget.try_take(now, 1.0) {
            self.metrics.dc_dropped.fetch_add(1, Relaxed);
            return;
        }
        let Some(p) = self.parts.get(pid) else { return };
        let room = p.room.clone();
        // In a broadcast, what a viewer writes goes to the presenters only
        // (hundreds of viewers chatting to each other would drown the
        // lecture), and only the stage drives the shared image.
        let Some((from_stage, presenter)) = self
            .rooms
            .get(&room)
            .map(|r| (broadcast::on_stage(r, p), broadcast::is_presenter(r, p)))
        else {
            return;
        };
        if !from_stage && !stamped.is_chat {
            self.metrics.dc_dropped.fetch_add(1, Relaxed);
            return;
        }
        // What is kept for late joiners is a presenter's only: a viewer's
        // words on stage reach those who are there while it speaks, but a
        // late viewer replayed them would learn the id of a viewer it was
        // never told of.
        if let Some(r) = self.rooms.get_mut(&room)
            && presenter
        {
            if stamped.is_view {
                r.last_view = Some(stamped.text.clone());
            } else if stamped.is_chat {
                if r.chat_log.len() >= CHAT_REPLAY {
                    r.chat_log.pop_front();
                }
                r.chat_log.push_back(stamped.text.clone());
            }
        }
        let members: Vec<String> = match self.rooms.get(&room) {
            Some(r) if !from_stage => r
                .joined
                .iter()
                .filter(|o| self.parts.get(*o).is_some_and(|op| broadcast::is_presenter(r, op)))
                .cloned()
                .collect(),
            Some(r) => r.joined.clone(),
            None => Vec::new(),
        };
        for o in members {
            if o == pid {
                continue;
            }
            let Some(op) = self.parts.get_mut(&o) else { continue };
            let Some(id) = op.dc else { continue };
            if let Some(mut dc) = op.pubc.pc.data_channel(id)
                && dc.send_text(now, stamped.text.clone()).is_ok()
            {
                self.metrics.dc_relayed.fetch_add(1, Relaxed);
            }
            self.process(now, &o, PcKind::Pub);
        }
    }

    // ---------------------------------------------------------------- timers

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(String, PcKind)> = self
            .parts
            .iter()
            .flat_map(|(id, p)| {
                let mut v = Vec::new();
                if p.pubc.deadline.is_some_and(|d| d <= now) {
                    v.push((id.clone(), PcKind::Pub));
                }
                if p.subc.deadline.is_some_and(|d| d <= now) {
                    v.push((id.clone(), PcKind::Sub));
                }
                v
            })
            .collect();
        for (pid, kind) in due {
            if let Some(p) = self.parts.get_mut(&pid) {
                let peer = p.peer(kind);
                peer.deadline = None;
                let _ = peer.pc.handle_timeout(now);
            }
            self.process(now, &pid, kind);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
        }
        if now >= self.next_room_sweep {
            self.next_room_sweep = now + lifecycle::SWEEP;
            self.end_rooms(now);
        }
        self.reap(now);
    }

    fn tick(&mut self, now: Instant) {
        self.ticks = self.ticks.wrapping_add(1);
        // Every 5th tick (100 ms): a full drain of every connection and a
        // refresh of cached deadlines. Doing that every 20 ms costs a pass
        // over rtc's handler chain per connection for nothing most of the time.
        let full = self.ticks.is_multiple_of(5);
        let peer_timeout = self.cfg.peer_timeout;
        let ids: Vec<String> = self.parts.keys().cloned().collect();
        for pid in ids {
            let Some(p) = self.parts.get_mut(&pid) else { continue };
            if now.saturating_duration_since(p.last_rx) > peer_timeout {
                self.doomed.push((pid.clone(), "timed out (no packets)"));
                continue;
            }
            if p.tx.is_closed() {
                self.doomed.push((pid.clone(), "signaling closed"));
                continue;
            }
            if p.tx.ended().is_some() {
                // Its page could not keep up: the session is over.
                self.doomed.push((pid.clone(), "signaling could not keep up"));
                continue;
            }
            let rtt = p.rtt;
            // A presenter with an audience keeps the late-joiner cache short.
            let refresh = self
                .rooms
                .get(&p.room)
                .is_some_and(|r| r.kind == RoomKind::Broadcast && r.joined.len() > 1);
            // NACKs and keyframe requests towards this publisher.
            let mut rtcp_out: Vec<(RTCRtpReceiverId, Box<dyn rtcp::Packet>)> = Vec::new();
            for u in p.uptracks.values_mut() {
                let video = u.kind == RtpCodecKind::Video;
                for l in u.layers.iter_mut() {
                    let Some(media_ssrc) = l.ssrc else { continue };
                    // Only a layer still being sent: a publisher whose uplink
                    // shrank pauses its top layers, and asking for their
                    // keyframes would not bring them back.
                    if refresh && l.gop.as_ref().is_some_and(|g| g.wants_refresh(now)) && l.meter.bps(now) > 0 {
                        l.keyframes.request(now, KeyframeReason::CacheRefresh);
                    }
                    l.keyframes.set_rtt(rtt);
                    let missing = l.nack.poll(now, rtt);
                    if !missing.is_empty() {
                        self.metrics.nack_out.fetch_add(1, Relaxed);
                        rtcp_out.push((
                            u.receiver,
                            Box::new(rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack {
                                sender_ssrc: 0,
                                media_ssrc,
                                nacks: pack_nack_pairs(&missing)
                                    .into_iter()
                                    .map(|p| rtcp::transport_feedbacks::transport_layer_nack::NackPair {
                                        packet_id: p.pid,
                                        lost_packets: p.blp,
                                    })
                                    .collect(),
                            }),
                        ));
                    }
                    if video && l.keyframes.poll(now) {
                        self.metrics.pli_out.fetch_add(1, Relaxed);
                        rtcp_out.push((
                            u.receiver,
                            Box::new(
                                rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                                    sender_ssrc: 0,
                                    media_ssrc,
                                },
                            ),
                        ));
                    }
                }
            }
            let wrote = !rtcp_out.is_empty();
            for (recv, pkt) in rtcp_out {
                if let Some(mut r) = p.pubc.pc.rtp_receiver(recv) {
                    let _ = r.write_rtcp(now, vec![pkt]);
                }
            }
            self.update_link(now, &pid);
            if wrote || full {
                self.process(now, &pid, PcKind::Pub);
            }
            if full {
                self.process(now, &pid, PcKind::Sub);
            }
        }
        if !full {
            return;
        }
        if self.ticks.is_multiple_of(50) {
            self.send_viewer_counts();
        }
        // Hands and questions coalesced per half second: a storm of raised
        // hands is a few messages to each presenter, not one per hand.
        if self.ticks.is_multiple_of(25) {
            self.send_queues();
        }
        // Refresh cached deadlines: forwarding may have scheduled reports.
        for p in self.parts.values_mut() {
            for peer in [&mut p.pubc, &mut p.subc] {
                peer.deadline = peer.pc.poll_timeout().map(|d| d.max(now + Duration::from_millis(1)));
            }
        }
    }
}

impl Engine {
    /// Broadcast rooms: the viewer count to each presenter, when it changed
    /// (once a second at most: with hundreds of viewers joining, a message
    /// per join would flood the presenter's page).
    fn send_viewer_counts(&mut self) {
        for r in self.rooms.values_mut() {
            if r.kind != RoomKind::Broadcast {
                continue;
            }
            let mut viewers = 0;
            let mut presenters = Vec::new();
            for pid in &r.joined {
                if let Some(p) = self.parts.get(pid) {
                    if r.kind.may_publish(p.role) {
                        presenters.push(p);
                    } else {
                        viewers += 1;
                    }
                }
            }
            if r.viewers_sent == Some(viewers) {
                continue;
            }
            r.viewers_sent = Some(viewers);
            let mut all = true;
            for p in presenters {
                all &= p.send(ServerMsg::Viewers { count: viewers });
            }
            if !all {
                // Droppable: a presenter's page that was behind gets it
                // with the next round.
                r.viewers_sent = None;
            }
        }
    }

    /// Audio before video, then the best simulcast layer the link carries:
    /// from this subscriber's receive estimate (REMB), choose what its video
    /// gets, ask for the keyframes a switch needs, probe for an up-switch,
    /// and tell the page.
    fn update_link(&mut self, now: Instant, pid: &str) {
        let Some(s) = self.parts.get(pid) else { return };
        // Per received video track: its live layers (quality, bps) and which
        // layers' caches could serve a newcomer.
        let mut tracks: Vec<ReceivedVideo> = Vec::new();
        let mut audio_bps = 0u64;
        for (key, d) in &s.down {
            let Some(u) = self.parts.get(&key.0).and_then(|p| p.uptracks.get(&key.1)) else {
                continue;
            };
            if d.kind != RtpCodecKind::Video {
                audio_bps += u.bps(now);
                continue;
            }
            let live: Vec<(u8, u64)> = u
                .layers
                .iter()
                .map(|l| (l.quality, l.meter.bps(now)))
                .filter(|x| x.1 > 0)
                .collect();
            let cached = u
                .layers
                .iter()
                .filter(|l| l.gop.as_ref().is_some_and(|g| g.replay(now).is_some()))
                .fold(0u8, |m, l| m | (1u8 << l.quality.min(7)));
            tracks.push((key.clone(), live, cached));
        }
        let levels = tracks
            .iter()
            .filter_map(|t| t.1.iter().map(|x| usize::from(x.0) + 1).max())
            .max()
            .unwrap_or(0);
        // What each level costs over all tracks (a track with fewer layers
        // contributes its best one at or below the level).
        let layer_bps: Vec<u64> = (0..levels)
            .map(|q| tracks.iter().map(|t| live_pick(&t.1, q as u8).map_or(0, |x| x.1)).sum())
            .collect();
        // Broadcast presenters are asked for a keyframe every few seconds
        // anyway (the cache refresh), so an up-switch there waits for the
        // next one instead of adding a request per viewer.
        let broadcast = self
            .parts
            .get(pid)
            .and_then(|s| self.rooms.get(&s.room))
            .is_some_and(|r| r.kind == RoomKind::Broadcast);
        let Some(s) = self.parts.get_mut(pid) else { return };
        let wants_video = !tracks.is_empty();
        let top = levels.saturating_sub(1) as u8;
        let wanted = if wants_video {
            Target::Layer(top)
        } else {
            Target::Paused
        };
        let chosen = match (s.bwe_bps, wants_video) {
            (Some(bwe), true) if levels > 0 => {
                // A receive-side estimate hovers around what arrives, so the
                // lowest layer is judged against a minimal stream: video is
                // paused only when the link cannot carry even that next to
                // the audio.
                let mut lb = layer_bps.clone();
                lb[0] = lb[0].min(VIDEO_MIN_BPS);
                // The first estimate judges the layer already being sent.
                s.selector.seed(s.video_target);
                // A receive-side estimate starts low (a browser's REMB
                // starts near 300 kbit/s) and climbs to what arrives. While
                // it is climbing (rose within 3 s, did not fall), the layer
                // being sent is taken to fit: climbing is not congestion.
                // An estimate that stays low is the link's real size (a
                // starved link never shows a fall), and going up still
                // needs the estimate itself (and probing) to make room.
                let audio = audio_bps.max(32_000);
                let recent =
                    |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= Duration::from_secs(3));
                let climbing = recent(s.bwe_rose_at) && !recent(s.bwe_fell_at);
                let est = match s.video_target {
                    Target::Layer(q) if climbing => lb.get(usize::from(q)).map_or(bwe, |&b| bwe.max(b + audio)),
                    _ => bwe,
                };
                let raw = s.selector.update(now, &lb, est, audio);
                let gated = s.gate.update(now, raw);
                s.probe.update(now, gated)
            }
            // Not measured yet.
            (_, true) => Target::Layer(START_QUALITY.min(top)),
            _ => Target::Paused,
        };
        // Pad towards the next layer while probing (see UpProbe).
        let extra = match chosen {
            Target::Layer(q) if usize::from(q) + 1 < levels => {
                let (cur, next) = (layer_bps[usize::from(q)], layer_bps[usize::from(q) + 1]);
                (next > cur).then(|| next - cur)
            }
            _ => None,
        };
        // An up-switch waits for the new layer's keyframe; padding keeps the
        // estimate up meanwhile (it holds what the probe reached, but a
        // sender that drops to less than it then claims is a reason for a
        // browser to doubt it).
        let forwarded = s
            .down
            .values()
            .filter(|d| d.kind == RtpCodecKind::Video)
            .filter_map(|d| d.switch.current())
            .min();
        let pending_up = match (chosen, forwarded) {
            (Target::Layer(q), Some(f)) if q > f && usize::from(q) < levels => {
                Some(layer_bps[usize::from(q)].saturating_sub(layer_bps[usize::from(f)]))
            }
            _ => None,
        };
        let next_fits = match (chosen, s.bwe_bps) {
            (Target::Layer(q), Some(bwe)) if usize::from(q) + 1 < levels => {
                layer_bps[usize::from(q) + 1] <= super::layer::video_budget(bwe, audio_bps.max(32_000), 0.9)
            }
            _ => false,
        };
        let pad = match s.bwe_bps {
            None => 0,
            Some(bwe) => {
                let was = s.up_probe.probing();
                let probe = s.up_probe.update(now, chosen, extra, bwe, next_fits);
                if was != s.up_probe.probing() {
                    // Placing a slow climb to the top layer: which probes ran,
                    // how they ended, and how far the back-off has grown.
                    debug!(
                        participant = pid,
                        probing = !was,
                        layer = ?chosen,
                        bwe_kbps = bwe / 1000,
                        pad_kbps = probe / 1000,
                        next_fits,
                        interval_s = s.up_probe.interval().as_secs(),
                        "up-probe"
                    );
                }
                pending_up.unwrap_or(probe)
            }
        };
        s.probe_credit = if pad > 0 {
            (s.probe_credit + pad as f64 * TICK.as_secs_f64() / 8.0).min(64_000.0)
        } else {
            0.0
        };
        let mut keyframes: Vec<(String, String, u8, KeyframeReason)> = Vec::new();
        let mut newcomers_asked = 0u64;
        for (key, live, cached) in &tracks {
            let Some(d) = s.down.get_mut(key) else { continue };
            let t = match chosen {
                Target::Paused => Target::Paused,
                Target::Layer(q) => Target::Layer(live_pick(live, q).map_or(q, |x| x.0)),
            };
            if d.switch.target() != t {
                d.switch.set_target(t);
            }
            if let (Some(q), Target::Layer(want)) = (d.switch.pending_keyframe(), t) {
                // A newcomer the cache will serve needs no keyframe.
                let served = d.fresh && (0..=want.min(7)).any(|x| cached & (1 << x) != 0);
                let up = d.switch.current().is_some_and(|c| q > c);
                if !(served || up && broadcast) {
                    let why = if d.fresh {
                        if !d.asked_newcomer {
                            d.asked_newcomer = true;
                            newcomers_asked += 1;
                            debug!(subscriber = pid, source = ?d.source, layer = q, "newcomer keyframe requested (no usable cache)");
                        }
                        KeyframeReason::NewSubscriber
                    } else {
                        KeyframeReason::LayerSwitch
                    };
                    keyframes.push((key.0.clone(), key.1.clone(), q, why));
                }
            }
        }
        if let Some(bwe) = s.bwe_bps {
            // Retransmissions may use a quarter of what the link carries.
            let rate = (bwe / 4).max(64_000);
            for d in s.down.values_mut() {
                d.responder.set_max_rate_bps(rate);
            }
        }
        let layer_changed = s.video_target != chosen;
        s.video_target = chosen;
        s.audio_only = chosen == Target::Paused && wants_video;
        let state = match s.classifier.update(now, chosen, wanted) {
            super::layer::LinkState::Good => LinkState::Good,
            super::layer::LinkState::Weak => LinkState::Weak,
            super::layer::LinkState::AudioOnly => LinkState::AudioOnly,
        };
        let simulcast = levels > 1;
        let changed = state != s.link_state || (layer_changed && simulcast);
        if changed || s.link_stale {
            if changed {
                info!(
                    participant = pid,
                    ?state,
                    layer = ?chosen,
                    bwe_kbps = s.bwe_bps.unwrap_or(0) / 1000,
                    "link state"
                );
            }
            s.link_state = state;
            // Droppable: a page that is behind gets the state once it has
            // room again (the next ticks retry), not every change.
            s.link_stale = !s.send(ServerMsg::Link {
                state,
                bwe_kbps: s.bwe_bps.unwrap_or(0) / 1000,
                layer: match chosen {
                    Target::Layer(q) if simulcast => Some(q),
                    _ => None,
                },
                layers: simulcast.then_some(levels as u8),
            });
        }
        self.metrics.keyframe_newcomer.fetch_add(newcomers_asked, Relaxed);
        for (publisher, t, q, why) in keyframes {
            if let Some(l) = self
                .parts
                .get_mut(&publisher)
                .and_then(|p| p.uptracks.get_mut(&t))
                .and_then(|u| u.layer_mut(q))
            {
                l.keyframes.request(now, why);
            }
        }
        self.send_probe(now, pid);
    }

    /// Probe padding: retransmissions (RTX) of the newest video packets
    /// this subscriber already has. The receiver counts their bytes into its
    /// estimate and discards them as duplicates, so a probe never shows as
    /// a glitch, and no padding-only packet format has to be negotiated.
    fn send_probe(&mut self, now: Instant, pid: &str) {
        let Some(s) = self.parts.get_mut(pid) else { return };
        if s.probe_credit < 1200.0 {
            return;
        }
        let Some(d) = s
            .down
            .values_mut()
            .find(|d| d.kind == RtpCodecKind::Video && d.rtx_pt.is_some() && d.switch.current().is_some())
        else {
            return;
        };
        let Some((last, _)) = d.munger.last_out() else {
            return;
        };
        let mut sent = 0u64;
        for back in 0..64u16 {
            if s.probe_credit < 1200.0 {
                break;
            }
            let Some(out) = d.rtx_copy(last.wrapping_sub(back)) else {
                continue;
            };
            s.probe_credit -= (out.payload.len() + 12) as f64;
            if s.subc
                .pc
                .handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtpPacket(String::new(), out),
                })
                .is_ok()
            {
                sent += 1;
            }
        }
        if sent == 0 {
            s.probe_credit = 0.0;
            return;
        }
        self.metrics.probe_packets.fetch_add(sent, Relaxed);
        while let Some(w) = s.subc.pc.poll_write() {
            self.out.push_back(Transmit {
                to: w.transport.peer_addr,
                data: w.message,
            });
        }
    }
}

/// One video track a subscriber receives, as `update_link` sees it: its
/// key, its live layers (quality, bps) and a bit per layer whose cache could
/// serve a newcomer.
type ReceivedVideo = ((String, String), Vec<(u8, u64)>, u8);

/// Of one track's live layers, the best at or below `q`, else the lowest.
fn live_pick(live: &[(u8, u64)], q: u8) -> Option<(u8, u64)> {
    live.iter()
        .copied()
        .filter(|x| x.0 <= q)
        .max_by_key(|x| x.0)
        .or_else(|| live.iter().copied().min_by_key(|x| x.0))
}

/// The layer a subscriber's keyframe request is about: the one it is being
/// sent, or, while it waits for a switch, the one it waits for.
fn downtrack_quality(d: &DownTrack) -> u8 {
    d.switch
        .pending_keyframe()
        .or(d.switch.current())
        .unwrap_or(target_quality(d.switch.target()))
}

fn mid_of_receiver(pc: &mut RTCPeerConnection, receiver: RTCRtpReceiverId) -> Option<String> {
    let ids: Vec<usize> = pc.get_transceivers().collect();
    for t in ids {
        if let Some(tr) = pc.rtp_transceiver(t)
            && tr.receiver() == Some(receiver)
        {
            return tr.mid().clone();
        }
    }
    None
}

fn track_slug(s: Source) -> &'static str {
    match s {
        Source::Mic => "mic",
        Source::Camera => "camera",
        Source::Screen => "screen",
    }
}

fn unix_ms() -> u64 {
    u64::try_from(crate::clock::now_ms()).unwrap_or(0)
}

/// Middle 32 bits of the current NTP time, the unit of LSR/DLSR (RFC 3550 §6.4.1).
fn now_ntp_middle() -> u32 {
    let d = crate::clock::since_epoch();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (((secs & 0xffff) << 16) | (frac >> 16)) as u32
}

/// RTT = A - LSR - DLSR in 1/65536 s units; None when the report carries no
/// SR reference or the result is implausible (clock steps).
/// One packet to one subscriber: sequence/timestamp rewrite, kept for
/// retransmission (video), encrypted and queued. True if the connection took
/// it.
fn write_munged(
    now: Instant,
    pc: &mut RTCPeerConnection,
    d: &mut DownTrack,
    inp: &InPacket,
    out_pt: u8,
    payload: Bytes,
    transmits: &mut VecDeque<Transmit>,
) -> bool {
    let Ok(m) = d.munger.forward(now, inp) else {
        return false;
    };
    // A fresh header: the publisher's CSRCs and extension ids mean nothing
    // on this subscriber's connection (and cloning them would allocate per
    // copy).
    let out = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            padding: false,
            marker: inp.marker,
            payload_type: out_pt,
            sequence_number: m.seq,
            timestamp: m.timestamp,
            ssrc: m.ssrc,
            ..Default::default()
        },
        payload,
    };
    if d.kind == RtpCodecKind::Video {
        d.history.push(
            now,
            m.seq,
            HistoryPacket {
                timestamp: m.timestamp,
                marker: m.marker,
                payload_type: out_pt,
                payload: out.payload.clone(),
            },
        );
    }
    let ok = pc
        .handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(String::new(), out),
        })
        .is_ok();
    // One poll: the packet just written. Anything else the connection
    // queued (a sender report) leaves on the next drain, at the latest the
    // next full tick (100 ms); a second, empty poll per copy would cost a
    // full pass over rtc's handler chain.
    if let Some(w) = pc.poll_write() {
        transmits.push_back(Transmit {
            to: w.transport.peer_addr,
            data: w.message,
        });
    }
    ok
}

pub fn rtt_from_report(lsr: u32, dlsr: u32, now_middle: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let rtt = now_middle.wrapping_sub(lsr).wrapping_sub(dlsr);
    if rtt > 10 * 65536 {
        return None;
    }
    Some(Duration::from_micros((rtt as u64 * 1_000_000) >> 16).max(Duration::from_millis(1)))
}

pub struct Stamped {
    pub text: String,
    pub is_view: bool,
    pub is_chat: bool,
}

/// Validates a data-channel message from a participant and stamps the
/// sender, so nobody can speak in somebody else's name. Memory: at most
/// 32 × the message + 8 KiB (checked by the `datachannel` fuzz target).
pub fn stamp_dc_message(data: &[u8], from: &str, ts: u64) -> Option<Stamped> {
    if data.len() > super::protocol::MAX_DC_BYTES {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let obj = v.as_object_mut()?;
    let t = obj.get("t")?.as_str()?.to_string();
    match t.as_str() {
        "chat" => {
            let text = obj.get("text")?.as_str()?;
            if text.chars().count() > super::protocol::MAX_CHAT_CHARS || text.trim().is_empty() {
                return None;
            }
        }
        "view" => {
            obj.get("instance")?.as_str()?;
        }
        "point" => {
            obj.get("instance")?.as_str()?;
            for c in ["x", "y"] {
                let f = obj.get(c)?.as_f64()?;
                if !(0.0..=1.0).contains(&f) {
                    return None;
                }
            }
        }
        _ => return None,
    }
    obj.insert("from".into(), serde_json::Value::String(from.to_string()));
    obj.insert("ts".into(), serde_json::Value::from(ts));
    Some(Stamped {
        text: v.to_string(),
        is_view: t == "view",
        is_chat: t == "chat",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_validates_data_channel_messages() {
        let s = stamp_dc_message(br#"{"t":"chat","text":"hello","from":"spoof"}"#, "p_1", 42).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s.text).unwrap();
        assert_eq!(v["from"], "p_1");
        assert_eq!(v["ts"], 42);
        assert!(!s.is_view);
        let view = stamp_dc_message(br#"{"t":"view","instance":"1.2.3","wc":40,"ww":400}"#, "p", 1).unwrap();
        assert!(view.is_view);
        for bad in [
            &br#"not json"#[..],
            br#"{"t":"chat"}"#,
            br#"{"t":"chat","text":"   "}"#,
            br#"{"t":"shout","text":"x"}"#,
            br#"{"t":"point","instance":"1","x":2,"y":0}"#,
            br#"[1]"#,
        ] {
            assert!(stamp_dc_message(bad, "p", 1).is_none());
        }
        let big = format!(r#"{{"t":"chat","text":"{}"}}"#, "a".repeat(5000));
        assert!(stamp_dc_message(big.as_bytes(), "p", 1).is_none());
    }

    /// In a broadcast only a presenter's chat and view are kept for late
    /// joiners: a speaker's reach those present while it speaks, but a
    /// late viewer replayed them would learn a viewer's id it was never
    /// told. And what one participant relays on the data channel is rate
    /// limited.
    #[test]
    fn only_presenters_are_replayed_to_late_joiners_and_the_data_channel_is_rate_limited() {
        let mut net = crate::sfu::sim::Net::broadcast(&["teacher", "speaker"], 2);
        let teacher = net.clients[0].id.clone();
        let speaker = net.clients[1].id.clone();
        net.signal(
            0,
            ClientMsg::Promote {
                participant: speaker.clone(),
                video: false,
            },
        );
        let now = net.now;
        let e = &mut net.engine;
        e.relay_data(now, &speaker, br#"{"t":"chat","text":"from the floor"}"#);
        e.relay_data(now, &speaker, br#"{"t":"view","instance":"1.2.3"}"#);
        e.relay_data(now, &teacher, br#"{"t":"chat","text":"from the teacher"}"#);
        let room = e.rooms.values().next().expect("room");
        let log: Vec<&String> = room.chat_log.iter().collect();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(log[0].contains("from the teacher") && !log[0].contains(&speaker));
        assert_eq!(room.last_view, None);
        let metrics = e.metrics.clone();
        let dropped = || metrics.dc_dropped.load(Relaxed);
        let before = dropped();
        for _ in 0..100 {
            e.relay_data(now, &teacher, br#"{"t":"chat","text":"again"}"#);
        }
        // The burst (one message already spent), the rest dropped.
        assert_eq!(dropped() - before, 100 - (DC_BURST as u64 - 1));
        // A second later there is room again.
        let later = now + Duration::from_secs(1);
        let before = dropped();
        e.relay_data(later, &teacher, br#"{"t":"chat","text":"later"}"#);
        assert_eq!(dropped(), before);
    }

    #[test]
    fn rtt_from_receiver_reports() {
        // 100 ms after an SR stamped at 1000.0 (middle bits), with 20 ms held.
        let lsr = 1000 << 16;
        let dlsr = (0.020 * 65536.0) as u32;
        let now = lsr + (0.120 * 65536.0) as u32;
        let rtt = rtt_from_report(lsr, dlsr, now).unwrap();
        assert!((rtt.as_secs_f64() - 0.100).abs() < 0.001, "{rtt:?}");
        assert_eq!(rtt_from_report(0, 0, now), None);
        assert_eq!(rtt_from_report(now, 0, lsr), None);
        // Wraps across the 16-bit seconds boundary.
        let lsr: u32 = 0xffff_0000;
        let now = lsr.wrapping_add(65536 / 2);
        assert!(rtt_from_report(lsr, 0, now).is_some());
    }
}
