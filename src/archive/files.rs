//! Instance files: streamed to a temporary file, fsynced, renamed into a
//! content-addressed place, directory fsynced.
//!
//! Content addressing (`instances/ab/<sha256>.dcm`, hash over transfer
//! syntax + dataset bytes) makes a resent identical instance a no-op and lets
//! two different versions of one SOP Instance UID live side by side without a
//! naming scheme. Everything here is blocking I/O: callers run it on
//! `spawn_blocking` threads, never on the async runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::staging::{Leftover, Staging, final_rel};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("out of disk space")]
    DiskFull,
    #[error("free disk space {free} bytes is below the configured reserve {reserve}")]
    BelowReserve { free: u64, reserve: u64 },
    #[error("archive I/O error: {0}")]
    Io(#[from] io::Error),
}

impl ArchiveError {
    fn from_io(e: io::Error) -> ArchiveError {
        // ENOSPC and EDQUOT are both "no room": the sender should retry later.
        match e.raw_os_error() {
            Some(28) | Some(122) => ArchiveError::DiskFull,
            _ if e.kind() == io::ErrorKind::StorageFull => ArchiveError::DiskFull,
            _ => ArchiveError::Io(e),
        }
    }
    pub fn is_resource_problem(&self) -> bool {
        matches!(self, ArchiveError::DiskFull | ArchiveError::BelowReserve { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
    min_free_bytes: u64,
    holds: Arc<Holds>,
    /// Where receptions are written when a ready file is available (see
    /// `staging`): one sync before the acknowledgement instead of three.
    staging: Staging,
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

/// A file being received. Dropping it without `finish` removes the file.
pub struct TmpInstance {
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
    /// A staging file (its name is already durable).
    staged: bool,
    /// Bytes written to the file so far (header included) and the offset up
    /// to which writeback was started.
    offset: u64,
    kicked: u64,
}

/// Start writeback every this many bytes while receiving, so the fdatasync
/// after the last byte only waits for the tail of the file.
const WRITEBACK_STEP: u64 = 256 * 1024;

/// A fully written temporary file with its hash, ready to be committed
/// (commit fsyncs it; the hash and final path are known before that, so the
/// index work can overlap the fsync).
#[derive(Debug)]
pub struct Written {
    tmp_path: PathBuf,
    file: Option<File>,
    pub sha256: String,
    pub size: u64,
    staged: bool,
}

#[derive(Debug, Clone)]
pub struct Committed {
    /// Path relative to the archive root, as stored in the index.
    pub rel_path: String,
    pub sha256: String,
    pub size: u64,
    /// False when an identical file was already there (a resend).
    pub created: bool,
    /// The staging file that holds the bytes until they are linked to
    /// `rel_path` (after the index write; see `staging`).
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

impl Archive {
    pub fn open(root: &Path, min_free_bytes: u64) -> Result<Archive, ArchiveError> {
        fs::create_dir_all(root.join("tmp")).map_err(ArchiveError::from_io)?;
        fs::create_dir_all(root.join("instances")).map_err(ArchiveError::from_io)?;
        let staging = Staging::open(root).map_err(ArchiveError::from_io)?;
        Ok(Archive {
            root: root.to_path_buf(),
            min_free_bytes,
            holds: Arc::default(),
            staging,
        })
    }

    /// Staging files left by a previous run (see `staging`); run before
    /// [`Archive::start_staging`].
    pub fn staging_leftovers(&self) -> io::Result<Vec<Leftover>> {
        self.staging.leftovers()
    }

    /// Place the leftovers an index row refers to, remove the others.
    pub fn recover_staged(
        &self,
        leftovers: Vec<Leftover>,
        keep: impl Fn(&Leftover) -> bool,
    ) -> io::Result<(usize, usize)> {
        self.staging.recover(leftovers, keep)
    }

    /// From now on receptions are written to staging files when one is ready.
    pub fn start_staging(&self) -> io::Result<()> {
        self.staging.start()
    }

    /// Staged instances not linked to their final path yet.
    pub fn unplaced(&self) -> usize {
        self.staging.unplaced()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Remove leftovers of receptions interrupted by a crash. They were never
    /// acknowledged, so the sender still owns the data.
    pub fn clean_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
                n += 1;
            }
        }
        Ok(n)
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

    /// Start a file. `header` (the Part 10 meta) is written but not hashed;
    /// the hash covers `hash_prefix` (the transfer syntax) and the dataset.
    pub fn begin(&self, header: &[u8], hash_prefix: &[u8]) -> Result<TmpInstance, ArchiveError> {
        let (path, mut file, staged) = match self.staging.take() {
            Some((path, file)) => (path, file, true),
            None => {
                let name = format!("{:016x}{:016x}.part", rand::random::<u64>(), rand::random::<u64>());
                let path = self.root.join("tmp").join(name);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(ArchiveError::from_io)?;
                (path, file, false)
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(hash_prefix);
        hasher.update([0u8]);
        let mut tmp = TmpInstance {
            path,
            file: None,
            hasher,
            size: 0,
            staged,
            offset: header.len() as u64,
            kicked: 0,
        };
        file.write_all(header).map_err(ArchiveError::from_io)?;
        tmp.file = Some(file);
        Ok(tmp)
    }

    fn rel_path(sha256: &str) -> (String, String) {
        let rel_path = final_rel(sha256);
        let rel_dir = format!("instances/{}", &sha256[0..2]);
        (rel_dir, rel_path)
    }

    /// Where `w` will live once committed.
    pub fn planned(&self, w: &Written) -> Committed {
        Committed {
            rel_path: Self::rel_path(&w.sha256).1,
            sha256: w.sha256.clone(),
            size: w.size,
            created: true,
            staged: None,
        }
    }

    /// Make a written file durable and move it into place: fsync the data,
    /// rename, fsync the directory. Durable when this returns. The caller
    /// must `settle` the result once its index write has ended.
    pub fn commit(&self, mut w: Written) -> Result<Committed, ArchiveError> {
        if w.staged {
            return self.commit_staged(w);
        }
        let (rel_dir, rel_path) = Self::rel_path(&w.sha256);
        let dir = self.root.join(&rel_dir);
        let dest = self.root.join(&rel_path);
        let file = w.file.take();
        self.holds.take(&w.sha256);
        let result = (|| {
            if let Some(f) = file {
                f.sync_data()?;
            }
            create_dir_durable(&dir)?;
            if dest.exists() {
                fs::remove_file(&w.tmp_path)?;
                return Ok(false);
            }
            fs::rename(&w.tmp_path, &dest)?;
            File::open(&dir)?.sync_all()?;
            Ok(true)
        })();
        match result {
            Ok(created) => {
                if created {
                    self.holds.created(&w.sha256);
                }
                Ok(Committed {
                    rel_path,
                    sha256: w.sha256.clone(),
                    size: w.size,
                    created,
                    staged: None,
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&w.tmp_path);
                let _ = self.holds.release(&w.sha256, false);
                Err(ArchiveError::from_io(e))
            }
        }
    }

    /// `commit` for a staging file: its name is durable already, so making
    /// the data durable is the only sync; it is linked to `rel_path` after
    /// the index write (`settle`). A resend of bytes already in place needs
    /// no sync at all. No hold is taken: the staging file is this
    /// reception's own, and nothing here ever removes a final file.
    fn commit_staged(&self, mut w: Written) -> Result<Committed, ArchiveError> {
        let rel_path = final_rel(&w.sha256);
        let staged = std::mem::take(&mut w.tmp_path);
        let file = w.file.take();
        let result = (|| {
            if self.root.join(&rel_path).exists() {
                fs::remove_file(&staged)?;
                return Ok(false);
            }
            if let Some(f) = file {
                f.sync_data()?;
            }
            Ok(true)
        })();
        match result {
            Ok(created) => {
                if created {
                    self.staging.stage(&staged, &rel_path);
                }
                Ok(Committed {
                    rel_path,
                    sha256: w.sha256.clone(),
                    size: w.size,
                    created,
                    staged: created.then_some(staged),
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                Err(ArchiveError::from_io(e))
            }
        }
    }

    /// Moves a file staged elsewhere under the archive (the relay hub's
    /// verified bundles) into its content-addressed place, as `commit` does
    /// for a received one; the caller fsyncs the directories it touched and
    /// `settle`s the result.
    pub fn place(&self, staged: &Path, sha256: &str) -> io::Result<Option<Committed>> {
        let (rel_dir, rel_path) = Self::rel_path(sha256);
        let dest = self.root.join(&rel_path);
        fs::create_dir_all(self.root.join(&rel_dir))?;
        self.holds.take(sha256);
        let created = if dest.exists() {
            let _ = fs::remove_file(staged);
            false
        } else if staged.exists() {
            if let Err(e) = fs::rename(staged, &dest) {
                let _ = self.holds.release(sha256, false);
                return Err(e);
            }
            self.holds.created(sha256);
            true
        } else {
            let _ = self.holds.release(sha256, false);
            return Ok(None);
        };
        let size = match fs::metadata(&dest) {
            Ok(m) => m.len(),
            Err(e) => {
                self.settle(
                    &Committed {
                        rel_path,
                        sha256: sha256.to_string(),
                        size: 0,
                        created,
                        staged: None,
                    },
                    false,
                );
                return Err(e);
            }
        };
        Ok(Some(Committed {
            rel_path,
            sha256: sha256.to_string(),
            size,
            created,
            staged: None,
        }))
    }

    /// Ends a commit's hold once its index write has ended: `keep` says
    /// whether the file must stay (a row now refers to it, or a retry will
    /// index it). A file nobody keeps is removed when the last commit of the
    /// same bytes ends, so no unindexed file is kept and no indexed one lost.
    pub fn settle(&self, c: &Committed, keep: bool) {
        if let Some(staged) = &c.staged {
            return self.staging.settle(staged, keep);
        }
        if self.holds.release(&c.sha256, keep) {
            let _ = fs::remove_file(self.root.join(&c.rel_path));
        }
    }

    /// Where the file `rel_path` (as the index names it) can be read now:
    /// its staging file while it is not linked yet.
    pub fn path_of(&self, rel_path: &str) -> PathBuf {
        let p = self.root.join(rel_path);
        if p.exists() {
            return p;
        }
        self.staging.resolve(rel_path).unwrap_or(p)
    }
}

/// Create `dir` and any missing parents, fsyncing each parent whose entries changed.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => File::open(parent)?.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl TmpInstance {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| ArchiveError::Io(io::Error::other("file closed")))?;
        file.write_all(chunk).map_err(ArchiveError::from_io)?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.offset += chunk.len() as u64;
        if self.offset - self.kicked >= WRITEBACK_STEP {
            start_writeback(file, self.kicked, self.offset - self.kicked);
            self.kicked = self.offset;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of dataset written so far (header excluded).
    pub fn dataset_len(&self) -> u64 {
        self.size
    }

    /// Close the data with its hash; `Archive::commit` makes it durable.
    pub fn finish(mut self) -> Result<Written, ArchiveError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| ArchiveError::Io(io::Error::other("file closed")))?;
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(Written {
            tmp_path: std::mem::take(&mut self.path),
            file: Some(file),
            sha256,
            size: self.size,
            staged: self.staged,
        })
    }
}

/// Ask the kernel to start writing `len` bytes at `from` to disk now,
/// without waiting: by the time the last byte arrives most of the file is
/// on its way, and the fdatasync that must precede the acknowledgement waits
/// only for the rest. Advisory: a failure changes nothing but timing.
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Drop for TmpInstance {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        // Only reached when commit() was never called; commit consumes the
        // temp path by renaming or removing it, after which this is a no-op.
        let _ = fs::remove_file(&self.tmp_path);
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
        assert_eq!(fs::read(a.path_of(&commits[0].rel_path)).expect("read"), b"HDRdataset");
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
        assert!(a.path_of(&b.rel_path).exists());
        // Refused first, indexed later: still kept.
        let b = commit_bytes(&a, b"other");
        let c = commit_bytes(&a, b"other");
        a.settle(&b, false);
        assert!(
            a.path_of(&b.rel_path).exists(),
            "another commit of these bytes is in flight"
        );
        a.settle(&c, true);
        assert!(a.path_of(&b.rel_path).exists());
        // Nobody indexed it: the last one out removes it.
        let b = commit_bytes(&a, b"lonely");
        let c = commit_bytes(&a, b"lonely");
        a.settle(&b, false);
        a.settle(&c, false);
        assert!(!a.path_of(&b.rel_path).exists());
        // A file that was there before (indexed earlier) is never removed.
        let first = commit_bytes(&a, b"old");
        a.settle(&first, true);
        let again = commit_bytes(&a, b"old");
        assert!(!again.created);
        a.settle(&again, false);
        assert!(a.path_of(&first.rel_path).exists());
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
            if t.staged {
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
        assert!(
            !dir.path().join(&c.rel_path).exists(),
            "not linked before the index write"
        );
        // Readers asking for the final path get the staging file meanwhile.
        let read = fs::read(a.path_of(&c.rel_path)).expect("readable before linking");
        assert_eq!(&read[read.len() - body.len()..], &body[..]);
        a.settle(&c, true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.unplaced() > 0 {
            assert!(std::time::Instant::now() < deadline, "never linked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(fs::read(dir.path().join(&c.rel_path)).expect("final"), read);
        assert_eq!(a.path_of(&c.rel_path), dir.path().join(&c.rel_path));
        assert!(
            staging_file.exists(),
            "the staging name outlives the link by a grace period, for readers handed it"
        );
        // Identical bytes again: nothing to sync or link, the staging file goes.
        let again = staged(&a, "1.2.3.4", &body);
        assert!(!again.created && again.staged.is_none());
        // A refused one is removed at once.
        let refused = staged(&a, "1.2.3.5", b"other");
        let refused_file = refused.staged.clone().expect("staged");
        a.settle(&refused, false);
        assert!(!refused_file.exists());
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
        let on_disk = fs::read(dir.path().join(&acked.rel_path)).expect("placed");
        assert!(on_disk.ends_with(&vec![1u8; 300_000]));
        assert!(!dir.path().join(&unacked.rel_path).exists());
        assert_eq!(fs::read_dir(dir.path().join("staging")).expect("ls").count(), 0);
    }

    #[test]
    fn reserve_refuses_before_writing() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), u64::MAX).expect("open");
        assert!(matches!(a.check_reserve(), Err(ArchiveError::BelowReserve { .. })));
    }
}
