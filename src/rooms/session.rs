//! What a room knows of a connection, and how it reaches it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytestring::ByteString;
use serde_json::Value;

use crate::auth::Permission;
use crate::engine::LimitError;
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

/// Why a session could not join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room closed while the join was on its way; joining again loads it anew.
    #[error("room closed")]
    RoomClosed,
    /// The server is shutting down and takes no new sessions.
    #[error("server shutting down")]
    ShuttingDown,
    /// The room's stored state could not be loaded; the room is not served until it can be.
    #[error("room storage unavailable")]
    StorageUnavailable,
    /// The room's stored state is over the configured limits; it is not served until an
    /// operator raises them (other rooms are not affected).
    #[error("room is over its limits: {0}")]
    OverLimit(LimitError),
}

/// The room's way to reach a connection: a frame queue bounded in bytes and a close signal.
///
/// With a write-ahead log, a frame may only leave once every write the room made before it is
/// durable (an ack is a promise; a broadcast must not show a write a crash could undo). Such
/// frames wait in `held`, tagged with the room clock at the time they were made, in order.
///
/// One rule bounds both: a frame is taken while the frames held and queued (not yet taken by the
/// connection) cost less than `max_bytes` (see [`frame_cost`]); past that the client is too slow.
/// The check is made before the frame is added, so one frame larger than the cap (a reconnect
/// reply of a large document) still goes to a client that keeps up: a session pins at most
/// `max_bytes` plus its largest frame.
pub struct Outbox {
    queue: Arc<Mutex<Queue>>,
    held: VecDeque<(u64, ByteString)>,
    /// What the frames in `held` cost.
    held_bytes: usize,
    max_bytes: usize,
}

/// The connection's end of an [`Outbox`].
pub struct SessionLink {
    queue: Arc<Mutex<Queue>>,
}

/// What a connection gets from its room: frames in order, then (once every frame queued before
/// it is taken) the close.
#[derive(Debug, PartialEq)]
pub enum LinkEvent {
    Frame(ByteString),
    Closed(CloseReason),
}

/// The queue between a room and one connection. A plain locked deque rather than a channel: it
/// allocates nothing while empty, where a channel's first block alone costs ~1 KiB for each of
/// thousands of mostly idle connections. The lock is held for a push or a pop, never across an
/// `.await`.
struct Queue {
    frames: VecDeque<ByteString>,
    /// What the frames in `frames` cost.
    bytes: usize,
    close: Option<CloseReason>,
    /// The room dropped its `Outbox` (the session left the room).
    room_gone: bool,
    /// The connection dropped its `SessionLink`.
    connection_gone: bool,
    /// The connection's task, waiting for a frame.
    waiter: Option<Waker>,
}

/// A deque emptied by the connection keeps at most this much room (idle connections hold
/// nothing large).
const KEPT_QUEUE_CAPACITY: usize = 8;

/// What a queued frame counts against a session's byte cap: its text and its slot. A broadcast's
/// text is shared by every session it is queued for, yet counted in full for each: it is what a
/// reader that does not read keeps alive.
pub(crate) fn frame_cost(frame: &ByteString) -> usize {
    frame.len() + std::mem::size_of::<(u64, ByteString)>()
}

impl Queue {
    fn pop(&mut self) -> Option<ByteString> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame_cost(&frame);
        if self.frames.is_empty() && self.frames.capacity() > KEPT_QUEUE_CAPACITY {
            self.frames = VecDeque::new();
        }
        Some(frame)
    }

    fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A panic while holding this lock leaves the queue consistent (each step is one push or pop).
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of queueing a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The queue holds its byte cap: the client is too slow and must be disconnected.
    Full,
    /// The connection is already gone; its leave is on the way.
    Gone,
}

impl Outbox {
    /// A new outbox holding about `max_bytes` (see [`Outbox`]), with the connection's end.
    pub fn new(max_bytes: usize) -> (Outbox, SessionLink) {
        let queue = Arc::new(Mutex::new(Queue {
            frames: VecDeque::new(),
            bytes: 0,
            close: None,
            room_gone: false,
            connection_gone: false,
            waiter: None,
        }));
        (
            Outbox {
                queue: queue.clone(),
                held: VecDeque::new(),
                held_bytes: 0,
                max_bytes: max_bytes.max(1),
            },
            SessionLink { queue },
        )
    }

    /// Queues a frame made when the room clock was `tag`; it leaves once `durable >= tag`.
    pub(crate) fn send(&mut self, frame: &ByteString, tag: u64, durable: u64) -> Delivery {
        let mut queue = lock(&self.queue);
        if queue.connection_gone {
            return Delivery::Gone;
        }
        if queue.bytes + self.held_bytes >= self.max_bytes {
            return Delivery::Full;
        }
        if tag <= durable && self.held.is_empty() {
            queue.bytes += frame_cost(frame);
            queue.frames.push_back(frame.clone());
            let waiter = queue.waiter.take();
            drop(queue);
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        } else {
            self.held_bytes += frame_cost(frame);
            self.held.push_back((tag, frame.clone()));
        }
        Delivery::Queued
    }

    /// Sends the held frames that are now durable (already counted: never `Full`).
    pub(crate) fn release(&mut self, durable: u64) -> Delivery {
        let waiter = {
            let mut queue = lock(&self.queue);
            if queue.connection_gone {
                return Delivery::Gone;
            }
            let mut moved = false;
            while self.held.front().is_some_and(|(tag, _)| *tag <= durable) {
                let Some((_, frame)) = self.held.pop_front() else {
                    break;
                };
                let cost = frame_cost(&frame);
                self.held_bytes -= cost;
                queue.bytes += cost;
                queue.frames.push_back(frame);
                moved = true;
            }
            if moved {
                queue.waiter.take()
            } else {
                None
            }
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Delivery::Queued
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// What the frames held and queued for the connection (not yet taken by it) cost.
    #[cfg(test)]
    pub(crate) fn pending_bytes(&self) -> usize {
        lock(&self.queue).bytes + self.held_bytes
    }

    /// Ends the session with `reason`, after the frames already queued. A client closed for
    /// being too slow gets none of them: it reconnects and catches up with a diff.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        let waiter = {
            let mut queue = lock(&self.queue);
            if reason == CloseReason::slow_client() {
                queue.clear();
            }
            queue.close.get_or_insert(reason);
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waiter = {
            let mut queue = lock(&self.queue);
            queue.room_gone = true;
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

impl SessionLink {
    /// The next frame or, once none is left, the close: the room's reason, or `room_closed` if
    /// the room let the session go without one. Cancel-safe.
    pub async fn next(&mut self) -> LinkEvent {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<LinkEvent> {
        let mut queue = lock(&self.queue);
        if let Some(frame) = queue.pop() {
            return Poll::Ready(LinkEvent::Frame(frame));
        }
        if let Some(reason) = &queue.close {
            return Poll::Ready(LinkEvent::Closed(reason.clone()));
        }
        if queue.room_gone {
            return Poll::Ready(LinkEvent::Closed(CloseReason::room_closed()));
        }
        match &mut queue.waiter {
            Some(waiter) if waiter.will_wake(cx.waker()) => {}
            waiter => *waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves with the close once the room has closed the session, frames still queued or
    /// not (to stop waiting on a socket that stopped reading). Cancel-safe.
    pub async fn closed(&mut self) -> CloseReason {
        std::future::poll_fn(|cx| {
            let mut queue = lock(&self.queue);
            if let Some(reason) = &queue.close {
                return Poll::Ready(reason.clone());
            }
            if queue.room_gone {
                return Poll::Ready(CloseReason::room_closed());
            }
            match &mut queue.waiter {
                Some(waiter) if waiter.will_wake(cx.waker()) => {}
                waiter => *waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame if one is queued (to batch several into one socket write).
    pub fn try_frame(&mut self) -> Option<ByteString> {
        lock(&self.queue).pop()
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        queue.connection_gone = true;
        queue.clear();
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
