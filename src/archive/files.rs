//! The archive's blob service: instance files streamed to a spool,
//! hashed, made durable under a content-addressed key, and their derived
//! images (previews), all through the blob boundary (`store::blob`: local
//! files by default, or S3-compatible object storage).
//!
//! Content addressing (`instances/ab/<sha256>.dcm`, hash over transfer
//! syntax + dataset bytes) makes a resent identical instance a no-op and lets
//! two different versions of one SOP Instance UID live side by side without a
//! naming scheme. The index stores that relative path; the blob key is the
//! path under the storage root (`<data_dir>/instances` by default), so an
//! existing archive keeps working. Everything here is blocking I/O: callers
//! run it on `spawn_blocking` threads, never on the async runtime.

use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::store::blob::staging::{Leftover, Staging};
use crate::store::blob::{self, BlobError, BlobWriter, Blobs, ReadSeek, StorageUrl};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("out of disk space")]
    DiskFull,
    #[error("free disk space {free} bytes is below the configured reserve {reserve}")]
    BelowReserve { free: u64, reserve: u64 },
    #[error("instance storage unavailable: {0}")]
    Unavailable(String),
    #[error("archive I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("archive storage: {0}")]
    Storage(BlobError),
}

impl From<BlobError> for ArchiveError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Full => ArchiveError::DiskFull,
            BlobError::Unavailable(m) => ArchiveError::Unavailable(m),
            BlobError::Io(e) => ArchiveError::Io(e),
            other => ArchiveError::Storage(other),
        }
    }
}

impl ArchiveError {
    /// The storage cannot take data now (full, below the reserve, or
    /// unreachable): the SCP answers 0xA7xx and the sender retries later.
    pub fn is_resource_problem(&self) -> bool {
        matches!(
            self,
            ArchiveError::DiskFull | ArchiveError::BelowReserve { .. } | ArchiveError::Unavailable(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        match self {
            ArchiveError::Storage(BlobError::NotFound(_)) => true,
            ArchiveError::Io(e) => e.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Archive {
    /// The data directory: the spool of objects being received and the
    /// index live here, so the free-space reserve is measured here.
    root: PathBuf,
    blobs: Arc<dyn Blobs>,
    min_free_bytes: u64,
    holds: Arc<Holds>,
    /// Local files only: where receptions are written once started, for a
    /// single sync before the acknowledgement (`store::blob::staging`).
    staging: Option<Staging>,
}

/// Content-addressed files are shared by every instance with the same bytes,
/// whoever sent them. So a commit whose index write failed (another clinic's
/// UIDs, a full disk) may take its file back only if no other commit of the
/// same bytes is in flight and none was indexed meanwhile: clinic B racing a
/// resend of clinic A's exact file must not delete the file A's row points
/// to. Every commit holds its hash from before it looks for an existing file
/// until `settle` says whether it was indexed; the last one out decides.
#[derive(Debug, Default)]
struct Holds(Mutex<std::collections::HashMap<String, Hold>>);

#[derive(Debug, Default)]
struct Hold {
    /// Commits of these bytes not yet settled.
    pending: u32,
    /// One of them put the file in place (it was not there before).
    created: bool,
    /// One of them was indexed: the file is referenced.
    kept: bool,
}

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Hold>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, sha: &str) {
        self.lock().entry(sha.to_string()).or_default().pending += 1;
    }

    fn created(&self, sha: &str) {
        if let Some(h) = self.lock().get_mut(sha) {
            h.created = true;
        }
    }

    /// Ends one hold; true when the file should be removed now (the last
    /// hold ended, this process put the file there and nobody indexed it).
    fn release(&self, sha: &str, indexed: bool) -> bool {
        let mut m = self.lock();
        let Some(h) = m.get_mut(sha) else {
            return false;
        };
        h.pending = h.pending.saturating_sub(1);
        h.kept |= indexed;
        if h.pending > 0 {
            return false;
        }
        let remove = h.created && !h.kept;
        m.remove(sha);
        remove
    }
}

/// An instance being received. Dropping it without `finish` removes it.
pub struct TmpInstance {
    writer: Option<Box<dyn BlobWriter>>,
    hasher: Sha256,
    size: u64,
}

/// A fully received instance with its hash, ready to be committed (the hash
/// and final key are known before it is durable, so the index work can
/// overlap the fsync or the upload).
pub struct Written {
    writer: Option<Box<dyn BlobWriter>>,
    pub sha256: String,
    pub size: u64,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Committed {
    /// Path relative to the data directory, as stored in the index.
    pub rel_path: String,
    pub sha256: String,
    pub size: u64,
    /// False when an identical file was already there (a resend).
    pub created: bool,
    /// The staging file holding the bytes until they are linked under
    /// `rel_path`, which happens once the index write is settled.
    pub staged: Option<PathBuf>,
}

/// Makes everything this process creates from now on private to its user
/// (umask 077: files 0600, directories 0700) and the data directory itself
/// 0700, created if missing. The data directory holds patient data (instance
/// files, previews, the index, staged relay bundles, the SR spool) and the
/// first admin's password; SQLite, the renderer and the relay create files
/// there too, so the process-wide mask covers all of them, not only the
/// files opened here. Called once at startup, before any file is written.
pub fn make_private(data_dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    fs::create_dir_all(data_dir)?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
}

/// The index's paths start with this; the blob key is the rest.
const INDEX_PREFIX: &str = "instances/";

/// The blob key of an index path (`instances/ab/<sha>.dcm` → `ab/<sha>.dcm`).
fn key_of(rel_path: &str) -> &str {
    rel_path.strip_prefix(INDEX_PREFIX).unwrap_or(rel_path)
}

/// The key of a derived image of an instance: beside it, same stem
/// (`ab/<sha>.thumb.jpg`).
fn derived_key(rel_path: &str, kind: &str) -> String {
    let key = key_of(rel_path);
    let stem = key.strip_suffix(".dcm").unwrap_or(key);
    format!("{stem}.{kind}.jpg")
}

impl Archive {
    /// The embedded default: files under `<root>/instances`.
    pub fn open(root: &Path, min_free_bytes: u64) -> Result<Archive, ArchiveError> {
        Archive::open_url(root, &StorageUrl::File(root.join("instances")), min_free_bytes)
    }

    /// The archive of data directory `root` on the storage `url`.
    pub fn open_url(root: &Path, url: &StorageUrl, min_free_bytes: u64) -> Result<Archive, ArchiveError> {
        fs::create_dir_all(root.join("tmp"))?;
        let (blobs, staging): (Arc<dyn Blobs>, _) = match url {
            StorageUrl::File(dir) => {
                let files = blob::file::FileBlobs::open(dir, &root.join("tmp"))?;
                let staging = files.staging().clone();
                (Arc::new(files), Some(staging))
            }
            other => (other.open(&root.join("tmp"))?, None),
        };
        Ok(Archive {
            root: root.to_path_buf(),
            blobs,
            min_free_bytes,
            holds: Arc::default(),
            staging,
        })
    }

    /// Staged instances left by a previous run (local files; see
    /// `store::blob::staging`). Run before [`Archive::start_staging`].
    pub fn staging_leftovers(&self) -> io::Result<Vec<Leftover>> {
        match &self.staging {
            Some(s) => s.leftovers(|sha| key_of(&Self::rel_path(sha)).to_string()),
            None => Ok(Vec::new()),
        }
    }

    /// Place the leftovers an index row refers to, remove the others:
    /// (placed, removed).
    pub fn recover_staged(
        &self,
        leftovers: Vec<Leftover>,
        keep: impl Fn(&Leftover) -> bool,
    ) -> io::Result<(usize, usize)> {
        match &self.staging {
            Some(s) => s.recover(leftovers, keep),
            None => Ok((0, 0)),
        }
    }

    /// From now on receptions are staged when a ready file is available.
    pub fn start_staging(&self) -> io::Result<()> {
        match &self.staging {
            Some(s) => s.start(),
            None => Ok(()),
        }
    }

    /// Staged instances not linked under their key yet.
    pub fn unplaced(&self) -> usize {
        self.staging.as_ref().map_or(0, Staging::unplaced)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store under the archive (migration, tests).
    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        &self.blobs
    }

    /// Remove leftovers of receptions interrupted by a crash. They were never
    /// acknowledged, so the sender still owns the data.
    pub fn clean_tmp(&self) -> io::Result<usize> {
        self.blobs.clean_spool()
    }

    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Refuse early when the disk is nearly full, before any byte is written,
    /// so the index and other services keep room to work.
    pub fn check_reserve(&self) -> Result<(), ArchiveError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let free = self.free_bytes()?;
        if free < self.min_free_bytes {
            return Err(ArchiveError::BelowReserve {
                free,
                reserve: self.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Start an instance. `header` (the Part 10 meta) is written but not
    /// hashed; the hash covers `hash_prefix` (the transfer syntax) and the dataset.
    pub fn begin(&self, header: &[u8], hash_prefix: &[u8]) -> Result<TmpInstance, ArchiveError> {
        let mut writer = self.blobs.create()?;
        writer.write(header)?;
        let mut hasher = Sha256::new();
        hasher.update(hash_prefix);
        hasher.update([0u8]);
        Ok(TmpInstance {
            writer: Some(writer),
            hasher,
            size: 0,
        })
    }

    fn rel_path(sha256: &str) -> String {
        format!("{INDEX_PREFIX}{}/{sha256}.dcm", &sha256[0..2])
    }

    /// Where `w` will live once committed.
    pub fn planned(&self, w: &Written) -> Committed {
        Committed {
            rel_path: Self::rel_path(&w.sha256),
            sha256: w.sha256.clone(),
            size: w.size,
            created: true,
            staged: None,
        }
    }

    /// Make a received instance durable under its content address (local
    /// files: fdatasync, rename, directory fsync; S3: the upload). Durable
    /// when this returns. The caller must `settle` the result once its index
    /// write has ended.
    pub fn commit(&self, mut w: Written) -> Result<Committed, ArchiveError> {
        let rel_path = Self::rel_path(&w.sha256);
        let writer = w
            .writer
            .take()
            .ok_or_else(|| ArchiveError::Io(io::Error::other("instance already committed")))?;
        self.holds.take(&w.sha256);
        let staged = writer.staged().then(|| writer.spool_path().to_path_buf());
        match writer.commit(key_of(&rel_path)) {
            Ok(created) => {
                if created {
                    self.holds.created(&w.sha256);
                }
                Ok(Committed {
                    rel_path,
                    sha256: w.sha256.clone(),
                    size: w.size,
                    created,
                    staged: staged.filter(|_| created),
                })
            }
            Err(e) => {
                let _ = self.holds.release(&w.sha256, false);
                Err(e.into())
            }
        }
    }

    /// Moves a file staged on local disk (the relay hub's verified bundles)
    /// into its content-addressed place durably, as `commit` does for a
    /// received one; None when the staged file is gone. The caller
    /// `settle`s the result.
    pub fn place(&self, staged: &Path, sha256: &str) -> io::Result<Option<Committed>> {
        let rel_path = Self::rel_path(sha256);
        let key = key_of(&rel_path).to_string();
        let key = key.as_str();
        self.holds.take(sha256);
        let created = match self.blobs.head(key).map_err(BlobError::into_io)? {
            Some(_) => {
                let _ = fs::remove_file(staged);
                false
            }
            None if staged.exists() => match self.blobs.put_file(key, staged) {
                Ok(created) => {
                    if created {
                        self.holds.created(sha256);
                    }
                    created
                }
                Err(e) => {
                    let _ = self.holds.release(sha256, false);
                    return Err(e.into_io());
                }
            },
            None => {
                let _ = self.holds.release(sha256, false);
                return Ok(None);
            }
        };
        let committed = Committed {
            rel_path,
            sha256: sha256.to_string(),
            size: 0,
            created,
            staged: None,
        };
        match self.blobs.head(key) {
            Ok(Some(size)) => Ok(Some(Committed { size, ..committed })),
            Ok(None) => {
                self.settle(&committed, false);
                Err(io::Error::new(io::ErrorKind::NotFound, "placed object vanished"))
            }
            Err(e) => {
                self.settle(&committed, false);
                Err(e.into_io())
            }
        }
    }

    /// Ends a commit's hold once its index write has ended: `keep` says
    /// whether the file must stay (a row now refers to it, or a retry will
    /// index it). A file nobody keeps is removed when the last commit of the
    /// same bytes ends, so no unindexed file is kept and no indexed one lost.
    pub fn settle(&self, c: &Committed, keep: bool) {
        if let (Some(staging), Some(staged)) = (&self.staging, &c.staged) {
            staging.settle(staged, keep);
        }
        if self.holds.release(&c.sha256, keep) {
            let _ = self.blobs.delete(key_of(&c.rel_path));
        }
    }

    /// Size in bytes of a stored instance (header included).
    pub fn size(&self, rel_path: &str) -> Result<u64, ArchiveError> {
        self.blobs
            .head(key_of(rel_path))?
            .ok_or_else(|| BlobError::NotFound(rel_path.to_string()).into())
    }

    /// A whole stored instance (the relay sends bundles of a few MB).
    pub fn read(&self, rel_path: &str) -> Result<Vec<u8>, ArchiveError> {
        Ok(self.blobs.get(key_of(rel_path))?)
    }

    /// Bytes `range` of a stored instance, clamped to its size `len`.
    pub fn read_range(&self, rel_path: &str, range: Range<u64>, len: u64) -> Result<Vec<u8>, ArchiveError> {
        let range = range.start.min(len)..range.end.min(len);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.blobs.get_range(key_of(rel_path), range)?)
    }

    /// A `Read + Seek` view of a stored instance that reads only what is
    /// asked for (ranged reads on S3).
    pub fn reader(&self, rel_path: &str) -> Result<Box<dyn ReadSeek>, ArchiveError> {
        Ok(blob::open_reader(&self.blobs, key_of(rel_path))?)
    }

    /// A stored instance as the decoders take it.
    pub fn input(&self, rel_path: &str) -> BlobInput {
        BlobInput {
            archive: self.clone(),
            rel_path: rel_path.to_string(),
        }
    }

    /// Store a derived image (`kind`: thumb, preview, mid, cine) of an instance.
    pub fn put_derived(&self, rel_path: &str, kind: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        Ok(self.blobs.put(&derived_key(rel_path, kind), bytes)?)
    }

    /// A derived image of an instance, None when there is none (yet).
    pub fn derived(&self, rel_path: &str, kind: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self.blobs.get(&derived_key(rel_path, kind)) {
            Ok(b) => Ok(Some(b)),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Move a derived image staged on local disk beside its instance; true
    /// when it is there afterwards.
    pub fn place_derived(&self, rel_path: &str, kind: &str, staged: &Path) -> bool {
        let key = derived_key(rel_path, kind);
        match self.blobs.put_file(&key, staged) {
            Ok(_) => true,
            Err(_) => matches!(self.blobs.head(&key), Ok(Some(_))),
        }
    }
}

/// A stored instance opened through the blob boundary, for the decoders.
#[derive(Clone)]
pub struct BlobInput {
    archive: Archive,
    rel_path: String,
}

impl crate::imaging::decode::Input for BlobInput {
    fn open(&self) -> io::Result<Box<dyn ReadSeek + '_>> {
        self.archive.reader(&self.rel_path).map_err(|e| match e {
            ArchiveError::Io(e) => e,
            ArchiveError::Storage(b) => b.into_io(),
            other => io::Error::other(other.to_string()),
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.archive.size(&self.rel_path).map_err(|e| match e {
            ArchiveError::Io(e) => e,
            ArchiveError::Storage(b) => b.into_io(),
            other => io::Error::other(other.to_string()),
        })
    }
}

impl TmpInstance {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ArchiveError::Io(io::Error::other("file closed")))?;
        writer.write(chunk)?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// The local spool file holding what was received so far.
    pub fn path(&self) -> &Path {
        self.writer.as_ref().map(|w| w.spool_path()).unwrap_or(Path::new(""))
    }

    /// Bytes of dataset written so far (header excluded).
    pub fn dataset_len(&self) -> u64 {
        self.size
    }

    /// Close the data with its hash; `Archive::commit` makes it durable.
    pub fn finish(mut self) -> Result<Written, ArchiveError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| ArchiveError::Io(io::Error::other("file closed")))?;
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(Written {
            writer: Some(writer),
            sha256,
            size: self.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_content_is_stored_once_and_tmp_is_cleaned() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("open");
        let mut commits = Vec::new();
        for _ in 0..2 {
            let mut t = a.begin(b"HDR", b"1.2.840.10008.1.2.1").expect("begin");
            t.write(b"dataset").expect("write");
            commits.push(a.commit(t.finish().expect("finish")).expect("commit"));
        }
        assert!(commits[0].created);
        assert!(!commits[1].created);
        assert_eq!(commits[0].rel_path, commits[1].rel_path);
        assert_eq!(a.read(&commits[0].rel_path).expect("read"), b"HDRdataset");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("ls").count(), 0);
        // different transfer syntax, same bytes: a different version
        let mut t = a.begin(b"HDR", b"1.2.840.10008.1.2").expect("begin");
        t.write(b"dataset").expect("write");
        let c = a.commit(t.finish().expect("finish")).expect("commit");
        assert_ne!(c.sha256, commits[0].sha256);
    }

    fn commit_bytes(a: &Archive, bytes: &[u8]) -> Committed {
        let mut t = a.begin(b"HDR", b"1.2.840.10008.1.2.1").expect("begin");
        t.write(bytes).expect("write");
        a.commit(t.finish().expect("finish")).expect("commit")
    }

    #[test]
    fn a_refused_commit_never_removes_a_file_another_commit_indexed() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("open");
        // B puts the file in place, A finds it there; A is indexed, then B
        // is refused: the file stays, whichever order the two settle in.
        let b = commit_bytes(&a, b"same");
        let c = commit_bytes(&a, b"same");
        assert!(b.created && !c.created);
        a.settle(&c, true);
        a.settle(&b, false);
        assert!(a.size(&b.rel_path).is_ok());
        // Refused first, indexed later: still kept.
        let b = commit_bytes(&a, b"other");
        let c = commit_bytes(&a, b"other");
        a.settle(&b, false);
        assert!(
            a.size(&b.rel_path).is_ok(),
            "another commit of these bytes is in flight"
        );
        a.settle(&c, true);
        assert!(a.size(&b.rel_path).is_ok());
        // Nobody indexed it: the last one out removes it.
        let b = commit_bytes(&a, b"lonely");
        let c = commit_bytes(&a, b"lonely");
        a.settle(&b, false);
        a.settle(&c, false);
        assert!(a.size(&b.rel_path).is_err());
        // A file that was there before (indexed earlier) is never removed.
        let first = commit_bytes(&a, b"old");
        a.settle(&first, true);
        let again = commit_bytes(&a, b"old");
        assert!(!again.created);
        a.settle(&again, false);
        assert!(a.size(&first.rel_path).is_ok());
        assert!(a.holds.lock().is_empty());
    }

    #[test]
    fn abandoned_reception_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("open");
        let mut t = a.begin(b"HDR", b"ts").expect("begin");
        t.write(b"partial").expect("write");
        drop(t);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("ls").count(), 0);
        assert_eq!(a.clean_tmp().expect("clean"), 0);
    }

    fn staged(a: &Archive, sop: &str, body: &[u8]) -> Committed {
        let ts = "1.2.840.10008.1.2.1";
        let header = crate::dicom::meta::file_meta("1.2.840.10008.5.1.4.1.1.7", sop, ts, "CT1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut t = loop {
            let t = a.begin(&header, ts.as_bytes()).expect("begin");
            if t.writer.as_ref().is_some_and(|w| w.staged()) {
                break t;
            }
            drop(t);
            assert!(std::time::Instant::now() < deadline, "no staging file became ready");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        t.write(body).expect("write");
        a.commit(t.finish().expect("finish")).expect("commit")
    }

    #[test]
    fn a_staged_instance_is_readable_at_once_and_linked_after_its_index_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("open");
        a.start_staging().expect("start");
        let body = vec![7u8; 600_000];
        let c = staged(&a, "1.2.3.4", &body);
        let staging_file = c.staged.clone().expect("written to a staging file");
        assert!(c.created);
        let final_file = dir.path().join(&c.rel_path);
        assert!(!final_file.exists(), "not linked before the index write");
        // Readers of the key get the staged file meanwhile.
        let read = a.read(&c.rel_path).expect("readable before linking");
        assert!(read.ends_with(&body));
        assert_eq!(a.size(&c.rel_path).expect("size"), read.len() as u64);
        a.settle(&c, true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.unplaced() > 0 {
            assert!(std::time::Instant::now() < deadline, "never linked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(fs::read(&final_file).expect("linked under its key"), read);
        assert!(
            staging_file.exists(),
            "the staged name outlives the link by a grace period, for readers handed it"
        );
        // Identical bytes again: nothing to sync or link, the staging file goes.
        let again = staged(&a, "1.2.3.4", &body);
        assert!(!again.created && again.staged.is_none());
        a.settle(&again, false);
        assert!(
            final_file.exists(),
            "a duplicate settling never removes the stored file"
        );
        // A refused one is removed at once, and nothing is linked.
        let refused = staged(&a, "1.2.3.5", b"other");
        let refused_file = refused.staged.clone().expect("staged");
        a.settle(&refused, false);
        assert!(!refused_file.exists());
        assert!(!dir.path().join(&refused.rel_path).exists());
        assert!(a.holds.lock().is_empty());
    }

    #[test]
    fn staged_instances_of_a_crashed_run_are_placed_if_indexed_and_removed_if_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let (acked, unacked) = {
            let a = Archive::open(dir.path(), 0).expect("open");
            a.start_staging().expect("start");
            let acked = staged(&a, "1.2.3.10", &vec![1u8; 300_000]);
            let unacked = staged(&a, "1.2.3.11", &vec![2u8; 1000]);
            // The process dies here: neither index write settled.
            (acked, unacked)
        };
        let a = Archive::open(dir.path(), 0).expect("reopen");
        let leftovers = a.staging_leftovers().expect("leftovers");
        let mut found: Vec<(String, String)> = leftovers
            .iter()
            .map(|l| (l.sop_instance_uid.clone(), l.sha256.clone()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("1.2.3.10".to_string(), acked.sha256.clone()),
                ("1.2.3.11".to_string(), unacked.sha256.clone())
            ],
            "each staged file names its instance and hash; empty ready files are gone"
        );
        // Only the first has an index row.
        let (placed, removed) = a
            .recover_staged(leftovers, |l| l.sop_instance_uid == "1.2.3.10")
            .expect("recover");
        assert_eq!((placed, removed), (1, 1));
        assert!(a.read(&acked.rel_path).expect("placed").ends_with(&vec![1u8; 300_000]));
        assert!(a.size(&unacked.rel_path).is_err());
        let staging_dir = dir.path().join("instances").join(".staging");
        assert_eq!(fs::read_dir(staging_dir).expect("ls").count(), 0);
    }

    #[test]
    fn reserve_refuses_before_writing() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), u64::MAX).expect("open");
        assert!(matches!(a.check_reserve(), Err(ArchiveError::BelowReserve { .. })));
    }
}
