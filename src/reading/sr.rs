//! Signed reports as DICOM Basic Text SR (pure: no clock, no I/O).
//!
//! A report becomes one Part-10 file in Explicit VR Little Endian, character
//! set ISO_IR 192 (UTF-8) so Chinese text survives, or GB18030 for a clinic
//! PACS configured so (`pacs_charset`, for PACS that do not read UTF-8).
//! The patient's name keeps all its component groups
//! (`Wang^Xiaodong=王^小东=wang^xiaodong`), so the PACS shows it as received. The content tree is a
//! root CONTAINER "Diagnostic Imaging Report" (18748-4, LN) that CONTAINS two
//! TEXT items, "Finding" (121071, DCM) and "Impression" (121073, DCM). Every
//! report we send is signed, so every SR is FINAL, COMPLETE and VERIFIED with
//! the author as the verifying observer; an amended report also carries the
//! Predecessor Documents Sequence pointing at the SR it replaces.
//!
//! The output depends only on the input (all times come from `signed_ms`),
//! so an SR rebuilt after its spool file was lost is byte-identical to the
//! one a PACS may already hold under the same SOP Instance UID.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTableBuilder;
use sha2::{Digest, Sha256};

pub use crate::config::PacsCharset;
use crate::dicom::pn;

/// SOP class of every SR we write.
pub const BASIC_TEXT_SR: &str = uids::BASIC_TEXT_SR_STORAGE;
/// Series Number of the report series (one series per study, every version).
pub const REPORT_SERIES_NUMBER: i32 = 999;
const MANUFACTURER: &str = "medrelay";

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error("{what}: {value:?} is not a valid DICOM UID")]
    BadUid { what: &'static str, value: String },
    #[error("report version {0} is not a positive number")]
    BadVersion(i64),
    #[error("report has neither findings nor impression")]
    Empty,
    #[error("encoding the SR failed: {0}")]
    Encode(String),
}

/// A reference to another instance of the same study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// Everything one SR is made of. Text fields are taken as stored in the
/// index; values that do not fit their DICOM VR are cleaned or left empty.
#[derive(Debug, Clone, Default)]
pub struct SrInput {
    pub study_instance_uid: String,
    pub patient_name: String,
    pub patient_id: String,
    /// YYYYMMDD, or empty.
    pub patient_birth_date: String,
    /// M, F, O, or empty.
    pub patient_sex: String,
    pub accession_number: String,
    /// YYYYMMDD, or empty.
    pub study_date: String,
    /// HHMMSS[.F], or empty.
    pub study_time: String,
    pub referring_physician: String,
    pub study_description: String,
    /// The SR's own identity; re-sent unchanged on every retry.
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    /// Report version, also the Instance Number.
    pub version: i64,
    pub findings: String,
    pub impression: String,
    /// Display name of the signing expert (Verifying Observer Name).
    pub author_name: String,
    /// When the report was signed, ms since the Unix epoch; becomes
    /// ContentDate/ContentTime (UTC) and the verification date-time.
    pub signed_ms: i64,
    /// The reading hospital (Institution Name, Verifying Organization).
    pub institution_name: String,
    /// The SR this one amends, in the same study.
    pub amends: Option<InstanceRef>,
    /// Instances of the study the report is about
    /// (Current Requested Procedure Evidence Sequence); may be empty.
    pub evidence: Vec<InstanceRef>,
    /// Specific Character Set the text is encoded in (the writer encodes
    /// every text value after (0008,0005) with it).
    pub charset: PacsCharset,
}

/// A new UID under the `2.25` arc: a random (version 4) UUID as a decimal
/// integer. At most 44 characters.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// The Series Instance UID of a study's report series, derived from the
/// study UID (SHA-256, as a version 8 UUID under `2.25`), so every version of
/// a report, and every rebuild of one, lands in the same series.
pub fn report_series_uid(study_uid: &str) -> String {
    let h = Sha256::digest(format!("medrelay report series\0{study_uid}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Whether `s` is a syntactically valid UID (digits and dots, no empty or
/// zero-led component, at most 64 characters).
pub fn valid_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

fn uid<'a>(what: &'static str, value: &'a str) -> Result<&'a str, SrError> {
    if valid_uid(value) {
        Ok(value)
    } else {
        Err(SrError::BadUid {
            what,
            value: value.to_string(),
        })
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (DA "YYYYMMDD", TM "HHMMSS") of a UTC instant in ms since the epoch.
pub fn dicom_date_time_utc(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60),
    )
}

/// A single-valued short string (LO, SH, PN): no backslash (the value
/// delimiter), no control characters, at most `max` characters.
fn short(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| match c {
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Unlimited text (UT): keeps line breaks and tabs, drops other controls.
fn long_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn date(s: &str) -> String {
    let s = s.trim();
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.to_string()
    } else {
        String::new()
    }
}

fn time(s: &str) -> String {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 16
        && s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if ok { s.to_string() } else { String::new() }
}

fn sex(s: &str) -> String {
    match s.trim().to_ascii_uppercase().as_str() {
        v @ ("M" | "F" | "O") => v.to_string(),
        _ => String::new(),
    }
}

fn str_el(tag: Tag, vr: VR, v: impl Into<String>) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(v.into()))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::CODE_VALUE, VR::SH, value),
        str_el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        str_el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn text_item(code_value: &str, meaning: &str, text: String) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        str_el(tags::VALUE_TYPE, VR::CS, "TEXT"),
        seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code(code_value, "DCM", meaning)]),
        str_el(tags::TEXT_VALUE, VR::UT, text),
    ])
}

/// Hierarchical SOP Instance Reference (Study / Series / SOP) items for a
/// set of instances of one study, one item per study, series in first-seen
/// order.
fn hierarchical_refs(study_uid: &str, refs: &[InstanceRef]) -> Result<Vec<InMemDicomObject>, SrError> {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for r in refs {
        let s = uid("referenced series", &r.series_instance_uid)?;
        let item = InMemDicomObject::from_element_iter([
            str_el(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                uid("referenced SOP class", &r.sop_class_uid)?,
            ),
            str_el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                uid("referenced SOP instance", &r.sop_instance_uid)?,
            ),
        ]);
        match series.iter_mut().find(|(uid, _)| *uid == s) {
            Some((_, items)) => items.push(item),
            None => series.push((s, vec![item])),
        }
    }
    let series_items = series
        .into_iter()
        .map(|(s, items)| {
            InMemDicomObject::from_element_iter([
                seq(tags::REFERENCED_SOP_SEQUENCE, items),
                str_el(tags::SERIES_INSTANCE_UID, VR::UI, s),
            ])
        })
        .collect();
    Ok(vec![InMemDicomObject::from_element_iter([
        seq(tags::REFERENCED_SERIES_SEQUENCE, series_items),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
    ])])
}

/// The report as a complete DICOM Part-10 Basic Text SR file.
pub fn build_basic_text_sr(r: &SrInput) -> Result<Vec<u8>, SrError> {
    let study_uid = uid("Study Instance UID", &r.study_instance_uid)?;
    let series_uid = uid("Series Instance UID", &r.series_instance_uid)?;
    let sop_uid = uid("SOP Instance UID", &r.sop_instance_uid)?;
    if r.version < 1 {
        return Err(SrError::BadVersion(r.version));
    }
    let findings = long_text(&r.findings);
    let impression = long_text(&r.impression);
    if findings.trim().is_empty() && impression.trim().is_empty() {
        return Err(SrError::Empty);
    }
    let (content_date, content_time) = dicom_date_time_utc(r.signed_ms);
    let institution = short(&r.institution_name, 64);
    let author = short(&r.author_name, 64);

    let mut content = Vec::new();
    if !findings.trim().is_empty() {
        content.push(text_item("121071", "Finding", findings));
    }
    if !impression.trim().is_empty() {
        content.push(text_item("121073", "Impression", impression));
    }
    let verifying_observer = InMemDicomObject::from_element_iter([
        str_el(tags::VERIFYING_ORGANIZATION, VR::LO, {
            if institution.is_empty() {
                MANUFACTURER.to_string()
            } else {
                institution.clone()
            }
        }),
        str_el(
            tags::VERIFICATION_DATE_TIME,
            VR::DT,
            format!("{content_date}{content_time}+0000"),
        ),
        str_el(tags::VERIFYING_OBSERVER_NAME, VR::PN, author),
        seq(tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE, Vec::new()),
    ]);

    let mut obj = InMemDicomObject::from_element_iter([
        str_el(tags::SPECIFIC_CHARACTER_SET, VR::CS, r.charset.term()),
        str_el(tags::INSTANCE_CREATION_DATE, VR::DA, content_date.clone()),
        str_el(tags::INSTANCE_CREATION_TIME, VR::TM, content_time.clone()),
        str_el(tags::SOP_CLASS_UID, VR::UI, BASIC_TEXT_SR),
        str_el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        str_el(tags::STUDY_DATE, VR::DA, date(&r.study_date)),
        str_el(tags::CONTENT_DATE, VR::DA, content_date),
        str_el(tags::STUDY_TIME, VR::TM, time(&r.study_time)),
        str_el(tags::CONTENT_TIME, VR::TM, content_time),
        str_el(tags::ACCESSION_NUMBER, VR::SH, short(&r.accession_number, 16)),
        str_el(tags::MODALITY, VR::CS, "SR"),
        str_el(tags::MANUFACTURER, VR::LO, MANUFACTURER),
        str_el(tags::INSTITUTION_NAME, VR::LO, institution),
        str_el(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            pn::for_dicom(&r.referring_physician),
        ),
        str_el(tags::STUDY_DESCRIPTION, VR::LO, short(&r.study_description, 64)),
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Vec::new()),
        str_el(tags::PATIENT_NAME, VR::PN, pn::for_dicom(&r.patient_name)),
        str_el(tags::PATIENT_ID, VR::LO, short(&r.patient_id, 64)),
        str_el(tags::PATIENT_BIRTH_DATE, VR::DA, date(&r.patient_birth_date)),
        str_el(tags::PATIENT_SEX, VR::CS, sex(&r.patient_sex)),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        str_el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        str_el(tags::STUDY_ID, VR::SH, ""),
        str_el(tags::SERIES_NUMBER, VR::IS, REPORT_SERIES_NUMBER.to_string()),
        str_el(tags::INSTANCE_NUMBER, VR::IS, r.version.to_string()),
        str_el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("18748-4", "LN", "Diagnostic Imaging Report")],
        ),
        str_el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(tags::VERIFYING_OBSERVER_SEQUENCE, vec![verifying_observer]),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new()),
        str_el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        str_el(tags::VERIFICATION_FLAG, VR::CS, "VERIFIED"),
        str_el(tags::PRELIMINARY_FLAG, VR::CS, "FINAL"),
        seq(tags::CONTENT_SEQUENCE, content),
    ]);
    if let Some(prev) = &r.amends {
        obj.put(seq(
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            hierarchical_refs(study_uid, std::slice::from_ref(prev))?,
        ));
    }
    let evidence: Vec<InstanceRef> = r
        .evidence
        .iter()
        .filter(|e| e.sop_instance_uid != r.sop_instance_uid)
        .cloned()
        .collect();
    if !evidence.is_empty() {
        obj.put(seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            hierarchical_refs(study_uid, &evidence)?,
        ));
    }

    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| SrError::Encode(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| SrError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_object::file::ReadPreamble;
    use dicom_object::{DefaultDicomObject, OpenFileOptions};

    const FINDINGS: &str = "右肺上叶见一直径约8mm磨玻璃结节，边界清楚。\nNo pleural effusion; C:\\path kept.";
    const IMPRESSION: &str = "右肺上叶磨玻璃结节，建议3个月后复查CT。";

    fn input() -> SrInput {
        SrInput {
            study_instance_uid: "1.2.826.0.1.3680043.8.498.1".into(),
            patient_name: "ZHANG^SAN=张^三".into(),
            patient_id: "P-0001".into(),
            patient_birth_date: "19700101".into(),
            patient_sex: "f".into(),
            accession_number: "ACC12345678901234567".into(),
            study_date: "20260301".into(),
            study_time: "093000".into(),
            referring_physician: "WANG^WU".into(),
            study_description: "CT CHEST 胸部平扫".into(),
            sop_instance_uid: new_uid(),
            series_instance_uid: report_series_uid("1.2.826.0.1.3680043.8.498.1"),
            version: 1,
            findings: FINDINGS.into(),
            impression: IMPRESSION.into(),
            author_name: "李医生".into(),
            // 2026-03-01T10:20:30.456Z
            signed_ms: 1_772_360_430_456,
            institution_name: "市人民医院".into(),
            amends: None,
            evidence: vec![InstanceRef {
                series_instance_uid: "1.2.3.4".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: "1.2.3.4.5".into(),
            }],
            charset: PacsCharset::Utf8,
        }
    }

    const WANG: &str = "Wang^Xiaodong=王^小东=wang^xiaodong";

    #[test]
    fn every_name_group_is_kept_in_utf8_and_gb18030() {
        for charset in [PacsCharset::Utf8, PacsCharset::Gb18030] {
            let mut r = input();
            r.patient_name = WANG.into();
            r.charset = charset;
            let bytes = build_basic_text_sr(&r).expect("build");
            // dicom-object decodes with the file's own character set.
            let obj = parse(&bytes);
            assert_eq!(s(&obj, tags::SPECIFIC_CHARACTER_SET), charset.term());
            assert_eq!(s(&obj, tags::PATIENT_NAME), WANG);
            let content = items(&obj, tags::CONTENT_SEQUENCE);
            assert_eq!(s(&content[0], tags::TEXT_VALUE), FINDINGS);
            // The bytes really are in that set: 王小东 in GB18030 is
            // CD F5 / D0 A1 B6 AB, in UTF-8 E7 8E 8B / E5 B0 8F E4 B8 9C.
            let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            let gb = has(b"\xcd\xf5^\xd0\xa1\xb6\xab");
            let utf8 = has("王^小东".as_bytes());
            assert_eq!(
                (gb, utf8),
                (charset == PacsCharset::Gb18030, charset == PacsCharset::Utf8)
            );
        }
        // Long groups are cut per group (64 characters each), not the value.
        let mut r = input();
        r.patient_name = format!("{}=王^小东", "A".repeat(70));
        let obj = parse(&build_basic_text_sr(&r).expect("build"));
        assert_eq!(s(&obj, tags::PATIENT_NAME), format!("{}=王^小东", "A".repeat(64)));
    }

    fn parse(bytes: &[u8]) -> DefaultDicomObject {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes)
            .expect("parse the SR back")
    }

    fn s(obj: &InMemDicomObject, tag: Tag) -> String {
        obj.element(tag)
            .unwrap_or_else(|_| panic!("{tag} missing"))
            .to_str()
            .expect("string")
            .trim_end_matches(['\0', ' '])
            .to_string()
    }

    fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
        obj.element(tag)
            .unwrap_or_else(|_| panic!("{tag} missing"))
            .items()
            .expect("a sequence")
    }

    #[test]
    fn uids_are_valid_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.starts_with("2.25.") && u.len() <= 64 && valid_uid(u), "{u}");
        }
        let s = report_series_uid("1.2.3");
        assert!(valid_uid(&s), "{s}");
        assert_eq!(s, report_series_uid("1.2.3"));
        assert_ne!(s, report_series_uid("1.2.4"));
        assert!(!valid_uid("1.02.3") && !valid_uid("1..2") && !valid_uid("") && !valid_uid("1.2a"));
        assert!(valid_uid("1.0.2"));
    }

    #[test]
    fn utc_date_and_time() {
        assert_eq!(dicom_date_time_utc(0), ("19700101".into(), "000000".into()));
        assert_eq!(
            dicom_date_time_utc(1_772_360_430_456),
            ("20260301".into(), "102030".into())
        );
        // leap day, and the last second of a year
        assert_eq!(dicom_date_time_utc(951_782_400_000).0, "20000229");
        assert_eq!(
            dicom_date_time_utc(1_767_225_599_999),
            ("20251231".into(), "235959".into())
        );
        assert_eq!(dicom_date_time_utc(-1), ("19691231".into(), "235959".into()));
    }

    #[test]
    fn builds_a_parseable_basic_text_sr() {
        let r = input();
        let bytes = build_basic_text_sr(&r).expect("build");
        assert_eq!(&bytes[128..132], b"DICM");
        let obj = parse(&bytes);
        assert_eq!(
            obj.meta().media_storage_sop_class_uid().trim_end_matches('\0'),
            BASIC_TEXT_SR
        );
        assert_eq!(
            obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0'),
            r.sop_instance_uid
        );
        assert_eq!(
            obj.meta().transfer_syntax().trim_end_matches('\0'),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(s(&obj, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
        assert_eq!(s(&obj, tags::SOP_CLASS_UID), BASIC_TEXT_SR);
        assert_eq!(s(&obj, tags::SOP_INSTANCE_UID), r.sop_instance_uid);
        assert_eq!(s(&obj, tags::STUDY_INSTANCE_UID), r.study_instance_uid);
        assert_eq!(s(&obj, tags::SERIES_INSTANCE_UID), r.series_instance_uid);
        assert_eq!(s(&obj, tags::MODALITY), "SR");
        assert_eq!(s(&obj, tags::INSTANCE_NUMBER), "1");
        assert_eq!(s(&obj, tags::PATIENT_NAME), "ZHANG^SAN=张^三");
        assert_eq!(s(&obj, tags::PATIENT_SEX), "F");
        assert_eq!(s(&obj, tags::ACCESSION_NUMBER), "ACC1234567890123");
        assert_eq!(s(&obj, tags::STUDY_DESCRIPTION), "CT CHEST 胸部平扫");
        assert_eq!(s(&obj, tags::INSTITUTION_NAME), "市人民医院");
        assert_eq!(s(&obj, tags::CONTENT_DATE), "20260301");
        assert_eq!(s(&obj, tags::CONTENT_TIME), "102030");
        assert_eq!(s(&obj, tags::VALUE_TYPE), "CONTAINER");
        assert_eq!(s(&obj, tags::CONTINUITY_OF_CONTENT), "SEPARATE");
        assert_eq!(s(&obj, tags::COMPLETION_FLAG), "COMPLETE");
        assert_eq!(s(&obj, tags::VERIFICATION_FLAG), "VERIFIED");
        assert_eq!(s(&obj, tags::PRELIMINARY_FLAG), "FINAL");
        let root = &items(&obj, tags::CONCEPT_NAME_CODE_SEQUENCE)[0];
        assert_eq!(
            (s(root, tags::CODE_VALUE), s(root, tags::CODING_SCHEME_DESIGNATOR)),
            ("18748-4".into(), "LN".into())
        );
        let content = items(&obj, tags::CONTENT_SEQUENCE);
        assert_eq!(content.len(), 2);
        for (item, (code_value, text)) in content.iter().zip([("121071", FINDINGS), ("121073", IMPRESSION)]) {
            assert_eq!(s(item, tags::RELATIONSHIP_TYPE), "CONTAINS");
            assert_eq!(s(item, tags::VALUE_TYPE), "TEXT");
            let c = &items(item, tags::CONCEPT_NAME_CODE_SEQUENCE)[0];
            assert_eq!(s(c, tags::CODE_VALUE), code_value);
            assert_eq!(s(c, tags::CODING_SCHEME_DESIGNATOR), "DCM");
            assert_eq!(s(item, tags::TEXT_VALUE), text);
        }
        let obs = &items(&obj, tags::VERIFYING_OBSERVER_SEQUENCE)[0];
        assert_eq!(s(obs, tags::VERIFYING_OBSERVER_NAME), "李医生");
        assert_eq!(s(obs, tags::VERIFICATION_DATE_TIME), "20260301102030+0000");
        assert!(obj.element(tags::PREDECESSOR_DOCUMENTS_SEQUENCE).is_err());
        let ev = &items(&obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)[0];
        let ser = &items(ev, tags::REFERENCED_SERIES_SEQUENCE)[0];
        assert_eq!(s(ser, tags::SERIES_INSTANCE_UID), "1.2.3.4");
        assert_eq!(
            s(
                &items(ser, tags::REFERENCED_SOP_SEQUENCE)[0],
                tags::REFERENCED_SOP_INSTANCE_UID
            ),
            "1.2.3.4.5"
        );
        // Pure: the same input gives the same bytes.
        assert_eq!(build_basic_text_sr(&r).expect("again"), bytes);
    }

    #[test]
    fn amended_report_references_its_predecessor() {
        let first = input();
        let mut r = input();
        r.version = 2;
        r.sop_instance_uid = new_uid();
        r.findings.push_str("\n补充：纵隔淋巴结无肿大。");
        r.amends = Some(InstanceRef {
            series_instance_uid: first.series_instance_uid.clone(),
            sop_class_uid: BASIC_TEXT_SR.into(),
            sop_instance_uid: first.sop_instance_uid.clone(),
        });
        let obj = parse(&build_basic_text_sr(&r).expect("build"));
        assert_eq!(s(&obj, tags::INSTANCE_NUMBER), "2");
        assert_eq!(s(&obj, tags::VERIFICATION_FLAG), "VERIFIED");
        let pred = &items(&obj, tags::PREDECESSOR_DOCUMENTS_SEQUENCE)[0];
        assert_eq!(s(pred, tags::STUDY_INSTANCE_UID), first.study_instance_uid);
        let ser = &items(pred, tags::REFERENCED_SERIES_SEQUENCE)[0];
        assert_eq!(s(ser, tags::SERIES_INSTANCE_UID), first.series_instance_uid);
        let sop = &items(ser, tags::REFERENCED_SOP_SEQUENCE)[0];
        assert_eq!(s(sop, tags::REFERENCED_SOP_CLASS_UID), BASIC_TEXT_SR);
        assert_eq!(s(sop, tags::REFERENCED_SOP_INSTANCE_UID), first.sop_instance_uid);
    }

    #[test]
    fn bad_input_is_refused_or_cleaned() {
        let mut r = input();
        r.sop_instance_uid = "1.2.x".into();
        assert!(matches!(build_basic_text_sr(&r), Err(SrError::BadUid { .. })));
        let mut r = input();
        r.findings = " ".into();
        r.impression = String::new();
        assert!(matches!(build_basic_text_sr(&r), Err(SrError::Empty)));
        let mut r = input();
        r.version = 0;
        assert!(matches!(build_basic_text_sr(&r), Err(SrError::BadVersion(0))));
        // Only an impression; junk dates, sex and control characters.
        let mut r = input();
        r.findings = String::new();
        r.study_date = "2026-03-01".into();
        r.patient_birth_date = "unknown".into();
        r.patient_sex = "X".into();
        r.patient_id = "A\\B\u{7}C".into();
        r.evidence.clear();
        let obj = parse(&build_basic_text_sr(&r).expect("build"));
        assert_eq!(items(&obj, tags::CONTENT_SEQUENCE).len(), 1);
        assert_eq!(s(&obj, tags::STUDY_DATE), "");
        assert_eq!(s(&obj, tags::PATIENT_BIRTH_DATE), "");
        assert_eq!(s(&obj, tags::PATIENT_SEX), "");
        assert_eq!(s(&obj, tags::PATIENT_ID), "A/B C");
        assert!(
            obj.element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
                .is_err()
        );
    }

    /// DCMTK, an independent SR implementation, must accept the file.
    #[test]
    fn dcmtk_dsrdump_accepts_it() {
        let Some(dsrdump) = ["/usr/bin/dsrdump", "/usr/local/bin/dsrdump"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            eprintln!("SKIPPED dcmtk_dsrdump_accepts_it: dsrdump (DCMTK) is not installed");
            return;
        };
        let dir = tempfile::tempdir().expect("tmp");
        let first = input();
        let mut r = input();
        r.version = 2;
        r.sop_instance_uid = new_uid();
        r.amends = Some(InstanceRef {
            series_instance_uid: first.series_instance_uid.clone(),
            sop_class_uid: BASIC_TEXT_SR.into(),
            sop_instance_uid: first.sop_instance_uid.clone(),
        });
        for (name, r) in [("v1.dcm", &first), ("v2.dcm", &r)] {
            let path = dir.path().join(name);
            std::fs::write(&path, build_basic_text_sr(r).expect("build")).expect("write");
            let out = std::process::Command::new(dsrdump)
                .arg("+Pl")
                .arg(&path)
                .output()
                .expect("run dsrdump");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "dsrdump failed on {name}:\n{text}");
            assert!(!text.contains("E: "), "dsrdump reported errors on {name}:\n{text}");
            for line in FINDINGS.lines() {
                assert!(text.contains(line), "{line:?} not in dsrdump output of {name}:\n{text}");
            }
            assert!(text.contains(IMPRESSION), "impression not in dsrdump output:\n{text}");
            assert!(text.contains("Diagnostic Imaging Report"), "{text}");
            let header = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            };
            assert_eq!(header("Completion Flag"), "COMPLETE", "{text}");
            assert_eq!(header("Verification Flag"), "VERIFIED", "{text}");
            assert!(header("Verifying Observers").contains("李医生"), "{text}");
            let predecessors = if r.amends.is_some() { "1" } else { "" };
            assert_eq!(header("Predecessor Docs"), predecessors, "{text}");
        }
    }
}
