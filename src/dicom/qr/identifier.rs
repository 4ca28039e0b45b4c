//! Q/R identifiers on the wire (PS3.4 C.4.1.1.3): the dataset of a C-FIND,
//! C-MOVE or C-GET request read into its top-level elements, and the
//! response identifiers written back in the association's encoding.
//!
//! Not the ingest walker (`dicom::walk`): that one keeps a few short values
//! of a possibly huge dataset, while an identifier is small (bounded by
//! [`MAX_IDENTIFIER_BYTES`]) and every element matters: an empty key is a
//! return key, and a 64 kB UID list must not silently vanish. Sequences
//! (e.g. Referenced Study Sequence) are recognised and skipped: medrelay
//! matches no sequence key and answers them empty. Pure: no I/O.

use std::io::{Read, Write};

use super::super::walk::Encoding;

/// Largest identifier accepted: a 1 000-UID list is about 65 kB.
pub const MAX_IDENTIFIER_BYTES: usize = 1 << 20;
/// Top-level elements in one identifier at most.
const MAX_ELEMENTS: usize = 1024;
/// Sequence nesting skipped at most.
const MAX_DEPTH: usize = 16;
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// One top-level element of a request identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub tag: u32,
    /// The VR as sent (explicit VR transfer syntaxes only).
    pub vr: Option<[u8; 2]>,
    /// The raw value (empty for a sequence).
    pub value: Vec<u8>,
    pub sequence: bool,
}

/// A request identifier: its top-level elements in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifier {
    pub elements: Vec<Element>,
}

impl Identifier {
    pub fn get(&self, tag: u32) -> Option<&Element> {
        self.elements.iter().find(|e| e.tag == tag)
    }
}

/// Why a request identifier cannot be read (status 0xC000 / 0xA900).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("identifier longer than {MAX_IDENTIFIER_BYTES} bytes")]
    TooLong,
    #[error("identifier truncated at byte {0}")]
    Truncated(usize),
    #[error("invalid VR at byte {0}")]
    BadVr(usize),
    #[error("more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("sequences nested too deeply")]
    TooDeep,
    #[error("elements out of order at byte {0}")]
    OutOfOrder(usize),
    #[error("unexpected delimiter at byte {0}")]
    BadItem(usize),
    #[error("deflated identifier could not be inflated")]
    Inflate,
}

/// Reads a request identifier encoded as `enc` says.
pub fn parse(bytes: &[u8], enc: Encoding) -> Result<Identifier, IdentifierError> {
    if bytes.len() > MAX_IDENTIFIER_BYTES {
        return Err(IdentifierError::TooLong);
    }
    if enc.deflated {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .take(MAX_IDENTIFIER_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| IdentifierError::Inflate)?;
        return parse(&out, Encoding { deflated: false, ..enc });
    }
    let mut r = Reader { b: bytes, pos: 0, enc };
    let mut elements: Vec<Element> = Vec::new();
    while r.pos < bytes.len() {
        let at = r.pos;
        let h = r.header()?;
        if h.group == 0xFFFE {
            return Err(IdentifierError::BadItem(at));
        }
        let tag = (u32::from(h.group) << 16) | u32::from(h.elem);
        if elements.last().is_some_and(|e| e.tag >= tag) {
            return Err(IdentifierError::OutOfOrder(at));
        }
        if elements.len() == MAX_ELEMENTS {
            return Err(IdentifierError::TooManyElements);
        }
        let sequence = h.vr == Some(*b"SQ") || h.len == UNDEFINED;
        let value = if h.len == UNDEFINED {
            r.skip_undefined(h.vr, 1)?;
            Vec::new()
        } else if sequence {
            r.take(h.len as usize)?;
            Vec::new()
        } else {
            r.take(h.len as usize)?.to_vec()
        };
        elements.push(Element {
            tag,
            vr: h.vr,
            value,
            sequence,
        });
    }
    Ok(Identifier { elements })
}

struct Header {
    group: u16,
    elem: u16,
    vr: Option<[u8; 2]>,
    len: u32,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    enc: Encoding,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IdentifierError> {
        let end = self.pos.checked_add(n).ok_or(IdentifierError::Truncated(self.pos))?;
        let s = self.b.get(self.pos..end).ok_or(IdentifierError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, IdentifierError> {
        let s = self.take(2)?;
        let a = [s[0], s[1]];
        Ok(if self.enc.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    }

    fn u32(&mut self) -> Result<u32, IdentifierError> {
        let s = self.take(4)?;
        let a = [s[0], s[1], s[2], s[3]];
        Ok(if self.enc.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    fn header_as(&mut self, explicit: bool) -> Result<Header, IdentifierError> {
        let at = self.pos;
        let group = self.u16()?;
        let elem = self.u16()?;
        if group == 0xFFFE || !explicit {
            let len = self.u32()?;
            return Ok(Header {
                group,
                elem,
                vr: None,
                len,
            });
        }
        let v = self.take(2)?;
        let vr = [v[0], v[1]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(IdentifierError::BadVr(at));
        }
        let long = matches!(
            &vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"UC" | b"UR" | b"UT" | b"UN" | b"SV" | b"UV"
        );
        let len = if long {
            self.take(2)?;
            self.u32()?
        } else {
            u32::from(self.u16()?)
        };
        Ok(Header {
            group,
            elem,
            vr: Some(vr),
            len,
        })
    }

    fn header(&mut self) -> Result<Header, IdentifierError> {
        self.header_as(self.enc.explicit_vr)
    }

    /// Skips an undefined-length value: a sequence of items (each a
    /// dataset or of defined length) up to its delimiter. A UN of undefined
    /// length holds implicit VR content (PS3.5 6.2.2).
    fn skip_undefined(&mut self, vr: Option<[u8; 2]>, depth: usize) -> Result<(), IdentifierError> {
        if depth > MAX_DEPTH {
            return Err(IdentifierError::TooDeep);
        }
        let explicit = self.enc.explicit_vr && vr != Some(*b"UN");
        loop {
            let at = self.pos;
            let h = self.header_as(explicit)?;
            match (h.group, h.elem) {
                (0xFFFE, 0xE0DD) => return Ok(()),
                (0xFFFE, 0xE000) if h.len == UNDEFINED => self.skip_item(explicit, depth)?,
                (0xFFFE, 0xE000) => {
                    self.take(h.len as usize)?;
                }
                _ => return Err(IdentifierError::BadItem(at)),
            }
        }
    }

    fn skip_item(&mut self, explicit: bool, depth: usize) -> Result<(), IdentifierError> {
        loop {
            let at = self.pos;
            let h = self.header_as(explicit)?;
            match (h.group, h.elem) {
                (0xFFFE, 0xE00D) => return Ok(()),
                (0xFFFE, _) => return Err(IdentifierError::BadItem(at)),
                _ if h.len == UNDEFINED => self.skip_undefined(h.vr, depth + 1)?,
                _ => {
                    self.take(h.len as usize)?;
                }
            }
        }
    }
}

/// One element of a response identifier: tag, VR and the encoded value
/// (padding is added here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: Vec<u8>,
}

/// Writes a response identifier in `enc` (elements sorted by tag, values
/// padded to even length: UIDs with NUL, text with spaces).
pub fn encode(mut elements: Vec<Out>, enc: Encoding) -> Vec<u8> {
    elements.sort_by_key(|e| e.tag);
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.value.len() + 13).sum());
    for e in elements {
        let mut value = e.value;
        if value.len() % 2 == 1 {
            value.push(if &e.vr == b"UI" { 0 } else { b' ' });
        }
        let (group, elem) = ((e.tag >> 16) as u16, e.tag as u16);
        let put16 = |out: &mut Vec<u8>, v: u16| {
            out.extend_from_slice(&if enc.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let put32 = |out: &mut Vec<u8>, v: u32| {
            out.extend_from_slice(&if enc.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        put16(&mut out, group);
        put16(&mut out, elem);
        let long = matches!(
            &e.vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"UC" | b"UR" | b"UT" | b"UN" | b"SV" | b"UV"
        );
        if !enc.explicit_vr {
            put32(&mut out, value.len() as u32);
        } else if long {
            out.extend_from_slice(&e.vr);
            out.extend_from_slice(&[0, 0]);
            put32(&mut out, value.len() as u32);
        } else {
            out.extend_from_slice(&e.vr);
            // Short-VR values are at most 64 kB by construction (keys are
            // bounded by their VR); clip rather than wrap if one were not.
            put16(&mut out, value.len().min(0xFFFE) as u16);
            value.truncate(0xFFFE);
        }
        out.extend_from_slice(&value);
    }
    if enc.deflated {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing to a Vec cannot fail.
        let _ = z.write_all(&out);
        return z.finish().unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit() -> Encoding {
        Encoding::for_transfer_syntax("1.2.840.10008.1.2.1")
    }
    fn implicit() -> Encoding {
        Encoding::for_transfer_syntax("1.2.840.10008.1.2")
    }

    fn out(tag: u32, vr: &[u8; 2], v: &str) -> Out {
        Out {
            tag,
            vr: *vr,
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn round_trips_in_both_encodings_with_padding() {
        for enc in [
            explicit(),
            implicit(),
            Encoding::for_transfer_syntax("1.2.840.10008.1.2.1.99"),
        ] {
            let bytes = encode(
                vec![
                    out(0x0020_000D, b"UI", "1.2.3"),
                    out(0x0008_0052, b"CS", "STUDY"),
                    out(0x0010_0010, b"PN", ""),
                ],
                enc,
            );
            let id = parse(&bytes, enc).expect("parse");
            let tags: Vec<u32> = id.elements.iter().map(|e| e.tag).collect();
            assert_eq!(tags, [0x0008_0052, 0x0010_0010, 0x0020_000D], "sorted by tag");
            assert_eq!(id.get(0x0020_000D).map(|e| e.value.as_slice()), Some(&b"1.2.3\0"[..]));
            assert_eq!(id.get(0x0008_0052).map(|e| e.value.as_slice()), Some(&b"STUDY "[..]));
            assert_eq!(id.get(0x0010_0010).map(|e| e.value.len()), Some(0), "empty key kept");
            if enc.explicit_vr && !enc.deflated {
                assert_eq!(id.get(0x0010_0010).and_then(|e| e.vr), Some(*b"PN"));
            }
        }
    }

    #[test]
    fn long_uid_lists_are_kept_whole() {
        let list: Vec<String> = (0..1000).map(|n| format!("1.2.826.0.1.3680043.8.498.{n}")).collect();
        let v = list.join("\\");
        assert!(v.len() > 4096);
        // UI is a short VR: a list longer than 64 kB cannot be sent in
        // explicit VR at all; implicit VR carries it.
        let bytes = encode(vec![out(0x0008_0018, b"UI", &v)], implicit());
        let id = parse(&bytes, implicit()).expect("parse");
        assert_eq!(id.elements[0].value.len(), v.len() + v.len() % 2);
    }

    #[test]
    fn sequences_are_skipped_and_flagged() {
        // (0008,1110) SQ undefined length with one undefined-length item
        // holding (0008,1150) UI, then (0010,0010) PN.
        let mut b = Vec::new();
        b.extend_from_slice(&[0x08, 0x00, 0x10, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        b.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        b.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
        b.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' ']);
        let id = parse(&b, explicit()).expect("parse");
        assert_eq!(id.elements.len(), 2);
        assert!(id.elements[0].sequence && id.elements[0].value.is_empty());
        assert_eq!(id.elements[1].value, b"A ");
    }

    #[test]
    fn hostile_identifiers_are_refused() {
        let ok = encode(vec![out(0x0010_0010, b"PN", "Wang")], explicit());
        for cut in 1..ok.len() {
            if cut < ok.len() {
                assert!(parse(&ok[..cut], explicit()).is_err(), "cut at {cut}");
            }
        }
        let mut twice = ok.clone();
        twice.extend_from_slice(&ok);
        assert_eq!(parse(&twice, explicit()), Err(IdentifierError::OutOfOrder(ok.len())));
        let mut badvr = ok.clone();
        badvr[4] = b'x';
        assert_eq!(parse(&badvr, explicit()), Err(IdentifierError::BadVr(0)));
        // A length that points past the end, and nesting without end.
        let huge = [0x10, 0x00, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0x7F];
        assert!(matches!(parse(&huge, implicit()), Err(IdentifierError::Truncated(_))));
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x08, 0x00, 0x10, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert!(parse(&deep, implicit()).is_err());
        assert_eq!(
            parse(&vec![0u8; MAX_IDENTIFIER_BYTES + 1], implicit()),
            Err(IdentifierError::TooLong)
        );
    }
}
