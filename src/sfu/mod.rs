//! Live consultation: a WebRTC SFU that forwards media, never decodes it.
//!
//! Layout, following LiveKit's `pkg/sfu` split but sans-IO:
//! - `engine`: rooms, participants, peer connections, the forwarding loop
//!   (pure state machine, time passed in);
//! - `munger`, `history`, `nack`, `keyframe`, `layer`, `gop`: the per-packet and
//!   per-tick decisions, each a plain struct with unit tests;
//! - `io`: the one UDP socket and the thread that drives the engine;
//! - `protocol`, `tokens`: signaling messages and join tokens;
//! - `media`: codec/feedback setup of the `rtc` peer connections.
//!
//! Why the sans-IO `rtc` core and not the async `webrtc` layer: one UDP port
//! for every participant (demultiplexed by ICE ufrag, then by address) is
//! what hospital firewalls can open, and a single engine thread that owns
//! every connection forwards a packet with no locks, no per-peer tasks and no
//! channel hops; the async layer gives each peer connection its own sockets
//! and tasks and each forwarded packet at least one channel send and a
//! `TrackLocalStaticRTP` lock. The forwarding cost against the SRTP floor is
//! measured in `benches/sfu_forward.rs`.

pub mod client_queue;
pub mod demux;
pub mod engine;
pub mod floor;
pub mod gop;
pub mod history;
pub mod io;
pub mod keyframe;
pub mod layer;
pub mod media;
pub mod munger;
pub mod nack;
pub mod protocol;
pub mod ratelimit;
pub mod sim;
pub mod tokens;
pub mod vp8;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::SfuConfig;
use engine::{Command, EngineConfig};
use tokens::TokenKey;

#[derive(Debug, Default)]
pub struct SfuMetrics {
    pub rooms_active: AtomicU64,
    pub participants_active: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub rtp_in: AtomicU64,
    pub rtp_out: AtomicU64,
    pub rtx_sent: AtomicU64,
    pub nack_in: AtomicU64,
    pub nack_out: AtomicU64,
    pub pli_in: AtomicU64,
    pub pli_out: AtomicU64,
    pub gop_replays: AtomicU64,
    pub layer_switches: AtomicU64,
    pub keyframe_newcomer: AtomicU64,
    pub probe_packets: AtomicU64,
    pub udp_unknown: AtomicU64,
    pub udp_send_dropped: AtomicU64,
    pub dc_relayed: AtomicU64,
    pub dc_dropped: AtomicU64,
    pub signal_errors: AtomicU64,
    pub signal_dropped: AtomicU64,
    pub signal_too_slow: AtomicU64,
    pub signal_rate_limited: AtomicU64,
    pub signal_rate_cut: AtomicU64,
}

impl SfuMetrics {
    pub fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)> {
        vec![
            (
                "medrelay_sfu_joins_total",
                "Participants that joined a room",
                &self.joins,
            ),
            (
                "medrelay_sfu_leaves_total",
                "Participants that left or were dropped",
                &self.leaves,
            ),
            (
                "medrelay_sfu_rtp_in_total",
                "RTP packets received from publishers",
                &self.rtp_in,
            ),
            (
                "medrelay_sfu_rtp_out_total",
                "RTP packets forwarded to subscribers",
                &self.rtp_out,
            ),
            (
                "medrelay_sfu_rtx_sent_total",
                "Retransmissions sent from the SFU history",
                &self.rtx_sent,
            ),
            (
                "medrelay_sfu_nack_in_total",
                "NACKs received from subscribers",
                &self.nack_in,
            ),
            (
                "medrelay_sfu_nack_out_total",
                "NACKs sent to publishers",
                &self.nack_out,
            ),
            (
                "medrelay_sfu_pli_in_total",
                "Keyframe requests from subscribers",
                &self.pli_in,
            ),
            (
                "medrelay_sfu_pli_out_total",
                "Keyframe requests sent to publishers",
                &self.pli_out,
            ),
            (
                "medrelay_sfu_gop_replays_total",
                "Newcomers served the cached group of pictures instead of a keyframe request",
                &self.gop_replays,
            ),
            (
                "medrelay_sfu_layer_switches_total",
                "Simulcast layer switches carried out for a subscriber (at a keyframe)",
                &self.layer_switches,
            ),
            (
                "medrelay_sfu_keyframe_newcomer_total",
                "New subscribers (per video track) that needed a keyframe from the publisher: the late-joiner cache could not serve them",
                &self.keyframe_newcomer,
            ),
            (
                "medrelay_sfu_probe_packets_total",
                "Padding packets sent to probe a subscriber's link before an up-switch",
                &self.probe_packets,
            ),
            (
                "medrelay_sfu_udp_unknown_total",
                "Datagrams dropped: unknown sender or not WebRTC",
                &self.udp_unknown,
            ),
            (
                "medrelay_sfu_udp_send_dropped_total",
                "Datagrams dropped: socket buffer full",
                &self.udp_send_dropped,
            ),
            (
                "medrelay_sfu_dc_relayed_total",
                "Data-channel messages relayed",
                &self.dc_relayed,
            ),
            (
                "medrelay_sfu_dc_dropped_total",
                "Data-channel messages refused",
                &self.dc_dropped,
            ),
            (
                "medrelay_sfu_signal_errors_total",
                "Signaling requests refused",
                &self.signal_errors,
            ),
            (
                "medrelay_sfu_signal_dropped_total",
                "Droppable signaling messages (link, viewers, pong) not sent to a page that was behind",
                &self.signal_dropped,
            ),
            (
                "medrelay_sfu_signal_too_slow_total",
                "Sessions ended because the page did not keep up with its control messages (close 4008)",
                &self.signal_too_slow,
            ),
            (
                "medrelay_sfu_signal_rate_limited_total",
                "Signaling messages refused by the per-participant rate limit",
                &self.signal_rate_limited,
            ),
            (
                "medrelay_sfu_signal_rate_cut_total",
                "Sessions ended for going on over the rate limit (close 4029)",
                &self.signal_rate_cut,
            ),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SfuStartError {
    #[error("cannot bind the media port {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no address to announce: set sfu.announce")]
    NoAnnounce,
}

/// A teaching broadcast: the owner of its room (`engine::RoomOwner`), so it
/// lives and ends with the room and the HTTP API lists it from there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BroadcastInfo {
    pub title: String,
    /// The presenter's hospital, whose clinics see the broadcast; None for
    /// the one implicit hospital of an alliance that configures no
    /// `[[hospital]]` (it serves every clinic).
    pub hospital_id: Option<String>,
    /// Username of the expert who started it (who may end it).
    pub presenter: String,
    pub presenter_name: String,
    /// Who presents: the starter and the colleagues it named. Everyone else
    /// who may see the broadcast watches.
    pub presenters: Vec<String>,
    pub started_unix: u64,
}

/// What the HTTP side holds: a way to talk to the engine and to mint/check tokens.
pub struct Sfu {
    pub commands: mpsc::Sender<Command>,
    pub tokens: TokenKey,
    /// Per-participant signaling budgets (the WebSocket tasks consult it
    /// before a message reaches the engine).
    pub signal_limits: ratelimit::Limits,
    pub room_ttl: Duration,
    pub metrics: Arc<SfuMetrics>,
    pub media_addr: SocketAddr,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu").field("media_addr", &self.media_addr).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the media engine is not running")]
pub struct EngineGone;

impl Sfu {
    pub fn start(cfg: &SfuConfig, shutdown: CancellationToken) -> Result<Sfu, SfuStartError> {
        let socket = bind_udp(cfg.udp_listen).map_err(|source| SfuStartError::Bind {
            addr: cfg.udp_listen,
            source,
        })?;
        let local = socket.local_addr().map_err(|source| SfuStartError::Bind {
            addr: cfg.udp_listen,
            source,
        })?;
        let announce = if cfg.announce.is_empty() {
            default_announce(local)
        } else {
            cfg.announce.clone()
        };
        if announce.is_empty() {
            return Err(SfuStartError::NoAnnounce);
        }
        let metrics = Arc::new(SfuMetrics::default());
        // The ICE agent accepts checks only on an address it has a candidate
        // for. Behind NAT or a port mapping the socket's own address is not
        // one of them, so datagrams are attributed to the first announced
        // address (replies leave through the one socket either way).
        let candidate_addr = if announce.contains(&local) { local } else { announce[0] };
        let ecfg = EngineConfig {
            local_addr: candidate_addr,
            announce,
            max_rooms: cfg.max_rooms,
            max_participants: cfg.max_participants_per_room,
            max_viewers: cfg.max_viewers_per_broadcast,
            max_tracks: cfg.max_tracks_per_participant,
            peer_timeout: Duration::from_secs(cfg.peer_timeout_secs),
            history: Duration::from_millis(cfg.history_ms),
            pli_interval: Duration::from_millis(cfg.pli_interval_ms),
            empty_room_grace: Duration::from_secs(cfg.empty_room_grace_secs),
        };
        let (commands, thread) =
            io::spawn(socket, ecfg, metrics.clone(), shutdown).map_err(|source| SfuStartError::Bind {
                addr: cfg.udp_listen,
                source,
            })?;
        Ok(Sfu {
            commands,
            tokens: TokenKey::random(),
            signal_limits: ratelimit::Limits::default(),
            room_ttl: Duration::from_secs(cfg.room_ttl_secs),
            metrics,
            media_addr: local,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Sends a command and waits for its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, EngineGone> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    /// Waits for the engine thread after shutdown was signalled.
    pub fn join(&self) {
        let h = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Bursts of video packets for many subscribers leave in one loop turn;
    // a larger buffer avoids self-inflicted loss.
    let _ = s.set_send_buffer_size(4 << 20);
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Candidates when none are configured: the bound address, or for a wildcard
/// bind every non-loopback IPv4 address this host has (loopback if none).
fn default_announce(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out = Vec::new();
    if let Ok(ifs) = std::fs::read_to_string("/proc/net/fib_trie") {
        // Local host routes ("/32 host LOCAL") list this machine's addresses.
        let mut last: Option<IpAddr> = None;
        for line in ifs.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("|-- ") {
                last = rest.parse().ok();
            } else if t.contains("/32 host LOCAL")
                && let Some(ip) = last
                && !ip.is_loopback()
                && !out.iter().any(|a: &SocketAddr| a.ip() == ip)
            {
                out.push(SocketAddr::new(ip, local.port()));
            }
        }
    }
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local.port()));
    }
    out
}
