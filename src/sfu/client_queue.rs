//! One participant's outgoing signaling: the engine's end (`ClientTx`) and
//! the WebSocket task's end (`ClientRx`).
//!
//! The engine thread forwards everyone's media, so it never waits for one
//! page: messages go into a bounded queue without blocking. What happens
//! when a page does not keep up depends on the message:
//! - *control* messages (offers, answers, joins and leaves, floor, live,
//!   mute, errors...) change the page's picture of the room; losing one
//!   leaves the page wrong for good (an offer never answered stalls every
//!   later renegotiation). They are never dropped: if one does not fit, the
//!   session is ended instead (`too_slow`, close 4008), and the page
//!   reconnects and is sent the room afresh;
//! - *droppable* ones (`link`, `viewers`, `pong`) are superseded by the
//!   next; they are dropped when the queue is short of room, leaving its
//!   last slots to control messages.
//!
//! Ending a session (replaced, room closed, too slow, media timed out) does
//! not go through the queue, which may be full: the first reason given is
//! kept and the WebSocket task is woken at once, even in the middle of a
//! write to a page that stopped reading; what is still queued is discarded.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::SfuMetrics;
use super::protocol::{ErrorCode, ServerMsg};

/// Messages queued per participant: a join in a full consultation or a
/// burst of floor changes fits many times over.
pub const DEPTH: usize = 64;
/// Slots a droppable message may not take.
const RESERVE: usize = DEPTH / 4;

#[derive(Debug, Default)]
struct Ending {
    reason: OnceLock<(ErrorCode, String)>,
    fired: CancellationToken,
}

/// The engine's end: never blocks.
#[derive(Debug)]
pub struct ClientTx {
    msgs: mpsc::Sender<ServerMsg>,
    end: Arc<Ending>,
    metrics: Arc<SfuMetrics>,
}

/// The WebSocket task's end: the messages, and the end of the session
/// (separate, so a task can wait on both at once).
#[derive(Debug)]
pub struct ClientRx {
    pub msgs: mpsc::Receiver<ServerMsg>,
    pub end: EndSignal,
}

/// Fires when the engine ends the session.
#[derive(Debug)]
pub struct EndSignal(Arc<Ending>);

pub fn client_queue(depth: usize, metrics: Arc<SfuMetrics>) -> (ClientTx, ClientRx) {
    let (tx, rx) = mpsc::channel(depth.max(RESERVE + 1));
    let end = Arc::new(Ending::default());
    (
        ClientTx {
            msgs: tx,
            end: end.clone(),
            metrics,
        },
        ClientRx {
            msgs: rx,
            end: EndSignal(end),
        },
    )
}

impl ClientTx {
    /// Queues `m`; false if it was not (dropped, or the session is over).
    /// A control message that does not fit ends the session (`too_slow`).
    pub fn send(&self, m: ServerMsg) -> bool {
        if self.end.reason.get().is_some() {
            return false;
        }
        let droppable = m.droppable();
        if droppable && self.msgs.capacity() <= RESERVE {
            self.metrics.signal_dropped.fetch_add(1, Relaxed);
            return false;
        }
        match self.msgs.try_send(m) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) if droppable => {
                self.metrics.signal_dropped.fetch_add(1, Relaxed);
                false
            }
            Err(TrySendError::Full(_)) => {
                if self.close(
                    ErrorCode::TooSlow,
                    "this page did not keep up with the room's messages; reconnect",
                ) {
                    self.metrics.signal_too_slow.fetch_add(1, Relaxed);
                }
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the session: the page is sent `error` `code` and the socket is
    /// closed with its close code. The first reason wins; true if this was it.
    pub fn close(&self, code: ErrorCode, why: impl Into<String>) -> bool {
        let first = self.end.reason.set((code, why.into())).is_ok();
        if first {
            self.end.fired.cancel();
        }
        first
    }

    /// Why the session was ended, if it was.
    pub fn ended(&self) -> Option<ErrorCode> {
        self.end.reason.get().map(|(c, _)| *c)
    }

    /// The WebSocket task is gone.
    pub fn is_closed(&self) -> bool {
        self.msgs.is_closed()
    }
}

impl ClientRx {
    pub fn try_recv(&mut self) -> Option<ServerMsg> {
        self.msgs.try_recv().ok()
    }

    pub fn end_reason(&self) -> Option<(ErrorCode, String)> {
        self.end.reason()
    }
}

impl EndSignal {
    /// Resolves when the engine ends the session, with its reason.
    pub async fn fired(&self) -> (ErrorCode, String) {
        self.0.fired.cancelled().await;
        self.reason().unwrap_or((ErrorCode::Internal, String::new()))
    }

    pub fn reason(&self) -> Option<(ErrorCode, String)> {
        self.0.reason.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::protocol::{LinkState, PcKind};

    fn offer(n: usize) -> ServerMsg {
        ServerMsg::Offer {
            pc: PcKind::Sub,
            sdp: format!("v=0 {n}"),
            tracks: Default::default(),
        }
    }

    fn link() -> ServerMsg {
        ServerMsg::Link {
            state: LinkState::Good,
            bwe_kbps: 1,
            layer: None,
            layers: None,
        }
    }

    #[test]
    fn a_control_message_that_does_not_fit_ends_the_session_instead_of_vanishing() {
        let m = Arc::new(SfuMetrics::default());
        let (tx, mut rx) = client_queue(DEPTH, m.clone());
        for i in 0..DEPTH {
            assert!(tx.send(offer(i)), "offer {i} refused with room left");
        }
        assert_eq!(tx.ended(), None);
        assert!(!tx.send(offer(DEPTH)));
        assert_eq!(tx.ended(), Some(ErrorCode::TooSlow));
        assert_eq!(m.signal_too_slow.load(Relaxed), 1);
        // Nothing is queued after the gap: the page sees a prefix, then the end.
        assert!(!tx.send(ServerMsg::Pong));
        let mut got = 0;
        while let Some(ServerMsg::Offer { sdp, .. }) = rx.try_recv() {
            assert_eq!(sdp, format!("v=0 {got}"));
            got += 1;
        }
        assert_eq!(got, DEPTH);
        assert_eq!(rx.end_reason().map(|r| r.0), Some(ErrorCode::TooSlow));
    }

    #[test]
    fn droppable_messages_leave_room_for_control_ones() {
        let m = Arc::new(SfuMetrics::default());
        let (tx, _rx) = client_queue(DEPTH, m.clone());
        let queued = (0..DEPTH).filter(|_| tx.send(link())).count();
        assert_eq!(queued, DEPTH - RESERVE);
        assert_eq!(m.signal_dropped.load(Relaxed), RESERVE as u64);
        for i in 0..RESERVE {
            assert!(tx.send(offer(i)), "control message {i} did not fit");
        }
        assert_eq!(tx.ended(), None, "dropping `link` is no reason to end");
    }

    #[test]
    fn the_first_reason_to_end_wins_and_wakes_the_reader_even_with_a_full_queue() {
        let (tx, rx) = client_queue(DEPTH, Arc::new(SfuMetrics::default()));
        for i in 0..DEPTH {
            tx.send(offer(i));
        }
        assert!(tx.close(ErrorCode::Replaced, "another window"));
        assert!(!tx.close(ErrorCode::RoomClosed, "closed"));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (code, why) = rt.block_on(rx.end.fired());
        assert_eq!((code, why.as_str()), (ErrorCode::Replaced, "another window"));
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
    }
}
