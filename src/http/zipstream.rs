//! A streaming ZIP writer (stored entries, ZIP64 everywhere).
//!
//! A study download can be many GB; the zip is produced while it is sent, so
//! entries use data descriptors (CRC and sizes after the data) and ZIP64
//! fields from the start. Stored, not deflated: pixel data is often already
//! compressed and the CPU is better spent elsewhere. Pure byte builders; the
//! HTTP handler does the file reading.
//!
//! Entry names come from the index (series and SOP Instance UIDs), so they
//! are built only from UIDs that pass the DICOM UID grammar and `start`
//! refuses any name that could leave the folder it is extracted into
//! (zip-slip): absolute, `..`, backslashes, anything but `[A-Za-z0-9._-]`.

use crate::dicom::meta::is_valid_uid;

/// A name `start` refused (a bug upstream, never user data written out).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsafe zip entry name {0:?}")]
pub struct UnsafeName(pub String);

/// True for a relative name of non-empty components made of letters,
/// digits, `.`, `_` and `-`, none of them `.` or `..`.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// The entry of one instance: `SERIES_UID/SOP_UID.dcm`. A UID that fails the
/// grammar (a row that arrived by a path that did not check it) is replaced
/// by a generated name, `series-N` / `instance-M`, numbered in download order.
pub fn instance_entry_name(series_uid: &str, sop_uid: &str, series_no: usize, instance_no: usize) -> String {
    let folder = if is_valid_uid(series_uid) {
        series_uid.to_string()
    } else {
        format!("series-{series_no}")
    };
    let file = if is_valid_uid(sop_uid) {
        sop_uid.to_string()
    } else {
        format!("instance-{instance_no}")
    };
    format!("{folder}/{file}.dcm")
}

pub struct ZipStream {
    offset: u64,
    entries: Vec<Entry>,
    current: Option<Entry>,
}

struct Entry {
    name: String,
    offset: u64,
    crc: crc32fast::Hasher,
    crc_final: u32,
    size: u64,
}

// 1980-01-01 00:00: the files' own dates live in the DICOM headers.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = 0x21;
const VERSION: u16 = 45;
const FLAGS: u16 = 0x0808; // data descriptor + UTF-8 names

impl Default for ZipStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ZipStream {
    pub fn new() -> Self {
        ZipStream {
            offset: 0,
            entries: Vec::new(),
            current: None,
        }
    }

    /// Local header for a new entry. Any previous entry must have been ended.
    pub fn start(&mut self, name: &str) -> Result<Vec<u8>, UnsafeName> {
        if !is_safe_name(name) {
            return Err(UnsafeName(name.to_string()));
        }
        let mut b = Vec::with_capacity(64 + name.len());
        b.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&FLAGS.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // stored
        b.extend_from_slice(&DOS_TIME.to_le_bytes());
        b.extend_from_slice(&DOS_DATE.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // crc in descriptor
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&20u16.to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        self.current = Some(Entry {
            name: name.to_string(),
            offset: self.offset,
            crc: crc32fast::Hasher::new(),
            crc_final: 0,
            size: 0,
        });
        self.offset += b.len() as u64;
        Ok(b)
    }

    pub fn data(&mut self, chunk: &[u8]) {
        if let Some(e) = &mut self.current {
            e.crc.update(chunk);
            e.size += chunk.len() as u64;
        }
        self.offset += chunk.len() as u64;
    }

    /// Data descriptor closing the current entry.
    pub fn end(&mut self) -> Vec<u8> {
        let Some(mut e) = self.current.take() else {
            return Vec::new();
        };
        e.crc_final = std::mem::take(&mut e.crc).finalize();
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        b.extend_from_slice(&e.crc_final.to_le_bytes());
        b.extend_from_slice(&e.size.to_le_bytes());
        b.extend_from_slice(&e.size.to_le_bytes());
        self.offset += b.len() as u64;
        self.entries.push(e);
        b
    }

    /// Central directory and end records.
    pub fn finish(mut self) -> Vec<u8> {
        let mut tail = self.end();
        let cd_start = self.offset + tail.len() as u64;
        let mut cd = Vec::new();
        for e in &self.entries {
            cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            cd.extend_from_slice(&(VERSION | (3 << 8)).to_le_bytes());
            cd.extend_from_slice(&VERSION.to_le_bytes());
            cd.extend_from_slice(&FLAGS.to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes());
            cd.extend_from_slice(&DOS_TIME.to_le_bytes());
            cd.extend_from_slice(&DOS_DATE.to_le_bytes());
            cd.extend_from_slice(&e.crc_final.to_le_bytes());
            cd.extend_from_slice(&u32::MAX.to_le_bytes());
            cd.extend_from_slice(&u32::MAX.to_le_bytes());
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&28u16.to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes()); // comment
            cd.extend_from_slice(&0u16.to_le_bytes()); // disk
            cd.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
            cd.extend_from_slice(&((0o100644u32) << 16).to_le_bytes());
            cd.extend_from_slice(&u32::MAX.to_le_bytes());
            cd.extend_from_slice(e.name.as_bytes());
            cd.extend_from_slice(&1u16.to_le_bytes());
            cd.extend_from_slice(&24u16.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&e.offset.to_le_bytes());
        }
        let n = self.entries.len() as u64;
        let eocd64 = cd_start + cd.len() as u64;
        let mut end = Vec::with_capacity(98);
        end.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        end.extend_from_slice(&44u64.to_le_bytes());
        end.extend_from_slice(&VERSION.to_le_bytes());
        end.extend_from_slice(&VERSION.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&(cd.len() as u64).to_le_bytes());
        end.extend_from_slice(&cd_start.to_le_bytes());
        end.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&eocd64.to_le_bytes());
        end.extend_from_slice(&1u32.to_le_bytes());
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&u16::MAX.to_le_bytes());
        end.extend_from_slice(&u16::MAX.to_le_bytes());
        end.extend_from_slice(&u32::MAX.to_le_bytes());
        end.extend_from_slice(&u32::MAX.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        tail.extend_from_slice(&cd);
        tail.extend_from_slice(&end);
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_never_leave_the_folder() {
        assert_eq!(instance_entry_name("1.2.3", "1.2.3.4", 0, 0), "1.2.3/1.2.3.4.dcm");
        for (series, sop) in [
            ("../../etc", "1.2"),
            ("/abs", "1.2"),
            ("1.2", "../x"),
            ("..\\..\\x", "1.2"),
            ("", ""),
            ("1.2.3/../..", "1.2"),
        ] {
            let n = instance_entry_name(series, sop, 3, 12);
            assert!(is_safe_name(&n), "{series:?}/{sop:?} -> {n:?}");
            assert!(!n.contains(".."), "{n:?}");
        }
        assert_eq!(instance_entry_name("../..", "1.2", 3, 12), "series-3/1.2.dcm");
        let mut z = ZipStream::new();
        for bad in ["../a.dcm", "/a.dcm", "a/../../b", "a\\b", "a//b", "", "a/./b"] {
            assert_eq!(z.start(bad), Err(UnsafeName(bad.to_string())), "{bad:?}");
        }
    }

    /// Python's zipfile is an independent reader; it verifies CRCs on read.
    #[test]
    fn python_zipfile_reads_it() {
        let mut z = ZipStream::new();
        let mut out = Vec::new();
        for (name, data) in [("a/one.dcm", &b"first file"[..]), ("b/two.dcm", &[7u8; 100_000][..])] {
            out.extend(z.start(name).expect("safe name"));
            out.extend_from_slice(data);
            z.data(data);
            out.extend(z.end());
        }
        out.extend(z.finish());
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.zip");
        std::fs::write(&path, &out).expect("write");
        let script = "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(';'.join(f'{i.filename}={len(z.read(i))}' for i in z.infolist()))";
        let o = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .output()
            .expect("python3");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "a/one.dcm=10;b/two.dcm=100000"
        );
    }
}
