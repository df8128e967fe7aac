//! What a room knows of a connection, and how it reaches it.

use std::collections::VecDeque;

use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Permission;
use crate::ids::{ClientId, SessionId};

/// Why a room ends a session; the transport turns it into a WebSocket close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> CloseReason {
        CloseReason {
            code,
            reason: reason.into(),
        }
    }

    /// 1013: the client could not keep up; it reconnects and catches up with a diff.
    pub fn slow_client() -> CloseReason {
        CloseReason::new(1013, "client too slow: outbound queue full")
    }

    /// 1001: the server is going away.
    pub fn shutting_down() -> CloseReason {
        CloseReason::new(1001, "server shutting down")
    }

    /// 1001: the room was closed (evicted or closed by an operator).
    pub fn room_closed() -> CloseReason {
        CloseReason::new(1001, "room closed")
    }

    /// 1011: the room's stored state could not be loaded.
    pub fn storage_unavailable() -> CloseReason {
        CloseReason::new(1011, "room storage unavailable, retry later")
    }
}

/// The room's way to reach a connection: a bounded frame queue and a one-shot close signal.
///
/// With a write-ahead log, a frame may only leave once every write the room made before it is
/// durable (an ack is a promise; a broadcast must not show a write a crash could undo). Such
/// frames wait in `held`, tagged with the room clock at the time they were made, in order.
pub struct Outbox {
    frames: mpsc::Sender<ByteString>,
    close: Option<oneshot::Sender<CloseReason>>,
    held: VecDeque<(u64, ByteString)>,
    capacity: usize,
}

/// The connection's ends of an [`Outbox`].
pub struct SessionLink {
    pub frames: mpsc::Receiver<ByteString>,
    pub close: oneshot::Receiver<CloseReason>,
}

/// The result of queueing a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The queue is full: the client is too slow and must be disconnected.
    Full,
    /// The connection is already gone; its leave is on the way.
    Gone,
}

impl Outbox {
    /// A new outbox holding at most `capacity` frames, with the connection's ends.
    pub fn new(capacity: usize) -> (Outbox, SessionLink) {
        let (frames_tx, frames_rx) = mpsc::channel(capacity.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        (
            Outbox {
                frames: frames_tx,
                close: Some(close_tx),
                held: VecDeque::new(),
                capacity: capacity.max(1),
            },
            SessionLink {
                frames: frames_rx,
                close: close_rx,
            },
        )
    }

    /// Queues a frame made when the room clock was `tag`; it leaves once `durable >= tag`.
    pub(crate) fn send(&mut self, frame: &ByteString, tag: u64, durable: u64) -> Delivery {
        if tag <= durable && self.held.is_empty() {
            return self.push(frame.clone());
        }
        if self.held.len() >= self.capacity {
            return Delivery::Full;
        }
        self.held.push_back((tag, frame.clone()));
        Delivery::Queued
    }

    /// Sends the held frames that are now durable.
    pub(crate) fn release(&mut self, durable: u64) -> Delivery {
        while let Some((tag, _)) = self.held.front() {
            if *tag > durable {
                break;
            }
            let Some((_, frame)) = self.held.pop_front() else {
                break;
            };
            let delivery = self.push(frame);
            if delivery != Delivery::Queued {
                return delivery;
            }
        }
        Delivery::Queued
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    fn push(&self, frame: ByteString) -> Delivery {
        match self.frames.try_send(frame) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        if let Some(close) = self.close.take() {
            let _ = close.send(reason);
        }
    }
}

/// A connection asking to join a room, already authorized.
pub struct NewSession {
    pub client: ClientId,
    pub permission: Permission,
    pub metadata: Value,
    pub outbox: Outbox,
}

/// A session as the room API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub client: ClientId,
    pub permission: Permission,
    pub metadata: Value,
}
