//! What the rest of the server holds of a live game room: its [`RoomHandle`] (a bounded command
//! channel) and its [`RoomStatus`] (what may be known without asking it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::sender::Sender;
use crate::protocols::game::wire::ErrorCode;
use crate::rooms::{CloseReason, ClosingFold, LiveRoom, Outbox};
use crate::storage::StorageError;

/// What connections (and the manager) ask of a room.
pub(super) enum Command {
    Join {
        sender: Sender,
        options: Value,
        outbox: Outbox,
        reply: oneshot::Sender<Result<(), JoinRefused>>,
    },
    Action {
        connection_id: String,
        request_id: String,
        action_type: String,
        payload: Value,
    },
    /// The client sent `leave`.
    Leave { connection_id: String },
    /// The socket closed without `leave`.
    Disconnected { connection_id: String },
    /// The connection's token was refreshed.
    Refreshed { sender: Sender },
    /// Loaded to fire a timer: nothing to do but run.
    Wake,
    /// Close every connection with `reason` (1011 instead if a write failed), fold, stop.
    Close {
        reason: CloseReason,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinRefused {
    /// Refused for good: `error {code, message}`, then close 4003.
    Denied { code: ErrorCode, message: String },
    /// The room was closing; ask the manager for a fresh handle and retry.
    Retry,
    /// The room cannot be loaded (storage); close 1011.
    Unavailable(String),
}

/// What the rest of the server may know of a live room without asking it.
#[derive(Debug)]
pub struct RoomStatus {
    /// Players holding a seat.
    pub players: AtomicUsize,
    /// Players with a joined connection (the others are within their reconnect grace period).
    pub connected: AtomicUsize,
    pub max_players: AtomicUsize,
    pub locked: AtomicBool,
    pub private: AtomicBool,
    metadata: Mutex<Value>,
    /// Seats promised by matchmaking, each until its deadline.
    reservations: Mutex<Vec<Instant>>,
}

/// How long a seat handed out by matchmaking is held for the client to join.
const RESERVATION: Duration = Duration::from_secs(15);

impl RoomStatus {
    pub(super) fn new(max_players: usize) -> RoomStatus {
        RoomStatus {
            players: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            max_players: AtomicUsize::new(max_players),
            locked: AtomicBool::new(false),
            private: AtomicBool::new(false),
            metadata: Mutex::new(Value::Object(Map::new())),
            reservations: Mutex::new(Vec::new()),
        }
    }

    pub fn metadata(&self) -> Value {
        self.metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_metadata(&self, metadata: &Value) {
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = metadata.clone();
    }

    fn live_reservations(&self) -> usize {
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        r.retain(|deadline| *deadline > now);
        r.len()
    }

    /// When the last live matchmaking reservation runs out, if any: an empty room is kept until
    /// then, so the seat it promised is still there when the client comes.
    pub(super) fn reserved_until(&self) -> Option<Instant> {
        let _ = self.live_reservations();
        let r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().max().copied()
    }

    /// Takes one matchmaking reservation, if any (a join consumes the seat it was promised).
    pub(super) fn take_reservation(&self) -> bool {
        let _ = self.live_reservations();
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .is_some()
    }

    /// No seat left for a new player (reserved seats count as taken).
    pub fn is_full(&self) -> bool {
        self.players.load(Ordering::Relaxed) + self.live_reservations()
            >= self.max_players.load(Ordering::Relaxed)
    }

    /// Checked before the WebSocket upgrade, when the user is not known yet: every seat is taken
    /// by a connected player. Seats held for disconnected players (who may be the one connecting)
    /// and matchmaking reservations (likewise) do not count; the join checks the seats exactly.
    pub fn is_full_for_newcomers(&self) -> bool {
        self.connected.load(Ordering::Relaxed) >= self.max_players.load(Ordering::Relaxed)
    }

    /// Reserves a seat for a matchmade client, unless the room is full, locked or private.
    pub(super) fn try_reserve(&self) -> bool {
        if self.locked.load(Ordering::Relaxed) || self.private.load(Ordering::Relaxed) {
            return false;
        }
        if self.is_full() {
            return false;
        }
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now() + RESERVATION);
        true
    }
}

/// A live room's mailbox.
#[derive(Clone)]
pub struct RoomHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub status: Arc<RoomStatus>,
}

impl RoomHandle {
    /// Queues a command; `false` when the room has stopped (the caller reloads it and retries).
    /// Queued when called (see [`crate::rooms::send_command`]).
    pub(super) fn send(&self, command: Command) -> impl std::future::Future<Output = bool> + '_ {
        crate::rooms::send_command(&self.commands, command)
    }

    /// Runs an action; its result or error reaches the connection's outbox.
    pub async fn action(
        &self,
        connection_id: String,
        request_id: String,
        action_type: String,
        payload: Value,
    ) {
        self.send(Command::Action {
            connection_id,
            request_id,
            action_type,
            payload,
        })
        .await;
    }

    /// The client left on purpose (`leave`): `on_leave(Leave)` at once.
    pub async fn leave(&self, connection_id: String) {
        self.send(Command::Leave { connection_id }).await;
    }

    /// The socket closed: the player keeps its seat for the reconnect grace period.
    pub async fn disconnected(&self, connection_id: String) {
        self.send(Command::Disconnected { connection_id }).await;
    }

    /// The connection's token was refreshed (same user, maybe a new role).
    pub async fn refreshed(&self, sender: Sender) {
        self.send(Command::Refreshed { sender }).await;
    }
}

impl LiveRoom for RoomHandle {
    fn close(&self, reason: CloseReason) -> ClosingFold {
        let handle = self.clone();
        Box::pin(async move {
            let (done, folded) = oneshot::channel();
            if !handle.send(Command::Close { reason, done }).await {
                return Ok(()); // already ended
            }
            folded.await.unwrap_or(Ok(()))
        })
    }
}
