//! Fuzz targets for every parser that takes network bytes, shared by the
//! property-based short run (`tests/fuzz_parsers.rs`, part of `cargo test`)
//! and the coverage-guided long run (AFL++ through `benches/fuzz-afl`,
//! driven by `benches/fuzz.sh`).
//!
//! Each target takes arbitrary bytes, feeds them to the parser the way the
//! network code does, and panics when a property fails:
//! - the parser itself panics (a crash);
//! - it allocates more than the bound its doc comment states, measured as
//!   the peak of live heap bytes on this thread during the call (needs
//!   [`CountingAlloc`] as the binary's global allocator; without it nothing
//!   is measured);
//! - a value it accepted does not survive a round trip through the encoder
//!   the other side uses (where one exists).
//!
//! Test support, not production code: reached only by the test binary and
//! the AFL++ harness. The panics here are the findings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sha2::{Digest, Sha256};

use crate::dicom::assembly::{Assembler, AssemblyError, PdvKind, Step};
use crate::dicom::dimse::Command;
use crate::dicom::walk::{self, Encoding, PixelLocation};
use crate::dicom::{attrs, meta};
use crate::relay::wire::{self, Member};
use crate::sfu::{demux, engine, protocol};

// ------------------------------------------------------------- allocation

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static WORST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The system allocator, counting live bytes per thread so a target can
/// measure the peak of one parse call. Conservative on `realloc` (old and new
/// block counted together, as they are while the data is copied).
pub struct CountingAlloc;

fn on_alloc(size: usize, freed: usize) {
    let _ = LIVE.try_with(|l| {
        let grown = l.get() + size;
        let _ = PEAK.try_with(|p| p.set(p.get().max(grown)));
        l.set(grown.saturating_sub(freed));
    });
}

fn on_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping
// touches only const-initialised thread-locals (no allocation, no panic).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            on_alloc(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        on_free(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            on_alloc(new_size, layout.size());
        }
        p
    }
}

/// Runs `f` and returns its value with the peak of heap bytes it held live
/// on this thread above what was live before (0 without [`CountingAlloc`]).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    let outer = PEAK.with(|p| p.replace(start));
    let v = f();
    let peak = PEAK.with(|p| p.replace(outer.max(p.get())));
    (v, peak.saturating_sub(start))
}

/// Runs one parse call and asserts its peak allocation stays within `bound`.
fn bounded<T>(what: &str, bound: usize, f: impl FnOnce() -> T) -> T {
    let (v, peak) = measure(f);
    assert!(peak <= bound, "{what}: allocated {peak} bytes, bound {bound}");
    WORST.with(|w| {
        let (p, b) = w.get();
        // Keep the call that came closest to its bound (ratio, no floats).
        if (peak as u128) * (b.max(1) as u128) >= (p as u128) * (bound.max(1) as u128) {
            w.set((peak, bound));
        }
    });
    v
}

/// The peak and the bound of the call that came closest to its bound on
/// this thread since the last call; resets.
pub fn take_worst() -> (usize, usize) {
    WORST.with(|w| w.replace((0, 0)))
}

/// True when the running binary counts allocations (so bounds are checked).
pub fn counting() -> bool {
    measure(|| std::hint::black_box(vec![0u8; 4096])).1 >= 4096
}

// ---------------------------------------------------------------- targets

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("pdu", pdu),
    ("assembly", assembly),
    ("dimse", dimse),
    ("walk", walk_dataset),
    ("qr_identifier", qr_identifier),
    ("meta", part10_meta),
    ("signaling", signaling),
    ("datachannel", datachannel),
    ("relay_frame", relay_frame),
    ("bundle", bundle),
    ("stun", stun),
    ("api_json", api_json),
];

pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|(n, _)| *n).collect()
}

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The SCP's command set limit (`dicom::scp`), and the PDU length it
/// announces and enforces by default.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub fn scp_max_pdu() -> u32 {
    crate::config::DicomConfig::default().max_pdu
}

/// PDU reader (dicom-ul's, as the SCP calls it: strict, with our max PDU
/// length), then every P-DATA value through the SCP's PDV assembly. Several
/// PDUs may follow each other, as on an association.
///
/// Bound per PDU read: 20 × the bytes it reads from (at most one PDU of the
/// maximum length) + 64 KiB. dicom-ul keeps each PDV as
/// a 32-byte struct with its own buffer, so a P-DATA of 6-byte empty PDVs
/// costs ~16 × its length (measured: 15.9 MB for one 1 MiB PDU); with the
/// default max PDU of 1 MiB that is ~20 MiB per association reading a PDU.
pub const PDU_BOUND_FACTOR: usize = 20;
pub fn pdu(data: &[u8]) {
    let max = scp_max_pdu();
    let mut stream = data;
    let mut buf = bytes::BytesMut::new();
    let mut asm = Assembler::new(MAX_COMMAND_BYTES);
    for _ in 0..64 {
        let before = stream.len();
        let bound = PDU_BOUND_FACTOR * before.min(max as usize + 6) + (64 << 10);
        let read = bounded("pdu read", bound, || {
            futures::executor::block_on(dicom_ul::association::read_pdu_from_wire_async(
                &mut stream,
                &mut buf,
                max,
                true,
            ))
        });
        let Ok(pdu) = read else { return };
        // Round trip: what the SCU side writes for this PDU reads back the same.
        let mut out = Vec::new();
        if dicom_ul::pdu::write_pdu(&mut out, &pdu).is_ok() && out.len() <= max as usize + 6 {
            let again = dicom_ul::pdu::read_pdu(&out[..], max, true);
            match again {
                Ok(Some(p)) => assert_eq!(p, pdu, "PDU changed through write/read"),
                other => panic!("written PDU does not read back: {other:?}"),
            }
        }
        if let dicom_ul::pdu::Pdu::PData { data } = pdu {
            for pdv in data {
                let kind = match pdv.value_type {
                    dicom_ul::pdu::PDataValueType::Command => PdvKind::Command,
                    dicom_ul::pdu::PDataValueType::Data => PdvKind::Data,
                };
                let bound = 3 * MAX_COMMAND_BYTES + dimse_bound(MAX_COMMAND_BYTES);
                let step = bounded("pdv assembly", bound, || {
                    asm.feed(pdv.presentation_context_id, kind, pdv.is_last, &pdv.data)
                });
                if step.is_err() {
                    return; // the SCP aborts the association here
                }
            }
        }
    }
}

/// PDV assembly alone, with the fragmenting under the fuzzer's control.
/// Bytes: one byte picks the command limit (64 KiB or 512 B), then records
/// `[h, n, n bytes]`: h bits 0-1 the context (1, 3, 5, 7), bit 2 data,
/// bit 3 last; with bit 4 the n bytes are replaced by a real command (a
/// C-STORE-RQ, or with bit 5 a C-ECHO-RQ), so data phases are reached.
///
/// Bound over the whole association: 3 × the command limit (the buffer as it
/// grows) + the DIMSE decode bound of a full command set.
pub fn assembly(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let max = if first & 1 == 0 { MAX_COMMAND_BYTES } else { 512 };
    let mut asm = Assembler::new(max);
    let bound = 3 * max + dimse_bound(max);
    // The model: which context has a dataset coming.
    let mut data_on: Option<u8> = None;
    let mut command_on: Option<u8> = None;
    bounded("assembly", bound, || {
        while let [h, n, tail @ ..] = rest {
            let n = usize::from(*n).min(tail.len());
            let (mut bytes, next) = tail.split_at(n);
            rest = next;
            let pc = [1u8, 3, 5, 7][usize::from(h & 3)];
            let kind = if h & 4 != 0 { PdvKind::Data } else { PdvKind::Command };
            let last = h & 8 != 0;
            let real;
            if h & 16 != 0 {
                real = if h & 32 != 0 {
                    Command::c_echo_rq(7).encode()
                } else {
                    Command::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3").encode()
                };
                bytes = &real;
            }
            match asm.feed(pc, kind, last, bytes) {
                Ok(Step::Pending) => {
                    assert!(kind == PdvKind::Command && !last && data_on.is_none());
                    assert!(command_on.is_none_or(|c| c == pc));
                    command_on = Some(pc);
                }
                Ok(Step::Command { pc: got, cmd }) => {
                    assert!(kind == PdvKind::Command && last && got == pc && data_on.is_none());
                    assert!(cmd.command_field().is_ok());
                    command_on = None;
                    data_on = cmd.has_dataset().then_some(pc);
                }
                Ok(Step::Data { pc: got, last: l }) => {
                    assert!(kind == PdvKind::Data && got == pc && l == last && data_on == Some(pc));
                    if last {
                        data_on = None;
                    }
                }
                Err(e) => {
                    if let AssemblyError::UnexpectedData(p) = e {
                        assert!(data_on.is_none() && command_on.is_none() && p == pc);
                    }
                    return;
                }
            }
            assert_eq!(asm.in_message(), data_on.is_some() || command_on.is_some());
        }
    });
}

/// The DIMSE decode bound for a command set of `n` bytes; see
/// [`Command::decode`].
pub fn dimse_bound(n: usize) -> usize {
    8 * n + 1024
}

/// DIMSE command set decode; accepted commands re-encode to bytes that
/// decode to the same command, and the encoding is canonical.
pub fn dimse(data: &[u8]) {
    let Ok(cmd) = bounded("dimse decode", dimse_bound(data.len()), || Command::decode(data)) else {
        return;
    };
    let enc = cmd.encode();
    let back = Command::decode(&enc).expect("an encoded command decodes");
    assert_eq!(back, cmd, "command changed through encode/decode");
    assert_eq!(back.encode(), enc, "encoding is not canonical");
    // The response the SCP would send is itself a valid command.
    let rsp = Command::response_to(&cmd, 0xC000, Some("fuzz"));
    assert_eq!(Command::decode(&rsp.encode()).as_ref(), Ok(&rsp));
}

/// The first byte of a dataset input picks its transfer syntax: explicit
/// LE, implicit LE, explicit BE, deflated explicit LE (the rest is then raw
/// deflate).
fn encoding_and_rest(data: &[u8]) -> Option<(Encoding, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let ts = match first & 3 {
        0 => "1.2.840.10008.1.2.1",
        1 => "1.2.840.10008.1.2",
        2 => "1.2.840.10008.1.2.2",
        _ => "1.2.840.10008.1.2.1.99",
    };
    Some((Encoding::for_transfer_syntax(ts), rest))
}

/// The dataset walker as the SCP runs it (the SCP's wanted tags). The first
/// byte picks the transfer syntax: explicit LE, implicit LE, explicit BE,
/// deflated explicit LE (the rest is then raw deflate).
pub fn walk_dataset(data: &[u8]) {
    let Some((enc, rest)) = encoding_and_rest(data) else {
        return;
    };
    let bound = walk::memory_bound(attrs::WANTED.len());
    let Ok(s) = bounded("walk", bound, || walk::walk(rest, enc, attrs::WANTED)) else {
        return;
    };
    for (k, v) in &s.values {
        assert!(attrs::WANTED.contains(k) && v.len() <= 4096);
    }
    assert!(s.top_level_elements > 0);
    if !enc.deflated {
        // Where the walker says the pixels are, they are: inside the dataset.
        let len = rest.len() as u64;
        match &s.pixel_data {
            Some(PixelLocation::Native { offset, length }) => assert!(offset + length <= len),
            Some(PixelLocation::Encapsulated { fragments }) => {
                for (at, n) in fragments {
                    assert!(at + u64::from(*n) <= len);
                }
            }
            None => {}
        }
    }
}

/// A Q/R request identifier as the SCP reads it (the first byte picks the
/// transfer syntax, as for `walk`), then as a query of either model: a
/// parse error or a query, never a panic; a query's matching and its
/// response for a record of arbitrary values work, and the response reads
/// back. Memory within a few times the input (the identifier is bounded).
pub fn qr_identifier(data: &[u8]) {
    use crate::dicom::qr::{Model, find, identifier};
    let Some((enc, rest)) = encoding_and_rest(data) else {
        return;
    };
    let bound = 16 * rest.len() + (1 << 20) + (64 << 10);
    let Ok(id) = bounded("qr identifier", bound, || identifier::parse(rest, enc)) else {
        return;
    };
    for model in [Model::PatientRoot, Model::StudyRoot] {
        let Ok(q) = find::parse(model, &id) else { continue };
        let row: find::Row = crate::dicom::qr::keys::KEYS
            .iter()
            .map(|k| {
                (
                    k.tag,
                    String::from_utf8_lossy(rest.get(..rest.len().min(12)).unwrap_or(&[])).into_owned(),
                )
            })
            .collect();
        let _ = q.matches(&row);
        let out = identifier::encode(q.response(&row, "MEDRELAY"), enc);
        let back = identifier::parse(&out, enc).expect("a response identifier reads back");
        assert!(back.elements.len() <= id.elements.len() + 1);
    }
}

/// Part 10 file meta: `file_meta` (what the SCP and the edge write) read back
/// by the relay hub's dataset offset and by dicom-object; then the bytes
/// themselves as a file the hub receives in a bundle (`content_sha256`,
/// bounded by its hash and hex: 1 KiB).
pub fn part10_meta(data: &[u8]) {
    let _ = bounded("content_sha256", 1024, || {
        wire::content_sha256(data, "1.2.840.10008.1.2.1")
    });
    // Four fields from the bytes: three UIDs over digits and dots, an AE title.
    let mut fields = data.split(|b| *b == 0xFF);
    let mut uid = || -> String {
        let f = fields.next().unwrap_or_default();
        f.iter()
            .map(|b| if b % 11 == 10 { '.' } else { char::from(b'0' + b % 11) })
            .collect()
    };
    let (class, inst, pick) = (uid(), uid(), fields.next().unwrap_or_default());
    // The transfer syntax: one the archive accepts (the SCP negotiated it).
    const TS: [&str; 5] = [
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.5",
    ];
    let ts = TS[pick.iter().map(|b| usize::from(*b)).sum::<usize>() % TS.len()].to_string();
    let ae: String = fields
        .next()
        .unwrap_or_default()
        .iter()
        .map(|b| char::from(b' ' + b % 95))
        .collect();
    if ![&class, &inst, &ts].iter().all(|u| meta::is_valid_uid(u)) {
        return;
    }
    let mut file = meta::file_meta(&class, &inst, &ts, &ae);
    let header = file.len();
    // A one-element dataset after it: (0008,0018) UI.
    file.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 2, 0, b'1', 0]);
    let mut h = Sha256::new();
    h.update(ts.as_bytes());
    h.update([0u8]);
    h.update(&file[header..]);
    assert_eq!(
        wire::content_sha256(&file, &ts).expect("our own meta parses"),
        hex::encode(h.finalize()),
        "the hub finds the dataset where file_meta ended it"
    );
    let m = dicom_object::FileMetaTable::from_reader(&file[128..header]).expect("dicom-object reads our meta");
    assert_eq!(m.media_storage_sop_class_uid(), class);
    assert_eq!(m.media_storage_sop_instance_uid(), inst);
    assert_eq!(m.transfer_syntax(), ts);
    let ae = ae.trim();
    let ae: String = ae.chars().take(16).collect();
    let got = m.source_application_entity_title().unwrap_or_default();
    assert_eq!(got.trim(), ae.trim(), "source AE title");
}

/// Signaling: one WebSocket text frame. Bound: 32 × the frame + 8 KiB (serde
/// buffers an internally tagged message before it picks the variant).
/// Accepted messages serialize back to JSON that parses to the same message.
pub fn signaling(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let bound = 32 * text.len().min(protocol::MAX_SIGNAL_BYTES) + (8 << 10);
    let Ok(msg) = bounded("parse_client", bound, || protocol::parse_client(text)) else {
        return;
    };
    let json = serde_json::to_string(&msg).expect("serialize");
    let back = protocol::parse_client(&json);
    assert_eq!(back.as_ref(), Ok(&msg), "{json}");
}

/// Data-channel messages: stamped with the sender and time, or refused.
/// Bound: 32 × the message + 8 KiB (a JSON tree of it, and the text out).
pub fn datachannel(data: &[u8]) {
    let bound = 32 * data.len().min(protocol::MAX_DC_BYTES) + (8 << 10);
    let Some(s) = bounded("stamp_dc_message", bound, || engine::stamp_dc_message(data, "p_1", 42)) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&s.text).expect("stamped text is JSON");
    assert_eq!(v["from"], "p_1");
    assert_eq!(v["ts"], 42);
    let t = v["t"].as_str().unwrap_or_default();
    assert_eq!(s.is_chat, t == "chat");
    assert_eq!(s.is_view, t == "view");
    // Stamping is idempotent: relayed again by the same sender, same text.
    if s.text.len() <= protocol::MAX_DC_BYTES {
        let again = engine::stamp_dc_message(s.text.as_bytes(), "p_1", 42).expect("restamp");
        let again: serde_json::Value = serde_json::from_str(&again.text).expect("JSON");
        assert!(same_json(&again, &v), "{} became {again}", s.text);
    }
}

/// JSON equality, floats to the last bit but one (serde_json's default float
/// parsing is not always correctly rounded; a pointer position moving by
/// 1e-16 is not a defect).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if x.is_f64() || y.is_f64() => {
                (p - q).abs() <= 4.0 * f64::EPSILON * p.abs().max(q.abs())
            }
            _ => x == y,
        },
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same_json(p, q)))
        }
        _ => a == b,
    }
}

/// Relay frames as the hub (requests) and the edge (responses) read them:
/// prefix, then the payload, zstd-inflated when flagged. Bound:
/// [`wire::decode_bound`]. The first byte picks the direction. Accepted
/// messages round-trip through `encode`.
pub fn relay_frame(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first & 1 == 0 {
        relay_frame_as::<wire::Request>(rest);
    } else {
        relay_frame_as::<wire::Response>(rest);
    }
}

fn relay_frame_as<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let bound = wire::decode_bound(data.first().copied().unwrap_or(0), data.len());
    let Ok(msg) = bounded("relay decode", bound, || wire::decode_frame::<T>(data)) else {
        return;
    };
    let frame = wire::encode(&msg);
    let back: T = wire::decode_frame(&frame).expect("an encoded frame decodes");
    assert_eq!(back, msg, "relay message changed through encode/decode");
}

/// Bundle bodies: decompression and splitting into members, as the hub
/// stages them. Bytes: flags (bit 0 compressed, bit 1 shuffled, bit 2 the
/// members carry correct hashes), the member count (≤ 8), then per member
/// a size (u16, or with flag bit 3 a raw u64 that may be anything), then the
/// body. Bound: the announced plain size (what the hub has bounded before
/// reading the body) + 2 × the body + 1 MiB (zstd's context).
pub fn bundle(data: &[u8]) {
    let [flags, count, rest @ ..] = data else { return };
    let (compressed, shuffled, hashed, wide) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0);
    let mut rest = rest;
    let mut sizes = Vec::new();
    for _ in 0..(count % 9) {
        let size = if wide {
            let Some((b, r)) = rest.split_first_chunk::<8>() else {
                return;
            };
            rest = r;
            u64::from_le_bytes(*b)
        } else {
            let Some((b, r)) = rest.split_first_chunk::<2>() else {
                return;
            };
            rest = r;
            u64::from(u16::from_le_bytes(*b))
        };
        sizes.push(size);
    }
    let body = rest.to_vec();
    // Correct hashes need the plain bytes: over the body when not compressed.
    let mut members: Vec<Member> = Vec::new();
    let mut at = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        let file = usize::try_from(*size)
            .ok()
            .and_then(|s| body.get(at..at.checked_add(s)?))
            .filter(|_| hashed && !compressed);
        let file_sha256 = match file {
            Some(f) if shuffled => hex::encode(Sha256::digest(wire::unshuffle16(f))),
            Some(f) => hex::encode(Sha256::digest(f)),
            None => String::new(),
        };
        at = at.saturating_add(usize::try_from(*size).unwrap_or(usize::MAX));
        members.push(Member {
            sop_uid: format!("1.2.{i}"),
            sha256: String::new(),
            file_sha256,
            size: *size,
        });
    }
    // Whatever the sizes, splitting a body never panics, and an uncompressed
    // body is never grown.
    let _ = bounded("split_bundle", 1024 + 64 * members.len(), || {
        wire::split_bundle(&members, &body)
    });
    let _ = bounded("unpack_body plain", 2 * body.len() + 1024, || {
        wire::unpack_body(&members, false, shuffled, body.clone())
    });
    // The hub refuses a bundle whose announced plain size passes its limit
    // before reading the body; the sizes that get further stay within it.
    let Ok(total) = wire::members_total(&members) else {
        return;
    };
    let limit = 4 * (crate::config::RelayConfig::default().max_bundle_mb << 20);
    if total > limit {
        return;
    }
    let body_len = body.len();
    let bound = total as usize + 2 * body_len + (1 << 20);
    let unpacked = bounded("unpack_body", bound, || {
        wire::unpack_body(&members, compressed, shuffled, body)
    });
    let Ok(plain) = unpacked else { return };
    let files = bounded("split_bundle", 1024 + 64 * members.len(), || {
        wire::split_bundle(&members, &plain)
    });
    if let Ok(files) = files {
        assert_eq!(files.len(), members.len());
        assert_eq!(files.concat(), plain);
        for (f, m) in files.iter().zip(&members) {
            assert_eq!(f.len() as u64, m.size);
        }
    }
}

/// The UDP demux: classification and the ufrag of a STUN binding request
/// from an unknown address. Bound: nothing allocated. The ufrag found is in
/// the datagram, and a binding request carrying it gives it back.
pub fn stun(data: &[u8]) {
    let class = bounded("classify", 0, || demux::classify(data));
    let Some(ufrag) = bounded("stun_local_ufrag", 0, || demux::stun_local_ufrag(data)) else {
        return;
    };
    assert_eq!(class, demux::PacketClass::Stun);
    assert!(!ufrag.is_empty() && !ufrag.contains(':'));
    let range = data.as_ptr_range();
    assert!(range.contains(&ufrag.as_ptr()), "ufrag outside the datagram");
    let user = format!("{ufrag}:peer");
    let req = binding_request(user.as_bytes());
    assert_eq!(demux::stun_local_ufrag(&req), Some(ufrag));
}

/// A STUN binding request with a PRIORITY and a USERNAME attribute.
pub fn binding_request(username: &[u8]) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0024u16.to_be_bytes());
    attrs.extend_from_slice(&4u16.to_be_bytes());
    attrs.extend_from_slice(&[1, 2, 3, 4]);
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username);
    while !attrs.len().is_multiple_of(4) {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attrs);
    m
}

/// axum's default body limit, which the API router keeps.
pub const API_BODY_LIMIT: usize = 2 << 20;

/// The API's JSON request bodies, through axum's `Json` extractor exactly as
/// the handlers receive them (content type, the default body limit). The
/// first byte picks the body type. Bound: 24 × the body + 16 KiB (the body
/// collected, then the typed value).
pub fn api_json(data: &[u8]) {
    use crate::http::{auth, broadcast, consult, reading};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let body = body.to_vec();
    let bound = 24 * body.len().min(API_BODY_LIMIT) + (16 << 10);
    let names = API_BODIES;
    let name = names[usize::from(which) % names.len()];
    bounded(name, bound, || match name {
        "login" => json_body::<auth::Login>(body),
        "new_user" => json_body::<crate::reading::accounts::NewUser>(body),
        "new_room" => json_body::<consult::NewRoom>(body),
        "add_participant" => json_body::<consult::AddParticipant>(body),
        "new_broadcast" => json_body::<broadcast::NewBroadcast>(body),
        "new_request" => json_body::<crate::reading::requests::NewRequest>(body),
        "request_change" => json_body::<reading::RequestChange>(body),
        "reason" => json_body::<reading::Reason>(body),
        "priority" => json_body::<reading::SetPriority>(body),
        _ => json_body::<reading::ReportText>(body),
    });
}

/// The request body types `api_json` covers, by the first byte of its input.
pub const API_BODIES: &[&str] = &[
    "login",
    "new_user",
    "new_room",
    "add_participant",
    "new_broadcast",
    "new_request",
    "request_change",
    "reason",
    "priority",
    "report_text",
];

/// Whether axum's `Json<T>` accepted the body (dropped at once).
fn json_body<T: serde::de::DeserializeOwned>(body: Vec<u8>) -> bool {
    use axum::extract::FromRequest;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/x")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .expect("request");
    futures::executor::block_on(axum::Json::<T>::from_request(req, &())).is_ok()
}

// ------------------------------------------------------------------ seeds

/// Valid inputs for each target, the starting corpus of both runs (the
/// fuzzers mutate them; real captures are added from `fixtures/fuzz/`).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "pdu" => pdu_seeds(),
        "assembly" => vec![
            [&[0u8, 0x18, 0][..], &[0x04, 3, 1, 2, 3], &[0x0C, 2, 9, 9]].concat(),
            vec![1, 0x38, 0, 0x0C, 1, 0],
            [&[0u8, 0x00, 10][..], &Command::c_echo_rq(1).encode()[..10], &[0x08, 200], &[0; 200]].concat(),
        ],
        "dimse" => vec![
            Command::c_echo_rq(1).encode(),
            Command::c_store_rq(9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4").encode(),
            Command::response_to(&Command::c_echo_rq(1), 0, Some("ok")).encode(),
        ],
        "walk" => {
            let d = sample_dataset();
            let mut deflated = vec![3u8];
            deflated.extend(deflate(&d));
            vec![[&[0u8][..], &d].concat(), deflated]
        }
        "qr_identifier" => {
            use crate::dicom::qr::identifier::{Out, encode};
            let out = |t: u32, vr: &[u8; 2], v: &str| Out {
                tag: t,
                vr: *vr,
                value: v.as_bytes().to_vec(),
            };
            let id = encode(
                vec![
                    out(0x0008_0005, b"CS", "ISO_IR 192"),
                    out(0x0008_0020, b"DA", "20260101-20260131"),
                    out(0x0008_0052, b"CS", "STUDY"),
                    out(0x0010_0010, b"PN", "王*"),
                    out(0x0020_000D, b"UI", "1.2.3\\1.2.4"),
                ],
                Encoding::for_transfer_syntax("1.2.840.10008.1.2.1"),
            );
            vec![[&[0u8][..], &id].concat()]
        }
        "meta" => vec![
            b"\x01\x0a\x02\x0a\x08\x04\x00\xff\x01\x0a\x02\x0a\x03\xff\x01\x0a\x02\x0a\x08\x04\x00\x0a\x01\x0a\x02\x0a\x01\xffCT01".to_vec(),
        ],
        "signaling" => [
            r#"{"type":"join","token":"abc.def"}"#,
            r#"{"type":"offer","pc":"pub","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n","tracks":{"0":"mic","1":"camera"}}"#,
            r#"{"type":"answer","pc":"sub","sdp":"v=0\r\n"}"#,
            r#"{"type":"candidate","pc":"pub","candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
            r#"{"type":"mute","source":"camera","muted":true}"#,
            r#"{"type":"hand","raised":true,"participant":"p_2"}"#,
            r#"{"type":"question","text":"which slice?"}"#,
            r#"{"type":"question_done","id":3,"answered":true}"#,
            r#"{"type":"promote","participant":"p_4","video":true}"#,
            r#"{"type":"demote","participant":"p_4"}"#,
            r#"{"type":"live","live":false}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"ping"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "datachannel" => [
            r#"{"t":"chat","text":"hello"}"#,
            r#"{"t":"view","instance":"1.2.3","wc":40,"ww":400,"frame":2}"#,
            r#"{"t":"point","instance":"1.2.3","x":0.25,"y":1}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "relay_frame" => relay_seeds(),
        "bundle" => bundle_seeds(),
        "stun" => vec![binding_request(b"serverUfrag:browserUfrag")],
        "api_json" => [
            (0u8, r#"{"username":"doc","password":"secret"}"#),
            (1, r#"{"username":"u","password":"p","display_name":"D","role":"expert","hospital_id":"h1"}"#),
            (2, r#"{"title":"t","participants":[{"name":"A","role":"clinic"}],"ttl_secs":60}"#),
            (3, r#"{"name":"B","role":"expert","ttl_secs":5}"#),
            (4, r#"{"title":"Lecture"}"#),
            (5, r#"{"question":"q","study_uids":["1.2.3"],"urgency":"stat","preferred_from_ms":1}"#),
            (6, r#"{"scheduled_ms":5,"reason":"r"}"#),
            (7, r#"{"reason":"x"}"#),
            (8, r#"{"priority":"urgent","clinical_question":"?"}"#),
            (9, r#"{"findings":"f","impression":"i"}"#),
        ]
        .iter()
        .map(|(k, s)| [&[*k][..], s.as_bytes()].concat())
        .collect(),
        _ => Vec::new(),
    }
}

fn pdu_seeds() -> Vec<Vec<u8>> {
    use dicom_ul::pdu::*;
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "STORESCU".into(),
        called_ae_title: "MEDRELAY".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![
            UserVariableItem::MaxLength(16384),
            UserVariableItem::ImplementationClassUID("1.2.276.0.7230010.3.0.3.6.7".into()),
            UserVariableItem::ImplementationVersionName("OFFIS_DCMTK_367".into()),
        ],
    });
    let cmd = Command::c_store_rq(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4").encode();
    let pdata = Pdu::PData {
        data: vec![
            PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            },
            PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Data,
                is_last: true,
                data: sample_dataset(),
            },
        ],
    };
    let mut assoc = Vec::new();
    for p in [rq, pdata, Pdu::ReleaseRQ] {
        let _ = write_pdu(&mut assoc, &p);
    }
    let mut abort = Vec::new();
    let _ = write_pdu(
        &mut abort,
        &Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        },
    );
    vec![assoc, abort]
}

fn relay_seeds() -> Vec<Vec<u8>> {
    use wire::{Manifest, ManifestInstance, Request, Response};
    let inst = ManifestInstance {
        meta: crate::archive::index::NewInstance {
            sop_instance_uid: "1.2.3.4".into(),
            study_uid: "1.2.3".into(),
            series_number: Some(2),
            ..Default::default()
        },
        sha256: "ab".repeat(32),
        file_size: 525_000,
        cine_frames: None,
    };
    let requests = [
        Request::Begin {
            manifest: Manifest {
                study_uid: "1.2.3".into(),
                priority: "routine".into(),
                clinical_question: Some("?".into()),
                instances: vec![inst.clone()],
            },
        },
        Request::Begin {
            // Large enough to be sent compressed.
            manifest: Manifest {
                study_uid: "1.2.3".into(),
                priority: "stat".into(),
                clinical_question: None,
                instances: vec![inst; 40],
            },
        },
        Request::Bundle {
            study_uid: "1.2.3".into(),
            part_id: "p1".into(),
            compressed: true,
            shuffled: true,
            body_len: 10,
            members: vec![Member {
                sop_uid: "1.2.3.4".into(),
                sha256: "00".into(),
                file_sha256: "11".into(),
                size: 3,
            }],
        },
        Request::Poll {
            notif_after: 5,
            wait_ms: 100,
        },
        Request::Ack {
            delivery_ids: vec![1, 2],
        },
    ];
    let responses = [
        Response::Begun {
            have_instances: vec!["1.2".into()],
            have_previews: vec![],
        },
        Response::Missing {
            sop_uids: vec!["1.2".into()],
        },
        Response::Error {
            message: "x".into(),
            retry: true,
        },
    ];
    let mut out: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| [&[0u8][..], &wire::encode(r)].concat())
        .collect();
    out.extend(responses.iter().map(|r| [&[1u8][..], &wire::encode(r)].concat()));
    out
}

fn bundle_seeds() -> Vec<Vec<u8>> {
    let a = b"first file, odd length".to_vec();
    let b = b"second".to_vec();
    let sizes = [(a.len() as u16).to_le_bytes(), (b.len() as u16).to_le_bytes()].concat();
    let plain = [a.clone(), b.clone()].concat();
    let shuffled = [wire::shuffle16(&a), wire::shuffle16(&b)].concat();
    let packed = zstd::bulk::compress(&plain, 3).unwrap_or_default();
    vec![
        [&[4u8, 2][..], &sizes, &plain].concat(),
        [&[6u8, 2][..], &sizes, &shuffled].concat(),
        [&[1u8, 2][..], &sizes, &packed].concat(),
    ]
}

/// Appends one explicit VR little endian element (value as given, no
/// padding added): the building block of hand-made datasets in tests.
pub fn explicit_element(out: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], v: &[u8]) {
    out.extend_from_slice(&g.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(v);
}

/// Appends a tag and a 32-bit length with no VR: item and delimiter headers.
pub fn tag_and_length(out: &mut Vec<u8>, g: u16, e: u16, len: u32) {
    out.extend_from_slice(&g.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// A small explicit VR little endian dataset with what the walker must
/// handle: wanted attributes, a nested sequence, encapsulated pixel data.
pub fn sample_dataset() -> Vec<u8> {
    let (el, raw) = (explicit_element, tag_and_length);
    let mut d = Vec::new();
    el(&mut d, 0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
    el(&mut d, 0x0008, 0x0018, b"UI", b"1.2.3.4\0");
    el(&mut d, 0x0008, 0x0060, b"CS", b"CT");
    d.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    raw(&mut d, 0xFFFE, 0xE000, 0xFFFF_FFFF);
    el(&mut d, 0x0008, 0x1150, b"UI", b"1.2\0");
    raw(&mut d, 0xFFFE, 0xE00D, 0);
    raw(&mut d, 0xFFFE, 0xE0DD, 0);
    el(&mut d, 0x0010, 0x0010, b"PN", b"FUZZ^TEST");
    el(&mut d, 0x0020, 0x000D, b"UI", b"1.2.3\0");
    el(&mut d, 0x0020, 0x000E, b"UI", b"1.2.3.1\0");
    el(&mut d, 0x0028, 0x0010, b"US", &2u16.to_le_bytes());
    el(&mut d, 0x0028, 0x0011, b"US", &2u16.to_le_bytes());
    d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    raw(&mut d, 0xFFFE, 0xE000, 0);
    raw(&mut d, 0xFFFE, 0xE000, 4);
    d.extend_from_slice(&[1, 2, 3, 4]);
    raw(&mut d, 0xFFFE, 0xE0DD, 0);
    d
}

/// Raw deflate, as the deflated transfer syntaxes carry the dataset.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(data);
    z.finish().unwrap_or_default()
}
