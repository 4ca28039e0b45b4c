//! From a stored Part 10 file to one decoded frame, with bounded memory.
//!
//! The header (everything before Pixel Data) is parsed with dicom-object; the
//! pixel data is located with our own walker and only the requested frame's
//! bytes are read from disk. Native frames are unpacked here; compressed
//! frames are handed to dicom-pixeldata's codecs (JPEG, JPEG-LS, JPEG 2000,
//! RLE) inside a one-frame object, so a 1 GB multi-frame never sits in memory.

use std::fs::File;
use std::io::{self as stdio, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

use super::pixel::{ModalityLut, Palette, Rescale, SampleFormat, VoiFunction, VoiLut, Window};
use crate::dicom::walk::{self, Encoding, PixelLocation};

/// Why an instance has no image. The text is shown to users as
/// "no preview: <reason>", so it says what is wrong with the data.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("bad pixel data: {0}")]
    Corrupt(String),
    #[error("cannot read file: {0}")]
    Io(String),
}

/// Largest frame we decode (pixels); larger is refused, not attempted.
pub const MAX_FRAME_PIXELS: u64 = 120_000_000;

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    pub samples_per_pixel: u16,
    pub photometric: String,
    pub planar: bool,
    pub format: SampleFormat,
    pub transfer_syntax: String,
    pub modality: String,
    pub padding: Option<(f64, f64)>,
    pub palette: Option<Palette>,
    /// Modality LUT Sequence of a grayscale image; `Source::frame` applies it,
    /// so its `Frame::Stored` values are modality values and `rescale` is the
    /// identity.
    pub modality_lut: Option<ModalityLut>,
    location: PixelLocation,
    dataset_offset: u64,
    deflated: bool,
    /// Native 8-bit (or 1-bit) samples in an OW value under Explicit VR Big
    /// Endian: the bytes are swapped in pairs (PS3.5 7.3: OW is a stream of
    /// 16-bit words, each big endian), unlike the same samples in OB.
    words_swapped: bool,
}

/// A decoded frame ready for the display pipeline.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Stored values (monochrome or palette indices).
    Stored { width: u32, height: u32, values: Vec<i32> },
    /// 8-bit interleaved RGB.
    Rgb { width: u32, height: u32, rgb: Vec<u8> },
}

pub struct Source {
    pub header: DefaultDicomObject,
    pub info: ImageInfo,
}

/// Where a stored object's bytes come from: a local file, or an archived
/// instance behind the blob boundary (`archive::files::BlobInput`, ranged
/// reads on S3). Decoding opens it a few times and reads only the header
/// and the requested frame.
pub trait Input: Send + Sync {
    fn open(&self) -> stdio::Result<Box<dyn crate::store::blob::ReadSeek + '_>>;
    fn size(&self) -> stdio::Result<u64>;
}

impl Input for Path {
    fn open(&self) -> stdio::Result<Box<dyn crate::store::blob::ReadSeek + '_>> {
        Ok(Box::new(stdio::BufReader::with_capacity(64 << 10, File::open(self)?)))
    }
    fn size(&self) -> stdio::Result<u64> {
        Ok(std::fs::metadata(self)?.len())
    }
}

impl Input for PathBuf {
    fn open(&self) -> stdio::Result<Box<dyn crate::store::blob::ReadSeek + '_>> {
        self.as_path().open()
    }
    fn size(&self) -> stdio::Result<u64> {
        self.as_path().size()
    }
}

/// Parse a Part 10 object from `src` (with or without its 128-byte
/// preamble), up to `until` when given.
pub fn read_object(src: &dyn Input, until: Option<Tag>) -> Result<DefaultDicomObject, DecodeError> {
    let mut r = src.open().map_err(io)?;
    let mut head = [0u8; 132];
    let got = read_up_to(&mut r, &mut head).map_err(io)?;
    let start = if got == 132 && &head[128..132] == b"DICM" {
        128
    } else {
        0
    };
    r.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut opts = OpenFileOptions::new().read_preamble(dicom_object::file::ReadPreamble::Never);
    if let Some(t) = until {
        opts = opts.read_until(t);
    }
    opts.from_reader(r).map_err(|e| DecodeError::Corrupt(e.to_string()))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> stdio::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == stdio::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn io(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Io(e.to_string())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<i64>().ok())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .unwrap_or_default()
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
        .unwrap_or_default()
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// 16-bit LUT data (palette or VOI LUT), in the file's value order.
fn lut_words(obj: &InMemDicomObject, tag: Tag, bits: u16) -> Vec<u16> {
    let Some(e) = obj.element_opt(tag).ok().flatten() else {
        return Vec::new();
    };
    if let Ok(v) = e.value().to_multi_int::<u16>()
        && !v.is_empty()
        && e.vr() != VR::OB
    {
        return v;
    }
    match e.to_bytes() {
        Ok(b) if bits <= 8 && e.vr() == VR::OB => b.iter().map(|&x| u16::from(x)).collect(),
        Ok(b) => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect(),
        Err(_) => Vec::new(),
    }
}

/// Descriptor: (entries, first mapped value, bits). 0 entries means 65536.
fn descriptor(obj: &InMemDicomObject, tag: Tag, signed_first: bool) -> Option<(usize, i32, u16)> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let v: Vec<i64> = e.to_multi_int::<i64>().ok()?;
    if v.len() < 3 {
        return None;
    }
    let n = if v[0] == 0 { 65536 } else { v[0] as usize };
    // The first-mapped value is US or SS depending on pixel representation.
    let first = if signed_first {
        v[1] as u16 as i16 as i32
    } else {
        v[1] as u16 as i32
    };
    Some((n, first, v[2] as u16))
}

/// What a Part 10 file's meta group (PS3.10 §7.1) says about its dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10 {
    pub transfer_syntax: String,
    /// Byte offset of the first dataset element.
    pub dataset_offset: u64,
}

/// How much of the file `part10` looks at: file meta groups are a few
/// hundred bytes; one longer than this is refused rather than read.
const META_LIMIT: u64 = 64 * 1024;

/// Read the file meta group from the first bytes of a file, element by
/// element. The dataset offset comes from the file's own bytes, not from
/// dicom-object's group length: that one is recomputed from the elements it
/// kept (it drops empty ones), and some writers omit (0002,0000) altogether.
pub fn part10(head: &[u8]) -> Result<Part10, DecodeError> {
    if head.len() < 132 || &head[128..132] != b"DICM" {
        return Err(DecodeError::Unsupported(
            "not a DICOM Part 10 file (no \"DICM\" after a 128-byte preamble)".into(),
        ));
    }
    let past_end =
        |elem: u16| DecodeError::Corrupt(format!("file meta element (0002,{elem:04X}) runs past the file meta"));
    let mut pos = 132usize;
    let mut ts = None;
    // The meta group is always explicit VR little endian; it ends where group 0002 does.
    while let Some(h) = head.get(pos..pos + 8) {
        if u16::from_le_bytes([h[0], h[1]]) != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([h[2], h[3]]);
        let vr = [h[4], h[5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(DecodeError::Corrupt(format!(
                "file meta element (0002,{elem:04X}) is not explicit VR little endian"
            )));
        }
        let long = matches!(
            &vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"UC" | b"UR" | b"UT" | b"UN" | b"SV" | b"UV"
        );
        let (len, start) = if long {
            let l = head.get(pos + 8..pos + 12).ok_or_else(|| past_end(elem))?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, pos + 12)
        } else {
            (usize::from(u16::from_le_bytes([h[6], h[7]])), pos + 8)
        };
        let end = start.checked_add(len).ok_or_else(|| past_end(elem))?;
        let value = head.get(start..end).ok_or_else(|| past_end(elem))?;
        if elem == 0x0010 {
            ts = Some(
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .trim()
                    .to_string(),
            );
        }
        pos = end;
    }
    match ts {
        Some(ts) if !ts.is_empty() => Ok(Part10 {
            transfer_syntax: ts,
            dataset_offset: pos as u64,
        }),
        _ => Err(DecodeError::Corrupt(
            "file meta has no Transfer Syntax UID (0002,0010): the dataset cannot be read".into(),
        )),
    }
}

/// SOP Class UID, collected by the walker (it is short and top level).
const SOP_CLASS_UID: u32 = 0x0008_0016;

/// Open a stored file: header, imaging attributes, pixel data location.
///
/// Our own bounded walker goes first: it notices truncation and bad encoding
/// without allocating what a lying length asks for, and it tells instances
/// without pixel data apart before dicom-object parses anything (dicom-object
/// 0.10 misreads some undefined-length UN sequences and then allocates and
/// zero-fills gigabytes for the garbage length it reads).
pub fn open(path: &dyn Input) -> Result<Source, DecodeError> {
    let size = path.size().map_err(io)?;
    let mut reader = path.open().map_err(io)?;
    let mut head = Vec::new();
    (&mut reader).take(META_LIMIT).read_to_end(&mut head).map_err(io)?;
    let meta = part10(&head)?;
    let ts = meta.transfer_syntax;
    let dataset_offset = meta.dataset_offset;
    let enc = Encoding::for_transfer_syntax(&ts);
    reader.seek(SeekFrom::Start(dataset_offset)).map_err(io)?;
    let len = size.saturating_sub(dataset_offset);
    let summary = walk::walk_seekable(reader, enc, &[SOP_CLASS_UID], len).map_err(|e| match e {
        walk::WalkError::BadVr { .. } => {
            DecodeError::Corrupt(format!("dataset is not encoded as its transfer syntax {ts} says: {e}"))
        }
        e => DecodeError::Corrupt(e.to_string()),
    })?;
    let location = match summary.pixel_data {
        Some(l) => l,
        None if summary.has_pixel_data => {
            return Err(DecodeError::Unsupported("float pixel data".into()));
        }
        None => {
            // Waveform IODs (PS3.3 A.34) all have SOP classes under ...1.1.9.
            let sop_class = summary
                .values
                .get(&SOP_CLASS_UID)
                .map(|v| String::from_utf8_lossy(v).trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default();
            if sop_class.starts_with("1.2.840.10008.5.1.4.1.1.9.") {
                return Err(DecodeError::NotAnImage("waveform".into()));
            }
            return Err(DecodeError::NotAnImage("no pixel data".into()));
        }
    };
    let header = read_object(path, Some(tags::PIXEL_DATA)).map_err(|e| match e {
        DecodeError::Corrupt(e) => DecodeError::Corrupt(format!("cannot parse header: {e}")),
        e => e,
    })?;
    let obj: &InMemDicomObject = &header;
    let rows = int(obj, tags::ROWS).unwrap_or(0);
    let cols = int(obj, tags::COLUMNS).unwrap_or(0);
    if rows <= 0 || cols <= 0 || rows > 65535 || cols > 65535 {
        return Err(DecodeError::Corrupt(format!("invalid Rows/Columns {rows}x{cols}")));
    }
    let frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let spp = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let bits_stored = int(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    let high_bit = int(obj, tags::HIGH_BIT).unwrap_or(bits_stored - 1);
    if !matches!(spp, 1 | 3) {
        return Err(DecodeError::Unsupported(format!("Samples per Pixel {spp}")));
    }
    if !matches!(bits_allocated, 1 | 8 | 16 | 32) || bits_stored < 1 || bits_stored > bits_allocated {
        return Err(DecodeError::Corrupt(format!(
            "Bits Allocated {bits_allocated} / Bits Stored {bits_stored}"
        )));
    }
    if (rows * cols) as u64 > MAX_FRAME_PIXELS {
        return Err(DecodeError::Unsupported(format!(
            "frame of {rows}x{cols} pixels is too large"
        )));
    }
    let signed = int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).to_uppercase();
    let padding = int(obj, tags::PIXEL_PADDING_VALUE).map(|p| {
        let hi = int(obj, tags::PIXEL_PADDING_RANGE_LIMIT).unwrap_or(p);
        (p.min(hi) as f64, p.max(hi) as f64)
    });
    let palette = if photometric == "PALETTE COLOR" {
        Some(read_palette(obj, signed)?)
    } else {
        None
    };
    let modality_lut = if spp == 1 && palette.is_none() {
        read_modality_lut(obj, signed)
    } else {
        None
    };
    let words_swapped = enc.big_endian
        && bits_allocated <= 8
        && match &location {
            PixelLocation::Native { offset, .. } => value_vr(path, dataset_offset + offset)? == *b"OW",
            PixelLocation::Encapsulated { .. } => false,
        };
    let info = ImageInfo {
        rows: rows as u32,
        cols: cols as u32,
        frames: frames as u32,
        samples_per_pixel: spp as u16,
        photometric,
        planar: int(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1,
        format: SampleFormat {
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            high_bit: high_bit as u16,
            signed,
        },
        modality: text(obj, tags::MODALITY),
        transfer_syntax: ts,
        padding,
        palette,
        modality_lut,
        location,
        dataset_offset,
        deflated: enc.deflated,
        words_swapped,
    };
    Ok(Source { header, info })
}

/// The VR of an explicit VR element with a 4-byte length (OB, OW, ...),
/// given where its value starts: it sits 8 bytes before (VR, 2 reserved
/// bytes, 4-byte length).
fn value_vr(path: &dyn Input, value_start: u64) -> Result<[u8; 2], DecodeError> {
    let at = value_start
        .checked_sub(8)
        .ok_or_else(|| DecodeError::Corrupt("pixel data header before the dataset".into()))?;
    let mut f = path.open().map_err(io)?;
    f.seek(SeekFrom::Start(at)).map_err(io)?;
    let mut vr = [0u8; 2];
    f.read_exact(&mut vr).map_err(io)?;
    Ok(vr)
}

/// First item of the Modality LUT Sequence (C.11.1), if any; an item without
/// usable descriptor or data is ignored, as if absent.
fn read_modality_lut(obj: &InMemDicomObject, signed: bool) -> Option<ModalityLut> {
    let item = items(obj, tags::MODALITY_LUT_SEQUENCE).first()?;
    let (n, first, bits) = descriptor(item, tags::LUT_DESCRIPTOR, signed)?;
    let mut data = lut_words(item, tags::LUT_DATA, bits);
    data.truncate(n);
    (!data.is_empty()).then_some(ModalityLut { first, data })
}

fn read_palette(obj: &InMemDicomObject, signed: bool) -> Result<Palette, DecodeError> {
    let d = |t| descriptor(obj, t, signed);
    let (Some(r), Some(g), Some(b)) = (
        d(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR),
        d(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR),
        d(tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR),
    ) else {
        return Err(DecodeError::Corrupt("PALETTE COLOR without LUT descriptors".into()));
    };
    let segmented = obj.element_opt(Tag(0x0028, 0x1221)).ok().flatten().is_some();
    let (red, green, blue) = if segmented {
        let seg = |tag: u16, n: usize| {
            super::pixel::expand_segmented(&lut_words(obj, Tag(0x0028, tag), 16), n).map_err(DecodeError::Corrupt)
        };
        (seg(0x1221, r.0)?, seg(0x1222, g.0)?, seg(0x1223, b.0)?)
    } else {
        (
            lut_words(obj, tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA, r.2),
            lut_words(obj, tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA, g.2),
            lut_words(obj, tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA, b.2),
        )
    };
    if red.len() < r.0.min(4096) || green.is_empty() || blue.is_empty() {
        return Err(DecodeError::Corrupt(
            "palette LUT data shorter than its descriptor".into(),
        ));
    }
    Ok(Palette {
        first: r.1,
        bits: r.2,
        red,
        green,
        blue,
    })
}

impl Source {
    /// Rescale for `frame`: per-frame functional group, shared group, or the
    /// top-level attributes (PS3.3 C.7.6.16.2.9).
    /// Identity when a Modality LUT replaces the rescale (it is applied to
    /// the frame's values already).
    pub fn rescale(&self, frame: u32) -> Rescale {
        if self.info.modality_lut.is_some() {
            return Rescale::default();
        }
        let obj: &InMemDicomObject = &self.header;
        let from = |o: &InMemDicomObject| {
            let s = floats(o, tags::RESCALE_SLOPE).first().copied();
            let i = floats(o, tags::RESCALE_INTERCEPT).first().copied();
            (s.is_some() || i.is_some()).then(|| Rescale {
                slope: s.unwrap_or(1.0),
                intercept: i.unwrap_or(0.0),
            })
        };
        self.functional(frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, from)
            .or_else(|| from(obj))
            .filter(|r| r.slope.is_finite() && r.intercept.is_finite() && r.slope != 0.0)
            .unwrap_or_default()
    }

    /// The dataset's own window for `frame` (first value), if any.
    pub fn window(&self, frame: u32) -> Option<Window> {
        let obj: &InMemDicomObject = &self.header;
        let from = |o: &InMemDicomObject| {
            let c = floats(o, tags::WINDOW_CENTER).first().copied()?;
            let w = floats(o, tags::WINDOW_WIDTH).first().copied()?;
            let function = match text(o, tags::VOILUT_FUNCTION).as_str() {
                "LINEAR_EXACT" => VoiFunction::LinearExact,
                "SIGMOID" => VoiFunction::Sigmoid,
                _ => VoiFunction::Linear,
            };
            (w > 0.0 && c.is_finite() && w.is_finite()).then_some(Window {
                center: c,
                width: w,
                function,
            })
        };
        self.functional(frame, tags::FRAME_VOILUT_SEQUENCE, from)
            .or_else(|| from(obj))
    }

    /// First VOI LUT of the VOI LUT Sequence, if any.
    pub fn voi_lut(&self) -> Option<VoiLut> {
        let obj: &InMemDicomObject = &self.header;
        let item = items(obj, tags::VOILUT_SEQUENCE).first()?;
        let (n, first, bits) = descriptor(item, tags::LUT_DESCRIPTOR, self.info.format.signed)?;
        let mut data = lut_words(item, tags::LUT_DATA, bits);
        data.truncate(n);
        // Some writers declare 16 bits but use fewer; scale to what is used.
        let used = data.iter().copied().max().unwrap_or(0);
        let bits = if bits > 8 && used > 0 {
            (16 - used.leading_zeros() as u16).max(8).min(bits)
        } else {
            bits
        };
        (!data.is_empty()).then_some(VoiLut { first, bits, data })
    }

    fn functional<T>(&self, frame: u32, seq: Tag, f: impl Fn(&InMemDicomObject) -> Option<T>) -> Option<T> {
        let obj: &InMemDicomObject = &self.header;
        let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).get(frame as usize);
        let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
        [per_frame, shared]
            .into_iter()
            .flatten()
            .find_map(|g| items(g, seq).first().and_then(&f))
    }

    /// Whether the pixel data is encapsulated (compressed frames).
    pub fn is_encapsulated(&self) -> bool {
        matches!(self.info.location, PixelLocation::Encapsulated { .. })
    }

    /// One frame (0-based) undecoded, as WADO-RS sends frames (PS3.18
    /// 8.7.3): native samples as little-endian bytes (what Explicit VR
    /// Little Endian holds, whatever the stored byte order), or the
    /// compressed bytes of an encapsulated frame as stored. 1-bit and
    /// deflated pixel data are refused (not sent as frames).
    pub fn wire_frame(&self, path: &dyn Input, frame: u32) -> Result<Vec<u8>, DecodeError> {
        let info = &self.info;
        if frame >= info.frames {
            return Err(DecodeError::Unsupported(format!("frame {frame} of {}", info.frames)));
        }
        if info.deflated || info.format.bits_allocated == 1 {
            return Err(DecodeError::Unsupported(
                "frames of deflated or 1-bit pixel data".into(),
            ));
        }
        match &info.location {
            PixelLocation::Native { offset, length } => {
                read_native_frame(path, info, self.info.dataset_offset + offset, *length, frame)
            }
            PixelLocation::Encapsulated { fragments } => {
                Ok(read_fragments(path, self.info.dataset_offset, fragments, info.frames, frame)?.concat())
            }
        }
    }

    /// Decode one frame (0-based). Grayscale values go through the Modality
    /// LUT when the dataset has one (then `rescale` is the identity).
    pub fn frame(&self, path: &dyn Input, frame: u32) -> Result<Frame, DecodeError> {
        Ok(match (self.decoded_frame(path, frame)?, &self.info.modality_lut) {
            (Frame::Stored { width, height, values }, Some(lut)) => Frame::Stored {
                width,
                height,
                values: lut.apply(&values),
            },
            (f, _) => f,
        })
    }

    /// The frame's stored values (or RGB) as the data holds them.
    fn decoded_frame(&self, path: &dyn Input, frame: u32) -> Result<Frame, DecodeError> {
        let info = &self.info;
        if frame >= info.frames {
            return Err(DecodeError::Unsupported(format!("frame {frame} of {}", info.frames)));
        }
        if info.deflated {
            return self.frame_from_full_object(path, frame);
        }
        match &info.location {
            PixelLocation::Native { offset, length } => {
                let bytes = read_native_frame(path, info, self.info.dataset_offset + offset, *length, frame)?;
                native_frame(info, bytes)
            }
            PixelLocation::Encapsulated { fragments } => {
                let data = read_fragments(path, self.info.dataset_offset, fragments, info.frames, frame)?;
                if info.transfer_syntax == RLE_LOSSLESS {
                    return rle_frame(info, &data.concat());
                }
                if info.transfer_syntax == JPEG_EXTENDED && info.format.bits_stored > 8 {
                    return jpeg12_frame(info, &data.concat());
                }
                self.decode_encapsulated(data)
            }
        }
    }

    /// Deflated datasets cannot be seeked into; they are small in practice,
    /// so load them whole, with a size limit.
    fn frame_from_full_object(&self, path: &dyn Input, frame: u32) -> Result<Frame, DecodeError> {
        let size = path.size().map_err(io)?;
        if size > 256 << 20 {
            return Err(DecodeError::Unsupported("deflated dataset larger than 256 MB".into()));
        }
        let obj = read_object(path, None)?;
        let decoded = obj
            .decode_pixel_data_frame(frame)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        decoded_to_frame(&self.info, &decoded)
    }

    fn decode_encapsulated(&self, fragments: Vec<Vec<u8>>) -> Result<Frame, DecodeError> {
        let mut fragments = fragments;
        if JPEG_PROCESSES.contains(&self.info.transfer_syntax.as_str())
            && let Some(first) = fragments.first_mut()
            && let Some(h) = jpeg_headers(first)
        {
            if let Some(sof) = h.sof {
                jpeg_supported(sof)?;
            }
            if self.info.photometric == "RGB" && h.colour_unsignalled() {
                *first = with_adobe_rgb(first);
            }
        }
        let mut obj = self.header.clone();
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("1"),
        ));
        let seq = PixelFragmentSequence::new(Vec::<u32>::new(), fragments);
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, Value::from(seq)));
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data_frame(0)))
            .map_err(|_| DecodeError::Corrupt("decoder panicked on this data".into()))?
            .map_err(|e| DecodeError::Corrupt(format!("cannot decode {}: {}", self.info.transfer_syntax, chain(&e))))?;
        decoded_to_frame(&self.info, &decoded)
    }
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// 12-bit JPEG (process 4), which dicom-pixeldata's JPEG codec refuses.
fn jpeg12_frame(info: &ImageInfo, data: &[u8]) -> Result<Frame, DecodeError> {
    let (px, w, h, nc) = super::jpeg12::decode(data).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if (w, h) != (info.cols as usize, info.rows as usize) || nc != 1 {
        return Err(DecodeError::Corrupt(format!(
            "JPEG is {w}x{h}x{nc}, header says {}x{}x1",
            info.cols, info.rows
        )));
    }
    let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
    let stored = info.format.bits_stored.min(12);
    let f = SampleFormat {
        bits_allocated: 16,
        bits_stored: stored,
        high_bit: stored - 1,
        signed: info.format.signed,
    };
    let values =
        super::pixel::unpack(&bytes, f, w * h).ok_or_else(|| DecodeError::Corrupt("short JPEG output".into()))?;
    Ok(Frame::Stored {
        width: info.cols,
        height: info.rows,
        values,
    })
}

/// An error with its sources: codec errors say "Could not decode pixel
/// data" on top and what actually went wrong underneath.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Transfer syntaxes whose frames are ITU T.81 JPEG streams (baseline,
/// extended, lossless).
const JPEG_PROCESSES: &[&str] = &[
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];

/// What a JPEG stream's headers (ITU T.81 B.2, up to the first scan) say
/// about decoding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JpegHeaders {
    /// The SOFn marker's low byte and the sample precision.
    pub sof: Option<(u8, u8)>,
    /// Component identifiers from the frame header.
    pub components: Vec<u8>,
    /// A JFIF APP0 segment (implies YCbCr).
    pub jfif: bool,
    /// The Adobe APP14 segment's transform flag (0 = none, 1 = YCbCr).
    pub adobe: Option<u8>,
}

/// Parse the marker segments before the first SOS; None when the data does
/// not start with SOI or a segment runs past the data.
pub fn jpeg_headers(data: &[u8]) -> Option<JpegHeaders> {
    if data.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut h = JpegHeaders::default();
    let mut i = 2usize;
    loop {
        if *data.get(i)? != 0xFF {
            return None;
        }
        let marker = *data.get(i + 1)?;
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA {
            return Some(h);
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]));
        let payload = data.get(i + 4..i + 2 + len)?;
        match marker {
            // SOFn (not DHT C4, JPG C8, DAC CC): P, Y, X, Nf, then Nf x (C, H/V, Tq)
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                h.sof = Some((marker, *payload.first()?));
                let n = usize::from(*payload.get(5)?);
                h.components = (0..n).filter_map(|k| payload.get(6 + 3 * k).copied()).collect();
            }
            0xE0 if payload.starts_with(b"JFIF\0") => h.jfif = true,
            // "Adobe", version, flags0, flags1, transform
            0xEE if payload.starts_with(b"Adobe") => h.adobe = payload.get(11).copied(),
            _ => {}
        }
        i += 2 + len;
    }
}

impl JpegHeaders {
    /// True when three components carry no colour-space signal at all: no
    /// JFIF, no Adobe transform, no telling component identifiers. Decoders
    /// (jpeg-decoder, like libjpeg) then assume YCbCr; in DICOM the
    /// Photometric Interpretation is the signal (PS3.5 8.2.1: RGB means no
    /// colour transform was applied).
    pub fn colour_unsignalled(&self) -> bool {
        self.components.len() == 3
            && !self.jfif
            && self.adobe.is_none()
            && !matches!(
                self.components.as_slice(),
                [1, 2, 3] | [82, 71, 66] | [1, 34, 35] | [114, 103, 98]
            )
    }
}

/// The same JPEG stream with an Adobe APP14 segment saying "no colour
/// transform" right after SOI, so the decoder keeps RGB components as RGB.
pub fn with_adobe_rgb(data: &[u8]) -> Vec<u8> {
    const APP14: [u8; 16] = [
        0xFF, 0xEE, 0x00, 0x0E, b'A', b'd', b'o', b'b', b'e', 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut out = Vec::with_capacity(data.len() + APP14.len());
    out.extend_from_slice(&data[..2.min(data.len())]);
    out.extend_from_slice(&APP14);
    out.extend_from_slice(data.get(2..).unwrap_or_default());
    out
}

/// What the JPEG decoder we ship (jpeg-decoder, via dicom-pixeldata) cannot
/// do, said as such instead of as "bad pixel data": DCT with more than 8 bits
/// (Extended process 4, e.g. 12-bit CT/NM) and arithmetic coding. The data
/// is fine; another viewer can show it.
fn jpeg_supported((marker, precision): (u8, u8)) -> Result<(), DecodeError> {
    let lossless = matches!(marker, 0xC3 | 0xC7 | 0xCB | 0xCF);
    if marker >= 0xC9 {
        return Err(DecodeError::Unsupported(format!(
            "arithmetic-coded JPEG (SOF{}) is not supported",
            marker - 0xC0
        )));
    }
    if !lossless && precision != 8 {
        return Err(DecodeError::Unsupported(format!(
            "{precision}-bit lossy JPEG (SOF{}, ITU T.81 extended process) is not supported yet",
            marker - 0xC0
        )));
    }
    Ok(())
}

/// RLE is decoded here for every bit depth (8, 16 and 32 bits per sample).
fn rle_frame(info: &ImageInfo, data: &[u8]) -> Result<Frame, DecodeError> {
    let bytes = usize::from(info.format.bits_allocated / 8).max(1);
    let pixels = (info.rows as usize) * (info.cols as usize);
    let spp = usize::from(info.samples_per_pixel);
    let raw = super::pixel::rle_decode(data, pixels, spp, bytes).map_err(DecodeError::Corrupt)?;
    if spp == 1 {
        let values = super::pixel::unpack(&raw, info.format, pixels)
            .ok_or_else(|| DecodeError::Corrupt("RLE frame shorter than Rows x Columns".into()))?;
        return Ok(Frame::Stored {
            width: info.cols,
            height: info.rows,
            values,
        });
    }
    // RLE output is interleaved; YBR_FULL stays YBR_FULL (no 4:2:2 in RLE).
    let pi = if info.photometric == "YBR_FULL_422" {
        "YBR_FULL"
    } else {
        info.photometric.as_str()
    };
    color_frame(info, &raw, false, pi, info.format.bits_allocated)
}

fn frame_bytes(info: &ImageInfo) -> u64 {
    let pixels = u64::from(info.rows) * u64::from(info.cols);
    // Native YBR_FULL_422 stores two samples per pixel (Y Y Cb Cr per pair).
    let per_pixel = if info.photometric == "YBR_FULL_422" && info.samples_per_pixel == 3 {
        2
    } else {
        u64::from(info.samples_per_pixel)
    };
    let samples = pixels * per_pixel;
    if info.format.bits_allocated == 1 {
        samples.div_ceil(8)
    } else {
        samples * u64::from(info.format.bits_allocated / 8)
    }
}

fn read_native_frame(
    path: &dyn Input,
    info: &ImageInfo,
    start: u64,
    length: u64,
    frame: u32,
) -> Result<Vec<u8>, DecodeError> {
    let size = frame_bytes(info);
    // 1-bit frames may start mid-byte; read from the byte holding the first bit.
    let (off, len) = if info.format.bits_allocated == 1 {
        let bits = u64::from(info.rows) * u64::from(info.cols) * u64::from(frame);
        (bits / 8, size + 1)
    } else {
        (size * u64::from(frame), size)
    };
    let needed = if info.format.bits_allocated == 1 {
        (off + size).min(length)
    } else {
        off + size
    };
    if needed > length || off + size > length + u64::from(info.format.bits_allocated == 1) {
        return Err(DecodeError::Corrupt(format!(
            "pixel data has {length} bytes, {}x{}x{} frames need {}",
            info.rows,
            info.cols,
            info.frames,
            size * u64::from(info.frames)
        )));
    }
    // Swapped words are read whole: from the even byte at or before the frame.
    let (read_off, skip) = if info.words_swapped {
        (off & !1, off & 1)
    } else {
        (off, 0)
    };
    let want = if info.words_swapped {
        (len + skip).next_multiple_of(2)
    } else {
        len
    };
    let mut f = path.open().map_err(io)?;
    f.seek(SeekFrom::Start(start + read_off)).map_err(io)?;
    let mut buf = Vec::with_capacity(want as usize);
    f.take(want.min(length - read_off)).read_to_end(&mut buf).map_err(io)?;
    if info.words_swapped {
        for pair in buf.chunks_exact_mut(2) {
            pair.swap(0, 1);
        }
        buf.drain(..(skip as usize).min(buf.len()));
    }
    if (buf.len() as u64) < size {
        return Err(DecodeError::Corrupt("file ends inside the pixel data".into()));
    }
    if info.format.bits_allocated == 1 {
        let first_bit = (u64::from(info.rows) * u64::from(info.cols) * u64::from(frame)) % 8;
        let pixels = (info.rows * info.cols) as usize;
        let unpacked = (0..pixels)
            .map(|i| {
                let bit = first_bit as usize + i;
                (buf[bit / 8] >> (bit % 8)) & 1
            })
            .collect();
        return Ok(unpacked);
    }
    if Encoding::for_transfer_syntax(&info.transfer_syntax).big_endian && info.format.bits_allocated > 8 {
        let w = usize::from(info.format.bits_allocated / 8);
        for c in buf.chunks_exact_mut(w) {
            c.reverse();
        }
    }
    Ok(buf)
}

/// Fragments (item values) of one frame. With a basic offset table, frame i
/// spans the fragments between its offset and the next; without one, one
/// fragment per frame, or all fragments for a single frame, or JPEG SOI
/// markers start each frame.
fn read_fragments(
    path: &dyn Input,
    dataset_offset: u64,
    fragments: &[(u64, u32)],
    frames: u32,
    frame: u32,
) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut f = path.open().map_err(io)?;
    let mut read = |(off, len): (u64, u32)| -> Result<Vec<u8>, DecodeError> {
        f.seek(SeekFrom::Start(dataset_offset + off)).map_err(io)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)
            .map_err(|e| DecodeError::Corrupt(format!("truncated fragment: {e}")))?;
        Ok(buf)
    };
    let Some((bot, data)) = fragments.split_first() else {
        return Err(DecodeError::Corrupt("encapsulated pixel data without items".into()));
    };
    if data.is_empty() {
        return Err(DecodeError::Corrupt("encapsulated pixel data has no fragments".into()));
    }
    let bot_bytes = if bot.1 > 0 && bot.1 <= 4 * 1_000_000 {
        read(*bot)?
    } else {
        Vec::new()
    };
    let offsets: Vec<u64> = bot_bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let chosen: Vec<(u64, u32)> = if offsets.len() == frames as usize && frames > 1 {
        // Offsets count from the first byte of the first fragment's item header.
        let base = data[0].0 - 8;
        let start = offsets[frame as usize];
        let end = offsets.get(frame as usize + 1).copied().unwrap_or(u64::MAX);
        data.iter()
            .copied()
            .filter(|(o, _)| (o - 8 - base) >= start && (o - 8 - base) < end)
            .collect()
    } else if frames == 1 {
        data.to_vec()
    } else if data.len() == frames as usize {
        vec![data[frame as usize]]
    } else {
        // JPEG family: a frame starts with a fragment beginning FF D8.
        let mut starts = Vec::new();
        for (i, frag) in data.iter().enumerate() {
            let head = read((frag.0, frag.1.min(2)))?;
            if head == [0xFF, 0xD8] {
                starts.push(i);
            }
        }
        if starts.len() != frames as usize {
            return Err(DecodeError::Unsupported(format!(
                "{} fragments for {frames} frames and no offset table",
                data.len()
            )));
        }
        let s = starts[frame as usize];
        let e = starts.get(frame as usize + 1).copied().unwrap_or(data.len());
        data[s..e].to_vec()
    };
    if chosen.is_empty() {
        return Err(DecodeError::Corrupt(format!("no fragments for frame {frame}")));
    }
    chosen.into_iter().map(read).collect()
}

/// Native (uncompressed) frame bytes → Frame.
fn native_frame(info: &ImageInfo, bytes: Vec<u8>) -> Result<Frame, DecodeError> {
    let (w, h) = (info.cols, info.rows);
    let pixels = (w as usize) * (h as usize);
    if info.format.bits_allocated == 1 {
        return Ok(Frame::Stored {
            width: w,
            height: h,
            values: bytes.into_iter().map(i32::from).collect(),
        });
    }
    if info.samples_per_pixel == 1 {
        let values = super::pixel::unpack(&bytes, info.format, pixels)
            .ok_or_else(|| DecodeError::Corrupt("frame shorter than Rows x Columns".into()))?;
        return Ok(Frame::Stored {
            width: w,
            height: h,
            values,
        });
    }
    color_frame(info, &bytes, info.planar, &info.photometric, info.format.bits_allocated)
}

fn color_frame(
    info: &ImageInfo,
    bytes: &[u8],
    planar: bool,
    photometric: &str,
    bits: u16,
) -> Result<Frame, DecodeError> {
    let (w, h) = (info.cols, info.rows);
    let pixels = (w as usize) * (h as usize);
    let short = || DecodeError::Corrupt("colour frame shorter than Rows x Columns x 3".into());
    if photometric == "YBR_FULL_422" && bits == 8 && !planar {
        let ybr = super::pixel::expand_422(bytes, w as usize, h as usize).ok_or_else(short)?;
        let rgb = ybr
            .chunks_exact(3)
            .flat_map(|p| super::pixel::ybr_to_rgb(p[0], p[1], p[2]))
            .collect();
        return Ok(Frame::Rgb {
            width: w,
            height: h,
            rgb,
        });
    }
    // Reduce to 8 bits per sample first (16/32-bit RGB keeps its top bits).
    let eight: Vec<u8> = match bits {
        8 => bytes.get(..pixels * 3).ok_or_else(short)?.to_vec(),
        16 | 32 => {
            let f = SampleFormat {
                signed: false,
                ..info.format
            };
            let v = super::pixel::unpack(bytes, f, pixels * 3).ok_or_else(short)?;
            let shift = info.format.bits_stored.saturating_sub(8);
            v.into_iter().map(|x| ((x as u32) >> shift).min(255) as u8).collect()
        }
        _ => return Err(DecodeError::Unsupported(format!("colour with {bits} bits allocated"))),
    };
    let interleaved = if planar {
        super::pixel::interleave_planar(&eight, pixels).ok_or_else(short)?
    } else {
        eight
    };
    let rgb = match photometric {
        "RGB" => interleaved,
        "YBR_FULL" | "YBR_FULL_422" => interleaved
            .chunks_exact(3)
            .flat_map(|p| super::pixel::ybr_to_rgb(p[0], p[1], p[2]))
            .collect(),
        other => return Err(DecodeError::Unsupported(format!("photometric interpretation {other}"))),
    };
    Ok(Frame::Rgb {
        width: w,
        height: h,
        rgb,
    })
}

/// Output of a dicom-pixeldata decoder → Frame.
fn decoded_to_frame(info: &ImageInfo, d: &dicom_pixeldata::DecodedPixelData<'_>) -> Result<Frame, DecodeError> {
    let (w, h) = (d.columns(), d.rows());
    if (w, h) != (info.cols, info.rows) {
        return Err(DecodeError::Corrupt(format!(
            "decoded {w}x{h}, header says {}x{}",
            info.cols, info.rows
        )));
    }
    let data = d.data();
    if d.samples_per_pixel() == 3 {
        let pi = d.photometric_interpretation().as_str().to_string();
        let planar = d.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
        return color_frame(info, data, planar, &pi, d.bits_allocated());
    }
    let f = SampleFormat {
        bits_allocated: d.bits_allocated(),
        bits_stored: info.format.bits_stored.min(d.bits_allocated()),
        high_bit: info.format.bits_stored.min(d.bits_allocated()) - 1,
        signed: info.format.signed,
    };
    let values = super::pixel::unpack(data, f, (w as usize) * (h as usize))
        .ok_or_else(|| DecodeError::Corrupt("decoded frame shorter than Rows x Columns".into()))?;
    Ok(Frame::Stored {
        width: w,
        height: h,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> std::path::PathBuf {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/dicom-samples");
        let a = base.join("pydicom/data/test_files").join(name);
        if a.exists() {
            a
        } else {
            base.join("data_store/data").join(name)
        }
    }

    #[test]
    fn native_ct_frame_has_the_stored_values() {
        let p = corpus("CT_small.dcm");
        let s = open(&p).expect("open");
        assert_eq!((s.info.rows, s.info.cols, s.info.frames), (128, 128, 1));
        let Frame::Stored { values, .. } = s.frame(&p, 0).expect("frame") else {
            panic!("gray")
        };
        // pydicom: ds.pixel_array[0, :3] == [175, 180, 166]
        assert_eq!(&values[..3], &[175, 180, 166]);
        assert_eq!(
            s.rescale(0),
            Rescale {
                slope: 1.0,
                intercept: -1024.0
            }
        );
    }

    #[test]
    fn lying_rows_columns_and_truncation_are_reported() {
        let p = corpus("MR_truncated.dcm");
        match open(&p) {
            Err(e) => assert!(e.to_string().contains("truncated"), "{e}"),
            Ok(s) => {
                let e = s.frame(&p, 0).expect_err("truncated");
                assert!(matches!(e, DecodeError::Corrupt(_)), "{e}");
            }
        }
    }

    /// Preamble + "DICM" + the given meta elements (explicit VR LE, short form).
    fn part10_head(elements: &[(u16, &[u8; 2], &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        for (elem, vr, value) in elements {
            b.extend_from_slice(&[0x02, 0x00]);
            b.extend_from_slice(&elem.to_le_bytes());
            b.extend_from_slice(*vr);
            if *vr == b"OB" {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&(value.len() as u32).to_le_bytes());
            } else {
                b.extend_from_slice(&(value.len() as u16).to_le_bytes());
            }
            b.extend_from_slice(value);
        }
        b
    }

    #[test]
    fn part10_meta_is_read_from_the_file_bytes() {
        // no (0002,0000), an empty element last: the dataset starts right after it
        let mut head = part10_head(&[
            (0x0001, b"OB", &[0, 1]),
            (0x0010, b"UI", b"1.2.840.10008.1.2\0"),
            (0x0013, b"SH", b""),
        ]);
        let meta_end = head.len() as u64;
        head.extend_from_slice(&[0x08, 0x00, 0x05, 0x00, 0, 0, 0, 0]);
        assert_eq!(
            part10(&head),
            Ok(Part10 {
                transfer_syntax: "1.2.840.10008.1.2".into(),
                dataset_offset: meta_end,
            })
        );
        let no_ts = part10_head(&[(0x0001, b"OB", &[0, 1])]);
        assert!(matches!(part10(&no_ts), Err(DecodeError::Corrupt(m)) if m.contains("Transfer Syntax")));
        assert!(matches!(part10(b"just some text"), Err(DecodeError::Unsupported(m)) if m.contains("Part 10")));
        let mut cut = part10_head(&[(0x0010, b"UI", b"1.2.840.10008.1.2.1\0")]);
        cut.truncate(cut.len() - 4);
        assert!(matches!(part10(&cut), Err(DecodeError::Corrupt(_))));
        // The file's group length is 86; dicom-object reports 70 (it drops the
        // two empty elements) and the dataset was read from the wrong byte.
        let p = corpus("empty_charset_LEI.dcm");
        let head = std::fs::read(&p).expect("read");
        assert_eq!(part10(&head).map(|m| m.dataset_offset), Ok(144 + 86));
        assert_eq!(open(&p).err(), Some(DecodeError::NotAnImage("no pixel data".into())));
    }

    #[test]
    fn files_without_pixel_data_never_reach_dicom_object() {
        // dicom-object 0.10 misreads this undefined-length UN sequence and
        // zero-fills a 3.7 GB value; the walker reads it as implicit VR.
        let p = corpus("UN_sequence.dcm");
        assert_eq!(open(&p).err(), Some(DecodeError::NotAnImage("no pixel data".into())));
        let p = corpus("waveform_ecg.dcm");
        assert_eq!(open(&p).err(), Some(DecodeError::NotAnImage("waveform".into())));
        let p = corpus("SC_rgb_jpeg.dcm");
        assert!(
            matches!(open(&p).err(), Some(DecodeError::Corrupt(m)) if m.contains("not encoded as its transfer syntax"))
        );
    }

    fn stored(name: &str, frame: u32) -> Vec<i32> {
        let p = corpus(name);
        let s = open(&p).expect("open");
        match s.frame(&p, frame).expect("frame") {
            Frame::Stored { values, .. } => values,
            Frame::Rgb { rgb, .. } => rgb.into_iter().map(i32::from).collect(),
        }
    }

    #[test]
    fn big_endian_ow_with_8_bit_samples_is_swapped_in_words() {
        assert_eq!(stored("OBXXXX1A_expb.dcm", 0), stored("OBXXXX1A.dcm", 0));
        assert_eq!(stored("OBXXXX1A_expb_2frame.dcm", 1), stored("OBXXXX1A_2frame.dcm", 1));
        // 3x3 RGB: 27 bytes in a 28-byte OW value
        assert_eq!(
            stored("SC_rgb_small_odd_big_endian.dcm", 0),
            stored("SC_rgb_small_odd.dcm", 0)
        );
        // OB under big endian is not swapped
        assert_eq!(stored("SC_rgb_expb.dcm", 0), stored("SC_rgb.dcm", 0));
    }

    #[test]
    fn modality_lut_sequence_gives_the_modality_values() {
        let p = corpus("mlut_18.dcm");
        let s = open(&p).expect("open");
        assert_eq!(s.rescale(0), Rescale::default());
        let Frame::Stored { values, .. } = s.frame(&p, 0).expect("frame") else {
            panic!("gray")
        };
        // pydicom: apply_modality_lut(ds.pixel_array, ds)[0, :4]
        assert_eq!(&values[..4], &[32759, 49147, 49147, 32759]);
    }

    /// SOI, the given segments (marker, payload), SOS.
    fn jpeg(segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        for (m, payload) in segments {
            b.extend_from_slice(&[0xFF, *m]);
            b.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
            b.extend_from_slice(payload);
        }
        b.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02]);
        b
    }

    fn sof(precision: u8, ids: &[u8]) -> Vec<u8> {
        let mut p = vec![precision, 0, 8, 0, 8, ids.len() as u8];
        for id in ids {
            p.extend_from_slice(&[*id, 0x11, 0]);
        }
        p
    }

    #[test]
    fn jpeg_headers_say_precision_and_colour_signal() {
        let h = jpeg_headers(&jpeg(&[(0xC1, sof(12, &[1]))])).expect("headers");
        assert_eq!(h.sof, Some((0xC1, 12)));
        assert!(matches!(jpeg_supported((0xC1, 12)), Err(DecodeError::Unsupported(m)) if m.contains("12-bit")));
        assert!(jpeg_supported((0xC3, 16)).is_ok(), "lossless 16-bit is decoded");
        assert!(jpeg_supported((0xC0, 8)).is_ok());
        assert!(matches!(jpeg_supported((0xC9, 8)), Err(DecodeError::Unsupported(m)) if m.contains("arithmetic")));

        // no JFIF, no Adobe, neutral ids: the decoder would assume YCbCr
        let bare = jpeg(&[(0xC0, sof(8, &[0, 1, 2]))]);
        let h = jpeg_headers(&bare).expect("headers");
        assert!(h.colour_unsignalled());
        let hinted = jpeg_headers(&with_adobe_rgb(&bare)).expect("headers");
        assert_eq!((hinted.adobe, hinted.components.clone()), (Some(0), vec![0, 1, 2]));
        assert!(!hinted.colour_unsignalled());
        // JFIF, or ids 1,2,3 / 'R','G','B', are signals of their own
        let jfif = jpeg(&[
            (0xE0, b"JFIF\0\x01\x02\0\0\x01\0\x01\0\0".to_vec()),
            (0xC0, sof(8, &[0, 1, 2])),
        ]);
        assert!(!jpeg_headers(&jfif).expect("headers").colour_unsignalled());
        for ids in [[1, 2, 3], [82, 71, 66]] {
            let h = jpeg_headers(&jpeg(&[(0xC0, sof(8, &ids))])).expect("headers");
            assert!(!h.colour_unsignalled(), "{ids:?}");
        }
        assert_eq!(jpeg_headers(b"\xFF\xD8\xFF\xC0\x00"), None, "segment past the end");
        assert_eq!(jpeg_headers(b"not a jpeg"), None);
    }
}
