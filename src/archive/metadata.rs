//! The cached DICOM JSON of each series (WADO-RS metadata), kept through
//! the blob boundary beside the instances: the only code that knows this
//! object layout.
//!
//! Building the JSON means parsing every instance of the series (the weak
//! spot of other archives: seconds per series, on every request). It is
//! built once and stored as one object per series, `dicomweb/metadata/
//! <series uid>.json.gz`: gzip-compressed JSON (a tenth of the size, and
//! sent as stored to clients that accept gzip), after one line naming the
//! *content* it was built from, a SHA-256 over the series' instance
//! versions ([`content_key`]). A request recomputes that key from the index
//! (one indexed query) and reads one object; when the series has gained or
//! replaced an instance, the key no longer matches and the object is built
//! again and replaced (readers see the old or the new object, never a
//! part). One object per series, overwritten, so nothing is left behind.

use sha2::{Digest, Sha256};

use super::files::{Archive, ArchiveError};
use crate::store::blob::BlobError;

/// Changes whenever the JSON this build writes would differ, so objects
/// written by an older build are rebuilt rather than served.
const FORMAT: &str = "medrelay-dicomweb-metadata/1";

fn key(series_uid: &str) -> Result<String, ArchiveError> {
    if !crate::dicom::meta::is_valid_uid(series_uid) {
        return Err(BlobError::Other("series UID not valid for an object key".into()).into());
    }
    Ok(format!("dicomweb/metadata/{series_uid}.json.gz"))
}

/// The content key of a series: its study, and each instance's SOP
/// Instance UID, version and SHA-256, in the order given.
pub fn content_key<'a>(study_uid: &str, instances: impl IntoIterator<Item = (&'a str, i64, &'a str)>) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update([0]);
    h.update(study_uid.as_bytes());
    for (sop, version, sha) in instances {
        h.update([0]);
        h.update(sop.as_bytes());
        h.update(version.to_le_bytes());
        h.update(sha.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The stored gzip JSON of a series if it was built from `content`.
/// Blocking.
pub fn get(archive: &Archive, series_uid: &str, content: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
    let mut stored = match archive.blobs().get(&key(series_uid)?) {
        Ok(b) => b,
        Err(BlobError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let head = content.len() + 1;
    if stored.len() < head || &stored[..content.len()] != content.as_bytes() || stored[content.len()] != b'\n' {
        return Ok(None);
    }
    stored.drain(..head);
    Ok(Some(stored))
}

/// Stores the gzip JSON of a series built from `content`, replacing any
/// older one. Blocking.
pub fn put(archive: &Archive, series_uid: &str, content: &str, gz: &[u8]) -> Result<(), ArchiveError> {
    let mut b = Vec::with_capacity(content.len() + 1 + gz.len());
    b.extend_from_slice(content.as_bytes());
    b.push(b'\n');
    b.extend_from_slice(gz);
    Ok(archive.blobs().put(&key(series_uid)?, &b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_object_is_served_only_for_its_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("archive");
        let one = content_key("1.2", [("1.2.3.1", 1, "aa")]);
        let two = content_key("1.2", [("1.2.3.1", 1, "aa"), ("1.2.3.2", 1, "bb")]);
        assert_ne!(one, two);
        assert_ne!(one, content_key("1.2", [("1.2.3.1", 2, "aa")]));
        assert_eq!(get(&a, "1.2.3", &one).expect("get"), None);
        put(&a, "1.2.3", &one, b"gz-one").expect("put");
        assert_eq!(get(&a, "1.2.3", &one).expect("get").as_deref(), Some(&b"gz-one"[..]));
        // The series gained an instance: the old object is not served.
        assert_eq!(get(&a, "1.2.3", &two).expect("get"), None);
        put(&a, "1.2.3", &two, b"gz-two").expect("put");
        assert_eq!(get(&a, "1.2.3", &two).expect("get").as_deref(), Some(&b"gz-two"[..]));
        assert!(put(&a, "../x", &two, b"").is_err());
    }
}
