//! DIMSE command set codec (PS3.7 §9, §E).
//!
//! Command sets are always Implicit VR Little Endian, group 0000 only, so a
//! hand-written codec is both smaller and stricter than a general dataset
//! parser: it rejects anything that is not a well-formed group-0000 stream,
//! which is exactly the set of inputs the SCP must refuse. Pure functions over
//! byte slices; the association loop feeds it reassembled command fragments.

use std::collections::BTreeMap;

/// Command Field values (PS3.7 Table E.1-1) we speak.
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// Status codes (PS3.7 Annex C, PS3.4 Table B.2-1) the SCP answers with.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Warning: coercion of data elements. Used for a duplicate SOP Instance UID
    /// with different content: both versions are kept and the comment says so.
    pub const WARNING_COERCION: u16 = 0xB000;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const PROCESSING_FAILURE: u16 = 0x0110;
}

/// CommandDataSetType value meaning "no dataset follows".
pub const NO_DATASET: u16 = 0x0101;

pub mod tag {
    pub const GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const OFFENDING_ELEMENT: u16 = 0x0901;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set truncated at offset {0}")]
    Truncated(usize),
    #[error("element ({0:04X},{1:04X}) outside group 0000 in a command set")]
    WrongGroup(u16, u16),
    #[error("element (0000,{0:04X}) appears out of order or twice")]
    OutOfOrder(u16),
    #[error("required element (0000,{0:04X}) missing")]
    Missing(u16),
    #[error("element (0000,{0:04X}) has length {1}, expected {2}")]
    BadLength(u16, usize, usize),
    #[error("element (0000,{0:04X}) is not valid text")]
    BadText(u16),
}

/// A decoded command set: raw values keyed by element number, with typed
/// accessors. Keeping the raw map lets us answer any command (even ones we do
/// not implement) with a correct MessageIDBeingRespondedTo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    elements: BTreeMap<u16, Vec<u8>>,
}

impl Command {
    /// Memory: at most 8 × the input + 1 KiB (a map entry per 8-byte
    /// element header; checked by the `dimse` fuzz target).
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut elements = BTreeMap::new();
        let mut pos = 0usize;
        let mut last: Option<u16> = None;
        while pos < bytes.len() {
            let header = bytes.get(pos..pos + 8).ok_or(CommandError::Truncated(pos))?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let elem = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0 {
                return Err(CommandError::WrongGroup(group, elem));
            }
            if last.is_some_and(|l| l >= elem) {
                return Err(CommandError::OutOfOrder(elem));
            }
            last = Some(elem);
            let start = pos + 8;
            let value = bytes
                .get(start..start.checked_add(len).ok_or(CommandError::Truncated(pos))?)
                .ok_or(CommandError::Truncated(pos))?;
            // The group length is recomputed on encode; keeping it would make
            // two equal commands compare unequal.
            if elem != tag::GROUP_LENGTH {
                elements.insert(elem, value.to_vec());
            }
            pos = start + len;
        }
        let cmd = Command { elements };
        // Every command carries these two; fail early rather than deep in a handler.
        cmd.command_field()?;
        cmd.u16(tag::COMMAND_DATA_SET_TYPE)?;
        Ok(cmd)
    }

    /// Encode with a correct group length first, as PS3.7 §E.1 requires.
    pub fn encode(&self) -> Vec<u8> {
        let body_len: usize = self
            .elements
            .iter()
            .filter(|(k, _)| **k != tag::GROUP_LENGTH)
            .map(|(_, v)| 8 + v.len())
            .sum();
        let mut out = Vec::with_capacity(12 + body_len);
        put_element(&mut out, tag::GROUP_LENGTH, &(body_len as u32).to_le_bytes());
        for (k, v) in &self.elements {
            if *k != tag::GROUP_LENGTH {
                put_element(&mut out, *k, v);
            }
        }
        out
    }

    pub fn set_u16(&mut self, elem: u16, v: u16) -> &mut Self {
        self.elements.insert(elem, v.to_le_bytes().to_vec());
        self
    }

    /// UIDs are padded with NUL and other text with a space to even length (PS3.5 §6.2).
    pub fn set_str(&mut self, elem: u16, v: &str) -> &mut Self {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            let is_uid = matches!(elem, tag::AFFECTED_SOP_CLASS_UID | tag::AFFECTED_SOP_INSTANCE_UID);
            b.push(if is_uid { 0 } else { b' ' });
        }
        self.elements.insert(elem, b);
        self
    }

    /// Sets an element from its encoded value (e.g. an AT tag list).
    pub fn set_raw(&mut self, elem: u16, value: Vec<u8>) -> &mut Self {
        self.elements.insert(elem, value);
        self
    }

    pub fn get_raw(&self, elem: u16) -> Option<&[u8]> {
        self.elements.get(&elem).map(Vec::as_slice)
    }

    pub fn u16(&self, elem: u16) -> Result<u16, CommandError> {
        let v = self.elements.get(&elem).ok_or(CommandError::Missing(elem))?;
        match v.as_slice() {
            [a, b] => Ok(u16::from_le_bytes([*a, *b])),
            other => Err(CommandError::BadLength(elem, other.len(), 2)),
        }
    }

    pub fn str(&self, elem: u16) -> Result<&str, CommandError> {
        let v = self.elements.get(&elem).ok_or(CommandError::Missing(elem))?;
        let s = std::str::from_utf8(v).map_err(|_| CommandError::BadText(elem))?;
        Ok(s.trim_end_matches(['\0', ' ']))
    }

    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16(tag::COMMAND_FIELD)
    }

    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16(tag::MESSAGE_ID)
    }

    pub fn has_dataset(&self) -> bool {
        self.u16(tag::COMMAND_DATA_SET_TYPE)
            .map(|v| v != NO_DATASET)
            .unwrap_or(false)
    }

    pub fn c_echo_rq(message_id: u16) -> Command {
        let mut c = Command::default();
        c.set_str(tag::AFFECTED_SOP_CLASS_UID, VERIFICATION_SOP_CLASS)
            .set_u16(tag::COMMAND_FIELD, field::C_ECHO_RQ)
            .set_u16(tag::MESSAGE_ID, message_id)
            .set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATASET);
        c
    }

    pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Command {
        let mut c = Command::default();
        c.set_str(tag::AFFECTED_SOP_CLASS_UID, sop_class)
            .set_u16(tag::COMMAND_FIELD, field::C_STORE_RQ)
            .set_u16(tag::MESSAGE_ID, message_id)
            .set_u16(tag::PRIORITY, 0)
            .set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000)
            .set_str(tag::AFFECTED_SOP_INSTANCE_UID, sop_instance);
        c
    }

    /// Build the response to `rq`: same SOP class/instance, the response
    /// command field (request | 0x8000), and the status (+ optional comment,
    /// which PS3.7 limits to 64 characters).
    pub fn response_to(rq: &Command, status: u16, comment: Option<&str>) -> Command {
        let mut c = Command::default();
        if let Some(v) = rq.get_raw(tag::AFFECTED_SOP_CLASS_UID) {
            c.elements.insert(tag::AFFECTED_SOP_CLASS_UID, v.to_vec());
        }
        let field = rq.command_field().unwrap_or(0) | 0x8000;
        c.set_u16(tag::COMMAND_FIELD, field)
            .set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id().unwrap_or(0))
            .set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATASET)
            .set_u16(tag::STATUS, status);
        if let Some(v) = rq.get_raw(tag::AFFECTED_SOP_INSTANCE_UID) {
            c.elements.insert(tag::AFFECTED_SOP_INSTANCE_UID, v.to_vec());
        }
        if let Some(text) = comment {
            let clipped: String = text
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .take(64)
                .collect();
            c.set_str(tag::ERROR_COMMENT, &clipped);
        }
        c
    }
}

pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

fn put_element(out: &mut Vec<u8>, elem: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// Status classes as PS3.7 Annex C groups them.
pub fn is_success_or_warning(status: u16) -> bool {
    status == status::SUCCESS || status == 0x0001 || (status & 0xF000) == 0xB000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A C-ECHO-RQ as DCMTK's echoscu sends it (captured byte layout).
    const ECHO_RQ: &[u8] = &[
        0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, // group length 56
        0x00, 0x00, 0x02, 0x00, 0x12, 0x00, 0x00, 0x00, b'1', b'.', b'2', b'.', b'8', b'4', b'0', b'.', b'1', b'0',
        b'0', b'0', b'8', b'.', b'1', b'.', b'1', 0x00, // sop class
        0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x30, 0x00, // command field
        0x00, 0x00, 0x10, 0x01, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, // message id 1
        0x00, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, // no dataset
    ];

    #[test]
    fn decodes_dcmtk_echo() {
        let c = Command::decode(ECHO_RQ).expect("decode");
        assert_eq!(c.command_field(), Ok(field::C_ECHO_RQ));
        assert_eq!(c.message_id(), Ok(1));
        assert_eq!(c.str(tag::AFFECTED_SOP_CLASS_UID), Ok(VERIFICATION_SOP_CLASS));
        assert!(!c.has_dataset());
    }

    #[test]
    fn encode_matches_wire_layout_and_round_trips() {
        let c = Command::c_echo_rq(1);
        assert_eq!(c.encode(), ECHO_RQ);
        assert_eq!(Command::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn store_response_echoes_ids_and_clips_comment() {
        let rq = Command::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5");
        assert!(rq.has_dataset());
        let long = "x".repeat(200);
        let rsp = Command::response_to(&rq, status::CANNOT_UNDERSTAND, Some(&long));
        let back = Command::decode(&rsp.encode()).expect("decode");
        assert_eq!(back.command_field(), Ok(field::C_STORE_RSP));
        assert_eq!(back.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO), Ok(7));
        assert_eq!(back.u16(tag::STATUS), Ok(0xC000));
        assert_eq!(back.str(tag::AFFECTED_SOP_INSTANCE_UID), Ok("1.2.3.4.5"));
        assert_eq!(back.str(tag::ERROR_COMMENT).map(str::len), Ok(64));
        // odd-length UID padded with NUL, to even length
        assert_eq!(back.get_raw(tag::AFFECTED_SOP_INSTANCE_UID).map(<[u8]>::len), Some(10));
    }

    #[test]
    fn rejects_malformed_command_sets() {
        assert_eq!(
            Command::decode(&ECHO_RQ[..ECHO_RQ.len() - 1]),
            Err(CommandError::Truncated(58))
        );
        let mut wrong_group = ECHO_RQ.to_vec();
        wrong_group[12] = 0x08;
        assert!(matches!(
            Command::decode(&wrong_group),
            Err(CommandError::WrongGroup(8, 2))
        ));
        // a length that overflows the buffer must not panic
        let mut huge = ECHO_RQ.to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Command::decode(&huge), Err(CommandError::Truncated(_))));
        // missing command field
        let only_len = &ECHO_RQ[..12];
        assert_eq!(
            Command::decode(only_len),
            Err(CommandError::Missing(tag::COMMAND_FIELD))
        );
        // duplicated element
        let mut dup = ECHO_RQ.to_vec();
        dup.extend_from_slice(&ECHO_RQ[58..68]);
        assert!(matches!(Command::decode(&dup), Err(CommandError::OutOfOrder(_))));
    }

    #[test]
    fn status_classes() {
        assert!(is_success_or_warning(0x0000));
        assert!(is_success_or_warning(0xB000));
        assert!(!is_success_or_warning(0xA700));
        assert!(!is_success_or_warning(0xC000));
    }
}
