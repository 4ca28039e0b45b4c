//! The render worker pool: previews are made as instances arrive, off the
//! receive hot path.
//!
//! The SCP offers each stored instance with `try_send` on a bounded queue: a
//! full queue never delays a C-STORE-RSP, the job is simply left "pending" in
//! the index. A catch-up loop re-offers pending instances when there is room,
//! which also covers a restart. Rendering is CPU-bound and runs on `workers`
//! dedicated threads at the lowest scheduling priority.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::render;
use crate::archive::files::Archive;
use crate::archive::index::{Index, PreviewResult};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenderJob {
    pub sop_instance_uid: String,
    pub version: i64,
    /// Instance path relative to the archive root.
    pub rel_path: String,
}

/// Handle for offering jobs; cheap to clone.
#[derive(Clone)]
pub struct RenderQueue {
    tx: mpsc::Sender<RenderJob>,
    queued: Arc<Mutex<HashSet<(String, i64)>>>,
}

impl RenderQueue {
    /// Never waits: returns false when the queue is full or the job is
    /// already queued (the catch-up loop will offer it again later).
    pub fn offer(&self, job: RenderJob) -> bool {
        let key = (job.sop_instance_uid.clone(), job.version);
        let Ok(mut q) = self.queued.lock() else { return false };
        if q.contains(&key) {
            return false;
        }
        if self.tx.try_send(job).is_ok() {
            q.insert(key);
            true
        } else {
            false
        }
    }

    fn done(&self, job: &RenderJob) {
        if let Ok(mut q) = self.queued.lock() {
            q.remove(&(job.sop_instance_uid.clone(), job.version));
        }
    }

    pub fn room(&self) -> usize {
        self.tx.capacity()
    }
}

/// Put the calling thread in SCHED_IDLE (it runs only when a core would
/// otherwise idle, and yields at once to any normal thread that wakes), or at
/// least at nice 19 if that is refused.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread and
    // reads `param`, a valid local, for the duration of the call.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !idle && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        warn!(error = %e, "could not lower the render thread priority");
    }
}

/// Render one instance's previews and store them beside it (through the
/// blob boundary; previews can always be rendered again, so they are not
/// made durable); returns the status text. None when the storage cannot be
/// reached or a read failed on an instance that is there: nothing is wrong
/// with the instance, so it stays pending and the catch-up loop offers it
/// again (an outage must not leave "no preview" on what it touched).
pub fn render_instance(archive: &Archive, rel_path: &str) -> Option<(String, Option<i64>)> {
    match archive.size(rel_path) {
        Err(e) if e.is_resource_problem() => return None,
        _ => {}
    }
    Some(match render::make_previews(&archive.input(rel_path)) {
        Ok(p) => {
            let mut files = vec![("thumb", p.thumbnail), ("preview", p.preview)];
            if let Some(m) = p.middle {
                files.push(("mid", m));
            }
            let cine = p.cine.map(|(bytes, n)| {
                files.push(("cine", bytes));
                i64::from(n)
            });
            for (kind, bytes) in files {
                match archive.put_derived(rel_path, kind, &bytes) {
                    Err(e) if e.is_resource_problem() => return None,
                    Err(e) => return Some((format!("no preview: cannot write {kind}: {e}"), None)),
                    Ok(()) => {}
                }
            }
            ("ok".to_string(), cine)
        }
        // Reading failed, not decoding: the store may have gone away after
        // the check above. Only a missing instance is final.
        Err(e @ crate::imaging::decode::DecodeError::Io(_)) => match archive.size(rel_path) {
            Err(missing) if missing.is_not_found() => (format!("no preview: {e}"), None),
            _ => return None,
        },
        Err(e) => (format!("no preview: {e}"), None),
    })
}

pub struct Pool {
    pub queue: RenderQueue,
}

/// Start `workers` render workers and the catch-up loop.
pub fn start(
    archive: Archive,
    index: Index,
    workers: usize,
    capacity: usize,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Pool {
    let (tx, rx) = mpsc::channel::<RenderJob>(capacity.max(1));
    let queue = RenderQueue {
        tx,
        queued: Arc::new(Mutex::new(HashSet::new())),
    };
    let rx = Arc::new(Mutex::new(rx));
    let runtime = tokio::runtime::Handle::current();
    for n in 0..workers.max(1) {
        let (rx, archive, index, queue, shutdown, metrics, runtime) = (
            rx.clone(),
            archive.clone(),
            index.clone(),
            queue.clone(),
            shutdown.clone(),
            metrics.clone(),
            runtime.clone(),
        );
        // Dedicated threads at the lowest CPU priority: previews use the
        // cores the receive path leaves idle, so a burst of renders never
        // delays a C-STORE acknowledgement (measured in benches/previews.sh).
        let spawned = std::thread::Builder::new().name(format!("render-{n}")).spawn(move || {
            lower_priority();
            loop {
                if shutdown.is_cancelled() {
                    break;
                }
                let job = {
                    let Ok(mut guard) = rx.lock() else { break };
                    runtime.block_on(async {
                        tokio::select! {
                            _ = shutdown.cancelled() => None,
                            j = guard.recv() => j,
                        }
                    })
                };
                let Some(job) = job else { break };
                let Some((status, cine)) = render_instance(&archive, &job.rel_path) else {
                    warn!("instance storage unreachable; previews left pending");
                    queue.done(&job);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                };
                debug!(status = %status, "previews rendered");
                let counter = if status == "ok" {
                    &metrics.previews_rendered
                } else {
                    &metrics.previews_failed
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let result = PreviewResult {
                    sop_instance_uid: job.sop_instance_uid.clone(),
                    version: job.version,
                    status,
                    cine_frames: cine,
                    done_ms: crate::clock::now_ms(),
                };
                if let Err(e) = runtime.block_on(index.set_preview(result)) {
                    warn!(error = %e, "recording preview status failed; will retry");
                }
                queue.done(&job);
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start a render thread");
        }
    }
    let catchup_queue = queue.clone();
    tracker.spawn(async move {
        loop {
            let room = catchup_queue.room();
            if room > 0 {
                match index.pending_previews(room as i64).await {
                    Ok(rows) => {
                        for (sop, version, rel_path) in rows {
                            catchup_queue.offer(RenderJob {
                                sop_instance_uid: sop,
                                version,
                                rel_path,
                            });
                        }
                    }
                    Err(e) => warn!(error = %e, "listing pending previews failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    Pool { queue }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_without_waiting_and_dedups() {
        let (tx, _rx) = mpsc::channel(1);
        let q = RenderQueue {
            tx,
            queued: Arc::new(Mutex::new(HashSet::new())),
        };
        let job = |n: i64| RenderJob {
            sop_instance_uid: "1.2".into(),
            version: n,
            rel_path: "x.dcm".into(),
        };
        assert!(q.offer(job(1)));
        assert!(!q.offer(job(1)), "already queued");
        assert!(!q.offer(job(2)), "queue full");
        q.done(&job(1));
        assert_eq!(q.room(), 0);
    }

    #[test]
    fn previews_sit_beside_the_instance() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Archive::open(dir.path(), 0).expect("archive");
        a.put_derived("instances/ab/abcdef.dcm", "thumb", b"jpeg").expect("put");
        assert!(dir.path().join("instances/ab/abcdef.thumb.jpg").is_file());
        assert_eq!(
            a.derived("instances/ab/abcdef.dcm", "thumb").expect("get").as_deref(),
            Some(&b"jpeg"[..])
        );
        assert_eq!(a.derived("instances/ab/abcdef.dcm", "mid").expect("get"), None);
    }
}
