//! The relay link's messages and their framing, over plain byte buffers so
//! they are tested without sockets (the QUIC adapters only move bytes).
//!
//! Every exchange is one bidirectional QUIC stream: the edge writes a
//! request frame (and the body it announces), finishes its side, and reads
//! one response frame (and its body). One stream per request keeps a lost
//! packet from stalling unrelated transfers (no head-of-line blocking
//! across bundles) and makes every request independently retryable.
//!
//! Frame: 1 byte encoding (0 = JSON, 1 = zstd-compressed JSON), 4 bytes
//! big-endian length, the header. Bodies follow raw, their length in the
//! header, so a receiver knows every bound before it allocates.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::index::NewInstance;

/// ALPN of the relay protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"medrelay-relay/1";

/// Largest header accepted (a manifest of ~10 000 instances fits).
pub const MAX_HEADER: usize = 16 << 20;

/// Headers above this are zstd-compressed (manifests repeat study fields).
const COMPRESS_HEADER_OVER: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame header of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame encoding {0}")]
    Encoding(u8),
    #[error("message of more than {0} JSON values")]
    TooManyValues(usize),
    #[error("truncated frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("decompressing: {0}")]
    Zstd(std::io::Error),
    #[error("bundle body: {0}")]
    Body(String),
    /// A field outside what the hub accepts (see [`Request::check`]).
    #[error("{0}")]
    Invalid(String),
}

/// Everything the hub needs to index one instance without parsing it, plus
/// the archive's content hash (which names the file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestInstance {
    /// The edge's index record; the hub replaces the clinic (its own record
    /// of the edge's clinic), the stability wait and the receive time.
    #[serde(flatten)]
    pub meta: NewInstance,
    /// The archive's content hash (SHA-256 over transfer syntax + dataset).
    pub sha256: String,
    /// Bytes of the stored file.
    pub file_size: u64,
    pub cine_frames: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub study_uid: String,
    /// "stat", "urgent" or "routine" (the edge's worklist priority).
    pub priority: String,
    pub clinical_question: Option<String>,
    /// In reading order (series, instance number).
    pub instances: Vec<ManifestInstance>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreviewItem {
    pub sop_uid: String,
    /// "thumb", "preview", "mid" or "cine".
    pub kind: String,
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub sop_uid: String,
    /// Content hash (as in the manifest).
    pub sha256: String,
    /// SHA-256 of the whole file, checked on arrival.
    pub file_sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WayBackReport {
    /// The hub's delivery id, acknowledged once stored at the edge.
    pub delivery_id: i64,
    pub study_uid: String,
    pub version: i64,
    pub sop_instance_uid: String,
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WayBackNotification {
    pub id: i64,
    pub kind: String,
    pub study_uid: Option<String>,
    pub text: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Announce (or re-announce after a restart) a study; the answer says
    /// what the hub already holds, which is what makes resuming cheap.
    Begin { manifest: Manifest },
    /// Rendered previews; the body is the items' bytes back to back.
    Previews { study_uid: String, items: Vec<PreviewItem> },
    /// Whole instance files back to back, zstd-compressed when
    /// `compressed`; `body_len` is what travels. With `shuffled`, each file
    /// went through [`shuffle16`] before compression.
    Bundle {
        study_uid: String,
        part_id: String,
        compressed: bool,
        /// Absent from older edges: false.
        #[serde(default)]
        shuffled: bool,
        body_len: u64,
        members: Vec<Member>,
    },
    /// Everything is sent: commit the study atomically.
    Commit { study_uid: String },
    /// The way back: reports and notifications newer than the cursors.
    Poll { notif_after: i64, wait_ms: u64 },
    /// Reports stored durably at the edge.
    Ack { delivery_ids: Vec<i64> },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Response {
    Begun {
        /// SOP UIDs whose bytes the hub holds (staged or committed).
        have_instances: Vec<String>,
        /// SOP UIDs whose previews are staged.
        have_previews: Vec<String>,
    },
    Stored {
        count: usize,
    },
    Committed {
        instances: usize,
        duplicates: usize,
    },
    /// Commit refused: these instances never arrived (or were lost).
    Missing {
        sop_uids: Vec<String>,
    },
    /// The body holds the reports' SR files back to back.
    Inbox {
        reports: Vec<WayBackReport>,
        notifications: Vec<WayBackNotification>,
    },
    Acked,
    Error {
        message: String,
        /// False when sending the same request again cannot help.
        retry: bool,
    },
}

/// Instances in one manifest. A 16 MiB header holds about 24 000 (each is
/// ~700 bytes of JSON); the largest studies seen (multi-phase CT, long
/// cine) stay well below.
pub const MAX_MANIFEST_INSTANCES: usize = 50_000;
/// Preview items or bundle members in one request.
pub const MAX_PARTS: usize = 10_000;
/// Delivery ids acknowledged in one request (the hub sends at most 16
/// reports per poll).
pub const MAX_ACK_IDS: usize = 1_000;
/// One text field of a manifest (patient, study and series attributes, the
/// AE title, the clinical question). The edge's SCP keeps at most 4096 raw
/// bytes of a value (`dicom::walk`) and decoding a character set at most
/// doubles it in UTF-8; the API caps a clinical question at 2000
/// characters. Anything longer did not come from a working edge.
pub const MAX_TEXT_BYTES: usize = 8192;
const MAX_PART_ID: usize = 128;

/// A value for an error message: short, printable (never a whole field).
fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(40).collect::<String>().escape_debug().to_string();
    if v.chars().count() > 40 {
        s.push('…');
    }
    format!("\"{s}\" ({} bytes)", v.len())
}

fn check_uid(field: &str, v: &str) -> Result<(), WireError> {
    if crate::dicom::meta::is_valid_uid(v) {
        Ok(())
    } else {
        Err(WireError::Invalid(format!(
            "{field} {} is not a UID (1-64 characters, digits and dots, no empty component)",
            shown(v)
        )))
    }
}

fn check_sha256(field: &str, v: &str) -> Result<(), WireError> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(WireError::Invalid(format!(
            "{field} {} is not a SHA-256 in hex",
            shown(v)
        )))
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), WireError> {
    if v.len() <= max {
        Ok(())
    } else {
        Err(WireError::Invalid(format!(
            "{field} of {} bytes exceeds the limit of {max}",
            v.len()
        )))
    }
}

fn check_count(what: &str, n: usize, max: usize) -> Result<(), WireError> {
    if n <= max {
        Ok(())
    } else {
        Err(WireError::Invalid(format!("{n} {what} exceed the limit of {max}")))
    }
}

impl Manifest {
    /// Every field the hub files, stages or shows: UIDs against the grammar
    /// (they name staging folders and files, and index rows), hashes as
    /// hex (they name archive files), text bounded, one entry per instance.
    pub fn check(&self) -> Result<(), WireError> {
        check_uid("study_uid", &self.study_uid)?;
        if !matches!(self.priority.as_str(), "stat" | "urgent" | "routine") {
            return Err(WireError::Invalid(format!(
                "priority {} is not stat, urgent or routine",
                shown(&self.priority)
            )));
        }
        if let Some(q) = &self.clinical_question {
            check_text("clinical_question", q, MAX_TEXT_BYTES)?;
        }
        check_count("instances", self.instances.len(), MAX_MANIFEST_INSTANCES)?;
        let mut seen = std::collections::HashSet::with_capacity(self.instances.len());
        for i in &self.instances {
            let m = &i.meta;
            check_uid("sop_instance_uid", &m.sop_instance_uid)?;
            if m.study_uid != self.study_uid {
                return Err(WireError::Invalid(format!(
                    "instance {} belongs to study {}, not the manifest's",
                    m.sop_instance_uid,
                    shown(&m.study_uid)
                )));
            }
            check_uid("series_uid", &m.series_uid)?;
            check_uid("sop_class_uid", &m.sop_class_uid)?;
            check_uid("transfer_syntax", &m.transfer_syntax)?;
            check_sha256("sha256", &i.sha256)?;
            for (field, v) in [
                ("patient_id", &m.patient_id),
                ("patient_name", &m.patient_name),
                ("birth_date", &m.birth_date),
                ("sex", &m.sex),
                ("study_date", &m.study_date),
                ("study_time", &m.study_time),
                ("accession_number", &m.accession_number),
                ("study_description", &m.study_description),
                ("referring_physician", &m.referring_physician),
                ("modality", &m.modality),
                ("series_description", &m.series_description),
                ("body_part", &m.body_part),
                ("calling_ae", &m.calling_ae),
                ("clinic_id", &m.clinic_id),
            ] {
                check_text(field, v, MAX_TEXT_BYTES)?;
            }
            if !seen.insert(m.sop_instance_uid.as_str()) {
                return Err(WireError::Invalid(format!(
                    "instance {} appears twice",
                    m.sop_instance_uid
                )));
            }
        }
        Ok(())
    }
}

impl Request {
    /// Checks what an edge sent before the hub uses any of it in a path, a
    /// query or a page (see [`Manifest::check`]); the hub refuses the
    /// request whole, naming the first offending field.
    pub fn check(&self) -> Result<(), WireError> {
        match self {
            Request::Begin { manifest } => manifest.check(),
            Request::Previews { study_uid, items } => {
                check_uid("study_uid", study_uid)?;
                check_count("preview items", items.len(), MAX_PARTS)?;
                for i in items {
                    check_uid("sop_uid", &i.sop_uid)?;
                    if !matches!(i.kind.as_str(), "thumb" | "preview" | "mid" | "cine") {
                        return Err(WireError::Invalid(format!("preview kind {}", shown(&i.kind))));
                    }
                }
                Ok(())
            }
            Request::Bundle {
                study_uid,
                part_id,
                members,
                ..
            } => {
                check_uid("study_uid", study_uid)?;
                check_text("part_id", part_id, MAX_PART_ID)?;
                check_count("bundle members", members.len(), MAX_PARTS)?;
                for m in members {
                    check_uid("sop_uid", &m.sop_uid)?;
                    check_sha256("sha256", &m.sha256)?;
                    check_sha256("file_sha256", &m.file_sha256)?;
                }
                Ok(())
            }
            Request::Commit { study_uid } => check_uid("study_uid", study_uid),
            Request::Poll { .. } => Ok(()),
            Request::Ack { delivery_ids } => check_count("delivery ids", delivery_ids.len(), MAX_ACK_IDS),
        }
    }
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let json = serde_json::to_vec(msg).unwrap_or_default();
    let (enc, payload) = if json.len() > COMPRESS_HEADER_OVER {
        match zstd::bulk::compress(&json, 3) {
            Ok(z) => (1u8, z),
            Err(_) => (0u8, json),
        }
    } else {
        (0u8, json)
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(enc);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Frame prefix: (encoding, payload length), checked against the limit.
pub fn prefix(b: &[u8; 5]) -> Result<(u8, usize), WireError> {
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    if b[0] > 1 {
        return Err(WireError::Encoding(b[0]));
    }
    if len > MAX_HEADER {
        return Err(WireError::TooLarge(len));
    }
    Ok((b[0], len))
}

/// Most keys and values one message may hold. Serde reads an internally
/// tagged message (and a flattened struct) into a buffer of generic values
/// before it picks the variant, ~50 bytes per value: without this limit a
/// 16 MiB frame of `0,0,0,…` (2 KiB zstd-compressed) cost the hub ~800 MB.
/// A 10 000-instance manifest has ~600 000.
pub const MAX_JSON_TOKENS: usize = 1 << 20;

/// Decodes a frame's payload. Memory: at most [`decode_bound`] of the
/// payload's length, whatever the bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(enc: u8, payload: &[u8]) -> Result<T, WireError> {
    let json_of = |json: &[u8]| -> Result<T, WireError> {
        if json_tokens(json) > MAX_JSON_TOKENS {
            return Err(WireError::TooManyValues(MAX_JSON_TOKENS));
        }
        Ok(serde_json::from_slice(json)?)
    };
    match enc {
        0 => json_of(payload),
        1 => {
            let json = zstd::bulk::decompress(payload, MAX_HEADER).map_err(WireError::Zstd)?;
            json_of(&json)
        }
        e => Err(WireError::Encoding(e)),
    }
}

/// An upper bound on the keys and values in a JSON text: every one but the
/// first follows a `[`, `{`, `,` or `:` outside a string.
fn json_tokens(json: &[u8]) -> usize {
    let (mut n, mut in_str, mut esc) = (1usize, false, false);
    for &b in json {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'[' | b'{' | b',' | b':' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The most a [`decode`] of a payload of `n` bytes with encoding `enc`
/// allocates: the inflate buffer and zstd's context (compressed frames), the
/// JSON's generic values (~96 bytes per token with their growth), copies of
/// its strings, the decoded message. Measured by the `relay_frame` fuzz
/// target; a 10 000-instance manifest takes ~40 MB of it.
pub fn decode_bound(enc: u8, n: usize) -> usize {
    let (inflate, json) = if enc == 1 {
        (MAX_HEADER + (256 << 10), MAX_HEADER)
    } else {
        (0, n)
    };
    inflate + 4 * json + MAX_JSON_TOKENS.min(json + 1) * 96 + 1024
}

/// The plain size the members announce, refused when it overflows (the sizes
/// come from the edge's manifest).
pub fn members_total(members: &[Member]) -> Result<u64, WireError> {
    members
        .iter()
        .try_fold(0u64, |t, m| t.checked_add(m.size))
        .ok_or_else(|| WireError::Body("member sizes overflow".into()))
}

/// Decode a whole frame held in memory (tests, small messages).
pub fn decode_frame<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<T, WireError> {
    let head: &[u8; 5] = buf
        .get(..5)
        .and_then(|b| b.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let (enc, len) = prefix(head)?;
    let payload = buf.get(5..5 + len).ok_or(WireError::Truncated)?;
    decode(enc, payload)
}

/// Splits a received bundle body into its member files, checking sizes
/// exactly (a body with bytes left over or missing is refused whole) and
/// each file's SHA-256.
pub fn split_bundle<'a>(members: &[Member], plain: &'a [u8]) -> Result<Vec<&'a [u8]>, WireError> {
    let total = members_total(members)?;
    if total != plain.len() as u64 {
        return Err(WireError::Body(format!(
            "{} bytes for members totalling {total}",
            plain.len()
        )));
    }
    let mut out = Vec::with_capacity(members.len());
    let mut at = 0usize;
    for m in members {
        let end = at + m.size as usize;
        let file = &plain[at..end];
        if hex::encode(Sha256::digest(file)) != m.file_sha256 {
            return Err(WireError::Body(format!("SHA-256 mismatch for instance {}", m.sop_uid)));
        }
        out.push(file);
        at = end;
    }
    Ok(out)
}

/// Decompresses a bundle body, refusing to grow past the announced sizes
/// (a decompression bomb stops at the bound), and undoes the shuffle.
/// Memory: the announced plain size (which the hub has bounded before
/// reading the body) + the body + zstd's context (checked by the `bundle`
/// fuzz target).
pub fn unpack_body(members: &[Member], compressed: bool, shuffled: bool, body: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let mut plain = if compressed {
        let total = usize::try_from(members_total(members)?).map_err(|_| WireError::Body("bundle too large".into()))?;
        zstd::bulk::decompress(&body, total).map_err(WireError::Zstd)?
    } else {
        body
    };
    if shuffled {
        let mut at = 0usize;
        for m in members {
            let end = at
                .checked_add(m.size as usize)
                .filter(|&e| e <= plain.len())
                .ok_or_else(|| WireError::Body("bundle shorter than its members".into()))?;
            let restored = unshuffle16(&plain[at..end]);
            plain[at..end].copy_from_slice(&restored);
            at = end;
        }
    }
    Ok(plain)
}

/// Byte-plane shuffle for 16-bit data: all even bytes, then all odd bytes
/// (an odd last byte stays last). Uncompressed CT and MR pixels are
/// little-endian 16-bit samples whose high bytes vary slowly; separated, zstd
/// finds those runs. On the WAN bench's CT series this takes zstd level 3
/// from 2.0x to 2.5x for a few ms per instance. Applied to the whole file:
/// the header is a few hundred bytes and the shuffle is exact for any input.
pub fn shuffle16(data: &[u8]) -> Vec<u8> {
    let n = data.len() / 2;
    let mut out = Vec::with_capacity(data.len());
    out.extend(data.chunks_exact(2).map(|c| c[0]));
    out.extend(data.chunks_exact(2).map(|c| c[1]));
    if data.len() % 2 == 1 {
        out.push(data[2 * n]);
    }
    out
}

/// The inverse of [`shuffle16`].
pub fn unshuffle16(data: &[u8]) -> Vec<u8> {
    let n = data.len() / 2;
    let (lo, rest) = data.split_at(n);
    let hi = &rest[..n];
    let mut out = Vec::with_capacity(data.len());
    for (l, h) in lo.iter().zip(hi) {
        out.push(*l);
        out.push(*h);
    }
    if data.len() % 2 == 1 {
        out.push(data[2 * n]);
    }
    out
}

/// The archive's content hash of a Part 10 file: SHA-256 over the transfer
/// syntax UID, a zero byte and the dataset after the file meta group (see
/// `archive::files::Archive::begin`). The hub recomputes it so a file can
/// never be filed under another instance's name.
pub fn content_sha256(file: &[u8], transfer_syntax: &str) -> Result<String, WireError> {
    let start = dataset_offset(file).ok_or_else(|| WireError::Body("not a DICOM Part 10 file".into()))?;
    let mut h = Sha256::new();
    h.update(transfer_syntax.as_bytes());
    h.update([0u8]);
    h.update(&file[start..]);
    Ok(hex::encode(h.finalize()))
}

/// Where the dataset starts: after the 128-byte preamble, "DICM" and the
/// group 0002 elements (always explicit VR little endian).
pub fn dataset_offset(file: &[u8]) -> Option<usize> {
    if file.get(128..132)? != b"DICM" {
        return None;
    }
    let mut at = 132usize;
    loop {
        let tag = file.get(at..at + 4)?;
        let group = u16::from_le_bytes([tag[0], tag[1]]);
        if group != 0x0002 {
            return Some(at);
        }
        let vr = file.get(at + 4..at + 6)?;
        let long = matches!(
            vr,
            b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"UC" | b"UR" | b"OD" | b"OL" | b"OV"
        );
        let (len, head) = if long {
            let l = file.get(at + 8..at + 12)?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            let l = file.get(at + 6..at + 8)?;
            (u16::from_le_bytes([l[0], l[1]]) as usize, 8)
        };
        at = at.checked_add(head)?.checked_add(len)?;
        if at > file.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_small_and_compressed() {
        let small = Request::Commit {
            study_uid: "1.2.3".into(),
        };
        let buf = encode(&small);
        assert_eq!(buf[0], 0);
        assert_eq!(decode_frame::<Request>(&buf).expect("decode"), small);

        let inst = ManifestInstance {
            meta: NewInstance {
                sop_instance_uid: "1.2.3.4".into(),
                patient_name: "TEST^PATIENT".into(),
                ..Default::default()
            },
            sha256: "ab".repeat(32),
            file_size: 525_000,
            cine_frames: None,
        };
        let big = Request::Begin {
            manifest: Manifest {
                study_uid: "1.2.3".into(),
                priority: "routine".into(),
                clinical_question: None,
                instances: vec![inst; 300],
            },
        };
        let buf = encode(&big);
        assert_eq!(buf[0], 1, "a 300-instance manifest is compressed");
        assert!(buf.len() < serde_json::to_vec(&big).expect("json").len() / 5);
        assert_eq!(decode_frame::<Request>(&buf).expect("decode"), big);
    }

    fn manifest_of(study: &str, sop: &str) -> Manifest {
        Manifest {
            study_uid: study.into(),
            priority: "routine".into(),
            clinical_question: None,
            instances: vec![ManifestInstance {
                meta: NewInstance {
                    sop_instance_uid: sop.into(),
                    study_uid: study.into(),
                    series_uid: format!("{study}.1"),
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                    transfer_syntax: "1.2.840.10008.1.2.1".into(),
                    patient_name: "TEST^PATIENT".into(),
                    ..Default::default()
                },
                sha256: "ab".repeat(32),
                file_size: 10,
                cine_frames: None,
            }],
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = manifest_of("1.2.3", "1.2.3.4");
        assert!(ok.check().is_ok());
        // Leading zeros are UIDs too (Varian).
        assert!(
            manifest_of("1.2.246.352.91.0000217.1", "1.2.246.352.91.0000217.1.001")
                .check()
                .is_ok()
        );
        let refused = |m: Manifest, what: &str| {
            let e = Request::Begin { manifest: m }.check().expect_err(what).to_string();
            assert!(e.contains(what), "{what}: {e}");
        };
        for bad in ["..", "../x", "1.2/..", "", "1..2", ".", &"1".repeat(65)] {
            let mut m = manifest_of("1.2.3", "1.2.3.4");
            m.study_uid = bad.into();
            for i in &mut m.instances {
                i.meta.study_uid = bad.into();
            }
            refused(m, "study_uid");
        }
        let mut m = ok.clone();
        m.instances[0].meta.series_uid = "1.2/../../x".into();
        refused(m, "series_uid");
        let mut m = ok.clone();
        m.instances[0].meta.sop_instance_uid = "..".into();
        refused(m, "sop_instance_uid");
        let mut m = ok.clone();
        m.instances[0].sha256 = "../../../../etc/passwd".into();
        refused(m, "sha256");
        let mut m = ok.clone();
        m.instances[0].meta.study_uid = "1.2.4".into();
        refused(m, "not the manifest's");
        let mut m = ok.clone();
        m.instances[0].meta.patient_name = "A".repeat(MAX_TEXT_BYTES + 1);
        refused(m, "patient_name");
        let mut m = ok.clone();
        m.instances[0].meta.patient_id = "9".repeat(1 << 20);
        refused(m, "patient_id");
        let mut m = ok.clone();
        m.clinical_question = Some("?".repeat(MAX_TEXT_BYTES + 1));
        refused(m, "clinical_question");
        let mut m = ok.clone();
        m.priority = "now!".into();
        refused(m, "priority");
        let mut m = ok.clone();
        m.instances.push(m.instances[0].clone());
        refused(m, "twice");
        // Error messages show a bounded excerpt, never the whole field.
        let mut m = ok.clone();
        m.study_uid = "7".repeat(100_000);
        let e = m.check().expect_err("long").to_string();
        assert!(e.len() < 300, "{e}");

        let previews = |sop: &str, kind: &str| Request::Previews {
            study_uid: "1.2.3".into(),
            items: vec![PreviewItem {
                sop_uid: sop.into(),
                kind: kind.into(),
                len: 1,
            }],
        };
        assert!(previews("1.2.3.4", "thumb").check().is_ok());
        assert!(previews("..", "thumb").check().is_err());
        assert!(previews("1.2.3.4", "../x").check().is_err());
        let bundle = |sop: &str, sha: &str| Request::Bundle {
            study_uid: "1.2.3".into(),
            part_id: "p".into(),
            compressed: false,
            shuffled: false,
            body_len: 1,
            members: vec![Member {
                sop_uid: sop.into(),
                sha256: sha.into(),
                file_sha256: "cd".repeat(32),
                size: 1,
            }],
        };
        assert!(bundle("1.2.3.4", &"ab".repeat(32)).check().is_ok());
        assert!(bundle("..", &"ab".repeat(32)).check().is_err());
        assert!(bundle("1.2.3.4", "x").check().is_err());
        assert!(Request::Commit { study_uid: "..".into() }.check().is_err());
        assert!(
            Request::Ack {
                delivery_ids: vec![1; MAX_ACK_IDS + 1]
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        assert!(matches!(prefix(&[7, 0, 0, 0, 1]), Err(WireError::Encoding(7))));
        assert!(matches!(prefix(&[0, 0xff, 0, 0, 0]), Err(WireError::TooLarge(_))));
        assert!(matches!(
            decode_frame::<Request>(&[0, 0, 0, 0, 9, b'{']),
            Err(WireError::Truncated)
        ));
        let mut junk = vec![0u8, 0, 0, 0, 3];
        junk.extend_from_slice(b"{x}");
        assert!(matches!(decode_frame::<Request>(&junk), Err(WireError::Json(_))));
        let mut unknown = vec![0u8, 0, 0, 0, 14];
        unknown.extend_from_slice(br#"{"op":"nuke"}"#);
        unknown.truncate(5 + 13);
        unknown[4] = 13;
        assert!(decode_frame::<Request>(&unknown).is_err());
    }

    fn member(sop: &str, bytes: &[u8]) -> Member {
        Member {
            sop_uid: sop.into(),
            sha256: String::new(),
            file_sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn bundles_split_exactly_and_verify_each_file() {
        let a = vec![1u8; 1000];
        let b = vec![2u8; 3000];
        let members = vec![member("1.1", &a), member("1.2", &b)];
        let mut plain = a.clone();
        plain.extend_from_slice(&b);
        let packed = zstd::bulk::compress(&plain, 3).expect("zstd");
        let unpacked = unpack_body(&members, true, false, packed).expect("unpack");
        let files = split_bundle(&members, &unpacked).expect("split");
        assert_eq!(files, vec![&a[..], &b[..]]);

        // One flipped byte: refused, naming the instance.
        let mut bad = plain.clone();
        bad[1500] ^= 1;
        let err = split_bundle(&members, &bad).expect_err("corrupt");
        assert!(err.to_string().contains("1.2"), "{err}");
        // A byte too many or too few: refused whole.
        assert!(split_bundle(&members, &plain[..plain.len() - 1]).is_err());
        // A body that inflates past the announced sizes stops at the bound.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).expect("zstd");
        assert!(unpack_body(&members, true, false, bomb).is_err());
    }

    #[test]
    fn shuffle_is_exact_for_any_length_and_helps_16_bit_data() {
        for len in [0usize, 1, 2, 3, 4, 5, 1001, 4096] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(unshuffle16(&shuffle16(&data)), data, "length {len}");
        }
        // A smooth 16-bit ramp with noise in the low byte.
        let mut px = Vec::new();
        let mut x: u32 = 1;
        for i in 0..65_536u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let v = (1000 + i / 64) as u16 ^ ((x >> 16) as u16 & 0x3f);
            px.extend_from_slice(&v.to_le_bytes());
        }
        let plain = zstd::bulk::compress(&px, 3).expect("zstd").len();
        let shuffled = zstd::bulk::compress(&shuffle16(&px), 3).expect("zstd").len();
        assert!(shuffled < plain, "shuffled {shuffled} bytes, plain {plain}");
    }

    #[test]
    fn shuffled_bundles_unpack_to_the_files() {
        let a = b"first file, odd length".to_vec();
        let b = b"second".to_vec();
        let members = [member("1.1", &a), member("1.2", &b)];
        let mut plain = shuffle16(&a);
        plain.extend(shuffle16(&b));
        let body = zstd::bulk::compress(&plain, 3).expect("zstd");
        let out = unpack_body(&members, true, true, body).expect("unpacks");
        let files = split_bundle(&members, &out).expect("splits");
        assert_eq!(files, vec![&a[..], &b[..]]);
        // Members claiming more than the body holds are refused, not sliced past the end.
        let mut big = members.clone();
        big[1].size = 1000;
        assert!(unpack_body(&big, false, true, plain.clone()).is_err());
    }

    #[test]
    fn content_hash_skips_the_file_meta_group() {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        // (0002,0000) UL 4 = 10 ; (0002,0001) OB len 2
        f.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0, 10, 0, 0, 0]);
        f.extend_from_slice(&[2, 0, 1, 0, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
        let meta_end = f.len();
        f.extend_from_slice(&[8, 0, 0x18, 0, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
        let mut h = Sha256::new();
        h.update(b"1.2.840.10008.1.2.1");
        h.update([0u8]);
        h.update(&f[meta_end..]);
        assert_eq!(
            content_sha256(&f, "1.2.840.10008.1.2.1").expect("hash"),
            hex::encode(h.finalize())
        );
        assert!(content_sha256(&f[..100], "x").is_err());
        let mut truncated_meta = f[..meta_end - 3].to_vec();
        truncated_meta.truncate(meta_end - 3);
        assert!(content_sha256(&truncated_meta, "x").is_err());
    }
}
