//! The RoomManager: loads rooms on demand (exactly once per room), hands out handles, and closes
//! rooms when they idle out, when asked, and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::journal::JournalConfig;
use super::registry::{ClosingGuard, Registry};
use super::room::{Room, RoomHandle};
use super::session::{CloseReason, NewSession};
use super::tasks::Tasks;
use crate::engine::{LimitError, Limits};
use crate::ids::{RoomId, RoomKey, SessionId};
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError, WriteBudget};

/// Settings every room runs with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// An empty room is closed (saved and dropped from memory) after this long.
    pub idle_timeout: Duration,
    /// How often a changing room's log is folded into its snapshot.
    pub fold_interval: Duration,
    /// Commands a room queues before senders wait.
    pub command_queue: usize,
    pub limits: Limits,
    /// Bytes of appends queued for the storage writer at once, shared by every room of the
    /// manager: a room waits for room in it before it appends.
    pub write_budget: WriteBudget,
}

/// Default of the `storage_queue_bytes` setting.
pub const DEFAULT_STORAGE_QUEUE_BYTES: usize = 64 << 20;

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            idle_timeout: Duration::from_secs(30),
            fold_interval: Duration::from_secs(30),
            command_queue: 4096,
            limits: Limits::default(),
            write_budget: WriteBudget::new(DEFAULT_STORAGE_QUEUE_BYTES),
        }
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

/// Shared state of the manager; rooms hold a weak reference to report their closing.
pub(crate) struct Inner {
    rooms: Registry<RoomHandle>,
    storage: Arc<dyn Storage>,
    config: RoomConfig,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    next_session: AtomicU64,
}

/// Creates, finds and closes rooms. Cheap to clone.
#[derive(Clone)]
pub struct RoomManager {
    inner: Arc<Inner>,
}

impl Inner {
    /// Marks the room as closing; the guard's drop wakes those waiting to load it again.
    pub(crate) fn begin_close(&self, id: &RoomId, generation: u64) -> ClosingGuard {
        self.rooms
            .begin_close(&RoomKey::Canvas(id.clone()), generation)
    }

    /// Forgets a room that finished closing.
    pub(crate) fn finish_close(&self, id: &RoomId, generation: u64) {
        self.rooms
            .finish_close(&RoomKey::Canvas(id.clone()), generation);
    }
}

impl RoomManager {
    /// Where every room's journal writes: the storage, the shared write budget and the metrics
    /// (game rooms use the same).
    pub fn journal_config(&self) -> JournalConfig {
        JournalConfig {
            storage: self.inner.storage.clone(),
            budget: self.inner.config.write_budget.clone(),
            metrics: self.inner.metrics.clone(),
        }
    }

    /// A manager whose rooms run as `tasks`.
    pub fn new(
        storage: Arc<dyn Storage>,
        config: RoomConfig,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Self {
        RoomManager {
            inner: Arc::new(Inner {
                rooms: Registry::default(),
                storage,
                config,
                metrics,
                tasks,
                next_session: AtomicU64::new(1),
            }),
        }
    }

    /// The room's handle, creating (and loading) the room if it is not live. Concurrent calls for
    /// the same new room share one room and one load.
    pub async fn get_or_create(&self, id: &RoomId) -> Result<RoomHandle, JoinError> {
        let spawn = |generation| {
            Room::spawn(
                id.clone(),
                generation,
                self.inner.config.clone(),
                self.journal_config(),
                Arc::downgrade(&self.inner),
                &self.inner.tasks,
            )
        };
        let key = RoomKey::Canvas(id.clone());
        self.inner
            .rooms
            .get_or_spawn(&key, spawn)
            .await
            .map_err(|_| JoinError::ShuttingDown)
    }

    /// Joins a session to a room (loading the room if needed) and returns the handle and the
    /// session's id. A room that closes while the join is on its way is loaded again.
    pub async fn join(
        &self,
        room: &RoomId,
        mut session: NewSession,
    ) -> Result<(RoomHandle, SessionId), JoinError> {
        loop {
            let handle = self.get_or_create(room).await?;
            let id = SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed));
            match handle.join(id, session).await {
                Ok(()) => return Ok((handle, id)),
                Err((JoinError::RoomClosed, Some(returned))) => session = returned,
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// The room's handle if it is live; never creates.
    pub fn existing(&self, id: &RoomId) -> Option<RoomHandle> {
        self.inner.rooms.existing(&RoomKey::Canvas(id.clone()))
    }

    /// Ids of the live rooms.
    pub fn room_ids(&self) -> Vec<RoomId> {
        let rooms = self.inner.rooms.open().into_iter();
        rooms.filter_map(|(key, _)| key.canvas().cloned()).collect()
    }

    /// Closes one room: its sessions are closed with `reason`, its document saved.
    pub async fn close_room(&self, id: &RoomId, reason: CloseReason) -> Result<(), StorageError> {
        match self.existing(id) {
            Some(handle) => handle.close(reason).await,
            None => Ok(()),
        }
    }

    /// Shutdown: refuses new sessions, closes every session of every room (so nothing more is
    /// acked), then saves every room. Returns the save errors, if any.
    pub async fn close_all(&self) -> Vec<StorageError> {
        let close =
            |_, handle: RoomHandle| async move { handle.close(CloseReason::shutting_down()).await };
        self.inner.rooms.close_all(close).await
    }
}
