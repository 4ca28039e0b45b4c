//! Study stability: a study that has received nothing for its `stable_after`
//! becomes complete and is enqueued for reading exactly once. The decision is
//! one SQL statement inside the index writer (so it is atomic with the
//! worklist insert); this task only decides when to run it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::index::Index;
use crate::metrics::Metrics;

/// How long to sleep before the next sweep: until the earliest study can
/// become stable, but at most `max_wait` (new studies may arrive meanwhile,
/// with a shorter per-clinic `stable_after`) and at least 50 ms.
pub fn next_wait(now_ms: i64, next_stable_at: Option<i64>, max_wait: Duration) -> Duration {
    let max_ms = max_wait.as_millis() as i64;
    let ms = match next_stable_at {
        Some(t) => (t - now_ms).clamp(50, max_ms.max(50)),
        None => max_ms,
    };
    Duration::from_millis(ms as u64)
}

pub async fn run(index: Index, metrics: Arc<Metrics>, max_wait: Duration, shutdown: CancellationToken) {
    loop {
        let now = crate::clock::now_ms();
        match index.sweep_stable(now).await {
            Ok(done) => {
                for uid in &done {
                    info!(study = %uid, "study complete, queued for reading");
                }
                metrics
                    .studies_completed
                    .fetch_add(done.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "stability sweep failed; will retry"),
        }
        let next = index.next_stable_at().await.unwrap_or(None);
        let wait = next_wait(crate::clock::now_ms(), next, max_wait);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_next_deadline_within_bounds() {
        let max = Duration::from_secs(1);
        assert_eq!(next_wait(1000, None, max), max);
        assert_eq!(next_wait(1000, Some(1300), max), Duration::from_millis(300));
        assert_eq!(next_wait(1000, Some(900), max), Duration::from_millis(50));
        assert_eq!(next_wait(1000, Some(99_000), max), max);
    }
}
