//! Application Entity titles (PS3.5 §6.2, VR AE): the one rule that the
//! configuration checks at start and the SCU checks before dialling.
//!
//! A leaf module, so that `config` and `dicom::scu` both use it without
//! depending on each other.

/// At most 16 ASCII characters, no control character
/// and no backslash (the value separator), not only spaces.
pub fn valid_ae(ae: &str) -> bool {
    let t = ae.trim();
    !t.is_empty() && ae.len() <= 16 && ae.chars().all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\')
}

#[cfg(test)]
mod tests {
    use super::valid_ae;

    #[test]
    fn ae_titles_follow_the_ae_value_representation() {
        for ok in ["MEDRELAY", "CT_1", " PACS ", "A-B.C@D", "SIXTEEN_CHARS_AE"] {
            assert!(valid_ae(ok), "{ok:?}");
        }
        for bad in ["", "   ", "SEVENTEEN_CHARS_A", "A\\B", "A\tB", "\u{4e2d}\u{6587}"] {
            assert!(!valid_ae(bad), "{bad:?}");
        }
    }
}
