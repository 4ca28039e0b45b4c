//! Peer-connection setup for the two connections each participant has.
//!
//! Codecs and feedback are chosen for long, lossy links:
//! - Opus with in-band FEC and DTX (`useinbandfec=1;usedtx=1`), and RED
//!   (RFC 2198 redundancy) offered so browsers that support it can protect
//!   speech; the SFU passes both through untouched.
//! - Video with NACK + RTX (repair from the SFU's own history), PLI/FIR.
//! - Bandwidth feedback: on `pub` the library's transport-wide CC receiver
//!   gives the browser's sender its estimate; on `sub` we negotiate
//!   `goog-remb`, so the subscribing browser tells us what it can receive and
//!   the layer choice can drop video before audio.
//!
//! The library's own NACK generator/responder interceptors are deliberately
//! not registered: ours (nack.rs, history.rs) size the history by time and
//! space NACKs by RTT, which the packet-count defaults do not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::interceptor::{ReceiverReportBuilder, SenderReportBuilder};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};

use super::protocol::PcKind;

pub const MIME_TYPE_RED: &str = "audio/red";

pub const PT_OPUS: u8 = 111;
pub const PT_RED: u8 = 63;
pub const PT_VP8: u8 = 96;
pub const PT_VP8_RTX: u8 = 97;
pub const PT_H264: u8 = 102;
pub const PT_H264_RTX: u8 = 103;

fn fb(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    feedback: Vec<RTCPFeedback>,
    pt: u8,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: feedback,
        },
        payload_type: pt,
    }
}

/// Codec list shared by both connections; feedback differs (see module docs).
pub fn codecs(kind: PcKind) -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let mut video_fb = vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")];
    if kind == PcKind::Sub {
        video_fb.push(fb("goog-remb", ""));
    }
    vec![
        (
            codec(
                MIME_TYPE_OPUS,
                48000,
                2,
                "minptime=10;useinbandfec=1;usedtx=1",
                vec![],
                PT_OPUS,
            ),
            RtpCodecKind::Audio,
        ),
        (
            codec(MIME_TYPE_RED, 48000, 2, "111/111", vec![], PT_RED),
            RtpCodecKind::Audio,
        ),
        (
            codec(MIME_TYPE_VP8, 90000, 0, "", video_fb.clone(), PT_VP8),
            RtpCodecKind::Video,
        ),
        (
            codec(MIME_TYPE_RTX, 90000, 0, "apt=96", vec![], PT_VP8_RTX),
            RtpCodecKind::Video,
        ),
        (
            codec(
                MIME_TYPE_H264,
                90000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                video_fb,
                PT_H264,
            ),
            RtpCodecKind::Video,
        ),
        (
            codec(MIME_TYPE_RTX, 90000, 0, "apt=102", vec![], PT_H264_RTX),
            RtpCodecKind::Video,
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("peer connection setup: {0}")]
pub struct SetupError(pub String);

fn se<E: std::fmt::Display>(e: E) -> SetupError {
    SetupError(e.to_string())
}

/// ICE credentials that also serve as the demultiplexing key on the shared
/// port; 16 alphanumerics is ~95 bits, so they do not collide.
pub fn random_credentials() -> (String, String) {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| {
        (0..n)
            .map(|_| A[rand::random_range(0..A.len())] as char)
            .collect::<String>()
    };
    (pick(16), pick(32))
}

pub fn new_peer_connection(
    kind: PcKind,
    ufrag: &str,
    pwd: &str,
    announce: &[SocketAddr],
    now: Instant,
) -> Result<RTCPeerConnection, SetupError> {
    let setting = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        // We are DTLS server on both connections: a lite agent waits for the
        // browser's checks anyway, so it should also wait for its ClientHello.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        // Consent freshness: browsers check every ~2.5 s (lite agents only
        // answer), so 8 s without a check is a gone peer, 15 s a failed one.
        .with_ice_timeouts(Some(Duration::from_secs(8)), Some(Duration::from_secs(15)), None)
        // AES-GCM first: browsers prefer it, and it is the cheaper one per
        // packet (one pass for encryption and authentication).
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .build();
    let mut media = MediaEngine::default();
    for (c, k) in codecs(kind) {
        media.register_codec(c, k).map_err(se)?;
    }
    // Each connection carries media one way only, so each gets only the
    // interceptors for its direction: every one is a hop per packet.
    let registry = match kind {
        PcKind::Pub => {
            configure_simulcast_extension_headers(&mut media).map_err(se)?;
            let r = Registry::new().with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
            configure_twcc_receiver_only(r, &mut media).map_err(se)?
        }
        PcKind::Sub => Registry::new()
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(Slot::Custom(20_000), DeliverFeedback::default()),
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(setting)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(se)?;
    for addr in announce {
        pc.add_local_candidate(host_candidate(*addr)?).map_err(se)?;
    }
    pc.add_local_candidate(RTCIceCandidateInit::default()).map_err(se)?;
    Ok(pc)
}

/// The transport of a datagram on one of our UDP sockets.
pub fn udp_context(local: SocketAddr, peer: SocketAddr) -> rtc::shared::TransportContext {
    rtc::shared::TransportContext {
        local_addr: local,
        peer_addr: peer,
        ecn: None,
        transport_protocol: rtc::shared::TransportProtocol::UDP,
    }
}

/// A peer connection like a browser's, for the simulated peers of the
/// engine tests and the load generator: our codec table, the default
/// interceptors (NACK, reports, TWCC), optionally the simulcast header
/// extensions (a presenter) and RTCP delivered to the application (to count
/// keyframe requests).
pub fn client_peer_connection(
    kind: PcKind,
    local: SocketAddr,
    simulcast: bool,
    feedback: bool,
    now: Instant,
) -> Result<RTCPeerConnection, SetupError> {
    let mut media = MediaEngine::default();
    for (c, k) in codecs(kind) {
        media.register_codec(c, k).map_err(se)?;
    }
    if simulcast {
        configure_simulcast_extension_headers(&mut media).map_err(se)?;
    }
    let mut registry = Registry::new();
    if feedback {
        registry = registry.with(Slot::Custom(20_000), DeliverFeedback::default());
    }
    let registry =
        rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors(registry, &mut media)
            .map_err(se)?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(se)?;
    pc.add_local_candidate(host_candidate(local)?).map_err(se)?;
    pc.add_local_candidate(RTCIceCandidateInit::default()).map_err(se)?;
    Ok(pc)
}

/// A UDP host candidate for `addr` (we gather nothing: the sockets are ours).
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, SetupError> {
    RTCIceCandidate::from(&ice_host(addr)?).to_json().map_err(se)
}

fn ice_host(addr: SocketAddr) -> Result<rtc::ice::candidate::Candidate, SetupError> {
    CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(se)
}

/// Lets subscribers' feedback reach the engine.
///
/// `rtc` ends the inbound RTCP path at its chain terminus unless an
/// interceptor marks a packet for the application; an SFU has to see NACK,
/// PLI/FIR, REMB and receiver reports to repair, refresh and adapt, so this
/// marks every inbound RTCP compound (the engine ignores what it does not use).
#[derive(Default)]
pub struct DeliverFeedback {
    reads: std::collections::VecDeque<TaggedPacket>,
    writes: std::collections::VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for DeliverFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for DeliverFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Repeats our ICE candidates in every m-section of an SDP we send.
///
/// With BUNDLE one section carrying them is enough for browsers, but some
/// stacks (aiortc among them) take a bundled transport's candidates from a
/// different section than the first; repeating them costs a few lines and
/// makes every independent implementation find the SFU's address.
pub fn candidates_in_every_section(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
    let cands: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("a=candidate:") || *l == "a=end-of-candidates")
        .collect();
    if cands.is_empty() {
        return sdp.to_string();
    }
    // Split into session part and media sections.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for l in &lines {
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(l);
        }
    }
    let mut out = String::with_capacity(sdp.len() + cands.len() * 64 * sections.len());
    for (i, sec) in sections.iter().enumerate() {
        let has = sec.iter().any(|l| l.starts_with("a=candidate:"));
        for l in sec {
            out.push_str(l);
            out.push_str("\r\n");
        }
        if i > 0 && !has {
            for c in &cands {
                out.push_str(c);
                out.push_str("\r\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_repeated_in_sections_without_them() {
        let sdp = "v=0\r\ns=-\r\nm=audio 9 X 111\r\na=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates\r\nm=application 9 X webrtc-datachannel\r\na=mid:1\r\n";
        let out = candidates_in_every_section(sdp);
        assert_eq!(out.matches("a=candidate:").count(), 2);
        assert_eq!(out.matches("a=end-of-candidates").count(), 2);
        let app = out.split("m=application").nth(1).unwrap();
        assert!(app.contains("a=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\n"));
        assert!(out.starts_with("v=0\r\ns=-\r\nm=audio"));
        // Nothing to copy: unchanged.
        assert_eq!(
            candidates_in_every_section("v=0\r\nm=audio 9 X 0\r\n"),
            "v=0\r\nm=audio 9 X 0\r\n"
        );
    }

    #[test]
    fn codec_table_has_fec_red_and_rtx() {
        let c = codecs(PcKind::Sub);
        let opus = c.iter().find(|(c, _)| c.rtp_codec.mime_type == MIME_TYPE_OPUS).unwrap();
        assert!(opus.0.rtp_codec.sdp_fmtp_line.contains("useinbandfec=1"));
        assert!(opus.0.rtp_codec.sdp_fmtp_line.contains("usedtx=1"));
        assert!(c.iter().any(|(c, _)| c.rtp_codec.mime_type == MIME_TYPE_RED));
        let vp8 = c.iter().find(|(c, _)| c.rtp_codec.mime_type == MIME_TYPE_VP8).unwrap();
        assert!(vp8.0.rtp_codec.rtcp_feedback.iter().any(|f| f.typ == "goog-remb"));
        assert!(c.iter().any(|(c, _)| c.rtp_codec.sdp_fmtp_line == "apt=96"));
    }

    /// A browser facing our ICE-lite agent may nominate a second pair later
    /// (Chromium moves to a preferred interface once its checks there
    /// succeed) and then sends its consent checks on that pair alone. The
    /// agent must move with it: one that kept the first pair heard nothing
    /// there, went `disconnected` after 8 s and `failed` after 15 s, and the
    /// viewer's page started over every ~24 s (vendor/rtc-ice/PATCHES.md).
    #[test]
    fn the_lite_agent_follows_the_browser_to_another_nominated_pair() {
        use rtc::ice::attributes::{control::AttrControlling, priority::PriorityAttr, use_candidate::UseCandidateAttr};
        use rtc::ice::candidate::CandidateType;
        use rtc::ice::state::ConnectionState;
        use rtc::ice::{Agent, AgentConfig};
        use rtc::sansio::Protocol;
        use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
        use rtc::stun::attributes::ATTR_USERNAME;
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter, TransactionId};
        use rtc::stun::textattrs::Username;
        use rtc::stun::xoraddr::XorMappedAddress;
        use std::sync::Arc;

        let provider = rtc::ice::crypto::default_provider().expect("crypto provider");
        let ours: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        let (our_ufrag, our_pwd) = random_credentials();
        let (their_ufrag, their_pwd) = random_credentials();
        let t0 = Instant::now();
        let mut agent = Agent::new(
            t0,
            Arc::new(AgentConfig {
                lite: true,
                candidate_types: vec![CandidateType::Host],
                local_ufrag: our_ufrag.clone(),
                local_pwd: our_pwd.clone(),
                disconnected_timeout: Some(Duration::from_secs(8)),
                failed_timeout: Some(Duration::from_secs(15)),
                ..Default::default()
            }),
            provider.clone(),
        )
        .expect("agent");
        agent
            .add_local_candidate(ice_host(ours).expect("host candidate"))
            .expect("local candidate");
        agent
            .start_connectivity_checks(t0, false, their_ufrag.clone(), their_pwd.clone())
            .expect("start");

        let ctx = |peer: SocketAddr| TransportContext {
            local_addr: ours,
            peer_addr: peer,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        };
        let feed = |agent: &mut Agent, now: Instant, from: SocketAddr, m: &Message| {
            agent
                .handle_read(TaggedBytesMut {
                    now,
                    transport: ctx(from),
                    message: m.raw.as_slice().into(),
                })
                .expect("handle_read");
        };
        // A STUN message with ICE's short-term integrity (`pwd`: the
        // receiver's password) and a fingerprint.
        fn signed<'a>(
            mut attrs: Vec<Box<dyn Setter + 'a>>,
            pwd: &str,
            crypto: &'a dyn rtc::ice::crypto::RTCCrypto,
        ) -> Message {
            attrs.push(Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto,
            )));
            attrs.push(Box::new(FINGERPRINT));
            let mut m = Message::new();
            m.build(&attrs).expect("stun message");
            m
        }
        // A browser's check on the pair from `from`, nominating it (a
        // controlling browser facing a lite peer puts USE-CANDIDATE on the
        // pair it has selected); then the browser's answers to the checks
        // the agent sends back (its triggered checks).
        let check = |agent: &mut Agent, now: Instant, from: SocketAddr| {
            let m = signed(
                vec![
                    Box::new(BINDING_REQUEST),
                    Box::new(TransactionId::new()),
                    Box::new(Username::new(ATTR_USERNAME, format!("{our_ufrag}:{their_ufrag}"))),
                    Box::new(UseCandidateAttr::new()),
                    Box::new(AttrControlling(7)),
                    Box::new(PriorityAttr(2_130_706_431)),
                ],
                &our_pwd,
                provider.crypto(),
            );
            feed(agent, now, from, &m);
            while let Some(out) = agent.poll_write() {
                let mut req = Message::new();
                req.raw = out.message.to_vec();
                if req.decode().is_err() || req.typ != BINDING_REQUEST {
                    continue;
                }
                let to = out.transport.peer_addr;
                let resp = signed(
                    vec![
                        Box::new(BINDING_SUCCESS),
                        Box::new(req.transaction_id),
                        Box::new(XorMappedAddress {
                            ip: to.ip(),
                            port: to.port(),
                        }),
                    ],
                    &their_pwd,
                    provider.crypto(),
                );
                feed(agent, now, to, &resp);
            }
        };
        let selected = |agent: &Agent| agent.get_selected_candidate_pair().map(|(_, r)| r.addr());

        let first: SocketAddr = "127.0.0.1:57558".parse().unwrap();
        let second: SocketAddr = "192.0.2.2:40161".parse().unwrap();
        let mut now = t0;
        for _ in 0..2 {
            check(&mut agent, now, first);
            now += Duration::from_millis(50);
        }
        assert_eq!(selected(&agent), Some(first));
        assert_eq!(agent.state(), ConnectionState::Connected);
        // The browser moves to its other interface's pair.
        for _ in 0..2 {
            check(&mut agent, now, second);
            now += Duration::from_millis(50);
        }
        assert_eq!(selected(&agent), Some(second), "the agent stayed on the first pair");
        // Consent checks on the new pair only, every 2.5 s for 30 s: the
        // connection stays up (the first pair hears nothing all along).
        for _ in 0..12 {
            now += Duration::from_millis(2500);
            agent.handle_timeout(now).expect("timeout");
            check(&mut agent, now, second);
            assert_eq!(agent.state(), ConnectionState::Connected, "at {:?}", now - t0);
        }
        assert_eq!(selected(&agent), Some(second));
    }
}
