//! Structural check of a received dataset, in one streaming pass.
//!
//! A C-STORE must not be acknowledged for a dataset we could not read back
//! later, yet a 1 GB multi-frame must not be loaded to find out. This walker
//! reads element headers, skips values (reading through them, so truncation is
//! always noticed), descends into undefined-length sequences and encapsulated
//! pixel data, and picks up the few top-level attributes the index needs.
//! Memory use is the wanted values plus one scratch buffer.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

/// How the dataset is encoded on the wire, derived from the transfer syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
    pub deflated: bool,
}

impl Encoding {
    pub fn for_transfer_syntax(uid: &str) -> Encoding {
        let uid = uid.trim_end_matches(['\0', ' ']);
        Encoding {
            explicit_vr: uid != "1.2.840.10008.1.2",
            big_endian: uid == "1.2.840.10008.1.2.2",
            deflated: uid == "1.2.840.10008.1.2.1.99" || uid == "1.2.840.10008.1.2.4.95",
        }
    }
    const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
        deflated: false,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("dataset truncated at byte {0}")]
    Truncated(u64),
    #[error("invalid VR bytes {vr:02X?} for ({group:04X},{elem:04X}) at byte {at}")]
    BadVr {
        group: u16,
        elem: u16,
        vr: [u8; 2],
        at: u64,
    },
    #[error("unexpected ({group:04X},{elem:04X}) inside a sequence at byte {at}")]
    BadItem { group: u16, elem: u16, at: u64 },
    #[error("sequences nested deeper than {0}")]
    TooDeep(usize),
    #[error("pixel data in more than {0} fragments")]
    TooManyFragments(usize),
    #[error("dataset is empty")]
    Empty,
    #[error("read error: {0}")]
    Io(io::Error),
}

const MAX_DEPTH: usize = 32;
/// Most encapsulated pixel data fragments kept (16 bytes each, so at most
/// 16 MiB): far more than any real image has frames, while an 8-byte item
/// header each would otherwise cost 2-4x the dataset (or, deflated, ~1000x
/// its compressed size).
pub const MAX_FRAGMENTS: usize = 1 << 20;
/// Values longer than this are not collected even if wanted; index fields are short.
const MAX_COLLECT: u32 = 4096;
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// Where the top-level Pixel Data value is, relative to the dataset start
/// (positions in the inflated stream for deflated transfer syntaxes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PixelLocation {
    Native {
        offset: u64,
        length: u64,
    },
    /// Item values as (offset, length); the first is the basic offset table.
    Encapsulated {
        fragments: Vec<(u64, u32)>,
    },
}

#[derive(Debug, Default)]
pub struct Summary {
    /// Raw values of the wanted top-level tags, keyed by (group << 16 | elem).
    pub values: HashMap<u32, Vec<u8>>,
    pub top_level_elements: usize,
    /// Pixel Data, Float or Double Float Pixel Data present at top level.
    pub has_pixel_data: bool,
    pub pixel_data: Option<PixelLocation>,
}

/// Moves a reader forward by n bytes.
type SkipBy<R> = fn(&mut R, u64) -> io::Result<()>;

struct Cursor<R> {
    inner: R,
    pos: u64,
    scratch: Vec<u8>,
    /// Skips values by seeking instead of reading through them, with the
    /// dataset's length to notice truncation ([`walk_seekable`]).
    seek: Option<(SkipBy<R>, u64)>,
}

impl<R: Read> Cursor<R> {
    /// Fill `buf` completely; Ok(false) on a clean EOF before the first byte.
    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, WalkError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(WalkError::Truncated(self.pos + got as u64)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WalkError::Io(e)),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WalkError> {
        if self.read_exact_or_eof(buf)? {
            Ok(())
        } else {
            Err(WalkError::Truncated(self.pos))
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), WalkError> {
        if let Some((seek, len)) = self.seek {
            if self.pos.saturating_add(n) > len {
                return Err(WalkError::Truncated(len));
            }
            seek(&mut self.inner, n).map_err(WalkError::Io)?;
            self.pos += n;
            return Ok(());
        }
        while n > 0 {
            let chunk = n.min(self.scratch.len() as u64) as usize;
            let mut buf = std::mem::take(&mut self.scratch);
            let res = self.read_exact(&mut buf[..chunk]);
            self.scratch = buf;
            res?;
            n -= chunk as u64;
        }
        Ok(())
    }
}

struct Header {
    group: u16,
    elem: u16,
    vr: Option<[u8; 2]>,
    len: u32,
}

fn u16_of(b: [u8; 2], be: bool) -> u16 {
    if be {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}
fn u32_of(b: [u8; 4], be: bool) -> u32 {
    if be {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

fn read_header<R: Read>(c: &mut Cursor<R>, enc: Encoding) -> Result<Option<Header>, WalkError> {
    let at = c.pos;
    let mut tag = [0u8; 4];
    if !c.read_exact_or_eof(&mut tag)? {
        return Ok(None);
    }
    let be = enc.big_endian;
    let group = u16_of([tag[0], tag[1]], be);
    let elem = u16_of([tag[2], tag[3]], be);
    let mut four = [0u8; 4];
    if group == 0xFFFE || !enc.explicit_vr {
        c.read_exact(&mut four)?;
        return Ok(Some(Header {
            group,
            elem,
            vr: None,
            len: u32_of(four, be),
        }));
    }
    let mut vr = [0u8; 2];
    c.read_exact(&mut vr)?;
    if !vr.iter().all(u8::is_ascii_uppercase) {
        return Err(WalkError::BadVr { group, elem, vr, at });
    }
    let long = matches!(
        &vr,
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"UC" | b"UR" | b"UT" | b"UN" | b"SV" | b"UV"
    );
    let len = if long {
        let mut reserved = [0u8; 2];
        c.read_exact(&mut reserved)?;
        c.read_exact(&mut four)?;
        u32_of(four, be)
    } else {
        let mut two = [0u8; 2];
        c.read_exact(&mut two)?;
        u32::from(u16_of(two, be))
    };
    Ok(Some(Header {
        group,
        elem,
        vr: Some(vr),
        len,
    }))
}

/// The most [`walk`] allocates, whatever the input: the scratch buffer and
/// the inflater (256 KiB), the wanted values (`wanted` tags of at most
/// `MAX_COLLECT` bytes) and the fragment list (1.5 x its largest size, as it
/// grows). Checked by the `walk` fuzz target.
pub fn memory_bound(wanted: usize) -> usize {
    (256 << 10) + wanted * (MAX_COLLECT as usize + 128) + MAX_FRAGMENTS * 16 * 3 / 2
}

/// Walk the dataset in `reader` (no file meta group, no preamble).
/// `wanted` lists top-level tags as (group << 16 | elem) whose values to keep.
pub fn walk<R: Read>(reader: R, enc: Encoding, wanted: &[u32]) -> Result<Summary, WalkError> {
    if enc.deflated {
        let inflated = flate2::read::DeflateDecoder::new(reader);
        return walk_plain(inflated, Encoding { deflated: false, ..enc }, wanted);
    }
    walk_plain(reader, enc, wanted)
}

/// [`walk`] over a seekable source of `len` bytes (the dataset, from the
/// reader's position): values are skipped by seeking, so walking a 1 GB
/// multi-frame in object storage reads its headers, not its pixels.
/// Truncation is still noticed (a value reaching past `len`). Deflated
/// datasets cannot be seeked into: they are read through.
pub fn walk_seekable<R: Read + Seek>(reader: R, enc: Encoding, wanted: &[u32], len: u64) -> Result<Summary, WalkError> {
    if enc.deflated {
        return walk(reader, enc, wanted);
    }
    fn forward<R: Seek>(r: &mut R, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| io::Error::other("skip too long"))?;
        r.seek(SeekFrom::Current(n)).map(|_| ())
    }
    walk_cursor(
        Cursor {
            inner: reader,
            pos: 0,
            scratch: vec![0u8; 64 * 1024],
            seek: Some((forward::<R>, len)),
        },
        enc,
        wanted,
    )
}

fn walk_plain<R: Read>(reader: R, enc: Encoding, wanted: &[u32]) -> Result<Summary, WalkError> {
    walk_cursor(
        Cursor {
            inner: reader,
            pos: 0,
            scratch: vec![0u8; 64 * 1024],
            seek: None,
        },
        enc,
        wanted,
    )
}

fn walk_cursor<R: Read>(mut c: Cursor<R>, enc: Encoding, wanted: &[u32]) -> Result<Summary, WalkError> {
    let mut summary = Summary::default();
    walk_dataset(&mut c, enc, 0, Some((&mut summary, wanted)), false)?;
    if summary.top_level_elements == 0 {
        return Err(WalkError::Empty);
    }
    Ok(summary)
}

/// Walk elements until EOF (top level) or an item delimiter (`in_item`).
fn walk_dataset<R: Read>(
    c: &mut Cursor<R>,
    enc: Encoding,
    depth: usize,
    mut top: Option<(&mut Summary, &[u32])>,
    in_item: bool,
) -> Result<(), WalkError> {
    if depth > MAX_DEPTH {
        return Err(WalkError::TooDeep(MAX_DEPTH));
    }
    loop {
        let at = c.pos;
        let Some(h) = read_header(c, enc)? else {
            return if in_item {
                Err(WalkError::Truncated(c.pos))
            } else {
                Ok(())
            };
        };
        if (h.group, h.elem) == ITEM_END && in_item {
            return Ok(());
        }
        if h.group == 0xFFFE {
            return Err(WalkError::BadItem {
                group: h.group,
                elem: h.elem,
                at,
            });
        }
        let key = (u32::from(h.group) << 16) | u32::from(h.elem);
        if let Some((summary, wanted)) = top.as_mut() {
            summary.top_level_elements += 1;
            // Pixel Data, Float Pixel Data or Double Float Pixel Data.
            if h.group == 0x7FE0 && matches!(h.elem, 0x0008 | 0x0009 | 0x0010) {
                summary.has_pixel_data = true;
            }
            if h.len != UNDEFINED && h.len <= MAX_COLLECT && wanted.contains(&key) {
                let mut v = vec![0u8; h.len as usize];
                c.read_exact(&mut v)?;
                summary.values.insert(key, v);
                continue;
            }
        }
        let top_pixels = (h.group, h.elem) == PIXEL_DATA && depth == 0 && !in_item;
        if h.len != UNDEFINED {
            if top_pixels && let Some((summary, _)) = top.as_mut() {
                summary.pixel_data = Some(PixelLocation::Native {
                    offset: c.pos,
                    length: u64::from(h.len),
                });
            }
            c.skip(u64::from(h.len))?;
            continue;
        }
        // Undefined length: encapsulated pixel data, or a sequence. In explicit
        // VR a UN of undefined length holds implicit VR LE content (PS3.5 §6.2.2).
        if top_pixels {
            let fragments = walk_fragments(c, enc)?;
            if let Some((summary, _)) = top.as_mut() {
                summary.pixel_data = Some(PixelLocation::Encapsulated { fragments });
            }
        } else {
            let inner = if h.vr == Some(*b"UN") {
                Encoding::IMPLICIT_LE
            } else {
                enc
            };
            walk_sequence(c, inner, depth + 1)?;
        }
    }
}

fn walk_sequence<R: Read>(c: &mut Cursor<R>, enc: Encoding, depth: usize) -> Result<(), WalkError> {
    loop {
        let at = c.pos;
        let h = read_header(c, enc)?.ok_or(WalkError::Truncated(c.pos))?;
        match (h.group, h.elem) {
            SEQ_END => return Ok(()),
            ITEM if h.len == UNDEFINED => walk_dataset(c, enc, depth, None, true)?,
            ITEM => c.skip(u64::from(h.len))?,
            (group, elem) => return Err(WalkError::BadItem { group, elem, at }),
        }
    }
}

fn walk_fragments<R: Read>(c: &mut Cursor<R>, enc: Encoding) -> Result<Vec<(u64, u32)>, WalkError> {
    let items = Encoding {
        explicit_vr: false,
        ..enc
    };
    let mut fragments = Vec::new();
    loop {
        let at = c.pos;
        let h = read_header(c, items)?.ok_or(WalkError::Truncated(c.pos))?;
        match (h.group, h.elem) {
            SEQ_END => return Ok(fragments),
            ITEM if h.len != UNDEFINED => {
                if fragments.len() == MAX_FRAGMENTS {
                    return Err(WalkError::TooManyFragments(MAX_FRAGMENTS));
                }
                fragments.push((c.pos, h.len));
                c.skip(u64::from(h.len))?;
            }
            (group, elem) => return Err(WalkError::BadItem { group, elem, at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
        deflated: false,
    };

    use crate::fuzz::{explicit_element as el, tag_and_length as raw};

    fn sample() -> Vec<u8> {
        sample_with_boundaries().0
    }

    /// The dataset and the offsets at which a top-level element ends.
    fn sample_with_boundaries() -> (Vec<u8>, Vec<usize>) {
        let mut ends = Vec::new();
        let mut d = Vec::new();
        el(&mut d, 0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
        ends.push(d.len());
        // undefined-length sequence with one undefined-length item
        d.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0]);
        d.extend_from_slice(&UNDEFINED.to_le_bytes());
        raw(&mut d, 0xFFFE, 0xE000, UNDEFINED);
        el(&mut d, 0x0008, 0x1150, b"UI", b"1.2\0");
        raw(&mut d, 0xFFFE, 0xE00D, 0);
        raw(&mut d, 0xFFFE, 0xE0DD, 0);
        ends.push(d.len());
        el(&mut d, 0x0010, 0x0010, b"PN", b"DOE^JOHN");
        ends.push(d.len());
        // encapsulated pixel data: empty offset table + one fragment
        d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        d.extend_from_slice(&UNDEFINED.to_le_bytes());
        raw(&mut d, 0xFFFE, 0xE000, 0);
        raw(&mut d, 0xFFFE, 0xE000, 4);
        d.extend_from_slice(&[1, 2, 3, 4]);
        raw(&mut d, 0xFFFE, 0xE0DD, 0);
        (d, ends)
    }

    #[test]
    fn walks_sequences_and_fragments_and_collects() {
        let s = walk(&sample()[..], EXPLICIT, &[0x0010_0010, 0x0008_0016]).expect("walk");
        assert_eq!(s.values.get(&0x0010_0010).map(Vec::as_slice), Some(&b"DOE^JOHN"[..]));
        assert_eq!(s.top_level_elements, 4);
        assert!(s.has_pixel_data);
        let n = sample().len() as u64;
        // BOT (empty) then one 4-byte fragment ending 8 bytes before the end
        assert_eq!(
            s.pixel_data,
            Some(PixelLocation::Encapsulated {
                fragments: vec![(n - 20, 0), (n - 12, 4)]
            })
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let (d, boundary) = sample_with_boundaries();
        for cut in 1..d.len() {
            let r = walk(&d[..cut], EXPLICIT, &[]);
            // cutting exactly between top-level elements is a valid shorter dataset
            if boundary.contains(&cut) {
                assert!(r.is_ok(), "cut {cut} at element boundary should parse");
            } else {
                assert!(r.is_err(), "cut at {cut} of {} went unnoticed", d.len());
            }
        }
    }

    #[test]
    fn rejects_garbage_and_huge_lengths() {
        assert!(walk(&b"this is not a DICOM dataset at all..."[..], EXPLICIT, &[]).is_err());
        let mut d = Vec::new();
        el(&mut d, 0x0008, 0x0016, b"UI", b"1.2\0");
        d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        d.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(matches!(walk(&d[..], EXPLICIT, &[]), Err(WalkError::Truncated(_))));
        assert!(matches!(walk(&[][..], EXPLICIT, &[]), Err(WalkError::Empty)));
    }

    #[test]
    fn implicit_and_big_endian() {
        let mut d = Vec::new();
        raw(&mut d, 0x0010, 0x0020, 4);
        d.extend_from_slice(b"ID01");
        let s = walk(
            &d[..],
            Encoding::for_transfer_syntax("1.2.840.10008.1.2"),
            &[0x0010_0020],
        )
        .expect("implicit");
        assert_eq!(s.values.get(&0x0010_0020).map(Vec::as_slice), Some(&b"ID01"[..]));
        let be = [0x00, 0x10, 0x00, 0x20, b'L', b'O', 0x00, 0x04, b'I', b'D', b'0', b'1'];
        let s = walk(
            &be[..],
            Encoding::for_transfer_syntax("1.2.840.10008.1.2.2"),
            &[0x0010_0020],
        )
        .expect("be");
        assert_eq!(s.values.get(&0x0010_0020).map(Vec::as_slice), Some(&b"ID01"[..]));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut d = Vec::new();
        for _ in 0..100 {
            d.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0]);
            d.extend_from_slice(&UNDEFINED.to_le_bytes());
            raw(&mut d, 0xFFFE, 0xE000, UNDEFINED);
        }
        assert!(matches!(walk(&d[..], EXPLICIT, &[]), Err(WalkError::TooDeep(_))));
    }
}
