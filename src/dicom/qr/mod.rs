//! Query/Retrieve (PS3.4 Annex C): the information models and levels, and
//! the matching of query keys ([`matching`]).
//!
//! Built bottom-up as pure pieces with unit tests, so that the C-FIND /
//! C-MOVE / C-GET adapter in the SCP, the index queries (shared with
//! QIDO-RS) and the SCU all rest on one validated reading of a query.
//! Nothing here reads a socket, a file or the clock.

pub mod find;
pub mod identifier;
pub mod keys;
pub mod matching;
pub mod retrieve;

/// Patient Root and Study Root, FIND / MOVE / GET (PS3.4 C.6).
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// The information model a SOP class queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    PatientRoot,
    StudyRoot,
}

/// What a SOP class does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Find,
    Move,
    Get,
}

/// Every Q/R SOP class medrelay provides (offered at negotiation).
pub const ALL_SOP_CLASSES: [&str; 6] = [
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    PATIENT_ROOT_GET,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    STUDY_ROOT_GET,
];

/// The model and operation of a Q/R SOP class; None for any other class.
pub fn sop_class(uid: &str) -> Option<(Model, Op)> {
    Some(match uid {
        PATIENT_ROOT_FIND => (Model::PatientRoot, Op::Find),
        PATIENT_ROOT_MOVE => (Model::PatientRoot, Op::Move),
        PATIENT_ROOT_GET => (Model::PatientRoot, Op::Get),
        STUDY_ROOT_FIND => (Model::StudyRoot, Op::Find),
        STUDY_ROOT_MOVE => (Model::StudyRoot, Op::Move),
        STUDY_ROOT_GET => (Model::StudyRoot, Op::Get),
        _ => return None,
    })
}

/// Query/Retrieve Level (0008,0052), top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    /// The level a request names, if the model has it (Study Root has no
    /// PATIENT level).
    pub fn parse(value: &str, model: Model) -> Option<Level> {
        let level = match value.trim_matches(|c: char| c == ' ' || c == '\0') {
            "PATIENT" => Level::Patient,
            "STUDY" => Level::Study,
            "SERIES" => Level::Series,
            "IMAGE" => Level::Image,
            _ => return None,
        };
        (model == Model::PatientRoot || level != Level::Patient).then_some(level)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_levels() {
        assert_eq!(sop_class(STUDY_ROOT_GET), Some((Model::StudyRoot, Op::Get)));
        assert_eq!(sop_class(PATIENT_ROOT_FIND), Some((Model::PatientRoot, Op::Find)));
        assert_eq!(sop_class("1.2.840.10008.5.1.4.1.1.2"), None, "CT storage is not Q/R");
        assert_eq!(Level::parse("STUDY ", Model::StudyRoot), Some(Level::Study));
        assert_eq!(
            Level::parse("PATIENT", Model::StudyRoot),
            None,
            "Study Root has no PATIENT level"
        );
        assert_eq!(Level::parse("PATIENT", Model::PatientRoot), Some(Level::Patient));
        assert_eq!(Level::parse("FRAME", Model::PatientRoot), None);
        assert!(Level::Patient < Level::Image);
        assert_eq!(Level::Series.as_str(), "SERIES");
    }
}
