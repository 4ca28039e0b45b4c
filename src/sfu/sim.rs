//! In-memory participants for driving the engine without sockets or a real
//! clock: each simulated browser is a pair of `rtc` peer connections, and the
//! "network" is a loop that hands datagrams between them and the engine in
//! virtual time. Engine tests and the forwarding benchmark use it, so both
//! exercise real ICE, DTLS, SRTP and SDP, only the wire is missing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext};
use tokio::sync::oneshot;

use super::SfuMetrics;
use super::client_queue::{ClientRx, client_queue};
use super::engine::{Command, Engine, EngineConfig, NewParticipant, RoomOwner};
use super::media::codecs;
use super::protocol::{ClientMsg, PcKind, Role, RoomKind, ServerMsg, Source};

/// Packets of a simulcast layer that name it (mid/rid header extensions).
pub const SIMULCAST_NAMED_PACKETS: u32 = 20;

pub const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 7882);

fn ctx(local: SocketAddr, peer: SocketAddr) -> TransportContext {
    super::media::udp_context(local, peer)
}

/// Decides, per datagram, whether the simulated link loses it.
pub type LossFn = Box<dyn FnMut(&[u8]) -> bool>;

pub struct SimClient {
    pub id: String,
    pub pubc: RTCPeerConnection,
    pub subc: RTCPeerConnection,
    pub pub_addr: SocketAddr,
    pub sub_addr: SocketAddr,
    rx: ClientRx,
    conn: u64,
    /// Its page stopped reading signaling (see [`Net::join_stalled`]).
    pub stalled: bool,
    pub messages: Vec<ServerMsg>,
    /// RTP packets received on `sub`, by SSRC.
    pub received: HashMap<u32, u64>,
    pub video_ssrc: Option<u32>,
    /// Sequence numbers delivered for each SSRC (RTX already unwrapped).
    pub seqs: HashMap<u32, Vec<u16>>,
    /// The first RTP payload received on `sub`.
    pub first_payload: Option<Bytes>,
    /// The last RTP payload received on `sub` (the sim's layers differ in size).
    pub last_payload: Option<Bytes>,
    /// VP8 PictureIDs received, in arrival order.
    pub picture_ids: Vec<u16>,
    /// RTP payload bytes received on `sub`, retransmissions included.
    pub received_bytes: u64,
    /// Tests emulating a receive-side estimator keep its state here.
    pub estimate: u64,
    /// Simulcast publisher: keyframe requests (PLI) received, with their
    /// virtual time, by media SSRC.
    pub plis: HashMap<u32, Vec<Instant>>,
    /// Simulcast publisher: the SSRC of each layer, lowest first, and the
    /// negotiated mid/rid extension ids with the track's mid.
    pub layer_ssrcs: Vec<u32>,
    simulcast_ext: Option<(u8, u8, String)>,
    /// Packets sent per simulcast layer: like a browser, the client names
    /// the layer (mid/rid extensions) on its first packets only.
    layer_sent: [u32; 3],
    /// Drop this client's outgoing (to the SFU) datagrams when it returns true.
    pub uplink_loss: Option<LossFn>,
    /// Drop datagrams towards this client when it returns true.
    pub downlink_loss: Option<LossFn>,
    /// Sources published through `publish_video_as`, in transceiver order.
    published: Vec<Source>,
}

fn client_pc(addr: SocketAddr, kind: PcKind, now: Instant) -> RTCPeerConnection {
    // Like a browser: NACKs, receiver reports and TWCC feedback.
    super::media::client_peer_connection(kind, addr, false, false, now).expect("client peer connection")
}

pub struct Net {
    pub engine: Engine,
    pub clients: Vec<SimClient>,
    pub now: Instant,
    pub metrics: Arc<SfuMetrics>,
    pub room: String,
    /// Invited participants not joined yet, (participant id, account) (see [`Net::with_late`]).
    late: Vec<(String, String)>,
    /// Wall-clock time spent inside `Engine::handle_datagram` and the
    /// number of calls, for the forwarding benchmark.
    pub engine_busy: Duration,
    pub engine_calls: u64,
    /// Of `engine_busy`, the part spent in `handle_timeout`.
    pub timer_busy: Duration,
    pub latencies: Vec<Duration>,
    pub measure: bool,
    /// Called with true before and false after every engine call, so a
    /// benchmark can attribute allocations to the engine.
    pub engine_scope: fn(bool),
}

impl Net {
    pub fn new(cfg_tweak: impl FnOnce(&mut EngineConfig), names: &[&str]) -> Net {
        Self::with_scope(cfg_tweak, names, |_| {})
    }

    /// All of `names` invited; only the first `joined` join now, the others
    /// one by one with [`Net::join_next`].
    pub fn with_late(cfg_tweak: impl FnOnce(&mut EngineConfig), names: &[&str], joined: usize) -> Net {
        Self::build(cfg_tweak, names, |_| {}, joined, RoomKind::Consultation)
    }

    /// A broadcast room: the first name presents (role expert), the others
    /// watch (role clinic); the first `joined` join now.
    pub fn broadcast(names: &[&str], joined: usize) -> Net {
        Self::build(|_| {}, names, |_| {}, joined, RoomKind::Broadcast)
    }

    pub fn with_scope(cfg_tweak: impl FnOnce(&mut EngineConfig), names: &[&str], engine_scope: fn(bool)) -> Net {
        Self::build(cfg_tweak, names, engine_scope, names.len(), RoomKind::Consultation)
    }

    /// The next invited participant joins (client index = join order).
    pub fn join_next(&mut self) {
        if self.late.is_empty() {
            return;
        }
        let (pid, account) = self.late.remove(0);
        let i = self.clients.len();
        self.join(i, &pid, &account, 1024);
    }

    /// The next invited participant joins with the gateway's signaling queue
    /// depth, and its page never reads a message (a page that hangs, or a
    /// socket whose reader stopped): the engine's end is all there is.
    pub fn join_stalled(&mut self) {
        if self.late.is_empty() {
            return;
        }
        let (pid, account) = self.late.remove(0);
        let i = self.clients.len();
        self.join(i, &pid, &account, super::client_queue::DEPTH);
        self.clients[i].stalled = true;
    }

    /// What a stalled client's queue holds (in order), and why its session
    /// was ended, if it was.
    pub fn stalled_queue(&mut self, i: usize) -> (Vec<ServerMsg>, Option<super::protocol::ErrorCode>) {
        let c = &mut self.clients[i];
        let mut out = Vec::new();
        while let Some(m) = c.rx.try_recv() {
            out.push(m);
        }
        (out, c.rx.end_reason().map(|r| r.0))
    }

    fn build(
        cfg_tweak: impl FnOnce(&mut EngineConfig),
        names: &[&str],
        engine_scope: fn(bool),
        joined: usize,
        kind: RoomKind,
    ) -> Net {
        let now = Instant::now();
        let mut cfg = EngineConfig {
            local_addr: SERVER,
            announce: vec![SERVER],
            max_rooms: 10,
            max_participants: 64,
            max_viewers: 600,
            max_tracks: 3,
            peer_timeout: Duration::from_secs(20),
            history: Duration::from_secs(3),
            pli_interval: Duration::from_millis(500),
            empty_room_grace: Duration::from_secs(600),
        };
        cfg_tweak(&mut cfg);
        let metrics = Arc::new(SfuMetrics::default());
        let mut engine = Engine::new(cfg, metrics.clone(), now);
        let (tx, mut rx) = oneshot::channel();
        engine.handle_command(
            now,
            Command::CreateRoom {
                title: "sim".into(),
                kind,
                owner: RoomOwner::Account("sim".into()),
                ttl: Duration::from_secs(24 * 3600),
                participants: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| NewParticipant {
                        account: n.to_string(),
                        name: n.to_string(),
                        role: if kind == RoomKind::Broadcast && i > 0 {
                            Role::Clinic
                        } else {
                            Role::Expert
                        },
                    })
                    .collect(),
                reply: tx,
            },
        );
        let created = rx.try_recv().expect("reply").expect("room");
        let mut net = Net {
            engine,
            clients: Vec::new(),
            now,
            metrics,
            room: created.id.clone(),
            late: Vec::new(),
            engine_busy: Duration::ZERO,
            engine_calls: 0,
            timer_busy: Duration::ZERO,
            latencies: Vec::new(),
            measure: false,
            engine_scope,
        };
        for (i, inv) in created.participants.iter().enumerate() {
            if i < joined {
                net.join(i, &inv.id, &inv.participant.account, 1024);
            } else {
                net.late.push((inv.id.clone(), inv.participant.account.clone()));
            }
        }
        if kind == RoomKind::Broadcast && joined > 0 {
            // On air from the start; `set_live` takes it off.
            net.set_live(true);
        }
        net
    }

    fn join(&mut self, i: usize, pid: &str, account: &str, depth: usize) {
        let ip = std::net::Ipv4Addr::new(10, 1, (i / 200) as u8, (i % 200) as u8 + 1);
        let pub_addr = SocketAddr::new(ip.into(), 5000);
        let sub_addr = SocketAddr::new(ip.into(), 5001);
        let (tx, rx) = client_queue(depth, self.metrics.clone());
        let (rtx, mut rrx) = oneshot::channel();
        let conn = 1000 + i as u64;
        (self.engine_scope)(true);
        self.engine.handle_command(
            self.now,
            Command::Join {
                room: self.room.clone(),
                participant: pid.to_string(),
                account: account.to_string(),
                conn,
                tx,
                reply: rtx,
            },
        );
        (self.engine_scope)(false);
        rrx.try_recv().expect("join reply").expect("joined");
        self.clients.push(SimClient {
            id: pid.to_string(),
            pubc: client_pc(pub_addr, PcKind::Pub, self.now),
            subc: client_pc(sub_addr, PcKind::Sub, self.now),
            pub_addr,
            sub_addr,
            rx,
            conn,
            stalled: false,
            messages: Vec::new(),
            received: HashMap::new(),
            video_ssrc: None,
            seqs: HashMap::new(),
            first_payload: None,
            last_payload: None,
            picture_ids: Vec::new(),
            received_bytes: 0,
            estimate: 0,
            plis: HashMap::new(),
            layer_ssrcs: Vec::new(),
            simulcast_ext: None,
            layer_sent: [0; 3],
            uplink_loss: None,
            downlink_loss: None,
            published: Vec::new(),
        });
    }

    /// The presenter (client 0) goes on or off air.
    pub fn set_live(&mut self, live: bool) {
        self.signal(0, ClientMsg::Live { live });
    }

    /// Client `i` sends a signaling message.
    pub fn signal(&mut self, i: usize, msg: ClientMsg) {
        let c = &self.clients[i];
        let cmd = Command::Signal {
            participant: c.id.clone(),
            conn: c.conn,
            msg,
        };
        (self.engine_scope)(true);
        self.engine.handle_command(self.now, cmd);
        (self.engine_scope)(false);
    }

    /// Client `i` publishes one video track (VP8) and, optionally, a data channel.
    pub fn publish_video(&mut self, i: usize) {
        let ssrc = self.publish_video_as(i, Source::Camera);
        self.clients[i].video_ssrc = Some(ssrc);
    }

    /// Client `i` adds one more VP8 track labelled `source` (the first one
    /// published is the camera, later ones this) and renegotiates; returns
    /// its SSRC for [`Net::send_video_on`].
    pub fn publish_video_as(&mut self, i: usize, source: Source) -> u32 {
        let ssrc: u32 = rand::random();
        let c = &mut self.clients[i];
        let (mime, kind) = if source == Source::Mic {
            ("audio/opus", RtpCodecKind::Audio)
        } else {
            ("video/VP8", RtpCodecKind::Video)
        };
        let codec = codecs(PcKind::Pub)
            .into_iter()
            .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .map(|(c, _)| c.rtp_codec)
            .expect("codec");
        c.published.push(source);
        let track = MediaStreamTrack::new(
            format!("s-{i}"),
            format!("t-{i}-{ssrc}"),
            "cam".into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                active: true,
                codec,
                ..Default::default()
            }],
        );
        c.pubc.add_track(track).expect("add track");
        let offer = c.pubc.create_offer(None).expect("offer");
        c.pubc.set_local_description(self.now, offer).expect("set local");
        let sdp = c.pubc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
        let mut tracks = BTreeMap::new();
        let ids: Vec<usize> = c.pubc.get_transceivers().collect();
        for (n, t) in ids.into_iter().enumerate() {
            if let Some(mid) = c.pubc.rtp_transceiver(t).and_then(|t| t.mid().clone()) {
                tracks.insert(mid, c.published.get(n).copied().unwrap_or(source));
            }
        }
        self.signal(
            i,
            ClientMsg::Offer {
                pc: PcKind::Pub,
                sdp,
                tracks,
            },
        );
        ssrc
    }

    /// Client `i` publishes one VP8 camera track as three simulcast layers
    /// (rids q, h, f), as the presenter page does.
    pub fn publish_simulcast(&mut self, i: usize) {
        let c = &mut self.clients[i];
        // Keyframe requests reach the test (counted per layer in `plis`).
        let pc = super::media::client_peer_connection(PcKind::Pub, c.pub_addr, true, true, self.now)
            .expect("client peer connection");
        c.pubc = pc;
        c.published = vec![Source::Camera];
        let codec = codecs(PcKind::Pub)
            .into_iter()
            .find(|(c, _)| c.rtp_codec.mime_type == "video/VP8")
            .map(|(c, _)| c.rtp_codec)
            .expect("vp8");
        let ssrcs: Vec<u32> = (0..3).map(|_| rand::random()).collect();
        let encodings = ["q", "h", "f"]
            .iter()
            .zip(&ssrcs)
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: rid.to_string(),
                    ssrc: Some(*ssrc),
                    ..Default::default()
                },
                active: true,
                codec: codec.clone(),
                ..Default::default()
            })
            .collect();
        let track = MediaStreamTrack::new(
            format!("s-{i}"),
            format!("t-{i}"),
            "cam".into(),
            RtpCodecKind::Video,
            encodings,
        );
        c.pubc.add_track(track).expect("add track");
        c.layer_ssrcs = ssrcs;
        let offer = c.pubc.create_offer(None).expect("offer");
        c.pubc.set_local_description(self.now, offer).expect("set local");
        let sdp = c.pubc.local_description().map(|d| d.sdp.clone()).unwrap_or_default();
        let ext_id = |uri: &str| {
            sdp.lines()
                .find(|l| l.starts_with("a=extmap:") && l.ends_with(uri))
                .and_then(|l| l["a=extmap:".len()..].split([' ', '/']).next()?.parse::<u8>().ok())
                .expect("extmap")
        };
        let mid_ext = ext_id("urn:ietf:params:rtp-hdrext:sdes:mid");
        let rid_ext = ext_id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id");
        let mut tracks = BTreeMap::new();
        let ids: Vec<usize> = c.pubc.get_transceivers().collect();
        let mut mid = String::new();
        for t in ids {
            if let Some(m) = c.pubc.rtp_transceiver(t).and_then(|t| t.mid().clone()) {
                mid = m.clone();
                tracks.insert(m, Source::Camera);
            }
        }
        c.simulcast_ext = Some((mid_ext, rid_ext, mid));
        self.signal(
            i,
            ClientMsg::Offer {
                pc: PcKind::Pub,
                sdp,
                tracks,
            },
        );
    }

    /// Sends one VP8 packet of simulcast `layer` (0..3) with PictureID `pid`.
    /// Only the first [`SIMULCAST_NAMED_PACKETS`] of a layer carry its mid
    /// and rid.
    pub fn send_layer(&mut self, i: usize, layer: usize, seq: u16, pid: u16, keyframe: bool, payload_len: usize) {
        let c = &mut self.clients[i];
        let (Some(&ssrc), Some((mid_ext, rid_ext, mid))) = (c.layer_ssrcs.get(layer), c.simulcast_ext.clone()) else {
            return;
        };
        let mut payload = vec![0u8; payload_len.max(16)];
        // VP8 descriptor: X=1, S=1; I=1 with a 15-bit PictureID; then the
        // frame tag (P bit 0 = keyframe) and, for keyframes, the start code.
        payload[..4].copy_from_slice(&[0x90, 0x80, 0x80 | (pid >> 8) as u8, pid as u8]);
        if keyframe {
            payload[4..14].copy_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else {
            payload[4] = 0x01;
        }
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: super::media::PT_VP8,
            sequence_number: seq,
            timestamp: u32::from(pid).wrapping_mul(3000),
            ssrc,
            extension: true,
            extension_profile: 0xBEDE,
            ..Default::default()
        };
        // A browser stops naming a stream once the receiver's reports show
        // it is known (Chrome: the first receiver report for the SSRC), so a
        // receiver that forgets the SSRC cannot learn it again.
        let sent = &mut c.layer_sent[layer.min(2)];
        *sent += 1;
        if *sent <= SIMULCAST_NAMED_PACKETS {
            let rid = ["q", "h", "f"][layer.min(2)];
            let _ = header.set_extension(mid_ext, Bytes::from(mid.into_bytes()));
            let _ = header.set_extension(rid_ext, Bytes::from_static(rid.as_bytes()));
        }
        let _ = c.pubc.handle_write(TaggedRTCMessage {
            now: self.now,
            message: RTCMessage::RtpPacket(
                String::new(),
                rtc::rtp::Packet {
                    header,
                    payload: Bytes::from(payload),
                },
            ),
        });
    }

    /// Client `i` reports a receive estimate (REMB) on its `sub` connection,
    /// as a browser does.
    pub fn send_remb(&mut self, i: usize, bps: u64) {
        let c = &mut self.clients[i];
        let ids: Vec<usize> = c.subc.get_transceivers().collect();
        let ssrcs: Vec<u32> = c.received.keys().copied().collect();
        for t in ids {
            let Some(r) = c.subc.rtp_transceiver(t).and_then(|t| t.receiver()) else {
                continue;
            };
            if let Some(mut rr) = c.subc.rtp_receiver(r) {
                let remb =
                    rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate {
                        sender_ssrc: 1,
                        bitrate: bps as f32,
                        ssrcs: ssrcs.clone(),
                    };
                let _ = rr.write_rtcp(self.now, vec![Box::new(remb)]);
                return;
            }
        }
    }

    /// Client `i` asks for a keyframe (PLI) of everything it receives, as a
    /// browser does while it cannot decode.
    pub fn send_pli(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let ssrcs: Vec<u32> = c.received.keys().copied().collect();
        let ids: Vec<usize> = c.subc.get_transceivers().collect();
        for t in ids {
            let Some(r) = c.subc.rtp_transceiver(t).and_then(|t| t.receiver()) else {
                continue;
            };
            if let Some(mut rr) = c.subc.rtp_receiver(r) {
                let pkts: Vec<Box<dyn rtc::rtcp::Packet>> = ssrcs
                    .iter()
                    .map(|&media_ssrc| {
                        Box::new(
                            rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                                sender_ssrc: 1,
                                media_ssrc,
                            },
                        ) as Box<dyn rtc::rtcp::Packet>
                    })
                    .collect();
                if !pkts.is_empty() {
                    let _ = rr.write_rtcp(self.now, pkts);
                }
                return;
            }
        }
    }

    /// Sends one VP8 packet from client `i`'s published track.
    pub fn send_video(&mut self, i: usize, seq: u16, ts: u32, keyframe: bool, payload_len: usize) {
        let Some(ssrc) = self.clients[i].video_ssrc else { return };
        self.send_video_on(i, ssrc, seq, ts, keyframe, payload_len);
    }

    /// Sends one VP8 packet on client `i`'s track with `ssrc`.
    pub fn send_video_on(&mut self, i: usize, ssrc: u32, seq: u16, ts: u32, keyframe: bool, payload_len: usize) {
        let c = &mut self.clients[i];
        let mut payload = vec![0u8; payload_len.max(4)];
        // VP8 descriptor: S=1, PID=0; then the frame tag (P bit 0 = keyframe)
        // and, for keyframes, the start code and a 640x360 size.
        payload[0] = 0x10;
        if keyframe {
            let hdr = [0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
            let n = hdr.len().min(payload.len() - 1);
            payload[1..1 + n].copy_from_slice(&hdr[..n]);
        } else {
            payload[1] = 0x01;
        }
        let pkt = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: super::media::PT_VP8,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        let _ = c.pubc.handle_write(TaggedRTCMessage {
            now: self.now,
            message: RTCMessage::RtpPacket(String::new(), pkt),
        });
    }

    /// Moves datagrams and signaling until nothing is left to move.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            // Client -> engine.
            for i in 0..self.clients.len() {
                for kind in [PcKind::Pub, PcKind::Sub] {
                    loop {
                        let c = &mut self.clients[i];
                        let (pc, from) = match kind {
                            PcKind::Pub => (&mut c.pubc, c.pub_addr),
                            PcKind::Sub => (&mut c.subc, c.sub_addr),
                        };
                        let Some(w) = pc.poll_write() else { break };
                        moved = true;
                        if let Some(f) = c.uplink_loss.as_mut()
                            && f(&w.message)
                        {
                            continue;
                        }
                        let media = i == 0 && kind == PcKind::Pub;
                        (self.engine_scope)(true);
                        let t0 = Instant::now();
                        self.engine.handle_datagram(self.now, from, &w.message);
                        let spent = t0.elapsed();
                        (self.engine_scope)(false);
                        if self.measure {
                            self.engine_busy += spent;
                            self.engine_calls += 1;
                            if media {
                                self.latencies.push(spent);
                            }
                        }
                    }
                }
            }
            // Engine -> clients.
            while let Some(t) = self.engine.poll_transmit() {
                moved = true;
                let Some(c) = self
                    .clients
                    .iter_mut()
                    .find(|c| c.pub_addr == t.to || c.sub_addr == t.to)
                else {
                    continue;
                };
                if let Some(f) = c.downlink_loss.as_mut()
                    && f(&t.data)
                {
                    continue;
                }
                let pc = if c.pub_addr == t.to { &mut c.pubc } else { &mut c.subc };
                let _ = pc.handle_read(TaggedBytesMut {
                    now: self.now,
                    transport: ctx(t.to, SERVER),
                    message: BytesMut::from(&t.data[..]),
                });
            }
            // Client-side reads, events and signaling.
            for i in 0..self.clients.len() {
                let c = &mut self.clients[i];
                while c.pubc.poll_event().is_some() {}
                while c.subc.poll_event().is_some() {}
                while let Some(m) = c.pubc.poll_read() {
                    if let RTCMessage::RtcpPacket(_, pkts) = m.message {
                        for p in pkts {
                            if let Some(pli) = p.as_any().downcast_ref::<
                                rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication,
                            >() {
                                c.plis.entry(pli.media_ssrc).or_default().push(self.now);
                            }
                        }
                    }
                }
                while let Some(m) = c.subc.poll_read() {
                    if let RTCMessage::RtpPacket(_, p) = m.message {
                        if c.first_payload.is_none() {
                            c.first_payload = Some(p.payload.clone());
                        }
                        c.received_bytes += p.payload.len() as u64 + 12;
                        c.last_payload = Some(p.payload.clone());
                        if let Some((_, _, pid)) = super::vp8::parse(&p.payload).and_then(|f| f.picture_id) {
                            c.picture_ids.push(pid);
                        }
                        *c.received.entry(p.header.ssrc).or_default() += 1;
                        c.seqs.entry(p.header.ssrc).or_default().push(p.header.sequence_number);
                    }
                }
                let mut pending = Vec::new();
                while let Some(m) = (!c.stalled).then(|| c.rx.try_recv()).flatten() {
                    pending.push(m);
                }
                for m in pending {
                    moved = true;
                    self.on_server_msg(i, m);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn on_server_msg(&mut self, i: usize, m: ServerMsg) {
        let now = self.now;
        match &m {
            ServerMsg::Answer { sdp, .. } => {
                let c = &mut self.clients[i];
                if let Ok(d) = RTCSessionDescription::answer(sdp.clone()) {
                    let _ = c.pubc.set_remote_description(now, d);
                }
            }
            ServerMsg::Offer { sdp, .. } => {
                let answer = {
                    let c = &mut self.clients[i];
                    let d = RTCSessionDescription::offer(sdp.clone()).expect("offer sdp");
                    c.subc.set_remote_description(now, d).expect("apply sub offer");
                    let a = c.subc.create_answer(None).expect("answer");
                    c.subc.set_local_description(now, a).expect("set answer");
                    c.subc.local_description().map(|d| d.sdp.clone()).unwrap_or_default()
                };
                self.signal(
                    i,
                    ClientMsg::Answer {
                        pc: PcKind::Sub,
                        sdp: answer,
                    },
                );
            }
            _ => {}
        }
        self.clients[i].messages.push(m);
    }

    /// Fires every due timer (engine and clients), then pumps.
    pub fn timers(&mut self) {
        let now = self.now;
        if self.engine.poll_timeout() <= now {
            (self.engine_scope)(true);
            let t0 = Instant::now();
            self.engine.handle_timeout(now);
            if self.measure {
                let spent = t0.elapsed();
                self.engine_busy += spent;
                self.timer_busy += spent;
            }
            (self.engine_scope)(false);
        }
        for c in &mut self.clients {
            for pc in [&mut c.pubc, &mut c.subc] {
                if pc.poll_timeout().is_some_and(|t| t <= now) {
                    let _ = pc.handle_timeout(now);
                }
            }
        }
        self.pump();
    }

    /// Advances virtual time in `step` increments.
    pub fn run_for(&mut self, d: Duration, step: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += step;
            self.timers();
        }
    }

    pub fn received_by(&self, i: usize) -> u64 {
        self.clients[i].received.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::protocol::ErrorCode;

    fn connected_pair() -> Net {
        let mut net = Net::new(|_| {}, &["a", "b"]);
        net.publish_video(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        net
    }

    /// Sends `n` packets at 100 packets/s, a keyframe every `gop` packets.
    fn stream(net: &mut Net, from: usize, start: u16, n: u16, gop: u16) {
        for i in start..start + n {
            net.send_video(from, i, i as u32 * 900, i % gop == 0, 1000);
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
    }

    #[test]
    fn a_late_joiner_is_served_the_cached_group_without_asking_the_publisher() {
        let mut net = Net::with_late(|_| {}, &["a", "b", "c"], 2);
        net.publish_video(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        // Two groups of 200 packets (2 s each); c arrives 1.5 s into the second.
        stream(&mut net, 0, 0, 350, 200);
        let pli = |n: &Net| n.metrics.pli_out.load(std::sync::atomic::Ordering::Relaxed);
        let replays = |n: &Net| n.metrics.gop_replays.load(std::sync::atomic::Ordering::Relaxed);
        let (pli_before, replays_before) = (pli(&net), replays(&net));
        net.join_next();
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        assert_eq!(net.received_by(2), 0, "nothing flows before the next packet");
        // Deltas only from here: without the cache, c could not decode any.
        stream(&mut net, 0, 350, 40, 1000);
        let got = net.received_by(2);
        assert!(
            got >= 185,
            "late joiner got {got} packets; expected the group 200..350 then 40 live"
        );
        let first = net.clients[2].first_payload.clone().unwrap_or_default();
        assert!(
            super::super::keyframe::is_keyframe(super::super::keyframe::Codec::Vp8, &first),
            "the late joiner's first packet is not a keyframe"
        );
        assert_eq!(pli(&net), pli_before, "the join cost the publisher a keyframe request");
        assert_eq!(replays(&net), replays_before + 1);
        // Its sequence is contiguous: the replay and the live packets join up.
        let seqs = net.clients[2].seqs.values().next().cloned().unwrap_or_default();
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1), "gap where the replay meets live packets");
        }
        // b, there from the start, is unaffected.
        assert!(net.received_by(1) >= 380);
    }

    /// Layer sizes of the simulated presenter: ~160, ~480 and ~1440 kbit/s at
    /// 100 packets/s each.
    const LAYER_BYTES: [usize; 3] = [200, 600, 1800];

    /// `n` packets per layer at 100 packets/s, a keyframe every `gop`; the
    /// REMBs of `rembs` (client, bps) every 250 ms.
    fn stream_layers(net: &mut Net, from: usize, start: u16, n: u16, gop: u16, rembs: &[(usize, u64)]) {
        for k in start..start + n {
            send_layers(net, from, k, k % gop == 0);
            if k % 25 == 0 {
                for &(c, bps) in rembs {
                    net.send_remb(c, bps);
                }
            }
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
    }

    /// Packet `k` of every layer from `from`; each layer has its own
    /// sequence and PictureID space.
    fn send_layers(net: &mut Net, from: usize, k: u16, keyframe: bool) {
        for (layer, bytes) in LAYER_BYTES.iter().enumerate() {
            let base = 10_000 * layer as u16;
            net.send_layer(
                from,
                layer,
                base.wrapping_add(k),
                base.wrapping_add(k),
                keyframe,
                *bytes,
            );
        }
    }

    #[test]
    fn a_late_viewer_with_a_high_estimate_from_the_start_gets_the_simulcast_camera() {
        let mut net = Net::broadcast(&["teacher", "early", "late"], 2);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        stream_layers(&mut net, 0, 0, 400, 100, &[(1, 5_000_000)]);
        net.join_next();
        // Like the load generator's viewers: 5 Mbit/s from the first second.
        stream_layers(&mut net, 0, 400, 100, 100, &[(1, 5_000_000), (2, 5_000_000)]);
        let before = net.received_by(2);
        stream_layers(&mut net, 0, 500, 300, 100, &[(1, 5_000_000), (2, 5_000_000)]);
        let got = net.received_by(2) - before;
        assert!(
            got >= 250,
            "the late viewer got {got} camera packets in 3 s (layer {:?})",
            layer_of(&net, 2)
        );
    }

    #[test]
    fn a_late_viewer_gets_the_simulcast_camera_and_the_screen_share() {
        let mut net = Net::broadcast(&["teacher", "early", "late"], 2);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        let screen = net.publish_video_as(0, Source::Screen);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        let both = |net: &mut Net, start: u16, n: u16, rembs: &[(usize, u64)]| {
            for k in start..start + n {
                send_layers(net, 0, k, k % 100 == 0);
                if k % 3 == 0 {
                    net.send_video_on(0, screen, k / 3, u32::from(k) * 900, k % 300 == 0, 900);
                }
                if k % 25 == 0 {
                    for &(c, bps) in rembs {
                        net.send_remb(c, bps);
                    }
                }
                net.run_for(Duration::from_millis(10), Duration::from_millis(5));
            }
        };
        both(&mut net, 0, 400, &[(1, 5_000_000)]);
        net.join_next();
        both(&mut net, 400, 600, &[(1, 5_000_000), (2, 5_000_000)]);
        for v in [1, 2] {
            let per_ssrc: Vec<u64> = net.clients[v].received.values().copied().collect();
            assert_eq!(per_ssrc.len(), 2, "viewer {v}: streams received {per_ssrc:?}");
        }
    }

    /// Starting a screen share renegotiates the presenter's connection,
    /// long after its camera layers stopped naming themselves (mid/rid): the
    /// camera must keep flowing (rtc used to forget the layers' SSRCs there;
    /// see vendor/rtc/PATCHES.md).
    #[test]
    fn a_presenter_who_starts_sharing_the_screen_keeps_its_simulcast_camera() {
        let mut net = Net::broadcast(&["teacher", "viewer"], 2);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(1), Duration::from_millis(5));
        for k in 0..300u16 {
            send_layers(&mut net, 0, k, k % 100 == 0);
            if k % 25 == 0 {
                net.send_remb(1, 5_000_000);
            }
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
        let camera: Vec<u32> = net.clients[1].received.keys().copied().collect();
        assert_eq!(camera.len(), 1, "before the screen share: {camera:?}");
        let before = net.clients[1].received[&camera[0]];
        let screen = net.publish_video_as(0, Source::Screen);
        for k in 300..700u16 {
            send_layers(&mut net, 0, k, k % 100 == 0);
            if k % 3 == 0 {
                net.send_video_on(0, screen, k / 3, u32::from(k) * 900, k % 300 == 0, 900);
            }
            if k % 25 == 0 {
                net.send_remb(1, 5_000_000);
            }
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
        let after = net.clients[1].received[&camera[0]];
        assert!(
            after >= before + 300,
            "the camera stalled at the renegotiation: {before} -> {after} packets"
        );
        assert_two_streams(&net, 1);
    }

    fn layer_of(net: &Net, client: usize) -> Option<usize> {
        let len = net.clients[client].last_payload.as_ref()?.len();
        LAYER_BYTES.iter().position(|&b| b == len)
    }

    #[test]
    fn simulcast_viewers_get_the_layer_their_link_carries_and_switch_at_keyframes() {
        let mut net = Net::broadcast(&["teacher", "fast", "slow"], 3);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        // The answer accepts the three layers (without it a browser sends
        // only its first encoding).
        let answer = net.clients[0]
            .messages
            .iter()
            .find_map(|m| match m {
                ServerMsg::Answer { sdp, .. } => Some(sdp.clone()),
                _ => None,
            })
            .unwrap_or_default();
        assert!(answer.contains("a=simulcast:recv q;h;f"), "{answer}");
        for rid in ["q", "h", "f"] {
            assert!(answer.contains(&format!("a=rid:{rid} recv")), "{answer}");
        }
        // Before any estimate both start on the middle layer.
        stream_layers(&mut net, 0, 0, 100, 50, &[]);
        assert_eq!(layer_of(&net, 1), Some(1), "start layer");
        assert_eq!(layer_of(&net, 2), Some(1), "start layer");
        // Estimates: 5 Mbit/s and 700 kbit/s. The fast viewer goes to the top
        // layer once it has fit for 3 s, at the next keyframe; the middle
        // layer keeps fitting the slow one.
        let rembs = [(1, 5_000_000), (2, 700_000)];
        stream_layers(&mut net, 0, 100, 200, 50, &rembs);
        assert_eq!(layer_of(&net, 1), Some(1), "fast viewer, before the up-switch wait");
        stream_layers(&mut net, 0, 300, 200, 50, &rembs);
        assert_eq!(layer_of(&net, 1), Some(2), "fast viewer");
        assert_eq!(layer_of(&net, 2), Some(1), "slow viewer");
        // The slow viewer's link sags: down at the next low-layer keyframe.
        let rembs = [(1, 5_000_000), (2, 300_000)];
        stream_layers(&mut net, 0, 500, 100, 50, &rembs);
        assert_eq!(layer_of(&net, 1), Some(2), "fast viewer");
        assert_eq!(layer_of(&net, 2), Some(0), "slow viewer after its estimate fell");
        // Across the switches each viewer's sequence is contiguous and the
        // VP8 PictureIDs run on without a jump (repeats are probe padding:
        // retransmissions of packets the viewer has).
        for v in [1, 2] {
            let c = &net.clients[v];
            let all = c.seqs.values().next().cloned().unwrap_or_default();
            assert_eq!(c.picture_ids.len(), all.len());
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<(u16, u16)> = all
                .iter()
                .zip(&c.picture_ids)
                .filter(|(s, _)| seen.insert(**s))
                .map(|(s, p)| (*s, *p))
                .collect();
            assert!(firsts.len() > 250, "viewer {v} got {} packets", firsts.len());
            for w in firsts.windows(2) {
                assert_eq!(w[1].0, w[0].0.wrapping_add(1), "viewer {v}: sequence gap at a switch");
                assert_eq!(w[1].1, (w[0].1 + 1) & 0x7fff, "viewer {v}: PictureID jump at a switch");
            }
        }
        eprintln!(
            "layer switches {}; PLIs to the presenter {}",
            net.metrics.layer_switches.load(std::sync::atomic::Ordering::Relaxed),
            net.metrics.pli_out.load(std::sync::atomic::Ordering::Relaxed)
        );
        let switches = net.metrics.layer_switches.load(std::sync::atomic::Ordering::Relaxed);
        assert!(switches >= 2, "{switches} switches");
    }

    /// Streams `secs` seconds of three layers while `viewer` reports what a
    /// browser's receive-side estimator would (libwebrtc's AIMD, simplified):
    /// the estimate rises to at most 1.5 × what arrived in the last 500 ms
    /// plus 10 kbit/s, never above the link's `capacity`, and falls only
    /// when the link is overused (to 85 % of it). Returns the layer the
    /// viewer ended on.
    fn stream_with_estimator(net: &mut Net, start: u16, secs: u16, viewer: usize, capacity: u64) -> Option<usize> {
        let mut last_bytes = net.clients[viewer].received_bytes;
        for k in start..start + secs * 100 {
            send_layers(net, 0, k, k % 100 == 0);
            if k % 50 == 49 {
                let got = net.clients[viewer].received_bytes;
                let bps = (got - last_bytes) * 8 * 2;
                last_bytes = got;
                let est = &mut net.clients[viewer].estimate;
                *est = if bps > capacity {
                    capacity * 85 / 100
                } else {
                    (*est).max(bps * 3 / 2 + 10_000).min(capacity)
                };
                let e = *est;
                net.send_remb(viewer, e);
            }
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
        layer_of(net, viewer)
    }

    #[test]
    fn a_viewer_held_low_by_its_own_estimate_is_probed_up_when_the_link_allows() {
        // A good link: the estimate can only follow what arrives, so the
        // viewer reaches the top layer only through probe padding.
        let mut net = Net::broadcast(&["teacher", "v"], 2);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        let probes = |n: &Net| n.metrics.probe_packets.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(stream_with_estimator(&mut net, 0, 4, 1, 10_000_000), Some(1));
        let layer = stream_with_estimator(&mut net, 400, 25, 1, 10_000_000);
        assert_eq!(layer, Some(2), "not probed up; {} probe packets", probes(&net));
        assert!(probes(&net) > 0);
        // Once up, the real layer carries the estimate: padding stops.
        let p0 = probes(&net);
        assert_eq!(stream_with_estimator(&mut net, 2900, 10, 1, 10_000_000), Some(2));
        assert_eq!(probes(&net), p0, "padding after the up-switch");

        // A 1 Mbit/s link: probes fail, the viewer stays on the middle layer,
        // and probing backs off (fewer probe packets in the second half).
        let mut net = Net::broadcast(&["teacher", "v"], 2);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        assert_eq!(stream_with_estimator(&mut net, 0, 30, 1, 1_000_000), Some(1));
        let first = probes(&net);
        assert_eq!(stream_with_estimator(&mut net, 3000, 30, 1, 1_000_000), Some(1));
        let second = probes(&net) - first;
        assert!(first > 0, "never probed");
        assert!(second < first, "probing did not back off: {first} then {second}");
    }

    #[test]
    fn a_join_storm_costs_the_presenter_at_most_two_keyframe_requests_per_layer_per_second() {
        // 500 viewers join within 10 s while the lecture runs (keyframes
        // every 4 s, so most join mid-group), and every connected viewer
        // also sends a PLI every 200 ms, as browsers do while they cannot
        // decode.
        const VIEWERS: usize = 500;
        let names: Vec<String> = (0..=VIEWERS).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut net = Net::broadcast(&names, 1);
        net.publish_simulcast(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        let start = net.now;
        for k in 0..1300u16 {
            send_layers(&mut net, 0, k, k % 400 == 0);
            if (100..1100).contains(&k) && k % 2 == 0 {
                // One join every 20 ms.
                net.join_next();
            }
            if k % 20 == 0 {
                for v in 1..net.clients.len() {
                    net.send_pli(v);
                }
            }
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
        let end = net.now;
        let receiving = (1..net.clients.len()).filter(|&v| net.received_by(v) > 0).count();
        assert_eq!(receiving, VIEWERS, "every viewer receives video");
        let plis = &net.clients[0].plis;
        let mut worst = 0usize;
        for ssrc in net.clients[0].layer_ssrcs.clone() {
            let times = plis.get(&ssrc).cloned().unwrap_or_default();
            // Any 1 s window, sliding over the whole run.
            let mut t = start;
            while t < end {
                let n = times
                    .iter()
                    .filter(|&&x| x >= t && x < t + Duration::from_secs(1))
                    .count();
                worst = worst.max(n);
                t += Duration::from_millis(50);
            }
        }
        let total: usize = plis.values().map(Vec::len).sum();
        let from_viewers = net.metrics.pli_in.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("join storm: {from_viewers} PLIs from viewers, {total} to the presenter, worst layer-second {worst}");
        assert!(from_viewers > 10_000, "the viewers did not storm: {from_viewers}");
        assert!(worst <= 2, "{worst} keyframe requests on one layer within one second");
    }

    #[test]
    fn broadcast_viewers_receive_only_and_only_the_presenter_hears_of_them() {
        let mut net = Net::broadcast(&["teacher", "v1", "v2", "v3"], 4);
        net.publish_video(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        stream(&mut net, 0, 0, 150, 50);
        for v in 1..4 {
            assert!(net.received_by(v) >= 95, "viewer {v} got {}", net.received_by(v));
        }
        // A viewer trying to publish is told no, and nothing of it is forwarded.
        net.publish_video(1);
        net.run_for(Duration::from_millis(200), Duration::from_millis(5));
        assert!(
            net.clients[1].messages.iter().any(|m| matches!(
                m,
                ServerMsg::Error {
                    code: ErrorCode::NotAllowed,
                    ..
                }
            )),
            "viewer publishing was not refused"
        );
        for i in 0..10u16 {
            net.send_video(1, i, u32::from(i) * 900, i == 0, 500);
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
        assert_eq!(net.received_by(0), 0, "the presenter received a viewer's media");
        // Viewers are not announced to each other; the presenter gets a count.
        for v in 1..4 {
            let seen: Vec<&String> = net.clients[v]
                .messages
                .iter()
                .filter_map(|m| match m {
                    ServerMsg::ParticipantJoined { participant } => Some(&participant.name),
                    ServerMsg::Joined { participants, .. } => participants.first().map(|p| &p.name),
                    _ => None,
                })
                .collect();
            assert!(seen.iter().all(|n| *n == "teacher"), "viewer {v} was told of {seen:?}");
        }
        net.run_for(Duration::from_millis(1100), Duration::from_millis(20));
        let count = net.clients[0].messages.iter().rev().find_map(|m| match m {
            ServerMsg::Viewers { count } => Some(*count),
            _ => None,
        });
        assert_eq!(count, Some(3));
    }

    fn told(net: &mut Net, i: usize, pred: impl Fn(&ServerMsg) -> bool) -> bool {
        net.pump();
        net.clients[i].messages.iter().any(pred)
    }

    #[test]
    fn a_second_video_track_reaches_an_rtc_subscriber_too() {
        let mut net = connected_pair();
        let screen = net.publish_video_as(0, Source::Screen);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        camera_and_screen(&mut net, screen, 0..100);
        assert_two_streams(&net, 1);
    }

    /// Packets `range` of client 0's camera and of its track `screen`, at
    /// 100 packets/s each, a keyframe every 50.
    fn camera_and_screen(net: &mut Net, screen: u32, range: std::ops::Range<u16>) {
        for i in range {
            net.send_video(0, i, u32::from(i) * 900, i % 50 == 0, 800);
            net.send_video_on(0, screen, i, u32::from(i) * 900, i % 50 == 0, 800);
            net.run_for(Duration::from_millis(10), Duration::from_millis(5));
        }
    }

    fn assert_two_streams(net: &Net, client: usize) {
        let per_ssrc: Vec<u64> = net.clients[client].received.values().copied().collect();
        assert_eq!(per_ssrc.len(), 2, "streams received: {per_ssrc:?}");
        assert!(per_ssrc.iter().all(|n| *n >= 95), "{per_ssrc:?}");
    }

    #[test]
    fn two_video_tracks_in_a_newcomers_first_offer_both_arrive() {
        let mut net = Net::with_late(|_| {}, &["a", "b"], 1);
        net.publish_video_as(0, Source::Mic);
        net.publish_video(0);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        let screen = net.publish_video_as(0, Source::Screen);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        camera_and_screen(&mut net, screen, 0..50);
        net.join_next();
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        camera_and_screen(&mut net, screen, 50..150);
        assert_two_streams(&net, 1);
    }

    #[test]
    fn viewers_receive_the_presenter_only_while_the_broadcast_is_on_air() {
        let mut net = Net::broadcast(&["teacher", "v"], 2);
        net.set_live(false);
        net.publish_video(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        stream(&mut net, 0, 0, 100, 50);
        assert_eq!(net.received_by(1), 0, "a viewer received the presenter off air");
        assert!(told(&mut net, 1, |m| matches!(m, ServerMsg::Live { live: false })));
        // On air: the viewer is subscribed and starts from the cached group.
        net.set_live(true);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        stream(&mut net, 0, 100, 100, 50);
        assert!(net.received_by(1) >= 95, "viewer got {} on air", net.received_by(1));
        assert!(told(&mut net, 1, |m| matches!(m, ServerMsg::Live { live: true })));
        // Only a presenter switches it.
        net.signal(1, ClientMsg::Live { live: false });
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::Error {
                code: ErrorCode::NotAllowed,
                ..
            }
        )));
    }

    #[test]
    fn a_viewer_let_speak_is_heard_by_everyone_until_its_turn_ends() {
        let mut net = Net::broadcast(&["teacher", "asker", "other"], 3);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        let asker = net.clients[1].id.clone();
        let speaks = |v: bool| ClientMsg::Promote {
            participant: asker.clone(),
            video: v,
        };
        // Viewers cannot promote anyone, themselves included.
        net.signal(2, speaks(true));
        assert!(told(&mut net, 2, |m| matches!(
            m,
            ServerMsg::Error {
                code: ErrorCode::NotAllowed,
                ..
            }
        )));
        net.signal(
            1,
            ClientMsg::Hand {
                raised: true,
                participant: None,
            },
        );
        net.run_for(Duration::from_millis(600), Duration::from_millis(20));
        let hands = net.clients[0].messages.iter().rev().find_map(|m| match m {
            ServerMsg::Queue { queue } => Some(queue.hands.iter().map(|h| h.id.clone()).collect::<Vec<_>>()),
            _ => None,
        });
        assert_eq!(hands, Some(vec![asker.clone()]), "the presenter's queue shows the hand");
        // Audio only by default: a camera is refused.
        net.signal(0, speaks(false));
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::Floor {
                granted: true,
                video: false
            }
        )));
        assert!(
            told(&mut net, 1, |m| matches!(m, ServerMsg::Hand { raised: false })),
            "hand lowered"
        );
        assert!(
            told(
                &mut net,
                2,
                |m| matches!(m, ServerMsg::ParticipantJoined { participant } if participant.id == asker)
            ),
            "the other viewer was not told who speaks"
        );
        net.publish_video(1);
        net.run_for(Duration::from_millis(200), Duration::from_millis(5));
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::Error {
                code: ErrorCode::NotAllowed,
                ..
            }
        )));
        // With video granted the camera goes to the presenter and the other viewer.
        net.signal(0, speaks(true));
        net.publish_video(1);
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        stream(&mut net, 1, 0, 100, 50);
        assert!(
            net.received_by(0) >= 95,
            "presenter got {} from the speaker",
            net.received_by(0)
        );
        assert!(
            net.received_by(2) >= 95,
            "other viewer got {} from the speaker",
            net.received_by(2)
        );
        // Its turn ends: nobody receives it any more, and the pages are told.
        net.signal(
            0,
            ClientMsg::Demote {
                participant: asker.clone(),
            },
        );
        net.run_for(Duration::from_millis(500), Duration::from_millis(5));
        let (p0, p2) = (net.received_by(0), net.received_by(2));
        stream(&mut net, 1, 100, 50, 50);
        assert_eq!(
            (net.received_by(0), net.received_by(2)),
            (p0, p2),
            "the speaker still forwarded"
        );
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::Floor { granted: false, .. }
        )));
        assert!(told(
            &mut net,
            2,
            |m| matches!(m, ServerMsg::ParticipantLeft { id } if *id == asker)
        ));
    }

    #[test]
    fn questions_reach_the_presenters_and_the_asker_learns_the_outcome() {
        let mut net = Net::broadcast(&["teacher", "v"], 2);
        net.signal(
            1,
            ClientMsg::Question {
                text: "Is the fracture displaced?".into(),
            },
        );
        net.signal(1, ClientMsg::Question { text: "  ".into() });
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::Error {
                code: ErrorCode::BadMessage,
                ..
            }
        )));
        net.run_for(Duration::from_millis(600), Duration::from_millis(20));
        let q = net.clients[0].messages.iter().rev().find_map(|m| match m {
            ServerMsg::Queue { queue } => queue.questions.first().cloned(),
            _ => None,
        });
        let q = q.expect("the presenter got the question");
        assert_eq!(q.text, "Is the fracture displaced?");
        assert_eq!(q.name, "v");
        // A presenter cannot ask; a viewer cannot close.
        net.signal(0, ClientMsg::Question { text: "x".into() });
        net.signal(
            1,
            ClientMsg::QuestionDone {
                id: q.id,
                answered: true,
            },
        );
        for i in [0, 1] {
            assert!(told(&mut net, i, |m| matches!(
                m,
                ServerMsg::Error {
                    code: ErrorCode::NotAllowed,
                    ..
                }
            )));
        }
        net.signal(
            0,
            ClientMsg::QuestionDone {
                id: q.id,
                answered: true,
            },
        );
        assert!(told(&mut net, 1, |m| matches!(
            m,
            ServerMsg::QuestionState {
                state: crate::sfu::floor::QuestionState::Answered,
                ..
            }
        )));
        net.run_for(Duration::from_millis(600), Duration::from_millis(20));
        let left = net.clients[0].messages.iter().rev().find_map(|m| match m {
            ServerMsg::Queue { queue } => Some(queue.questions.len()),
            _ => None,
        });
        assert_eq!(left, Some(0));
    }

    /// PLIs towards the publisher while it streams one keyframe then deltas
    /// for 12 s to one subscriber who is there from the start.
    fn plis_over_a_long_group(mut net: Net) -> u64 {
        net.publish_video(0);
        net.run_for(Duration::from_secs(3), Duration::from_millis(5));
        stream(&mut net, 0, 0, 200, 10_000);
        let before = net.metrics.pli_out.load(std::sync::atomic::Ordering::Relaxed);
        stream(&mut net, 0, 200, 1000, 10_000);
        net.metrics.pli_out.load(std::sync::atomic::Ordering::Relaxed) - before
    }

    #[test]
    fn a_broadcast_asks_for_fresh_keyframes_for_its_cache_and_a_consultation_does_not() {
        let broadcast = plis_over_a_long_group(Net::broadcast(&["teacher", "v1"], 2));
        // Refresh after 4 s, throttled to 500 ms apart and retried at most
        // once a second while unanswered (this publisher never answers).
        assert!((5..=20).contains(&broadcast), "{broadcast} refresh requests in 10 s");
        let consultation = plis_over_a_long_group(Net::new(|_| {}, &["a", "b"]));
        assert_eq!(consultation, 0, "a consultation asked for keyframes nobody needed");
    }

    #[test]
    fn forwards_video_between_two_simulated_browsers() {
        let mut net = connected_pair();
        // The track opens on its first packet; the subscriber is then offered it.
        stream(&mut net, 0, 0, 50, 10);
        assert!(
            net.clients[1]
                .messages
                .iter()
                .any(|m| matches!(m, ServerMsg::Offer { .. })),
            "subscriber got no sub offer: {:?}",
            net.clients[1].messages
        );
        let before = net.received_by(1);
        stream(&mut net, 0, 50, 100, 10);
        let got = net.received_by(1) - before;
        let m = &net.metrics;
        assert!(
            got >= 95,
            "subscriber received {got} of 100 (before: {before}); in {} out {}",
            m.rtp_in.load(std::sync::atomic::Ordering::Relaxed),
            m.rtp_out.load(std::sync::atomic::Ordering::Relaxed)
        );
        assert_eq!(net.received_by(0), 0, "nothing is echoed to the publisher");
        // Sequence numbers the subscriber sees are contiguous.
        let seqs = net.clients[1].seqs.values().next().cloned().unwrap_or_default();
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1), "gap in forwarded sequence: {seqs:?}");
        }
    }

    /// True for SRTP media (not SRTCP: RTCP packet types 200-206 sit in the
    /// second byte with the marker bit set).
    fn is_rtp(d: &[u8]) -> bool {
        d.len() > 12 && (128..192).contains(&d[0]) && !(200..=206).contains(&d[1])
    }

    #[test]
    fn lost_packets_are_repaired_from_the_sfu_history_with_rtx() {
        let mut net = connected_pair();
        stream(&mut net, 0, 0, 50, 10);
        // Drop every 7th media packet towards the subscriber.
        let mut n = 0u32;
        net.clients[1].downlink_loss = Some(Box::new(move |d: &[u8]| {
            if is_rtp(d) {
                n += 1;
                n.is_multiple_of(7)
            } else {
                false
            }
        }));
        stream(&mut net, 0, 50, 200, 50);
        net.clients[1].downlink_loss = None;
        net.run_for(Duration::from_secs(2), Duration::from_millis(5));
        let rtx = net.metrics.rtx_sent.load(std::sync::atomic::Ordering::Relaxed);
        let nin = net.metrics.nack_in.load(std::sync::atomic::Ordering::Relaxed);
        assert!(rtx >= 20, "only {rtx} retransmissions ({nin} NACKs in)");
        let seqs = net.clients[1]
            .seqs
            .values()
            .max_by_key(|v| v.len())
            .cloned()
            .unwrap_or_default();
        let mut uniq = seqs.clone();
        uniq.sort_unstable();
        uniq.dedup();
        // Everything after the first forwarded packet arrived, repaired.
        let first = seqs.first().copied().unwrap_or(0);
        let last = seqs.iter().copied().max().unwrap_or(0);
        let expected = last.wrapping_sub(first) as usize + 1;
        assert_eq!(
            uniq.len(),
            expected,
            "missing sequence numbers after repair (rtx sent {rtx})"
        );
    }

    /// A viewer whose page stopped reading its signaling while the
    /// presenter goes on and off air and gives it the floor and takes it
    /// back: the engine never blocks, nothing is silently lost (the page's
    /// queue holds an unbroken prefix of what it was sent), and when a
    /// message it must not miss does not fit, its session is ended and it
    /// leaves the room; the other viewer gets every message.
    #[test]
    fn a_page_that_stops_reading_is_cut_rather_than_losing_control_messages() {
        let mut net = Net::broadcast(&["teacher", "other", "stalled"], 2);
        net.join_stalled();
        net.run_for(Duration::from_millis(200), Duration::from_millis(20));
        let stalled = net.clients[2].id.clone();
        let promote = ClientMsg::Promote {
            participant: stalled.clone(),
            video: false,
        };
        let demote = ClientMsg::Demote {
            participant: stalled.clone(),
        };
        let rounds = crate::sfu::client_queue::DEPTH;
        for _ in 0..rounds {
            net.signal(0, promote.clone());
            net.signal(0, demote.clone());
            net.set_live(false);
            net.set_live(true);
            net.run_for(Duration::from_millis(20), Duration::from_millis(20));
        }
        let (queued, ended) = net.stalled_queue(2);
        assert_eq!(
            ended,
            Some(ErrorCode::TooSlow),
            "the stalled page's session was not ended"
        );
        assert!(queued.len() <= crate::sfu::client_queue::DEPTH);
        // An unbroken prefix: joined, the floor, then each round's messages
        // in order with none missing.
        assert!(matches!(queued.first(), Some(ServerMsg::Joined { .. })), "{queued:?}");
        let control: Vec<String> = queued
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Floor { granted, .. } => Some(format!("floor {granted}")),
                ServerMsg::Live { live } => Some(format!("live {live}")),
                _ => None,
            })
            .collect();
        let expected: Vec<String> = ["floor true", "floor false", "live false", "live true"]
            .iter()
            .cycle()
            .take(control.len())
            .map(|s| s.to_string())
            .collect();
        assert_eq!(control, expected, "a gap in what the stalled page was sent");
        assert!(control.len() >= 40, "only {} floor/live messages queued", control.len());
        // It left the room, and the presenter was told.
        assert_eq!(net.engine.participants(), 2);
        assert!(told(
            &mut net,
            0,
            |m| matches!(m, ServerMsg::ParticipantLeft { id } if *id == stalled)
        ));
        assert_eq!(
            net.metrics.signal_too_slow.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Nothing queued for it afterwards either.
        net.set_live(false);
        net.run_for(Duration::from_millis(100), Duration::from_millis(20));
        assert!(net.stalled_queue(2).0.is_empty());
        // The other viewer heard every on/off-air change, and nothing else went wrong.
        let lives = net.clients[1]
            .messages
            .iter()
            .filter(|m| matches!(m, ServerMsg::Live { .. }))
            .count();
        assert_eq!(lives, 2 * rounds + 1 + 1, "the other viewer missed on/off-air changes");
        assert!(
            !net.clients[1]
                .messages
                .iter()
                .any(|m| matches!(m, ServerMsg::Error { .. })),
            "{:?}",
            net.clients[1].messages
        );
    }

    /// Everything viewer `of`'s page was told that names viewer `id`, by
    /// position: true where the message names it.
    fn mentions(net: &Net, of: usize, id: &str) -> Vec<(usize, String)> {
        net.clients[of]
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let json = serde_json::to_string(m).unwrap_or_default();
                json.contains(id).then_some((i, json))
            })
            .collect()
    }

    /// A broadcast viewer hears of another viewer only while one of them is
    /// on stage: not of its mute, hand or question before its turn, nor of
    /// its mute after it; and a speaker taken off stage by going off air
    /// forgets the other speakers.
    #[test]
    fn a_viewer_hears_of_another_viewer_only_while_it_is_on_stage() {
        let mut net = Net::broadcast(&["teacher", "a", "b"], 3);
        net.run_for(Duration::from_millis(200), Duration::from_millis(20));
        let a = net.clients[1].id.clone();
        let b = net.clients[2].id.clone();
        let mute = |muted| ClientMsg::Mute {
            source: Source::Mic,
            muted,
        };
        // Off stage: its mute, hand and question go to the presenter only.
        net.signal(1, mute(true));
        net.signal(
            1,
            ClientMsg::Hand {
                raised: true,
                participant: None,
            },
        );
        net.signal(1, ClientMsg::Question { text: "why?".into() });
        net.run_for(Duration::from_millis(600), Duration::from_millis(20));
        assert!(
            told(
                &mut net,
                0,
                |m| matches!(m, ServerMsg::Mute { participant, .. } if *participant == a)
            ),
            "the presenter hears of a viewer's mute"
        );
        assert_eq!(mentions(&net, 2, &a), [], "b was told of a before its turn");
        // On stage: b hears of a, its mute included; then a leaves the stage.
        net.signal(
            0,
            ClientMsg::Promote {
                participant: a.clone(),
                video: false,
            },
        );
        net.signal(1, mute(false));
        net.run_for(Duration::from_millis(100), Duration::from_millis(20));
        assert!(told(
            &mut net,
            2,
            |m| matches!(m, ServerMsg::Mute { participant, muted: false, .. } if *participant == a)
        ));
        net.signal(0, ClientMsg::Demote { participant: a.clone() });
        net.run_for(Duration::from_millis(100), Duration::from_millis(20));
        // Off stage again: nothing more.
        net.signal(1, mute(true));
        net.signal(
            1,
            ClientMsg::Hand {
                raised: true,
                participant: None,
            },
        );
        net.run_for(Duration::from_millis(600), Duration::from_millis(20));
        let seen = mentions(&net, 2, &a);
        let first = seen.first().map(|x| x.1.clone()).unwrap_or_default();
        let last = seen.last().map(|x| x.1.clone()).unwrap_or_default();
        assert!(first.contains("participant_joined"), "{seen:?}");
        assert!(
            last.contains("participant_left"),
            "b heard of a after its turn: {seen:?}"
        );
        // Both speak; off air ends both turns: each forgets the other.
        for p in [&a, &b] {
            net.signal(
                0,
                ClientMsg::Promote {
                    participant: p.clone(),
                    video: false,
                },
            );
        }
        net.run_for(Duration::from_millis(100), Duration::from_millis(20));
        net.set_live(false);
        net.run_for(Duration::from_millis(100), Duration::from_millis(20));
        for (me, other) in [(1, &b), (2, &a)] {
            let seen = mentions(&net, me, other);
            let last = seen.last().map(|x| x.1.clone()).unwrap_or_default();
            assert!(
                last.contains("participant_left"),
                "client {me} still knows {other} after going off air: {seen:?}"
            );
        }
    }

    /// Per message, what a participant can make the server keep is bounded:
    /// trickled candidates per connection, m-lines per offer.
    #[test]
    fn candidates_and_offer_m_lines_are_bounded() {
        let mut net = Net::new(|_| {}, &["a", "b"]);
        let candidate = |n: u16| ClientMsg::Candidate {
            pc: PcKind::Pub,
            candidate: super::super::protocol::CandidateInit {
                candidate: format!(
                    "candidate:{n} 1 udp 2122260223 10.9.{}.{} 5000 typ host",
                    n / 200,
                    n % 200
                ),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        };
        let limits = |net: &mut Net| {
            net.pump();
            net.clients[0]
                .messages
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        ServerMsg::Error {
                            code: ErrorCode::Limit,
                            ..
                        }
                    )
                })
                .count()
        };
        for n in 0..32 {
            net.signal(0, candidate(n));
        }
        assert_eq!(limits(&mut net), 0);
        for n in 32..40 {
            net.signal(0, candidate(n));
        }
        assert_eq!(limits(&mut net), 8);
        let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
        for i in 0..17 {
            sdp.push_str(&format!(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\na=recvonly\r\n"
            ));
        }
        net.signal(
            0,
            ClientMsg::Offer {
                pc: PcKind::Pub,
                sdp,
                tracks: BTreeMap::new(),
            },
        );
        assert!(told(&mut net, 0, |m| matches!(
            m,
            ServerMsg::Error { code: ErrorCode::TooManyTracks, message } if message.contains("m-lines")
        )));
    }

    #[test]
    fn a_vanished_peer_is_removed_by_media_timeouts_not_signaling() {
        let mut net = connected_pair();
        stream(&mut net, 0, 0, 30, 10);
        assert_eq!(net.engine.participants(), 2);
        // Client 1's network goes away; its signaling channel stays open.
        net.clients[1].uplink_loss = Some(Box::new(|_: &[u8]| true));
        net.run_for(Duration::from_secs(10), Duration::from_millis(20));
        assert_eq!(net.engine.participants(), 2, "not before the ICE/consent timeouts");
        net.run_for(Duration::from_secs(15), Duration::from_millis(20));
        assert_eq!(net.engine.participants(), 1, "the silent participant was not removed");
        let gone = net.clients[1].id.clone();
        assert!(
            net.clients[0]
                .messages
                .iter()
                .any(|m| matches!(m, ServerMsg::ParticipantLeft { id } if *id == gone)),
            "the others were not told"
        );
    }

    #[test]
    fn an_occupied_room_stays_and_ends_once_empty_past_the_grace() {
        // The simulated clients stay connected but send no media, which
        // media timeouts would count as vanished: not what this is about.
        let mut net = Net::new(
            |c| {
                c.empty_room_grace = Duration::from_secs(10);
                c.peer_timeout = Duration::from_secs(600);
            },
            &["a", "b"],
        );
        let rooms = |n: &Net| n.metrics.rooms_active.load(std::sync::atomic::Ordering::Relaxed);
        net.publish_video(0);
        // Occupied well past the grace: the room stays.
        net.run_for(Duration::from_secs(20), Duration::from_millis(10));
        assert_eq!(rooms(&net), 1);
        assert_eq!(net.engine.participants(), 2);
        net.signal(0, ClientMsg::Leave);
        net.run_for(Duration::from_secs(8), Duration::from_millis(10));
        assert_eq!(rooms(&net), 1, "one participant is still in it");
        assert_eq!(net.engine.participants(), 1, "one participant is still in it");
        net.signal(1, ClientMsg::Leave);
        net.run_for(Duration::from_secs(9), Duration::from_millis(10));
        assert_eq!(rooms(&net), 1, "empty, but within the grace");
        net.run_for(Duration::from_secs(2), Duration::from_millis(10));
        assert_eq!(rooms(&net), 0, "empty past the grace");
    }
}
