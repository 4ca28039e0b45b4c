//! Keyframe requests toward a publisher, and keyframe detection from RTP payloads.
//!
//! Request policy (one [`KeyframeRequester`] per inbound stream, i.e. per simulcast layer SSRC), and why:
//!
//! * **Coalesce.** Every subscriber PLI/FIR and every internal need (a new subscriber, a layer switch)
//!   calls [`KeyframeRequester::request`]; all requests pending at once become a single PLI upstream.
//!   In a teaching broadcast to many clinics, forwarding each viewer's PLI would make the presenter's
//!   encoder emit keyframes back to back, and keyframes are 5–10× the size of delta frames: on a
//!   weak uplink that *is* the congestion.
//! * **Throttle ≥ 500 ms** between PLIs (LiveKit's default PLI throttle for low-quality layers is
//!   500 ms, 1 s for higher ones): a keyframe needs ~RTT plus its own serialization time to arrive,
//!   and asking again before that only produces another one.
//! * **Satisfy on arrival.** Any keyframe seen after a request satisfies every pending request: it is
//!   forwarded to everyone waiting.
//! * **Retry if unanswered** after max(**1 s**, **2 × RTT**) (mediasoup retransmits an unanswered
//!   request after 1 s): PLIs travel over lossy RTCP and get lost too. Two RTTs leave one RTT for the
//!   keyframe's serialization, which at a few hundred kbit/s is itself hundreds of milliseconds.
//!
//! Detection ([`is_keyframe`]) reads only payload descriptors and NAL headers, never decodes, and is
//! true only on the packet that *starts* a keyframe, which is where a forwarder may switch layers.

use std::time::{Duration, Instant};

/// Video codecs whose keyframes we can recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Vp8,
    Vp9,
    H264,
    Av1,
}

/// True if `payload` (the RTP payload, after header and extensions) starts a keyframe.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_is_keyframe(payload),
        Codec::Vp9 => vp9_is_keyframe(payload),
        Codec::H264 => h264_is_keyframe(payload),
        Codec::Av1 => av1_is_keyframe(payload),
    }
}

/// RFC 7741: payload descriptor, then (on the first packet of a frame: S=1, PID=0) the VP8 payload
/// header whose lowest bit P is 0 for a keyframe. A keyframe header also carries the start code
/// 9d 01 2a at bytes 3..6; it is checked when present so that a corrupt packet is not mistaken for one.
fn vp8_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = p.get(1) else {
            return false;
        };
        i = 2;
        if x & 0x80 != 0 {
            // I: picture ID, 15 bits when its M bit is set.
            let Some(&pic) = p.get(i) else {
                return false;
            };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX share one byte
        }
    }
    let Some(&header) = p.get(i) else {
        return false;
    };
    if header & 0x01 != 0 {
        return false;
    }
    p.get(i + 3..i + 6).is_none_or(|code| code == [0x9d, 0x01, 0x2a])
}

/// VP9 RTP payload descriptor (RFC 9628): P=0 (no inter-picture prediction) and B=1 (start of a
/// frame); with layer indices present, only the base spatial layer (SID 0) starts a decodable picture.
fn vp9_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    let inter_predicted = b0 & 0x40 != 0;
    let begins_frame = b0 & 0x08 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    if b0 & 0x20 == 0 {
        return true; // no layer indices: single spatial layer
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&pic) = p.get(i) else {
            return false;
        };
        i += if pic & 0x80 != 0 { 2 } else { 1 };
    }
    p.get(i).is_some_and(|&layer| (layer >> 1) & 0x07 == 0)
}

/// RFC 6184 packetization modes 0 and 1 (the ones browsers negotiate): an IDR slice (type 5) or an
/// SPS (type 7, which encoders send right before an IDR) as a single NAL unit, inside a STAP-A, or at
/// the start of an FU-A.
fn h264_is_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let is_key_nal = |t: u8| t == IDR || t == SPS;
    let Some(&nal) = p.first() else {
        return false;
    };
    match nal & 0x1f {
        STAP_A => {
            let mut rest = &p[1..];
            while let Some((size, tail)) = rest.split_first_chunk::<2>() {
                let size = usize::from(u16::from_be_bytes(*size));
                let Some(unit) = tail.get(..size).filter(|u| !u.is_empty()) else {
                    return false;
                };
                if is_key_nal(unit[0] & 0x1f) {
                    return true;
                }
                rest = &tail[size..];
            }
            false
        }
        FU_A => p.get(1).is_some_and(|&fu| fu & 0x80 != 0 && is_key_nal(fu & 0x1f)),
        t => is_key_nal(t),
    }
}

/// AV1 RTP aggregation header: N=1 marks the first packet of a coded video sequence, which starts
/// with a sequence header and a key frame.
fn av1_is_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|&b| b & 0x08 != 0)
}

/// Why a keyframe was requested; kept for metrics only, all reasons are coalesced alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyframeReason {
    SubscriberPli,
    SubscriberFir,
    NewSubscriber,
    LayerSwitch,
    /// A broadcast's late-joiner cache is getting old (see `gop`).
    CacheRefresh,
}

/// Request throttling settings.
#[derive(Debug, Clone)]
pub struct KeyframeConfig {
    /// Minimum spacing between two PLIs upstream.
    pub min_interval: Duration,
    /// Resend an unanswered request after max(this, RTT × `retry_rtt_multiple`).
    pub retry_after: Duration,
    pub retry_rtt_multiple: u32,
}

impl Default for KeyframeConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
            retry_rtt_multiple: 2,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyframeStats {
    pub requests: u64,
    pub from_subscribers: u64,
    /// PLIs sent upstream, retries included.
    pub sent: u64,
    pub retries: u64,
    /// Pending requests cleared by an arriving keyframe.
    pub satisfied: u64,
}

/// PLI policy for one publisher stream.
#[derive(Debug, Clone)]
pub struct KeyframeRequester {
    cfg: KeyframeConfig,
    rtt: Duration,
    pending_since: Option<Instant>,
    sent_for_pending: bool,
    last_sent: Option<Instant>,
    stats: KeyframeStats,
}

impl KeyframeRequester {
    pub fn new(cfg: KeyframeConfig) -> Self {
        Self {
            cfg,
            rtt: Duration::ZERO,
            pending_since: None,
            sent_for_pending: false,
            last_sent: None,
            stats: KeyframeStats::default(),
        }
    }

    pub fn stats(&self) -> KeyframeStats {
        self.stats
    }

    /// Publisher RTT, which stretches the retry interval on long links.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    pub fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// Someone needs a keyframe; coalesced with whatever is already pending.
    pub fn request(&mut self, now: Instant, reason: KeyframeReason) {
        self.stats.requests += 1;
        if matches!(reason, KeyframeReason::SubscriberPli | KeyframeReason::SubscriberFir) {
            self.stats.from_subscribers += 1;
        }
        self.pending_since.get_or_insert(now);
    }

    /// Whether to send a PLI upstream now; if true, it counts as sent.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending_since.is_none() {
            return false;
        }
        match self.next_poll_at() {
            Some(at) if now >= at => {
                if self.sent_for_pending {
                    self.stats.retries += 1;
                }
                self.sent_for_pending = true;
                self.last_sent = Some(now);
                self.stats.sent += 1;
                true
            }
            _ => false,
        }
    }

    /// A keyframe arrived from the publisher: every pending request is satisfied.
    pub fn on_keyframe(&mut self, _now: Instant) {
        if self.pending_since.take().is_some() {
            self.stats.satisfied += 1;
        }
        self.sent_for_pending = false;
    }

    /// Earliest instant at which [`Self::poll`] may return true; `None` when nothing is pending.
    pub fn next_poll_at(&self) -> Option<Instant> {
        let since = self.pending_since?;
        let Some(last) = self.last_sent else {
            return Some(since);
        };
        let wait = if self.sent_for_pending {
            self.retry_interval().max(self.cfg.min_interval)
        } else {
            self.cfg.min_interval
        };
        Some((last + wait).max(since))
    }

    fn retry_interval(&self) -> Duration {
        self.cfg
            .retry_after
            .max(self.rtt.saturating_mul(self.cfg.retry_rtt_multiple))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// VP8 keyframe payload header: frame tag (P=0, show_frame), start code, 640x480.
    const VP8_KEY_HEADER: [u8; 10] = [0x50, 0x2d, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];

    fn vp8(descriptor: &[u8], header: &[u8]) -> Vec<u8> {
        [descriptor, header].concat()
    }

    #[test]
    fn vp8_minimal_descriptor() {
        assert!(is_keyframe(Codec::Vp8, &vp8(&[0x10], &VP8_KEY_HEADER)));
        let mut inter = VP8_KEY_HEADER;
        inter[0] |= 0x01;
        assert!(!is_keyframe(Codec::Vp8, &vp8(&[0x10], &inter[..3])));
        // Not the start of a partition, or not partition 0.
        assert!(!is_keyframe(Codec::Vp8, &vp8(&[0x00], &VP8_KEY_HEADER)));
        assert!(!is_keyframe(Codec::Vp8, &vp8(&[0x11], &VP8_KEY_HEADER)));
        // N (non-reference) does not matter for keyframe-ness.
        assert!(is_keyframe(Codec::Vp8, &vp8(&[0x30], &VP8_KEY_HEADER)));
    }

    #[test]
    fn vp8_extended_descriptor_variants() {
        // X, I with 7-bit picture id.
        assert!(is_keyframe(Codec::Vp8, &vp8(&[0x90, 0x80, 0x05], &VP8_KEY_HEADER)));
        // X, I with 15-bit picture id (M bit).
        assert!(is_keyframe(
            Codec::Vp8,
            &vp8(&[0x90, 0x80, 0x81, 0x23], &VP8_KEY_HEADER)
        ));
        // X, I (15-bit), L, T and K: all optional bytes present.
        assert!(is_keyframe(
            Codec::Vp8,
            &vp8(&[0x90, 0xF0, 0x85, 0x55, 0x17, 0x40], &VP8_KEY_HEADER)
        ));
        // Only K: one TID/KEYIDX byte.
        assert!(is_keyframe(Codec::Vp8, &vp8(&[0x90, 0x10, 0x1f], &VP8_KEY_HEADER)));
        // The P bit is only found by honouring M: here the picture id's second byte has P=0.
        let mut inter = VP8_KEY_HEADER;
        inter[0] = 0x51;
        assert!(!is_keyframe(Codec::Vp8, &vp8(&[0x90, 0x80, 0x80, 0x02], &inter)));
    }

    #[test]
    fn vp8_rejects_truncated_and_corrupt() {
        assert!(!is_keyframe(Codec::Vp8, &[]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0x80]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23]));
        let mut bad = VP8_KEY_HEADER;
        bad[3] = 0x00;
        assert!(!is_keyframe(Codec::Vp8, &vp8(&[0x10], &bad)));
        // A short first packet with P=0 is trusted on the P bit alone.
        assert!(is_keyframe(Codec::Vp8, &vp8(&[0x10], &VP8_KEY_HEADER[..3])));
    }

    #[test]
    fn h264_single_nal_units() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88, 0x84]), "IDR");
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42, 0xc0, 0x1f]), "SPS");
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9a]), "non-IDR slice");
        assert!(!is_keyframe(Codec::H264, &[0x68, 0xce]), "PPS");
        assert!(!is_keyframe(Codec::H264, &[0x06, 0x05]), "SEI");
        assert!(!is_keyframe(Codec::H264, &[]));
    }

    #[test]
    fn h264_stap_a() {
        // STAP-A: SPS (2 bytes) + PPS (2 bytes) + IDR (2 bytes).
        let stap = [
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x65, 0x88,
        ];
        assert!(is_keyframe(Codec::H264, &stap));
        // IDR only as the last unit.
        let last = [0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x65, 0x88];
        assert!(is_keyframe(Codec::H264, &last));
        // SEI + non-IDR.
        let delta = [0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x41, 0x9a];
        assert!(!is_keyframe(Codec::H264, &delta));
        // Size overruns the packet before the IDR: malformed, not a keyframe.
        let truncated = [0x78, 0x00, 0x09, 0x06, 0x05, 0x65];
        assert!(!is_keyframe(Codec::H264, &truncated));
        // Zero-size unit is malformed.
        assert!(!is_keyframe(Codec::H264, &[0x78, 0x00, 0x00, 0x65]));
        assert!(!is_keyframe(Codec::H264, &[0x78]));
    }

    #[test]
    fn h264_fu_a() {
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0xb8]), "start of IDR");
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0xb8]), "middle of IDR");
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x45, 0xb8]), "end of IDR");
        assert!(!is_keyframe(Codec::H264, &[0x5c, 0x81, 0x9a]), "start of non-IDR");
        assert!(!is_keyframe(Codec::H264, &[0x7c]), "truncated");
    }

    #[test]
    fn vp9_descriptor() {
        // I|B, 7-bit picture id, no layer indices.
        assert!(is_keyframe(Codec::Vp9, &[0x88, 0x05, 0x00]));
        // I|L|B, 15-bit picture id, layer byte SID 0, TL0PICIDX.
        assert!(is_keyframe(Codec::Vp9, &[0xA8, 0x80, 0x01, 0x00, 0x00]));
        // Same picture on spatial layer 1: not where a subscriber can start decoding.
        assert!(!is_keyframe(Codec::Vp9, &[0xA8, 0x80, 0x01, 0x02, 0x00]));
        // P set: inter-predicted.
        assert!(!is_keyframe(Codec::Vp9, &[0xC8, 0x05]));
        // B clear: not the first packet of the frame.
        assert!(!is_keyframe(Codec::Vp9, &[0x80, 0x05]));
        // L set but truncated.
        assert!(!is_keyframe(Codec::Vp9, &[0xA8, 0x80]));
        assert!(!is_keyframe(Codec::Vp9, &[]));
        // No picture id, L set, SID 0.
        assert!(is_keyframe(Codec::Vp9, &[0x28, 0x00]));
    }

    #[test]
    fn av1_new_coded_video_sequence() {
        assert!(is_keyframe(Codec::Av1, &[0x18, 0x0a]));
        assert!(!is_keyframe(Codec::Av1, &[0x10, 0x32]));
        assert!(!is_keyframe(Codec::Av1, &[]));
    }

    #[test]
    fn first_request_is_sent_immediately_and_once() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig::default());
        assert!(!k.poll(t0));
        k.request(t0, KeyframeReason::NewSubscriber);
        assert_eq!(k.next_poll_at(), Some(t0));
        assert!(k.poll(t0));
        assert!(!k.poll(t0 + ms(1)));
    }

    #[test]
    fn requests_are_coalesced_and_satisfied_by_keyframe() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig::default());
        k.request(t0, KeyframeReason::SubscriberPli);
        assert!(k.poll(t0));
        for i in 1..20 {
            k.request(t0 + ms(i * 10), KeyframeReason::SubscriberPli);
            assert!(!k.poll(t0 + ms(i * 10)));
        }
        k.on_keyframe(t0 + ms(300));
        assert!(!k.is_pending());
        assert!(!k.poll(t0 + ms(5000)));
        let st = k.stats();
        assert_eq!(
            (st.requests, st.from_subscribers, st.sent, st.satisfied),
            (20, 20, 1, 1)
        );
    }

    #[test]
    fn new_request_after_keyframe_is_throttled() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig::default());
        k.request(t0, KeyframeReason::LayerSwitch);
        assert!(k.poll(t0));
        k.on_keyframe(t0 + ms(100));
        k.request(t0 + ms(200), KeyframeReason::SubscriberFir);
        assert_eq!(k.next_poll_at(), Some(t0 + ms(500)));
        assert!(!k.poll(t0 + ms(499)));
        assert!(k.poll(t0 + ms(500)));
        assert_eq!(k.stats().retries, 0);
    }

    #[test]
    fn unanswered_request_is_retried() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig::default());
        k.request(t0, KeyframeReason::SubscriberPli);
        assert!(k.poll(t0));
        assert!(!k.poll(t0 + ms(999)));
        assert!(k.poll(t0 + ms(1000)));
        assert_eq!(k.stats().retries, 1);
        // On a long link the retry waits two RTTs.
        k.set_rtt(ms(800));
        assert!(!k.poll(t0 + ms(2599)));
        assert!(k.poll(t0 + ms(2600)));
        k.on_keyframe(t0 + ms(2700));
        assert_eq!(k.next_poll_at(), None);
    }

    #[test]
    fn throttle_interval_is_configurable() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig {
            min_interval: ms(2000),
            ..KeyframeConfig::default()
        });
        k.request(t0, KeyframeReason::SubscriberPli);
        assert!(k.poll(t0));
        k.on_keyframe(t0 + ms(10));
        k.request(t0 + ms(20), KeyframeReason::SubscriberPli);
        assert!(!k.poll(t0 + ms(1999)));
        assert!(k.poll(t0 + ms(2000)));
        // Retry is never sooner than the throttle either.
        assert!(!k.poll(t0 + ms(3999)));
        assert!(k.poll(t0 + ms(4000)));
    }

    #[test]
    fn keyframe_without_request_changes_nothing() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(KeyframeConfig::default());
        k.on_keyframe(t0);
        assert_eq!(k.stats(), KeyframeStats::default());
        k.request(t0, KeyframeReason::NewSubscriber);
        assert!(k.poll(t0));
    }
}
