//! Thin async glue shared by both ends: one request or response frame (and
//! its body) over a QUIC stream, every read bounded in size and time, and
//! the live link figures shown on /metrics and the admin page.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::wire::{self, WireError};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(String),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("no data for {0} s")]
    Timeout(u64),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the hub refused: {0}")]
    Refused(String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl LinkError {
    /// Errors that mean the connection is gone (reconnect), as opposed to a
    /// refusal of one request.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            LinkError::Connection(_)
                | LinkError::Write(_)
                | LinkError::Read(_)
                | LinkError::Timeout(_)
                | LinkError::Closed(_)
        )
    }
}

/// How long a read may wait for the next bytes before the stream is given
/// up (the link is presumed dead; QUIC's own idle timeout is shorter).
pub const READ_IDLE: Duration = Duration::from_secs(60);

/// The slowest sustained rate a frame or body may arrive at (64 kbit/s,
/// below any link a clinic relays over): a peer trickling bytes just often
/// enough to dodge [`READ_IDLE`] is cut once the whole read is this late.
pub const MIN_READ_RATE: u64 = 8 << 10;

/// Memory for an announced length is taken as its bytes arrive, in steps of
/// this much, never all at once on the peer's word.
const READ_STEP: usize = 64 << 10;

/// When a read of `len` bytes starting now must be complete.
fn read_deadline(len: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + READ_IDLE + Duration::from_secs(len / MIN_READ_RATE)
}

pub async fn read_exact_timed(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), LinkError> {
    read_exact_until(recv, buf, read_deadline(buf.len() as u64)).await
}

async fn read_exact_until(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
) -> Result<(), LinkError> {
    let mut at = 0;
    while at < buf.len() {
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(READ_IDLE);
        match tokio::time::timeout(wait, recv.read(&mut buf[at..])).await {
            Err(_) => return Err(LinkError::Timeout(wait.as_secs())),
            Ok(Err(e)) => return Err(LinkError::Read(e.to_string())),
            Ok(Ok(None)) => return Err(LinkError::Read("stream ended early".into())),
            Ok(Ok(Some(n))) => at += n,
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes, growing the buffer as they arrive, within
/// `read_deadline(len)`.
async fn read_growing(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, LinkError> {
    let deadline = read_deadline(len as u64);
    let mut buf = Vec::with_capacity(len.min(READ_STEP));
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(READ_STEP), 0);
        read_exact_until(recv, &mut buf[start..], deadline).await?;
    }
    Ok(buf)
}

pub async fn read_frame<T: for<'de> serde::Deserialize<'de>>(recv: &mut quinn::RecvStream) -> Result<T, LinkError> {
    let mut head = [0u8; 5];
    read_exact_timed(recv, &mut head).await?;
    let (enc, len) = wire::prefix(&head)?;
    let payload = read_growing(recv, len).await?;
    Ok(wire::decode(enc, &payload)?)
}

/// Read a body whose length the header announced, refusing lengths above
/// `max` before reading.
pub async fn read_body(recv: &mut quinn::RecvStream, len: u64, max: u64) -> Result<Vec<u8>, LinkError> {
    if len > max {
        return Err(LinkError::Wire(WireError::Body(format!(
            "body of {len} bytes exceeds the limit of {max}"
        ))));
    }
    read_growing(recv, len as usize).await
}

/// Live figures of one link (per edge at the hub; the hub link at an edge).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkFigures {
    pub connected: bool,
    pub remote: String,
    pub rtt_ms: f64,
    /// Lost / sent UDP datagrams since the connection started.
    pub lost_packets: u64,
    pub sent_packets: u64,
    pub loss: f64,
    pub congestion_window: u64,
    /// Study bytes moved per second over the last finished study.
    pub goodput_bps: f64,
    pub bytes_total: u64,
    pub studies_total: u64,
    pub connections: u64,
    pub updated_ms: i64,
    pub last_error: Option<String>,
}

impl LinkFigures {
    pub fn update_from(&mut self, conn: &quinn::Connection, now_ms: i64) {
        let s = conn.stats();
        self.connected = conn.close_reason().is_none();
        self.remote = conn.remote_address().to_string();
        self.rtt_ms = s.path.rtt.as_secs_f64() * 1000.0;
        self.lost_packets = s.path.lost_packets;
        self.sent_packets = s.path.sent_packets;
        self.loss = if s.path.sent_packets > 0 {
            s.path.lost_packets as f64 / s.path.sent_packets as f64
        } else {
            0.0
        };
        self.congestion_window = s.path.cwnd;
        self.updated_ms = now_ms;
    }
}

/// Link figures by peer name, shared with HTTP handlers.
#[derive(Debug, Default)]
pub struct LinkStatus {
    links: Mutex<BTreeMap<String, LinkFigures>>,
}

impl LinkStatus {
    pub fn with<R>(&self, peer: &str, f: impl FnOnce(&mut LinkFigures) -> R) -> R {
        let mut m = self.links.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(peer.to_string()).or_default())
    }

    pub fn snapshot(&self) -> BTreeMap<String, LinkFigures> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
