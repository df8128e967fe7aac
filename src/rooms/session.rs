//! What a room knows of a connection, and how it reaches it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytestring::ByteString;
use serde_json::Value;

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

/// The room's way to reach a connection: a bounded frame queue and a close signal.
///
/// With a write-ahead log, a frame may only leave once every write the room made before it is
/// durable (an ack is a promise; a broadcast must not show a write a crash could undo). Such
/// frames wait in `held`, tagged with the room clock at the time they were made, in order.
pub struct Outbox {
    queue: Arc<Mutex<Queue>>,
    held: VecDeque<(u64, ByteString)>,
    capacity: usize,
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
    /// The queue is full: the client is too slow and must be disconnected.
    Full,
    /// The connection is already gone; its leave is on the way.
    Gone,
}

impl Outbox {
    /// A new outbox holding at most `capacity` frames, with the connection's end.
    pub fn new(capacity: usize) -> (Outbox, SessionLink) {
        let queue = Arc::new(Mutex::new(Queue {
            frames: VecDeque::new(),
            close: None,
            room_gone: false,
            connection_gone: false,
            waiter: None,
        }));
        (
            Outbox {
                queue: queue.clone(),
                held: VecDeque::new(),
                capacity: capacity.max(1),
            },
            SessionLink { queue },
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
        let waiter = {
            let mut queue = lock(&self.queue);
            if queue.connection_gone {
                return Delivery::Gone;
            }
            if queue.frames.len() >= self.capacity {
                return Delivery::Full;
            }
            queue.frames.push_back(frame);
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Delivery::Queued
    }

    /// Ends the session with `reason`, after the frames already queued. A client closed for
    /// being too slow gets none of them: it reconnects and catches up with a diff.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        let waiter = {
            let mut queue = lock(&self.queue);
            if reason == CloseReason::slow_client() {
                queue.frames = VecDeque::new();
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
        if let Some(frame) = queue.frames.pop_front() {
            if queue.frames.is_empty() && queue.frames.capacity() > KEPT_QUEUE_CAPACITY {
                queue.frames = VecDeque::new();
            }
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
        lock(&self.queue).frames.pop_front()
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        queue.connection_gone = true;
        queue.frames = VecDeque::new();
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
