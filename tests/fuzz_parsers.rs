//! Property-based fuzzing of every parser that takes network bytes (the
//! targets are in `medrelay::fuzz`; see its docs for the properties).
//!
//! Short run (part of `cargo test`): each target gets a fixed number of
//! cases from a fixed seed (`FUZZ_CASES`, `FUZZ_SEED` override), drawn from
//! mutated seed inputs (generated ones and the captures in `fixtures/fuzz/`),
//! random bytes and structured generators, so a run is the same on every
//! machine. Long run (`benches/fuzz.sh`): with `FUZZ_SECS=N` each target
//! loops over fresh random seeds for N seconds and prints its figures; a
//! failure prints `FUZZ_RNG=…`, which replays it.
//!
//! The binary counts allocations (`CountingAlloc`), so every target call is
//! also checked against the allocation bound of the parser it drives.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use medrelay::fuzz;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

// ------------------------------------------------------------- the runner

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Overwrite with a boundary value (length fields): 0, 1, 0x7F.., 0xFF...
    Boundary(usize, u8, bool),
    /// Repeat a chunk (grows repeated structure: items, elements, PDVs).
    Repeat(usize, usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..6, any::<bool>()).prop_map(|(i, k, w)| Mutation::Boundary(i, k, w)),
        (any::<usize>(), 1usize..64, 1u8..64).prop_map(|(i, n, r)| Mutation::Repeat(i, n, r)),
    ]
}

fn apply(mut d: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = d.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, b) if len > 0 => d[at(*i)] ^= 1 << b,
            Mutation::Set(i, v) if len > 0 => d[at(*i)] = *v,
            Mutation::Insert(i, v) => {
                let i = if len == 0 { 0 } else { i % (len + 1) };
                d.splice(i..i, v.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let i = at(*i);
                d.drain(i..(i + n).min(len));
            }
            Mutation::Truncate(i) if len > 0 => d.truncate(at(*i)),
            Mutation::Boundary(i, k, wide) if len > 0 => {
                let v: u32 = [0, 1, 0x7F, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF][usize::from(*k)];
                let bytes = if *wide {
                    v.to_le_bytes().to_vec()
                } else {
                    (v as u16).to_le_bytes().to_vec()
                };
                let i = at(*i);
                for (j, b) in bytes.into_iter().enumerate() {
                    if let Some(x) = d.get_mut(i + j) {
                        *x = b;
                    }
                }
            }
            Mutation::Repeat(i, n, r) if len > 0 => {
                let i = at(*i);
                let chunk = d[i..(i + n).min(len)].to_vec();
                let reps: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take(chunk.len() * usize::from(*r))
                    .collect();
                d.splice(i..i, reps);
            }
            _ => {}
        }
    }
    d
}

/// Seeds: the generated ones, plus captured inputs in `fixtures/fuzz/TARGET/`.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    let mut s = fuzz::seeds(name);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(name);
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        s.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    // Long runs also start from the real DICOM samples, when present.
    if name == "walk" && std::env::var_os("FUZZ_SECS").is_some() {
        s.extend(sample_datasets());
    }
    assert!(!s.is_empty(), "no seeds for {name}");
    s
}

/// Datasets of the public samples (meta group cut off), explicit LE ones.
fn sample_datasets() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/dicom-samples/pydicom/data/test_files");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|f| f.len() < 200_000)
        .filter_map(|f| {
            let at = medrelay::relay::wire::dataset_offset(&f)?;
            Some([&[0u8][..], &f[at..]].concat())
        })
        .collect()
}

fn input(name: &str, extra: Option<BoxedStrategy<Vec<u8>>>) -> BoxedStrategy<Vec<u8>> {
    let seeds = seeds(name);
    let n = seeds.len();
    let mutated = (0..n, proptest::collection::vec(mutation(), 0..8))
        .prop_map(move |(i, m)| apply(seeds[i].clone(), &m))
        .boxed();
    let random = proptest::collection::vec(any::<u8>(), 0..512).boxed();
    match extra {
        Some(e) => prop_oneof![6 => mutated, 2 => random, 2 => e].boxed(),
        None => prop_oneof![8 => mutated, 2 => random].boxed(),
    }
}

fn seed_of(name: &str) -> [u8; 32] {
    let base: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d65_6472_656c_6179);
    let mut h = base;
    for b in name.bytes() {
        h = h.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b));
    }
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&h.to_le_bytes());
    s[8..16].copy_from_slice(&base.to_le_bytes());
    s
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While shrinking, proptest catches hundreds of panics; print none of them
/// (the final failure carries the message and the minimal input).
fn quiet_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `check` over generated inputs: a fixed-seed batch (the short run),
/// or fresh seeds until `FUZZ_SECS` have passed (the long run).
fn run<T: std::fmt::Debug>(name: &str, strategy: BoxedStrategy<T>, check: impl Fn(T)) {
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let secs: u64 = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let execs = std::cell::Cell::new(0u64);
    let mut round: u64 = 0;
    let _ = fuzz::take_worst();
    quiet_panics();
    loop {
        let mut seed = seed_of(name);
        if let Some(replay) = std::env::var("FUZZ_RNG").ok().and_then(|h| hex::decode(h).ok()) {
            // Replays a failure a long run reported.
            seed.copy_from_slice(&replay);
        } else if secs > 0 {
            // Long run: a different seed each round, reported on failure.
            seed[16..24].copy_from_slice(&round.to_le_bytes());
            seed[24..32].copy_from_slice(&(started.elapsed().as_nanos() as u64).to_le_bytes());
        }
        let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        QUIET.with(|q| q.set(true));
        let result = runner.run(&strategy, |v| {
            execs.set(execs.get() + 1);
            check(v);
            Ok::<(), TestCaseError>(())
        });
        QUIET.with(|q| q.set(false));
        if let Err(e) = result {
            panic!("fuzz {name}: {e} (replay: FUZZ_RNG={})", hex::encode(seed));
        }
        round += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    let (peak, bound) = fuzz::take_worst();
    let secs = started.elapsed().as_secs_f64();
    let execs = execs.get();
    println!(
        "FUZZ {name}: execs={execs} secs={secs:.1} execs_per_sec={:.0} failures=0 worst_peak_bytes={peak} its_bound={bound}",
        execs as f64 / secs.max(1e-9)
    );
}

fn bytes_target(name: &str, extra: Option<BoxedStrategy<Vec<u8>>>) {
    let t = fuzz::target(name).expect("target");
    run(name, input(name, extra), |d| t(&d));
}

// ------------------------------------------------------------ the targets

#[test]
fn meter_counts_allocations() {
    // A bound checked by a meter that sees nothing could never fail.
    assert!(fuzz::counting(), "the counting allocator is not installed");
    let (_, peak) = fuzz::measure(|| vec![0u8; 100_000]);
    assert!((100_000..110_000).contains(&peak), "{peak}");
}

#[test]
fn fuzz_pdu() {
    bytes_target("pdu", None);
}

#[test]
fn fuzz_assembly() {
    bytes_target("assembly", None);
}

#[test]
fn fuzz_qr_identifier() {
    bytes_target("qr_identifier", None);
}

#[test]
fn fuzz_dimse() {
    // Structured: a command set of random group-0000 elements in order.
    let sets = proptest::collection::btree_map(1u16.., proptest::collection::vec(any::<u8>(), 0..24), 0..12)
        .prop_map(|m| {
            let mut out = Vec::new();
            for (elem, v) in [(0x0100u16, vec![0x30, 0]), (0x0800, vec![1, 1])].into_iter().chain(m) {
                out.extend_from_slice(&0u16.to_le_bytes());
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(&v);
            }
            out
        })
        .boxed();
    bytes_target("dimse", Some(sets));
}

#[test]
fn fuzz_walk() {
    bytes_target(
        "walk",
        Some(dataset().prop_map(|d| [&[0u8][..], &d.0].concat()).boxed()),
    );
}

/// A random valid explicit VR LE dataset and the wanted values it holds.
fn dataset() -> impl Strategy<Value = (Vec<u8>, Vec<(u32, Vec<u8>)>)> {
    let tags = medrelay::dicom::attrs::WANTED.to_vec();
    proptest::collection::btree_map(
        prop_oneof![proptest::sample::select(tags), 0x0009_0000u32..0x7FDF_0000],
        proptest::collection::vec(b'0'..=b'9', 0..40),
        1..20,
    )
    .prop_map(|m| {
        let mut d = Vec::new();
        let mut wanted = Vec::new();
        for (tag, mut v) in m {
            if v.len() % 2 == 1 {
                v.push(b' ');
            }
            d.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
            d.extend_from_slice(&(tag as u16).to_le_bytes());
            d.extend_from_slice(b"LO");
            d.extend_from_slice(&(v.len() as u16).to_le_bytes());
            d.extend_from_slice(&v);
            if medrelay::dicom::attrs::WANTED.contains(&tag) {
                wanted.push((tag, v));
            }
        }
        (d, wanted)
    })
}

#[test]
fn walker_collects_what_a_valid_dataset_holds() {
    use medrelay::dicom::walk::{Encoding, walk};
    run("walk_round_trip", dataset().boxed(), |(d, wanted)| {
        let enc = Encoding::for_transfer_syntax("1.2.840.10008.1.2.1");
        let s = walk(&d[..], enc, medrelay::dicom::attrs::WANTED).expect("valid dataset");
        for (tag, v) in &wanted {
            assert_eq!(s.values.get(tag), Some(v));
        }
        assert_eq!(s.values.len(), wanted.len());
        // Deflated, the same dataset gives the same values.
        let z = fuzz::deflate(&d);
        let enc = Encoding::for_transfer_syntax("1.2.840.10008.1.2.1.99");
        let s2 = walk(&z[..], enc, medrelay::dicom::attrs::WANTED).expect("deflated");
        assert_eq!(s2.values, s.values);
    });
}

#[test]
fn fuzz_meta() {
    bytes_target("meta", None);
}

#[test]
fn fuzz_signaling() {
    use medrelay::sfu::protocol::{CandidateInit, ClientMsg, PcKind, Source};
    let pc = prop_oneof![Just(PcKind::Pub), Just(PcKind::Sub)];
    let source = prop_oneof![Just(Source::Mic), Just(Source::Camera), Just(Source::Screen)];
    let text = any::<String>();
    let msg = prop_oneof![
        text.prop_map(|token| ClientMsg::Join { token }),
        (
            pc.clone(),
            text,
            proptest::collection::btree_map(any::<String>(), source.clone(), 0..4)
        )
            .prop_map(|(pc, sdp, tracks)| ClientMsg::Offer { pc, sdp, tracks }),
        (pc.clone(), text).prop_map(|(pc, sdp)| ClientMsg::Answer { pc, sdp }),
        (
            pc,
            text,
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(|(pc, c, mid, idx)| ClientMsg::Candidate {
                pc,
                candidate: CandidateInit {
                    candidate: c,
                    sdp_mid: mid,
                    sdp_mline_index: idx,
                },
            }),
        (source, any::<bool>()).prop_map(|(source, muted)| ClientMsg::Mute { source, muted }),
        (any::<bool>(), proptest::option::of(any::<String>()))
            .prop_map(|(raised, participant)| ClientMsg::Hand { raised, participant }),
        (any::<u64>(), any::<bool>()).prop_map(|(id, answered)| ClientMsg::QuestionDone { id, answered }),
        (text, any::<bool>()).prop_map(|(participant, video)| ClientMsg::Promote { participant, video }),
        any::<bool>().prop_map(|live| ClientMsg::Live { live }),
        Just(ClientMsg::Leave),
    ];
    // Structured: every message the page may send, as the page serializes it.
    let structured = msg.prop_map(|m| serde_json::to_vec(&m).expect("json")).boxed();
    bytes_target("signaling", Some(structured));
}

#[test]
fn fuzz_datachannel() {
    let chat =
        any::<String>().prop_map(|t| serde_json::to_vec(&serde_json::json!({"t": "chat", "text": t})).expect("json"));
    let point = (any::<String>(), any::<f64>(), 0.0f64..=1.0, any::<i64>()).prop_map(|(i, x, y, extra)| {
        serde_json::to_vec(&serde_json::json!({"t": "point", "instance": i, "x": x, "y": y, "n": extra})).expect("json")
    });
    bytes_target("datachannel", Some(prop_oneof![chat, point].boxed()));
}

#[test]
fn fuzz_relay_frame() {
    bytes_target("relay_frame", None);
}

#[test]
fn relay_messages_round_trip() {
    use medrelay::archive::index::NewInstance;
    use medrelay::relay::wire::{self, Manifest, ManifestInstance, Member, Request};
    let s = any::<String>();
    let member = (s, s, any::<u64>()).prop_map(|(sop_uid, sha256, size)| Member {
        file_sha256: sha256.clone(),
        sop_uid,
        sha256,
        size,
    });
    let inst = (s, s, proptest::option::of(any::<i64>()), any::<u64>(), any::<i64>()).prop_map(
        |(uid, name, number, size, ms)| ManifestInstance {
            meta: NewInstance {
                sop_instance_uid: uid,
                patient_name: name,
                series_number: number,
                received_ms: ms,
                ..Default::default()
            },
            sha256: String::new(),
            file_size: size,
            cine_frames: number,
        },
    );
    let req = prop_oneof![
        (s, proptest::option::of(s), proptest::collection::vec(inst, 0..8)).prop_map(|(study_uid, q, instances)| {
            Request::Begin {
                manifest: Manifest {
                    study_uid,
                    priority: "routine".into(),
                    clinical_question: q,
                    instances,
                },
            }
        }),
        (
            s,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec(member, 0..5)
        )
            .prop_map(|(study_uid, compressed, shuffled, body_len, members)| Request::Bundle {
                study_uid,
                part_id: "p".into(),
                compressed,
                shuffled,
                body_len,
                members,
            }),
        s.prop_map(|study_uid| Request::Commit { study_uid }),
        (any::<i64>(), any::<u64>()).prop_map(|(notif_after, wait_ms)| Request::Poll { notif_after, wait_ms }),
        proptest::collection::vec(any::<i64>(), 0..50).prop_map(|delivery_ids| Request::Ack { delivery_ids }),
    ];
    run("relay_round_trip", req.boxed(), |r| {
        let frame = wire::encode(&r);
        assert_eq!(wire::decode_frame::<Request>(&frame).expect("decodes"), r);
    });
}

#[test]
fn fuzz_bundle() {
    // Structured: real bundles of random files, compressed and shuffled or not.
    let bundles = (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..5),
        0u8..4,
    )
        .prop_map(|(files, mode)| {
            let (compressed, shuffled) = (mode & 1 != 0, mode & 2 != 0);
            let mut sizes = Vec::new();
            let mut plain = Vec::new();
            for f in &files {
                sizes.extend_from_slice(&(f.len() as u16).to_le_bytes());
                plain.extend(if shuffled {
                    medrelay::relay::wire::shuffle16(f)
                } else {
                    f.clone()
                });
            }
            let body = if compressed {
                zstd::bulk::compress(&plain, 3).expect("zstd")
            } else {
                plain
            };
            [&[mode | 4, files.len() as u8][..], &sizes, &body].concat()
        })
        .boxed();
    bytes_target("bundle", Some(bundles));
}

#[test]
fn fuzz_stun() {
    let ufrag = "[a-zA-Z0-9+/]{1,32}"
        .prop_map(|u| fuzz::binding_request(format!("{u}:x").as_bytes()))
        .boxed();
    bytes_target("stun", Some(ufrag));
}

#[test]
fn fuzz_api_json() {
    bytes_target("api_json", None);
}

// ------------------------------------------------------------------ bombs

#[test]
fn api_bodies_over_the_limit_are_refused_within_the_bound() {
    // 3 MiB of a valid login body: axum refuses it (413) without holding more
    // than the bound.
    let mut body = vec![0u8]; // login
    body.extend_from_slice(br#"{"username":"a","password":""#);
    body.resize(3 << 20, b'x');
    body.extend_from_slice(br#""}"#);
    fuzz::api_json(&body);
    let (peak, bound) = fuzz::take_worst();
    assert!(peak > 0 && peak <= bound);
}

// ------------------------------------------------- regressions (findings)

/// Finding: a 16 MiB relay frame of `0,0,0,…` (2 KiB zstd-compressed) made
/// the hub allocate ~800 MB: serde buffers an internally tagged message as
/// generic values, ~48 bytes per token. Now refused past `MAX_JSON_TOKENS`.
#[test]
fn relay_json_bomb_is_refused_within_the_bound() {
    use medrelay::relay::wire;
    let json = format!(r#"{{"op":"ack","delivery_ids":[{}0]}}"#, "0,".repeat(7 << 20));
    let z = zstd::bulk::compress(json.as_bytes(), 3).expect("zstd");
    assert!(z.len() < 4096, "{}", z.len());
    let mut frame = vec![0u8, 1]; // request, zstd
    frame.extend_from_slice(&(z.len() as u32).to_be_bytes());
    frame.extend_from_slice(&z);
    fuzz::relay_frame(&frame);
    let (peak, bound) = fuzz::take_worst();
    assert!(peak <= bound && bound < 200 << 20, "{peak} of {bound}");
    assert!(matches!(
        wire::decode_frame::<wire::Request>(&frame[1..]),
        Err(wire::WireError::TooManyValues(_))
    ));
    // A real 10 000-instance manifest still decodes.
    let inst = wire::ManifestInstance {
        meta: medrelay::archive::index::NewInstance {
            sop_instance_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029.1".into(),
            study_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029.320".into(),
            series_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029.321".into(),
            patient_name: "ZHANG^SAN".into(),
            series_number: Some(3),
            instance_number: Some(1),
            rows: Some(512),
            columns: Some(512),
            ..Default::default()
        },
        sha256: "ab".repeat(32),
        file_size: 525_000,
        cine_frames: None,
    };
    let big = wire::Request::Begin {
        manifest: wire::Manifest {
            study_uid: "1.2.3".into(),
            priority: "routine".into(),
            clinical_question: None,
            instances: vec![inst; 10_000],
        },
    };
    let frame = [&[0u8][..], &wire::encode(&big)].concat();
    fuzz::relay_frame(&frame);
    assert_eq!(wire::decode_frame::<wire::Request>(&frame[1..]).expect("manifest"), big);
}

/// Finding: the walker kept every encapsulated fragment's position, 16 bytes
/// per 8-byte item header: a deflated dataset of 16 KiB holding 2 million
/// empty items (16 MB inflated) cost 48 MB, and a 1 GB stored dataset ~4 GB.
/// Now refused past `MAX_FRAGMENTS`.
#[test]
fn walker_fragment_bomb_is_bounded() {
    let mut d = Vec::new();
    d.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
    d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    let item = [0xFEu8, 0xFF, 0x00, 0xE0, 0, 0, 0, 0];
    for _ in 0..(2 << 20) {
        d.extend_from_slice(&item);
    }
    d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let z = fuzz::deflate(&d);
    assert!(z.len() < 64 << 10, "{}", z.len());
    fuzz::walk_dataset(&[&[3u8][..], &z].concat());
    fuzz::walk_dataset(&[&[0u8][..], &d].concat());
    let (peak, bound) = fuzz::take_worst();
    assert!(peak <= bound, "{peak} of {bound}");
    let enc = medrelay::dicom::walk::Encoding::for_transfer_syntax("1.2.840.10008.1.2.1");
    assert!(matches!(
        medrelay::dicom::walk::walk(&d[..], enc, &[]),
        Err(medrelay::dicom::walk::WalkError::TooManyFragments(_))
    ));
}

/// Finding: member sizes come from the edge's manifest; two that overflow
/// u64 when added panicked the bundle split (debug) or wrapped past the
/// hub's size check and sliced past the body (release).
#[test]
fn bundle_sizes_that_overflow_are_refused() {
    use medrelay::relay::wire::{self, Member};
    let m = |size| Member {
        sop_uid: "1.2".into(),
        sha256: String::new(),
        file_sha256: String::new(),
        size,
    };
    let members = [m(u64::MAX), m(2)];
    assert!(wire::members_total(&members).is_err());
    assert!(wire::split_bundle(&members, b"x").is_err());
    let body = zstd::bulk::compress(b"x", 3).expect("zstd");
    assert!(wire::unpack_body(&members, true, false, body).is_err());
    // Through the fuzz target, with the sizes as raw u64s (flag bit 3).
    let mut input = vec![0b1001u8, 2];
    input.extend_from_slice(&u64::MAX.to_le_bytes());
    input.extend_from_slice(&2u64.to_le_bytes());
    input.extend_from_slice(&zstd::bulk::compress(b"x", 3).expect("zstd"));
    fuzz::bundle(&input);
}

/// The inputs that cost the most per byte, at each parser's size limit: a
/// random run does not reach them, and the bounds must hold there too.
#[test]
fn worst_case_inputs_stay_within_the_bounds() {
    let zeros = |n: usize| format!("[{}0]", "0,".repeat(n / 2 - 2));
    // Signaling: an unknown field of a 64 KiB frame, buffered whole.
    let frame = format!(r#"{{"type":"ping","x":{}}}"#, zeros(60_000));
    fuzz::signaling(frame.as_bytes());
    let tracks: String = (0..5000)
        .map(|i| format!(r#""{i}":"mic""#))
        .collect::<Vec<_>>()
        .join(",");
    fuzz::signaling(format!(r#"{{"type":"offer","pc":"pub","sdp":"","tracks":{{{tracks}}}}}"#).as_bytes());
    // Data channel: a 4 KiB array.
    fuzz::datachannel(format!(r#"{{"t":"chat","text":"x","a":{}}}"#, zeros(4000)).as_bytes());
    // API bodies at axum's 2 MiB limit: a list of empty strings, a list of
    // participants, an unknown field.
    let uids = format!(
        r#"{{"question":"q","study_uids":[{}""]}}"#,
        r#"""#.to_string().repeat(0) + &"\"\",".repeat(690_000)
    );
    fuzz::api_json(&[&[5u8][..], uids.as_bytes()].concat());
    let people = format!(
        r#"{{"participants":[{}{{"name":"a","role":"clinic"}}]}}"#,
        r#"{"name":"","role":"clinic"},"#.repeat(70_000)
    );
    fuzz::api_json(&[&[2u8][..], people.as_bytes()].concat());
    fuzz::api_json(
        &[
            &[0u8][..],
            format!(r#"{{"username":"u","password":"p","x":{}}}"#, zeros(2_000_000)).as_bytes(),
        ]
        .concat(),
    );
    // DIMSE: a 64 KiB command set of empty elements (8 bytes each).
    let mut cmd = Vec::new();
    for (e, v) in [(0x0100u16, &[0x30u8, 0][..]), (0x0800, &[1, 1])] {
        cmd.extend_from_slice(&[0, 0]);
        cmd.extend_from_slice(&e.to_le_bytes());
        cmd.extend_from_slice(&2u32.to_le_bytes());
        cmd.extend_from_slice(v);
    }
    for e in 0x0801u16..0x0801 + 8000 {
        cmd.extend_from_slice(&[0, 0]);
        cmd.extend_from_slice(&e.to_le_bytes());
        cmd.extend_from_slice(&0u32.to_le_bytes());
    }
    fuzz::dimse(&cmd);
    // PDU: a P-DATA of the SCP's maximum length, full of the smallest PDVs
    // (empty, 6 bytes) or one-byte ones.
    let max = fuzz::scp_max_pdu() as usize;
    for data in [&[][..], &[0u8][..]] {
        let item = 2 + data.len();
        let n = max / (4 + item);
        let mut pdu = vec![0x04, 0];
        pdu.extend_from_slice(&((n * (4 + item)) as u32).to_be_bytes());
        for _ in 0..n {
            pdu.extend_from_slice(&(item as u32).to_be_bytes());
            pdu.extend_from_slice(&[1, 0x02]);
            pdu.extend_from_slice(data);
        }
        fuzz::pdu(&pdu);
    }
    let (peak, bound) = fuzz::take_worst();
    println!("closest to its bound: {peak} of {bound}");
}
