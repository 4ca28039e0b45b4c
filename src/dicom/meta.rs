//! DICOM Part 10 file meta information (PS3.10 §7.1), written by hand.
//!
//! The SCP prepends this header to the dataset bytes exactly as received, so
//! the stored file is a valid Part 10 file without re-encoding anything.

/// Our implementation class UID (a UUID-derived 2.25 UID, fixed for the product).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.74121706376061599247259596857250398414";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("MEDRELAY_", env!("CARGO_PKG_VERSION"));

fn put(out: &mut Vec<u8>, elem: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
    let padded_len = value.len() + value.len() % 2;
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(padded_len as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(padded_len as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// Preamble, "DICM" and the group-0002 elements. UIDs and AE titles come from
/// the association and the command, which the caller has already validated
/// (UID charset and length), so they cannot smuggle structure into the header.
pub fn file_meta(sop_class: &str, sop_instance: &str, transfer_syntax: &str, source_ae: &str) -> Vec<u8> {
    let mut group = Vec::with_capacity(256);
    put(&mut group, 0x0001, b"OB", &[0x00, 0x01], 0);
    put(&mut group, 0x0002, b"UI", sop_class.as_bytes(), 0);
    put(&mut group, 0x0003, b"UI", sop_instance.as_bytes(), 0);
    put(&mut group, 0x0010, b"UI", transfer_syntax.as_bytes(), 0);
    put(&mut group, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.as_bytes(), 0);
    put(&mut group, 0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.as_bytes(), b' ');
    let ae: String = source_ae.trim().chars().take(16).collect();
    if !ae.is_empty() {
        put(&mut group, 0x0016, b"AE", ae.as_bytes(), b' ');
    }
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    put(&mut out, 0x0000, b"UL", &(group.len() as u32).to_le_bytes(), 0);
    out.extend_from_slice(&group);
    out
}

/// A UID we accept at every boundary (DIMSE, relay manifests, API paths):
/// 1 to 64 characters, digits and dots, no empty component. This is what
/// makes a UID safe as a file or folder name, in a header and in a query:
/// no `/`, no `..`, nothing but digits between the dots.
///
/// PS3.5 §9.1 also forbids a component with a leading zero (`1.02`), but
/// real devices send them (Varian writes `1.2.246.352.91.0000217...`) and
/// DCMTK, Orthanc and pydicom accept them. Such a UID is unambiguous (it is
/// compared as text, never as numbers), so it is accepted and stored as
/// received; UIDs we generate ourselves are conformant.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_readable_by_dicom_object() {
        let mut bytes = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1", "CT01");
        // followed by a tiny explicit-LE dataset: SOP Instance UID
        bytes.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 10, 0]);
        bytes.extend_from_slice(b"1.2.3.4.5\0");
        let obj = dicom_object::OpenFileOptions::new()
            .from_reader(&bytes[128..])
            .expect("parse our own meta");
        assert_eq!(obj.meta().transfer_syntax(), "1.2.840.10008.1.2.1");
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.3.4.5");
        assert_eq!(obj.meta().source_application_entity_title(), Some("CT01"));
        assert_eq!(obj.meta().implementation_class_uid(), IMPLEMENTATION_CLASS_UID);
    }

    #[test]
    fn uid_validation() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid("2.25.0"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1..2"));
        // Leading zeros: not conformant, but unambiguous and sent by real
        // devices (a Varian RT Structure Set).
        assert!(is_valid_uid("1.02"));
        assert!(is_valid_uid("1.2.246.352.91.0000217.20240101.001"));
        assert!(is_valid_uid(&"1".repeat(64)));
        assert!(!is_valid_uid(&"1".repeat(65)));
        for bad in [
            "1.2/../x", "..", "...", ".", "1.", ".1", "../1", "1.2.x", "1.2 ", " 1.2", "1.2\0", "1.2\n", "-1.2", "+1",
        ] {
            assert!(!is_valid_uid(bad), "{bad:?}");
        }
        assert!(!is_valid_uid(&"1.".repeat(40)));
    }
}
