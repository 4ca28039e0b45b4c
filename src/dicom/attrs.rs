//! The attributes the index needs, decoded from the walker's raw values with
//! the dataset's Specific Character Set (GB18030, GBK, ISO_IR 192 and ISO 2022
//! code extensions such as `\ISO 2022 IR 58`; see `charset`).

use super::charset::Charset;
use super::pn;
use super::walk::{Encoding, Summary};

pub const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
pub const SOP_CLASS_UID: u32 = 0x0008_0016;
pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
pub const STUDY_DATE: u32 = 0x0008_0020;
pub const STUDY_TIME: u32 = 0x0008_0030;
pub const ACCESSION_NUMBER: u32 = 0x0008_0050;
pub const MODALITY: u32 = 0x0008_0060;
pub const REFERRING_PHYSICIAN: u32 = 0x0008_0090;
pub const STUDY_DESCRIPTION: u32 = 0x0008_1030;
pub const SERIES_DESCRIPTION: u32 = 0x0008_103E;
pub const PATIENT_NAME: u32 = 0x0010_0010;
pub const PATIENT_ID: u32 = 0x0010_0020;
pub const BIRTH_DATE: u32 = 0x0010_0030;
pub const SEX: u32 = 0x0010_0040;
pub const BODY_PART: u32 = 0x0018_0015;
pub const STUDY_UID: u32 = 0x0020_000D;
pub const STUDY_ID: u32 = 0x0020_0010;
pub const SERIES_UID: u32 = 0x0020_000E;
pub const SERIES_NUMBER: u32 = 0x0020_0011;
pub const INSTANCE_NUMBER: u32 = 0x0020_0013;
pub const NUMBER_OF_FRAMES: u32 = 0x0028_0008;
pub const ROWS: u32 = 0x0028_0010;
pub const COLUMNS: u32 = 0x0028_0011;

pub const WANTED: &[u32] = &[
    SPECIFIC_CHARACTER_SET,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_DATE,
    STUDY_TIME,
    ACCESSION_NUMBER,
    MODALITY,
    REFERRING_PHYSICIAN,
    STUDY_DESCRIPTION,
    SERIES_DESCRIPTION,
    PATIENT_NAME,
    PATIENT_ID,
    BIRTH_DATE,
    SEX,
    BODY_PART,
    STUDY_UID,
    STUDY_ID,
    SERIES_UID,
    SERIES_NUMBER,
    INSTANCE_NUMBER,
    NUMBER_OF_FRAMES,
    ROWS,
    COLUMNS,
];

pub struct Attrs<'a> {
    summary: &'a Summary,
    enc: Encoding,
    charset: Charset,
}

impl<'a> Attrs<'a> {
    pub fn new(summary: &'a Summary, enc: Encoding) -> Attrs<'a> {
        let charset = Charset::from_raw(summary.values.get(&SPECIFIC_CHARACTER_SET).map(Vec::as_slice));
        Attrs { summary, enc, charset }
    }

    fn raw(&self, tag: u32) -> Option<&[u8]> {
        self.summary.values.get(&tag).map(Vec::as_slice)
    }

    /// Text value, trimmed of DICOM padding; empty if absent.
    pub fn text(&self, tag: u32) -> String {
        let Some(raw) = self.raw(tag) else { return String::new() };
        self.charset
            .decode(raw)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    }

    /// Person Name value with all its component groups, as Unicode, with
    /// escape sequences and control characters removed; empty if absent.
    pub fn person_name(&self, tag: u32) -> String {
        self.raw(tag)
            .map(|raw| pn::clean(&self.charset.decode_pn(raw)))
            .unwrap_or_default()
    }

    /// First value of a multi-valued string (e.g. IS), parsed as an integer.
    pub fn int(&self, tag: u32) -> Option<i64> {
        self.text(tag).split('\\').next().and_then(|v| v.trim().parse().ok())
    }

    /// US value (Rows, Columns), in the dataset's byte order.
    pub fn us(&self, tag: u32) -> Option<i64> {
        match self.raw(tag)? {
            [a, b, ..] if self.enc.big_endian => Some(i64::from(u16::from_be_bytes([*a, *b]))),
            [a, b, ..] => Some(i64::from(u16::from_le_bytes([*a, *b]))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_gb18030_names_and_numbers() {
        let mut s = Summary::default();
        s.values.insert(SPECIFIC_CHARACTER_SET, b"GB18030 ".to_vec());
        // "张三" in GB18030
        s.values.insert(PATIENT_NAME, vec![0xD5, 0xC5, 0xC8, 0xFD]);
        s.values.insert(INSTANCE_NUMBER, b"12 ".to_vec());
        s.values.insert(ROWS, vec![0x00, 0x02]);
        let le = Encoding::for_transfer_syntax("1.2.840.10008.1.2.1");
        let a = Attrs::new(&s, le);
        assert_eq!(a.text(PATIENT_NAME), "张三");
        assert_eq!(a.person_name(PATIENT_NAME), "张三");
        assert_eq!(a.int(INSTANCE_NUMBER), Some(12));
        assert_eq!(a.us(ROWS), Some(512));
        let be = Encoding::for_transfer_syntax("1.2.840.10008.1.2.2");
        assert_eq!(Attrs::new(&s, be).us(ROWS), Some(2));
        assert_eq!(a.text(STUDY_UID), "");
        assert_eq!(a.person_name(REFERRING_PHYSICIAN), "");
    }

    #[test]
    fn person_names_under_iso_2022_ir_58_lose_their_escape_sequences() {
        let mut s = Summary::default();
        s.values.insert(SPECIFIC_CHARACTER_SET, b"\\ISO 2022 IR 58 ".to_vec());
        s.values.insert(
            PATIENT_NAME,
            b"Wang^Xiaodong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab=wang^xiaodong ".to_vec(),
        );
        let a = Attrs::new(&s, Encoding::for_transfer_syntax("1.2.840.10008.1.2.1"));
        assert_eq!(a.person_name(PATIENT_NAME), "Wang^Xiaodong=王^小东=wang^xiaodong");
    }
}
