//! Blobs as files under one directory: the embedded default and today's
//! on-disk layout (`<data_dir>/instances/ab/<sha256>.dcm`, previews beside).
//!
//! A new object is spooled in the data directory's `tmp` (today's place),
//! or in `<root>/.tmp` when the root is on another filesystem (the final
//! rename must stay within one filesystem to be atomic), and committed by fdatasync, rename into place and a
//! directory fsync (each new directory's parent is fsynced too): durable
//! when `commit` returns, never half visible.
//!
//! Once [`FileBlobs::staging`] is started, received instances are written
//! into pre-created files of `<root>/.staging` instead (see `staging`):
//! their commit is a single fdatasync, and they are linked under their key
//! once the index has them. Until then reads of the key find the staged file.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::staging::{Staging, create_dir_durable};
use super::{BlobError, BlobWriter, Blobs, ReadSeek, Spooled};

/// Spooled objects, under the root: skipped by `list`.
const SPOOL: &str = ".tmp";

#[derive(Debug)]
pub struct FileBlobs {
    root: PathBuf,
    spool: PathBuf,
    staging: Staging,
}

impl FileBlobs {
    /// Files under `root`, spooled in `spool` when it is on the same
    /// filesystem (else in `<root>/.tmp`).
    pub fn open(root: &Path, spool: &Path) -> Result<FileBlobs, BlobError> {
        use std::os::unix::fs::MetadataExt;
        let io = |e| BlobError::from_io(e, "");
        fs::create_dir_all(root).map_err(io)?;
        fs::create_dir_all(spool).map_err(io)?;
        let same_fs = fs::metadata(root).map_err(io)?.dev() == fs::metadata(spool).map_err(io)?.dev();
        let spool = if same_fs { spool.to_path_buf() } else { root.join(SPOOL) };
        fs::create_dir_all(&spool).map_err(io)?;
        let staging = Staging::open(root).map_err(io)?;
        Ok(FileBlobs {
            root: root.to_path_buf(),
            spool,
            staging,
        })
    }

    /// The staging area of this root (recovery and start are the archive's).
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// Where `key` can be read now: its file, or while it is staged and not
    /// linked yet, the staged file.
    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        let p = self.root.join(key);
        if !p.exists()
            && let Some(staged) = self.staging.resolve(key)
        {
            return Ok(staged);
        }
        Ok(p)
    }
}

/// Keys are relative paths of plain components: no `..`, no absolute path,
/// nothing that could leave the root (or the S3 prefix).
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('.'));
    if ok {
        Ok(())
    } else {
        Err(BlobError::Other(format!("invalid object key {key:?}")))
    }
}

impl Blobs for FileBlobs {
    fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        let (spool, staging) = match self.staging.take() {
            Some((path, file)) => (Spooled::adopt(path, file), Some(self.staging.clone())),
            None => (Spooled::create(&self.spool)?, None),
        };
        Ok(Box::new(FileWriter {
            root: self.root.clone(),
            spool,
            staging,
            offset: 0,
            kicked: 0,
        }))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        let mut f = File::open(self.path(key)?).map_err(|e| BlobError::from_io(e, key))?;
        f.seek(SeekFrom::Start(range.start))
            .map_err(|e| BlobError::from_io(e, key))?;
        let mut buf = Vec::with_capacity(range.end.saturating_sub(range.start).min(64 << 20) as usize);
        f.take(range.end.saturating_sub(range.start))
            .read_to_end(&mut buf)
            .map_err(|e| BlobError::from_io(e, key))?;
        Ok(buf)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        fs::read(self.path(key)?).map_err(|e| BlobError::from_io(e, key))
    }

    fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match fs::metadata(self.path(key)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::from_io(e, key)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), BlobError> {
        match fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::from_io(e, key)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let dest = self.path(key)?;
        let io = |e| BlobError::from_io(e, key);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        // A unique temporary name: two renders of one instance may race.
        let tmp = dest.with_extension(format!("{:08x}.tmp", rand::random::<u32>()));
        let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &dest));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io)
    }

    fn put_file(&self, key: &str, local: &Path) -> Result<bool, BlobError> {
        let dest = self.path(key)?;
        let io = |e| BlobError::from_io(e, key);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        create_dir_durable(&dir).map_err(io)?;
        if dest.exists() {
            let _ = fs::remove_file(local);
            return Ok(false);
        }
        fs::rename(local, &dest).map_err(|e| BlobError::from_io(e, key))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BlobError::from_io(e, prefix)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| BlobError::from_io(e, prefix))?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| BlobError::from_io(e, prefix))?;
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().into_owned();
                if ft.is_dir() {
                    // Descend only where the prefix can still match.
                    let dir_key = format!("{rel}/");
                    if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                        stack.push(path);
                    }
                } else if ft.is_file() && rel.starts_with(prefix) && !rel.ends_with(".tmp") {
                    let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((rel, len));
                }
            }
        }
        Ok(out)
    }

    fn clean_spool(&self) -> io::Result<usize> {
        Spooled::clean(&self.spool)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn open_direct(&self, key: &str) -> Option<Result<Box<dyn ReadSeek>, BlobError>> {
        Some(
            self.path(key)
                .and_then(|p| File::open(p).map_err(|e| BlobError::from_io(e, key)))
                .map(|f| Box::new(io::BufReader::with_capacity(64 << 10, f)) as Box<dyn ReadSeek>),
        )
    }
}

/// An object being written to the spool, or to a staging file.
struct FileWriter {
    root: PathBuf,
    spool: Spooled,
    /// Set when the spool is a staging file (its name is already durable).
    staging: Option<Staging>,
    /// Bytes written so far, and the offset up to which writeback was started.
    offset: u64,
    kicked: u64,
}

/// Start writeback every this many bytes while receiving, so the fdatasync
/// after the last byte only waits for the tail of the file.
const WRITEBACK_STEP: u64 = 256 * 1024;

impl BlobWriter for FileWriter {
    fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.spool.write(chunk)?;
        self.offset += chunk.len() as u64;
        if self.offset - self.kicked >= WRITEBACK_STEP {
            if let Some(f) = self.spool.file() {
                start_writeback(f, self.kicked, self.offset - self.kicked);
            }
            self.kicked = self.offset;
        }
        Ok(())
    }

    fn staged(&self) -> bool {
        self.staging.is_some()
    }

    fn spool_path(&self) -> &Path {
        self.spool.path()
    }

    /// fdatasync the data, create the directory durably, rename, fsync the
    /// directory: today's sequence, moved here unchanged.
    fn commit(mut self: Box<Self>, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        if let Some(staging) = self.staging.take() {
            return (*self).commit_staged(&staging, key);
        }
        let dest = self.root.join(key);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        let file = self.spool.close();
        let spooled = self.spool.path().to_path_buf();
        let result = (|| {
            if let Some(f) = file {
                f.sync_data()?;
            }
            create_dir_durable(&dir)?;
            if dest.exists() {
                fs::remove_file(&spooled)?;
                return Ok(false);
            }
            fs::rename(&spooled, &dest)?;
            File::open(&dir)?.sync_all()?;
            Ok(true)
        })();
        // Renamed or removed: nothing left for the spool to remove (after a
        // failure, dropping it removes the spool file).
        if result.is_ok() {
            self.spool.keep();
        }
        result.map_err(|e| BlobError::from_io(e, key))
    }
}

impl FileWriter {
    /// `commit` for a staging file: its name is durable already, so making
    /// the data durable is the only sync; it is linked under `key` once the
    /// index has it (`Staging::settle`). Bytes already stored under `key`
    /// need no sync at all.
    fn commit_staged(mut self, staging: &Staging, key: &str) -> Result<bool, BlobError> {
        let file = self.spool.close();
        let staged = self.spool.path().to_path_buf();
        let result = (|| {
            if self.root.join(key).exists() {
                fs::remove_file(&staged)?;
                return Ok(false);
            }
            if let Some(f) = file {
                f.sync_data()?;
            }
            staging.stage(&staged, key);
            Ok(true)
        })();
        // Staged (the staging area owns it now) or removed; after a failure
        // dropping the spool removes it.
        if result.is_ok() {
            self.spool.keep();
        }
        result.map_err(|e| BlobError::from_io(e, key))
    }
}

/// Ask the kernel to start writing `len` bytes at `from` to disk now,
/// without waiting: by the time the last byte arrives most of the file is
/// on its way, and the fdatasync that must precede the acknowledgement waits
/// only for the rest. Advisory: a failure changes nothing but timing.
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
