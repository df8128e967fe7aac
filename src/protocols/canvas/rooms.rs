//! [`CanvasRooms`]: the canvas protocol's door to the [`RoomManager`]: loads canvas rooms (with
//! the canvas room settings) and joins sessions to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::config::RoomConfig;
use super::room::{Room, RoomHandle};
use crate::ids::{RoomId, RoomKey, SessionId};
use crate::rooms::{CloseReason, JoinError, NewSession, RoomManager, JOIN_ATTEMPTS};
use crate::storage::StorageError;

struct Inner {
    manager: RoomManager,
    config: RoomConfig,
    next_session: AtomicU64,
}

/// The canvas rooms of a server's [`RoomManager`]. Cheap to clone.
#[derive(Clone)]
pub struct CanvasRooms {
    inner: Arc<Inner>,
}

impl CanvasRooms {
    /// Canvas rooms, run with `config`, in `manager`.
    pub fn new(manager: RoomManager, config: RoomConfig) -> CanvasRooms {
        CanvasRooms {
            inner: Arc::new(Inner {
                manager,
                config,
                next_session: AtomicU64::new(1),
            }),
        }
    }

    /// The manager the canvas rooms live in.
    pub fn manager(&self) -> &RoomManager {
        &self.inner.manager
    }

    /// The room's handle, creating (and loading) the room if it is not live. Concurrent calls for
    /// the same new room share one room and one load.
    pub async fn get_or_create(&self, id: &RoomId) -> Result<RoomHandle, JoinError> {
        let manager = &self.inner.manager;
        let spawn = |registration| {
            Room::spawn(
                id.clone(),
                registration,
                self.inner.config.clone(),
                manager.journal_config().clone(),
                manager.tasks(),
            )
        };
        let key = RoomKey::Canvas(id.clone());
        manager
            .load(&key, spawn)
            .await
            .map_err(|_| JoinError::ShuttingDown)
    }

    /// Joins a session to a room (loading the room if needed) and returns the handle and the
    /// session's id. A room that closes while the join is on its way is loaded again, up to
    /// `JOIN_ATTEMPTS` times.
    pub async fn join(
        &self,
        room: &RoomId,
        mut session: NewSession,
    ) -> Result<(RoomHandle, SessionId), JoinError> {
        for _ in 0..JOIN_ATTEMPTS {
            let handle = self.get_or_create(room).await?;
            let id = SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed));
            match handle.join(id, session).await {
                Ok(()) => return Ok((handle, id)),
                Err((JoinError::RoomClosed, Some(returned))) => session = returned,
                Err((error, _)) => return Err(error),
            }
        }
        Err(JoinError::RoomClosed)
    }

    /// The room's handle if it is live; never creates.
    pub fn existing(&self, id: &RoomId) -> Option<RoomHandle> {
        self.inner.manager.existing(&RoomKey::Canvas(id.clone()))
    }

    /// Ids of the live canvas rooms.
    pub fn room_ids(&self) -> Vec<RoomId> {
        let keys = self.inner.manager.room_keys().into_iter();
        keys.filter_map(|key| key.canvas().cloned()).collect()
    }

    /// Closes one room: its sessions are closed with `reason`, its document saved.
    pub async fn close_room(&self, id: &RoomId, reason: CloseReason) -> Result<(), StorageError> {
        let key = RoomKey::Canvas(id.clone());
        self.inner.manager.close(&key, reason).await
    }
}
