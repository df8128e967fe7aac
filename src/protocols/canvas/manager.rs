//! The RoomManager: loads rooms on demand (exactly once per room), hands out handles, and closes
//! rooms when they idle out, when asked, and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::config::RoomConfig;
use super::room::{Room, RoomHandle};
use crate::ids::{RoomId, RoomKey, SessionId};
use crate::metrics::Metrics;
use crate::rooms::{CloseReason, JoinError, JournalConfig, NewSession, Registry, Tasks};
use crate::storage::{Storage, StorageError};

/// Shared state of the manager.
struct Inner {
    /// Rooms hold it too, to report their closing.
    rooms: Arc<Registry<RoomHandle>>,
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
                rooms: Arc::default(),
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
                self.inner.rooms.clone(),
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
