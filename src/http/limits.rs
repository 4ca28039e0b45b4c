//! Overload limits of the HTTPS side: study zip slots (global and per
//! account), a write timeout on every connection, and the counters that show
//! them on `/metrics`.
//!
//! Why a write timeout at the connection: hyper stops polling a response body
//! while the socket cannot take more, so a client that stops reading holds its
//! connection, its buffers and whatever the body owns for ever; there is no
//! timeout for that in hyper itself. `WriteTimeout` fails a write that has made
//! no progress for `limit`, which ends the connection (and drops the body).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Refusals and cuts, for `/metrics`.
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub login_busy: AtomicU64,
    pub login_locked: AtomicU64,
    pub zip_refused: AtomicU64,
    pub write_timeouts: AtomicU64,
}

impl LimitCounters {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "medrelay_login_busy_total",
                "Logins answered 503: every password-hashing slot taken",
                &self.login_busy,
            ),
            (
                "medrelay_login_locked_total",
                "Logins answered 429: username or address locked out",
                &self.login_locked,
            ),
            (
                "medrelay_zip_refused_total",
                "Study zip downloads refused: too many at once (global or per account)",
                &self.zip_refused,
            ),
            (
                "medrelay_http_write_timeouts_total",
                "HTTP responses cut because the client stopped reading (connection write timeout or a stalled study zip)",
                &self.write_timeouts,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}

/// Why a zip download could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum ZipRefused {
    /// This account already has its share running (429).
    Account,
    /// The gateway as a whole has (503).
    Global,
}

/// Concurrent study zip downloads, all accounts together and per account.
/// A zip streams for as long as the client reads, so each one running ties
/// up a file handle, a buffer and disk bandwidth.
#[derive(Debug)]
pub struct ZipSlots {
    global: Arc<tokio::sync::Semaphore>,
    per_account: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// One running download; its slots come back when it is dropped.
#[derive(Debug)]
pub struct ZipSlot {
    _global: tokio::sync::OwnedSemaphorePermit,
    account: String,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl ZipSlots {
    pub fn new(global: usize, per_account: usize) -> Self {
        ZipSlots {
            global: Arc::new(tokio::sync::Semaphore::new(global)),
            per_account,
            running: Arc::default(),
        }
    }

    pub fn try_acquire(&self, account: &str) -> Result<ZipSlot, ZipRefused> {
        let mut running = self.running.lock().map_err(|_| ZipRefused::Global)?;
        let mine = running.get(account).copied().unwrap_or(0);
        if mine >= self.per_account {
            return Err(ZipRefused::Account);
        }
        let permit = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| ZipRefused::Global)?;
        running.insert(account.to_string(), mine + 1);
        Ok(ZipSlot {
            _global: permit,
            account: account.to_string(),
            running: self.running.clone(),
        })
    }
}

impl Drop for ZipSlot {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock()
            && let Some(n) = running.get_mut(&self.account)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.account);
            }
        }
    }
}

/// An I/O stream whose writes fail with `TimedOut` after `limit` without
/// progress. Reads are untouched (hyper times out request headers itself,
/// and a WebSocket may legitimately be quiet).
pub struct WriteTimeout<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write or flush is pending; reset by any progress.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<LimitCounters>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, limit: Duration, counters: Arc<LimitCounters>) -> Self {
        WriteTimeout {
            inner,
            limit,
            deadline: None,
            counters,
        }
    }

    /// Pending: arm the deadline (once) and fail if it has passed.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let d = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if d.as_mut().poll(cx).is_ready() {
            self.deadline = None;
            self.counters.write_timeouts.fetch_add(1, Relaxed);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.deadline = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.deadline = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.deadline = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.deadline = None;
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn zip_slots_bound_each_account_and_the_total() {
        let z = ZipSlots::new(3, 2);
        let a1 = z.try_acquire("a").expect("a1");
        let _a2 = z.try_acquire("a").expect("a2");
        assert_eq!(z.try_acquire("a").unwrap_err(), ZipRefused::Account);
        let _b1 = z.try_acquire("b").expect("b1");
        assert_eq!(z.try_acquire("c").unwrap_err(), ZipRefused::Global);
        drop(a1);
        let _c1 = z.try_acquire("c").expect("a slot came back");
        assert_eq!(z.try_acquire("a").unwrap_err(), ZipRefused::Global);
    }

    /// A peer that never reads: the write fails after the limit instead of
    /// waiting for ever; a peer that reads is never cut.
    #[tokio::test]
    async fn a_write_without_progress_times_out() {
        let counters = Arc::new(LimitCounters::default());
        let (near, mut far) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(near, Duration::from_millis(300), counters.clone());
        let chunk = vec![7u8; 4096];
        // The far side reads: writes go through.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < 64 * 1024 {
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf).await.expect("read");
            }
            far
        });
        for _ in 0..16 {
            w.write_all(&chunk).await.expect("a reading peer is served");
        }
        let _far = reader.await.expect("reader");
        // Now nobody reads: the write stalls and is cut.
        let e = w.write_all(&chunk).await.expect_err("stalled write fails");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(counters.write_timeouts.load(Relaxed), 1);
    }
}
