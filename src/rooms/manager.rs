//! The RoomManager: loads rooms on demand (exactly once per room), hands out handles, and closes
//! rooms when they idle out, when asked, and at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::journal::JournalConfig;
use super::room::{Room, RoomHandle};
use super::session::{CloseReason, NewSession};
use super::tasks::Tasks;
use crate::engine::{LimitError, Limits};
use crate::ids::{RoomId, SessionId};
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

enum Slot {
    Open(RoomHandle),
    /// Closing: saving its last state. A new room for the id waits until this one is gone, so it
    /// loads what the old one saved.
    Closing(watch::Receiver<()>),
}

/// Shared state of the manager; rooms hold a weak reference to report their closing.
pub(crate) struct Inner {
    slots: Mutex<HashMap<RoomId, Slot>>,
    storage: Arc<dyn Storage>,
    config: RoomConfig,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    shutting_down: AtomicBool,
    next_generation: AtomicU64,
    next_session: AtomicU64,
}

/// Creates, finds and closes rooms. Cheap to clone.
#[derive(Clone)]
pub struct RoomManager {
    inner: Arc<Inner>,
}

impl Inner {
    fn slots(&self) -> MutexGuard<'_, HashMap<RoomId, Slot>> {
        // Held only for map lookups and inserts, never across an await; a panic elsewhere cannot
        // leave the map inconsistent, so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the room as closing; returns the sender whose drop wakes those waiting for it.
    pub(crate) fn begin_close(&self, id: &RoomId, generation: u64) -> watch::Sender<()> {
        let (tx, rx) = watch::channel(());
        let mut slots = self.slots();
        if matches!(slots.get(id), Some(Slot::Open(h)) if h.generation == generation) {
            slots.insert(id.clone(), Slot::Closing(rx));
        }
        tx
    }

    /// Forgets a room that finished closing.
    pub(crate) fn finish_close(&self, id: &RoomId, generation: u64) {
        let mut slots = self.slots();
        let closing_or_same = match slots.get(id) {
            Some(Slot::Closing(_)) => true,
            Some(Slot::Open(h)) => h.generation == generation,
            None => false,
        };
        if closing_or_same {
            slots.remove(id);
        }
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
                slots: Mutex::new(HashMap::new()),
                storage,
                config,
                metrics,
                tasks,
                shutting_down: AtomicBool::new(false),
                next_generation: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
            }),
        }
    }

    /// The room's handle, creating (and loading) the room if it is not live. Concurrent calls for
    /// the same new room share one room and one load.
    pub async fn get_or_create(&self, id: &RoomId) -> Result<RoomHandle, JoinError> {
        loop {
            let mut closing = {
                let mut slots = self.inner.slots();
                if self.inner.shutting_down.load(Ordering::SeqCst) {
                    return Err(JoinError::ShuttingDown);
                }
                match slots.get(id) {
                    Some(Slot::Open(handle)) => return Ok(handle.clone()),
                    Some(Slot::Closing(done)) => done.clone(),
                    None => {
                        let handle = Room::spawn(
                            id.clone(),
                            self.inner.next_generation.fetch_add(1, Ordering::Relaxed),
                            self.inner.config.clone(),
                            self.journal_config(),
                            Arc::downgrade(&self.inner),
                            &self.inner.tasks,
                        );
                        slots.insert(id.clone(), Slot::Open(handle.clone()));
                        return Ok(handle);
                    }
                }
            };
            // Resolves with an error once the closing room dropped its sender.
            let _ = closing.changed().await;
        }
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
        match self.inner.slots().get(id) {
            Some(Slot::Open(handle)) => Some(handle.clone()),
            _ => None,
        }
    }

    /// Ids of the live rooms.
    pub fn room_ids(&self) -> Vec<RoomId> {
        let slots = self.inner.slots();
        slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Open(_)))
            .map(|(id, _)| id.clone())
            .collect()
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
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let (mut open, mut closing) = (Vec::new(), Vec::new());
        for slot in self.inner.slots().values() {
            match slot {
                Slot::Open(handle) => open.push(handle.clone()),
                Slot::Closing(done) => closing.push(done.clone()),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for handle in open {
            tasks.spawn(async move { handle.close(CloseReason::shutting_down()).await });
        }
        for mut rx in closing {
            tasks.spawn(async move {
                let _ = rx.changed().await;
                Ok(())
            });
        }
        let mut errors = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                errors.push(e);
            }
        }
        errors
    }
}
