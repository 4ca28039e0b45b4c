//! A joined participant's signaling WebSocket: the page's messages into the
//! engine, the engine's messages out to the page (web/PROTOCOL.md).
//!
//! Reading and writing run side by side, so a page that stops reading does
//! not stop the server from reading it (its `leave`, its pings, more of its
//! requests) and a stuck write cannot hold the session forever:
//! - every read has the idle timeout, every write a timeout;
//! - every frame read is charged to the participant's budget
//!   (`sfu::ratelimit`) before it reaches the engine: over budget it is
//!   refused with `rate_limited` (said at most once a second), and a page
//!   that keeps sending regardless is cut (close 4029);
//! - when the engine ends the session (replaced, room closed, too slow:
//!   see `sfu::client_queue`) the writer is woken even in the middle of a
//!   stuck write; the `error` and close frame go out if the page takes them
//!   within a grace period, and the connection is dropped otherwise.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{Sink, SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::http::Services;
use crate::sfu::client_queue::ClientRx;
use crate::sfu::engine::Command;
use crate::sfu::protocol::{ClientMsg, ErrorCode, ServerMsg, error as sig_error, parse_client};
use crate::sfu::ratelimit::{Verdict, cost};

/// A browser that sends nothing (not even `ping`) for this long is gone.
pub(super) const WS_IDLE: Duration = Duration::from_secs(60);
/// A page whose socket takes no more bytes for this long is not reading
/// (its TCP window has stayed shut: the buffers on both sides are full).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time given to a closing session's last `error` and close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Replies the session makes itself (`bad_message`, `rate_limited`) waiting
/// for the writer; a page that lets them pile up is not reading.
const LOCAL_REPLIES: usize = 8;

/// How a session ended.
enum End {
    /// The page sent `leave`.
    Left,
    /// The page went away, or stopped taking bytes: nothing reaches it.
    Gone,
    /// Ended by the server: `error` with this code, then its close code.
    Close(ErrorCode, String),
}

/// Sends one message; false if the connection is gone.
pub(super) async fn send<S>(sink: &mut S, m: &ServerMsg) -> bool
where
    S: Sink<Message> + Unpin,
{
    match serde_json::to_string(m) {
        Ok(t) => sink.send(Message::Text(t.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends `error` `code` and closes with its close code (1008 for codes
/// that have none), giving up after [`CLOSE_GRACE`].
pub(super) async fn close<S>(sink: &mut S, code: ErrorCode, reason: &str)
where
    S: Sink<Message> + Unpin,
{
    let mut r = reason.to_string();
    r.truncate(120);
    let goodbye = async {
        if send(sink, &sig_error(code, reason)).await {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: code.close_code().unwrap_or(1008),
                    reason: r.into(),
                })))
                .await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
}

/// Whether the participant may join now (a page reconnecting in a loop
/// costs the room a leave and a join each time; see `sfu::ratelimit`).
pub(super) fn admit(s: &Services, participant: &str) -> Result<(), (ErrorCode, String)> {
    if s.sfu.signal_limits.join(participant, Instant::now()) {
        return Ok(());
    }
    s.sfu.metrics.signal_rate_limited.fetch_add(1, Relaxed);
    Err((
        ErrorCode::RateLimited,
        "joining too often; wait a moment before rejoining".into(),
    ))
}

/// Runs a joined session until it ends, then takes the participant out of
/// the room (unless the engine already did). `watch` completes, with the
/// error to close with, when the participant may no longer stay (its login
/// session ended, its account was disabled, its request was cancelled).
pub(super) async fn run(
    s: &Services,
    ws: WebSocket,
    mut rx: ClientRx,
    participant: &str,
    conn: u64,
    watch: impl std::future::Future<Output = (ErrorCode, String)>,
) {
    let (mut sink, mut stream) = ws.split();
    let (local_tx, mut local_rx) = mpsc::channel(LOCAL_REPLIES);
    let end = tokio::select! {
        e = reader(s, &mut stream, &local_tx, participant, conn) => e,
        e = writer(&mut sink, &mut rx, &mut local_rx) => e,
        (code, why) = watch => End::Close(code, why),
    };
    let _ = s
        .sfu
        .commands
        .send(Command::Leave {
            participant: participant.to_string(),
            conn,
        })
        .await;
    match end {
        End::Left => {
            let goodbye = sink.send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "left".into(),
            })));
            let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
        }
        End::Gone => return,
        End::Close(code, why) => close(&mut sink, code, &why).await,
    }
    // Read on until the page answers the close: closing the socket while
    // its frames keep arriving (a flood) would reset the connection, and a
    // reset makes the page's system discard what it had not read yet, our
    // `error` and close frame included.
    let answered = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, answered).await;
}

/// The page's frames, charged and forwarded to the engine.
async fn reader<R>(s: &Services, stream: &mut R, local: &mpsc::Sender<ServerMsg>, participant: &str, conn: u64) -> End
where
    R: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let metrics = &s.sfu.metrics;
    let reply = |m: ServerMsg| -> Result<(), End> {
        local.try_send(m).map_err(|_| {
            metrics.signal_too_slow.fetch_add(1, Relaxed);
            End::Close(ErrorCode::TooSlow, "this page does not read its messages".into())
        })
    };
    loop {
        let frame = match tokio::time::timeout(WS_IDLE, stream.next()).await {
            Err(_) => return End::Close(ErrorCode::BadState, "no message for 60 s".into()),
            Ok(None) => return End::Gone,
            Ok(Some(Err(e))) => {
                tracing::debug!(participant, error = %e, "signaling read failed");
                return End::Gone;
            }
            Ok(Some(Ok(m))) => m,
        };
        // None: a WebSocket ping or pong (answered by the WebSocket layer).
        let parsed = match frame {
            Message::Text(t) => Some(parse_client(t.as_str())),
            Message::Binary(_) => Some(Err("text frames only".to_string())),
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => return End::Gone,
        };
        let price = cost(parsed.as_ref().and_then(|p| p.as_ref().ok()));
        match s.sfu.signal_limits.check(participant, Instant::now(), price) {
            Verdict::Allow => {}
            Verdict::Refuse { notify } => {
                metrics.signal_rate_limited.fetch_add(1, Relaxed);
                if notify
                    && let Err(e) = reply(sig_error(
                        ErrorCode::RateLimited,
                        "too many messages: this one was refused; slow down",
                    ))
                {
                    return e;
                }
                continue;
            }
            Verdict::Cut => {
                metrics.signal_rate_cut.fetch_add(1, Relaxed);
                return End::Close(
                    ErrorCode::RateLimited,
                    "too many messages, refused ones included: the session is closed".into(),
                );
            }
        }
        match parsed {
            None => {}
            Some(Ok(ClientMsg::Leave)) => return End::Left,
            Some(Ok(msg)) => {
                let cmd = Command::Signal {
                    participant: participant.to_string(),
                    conn,
                    msg,
                };
                if s.sfu.commands.send(cmd).await.is_err() {
                    return End::Close(ErrorCode::Internal, "the media engine is not running".into());
                }
            }
            Some(Err(e)) => {
                metrics.signal_errors.fetch_add(1, Relaxed);
                if let Err(e) = reply(sig_error(ErrorCode::BadMessage, e)) {
                    return e;
                }
            }
        }
    }
}

/// The engine's messages and the session's own replies, out to the page.
async fn writer<W>(sink: &mut W, rx: &mut ClientRx, local: &mut mpsc::Receiver<ServerMsg>) -> End
where
    W: Sink<Message> + Unpin,
{
    loop {
        let m = tokio::select! {
            biased;
            (code, why) = rx.end.fired() => return End::Close(code, why),
            Some(m) = local.recv() => m,
            m = rx.msgs.recv() => match m {
                Some(m) => m,
                None => return End::Close(ErrorCode::Internal, "removed from the room".into()),
            },
        };
        let sent = tokio::select! {
            biased;
            (code, why) = rx.end.fired() => return End::Close(code, why),
            r = tokio::time::timeout(WRITE_TIMEOUT, send(sink, &m)) => r,
        };
        match sent {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("signaling write failed");
                return End::Gone;
            }
            Err(_) => {
                tracing::debug!("signaling write timed out: the page does not read");
                return End::Gone;
            }
        }
    }
}
