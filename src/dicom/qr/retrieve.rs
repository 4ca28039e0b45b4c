//! C-MOVE and C-GET bookkeeping (PS3.4 C.4.2.1.5, C.4.3.1.4): the counts
//! of sub-operations, the statuses they add up to, and which presentation
//! context carries each instance. Pure; the SCP's retrieve adapter does the
//! sending.
//!
//! The final status goes out only after every sub-operation has answered
//! (Orthanc, unless `SynchronousCMove` is set, said Success before its
//! sub-operations ended, so a PACS could not tell a failed retrieve).

use super::super::dimse::Command;

/// Command elements of the sub-operation counts (PS3.7 E.1).
pub const REMAINING: u16 = 0x1020;
pub const COMPLETED: u16 = 0x1021;
pub const FAILED: u16 = 0x1022;
pub const WARNING: u16 = 0x1023;
/// Move Destination (0000,0600).
pub const MOVE_DESTINATION: u16 = 0x0600;
/// Failed SOP Instance UID List (0008,0058), in the final identifier.
pub const FAILED_SOP_INSTANCE_UID_LIST: u32 = 0x0008_0058;

pub const PENDING: u16 = 0xFF00;
pub const CANCELLED: u16 = 0xFE00;
pub const SUCCESS: u16 = 0x0000;
/// Sub-operations complete, one or more failures or warnings.
pub const SOME_FAILED: u16 = 0xB000;
/// Refused: out of resources, unable to calculate the number of matches.
pub const CANNOT_COUNT: u16 = 0xA701;
/// Refused: out of resources, unable to perform sub-operations.
pub const CANNOT_PERFORM: u16 = 0xA702;
/// Refused: Move Destination unknown.
pub const DESTINATION_UNKNOWN: u16 = 0xA801;

/// How one sub-operation (a C-STORE of one instance) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Warning,
    Failed,
}

impl Outcome {
    /// From a C-STORE-RSP status (PS3.4 B.2.3).
    pub fn of_status(status: u16) -> Outcome {
        match status {
            0x0000 => Outcome::Completed,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => Outcome::Warning,
            _ => Outcome::Failed,
        }
    }
}

/// Counts of a retrieve in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub completed: usize,
    pub warning: usize,
    pub failed: usize,
    pub failed_uids: Vec<String>,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress {
            total,
            ..Progress::default()
        }
    }

    pub fn record(&mut self, sop_instance_uid: &str, o: Outcome) {
        match o {
            Outcome::Completed => self.completed += 1,
            Outcome::Warning => self.warning += 1,
            Outcome::Failed => {
                self.failed += 1;
                self.failed_uids.push(sop_instance_uid.to_string());
            }
        }
    }

    pub fn remaining(&self) -> usize {
        self.total.saturating_sub(self.completed + self.warning + self.failed)
    }

    /// The final status: after every sub-operation, or on a cancel.
    pub fn final_status(&self, cancelled: bool) -> u16 {
        if cancelled {
            CANCELLED
        } else if self.failed == 0 && self.warning == 0 {
            SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            CANNOT_PERFORM
        } else {
            SOME_FAILED
        }
    }

    /// Writes the counts into a response: a pending one carries the
    /// remaining count too, a final one does not (PS3.7 C.4.2.1.6, C.4.3.1.6).
    pub fn stamp(&self, rsp: &mut Command, pending: bool) {
        let n = |v: usize| v.min(usize::from(u16::MAX)) as u16;
        if pending {
            rsp.set_u16(REMAINING, n(self.remaining()));
        }
        rsp.set_u16(COMPLETED, n(self.completed))
            .set_u16(FAILED, n(self.failed))
            .set_u16(WARNING, n(self.warning));
    }
}

/// Native transfer syntaxes: a stored instance in one of these can be
/// re-encoded to another for a peer that accepts nothing else.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const NATIVE: [&str; 3] = [EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"];

/// How an instance goes out on an accepted context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carry {
    /// On this context, bytes as stored.
    AsStored(u8),
    /// On this context, re-encoded to its transfer syntax (native only).
    Transcoded(u8, String),
}

/// The context an instance goes out on: as stored where the peer accepted
/// its transfer syntax; else a native instance re-encoded to a native
/// syntax the peer accepted, Explicit VR Little Endian first; else none
/// (compressed data is never decompressed for a peer that cannot take it:
/// that sub-operation fails and is listed).
pub fn carry(sop_class: &str, stored_ts: &str, accepted: &[(u8, String, String)]) -> Option<Carry> {
    let on = |ts: &str| {
        accepted
            .iter()
            .find(|(_, a, t)| a == sop_class && t == ts)
            .map(|(pc, _, _)| *pc)
    };
    if let Some(pc) = on(stored_ts) {
        return Some(Carry::AsStored(pc));
    }
    if !NATIVE.contains(&stored_ts) {
        return None;
    }
    NATIVE
        .iter()
        .find_map(|t| on(t).map(|pc| Carry::Transcoded(pc, t.to_string())))
}

/// The contexts to propose to a C-MOVE destination for these (SOP class,
/// stored transfer syntax) pairs: each as stored, native ones with the
/// other native syntaxes as fallbacks. At most 128 (the PS3.8 limit is
/// 128 odd context ids).
pub fn proposals(pairs: &std::collections::BTreeSet<(String, String)>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (sop, ts) in pairs {
        let mut list = vec![ts.clone()];
        if NATIVE.contains(&ts.as_str()) {
            list.extend(NATIVE.iter().filter(|t| **t != ts.as_str()).map(|t| t.to_string()));
        }
        out.push((sop.clone(), list));
    }
    out.truncate(128);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_counts() {
        let mut p = Progress::new(3);
        assert_eq!(p.remaining(), 3);
        p.record("1", Outcome::Completed);
        p.record("2", Outcome::of_status(0xB007));
        assert_eq!((p.remaining(), p.final_status(false)), (1, SOME_FAILED));
        p.record("3", Outcome::of_status(0xA700));
        assert_eq!(p.failed_uids, ["3"]);
        assert_eq!(p.final_status(true), CANCELLED);
        let mut all_bad = Progress::new(2);
        all_bad.record("a", Outcome::Failed);
        all_bad.record("b", Outcome::Failed);
        assert_eq!(all_bad.final_status(false), CANNOT_PERFORM);
        let mut good = Progress::new(1);
        good.record("a", Outcome::Completed);
        assert_eq!(good.final_status(false), SUCCESS);
        let mut rsp = Command::default();
        p.stamp(&mut rsp, true);
        assert_eq!(rsp.u16(REMAINING), Ok(0));
        assert_eq!(
            (rsp.u16(COMPLETED), rsp.u16(WARNING), rsp.u16(FAILED)),
            (Ok(1), Ok(1), Ok(1))
        );
        let mut fin = Command::default();
        p.stamp(&mut fin, false);
        assert!(fin.u16(REMAINING).is_err(), "no remaining count in a final response");
    }

    #[test]
    fn instances_go_as_stored_else_native_re_encoded_else_not_at_all() {
        let ct = "1.2.840.10008.5.1.4.1.1.2";
        let j2k = "1.2.840.10008.1.2.4.90";
        let implicit = "1.2.840.10008.1.2";
        let acc = vec![
            (1, ct.to_string(), implicit.to_string()),
            (3, ct.to_string(), EXPLICIT_LE.to_string()),
        ];
        assert_eq!(carry(ct, EXPLICIT_LE, &acc), Some(Carry::AsStored(3)));
        assert_eq!(
            carry(ct, "1.2.840.10008.1.2.2", &acc),
            Some(Carry::Transcoded(3, EXPLICIT_LE.into()))
        );
        assert_eq!(carry(ct, j2k, &acc), None, "never decompressed");
        assert_eq!(
            carry("1.2.840.10008.5.1.4.1.1.4", EXPLICIT_LE, &acc),
            None,
            "class not accepted"
        );
        let only_implicit = vec![(5, ct.to_string(), implicit.to_string())];
        assert_eq!(
            carry(ct, EXPLICIT_LE, &only_implicit),
            Some(Carry::Transcoded(5, implicit.into()))
        );
        let pairs = [
            (ct.to_string(), EXPLICIT_LE.to_string()),
            (ct.to_string(), j2k.to_string()),
        ]
        .into_iter()
        .collect();
        let p = proposals(&pairs);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].1.len(), 3, "native: with fallbacks");
        assert_eq!(p[1].1, [j2k], "compressed: as stored only");
    }
}
