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

pub async fn read_exact_timed(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), LinkError> {
    let mut at = 0;
    while at < buf.len() {
        match tokio::time::timeout(READ_IDLE, recv.read(&mut buf[at..])).await {
            Err(_) => return Err(LinkError::Timeout(READ_IDLE.as_secs())),
            Ok(Err(e)) => return Err(LinkError::Read(e.to_string())),
            Ok(Ok(None)) => return Err(LinkError::Read("stream ended early".into())),
            Ok(Ok(Some(n))) => at += n,
        }
    }
    Ok(())
}

pub async fn read_frame<T: for<'de> serde::Deserialize<'de>>(recv: &mut quinn::RecvStream) -> Result<T, LinkError> {
    let mut head = [0u8; 5];
    read_exact_timed(recv, &mut head).await?;
    let (enc, len) = wire::prefix(&head)?;
    let mut payload = vec![0u8; len];
    read_exact_timed(recv, &mut payload).await?;
    Ok(wire::decode(enc, &payload)?)
}

/// Read a body whose length the header announced, refusing lengths above
/// `max` before allocating.
pub async fn read_body(recv: &mut quinn::RecvStream, len: u64, max: u64) -> Result<Vec<u8>, LinkError> {
    if len > max {
        return Err(LinkError::Wire(WireError::Body(format!(
            "body of {len} bytes exceeds the limit of {max}"
        ))));
    }
    let mut body = vec![0u8; len as usize];
    read_exact_timed(recv, &mut body).await?;
    Ok(body)
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
