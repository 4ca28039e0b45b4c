//! The load generator's WebRTC peers: receive-only viewers and a synthetic
//! simulcast presenter, each an `rtc` (webrtc-rs sans-IO) peer connection on
//! its own UDP socket, driven by a small async loop. They speak the same
//! signaling protocol as the browser pages (web/PROTOCOL.md).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use rtc::shared::TaggedBytesMut;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use super::LoadError;
use super::http::Endpoint;
use crate::sfu::keyframe::{Codec, is_keyframe};
use crate::sfu::media::{PT_H264, PT_OPUS, PT_RED, PT_VP8, codecs};
use crate::sfu::munger::SeqUnwrapper;
use crate::sfu::protocol::PcKind;

/// Signaling replies (joined, the first offer or answer) must come within this.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The server drops a signaling connection silent for 60 s.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A gap this long between video packets, once video flowed, is a freeze.
const FREEZE_GAP: Duration = Duration::from_millis(500);

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

fn ctx(local: SocketAddr, peer: SocketAddr) -> rtc::shared::TransportContext {
    crate::sfu::media::udp_context(local, peer)
}

fn peer_connection(
    kind: PcKind,
    local: SocketAddr,
    simulcast: bool,
    feedback: bool,
) -> Result<RTCPeerConnection, LoadError> {
    crate::sfu::media::client_peer_connection(kind, local, simulcast, feedback, Instant::now())
        .map_err(|e| LoadError::Rtc(e.to_string()))
}

async fn bind(ip: std::net::IpAddr) -> Result<(UdpSocket, SocketAddr), LoadError> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::DGRAM,
        None,
    )
    .map_err(|e| LoadError::Net(format!("UDP socket: {e}")))?;
    // Room for a keyframe burst (and a cache replay) to a viewer.
    let _ = sock.set_recv_buffer_size(1 << 20);
    sock.bind(&SocketAddr::new(ip, 0).into())
        .map_err(|e| LoadError::Net(format!("UDP bind: {e}")))?;
    sock.set_nonblocking(true)
        .map_err(|e| LoadError::Net(format!("UDP socket: {e}")))?;
    let udp = UdpSocket::from_std(sock.into()).map_err(|e| LoadError::Net(format!("UDP socket: {e}")))?;
    let local = udp
        .local_addr()
        .map_err(|e| LoadError::Net(format!("UDP socket: {e}")))?;
    Ok((udp, local))
}

async fn send_json(ws: &mut Ws, v: Value) -> Result<(), LoadError> {
    ws.send(Message::text(v.to_string()))
        .await
        .map_err(|e| LoadError::Net(format!("signaling send: {e}")))
}

/// Joins with `token` (on the session `cookie` of its account) and waits
/// for `joined`, which it returns with the socket.
async fn join(ep: &Endpoint, cookie: &str, token: &str) -> Result<(Ws, Value), LoadError> {
    let mut ws = ep.websocket(cookie).await?;
    send_json(&mut ws, json!({ "type": "join", "token": token })).await?;
    let deadline = tokio::time::Instant::now() + SIGNAL_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| LoadError::Net("no `joined` within 30 s".into()))?;
        let Some(Ok(Message::Text(t))) = m else {
            return Err(LoadError::Net("signaling closed before `joined`".into()));
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("joined") => return Ok((ws, v)),
            Some("error") => return Err(LoadError::Api(format!("join refused: {v}"))),
            _ => {}
        }
    }
}

/// Moves everything `pc` wants to send onto the socket.
async fn flush(pc: &mut RTCPeerConnection, udp: &UdpSocket) {
    while let Some(w) = pc.poll_write() {
        let _ = udp.send_to(&w.message, w.transport.peer_addr).await;
    }
}

fn next_wake(pc: &mut RTCPeerConnection, cap: Duration) -> tokio::time::Instant {
    let now = Instant::now();
    let t = pc
        .poll_timeout()
        .unwrap_or(now + cap)
        .min(now + cap)
        .max(now + Duration::from_millis(1));
    tokio::time::Instant::from_std(t)
}

// ------------------------------------------------------------------ viewers

/// Distinct packets received against those sent, over a sliding window of
/// sequence numbers (retransmitted and probe copies are not counted twice).
#[derive(Default, Clone)]
pub struct SeqTracker {
    unwrap: SeqUnwrapper,
    first: Option<u64>,
    highest: u64,
    bits: [u64; 16],
    pub unique: u64,
}

impl SeqTracker {
    pub fn on_packet(&mut self, seq: u16) {
        let ext = self.unwrap.update(seq);
        let first = *self.first.get_or_insert(ext);
        if ext < first {
            return;
        }
        if self.unique == 0 {
            self.highest = ext;
        }
        if ext > self.highest {
            let step = ext - self.highest;
            if step >= 1024 {
                self.bits = [0; 16];
            } else {
                for e in self.highest + 1..=ext {
                    self.bits[((e % 1024) / 64) as usize] &= !(1u64 << (e % 64));
                }
            }
            self.highest = ext;
        } else if self.highest - ext >= 1024 {
            return;
        }
        let (w, b) = (((ext % 1024) / 64) as usize, ext % 64);
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.unique += 1;
        }
    }

    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest + 1 - f)
    }
}

/// What one viewer saw; shared with the reporter, which snapshots it at the
/// start and the end of the measurement window.
#[derive(Default, Clone)]
pub struct ViewerStats {
    pub joined_ms: Option<f64>,
    pub first_frame_ms: Option<f64>,
    pub error: Option<String>,
    pub video: HashMap<u32, SeqTracker>,
    pub audio_packets: u64,
    pub video_bytes: u64,
    pub freezes: u64,
    pub last_video: Option<Instant>,
    pub layer_msgs: Vec<Value>,
    /// Video tracks in the server's latest sub offer (what should arrive).
    pub offered_video: usize,
}

impl ViewerStats {
    pub fn video_unique(&self) -> u64 {
        self.video.values().map(|t| t.unique).sum()
    }

    pub fn video_expected(&self) -> u64 {
        self.video.values().map(|t| t.expected()).sum()
    }
}

pub struct ViewerOpts {
    pub ep: Endpoint,
    /// The viewer account's session cookie.
    pub cookie: String,
    pub token: String,
    pub bind_ip: std::net::IpAddr,
    /// REMB to report (bit/s), as a browser's estimate; 0 = none.
    pub remb_bps: u64,
    pub until: Instant,
}

pub async fn run_viewer(o: ViewerOpts, stats: Arc<Mutex<ViewerStats>>) {
    if let Err(e) = viewer(o, &stats).await
        && let Ok(mut s) = stats.lock()
    {
        s.error = Some(e.to_string());
    }
}

async fn viewer(o: ViewerOpts, stats: &Mutex<ViewerStats>) -> Result<(), LoadError> {
    let t0 = Instant::now();
    let (mut ws, _) = join(&o.ep, &o.cookie, &o.token).await?;
    if let Ok(mut s) = stats.lock() {
        s.joined_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let (udp, local) = bind(o.bind_ip).await?;
    let mut pc = peer_connection(PcKind::Sub, local, false, false)?;
    let mut buf = vec![0u8; 2048];
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut remb = tokio::time::interval(Duration::from_secs(1));
    let until = tokio::time::Instant::from_std(o.until);
    // A REMB names the streams it is about (browsers list every SSRC they
    // receive; one without any is not taken as an estimate).
    let mut ssrcs: Vec<u32> = Vec::new();
    loop {
        let wake = next_wake(&mut pc, Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            m = ws.next() => {
                let Some(Ok(m)) = m else { return Err(LoadError::Net("signaling closed".into())) };
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("offer") if v["pc"] == "sub" => {
                        if let (Ok(mut s), Some(t)) = (stats.lock(), v["tracks"].as_object()) {
                            s.offered_video = t.values().filter(|x| x["kind"] == "video").count();
                        }
                        let sdp = v["sdp"].as_str().unwrap_or_default().to_string();
                        let now = Instant::now();
                        let e = |e: rtc::shared::error::Error| LoadError::Rtc(e.to_string());
                        pc.set_remote_description(now, RTCSessionDescription::offer(sdp).map_err(e)?).map_err(e)?;
                        let answer = pc.create_answer(None).map_err(e)?;
                        pc.set_local_description(now, answer).map_err(e)?;
                        let sdp = pc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
                        send_json(&mut ws, json!({ "type": "answer", "pc": "sub", "sdp": sdp })).await?;
                    }
                    Some("link") => {
                        if let Ok(mut s) = stats.lock() {
                            s.layer_msgs.push(v);
                        }
                    }
                    Some("error") if v["fatal"] == true => {
                        return Err(LoadError::Api(format!("signaling error: {v}")));
                    }
                    _ => {}
                }
            }
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let _ = pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: ctx(local, from),
                        message: BytesMut::from(&buf[..n]),
                    });
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let _ = pc.handle_timeout(Instant::now());
            }
            _ = ping.tick() => send_json(&mut ws, json!({ "type": "ping" })).await?,
            _ = remb.tick(), if o.remb_bps > 0 && !ssrcs.is_empty() => send_remb(&mut pc, o.remb_bps, &ssrcs),
        }
        while pc.poll_event().is_some() {}
        while let Some(m) = pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = m.message {
                if !ssrcs.contains(&p.header.ssrc) && ssrcs.len() < 16 {
                    ssrcs.push(p.header.ssrc);
                }
                on_rtp(stats, t0, &p);
            }
        }
        flush(&mut pc, &udp).await;
    }
    let _ = send_json(&mut ws, json!({ "type": "leave" })).await;
    let _ = pc.close();
    flush(&mut pc, &udp).await;
    Ok(())
}

fn on_rtp(stats: &Mutex<ViewerStats>, t0: Instant, p: &rtc::rtp::Packet) {
    let Ok(mut s) = stats.lock() else { return };
    let codec = match p.header.payload_type {
        PT_OPUS | PT_RED => {
            s.audio_packets += 1;
            return;
        }
        PT_VP8 => Codec::Vp8,
        PT_H264 => Codec::H264,
        // Retransmissions and probe padding arrive unwrapped under the
        // media payload type; anything else is not media.
        _ => return,
    };
    let now = Instant::now();
    if s.first_frame_ms.is_none() && is_keyframe(codec, &p.payload) {
        s.first_frame_ms = Some(t0.elapsed().as_secs_f64() * 1000.0 - s.joined_ms.unwrap_or(0.0));
    }
    if s.first_frame_ms.is_some() {
        if let Some(last) = s.last_video
            && now.saturating_duration_since(last) > FREEZE_GAP
        {
            s.freezes += 1;
        }
        s.last_video = Some(now);
    }
    s.video_bytes += p.payload.len() as u64 + 12;
    s.video
        .entry(p.header.ssrc)
        .or_default()
        .on_packet(p.header.sequence_number);
}

fn send_remb(pc: &mut RTCPeerConnection, bps: u64, ssrcs: &[u32]) {
    let ids: Vec<usize> = pc.get_transceivers().collect();
    for t in ids {
        let Some(r) = pc.rtp_transceiver(t).and_then(|t| t.receiver()) else {
            continue;
        };
        if let Some(mut rr) = pc.rtp_receiver(r) {
            let remb =
                rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate {
                    sender_ssrc: 1,
                    bitrate: bps as f32,
                    ssrcs: ssrcs.to_vec(),
                };
            let _ = rr.write_rtcp(Instant::now(), vec![Box::new(remb)]);
            return;
        }
    }
}

// ---------------------------------------------------------------- presenter

/// What the synthetic presenter sent and was asked for.
#[derive(Default, Clone)]
pub struct PresenterStats {
    pub connected_ms: Option<f64>,
    pub error: Option<String>,
    pub packets_sent: u64,
    /// Keyframe requests (PLI) received, by layer, with their time.
    pub plis: Vec<Vec<Instant>>,
    pub keyframes_sent: u64,
}

pub struct PresenterOpts {
    pub ep: Endpoint,
    /// The presenter account's session cookie.
    pub cookie: String,
    pub token: String,
    pub bind_ip: std::net::IpAddr,
    /// Layer bitrates, lowest first (bit/s).
    pub layers_bps: Vec<u64>,
    pub fps: u32,
    pub gop: Duration,
    pub until: Instant,
}

pub async fn run_presenter(o: PresenterOpts, stats: Arc<Mutex<PresenterStats>>) {
    if let Err(e) = presenter(o, &stats).await
        && let Ok(mut s) = stats.lock()
    {
        s.error = Some(e.to_string());
    }
}

const RIDS: [&str; 3] = ["q", "h", "f"];
/// Payload bytes per video packet: what browsers send (fits any path MTU
/// with SRTP and the header extensions).
const MAX_PAYLOAD: usize = 1100;

struct Layer {
    ssrc: u32,
    seq: u16,
    pid: u16,
    ts: u32,
    want_key: bool,
    last_key: Option<Instant>,
}

async fn presenter(o: PresenterOpts, stats: &Mutex<PresenterStats>) -> Result<(), LoadError> {
    let t0 = Instant::now();
    let n = o.layers_bps.len().clamp(1, 3);
    let (mut ws, joined) = join(&o.ep, &o.cookie, &o.token).await?;
    let broadcast = joined["room"]["kind"] == "broadcast";
    let (udp, local) = bind(o.bind_ip).await?;
    let mut pc = peer_connection(PcKind::Pub, local, true, true)?;
    let e = |e: rtc::shared::error::Error| LoadError::Rtc(e.to_string());
    let all = codecs(PcKind::Pub);
    let vp8 = all
        .iter()
        .find(|(c, _)| c.rtp_codec.mime_type == "video/VP8")
        .map(|(c, _)| c.rtp_codec.clone())
        .ok_or_else(|| LoadError::Rtc("no VP8".into()))?;
    let opus = all
        .iter()
        .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
        .map(|(c, _)| c.rtp_codec.clone())
        .ok_or_else(|| LoadError::Rtc("no Opus".into()))?;
    let mut layers: Vec<Layer> = (0..n)
        .map(|_| Layer {
            ssrc: rand::random(),
            seq: rand::random(),
            pid: rand::random::<u16>() & 0x7fff,
            ts: rand::random(),
            want_key: true,
            last_key: None,
        })
        .collect();
    let encodings = layers
        .iter()
        .enumerate()
        .map(|(i, l)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: RIDS[i + 3 - n].to_string(),
                ssrc: Some(l.ssrc),
                ..Default::default()
            },
            active: true,
            codec: vp8.clone(),
            ..Default::default()
        })
        .collect();
    pc.add_track(MediaStreamTrack::new(
        "lecture".into(),
        "camera".into(),
        "camera".into(),
        RtpCodecKind::Video,
        encodings,
    ))
    .map_err(e)?;
    let audio_ssrc: u32 = rand::random();
    pc.add_track(MediaStreamTrack::new(
        "lecture".into(),
        "mic".into(),
        "mic".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(audio_ssrc),
                ..Default::default()
            },
            active: true,
            codec: opus,
            ..Default::default()
        }],
    ))
    .map_err(e)?;
    let offer = pc.create_offer(None).map_err(e)?;
    pc.set_local_description(Instant::now(), offer).map_err(e)?;
    let sdp = pc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
    let ext_id = |uri: &str| {
        sdp.lines()
            .find(|l| l.starts_with("a=extmap:") && l.ends_with(uri))
            .and_then(|l| l["a=extmap:".len()..].split([' ', '/']).next()?.parse::<u8>().ok())
    };
    let (Some(mid_ext), Some(rid_ext)) = (
        ext_id("urn:ietf:params:rtp-hdrext:sdes:mid"),
        ext_id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
    ) else {
        return Err(LoadError::Rtc("the offer has no mid/rid extensions".into()));
    };
    let mut tracks = BTreeMap::new();
    let mut video_mid = String::new();
    let mut audio_mid = String::new();
    // Transceivers in the order the tracks were added: video, then audio.
    let ids: Vec<usize> = pc.get_transceivers().collect();
    for (i, t) in ids.into_iter().enumerate() {
        if let Some(m) = pc.rtp_transceiver(t).and_then(|tr| tr.mid().clone()) {
            if i == 0 {
                video_mid = m.clone();
                tracks.insert(m, "camera");
            } else {
                audio_mid = m.clone();
                tracks.insert(m, "mic");
            }
        }
    }
    send_json(
        &mut ws,
        json!({ "type": "offer", "pc": "pub", "sdp": sdp, "tracks": tracks }),
    )
    .await?;
    // On air at once: the load viewers should receive from the first packet
    // (a consultation is always on air).
    if broadcast {
        send_json(&mut ws, json!({ "type": "live", "live": true })).await?;
    }
    let mut buf = vec![0u8; 2048];
    let mut ping = tokio::time::interval(PING_EVERY);
    let frame_every = Duration::from_secs_f64(1.0 / f64::from(o.fps.max(1)));
    let mut frames = tokio::time::interval(frame_every);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    audio.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut audio_seq, mut audio_ts) = (rand::random::<u16>(), rand::random::<u32>());
    let mut connected = false;
    let until = tokio::time::Instant::from_std(o.until);
    let gop_frames = (o.gop.as_secs_f64() * f64::from(o.fps)).max(1.0);
    if let Ok(mut s) = stats.lock() {
        s.plis = vec![Vec::new(); n];
    }
    loop {
        let wake = next_wake(&mut pc, Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            m = ws.next() => {
                let Some(Ok(m)) = m else { return Err(LoadError::Net("signaling closed".into())) };
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("answer") => {
                        let sdp = v["sdp"].as_str().unwrap_or_default().to_string();
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp).map_err(e)?).map_err(e)?;
                    }
                    Some("error") => return Err(LoadError::Api(format!("signaling error: {v}"))),
                    _ => {}
                }
            }
            r = udp.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    let _ = pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: ctx(local, from),
                        message: BytesMut::from(&buf[..len]),
                    });
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let _ = pc.handle_timeout(Instant::now());
            }
            _ = ping.tick() => send_json(&mut ws, json!({ "type": "ping" })).await?,
            _ = frames.tick(), if connected => {
                let now = Instant::now();
                let mut sent = 0u64;
                let mut keys = 0u64;
                for (i, l) in layers.iter_mut().enumerate() {
                    let periodic = l.last_key.is_none_or(|k| now.saturating_duration_since(k) >= o.gop);
                    let key = l.want_key || periodic;
                    // Keyframes 4x a delta frame; deltas sized so the layer
                    // averages its bitrate over a group.
                    let delta = o.layers_bps[i] as f64 / 8.0 / f64::from(o.fps) * gop_frames / (gop_frames + 3.0);
                    let size = (if key { delta * 4.0 } else { delta }).max(64.0) as usize;
                    l.ts = l.ts.wrapping_add(90_000 / o.fps.max(1));
                    l.pid = (l.pid + 1) & 0x7fff;
                    let rid = RIDS[i + 3 - n];
                    let count = size.div_ceil(MAX_PAYLOAD);
                    for k in 0..count {
                        let len = if k + 1 == count { size - k * MAX_PAYLOAD } else { MAX_PAYLOAD }.max(16);
                        let mut payload = vec![0u8; len];
                        let start = if k == 0 { 0x10 } else { 0x00 };
                        payload[..4].copy_from_slice(&[0x80 | start, 0x80, 0x80 | (l.pid >> 8) as u8, l.pid as u8]);
                        if k == 0 && key {
                            payload[4..14].copy_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
                        } else {
                            payload[4] = 0x01;
                        }
                        let mut header = rtc::rtp::header::Header {
                            version: 2,
                            marker: k + 1 == count,
                            payload_type: PT_VP8,
                            sequence_number: l.seq,
                            timestamp: l.ts,
                            ssrc: l.ssrc,
                            extension: true,
                            extension_profile: 0xBEDE,
                            ..Default::default()
                        };
                        let _ = header.set_extension(mid_ext, Bytes::from(video_mid.clone().into_bytes()));
                        let _ = header.set_extension(rid_ext, Bytes::from_static(rid.as_bytes()));
                        l.seq = l.seq.wrapping_add(1);
                        if pc.handle_write(TaggedRTCMessage {
                            now,
                            message: RTCMessage::RtpPacket(String::new(), rtc::rtp::Packet { header, payload: Bytes::from(payload) }),
                        }).is_ok() {
                            sent += 1;
                        }
                    }
                    if key {
                        l.want_key = false;
                        l.last_key = Some(now);
                        keys += 1;
                    }
                }
                if let Ok(mut s) = stats.lock() {
                    s.packets_sent += sent;
                    s.keyframes_sent += keys;
                }
            }
            _ = audio.tick(), if connected => {
                let mut header = rtc::rtp::header::Header {
                    version: 2,
                    payload_type: PT_OPUS,
                    sequence_number: audio_seq,
                    timestamp: audio_ts,
                    ssrc: audio_ssrc,
                    extension: true,
                    extension_profile: 0xBEDE,
                    ..Default::default()
                };
                let _ = header.set_extension(mid_ext, Bytes::from(audio_mid.clone().into_bytes()));
                audio_seq = audio_seq.wrapping_add(1);
                audio_ts = audio_ts.wrapping_add(960);
                let _ = pc.handle_write(TaggedRTCMessage {
                    now: Instant::now(),
                    message: RTCMessage::RtpPacket(String::new(), rtc::rtp::Packet { header, payload: Bytes::from(vec![0xfcu8; 80]) }),
                });
            }
        }
        while let Some(ev) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected) = ev {
                connected = true;
                if let Ok(mut s) = stats.lock() {
                    s.connected_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        while let Some(m) = pc.poll_read() {
            if let RTCMessage::RtcpPacket(_, pkts) = m.message {
                for p in pkts {
                    if let Some(pli) = p
                        .as_any()
                        .downcast_ref::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>(
                    ) && let Some(i) = layers.iter().position(|l| l.ssrc == pli.media_ssrc)
                    {
                        layers[i].want_key = true;
                        if let Ok(mut s) = stats.lock() {
                            s.plis[i].push(Instant::now());
                        }
                    }
                }
            }
        }
        flush(&mut pc, &udp).await;
    }
    let _ = send_json(&mut ws, json!({ "type": "leave" })).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_each_packet_once_and_sees_gaps() {
        let mut t = SeqTracker::default();
        for s in [65530u16, 65531, 65533, 65531, 0, 1, 65534, 65535] {
            t.on_packet(s);
        }
        assert_eq!(t.expected(), 8);
        assert_eq!(t.unique, 7);
        // A jump far ahead resets the window without counting the hole twice.
        t.on_packet(3000);
        assert_eq!(t.unique, 8);
        assert_eq!(t.expected(), 3000 + 65536 - 65530 + 1);
    }
}
