//! Received instances made durable with one sync before the acknowledgement
//! (the local-file blob backend's writer; S3 has no names to make durable).
//!
//! The classic durable file store (write, fdatasync, rename, fsync the
//! directory) costs two journal commits per file, and on this kind of disk
//! the directory fsync costs about as much as the data itself
//! (`benches/fsync_floor.py` prints both). A C-STORE-RSP may go out only once
//! the file and its index row are durable, so all three syncs (data,
//! directory, index) sat on every modality's critical path.
//!
//! Staging takes the name off that path. Empty files are created ahead of
//! time in `<root>/.staging` by a background thread, which fsyncs the directory
//! once per batch: a staged file's *name* is durable before any instance is
//! written to it. A reception writes into one (starting writeback as it
//! goes, so the final fdatasync only waits for the tail), fdatasyncs it, the
//! index row naming the final content-addressed path commits, and the
//! response goes out: two syncs in all. Afterwards the same thread hard-links
//! the file to its final path, fsyncs each touched directory once per batch,
//! and removes the staged name [`GRACE`] later, so a reader handed the
//! staged path a moment before keeps a valid name.
//!
//! Until it is linked, [`Staging::resolve`] maps the final path to the staged
//! file, so readers (previews, the viewer) never see a gap.
//!
//! After a crash a staged file is either acknowledged (an index row has its
//! SOP Instance UID and hash: it is moved into place) or not (it is removed).
//! Both are decided at startup from the file alone: its meta header names
//! the instance and the hash is recomputed ([`Staging::leftovers`]), before
//! anything new is received.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a staged name outlives its link: longer than any reader takes
/// between being handed a path and opening it.
pub const GRACE: Duration = Duration::from_secs(10);
/// Files kept ready; a refill starts below `LOW`.
const READY: usize = 64;
const LOW: usize = 24;
/// Staged instances not yet linked, at most: beyond this, receptions fall
/// back to the classic path (the placer is behind, e.g. a stalled disk).
const MAX_PENDING: usize = 20_000;
/// The thread's idle wake-up, to notice its owner went away.
const TICK: Duration = Duration::from_millis(500);

/// The staging area: ready files, staged instances, and the thread that
/// refills the one and places the other.
#[derive(Debug, Clone)]
pub struct Staging {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<root>/.staging`: inside the root, so a hard link reaches any key,
    /// and hidden from keys (no key component starts with a dot).
    dir: PathBuf,
    /// The blob root; final paths are keys under it.
    root: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Empty files whose names are durable.
    ready: Vec<PathBuf>,
    /// Staged instances by staged path.
    pending: HashMap<PathBuf, Pending>,
    started: bool,
}

#[derive(Debug)]
struct Pending {
    key: String,
    step: Step,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Durable under its staged name, index write not settled yet.
    Written,
    /// Indexed: to be linked to its final path.
    Indexed,
    /// Linked and the directory fsynced at this time; the staged name goes
    /// after [`GRACE`].
    Linked(Instant),
}

/// A staged file found at startup, with what its own bytes say it is.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub sha256: String,
    /// The key it belongs under (from its hash).
    pub key: String,
}

impl Staging {
    pub fn open(root: &Path) -> io::Result<Staging> {
        let dir = root.join(".staging");
        fs::create_dir_all(&dir)?;
        Ok(Staging {
            inner: Arc::new(Inner {
                dir,
                root: root.to_path_buf(),
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the refill-and-place thread. Called once recovery has run
    /// (before that, the directory holds files of the previous run). The
    /// thread ends when the last `Staging` clone is dropped.
    pub fn start(&self) -> io::Result<()> {
        {
            let mut s = self.lock();
            if s.started {
                return Ok(());
            }
            s.started = true;
        }
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("archive-staging".into())
            .spawn(move || run(weak))?;
        Ok(())
    }

    /// A ready file opened for writing, or None (none ready, or too many
    /// staged instances waiting): the caller then uses the classic path.
    pub fn take(&self) -> Option<(PathBuf, File)> {
        let mut s = self.lock();
        if s.pending.len() >= MAX_PENDING {
            return None;
        }
        while let Some(path) = s.ready.pop() {
            if s.ready.len() < LOW {
                self.inner.wake.notify_one();
            }
            // Opened without truncation: the file is new and empty, and
            // O_TRUNC on an empty file would still touch its metadata.
            match OpenOptions::new().write(true).open(&path) {
                Ok(f) => return Some((path, f)),
                Err(_) => continue,
            }
        }
        self.inner.wake.notify_one();
        None
    }

    /// `staged` holds the durable bytes of `key`, not yet indexed.
    pub fn stage(&self, staged: &Path, key: &str) {
        self.lock().pending.insert(
            staged.to_path_buf(),
            Pending {
                key: key.to_string(),
                step: Step::Written,
            },
        );
    }

    /// The index write of a staged instance has ended: `keep` (indexed)
    /// hands it to the placer, otherwise the staged file is removed now.
    /// Paths this area does not hold are ignored.
    pub fn settle(&self, staged: &Path, keep: bool) {
        let mut s = self.lock();
        if keep {
            if let Some(p) = s.pending.get_mut(staged) {
                p.step = Step::Indexed;
                self.inner.wake.notify_one();
            }
        } else if s.pending.remove(staged).is_some() {
            drop(s);
            let _ = fs::remove_file(staged);
        }
    }

    /// The staged file that holds `key` while it is not linked yet.
    pub fn resolve(&self, key: &str) -> Option<PathBuf> {
        let s = self.lock();
        if s.pending.is_empty() {
            return None;
        }
        s.pending
            .iter()
            .find(|(_, p)| p.key == key)
            .map(|(path, _)| path.clone())
    }

    /// Staged instances not yet linked (for tests and metrics).
    pub fn unplaced(&self) -> usize {
        self.lock()
            .pending
            .values()
            .filter(|p| !matches!(p.step, Step::Linked(_)))
            .count()
    }

    /// Files of a previous run, each with the instance and hash its bytes
    /// carry and the key that hash gives (`key_of`). Empty or unreadable
    /// ones (never acknowledged) are removed here. Blocking; runs before
    /// [`Staging::start`].
    pub fn leftovers(&self, key_of: impl Fn(&str) -> String) -> io::Result<Vec<Leftover>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            match identify(&path) {
                Ok(Some((sop, sha))) => out.push(Leftover {
                    key: key_of(&sha),
                    path,
                    sop_instance_uid: sop,
                    sha256: sha,
                }),
                // Empty (never used) or not a whole file of ours: nobody
                // was told it was stored.
                Ok(None) | Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }

    /// Finish recovery: `keep` are the leftovers an index row refers to;
    /// they are moved into place (directories fsynced), the rest removed.
    pub fn recover(&self, leftovers: Vec<Leftover>, keep: impl Fn(&Leftover) -> bool) -> io::Result<(usize, usize)> {
        let (mut placed, mut removed) = (0, 0);
        let mut dirs = Vec::new();
        for l in leftovers {
            if keep(&l) {
                let dest = self.inner.root.join(&l.key);
                if dest.exists() {
                    fs::remove_file(&l.path)?;
                } else {
                    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                    create_dir_durable(&dir)?;
                    fs::rename(&l.path, &dest)?;
                    dirs.push(dir);
                }
                placed += 1;
            } else {
                fs::remove_file(&l.path)?;
                removed += 1;
            }
        }
        sync_dirs(dirs)?;
        Ok((placed, removed))
    }
}

fn sync_dirs(mut dirs: Vec<PathBuf>) -> io::Result<()> {
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        File::open(&d)?.sync_all()?;
    }
    Ok(())
}

/// The thread: keep `READY` files ready, link indexed instances, drop
/// staged names past their grace.
fn run(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (refill, to_link, to_drop) = {
            let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            if !due(&s, Instant::now()) {
                s = inner
                    .wake
                    .wait_timeout(s, TICK)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let now = Instant::now();
            let refill = if s.ready.len() < LOW { READY - s.ready.len() } else { 0 };
            let to_link: Vec<(PathBuf, String)> = s
                .pending
                .iter()
                .filter(|(_, p)| p.step == Step::Indexed)
                .map(|(k, p)| (k.clone(), p.key.clone()))
                .collect();
            let to_drop: Vec<PathBuf> = s
                .pending
                .iter()
                .filter(|(_, p)| expired(p, now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &to_drop {
                s.pending.remove(k);
            }
            (refill, to_link, to_drop)
        };
        for p in &to_drop {
            let _ = fs::remove_file(p);
        }
        if !to_link.is_empty() {
            let linked = link_all(&inner.root, &to_link);
            let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for k in linked {
                if let Some(p) = s.pending.get_mut(&k) {
                    p.step = Step::Linked(now);
                }
            }
        }
        if refill > 0 {
            match create_ready(&inner.dir, refill) {
                Ok(files) => inner
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ready
                    .extend(files),
                Err(e) => {
                    tracing::warn!(error = %e, "could not prepare staging files; receiving on the slower path");
                    drop(inner);
                    std::thread::sleep(TICK);
                }
            }
        }
    }
}

fn expired(p: &Pending, now: Instant) -> bool {
    matches!(p.step, Step::Linked(at) if now.duration_since(at) >= GRACE)
}

/// Work to do now: files to prepare, instances to link, names to drop.
fn due(s: &State, now: Instant) -> bool {
    s.ready.len() < LOW || s.pending.values().any(|p| p.step == Step::Indexed || expired(p, now))
}

/// Link each staged file to its final path (an identical file already
/// there is kept), then fsync each touched directory once. Returns the
/// staged paths that are now safely linked; a failure leaves the others
/// staged, to be tried again (their bytes are durable and readable through
/// [`Staging::resolve`] meanwhile).
fn link_all(root: &Path, items: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let mut done = Vec::with_capacity(items.len());
    let mut dirs = Vec::new();
    for (staged, rel) in items {
        let dest = root.join(rel);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        let r = create_dir_durable(&dir).and_then(|()| match fs::hard_link(staged, &dest) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        });
        match r {
            Ok(()) => {
                dirs.push(dir);
                done.push(staged.clone());
            }
            Err(e) => tracing::warn!(error = %e, "could not place a staged instance; will retry"),
        }
    }
    if let Err(e) = sync_dirs(dirs) {
        tracing::warn!(error = %e, "could not fsync instance directories; will retry");
        return Vec::new();
    }
    done
}

/// Create `n` empty files and make their names durable with one directory fsync.
fn create_ready(dir: &Path, n: usize) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.push(path);
    }
    File::open(dir)?.sync_all()?;
    Ok(out)
}

/// The SOP Instance UID and content hash of a staged file, from its own
/// bytes (the Part 10 header this archive wrote, then the dataset); None
/// for an empty file.
fn identify(path: &Path) -> io::Result<Option<(String, String)>> {
    let mut f = File::open(path)?;
    let mut head = Vec::new();
    (&mut f).take(144).read_to_end(&mut head)?;
    if head.is_empty() {
        return Ok(None);
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a staged instance");
    if head.len() < 144 || &head[128..132] != b"DICM" || head[132..136] != [2, 0, 0, 0] {
        return Err(bad());
    }
    let group_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]) as usize;
    if group_len > 64 * 1024 {
        return Err(bad());
    }
    let mut group = vec![0u8; group_len];
    f.read_exact(&mut group)?;
    let (mut sop, mut ts) = (None, None);
    let mut at = 0;
    while at + 8 <= group.len() {
        let elem = u16::from_le_bytes([group[at + 2], group[at + 3]]);
        let vr = &group[at + 4..at + 6];
        let (len, value_at) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT") {
            if at + 12 > group.len() {
                return Err(bad());
            }
            let l = u32::from_le_bytes([group[at + 8], group[at + 9], group[at + 10], group[at + 11]]) as usize;
            (l, at + 12)
        } else {
            (u16::from_le_bytes([group[at + 6], group[at + 7]]) as usize, at + 8)
        };
        let value = group.get(value_at..value_at + len).ok_or_else(bad)?;
        let text = || String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string();
        match elem {
            0x0003 => sop = Some(text()),
            0x0010 => ts = Some(text()),
            _ => {}
        }
        at = value_at + len;
    }
    let (Some(sop), Some(ts)) = (sop, ts) else {
        return Err(bad());
    };
    // The hash covers the transfer syntax and the dataset (files.rs).
    let mut h = Sha256::new();
    h.update(ts.as_bytes());
    h.update([0u8]);
    io::copy(&mut f, &mut HashWriter(&mut h))?;
    Ok(Some((sop, hex::encode(h.finalize()))))
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Create `dir` and any missing parents, fsyncing each parent whose entries changed.
pub(super) fn create_dir_durable(dir: &Path) -> io::Result<()> {
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
