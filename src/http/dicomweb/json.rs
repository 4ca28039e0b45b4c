//! The DICOM JSON model (PS3.18 F.2) of one stored instance, for WADO-RS
//! metadata. Blocking (it reads the instance): callers run it on a
//! blocking thread, once per instance version (the result is cached per
//! series, see `archive::metadata`).
//!
//! Every attribute of the dataset is there except the bulk data: Pixel
//! Data and any binary value longer than [`INLINE_MAX`] become a
//! `BulkDataURI` under the instance's own WADO-RS URL
//! (`…/instances/{sop}/bulkdata/{tag path}`); short binary values are
//! `InlineBinary`. The file meta group is not part of the model.
//!
//! Text is Unicode. dicom-object decodes the usual single character sets
//! (`ISO_IR 192`, `GB18030`, `GBK`, Latin-1…) itself; ISO 2022 code
//! extensions (`\ISO 2022 IR 58`, as Chinese modalities send GB 2312) it
//! reads as one set and leaves the escape sequences in, so for those the
//! top-level text values are decoded again from their raw bytes with
//! `dicom::charset` (which follows the escapes), and values in sequences
//! are cleaned of the escape sequences (GB 2312 read as GBK is right
//! once they are gone).

use std::io::{Read, Seek, SeekFrom};

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json, json};

use crate::dicom::charset::Charset;
use crate::dicom::walk::{self, Encoding, PixelLocation};
use crate::imaging::decode::{self, Input};

/// Binary values up to this many bytes are sent inline (base64); longer
/// ones, and Pixel Data always, as a BulkDataURI.
pub const INLINE_MAX: usize = 1024;

/// Nesting limit of sequences written out (the walker refuses deeper ones
/// before this is reached).
const MAX_DEPTH: usize = 32;

/// The bytes read for the file meta group.
const META_LIMIT: u64 = 64 * 1024;

const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("reading the instance: {0}")]
    Io(#[from] std::io::Error),
    #[error("the instance cannot be parsed: {0}")]
    Corrupt(String),
}

/// Builds the DICOM JSON object of the instance in `src`, whose bulk data
/// URIs start with `instance_url` (`/dicom-web/studies/…/instances/{sop}`).
pub fn instance(src: &dyn Input, instance_url: &str) -> Result<Map<String, Json>, JsonError> {
    let size = src.size()?;
    let mut r = src.open()?;
    let mut head = Vec::new();
    (&mut r).take(META_LIMIT).read_to_end(&mut head)?;
    let meta = decode::part10(&head).map_err(|e| JsonError::Corrupt(e.to_string()))?;
    let enc = Encoding::for_transfer_syntax(&meta.transfer_syntax);
    // Our bounded walker goes first, as for rendering (`decode::open`): it
    // refuses truncated or mis-encoded datasets before dicom-object parses
    // them (dicom-object can allocate what a garbage length asks for).
    r.seek(SeekFrom::Start(meta.dataset_offset))?;
    let len = size.saturating_sub(meta.dataset_offset);
    let summary = walk::walk_seekable(r, enc, &[SPECIFIC_CHARACTER_SET], len).map_err(walk_error)?;
    let obj = decode::read_object(src, Some(PIXEL_DATA)).map_err(|e| match e {
        decode::DecodeError::Io(m) => JsonError::Io(std::io::Error::other(m)),
        e => JsonError::Corrupt(e.to_string()),
    })?;
    let raw_charset = summary.values.get(&SPECIFIC_CHARACTER_SET).cloned();
    let iso2022 = raw_charset.as_deref().is_some_and(|c| {
        let t = String::from_utf8_lossy(c);
        t.contains("2022") || t.trim_end_matches(['\0', ' ']).contains('\\')
    });
    // ISO 2022: the top-level text values again, from their raw bytes.
    let mut redecoded = std::collections::HashMap::new();
    if iso2022 {
        let charset = Charset::from_raw(raw_charset.as_deref());
        let wanted: Vec<u32> = obj
            .iter()
            .filter(|e| charset_vr(e.vr()))
            .map(|e| (u32::from(e.header().tag.group()) << 16) | u32::from(e.header().tag.element()))
            .collect();
        let mut r = src.open()?;
        r.seek(SeekFrom::Start(meta.dataset_offset))?;
        let raw = walk::walk_seekable(r, enc, &wanted, len).map_err(walk_error)?;
        for e in obj.iter().filter(|e| charset_vr(e.vr())) {
            let t = e.header().tag;
            let key = (u32::from(t.group()) << 16) | u32::from(t.element());
            if let Some(bytes) = raw.values.get(&key) {
                let text = if e.vr() == VR::PN {
                    charset.decode_pn(bytes)
                } else {
                    charset.decode(bytes)
                };
                redecoded.insert(t, text);
            }
        }
    }
    let ctx = Ctx {
        iso2022,
        redecoded: &redecoded,
    };
    let mut out = dataset(&obj, &ctx, instance_url, "", 0);
    if summary.has_pixel_data {
        let vr = match summary.pixel_data {
            Some(PixelLocation::Encapsulated { .. }) => "OB",
            _ if int_of(&obj, Tag(0x0028, 0x0100)).unwrap_or(16) > 8 => "OW",
            _ => "OB",
        };
        out.insert(
            "7FE00010".into(),
            json!({ "vr": vr, "BulkDataURI": format!("{instance_url}/bulkdata/7FE00010") }),
        );
    }
    Ok(out)
}

/// A read error is the storage's (retry later), anything else the data's.
fn walk_error(e: walk::WalkError) -> JsonError {
    match e {
        walk::WalkError::Io(e) => JsonError::Io(e),
        e => JsonError::Corrupt(e.to_string()),
    }
}

/// The DICOM JSON of an instance from its index row alone (UIDs, SOP
/// class, numbers), for an instance whose dataset cannot be parsed.
pub fn from_index(r: &crate::archive::index::InstanceRow) -> Map<String, Json> {
    let mut out = Map::new();
    let mut put = |tag: &str, vr: &str, v: Json| {
        out.insert(tag.into(), json!({ "vr": vr, "Value": [v] }));
    };
    put("00080016", "UI", Json::String(r.sop_class_uid.clone()));
    put("00080018", "UI", Json::String(r.sop_instance_uid.clone()));
    put("0020000D", "UI", Json::String(r.study_uid.clone()));
    put("0020000E", "UI", Json::String(r.series_uid.clone()));
    if let Some(n) = r.instance_number {
        put("00200013", "IS", Json::from(n));
    }
    if let Some(n) = r.rows {
        put("00280010", "US", Json::from(n));
    }
    if let Some(n) = r.columns {
        put("00280011", "US", Json::from(n));
    }
    out
}

struct Ctx<'a> {
    iso2022: bool,
    /// Top-level text values decoded from their raw bytes (ISO 2022 only).
    redecoded: &'a std::collections::HashMap<Tag, String>,
}

/// The VRs whose text the Specific Character Set applies to.
fn charset_vr(vr: VR) -> bool {
    matches!(vr, VR::PN | VR::LO | VR::SH | VR::ST | VR::LT | VR::UC | VR::UT)
}

fn int_of(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.element(tag).ok()?.to_int::<i64>().ok()
}

fn tag_key(t: Tag) -> String {
    format!("{:04X}{:04X}", t.group(), t.element())
}

/// One dataset (the instance or a sequence item) as a JSON object.
/// `path` is the bulk data path of the enclosing item (`00540016/0/`).
fn dataset(obj: &InMemDicomObject, ctx: &Ctx, url: &str, path: &str, depth: usize) -> Map<String, Json> {
    let mut out = Map::new();
    for e in obj.iter() {
        let tag = e.header().tag;
        // Group lengths are retired in datasets and mean nothing in JSON.
        if tag.element() == 0 || tag == PIXEL_DATA {
            continue;
        }
        let vr = e.vr();
        let mut attr = Map::new();
        attr.insert("vr".into(), Json::String(vr.to_string().into()));
        match e.value() {
            Value::Sequence(seq) => {
                if depth < MAX_DEPTH && !seq.items().is_empty() {
                    let items: Vec<Json> = seq
                        .items()
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let p = format!("{path}{}/{i}/", tag_key(tag));
                            Json::Object(dataset(item, ctx, url, &p, depth + 1))
                        })
                        .collect();
                    attr.insert("Value".into(), Json::Array(items));
                }
            }
            // Encapsulated pixel data elsewhere than (7FE0,0010): bulk data.
            Value::PixelSequence(_) => {
                attr.insert(
                    "BulkDataURI".into(),
                    Json::String(format!("{url}/bulkdata/{path}{}", tag_key(tag))),
                );
            }
            Value::Primitive(p) => {
                let text = (depth == 0).then(|| ctx.redecoded.get(&tag)).flatten();
                let bulk = || format!("{url}/bulkdata/{path}{}", tag_key(tag));
                match known_text_vr(vr, tag) {
                    // A standard text attribute that arrived as UN (explicit
                    // VR UN, an implicit VR private-ish sender): its value
                    // read as the dictionary's VR, as clients expect it.
                    Some(real) => {
                        attr.insert("vr".into(), Json::String(real.to_string().into()));
                        let as_text = PrimitiveValue::from(String::from_utf8_lossy(&p.to_bytes()).into_owned());
                        primitive(&mut attr, real, &as_text, None, ctx.iso2022, bulk);
                    }
                    None => primitive(&mut attr, vr, p, text, ctx.iso2022, bulk),
                }
            }
        }
        out.insert(tag_key(tag), Json::Object(attr));
    }
    out
}

/// The standard dictionary's text VR of `tag` when the element came as UN
/// (`None` for any other VR, unknown tags, binary and multi-VR entries).
fn known_text_vr(vr: VR, tag: Tag) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    if vr != VR::UN {
        return None;
    }
    let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(tag)?;
    match entry.vr() {
        VirtualVr::Exact(
            v @ (VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UC
            | VR::UI
            | VR::UR
            | VR::UT),
        ) => Some(v),
        _ => None,
    }
}

/// Strings of a multi-valued text value, padding trimmed; `None` for an
/// empty one (JSON null, PS3.18 F.2.5).
fn strings(text: &str, single: bool) -> Vec<Option<String>> {
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    let vals: Vec<String> = if single {
        vec![trim(text)]
    } else {
        text.split('\\').map(|v| trim(v).trim_start().to_string()).collect()
    };
    vals.into_iter().map(|v| (!v.is_empty()).then_some(v)).collect()
}

fn number(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn primitive(
    attr: &mut Map<String, Json>,
    vr: VR,
    p: &PrimitiveValue,
    redecoded: Option<&String>,
    iso2022: bool,
    bulk_uri: impl FnOnce() -> String,
) {
    if matches!(p, PrimitiveValue::Empty) {
        return;
    }
    let text = || -> String {
        match redecoded {
            Some(t) => t.clone(),
            None if iso2022 && charset_vr(vr) => strip_escapes(&p.to_str()),
            None => p.to_str().into_owned(),
        }
    };
    let values: Vec<Json> = match vr {
        VR::PN => strings(&text(), false)
            .into_iter()
            .map(|v| match v {
                None => Json::Null,
                Some(v) => person_name(&v),
            })
            .collect(),
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DT | VR::LO | VR::SH | VR::TM | VR::UC | VR::UI => {
            strings(&text(), false)
                .into_iter()
                .map(|v| v.map_or(Json::Null, Json::String))
                .collect()
        }
        VR::LT | VR::ST | VR::UT | VR::UR => strings(&text(), true)
            .into_iter()
            .map(|v| v.map_or(Json::Null, Json::String))
            .collect(),
        // Decimal and integer strings are JSON numbers; one that does not
        // parse stays text rather than being lost.
        VR::DS => strings(&p.to_str(), false)
            .into_iter()
            .map(|v| match v {
                None => Json::Null,
                Some(t) => t.trim().parse::<f64>().map_or(Json::String(t), number),
            })
            .collect(),
        VR::IS => strings(&p.to_str(), false)
            .into_iter()
            .map(|v| match v {
                None => Json::Null,
                Some(t) => t.trim().parse::<i64>().map_or(Json::String(t), Json::from),
            })
            .collect(),
        VR::SS | VR::US | VR::SL | VR::UL | VR::SV => match p.to_multi_int::<i64>() {
            Ok(v) => v.into_iter().map(Json::from).collect(),
            Err(_) => Vec::new(),
        },
        VR::UV => match p.to_multi_int::<u64>() {
            Ok(v) => v.into_iter().map(Json::from).collect(),
            Err(_) => Vec::new(),
        },
        VR::FL | VR::FD => match p.to_multi_float64() {
            Ok(v) => v.into_iter().map(number).collect(),
            Err(_) => Vec::new(),
        },
        VR::AT => match p {
            PrimitiveValue::Tags(t) => t.iter().map(|t| Json::String(tag_key(*t))).collect(),
            _ => Vec::new(),
        },
        // OB, OD, OF, OL, OV, OW, UN (and anything new): binary.
        _ => {
            let bytes = p.to_bytes();
            if bytes.len() > INLINE_MAX {
                attr.insert("BulkDataURI".into(), Json::String(bulk_uri()));
            } else {
                attr.insert("InlineBinary".into(), Json::String(base64(&bytes)));
            }
            return;
        }
    };
    if !values.is_empty() && !values.iter().all(Json::is_null) {
        attr.insert("Value".into(), Json::Array(values));
    }
}

/// `s` without ISO 2022 escape sequences (ESC, intermediates 0x20-0x2F,
/// one final byte 0x30-0x7E), as `dicom::pn::clean` removes them from
/// names, but keeping line breaks (LT, ST, UT are multi-line).
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            while chars.next_if(|c| ('\u{20}'..='\u{2F}').contains(c)).is_some() {}
            chars.next_if(|c| ('\u{30}'..='\u{7E}').contains(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), as InlineBinary wants.
/// A Person Name value as DICOM JSON (PS3.18 F.2.2): its non-empty
/// component groups by name. Metadata and QIDO-RS both write names so.
pub fn person_name(v: &str) -> Json {
    let mut groups = Map::new();
    for (name, g) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(v.split('=')) {
        let g = g.trim_end();
        if !g.is_empty() {
            groups.insert((*name).into(), Json::String(g.into()));
        }
    }
    Json::Object(groups)
}

pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_text_attributes_sent_as_un_get_their_vr() {
        assert_eq!(known_text_vr(VR::UN, Tag(0x0020, 0x0013)), Some(VR::IS));
        assert_eq!(known_text_vr(VR::UN, Tag(0x0010, 0x0010)), Some(VR::PN));
        assert_eq!(known_text_vr(VR::UN, Tag(0x7FE0, 0x0010)), None);
        assert_eq!(known_text_vr(VR::UN, Tag(0x0009, 0x1001)), None);
        assert_eq!(known_text_vr(VR::LO, Tag(0x0010, 0x0020)), None);
    }

    #[test]
    fn escape_sequences_go_line_breaks_stay() {
        assert_eq!(strip_escapes("CT \u{1b}$)A腹部\r\nline 2"), "CT 腹部\r\nline 2");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn text_values_split_trim_and_null() {
        assert_eq!(
            strings("ORIGINAL\\PRIMARY\\\\AXIAL ", false),
            vec![
                Some("ORIGINAL".into()),
                Some("PRIMARY".into()),
                None,
                Some("AXIAL".into())
            ]
        );
        assert_eq!(strings("a\\b ", true), vec![Some("a\\b".into())]);
        let mut attr = Map::new();
        primitive(
            &mut attr,
            VR::PN,
            &PrimitiveValue::from("Wang^Xiaodong=王^小东=wang^xiaodong"),
            None,
            false,
            String::new,
        );
        assert_eq!(
            Json::Object(attr),
            json!({ "Value": [{ "Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东", "Phonetic": "wang^xiaodong" }] })
        );
        let mut attr = Map::new();
        primitive(
            &mut attr,
            VR::DS,
            &PrimitiveValue::from("1.5\\-2 "),
            None,
            false,
            String::new,
        );
        assert_eq!(Json::Object(attr), json!({ "Value": [1.5, -2.0] }));
        let mut attr = Map::new();
        primitive(
            &mut attr,
            VR::OB,
            &PrimitiveValue::U8(vec![0u8; INLINE_MAX + 1].into()),
            None,
            false,
            || "/bulk".into(),
        );
        assert_eq!(Json::Object(attr), json!({ "BulkDataURI": "/bulk" }));
    }
}
