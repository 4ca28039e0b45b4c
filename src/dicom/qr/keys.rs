//! The query keys medrelay supports, per level (PS3.4 C.6.1.1 Patient Root,
//! C.6.2.1 Study Root): which tag, its VR for matching, its level, and
//! whether it is the level's unique key, a required key, an optional one,
//! or a related count (a return key only, never matched).
//!
//! One table for the identifier parser (which tags to collect), the
//! validation (unique keys of the levels above in a hierarchical query),
//! the index queries (which column answers a key) and the response
//! encoder, so they cannot disagree about a key.

use super::Level;
use super::matching::Vr;

/// How a key takes part in a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The level's unique key (single value or UID list matching).
    Unique,
    /// Required matching key: an SCP must match on it.
    Required,
    /// Optional key medrelay matches on too.
    Optional,
    /// Number of … Related …: returned when asked, never matched.
    Count,
}

/// One supported key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub tag: u32,
    pub keyword: &'static str,
    pub vr: Vr,
    pub level: Level,
    pub kind: Kind,
    /// Whether a `\` list is an any-of match for this key (UI keys always).
    pub list: bool,
}

const fn key(tag: u32, keyword: &'static str, vr: Vr, level: Level, kind: Kind) -> Key {
    Key {
        tag,
        keyword,
        vr,
        level,
        kind,
        list: false,
    }
}

/// Query/Retrieve Level (0008,0052).
pub const QUERY_RETRIEVE_LEVEL: u32 = 0x0008_0052;
/// Specific Character Set (0008,0005): how the identifier's text is encoded.
pub const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;

/// Every supported key. Patient-level keys are study-level attributes in
/// the Study Root model (C.6.2.1.2); [`level_in`] says where a key sits in
/// a given model.
pub const KEYS: &[Key] = &[
    // PATIENT
    key(0x0010_0010, "PatientName", Vr::Pn, Level::Patient, Kind::Required),
    key(0x0010_0020, "PatientID", Vr::Lo, Level::Patient, Kind::Unique),
    key(0x0010_0030, "PatientBirthDate", Vr::Da, Level::Patient, Kind::Optional),
    key(0x0010_0040, "PatientSex", Vr::Cs, Level::Patient, Kind::Optional),
    key(
        0x0020_1200,
        "NumberOfPatientRelatedStudies",
        Vr::Is,
        Level::Patient,
        Kind::Count,
    ),
    key(
        0x0020_1202,
        "NumberOfPatientRelatedSeries",
        Vr::Is,
        Level::Patient,
        Kind::Count,
    ),
    key(
        0x0020_1204,
        "NumberOfPatientRelatedInstances",
        Vr::Is,
        Level::Patient,
        Kind::Count,
    ),
    // STUDY
    key(0x0008_0020, "StudyDate", Vr::Da, Level::Study, Kind::Required),
    key(0x0008_0030, "StudyTime", Vr::Tm, Level::Study, Kind::Required),
    key(0x0008_0050, "AccessionNumber", Vr::Sh, Level::Study, Kind::Required),
    key(0x0020_0010, "StudyID", Vr::Sh, Level::Study, Kind::Required),
    key(0x0020_000D, "StudyInstanceUID", Vr::Ui, Level::Study, Kind::Unique),
    key(
        0x0008_0090,
        "ReferringPhysicianName",
        Vr::Pn,
        Level::Study,
        Kind::Optional,
    ),
    key(0x0008_1030, "StudyDescription", Vr::Lo, Level::Study, Kind::Optional),
    Key {
        list: true,
        ..key(0x0008_0061, "ModalitiesInStudy", Vr::Cs, Level::Study, Kind::Optional)
    },
    key(
        0x0020_1206,
        "NumberOfStudyRelatedSeries",
        Vr::Is,
        Level::Study,
        Kind::Count,
    ),
    key(
        0x0020_1208,
        "NumberOfStudyRelatedInstances",
        Vr::Is,
        Level::Study,
        Kind::Count,
    ),
    // SERIES
    key(0x0008_0060, "Modality", Vr::Cs, Level::Series, Kind::Required),
    key(0x0020_0011, "SeriesNumber", Vr::Is, Level::Series, Kind::Required),
    key(0x0020_000E, "SeriesInstanceUID", Vr::Ui, Level::Series, Kind::Unique),
    key(0x0008_103E, "SeriesDescription", Vr::Lo, Level::Series, Kind::Optional),
    key(0x0018_0015, "BodyPartExamined", Vr::Cs, Level::Series, Kind::Optional),
    key(
        0x0020_1209,
        "NumberOfSeriesRelatedInstances",
        Vr::Is,
        Level::Series,
        Kind::Count,
    ),
    // IMAGE
    key(0x0020_0013, "InstanceNumber", Vr::Is, Level::Image, Kind::Required),
    key(0x0008_0018, "SOPInstanceUID", Vr::Ui, Level::Image, Kind::Unique),
    key(0x0008_0016, "SOPClassUID", Vr::Ui, Level::Image, Kind::Optional),
];

/// The supported key with this tag.
pub fn by_tag(tag: u32) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.tag == tag)
}

/// The tag of a level's unique key.
pub fn unique_of(level: Level) -> u32 {
    match level {
        Level::Patient => 0x0010_0020,
        Level::Study => 0x0020_000D,
        Level::Series => 0x0020_000E,
        Level::Image => 0x0008_0018,
    }
}

/// Where a key sits in a model: patient keys are study keys in Study Root.
pub fn level_in(k: &Key, model: super::Model) -> Level {
    match (model, k.level) {
        (super::Model::StudyRoot, Level::Patient) => Level::Study,
        (_, l) => l,
    }
}

/// The tags an identifier parser collects: every key, the level and the
/// character set.
pub fn wanted() -> Vec<u32> {
    let mut tags: Vec<u32> = KEYS.iter().map(|k| k.tag).collect();
    tags.extend([QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET]);
    tags.sort_unstable();
    tags
}

#[cfg(test)]
mod tests {
    use super::super::Model;
    use super::*;

    #[test]
    fn every_level_has_one_unique_key_and_tags_are_distinct() {
        for level in [Level::Patient, Level::Study, Level::Series, Level::Image] {
            let uniques: Vec<u32> = KEYS
                .iter()
                .filter(|k| k.level == level && k.kind == Kind::Unique)
                .map(|k| k.tag)
                .collect();
            assert_eq!(uniques, [unique_of(level)], "{level:?}");
        }
        assert_eq!(
            by_tag(unique_of(Level::Study)).map(|k| k.keyword),
            Some("StudyInstanceUID")
        );
        let mut tags = wanted();
        let n = tags.len();
        tags.dedup();
        assert_eq!(tags.len(), n, "a tag listed twice");
        assert!(tags.contains(&QUERY_RETRIEVE_LEVEL) && tags.contains(&SPECIFIC_CHARACTER_SET));
    }

    #[test]
    fn uid_keys_are_ui_and_counts_are_never_unique() {
        for k in KEYS {
            if k.keyword.ends_with("UID") {
                assert_eq!(k.vr, Vr::Ui, "{}", k.keyword);
            }
            if k.keyword.starts_with("NumberOf") {
                assert_eq!((k.kind, k.vr), (Kind::Count, Vr::Is), "{}", k.keyword);
            }
        }
        assert!(
            by_tag(0x0008_0061).is_some_and(|k| k.list),
            "Modalities in Study is any-of"
        );
        assert_eq!(by_tag(0x7FE0_0010), None, "pixel data is no key");
    }

    #[test]
    fn patient_keys_are_study_keys_in_study_root() {
        let name = by_tag(0x0010_0010).expect("PatientName");
        assert_eq!(level_in(name, Model::StudyRoot), Level::Study);
        assert_eq!(level_in(name, Model::PatientRoot), Level::Patient);
        let series = by_tag(0x0020_000E).expect("SeriesInstanceUID");
        assert_eq!(level_in(series, Model::StudyRoot), Level::Series);
    }
}
