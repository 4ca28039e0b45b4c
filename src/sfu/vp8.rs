//! VP8 payload-descriptor continuity across simulcast switches (RFC 7741 §4.2).
//!
//! Why: each simulcast layer is its own encoder with its own PictureID and
//! TL0PICIDX counters. The munger keeps the RTP sequence and timestamp of a
//! downtrack continuous across a layer switch, but the receiver's VP8
//! reference finder (libwebrtc's `RtpVp8RefFinder`) orders frames by
//! PictureID: a jump back on the switch makes it treat the new layer's frames
//! as old and drop them, a jump forward as thousands of missing frames. So,
//! as LiveKit's VP8 munger and mediasoup's simulcast consumer do, every
//! forwarded packet's PictureID and TL0PICIDX are shifted by a per-downtrack
//! offset chosen at the switch so the first frame of the new layer follows
//! the last one forwarded.
//!
//! Only the descriptor's bytes change, in place in a copy of the payload; a
//! downtrack that never switched has zero offsets and forwards the shared
//! payload without copying.

use bytes::{Bytes, BytesMut};

/// Where the rewritable fields sit in one packet's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Fields {
    /// (byte offset, 15-bit form, value)
    pub picture_id: Option<(usize, bool, u16)>,
    /// (byte offset, value)
    pub tl0: Option<(usize, u8)>,
}

/// Reads the descriptor; None when the payload is too short for what its
/// flags announce (such a packet is forwarded untouched).
pub fn parse(payload: &[u8]) -> Option<Vp8Fields> {
    let b0 = *payload.first()?;
    let mut f = Vp8Fields {
        picture_id: None,
        tl0: None,
    };
    if b0 & 0x80 == 0 {
        return Some(f);
    }
    let x = *payload.get(1)?;
    let mut at = 2;
    if x & 0x80 != 0 {
        let p0 = *payload.get(at)?;
        if p0 & 0x80 != 0 {
            let p1 = *payload.get(at + 1)?;
            f.picture_id = Some((at, true, (u16::from(p0 & 0x7f) << 8) | u16::from(p1)));
            at += 2;
        } else {
            f.picture_id = Some((at, false, u16::from(p0)));
            at += 1;
        }
    }
    if x & 0x40 != 0 {
        f.tl0 = Some((at, *payload.get(at)?));
    }
    Some(f)
}

/// Per-downtrack offsets.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    source: Option<u32>,
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

fn pid_mask(long: bool) -> u16 {
    if long { 0x7fff } else { 0x7f }
}

impl Vp8Rewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites one packet forwarded from `source` (the layer's SSRC). A new
    /// source re-anchors: its first picture follows the last one sent.
    pub fn rewrite(&mut self, source: u32, payload: &Bytes) -> Bytes {
        let Some(f) = parse(payload) else {
            return payload.clone();
        };
        if self.source != Some(source) {
            self.source = Some(source);
            if let (Some((_, long, pid)), Some(last)) = (f.picture_id, self.last_pid) {
                self.pid_offset = pid.wrapping_sub(last.wrapping_add(1)) & pid_mask(long);
            }
            if let (Some((_, tl0)), Some(last)) = (f.tl0, self.last_tl0) {
                self.tl0_offset = tl0.wrapping_sub(last.wrapping_add(1));
            }
        }
        let pid = f
            .picture_id
            .map(|(at, long, v)| (at, long, v.wrapping_sub(self.pid_offset) & pid_mask(long)));
        let tl0 = f.tl0.map(|(at, v)| (at, v.wrapping_sub(self.tl0_offset)));
        if let Some((_, long, v)) = pid
            && self.last_pid.is_none_or(|l| newer(v, l, long))
        {
            self.last_pid = Some(v);
        }
        if let Some((_, v)) = tl0
            && self.last_tl0.is_none_or(|l| v != l && v.wrapping_sub(l) < 0x80)
        {
            self.last_tl0 = Some(v);
        }
        if self.pid_offset == 0 && self.tl0_offset == 0 {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some((at, long, v)) = pid {
            if long {
                out[at] = 0x80 | (v >> 8) as u8;
                out[at + 1] = v as u8;
            } else {
                out[at] = v as u8 & 0x7f;
            }
        }
        if let Some((at, v)) = tl0 {
            out[at] = v;
        }
        out.freeze()
    }
}

fn newer(a: u16, b: u16, long: bool) -> bool {
    let m = pid_mask(long);
    let d = a.wrapping_sub(b) & m;
    d != 0 && d <= m / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X=1, I=1 (15-bit PictureID), L=1, T=1; then the frame tag byte.
    fn pkt(pid: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![0x90, 0xe0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, 0x20, 0x9d])
    }

    fn fields(b: &Bytes) -> (u16, u8) {
        let f = parse(b).unwrap();
        (f.picture_id.unwrap().2, f.tl0.unwrap().1)
    }

    #[test]
    fn parses_short_and_long_picture_ids() {
        assert_eq!(
            parse(&pkt(0x1234, 9)),
            Some(Vp8Fields {
                picture_id: Some((2, true, 0x1234)),
                tl0: Some((4, 9))
            })
        );
        assert_eq!(
            parse(&[0x90, 0x80, 0x05, 0x00]),
            Some(Vp8Fields {
                picture_id: Some((2, false, 5)),
                tl0: None
            })
        );
        // No extension byte: nothing to rewrite.
        assert_eq!(
            parse(&[0x10, 0x00]),
            Some(Vp8Fields {
                picture_id: None,
                tl0: None
            })
        );
        // Flags promise more than the packet holds.
        assert_eq!(parse(&[0x90, 0xc0, 0x81]), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn a_switch_continues_the_picture_ids_and_one_source_is_untouched() {
        let mut r = Vp8Rewriter::new();
        // Layer A: forwarded as is, no copy.
        for pid in 100..110u16 {
            let p = pkt(pid, (pid / 3) as u8);
            let out = r.rewrite(1, &p);
            assert_eq!(out.as_ptr(), p.as_ptr());
        }
        // Switch to layer B, whose counters are elsewhere.
        let out = r.rewrite(2, &pkt(30_000, 200));
        assert_eq!(fields(&out), (110, 37));
        let out = r.rewrite(2, &pkt(30_001, 201));
        assert_eq!(fields(&out), (111, 38));
        // Several packets of one picture keep one id.
        let out = r.rewrite(2, &pkt(30_001, 201));
        assert_eq!(fields(&out), (111, 38));
        // Back to A later: continues again.
        let out = r.rewrite(1, &pkt(500, 20));
        assert_eq!(fields(&out), (112, 39));
        // The rest of the payload is untouched.
        assert_eq!(&out[5..], &[0x20, 0x9d]);
    }

    #[test]
    fn picture_ids_wrap_at_fifteen_bits() {
        let mut r = Vp8Rewriter::new();
        r.rewrite(1, &pkt(0x7ffe, 0));
        let out = r.rewrite(2, &pkt(10, 0));
        assert_eq!(fields(&out).0, 0x7fff);
        let out = r.rewrite(2, &pkt(11, 1));
        assert_eq!(fields(&out).0, 0);
    }
}
