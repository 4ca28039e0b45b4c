//! What the edge sends to the hub for one study, in which order, and what is
//! left after a restart: a pure planner (groundwork for the relay link; the
//! QUIC transport and the outbox that drive it come next).
//!
//! Order: the manifest (every instance's UID, size and SHA-256, so the hub
//! can show "arriving: k of n" and verify each one), then the previews, so
//! the expert sees the study on the worklist while pixels still travel,
//! then the instances in bundles of a few MB. Bundle ids are derived from
//! their content, so an edge that restarts plans exactly the same bundles
//! and skips the ones the hub already committed: nothing is sent twice and
//! nothing needs a persisted plan.
//!
//! Compression is decided per bundle: zstd pays off for native pixel data,
//! not for JPEG / JPEG-LS / JPEG 2000 / RLE, which are already compressed.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// One stored instance as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub sop_uid: String,
    /// Hex SHA-256 of the stored file (the index has it).
    pub sha256: String,
    pub size: u64,
    pub transfer_syntax: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    Manifest,
    Previews,
    /// Indices into the instance list given to `plan`.
    Bundle {
        members: Vec<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Content-derived: the same study and files give the same id.
    pub id: String,
    pub kind: PartKind,
    /// Uncompressed payload bytes (0 for the manifest and previews, which
    /// are small and sized when built).
    pub bytes: u64,
    pub compress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub study_uid: String,
    pub parts: Vec<Part>,
}

/// Transfer syntaxes whose pixel data is already compressed.
pub fn already_compressed(ts: &str) -> bool {
    let ts = ts.trim_end_matches('\0').trim();
    ts.starts_with("1.2.840.10008.1.2.4.") // JPEG family, JPEG-LS, JPEG 2000, HTJ2K, MPEG, HEVC
        || ts == "1.2.840.10008.1.2.5" // RLE
        || ts == "1.2.840.10008.1.2.1.99" // deflated explicit VR little endian
}

fn part_id(study_uid: &str, tag: &str, shas: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(study_uid.as_bytes());
    h.update([0]);
    h.update(tag.as_bytes());
    for s in shas {
        h.update([0]);
        h.update(s.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Plans one study. Instances keep the given order (series, then instance
/// number, as the index lists them) so a reader scrolling from the top
/// finds the first slices first. A bundle never mixes compressed and
/// native instances, and never exceeds `bundle_max` unless one instance
/// alone does (it then travels alone).
pub fn plan(study_uid: &str, instances: &[InstanceInfo], bundle_max: u64) -> Plan {
    let all: Vec<&str> = instances.iter().map(|i| i.sha256.as_str()).collect();
    let mut parts = vec![
        Part {
            id: part_id(study_uid, "manifest", &all),
            kind: PartKind::Manifest,
            bytes: 0,
            compress: true,
        },
        Part {
            id: part_id(study_uid, "previews", &all),
            kind: PartKind::Previews,
            bytes: 0,
            compress: false,
        },
    ];
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0u64;
    let mut current_compressed = false;
    let flush = |members: &mut Vec<usize>, bytes: &mut u64, compressed: bool, parts: &mut Vec<Part>| {
        if members.is_empty() {
            return;
        }
        let shas: Vec<&str> = members.iter().map(|&i| instances[i].sha256.as_str()).collect();
        parts.push(Part {
            id: part_id(study_uid, "bundle", &shas),
            kind: PartKind::Bundle {
                members: std::mem::take(members),
            },
            bytes: *bytes,
            compress: !compressed,
        });
        *bytes = 0;
    };
    for (i, inst) in instances.iter().enumerate() {
        let compressed = already_compressed(&inst.transfer_syntax);
        let fits = current_bytes.saturating_add(inst.size) <= bundle_max;
        if !current.is_empty() && (compressed != current_compressed || !fits) {
            flush(&mut current, &mut current_bytes, current_compressed, &mut parts);
        }
        current_compressed = compressed;
        current.push(i);
        current_bytes = current_bytes.saturating_add(inst.size);
    }
    flush(&mut current, &mut current_bytes, current_compressed, &mut parts);
    Plan {
        study_uid: study_uid.to_string(),
        parts,
    }
}

impl Plan {
    /// The parts still to send, in order, given the ids the hub committed.
    pub fn remaining<'a>(&'a self, committed: &HashSet<String>) -> impl Iterator<Item = &'a Part> + 'a {
        let committed = committed.clone();
        self.parts.iter().filter(move |p| !committed.contains(&p.id))
    }

    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE: &str = "1.2.840.10008.1.2.1";
    const JPEG: &str = "1.2.840.10008.1.2.4.50";

    fn inst(n: usize, size: u64, ts: &str) -> InstanceInfo {
        InstanceInfo {
            sop_uid: format!("1.2.3.{n}"),
            sha256: format!("{n:064x}"),
            size,
            transfer_syntax: ts.into(),
        }
    }

    fn members(p: &Part) -> Vec<usize> {
        match &p.kind {
            PartKind::Bundle { members } => members.clone(),
            _ => vec![],
        }
    }

    #[test]
    fn manifest_and_previews_go_first_then_bounded_bundles_in_order() {
        // 300 CT slices of 525 KB in 4 MB bundles: 7 slices per bundle.
        let ct: Vec<_> = (0..300).map(|i| inst(i, 525_000, NATIVE)).collect();
        let p = plan("1.2.840.1", &ct, 4 << 20);
        assert_eq!(p.parts[0].kind, PartKind::Manifest);
        assert_eq!(p.parts[1].kind, PartKind::Previews);
        let bundles = &p.parts[2..];
        assert_eq!(bundles.len(), 300usize.div_ceil(7));
        assert!(bundles.iter().all(|b| b.bytes <= 4 << 20 && b.compress));
        let order: Vec<usize> = bundles.iter().flat_map(members).collect();
        assert_eq!(order, (0..300).collect::<Vec<_>>(), "every instance once, in order");
        assert_eq!(p.total_bytes(), 300 * 525_000);
    }

    #[test]
    fn compressed_and_native_instances_never_share_a_bundle_and_big_ones_travel_alone() {
        let xs = vec![
            inst(0, 1000, NATIVE),
            inst(1, 1000, JPEG),
            inst(2, 1000, JPEG),
            inst(3, 50_000_000, NATIVE),
            inst(4, 1000, NATIVE),
            inst(5, 1000, "1.2.840.10008.1.2.5"),
        ];
        let p = plan("1.2.840.2", &xs, 4 << 20);
        let b: Vec<(Vec<usize>, bool)> = p.parts[2..].iter().map(|x| (members(x), x.compress)).collect();
        assert_eq!(
            b,
            vec![
                (vec![0], true),
                (vec![1, 2], false),
                (vec![3], true),
                (vec![4], true),
                (vec![5], false),
            ]
        );
    }

    #[test]
    fn ids_are_stable_across_restarts_and_resume_skips_committed_parts() {
        let ct: Vec<_> = (0..40).map(|i| inst(i, 525_000, NATIVE)).collect();
        let a = plan("1.2.840.3", &ct, 4 << 20);
        let b = plan("1.2.840.3", &ct, 4 << 20);
        assert_eq!(a, b, "a restarted edge plans the same parts");
        let ids: HashSet<&String> = a.parts.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), a.parts.len(), "ids are unique within a study");
        // Another study with the same files has different ids.
        let c = plan("1.2.840.4", &ct, 4 << 20);
        assert!(a.parts.iter().zip(&c.parts).all(|(x, y)| x.id != y.id));
        // The hub committed the manifest, previews and first two bundles.
        let committed: HashSet<String> = a.parts[..4].iter().map(|p| p.id.clone()).collect();
        let left: Vec<&Part> = a.remaining(&committed).collect();
        assert_eq!(left.len(), a.parts.len() - 4);
        assert_eq!(left[0], &a.parts[4]);
        // A changed file (new version) changes its bundle's id only.
        let mut changed = ct.clone();
        changed[39].sha256 = "f".repeat(64);
        let d = plan("1.2.840.3", &changed, 4 << 20);
        let same = a.parts[2..]
            .iter()
            .zip(&d.parts[2..])
            .filter(|(x, y)| x.id == y.id)
            .count();
        assert_eq!(same, a.parts.len() - 3, "only the last bundle differs");
    }

    #[test]
    fn transfer_syntax_classification() {
        assert!(!already_compressed(NATIVE));
        assert!(!already_compressed("1.2.840.10008.1.2"));
        assert!(already_compressed(JPEG));
        assert!(already_compressed("1.2.840.10008.1.2.4.90\0"));
        assert!(already_compressed("1.2.840.10008.1.2.4.80"));
        assert!(already_compressed("1.2.840.10008.1.2.5"));
    }
}
