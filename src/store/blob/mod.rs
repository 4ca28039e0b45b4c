//! The blob boundary: where instance bytes and their derived images live.
//! Two backends, chosen by `[storage] url` (validated in `config.rs`):
//! local files (`file://DIR`, the default `<data_dir>/instances`) and
//! S3-compatible object storage (`s3://bucket/prefix?endpoint=…&region=…`).
//! Nothing above this module knows which one it talks to.
//!
//! Shaped like Apache `object_store`, narrowed to what the archive needs:
//! - a writer that spools a new object, then `commit`s it under a key chosen
//!   after its last byte (the archive's content address): durable when
//!   `commit` returns; dropped uncommitted, it leaves nothing;
//! - whole, ranged and `Read + Seek` reads (decoders read one frame of a
//!   1 GB multi-frame without fetching the rest), `head`, `delete`;
//! - `put` of small derived objects (previews: re-renderable, not synced);
//! - `list` by prefix (migration, cleanup).
//!
//! The API is blocking on purpose. Its callers already run on blocking
//! threads (the SCP's reception thread, the render workers, `spawn_blocking`
//! in handlers), because the local backend's fdatasync/rename/directory
//! fsync sequence is blocking I/O that must not run on the async runtime.
//! The S3 backend drives the async `object_store` client on a small runtime
//! of its own with `block_on` from those threads, so S3 traffic never
//! competes with the DICOM/HTTP runtime and one interface serves both.
//! Async callers go through `spawn_blocking`, as they did for files.
//!
//! Keys are relative, `/`-separated, and the same on both backends (the
//! file backend's key is the path under its root), so an archive can be
//! copied from one to the other key by key.

pub mod file;
pub mod s3;
pub mod staging;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Everything that can go wrong at the blob boundary. `is_resource_problem`
/// is the classification the SCP maps to 0xA7xx ("out of resources": the
/// sender keeps the data and retries later).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no such object {0}")]
    NotFound(String),
    #[error("out of disk space")]
    Full,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage refused the credentials: {0}")]
    Denied(String),
    #[error("storage I/O error: {0}")]
    Io(io::Error),
    #[error("storage error: {0}")]
    Other(String),
}

impl BlobError {
    /// Local I/O: ENOSPC and EDQUOT are both "no room"; a missing file is NotFound.
    pub fn from_io(e: io::Error, key: &str) -> BlobError {
        match e.raw_os_error() {
            Some(28) | Some(122) => BlobError::Full,
            _ if e.kind() == io::ErrorKind::StorageFull => BlobError::Full,
            _ if e.kind() == io::ErrorKind::NotFound => BlobError::NotFound(key.to_string()),
            _ => BlobError::Io(e),
        }
    }

    /// The storage cannot take data now (full, or unreachable): a sender
    /// should retry later; nothing is wrong with its data.
    pub fn is_resource_problem(&self) -> bool {
        matches!(self, BlobError::Full | BlobError::Unavailable(_))
    }

    pub fn into_io(self) -> io::Error {
        match self {
            BlobError::Io(e) => e,
            BlobError::NotFound(k) => io::Error::new(io::ErrorKind::NotFound, format!("no such object {k}")),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// A seekable byte source (a local file, or ranged reads of an object).
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A blob store. Blocking; see the module docs.
pub trait Blobs: Send + Sync + fmt::Debug {
    /// Start a new object, spooled locally until `BlobWriter::commit`.
    fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Bytes `range` of `key`; the range lies within the object (callers
    /// know its size from `head`).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BlobError>;
    /// Size of `key`, None when absent.
    fn head(&self, key: &str) -> Result<Option<u64>, BlobError>;
    /// Remove `key`; absent is fine.
    fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Store a small derived object (a preview) whole, replacing any
    /// previous one; readers see the old or the new bytes, never a part.
    /// Not made durable on local files: derived objects can be made again.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    /// Move a finished local file (the relay hub's verified staging) to
    /// `key` durably, unless `key` already exists; the local file is gone
    /// either way. True when this call created `key`.
    fn put_file(&self, key: &str, local: &Path) -> Result<bool, BlobError>;
    /// Keys (with sizes) starting with `prefix`, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError>;
    /// Remove spooled objects of a previous run that were never committed
    /// (never acknowledged: their senders still hold the data).
    fn clean_spool(&self) -> io::Result<usize>;
    /// For logs: the backend and where, never credentials.
    fn describe(&self) -> String;

    /// The whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let len = self.head(key)?.ok_or_else(|| BlobError::NotFound(key.to_string()))?;
        self.get_range(key, 0..len)
    }

    /// The backend's own seekable reader, when it has a better one than
    /// ranged gets (a local file); None otherwise.
    fn open_direct(&self, _key: &str) -> Option<Result<Box<dyn ReadSeek>, BlobError>> {
        None
    }
}

/// A new object being written. Dropping it uncommitted removes the spool.
pub trait BlobWriter: Send {
    fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;
    /// The local spool file holding what was written so far, for a reader
    /// that must check the bytes before they are committed (the SCP's walk).
    fn spool_path(&self) -> &Path;
    /// Make the object durable under `key`. False when `key` already existed
    /// (content-addressed: the same bytes, a resend); the spool is removed
    /// either way.
    fn commit(self: Box<Self>, key: &str) -> Result<bool, BlobError>;
    /// Written to a staging file: `commit` leaves it staged, and the
    /// archive settles it once the index write has ended (local files only).
    fn staged(&self) -> bool {
        false
    }
}

/// A new object's bytes in a local spool file (`<random>.part`), shared by
/// both backends' writers. Removed on drop unless `keep` was called (the
/// file backend renamed it into place).
pub struct Spooled {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl Spooled {
    pub fn create(dir: &Path) -> Result<Spooled, BlobError> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = format!("{:016x}{:016x}.part", rand::random::<u64>(), rand::random::<u64>());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| BlobError::from_io(e, ""))?;
        Ok(Spooled { path, file: Some(file) })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        use std::io::Write;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| BlobError::Io(io::Error::other("file closed")))?;
        file.write_all(chunk).map_err(|e| BlobError::from_io(e, ""))
    }

    /// A file created elsewhere (a staging file) written like a spool.
    pub fn adopt(path: std::path::PathBuf, file: std::fs::File) -> Spooled {
        Spooled { path, file: Some(file) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file while it is being written.
    pub fn file(&self) -> Option<&std::fs::File> {
        self.file.as_ref()
    }

    /// Close the file for commit, handing it over (to sync it).
    pub fn close(&mut self) -> Option<std::fs::File> {
        self.file.take()
    }

    /// The spool file was moved away: nothing for drop to remove.
    pub fn keep(&mut self) {
        self.path = std::path::PathBuf::new();
    }

    /// Remove the `.part` files of a previous run from `dir`.
    pub fn clean(dir: &Path) -> io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && entry.file_name().to_string_lossy().ends_with(".part") {
                std::fs::remove_file(entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Read-ahead window of [`RangedReader`]: big enough that a header parse is
/// one or two requests, small enough that seeking past 1 GB of pixel data
/// costs nothing.
pub const READ_WINDOW: u64 = 256 << 10;

/// `Read + Seek` over ranged gets of one object of known length. Memory:
/// one window.
pub struct RangedReader {
    store: Arc<dyn Blobs>,
    key: String,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl RangedReader {
    pub fn new(store: Arc<dyn Blobs>, key: &str, len: u64) -> RangedReader {
        RangedReader {
            store,
            key: key.to_string(),
            len,
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
        }
    }
}

impl Read for RangedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            // A big read goes straight through; a small one fills the window.
            let want = (out.len() as u64).max(READ_WINDOW).min(self.len - self.pos);
            let bytes = self
                .store
                .get_range(&self.key, self.pos..self.pos + want)
                .map_err(BlobError::into_io)?;
            if bytes.is_empty() {
                return Ok(0);
            }
            self.buf = bytes;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

/// Open `key` of `store` for reading: the backend's own reader when it has
/// one (a local file), ranged reads otherwise.
pub fn open_reader(store: &Arc<dyn Blobs>, key: &str) -> Result<Box<dyn ReadSeek>, BlobError> {
    if let Some(r) = store.open_direct(key) {
        return r;
    }
    let len = store.head(key)?.ok_or_else(|| BlobError::NotFound(key.to_string()))?;
    Ok(Box::new(RangedReader::new(store.clone(), key, len)))
}

/// Which backend, parsed from `[storage] url` once (config.rs).
#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    File(std::path::PathBuf),
    S3(s3::S3Url),
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::File(p) => write!(f, "file://{}", p.display()),
            StorageUrl::S3(u) => write!(f, "{u:?}"),
        }
    }
}

impl StorageUrl {
    /// `file:///abs/dir`, `file://relative/dir`, or
    /// `s3://bucket[/prefix]?endpoint=http://host:port&region=R`.
    pub fn parse(url: &str) -> Result<StorageUrl, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a directory".into());
            }
            return Ok(StorageUrl::File(path.into()));
        }
        if url.starts_with("s3://") {
            return s3::S3Url::parse(url).map(StorageUrl::S3);
        }
        Err(format!(
            "storage url {:?}: expected file://DIR or s3://BUCKET/PREFIX?endpoint=…&region=…",
            url.split('?').next().unwrap_or_default()
        ))
    }

    /// Open the backend. `spool` is a local directory for objects being
    /// written (the S3 backend uploads from it).
    pub fn open(&self, spool: &Path) -> Result<Arc<dyn Blobs>, BlobError> {
        Ok(match self {
            StorageUrl::File(root) => Arc::new(file::FileBlobs::open(root, spool)?),
            StorageUrl::S3(u) => Arc::new(s3::S3Blobs::open(u, spool)?),
        })
    }
}
