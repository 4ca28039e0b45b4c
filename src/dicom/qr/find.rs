//! A C-FIND (or C-MOVE / C-GET) request identifier read into a [`Query`]:
//! the level, the keys to match (each a validated [`Matcher`]), the keys to
//! return, and the character set to answer in; then, per matching record,
//! the response identifier.
//!
//! The index narrows the candidates in SQL (`archive::query`, a superset
//! by construction); [`Query::matches`] then decides exactly, with the
//! reference matchers of [`super::matching`]. So the standard's rules live
//! in one pure, unit-tested place and the SQL only has to be fast.
//!
//! Text arrives in the request's Specific Character Set and is decoded to
//! Unicode before matching, so a GB18030 or UTF-8 Chinese name matches the
//! name as the modality sent it (the index stores Unicode). Person names
//! match case-insensitively, on the whole value or on any one component
//! group (`王^小东` finds `Wang^Xiaodong=王^小东`), as dcm4chee and Orthanc
//! do by default.

use std::collections::BTreeMap;

use super::identifier::{Element, Identifier, IdentifierError, Out};
use super::keys::{self, Key, Kind, QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET};
use super::matching::{self, KeyError, Matcher, Vr};
use super::{Level, Model};
use crate::dicom::charset::Charset;

/// Retrieve AE Title (0008,0054): where the records can be retrieved from.
pub const RETRIEVE_AE_TITLE: u32 = 0x0008_0054;
/// Instance Availability (0008,0056).
pub const INSTANCE_AVAILABILITY: u32 = 0x0008_0056;

/// A stored record's values by tag, as the index keeps them.
pub type Row = BTreeMap<u32, String>;

/// One key to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub key: &'static Key,
    /// As asked; person names lowercased (matching ignores their case).
    pub matcher: Matcher,
}

/// A key to return: the tag and the VR to write it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ret {
    tag: u32,
    vr: [u8; 2],
    sequence: bool,
}

/// How response text is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// UTF-8, `ISO_IR 192` (when any value is not ASCII).
    Utf8,
    /// GB18030, for a requester that asked in it: Chinese devices that
    /// send GB18030 often cannot read UTF-8.
    Gb18030,
}

/// A validated query.
#[derive(Debug, Clone)]
pub struct Query {
    pub model: Model,
    pub level: Level,
    pub filters: Vec<Filter>,
    returns: Vec<Ret>,
    answer: Answer,
    /// The request carried Specific Character Set: it is returned.
    charset_asked: bool,
}

/// Why a request identifier cannot be queried: the DIMSE status and, for
/// a bad key, the offending element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("identifier: {0}")]
    Identifier(#[from] IdentifierError),
    #[error("no Query/Retrieve Level (0008,0052)")]
    NoLevel,
    #[error("Query/Retrieve Level {0:?} is not one of this model")]
    BadLevel(String),
    #[error("{keyword}: {source}")]
    Key {
        tag: u32,
        keyword: &'static str,
        source: KeyError,
    },
}

impl QueryError {
    /// PS3.4 C.4.1.1.4: 0xA900 "Identifier does not match SOP Class" for a
    /// missing or foreign level; 0xC000 "Unable to process" otherwise.
    pub fn status(&self) -> u16 {
        match self {
            QueryError::NoLevel | QueryError::BadLevel(_) => 0xA900,
            _ => 0xC000,
        }
    }

    pub fn offending(&self) -> Option<u32> {
        match self {
            QueryError::Key { tag, .. } => Some(*tag),
            QueryError::NoLevel | QueryError::BadLevel(_) => Some(QUERY_RETRIEVE_LEVEL),
            QueryError::Identifier(_) => None,
        }
    }
}

fn vr_code(vr: Vr) -> [u8; 2] {
    match vr {
        Vr::Ui => *b"UI",
        Vr::Da => *b"DA",
        Vr::Tm => *b"TM",
        Vr::Dt => *b"DT",
        Vr::Pn => *b"PN",
        Vr::Is => *b"IS",
        Vr::Sh => *b"SH",
        Vr::Cs => *b"CS",
        Vr::Lo => *b"LO",
    }
}

/// The VR of an attribute medrelay adds or knows outside the key table.
fn known_vr(tag: u32) -> Option<[u8; 2]> {
    match tag {
        QUERY_RETRIEVE_LEVEL | SPECIFIC_CHARACTER_SET | INSTANCE_AVAILABILITY => Some(*b"CS"),
        RETRIEVE_AE_TITLE => Some(*b"AE"),
        _ => keys::by_tag(tag).map(|k| vr_code(k.vr)),
    }
}

/// Reads a request identifier under `model`.
pub fn parse(model: Model, id: &Identifier) -> Result<Query, QueryError> {
    let charset = Charset::from_raw(id.get(SPECIFIC_CHARACTER_SET).map(|e| e.value.as_slice()));
    let level_value = id.get(QUERY_RETRIEVE_LEVEL).ok_or(QueryError::NoLevel)?;
    let level_text = String::from_utf8_lossy(&level_value.value).into_owned();
    let level = Level::parse(&level_text, model).ok_or_else(|| QueryError::BadLevel(level_text.trim().to_string()))?;
    let asked_charset = id
        .get(SPECIFIC_CHARACTER_SET)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    let answer = match asked_charset
        .as_deref()
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0'))
    {
        Some("GB18030") => Answer::Gb18030,
        _ => Answer::Utf8,
    };
    let mut filters = Vec::new();
    let mut returns = Vec::new();
    for e in &id.elements {
        let vr = e.vr.or_else(|| known_vr(e.tag)).unwrap_or(*b"UN");
        if e.tag != SPECIFIC_CHARACTER_SET {
            returns.push(Ret {
                tag: e.tag,
                vr,
                sequence: e.sequence,
            });
        }
        let Some(key) = keys::by_tag(e.tag) else { continue };
        // Counts are return keys only; keys below the level are not
        // matched (there is no record of that level to match them on).
        if key.kind == Kind::Count || keys::level_in(key, model) > level || e.sequence {
            continue;
        }
        let matcher = key_matcher(key, e, &charset).map_err(|source| QueryError::Key {
            tag: key.tag,
            keyword: key.keyword,
            source,
        })?;
        if matcher != Matcher::Universal {
            filters.push(Filter { key, matcher });
        }
    }
    Ok(Query {
        model,
        level,
        filters,
        returns,
        answer,
        charset_asked: asked_charset.is_some(),
    })
}

/// The attributes QIDO-RS returns at each level without `includefield`
/// (PS3.18 table 6.7.1-2, those medrelay keeps), in the study-level
/// resources' order.
pub fn qido_defaults(level: Level) -> &'static [u32] {
    match level {
        Level::Patient | Level::Study => &[
            0x0008_0020,
            0x0008_0030,
            0x0008_0050,
            INSTANCE_AVAILABILITY,
            0x0008_0061,
            0x0008_0090,
            0x0010_0010,
            0x0010_0020,
            0x0010_0030,
            0x0010_0040,
            0x0020_000D,
            0x0020_0010,
            0x0020_1206,
            0x0020_1208,
        ],
        Level::Series => &[
            0x0008_0060,
            0x0008_103E,
            0x0020_000E,
            0x0020_0011,
            0x0020_1209,
            0x0020_000D,
        ],
        Level::Image => &[
            0x0008_0016,
            0x0008_0018,
            INSTANCE_AVAILABILITY,
            0x0020_0013,
            0x0020_000E,
            0x0020_000D,
        ],
    }
}

/// A QIDO-RS search (PS3.18 10.6) as a query: `keys` are the matching
/// parameters (tag and value, from the URL: UTF-8) plus the UIDs of the
/// resource path; `include` the `includefield` tags (`all`: every key of
/// the level and above). Same validation and matching as C-FIND.
pub fn qido(level: Level, keys: &[(u32, String)], include: &[u32], all: bool) -> Result<Query, QueryError> {
    let model = Model::StudyRoot;
    let mut filters = Vec::new();
    let mut tags: Vec<u32> = qido_defaults(level).to_vec();
    for (tag, value) in keys {
        let key = keys::by_tag(*tag).ok_or(QueryError::Key {
            tag: *tag,
            keyword: "unsupported",
            source: KeyError::BadValue {
                vr: "key",
                value: format!(
                    "({:04X},{:04X}) is not a supported matching key",
                    tag >> 16,
                    tag & 0xFFFF
                ),
            },
        })?;
        if key.kind == Kind::Count {
            return Err(QueryError::Key {
                tag: key.tag,
                keyword: key.keyword,
                source: KeyError::BadValue {
                    vr: "IS",
                    value: "a related count is a return key only".into(),
                },
            });
        }
        let m = Matcher::parse(key.vr, value, key.list || key.vr == Vr::Ui).map_err(|source| QueryError::Key {
            tag: key.tag,
            keyword: key.keyword,
            source,
        })?;
        let m = if key.vr == Vr::Pn { lowercase(m) } else { m };
        if m != Matcher::Universal {
            filters.push(Filter { key, matcher: m });
        }
        tags.push(*tag);
    }
    tags.extend_from_slice(include);
    if all {
        tags.extend(
            keys::KEYS
                .iter()
                .filter(|k| keys::level_in(k, model) <= level)
                .map(|k| k.tag),
        );
    }
    tags.sort_unstable();
    tags.dedup();
    let returns = tags
        .into_iter()
        .map(|tag| Ret {
            tag,
            vr: known_vr(tag).unwrap_or(*b"UN"),
            sequence: false,
        })
        .collect();
    Ok(Query {
        model,
        level,
        filters,
        returns,
        answer: Answer::Utf8,
        charset_asked: false,
    })
}

/// One response value with its VR, for writers other than the DIMSE
/// encoder (QIDO-RS's DICOM JSON): the tag, the VR, the text value (empty:
/// no value), multi-valued attributes split.
pub fn response_values(q: &Query, row: &Row, retrieve_ae: &str) -> Vec<(u32, [u8; 2], Vec<String>)> {
    q.response(row, retrieve_ae)
        .into_iter()
        .filter(|o| o.tag != SPECIFIC_CHARACTER_SET)
        .map(|o| {
            let text = String::from_utf8_lossy(&o.value).into_owned();
            let values = if text.is_empty() {
                Vec::new()
            } else {
                text.split('\\').map(str::to_string).collect()
            };
            (o.tag, o.vr, values)
        })
        .collect()
}

fn key_matcher(key: &Key, e: &Element, charset: &Charset) -> Result<Matcher, KeyError> {
    let text = match key.vr {
        Vr::Pn => charset.decode_pn(&e.value),
        Vr::Ui | Vr::Da | Vr::Tm | Vr::Dt | Vr::Is | Vr::Cs => String::from_utf8_lossy(&e.value).into_owned(),
        Vr::Sh | Vr::Lo => charset.decode(&e.value),
    };
    let m = Matcher::parse(key.vr, &text, key.list || key.vr == Vr::Ui)?;
    Ok(if key.vr == Vr::Pn { lowercase(m) } else { m })
}

fn lowercase(m: Matcher) -> Matcher {
    match m {
        Matcher::Single(v) => Matcher::Single(v.to_lowercase()),
        Matcher::Wildcard(v) => Matcher::Wildcard(v.to_lowercase()),
        other => other,
    }
}

/// A stored value as the matchers compare it: dates `YYYYMMDD`, times
/// `HHMMSS.FFFFFF`, integers without padding, names lowercased.
fn stored_form(vr: Vr, stored: &str) -> String {
    let v = stored.trim();
    match vr {
        Vr::Da if v.len() == 10 => v.replace('.', ""),
        Vr::Tm => matching::time(v, false).unwrap_or_default(),
        Vr::Is => v.parse::<i64>().map(|n| n.to_string()).unwrap_or_default(),
        Vr::Pn => v.to_lowercase(),
        _ => v.to_string(),
    }
}

impl Filter {
    /// Whether a stored value matches this key.
    pub fn accepts(&self, stored: &str) -> bool {
        let v = stored_form(self.key.vr, stored);
        if self.key.vr == Vr::Pn {
            // The whole value, or any one component group.
            return self.matcher.matches(&v) || (v.contains('=') && v.split('=').any(|g| self.matcher.matches(g)));
        }
        if self.key.list {
            // A multi-valued attribute (Modalities in Study, stored
            // comma-separated): any of its values.
            return v.split([',', '\\']).any(|x| self.matcher.matches(x.trim()));
        }
        self.matcher.matches(&v)
    }
}

impl Query {
    /// Whether a record matches every key (the exact decision; the index's
    /// SQL only narrows the candidates).
    pub fn matches(&self, row: &Row) -> bool {
        self.filters
            .iter()
            .all(|f| f.accepts(row.get(&f.key.tag).map(String::as_str).unwrap_or("")))
    }

    /// Whether the requester asked for this attribute back.
    pub fn wants(&self, tag: u32) -> bool {
        self.returns.iter().any(|r| r.tag == tag)
    }

    /// The matcher of a key, if the query matches on it.
    pub fn filter(&self, tag: u32) -> Option<&Matcher> {
        self.filters.iter().find(|f| f.key.tag == tag).map(|f| &f.matcher)
    }

    /// The response identifier for one matching record: every key asked
    /// for, with the record's value where medrelay keeps one at or above
    /// the query's level, empty otherwise.
    pub fn response(&self, row: &Row, retrieve_ae: &str) -> Vec<Out> {
        let mut values: Vec<(Ret, String)> = Vec::with_capacity(self.returns.len());
        for r in &self.returns {
            let v = match r.tag {
                _ if r.sequence => String::new(),
                QUERY_RETRIEVE_LEVEL => self.level.as_str().to_string(),
                RETRIEVE_AE_TITLE => retrieve_ae.to_string(),
                INSTANCE_AVAILABILITY => "ONLINE".to_string(),
                t => match keys::by_tag(t) {
                    Some(k) if keys::level_in(k, self.model) <= self.level => {
                        let v = row.get(&t).cloned().unwrap_or_default();
                        if k.list { v.replace(',', "\\") } else { v }
                    }
                    _ => String::new(),
                },
            };
            values.push((*r, v));
        }
        let unicode = values.iter().any(|(_, v)| !v.is_ascii());
        let mut out: Vec<Out> = values
            .into_iter()
            .map(|(r, v)| Out {
                tag: r.tag,
                vr: r.vr,
                value: self.encode(&v),
            })
            .collect();
        if unicode || self.charset_asked {
            let term = match self.answer {
                Answer::Gb18030 => "GB18030",
                Answer::Utf8 => "ISO_IR 192",
            };
            out.push(Out {
                tag: SPECIFIC_CHARACTER_SET,
                vr: *b"CS",
                value: term.as_bytes().to_vec(),
            });
        }
        out
    }

    fn encode(&self, v: &str) -> Vec<u8> {
        use encoding::{EncoderTrap, Encoding as _};
        match self.answer {
            Answer::Gb18030 if !v.is_ascii() => encoding::all::GB18030
                .encode(v, EncoderTrap::Replace)
                .unwrap_or_else(|_| v.as_bytes().to_vec()),
            _ => v.as_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::identifier::{self, Out};
    use super::*;
    use crate::dicom::walk::Encoding;

    fn ident(elems: &[(u32, &[u8; 2], &[u8])]) -> Identifier {
        let enc = Encoding::for_transfer_syntax("1.2.840.10008.1.2.1");
        let bytes = identifier::encode(
            elems
                .iter()
                .map(|(t, vr, v)| Out {
                    tag: *t,
                    vr: **vr,
                    value: v.to_vec(),
                })
                .collect(),
            enc,
        );
        identifier::parse(&bytes, enc).expect("identifier")
    }

    fn row(pairs: &[(u32, &str)]) -> Row {
        pairs.iter().map(|(t, v)| (*t, v.to_string())).collect()
    }

    const NAME: u32 = 0x0010_0010;
    const DATE: u32 = 0x0008_0020;
    const TIME: u32 = 0x0008_0030;
    const MODS: u32 = 0x0008_0061;
    const STUDY: u32 = 0x0020_000D;

    #[test]
    fn levels_are_checked_per_model() {
        let q = parse(Model::StudyRoot, &ident(&[(QUERY_RETRIEVE_LEVEL, b"CS", b"PATIENT ")]));
        assert_eq!(q.map(|_| ()), Err(QueryError::BadLevel("PATIENT".into())));
        let q = parse(Model::PatientRoot, &ident(&[(NAME, b"PN", b"")]));
        assert_eq!(q.as_ref().map_err(QueryError::status).err(), Some(0xA900));
        let q = parse(
            Model::PatientRoot,
            &ident(&[(QUERY_RETRIEVE_LEVEL, b"CS", b"PATIENT "), (NAME, b"PN", b"")]),
        )
        .expect("query");
        assert_eq!(q.level, Level::Patient);
        assert!(q.filters.is_empty(), "an empty key only returns");
    }

    #[test]
    fn gb18030_names_match_stored_unicode_and_come_back_in_gb18030() {
        // 王^小东 in GB18030.
        let gb = [0xCD, 0xF5, b'^', 0xD0, 0xA1, 0xB6, 0xAB];
        let q = parse(
            Model::StudyRoot,
            &ident(&[
                (SPECIFIC_CHARACTER_SET, b"CS", b"GB18030 "),
                (QUERY_RETRIEVE_LEVEL, b"CS", b"STUDY "),
                (NAME, b"PN", &gb),
                (STUDY, b"UI", b""),
            ]),
        )
        .expect("query");
        let stored = row(&[(NAME, "Wang^Xiaodong=王^小东=wang^xiaodong"), (STUDY, "1.2.3")]);
        assert!(q.matches(&stored), "one component group matches");
        assert!(!q.matches(&row(&[(NAME, "Li^Si=李^四")])));
        let out = q.response(&stored, "MEDRELAY");
        let name = out.iter().find(|o| o.tag == NAME).expect("name returned");
        assert!(name.value.starts_with(b"Wang^Xiaodong="));
        assert!(name.value.windows(gb.len()).any(|w| w == gb), "GB18030 bytes");
        let cs = out.iter().find(|o| o.tag == SPECIFIC_CHARACTER_SET).expect("charset");
        assert_eq!(cs.value, b"GB18030");
    }

    #[test]
    fn utf8_wildcards_ranges_and_lists() {
        let q = parse(
            Model::StudyRoot,
            &ident(&[
                (SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 192"),
                (DATE, b"DA", b"20240101-20240131"),
                (TIME, b"TM", b"09-10"),
                (QUERY_RETRIEVE_LEVEL, b"CS", b"STUDY "),
                (MODS, b"CS", b"MR\\CT"),
                (NAME, b"PN", "王*".as_bytes()),
            ]),
        )
        .expect("query");
        let hit = row(&[(NAME, "王^小东"), (DATE, "20240115"), (TIME, "103000"), (MODS, "CT,SR")]);
        assert!(q.matches(&hit), "\"10\" as an upper bound covers 10:59:59");
        for (tag, v) in [
            (DATE, "20240201"),
            (TIME, "1100"),
            (MODS, "US"),
            (NAME, "李^四"),
            (TIME, ""),
        ] {
            let mut miss = hit.clone();
            miss.insert(tag, v.into());
            assert!(!q.matches(&miss), "{tag:08X}={v}");
        }
    }

    #[test]
    fn responses_carry_only_the_keys_asked_and_counts() {
        let q = parse(
            Model::StudyRoot,
            &ident(&[
                (QUERY_RETRIEVE_LEVEL, b"CS", b"SERIES"),
                (0x0008_0060, b"CS", b""),
                (0x0020_1209, b"IS", b""),
                (0x0008_0018, b"UI", b""),
                (RETRIEVE_AE_TITLE, b"AE", b""),
            ]),
        )
        .expect("query");
        let out = q.response(
            &row(&[(0x0008_0060, "CT"), (0x0020_1209, "300"), (0x0008_0018, "1.2.3")]),
            "HUB",
        );
        let get = |t: u32| out.iter().find(|o| o.tag == t).map(|o| o.value.clone());
        assert_eq!(get(0x0008_0060), Some(b"CT".to_vec()));
        assert_eq!(get(0x0020_1209), Some(b"300".to_vec()));
        assert_eq!(get(0x0008_0018), Some(Vec::new()), "below the level: empty");
        assert_eq!(get(RETRIEVE_AE_TITLE), Some(b"HUB".to_vec()));
        assert_eq!(get(QUERY_RETRIEVE_LEVEL), Some(b"SERIES".to_vec()));
        assert_eq!(get(SPECIFIC_CHARACTER_SET), None, "all ASCII, not asked");
        assert_eq!(get(NAME), None, "not asked, not returned");
    }

    #[test]
    fn qido_searches_validate_like_c_find_and_return_the_level_defaults() {
        let q = qido(
            Level::Study,
            &[(NAME, "王*".into()), (DATE, "20240101-20240131".into())],
            &[0x0008_1030],
            false,
        )
        .expect("qido");
        assert_eq!(q.filters.len(), 2);
        let stored = row(&[
            (NAME, "Wang^Xiaodong=王^小东"),
            (DATE, "20240115"),
            (STUDY, "1.2.3"),
            (0x0008_1030, "CT 头颅"),
            (0x0020_1208, "12"),
        ]);
        assert!(q.matches(&stored));
        let v = response_values(&q, &stored, "HUB");
        let get = |t: u32| v.iter().find(|x| x.0 == t).map(|x| x.2.clone());
        assert_eq!(get(STUDY), Some(vec!["1.2.3".to_string()]));
        assert_eq!(get(0x0008_1030), Some(vec!["CT 头颅".to_string()]), "includefield");
        assert_eq!(get(0x0020_1208), Some(vec!["12".to_string()]), "a default return key");
        assert_eq!(get(0x0008_0060), None, "a series key is not a study default");
        assert!(qido(Level::Study, &[(STUDY, "1.2.*".into())], &[], false).is_err());
        assert!(
            qido(Level::Study, &[(0x0020_1208, "3".into())], &[], false).is_err(),
            "counts are not matched"
        );
        assert!(qido(Level::Study, &[(0x0009_1001, "x".into())], &[], false).is_err());
        let all = qido(Level::Series, &[], &[], true).expect("all");
        assert!(all.wants(0x0010_0010) && all.wants(0x0008_0060) && !all.wants(0x0008_0018));
    }

    #[test]
    fn bad_keys_name_the_offending_element() {
        let e = parse(
            Model::StudyRoot,
            &ident(&[(QUERY_RETRIEVE_LEVEL, b"CS", b"STUDY "), (STUDY, b"UI", b"1.2.*")]),
        )
        .map(|_| ())
        .expect_err("wildcard UID");
        assert_eq!((e.status(), e.offending()), (0xC000, Some(STUDY)));
        let e = parse(
            Model::StudyRoot,
            &ident(&[(DATE, b"DA", b"20241301"), (QUERY_RETRIEVE_LEVEL, b"CS", b"STUDY ")]),
        )
        .map(|_| ())
        .expect_err("month 13");
        assert_eq!(e.offending(), Some(DATE));
    }
}
