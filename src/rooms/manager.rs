//! [`RoomManager`]: the one manager of live rooms, canvas and game alike, keyed by [`RoomKey`].
//! It loads each room once (through the protocol's spawn function), hands out its handle, closes
//! one room or all of them at once, and knows where rooms write and run. Rooms evict themselves
//! when idle (each protocol's own rule, on its schedule) and report their closing through their
//! [`Registration`], so the key loads again only after the final fold.
//!
//! The manager sits below the protocols, so it holds rooms as [`LiveRoom`] trait objects; a
//! protocol gets its own handle type back by key (a canvas key always holds a canvas room).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::registry::{ClosingGuard, Registry, ShuttingDown};
use super::{CloseReason, JournalConfig, Tasks};
use crate::ids::RoomKey;
use crate::storage::StorageError;

/// How many times a join that meets a closing room loads the room again before it gives up
/// (the client is told to retry later).
pub(crate) const JOIN_ATTEMPTS: usize = 5;

/// A live room's handle as the manager holds it, whatever its protocol.
pub trait LiveRoom: Any + Send + Sync {
    /// Closes every session with `reason`, folds the room's state and ends the room. Resolves
    /// once the fold is done (at once if the room already ended).
    fn close(&self, reason: CloseReason) -> ClosingFold;
}

/// What [`LiveRoom::close`] resolves to: the final fold's result.
pub type ClosingFold = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

type Rooms = Registry<Arc<dyn LiveRoom>>;

struct Inner {
    rooms: Arc<Rooms>,
    journal: JournalConfig,
    tasks: Tasks,
}

/// The live rooms of a server, both protocols. Cheap to clone.
#[derive(Clone)]
pub struct RoomManager {
    inner: Arc<Inner>,
}

/// A room's entry in the manager, handed to it at spawn: through it the room tells the manager
/// that it is closing.
pub(crate) struct Registration {
    rooms: Arc<Rooms>,
    key: RoomKey,
    generation: u64,
}

impl Registration {
    /// The room starts closing: no new handle for its key until the [`Closing`] is dropped
    /// (after the final fold).
    pub(crate) fn begin_close(&self) -> Closing {
        Closing {
            _waiters: self.rooms.begin_close(&self.key, self.generation),
            rooms: self.rooms.clone(),
            key: self.key.clone(),
            generation: self.generation,
        }
    }
}

/// A room closing. Dropped (once its final fold is done), the manager forgets the room, then
/// those waiting for its key go on and load it anew.
pub(crate) struct Closing {
    rooms: Arc<Rooms>,
    key: RoomKey,
    generation: u64,
    /// Dropped after `drop` has forgotten the room (fields drop last): waiters then load anew.
    _waiters: ClosingGuard,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.rooms.finish_close(&self.key, self.generation);
    }
}

impl RoomManager {
    /// A manager whose rooms write through `journal` and run as `tasks`.
    pub fn new(journal: JournalConfig, tasks: Tasks) -> RoomManager {
        RoomManager {
            inner: Arc::new(Inner {
                rooms: Arc::default(),
                journal,
                tasks,
            }),
        }
    }

    /// Where every room's journal writes: the storage, the shared write budget and the metrics.
    pub fn journal_config(&self) -> &JournalConfig {
        &self.inner.journal
    }

    /// The server's task tracker: rooms run there, not on the connection that loaded them.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The live room's handle, or a new room's: `spawn` starts it (its load first). Concurrent
    /// calls for one key share one room and one load; a closing room's key waits for its fold.
    pub(crate) async fn load<H>(
        &self,
        key: &RoomKey,
        spawn: impl FnOnce(Registration) -> H,
    ) -> Result<H, ShuttingDown>
    where
        H: LiveRoom + Clone,
    {
        let rooms = &self.inner.rooms;
        let spawn = |generation| {
            let registration = Registration {
                rooms: rooms.clone(),
                key: key.clone(),
                generation,
            };
            Arc::new(spawn(registration)) as Arc<dyn LiveRoom>
        };
        let room = rooms.get_or_spawn(key, spawn).await?;
        Ok(downcast(room, key))
    }

    /// The live room's handle if it is live; never loads.
    pub fn existing<H: LiveRoom + Clone>(&self, key: &RoomKey) -> Option<H> {
        let room = self.inner.rooms.existing(key)?;
        Some(downcast(room, key))
    }

    /// The keys of the live rooms, both kinds.
    pub fn room_keys(&self) -> Vec<RoomKey> {
        let open = self.inner.rooms.open().into_iter();
        open.map(|(key, _)| key).collect()
    }

    /// The live rooms of one kind, with their handles.
    pub fn rooms_of<H: LiveRoom + Clone>(&self) -> Vec<(RoomKey, H)> {
        let open = self.inner.rooms.open().into_iter();
        open.filter_map(|(key, room)| {
            let any: Arc<dyn Any + Send + Sync> = room;
            any.downcast::<H>().ok().map(|h| (key, (*h).clone()))
        })
        .collect()
    }

    /// Closes one room: its sessions with `reason`, then its final fold. Nothing if not live.
    pub async fn close(&self, key: &RoomKey, reason: CloseReason) -> Result<(), StorageError> {
        match self.inner.rooms.existing(key) {
            Some(room) => room.close(reason).await,
            None => Ok(()),
        }
    }

    /// Shutdown: refuses new rooms, then closes every room of both protocols at once (sessions
    /// first, so nothing more is acked, then the final folds) and waits for those already
    /// closing. Returns the rooms whose fold failed.
    pub async fn close_all(&self) -> Vec<(RoomKey, StorageError)> {
        let close = |key: RoomKey, room: Arc<dyn LiveRoom>| async move {
            room.close(CloseReason::shutting_down())
                .await
                .map_err(|e| (key, e))
        };
        self.inner.rooms.close_all(close).await
    }
}

/// A handle back as its protocol's type. Each key kind belongs to one protocol, whose handles
/// alone are stored under it, so a mismatch is a bug in weft, not an input.
fn downcast<H: LiveRoom + Clone>(room: Arc<dyn LiveRoom>, key: &RoomKey) -> H {
    let any: Arc<dyn Any + Send + Sync> = room;
    match any.downcast::<H>() {
        Ok(handle) => (*handle).clone(),
        Err(_) => unreachable!("room {key} holds another protocol's handle"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Barrier;

    use super::*;
    use crate::ids::{RecordKey, RoomId};
    use crate::metrics::Metrics;
    use crate::storage::{MemoryStorage, WriteBudget};

    /// A stand-in room: closing waits at `barrier`, then reports the close to the manager.
    #[derive(Clone)]
    struct Fake<const KIND: u8> {
        registration: Arc<Mutex<Option<Registration>>>,
        barrier: Arc<Barrier>,
    }

    impl<const KIND: u8> LiveRoom for Fake<KIND> {
        fn close(&self, _reason: CloseReason) -> ClosingFold {
            let (registration, barrier) = (self.registration.clone(), self.barrier.clone());
            Box::pin(async move {
                let taken = registration
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(registration) = taken {
                    let closing = registration.begin_close();
                    barrier.wait().await;
                    drop(closing);
                }
                Ok(())
            })
        }
    }

    type Canvas = Fake<0>;
    type Game = Fake<1>;

    fn manager() -> RoomManager {
        let journal = JournalConfig {
            storage: Arc::new(MemoryStorage::default()),
            budget: WriteBudget::new(1 << 20),
            metrics: Arc::new(Metrics::default()),
        };
        RoomManager::new(journal, Tasks::current())
    }

    fn canvas_key(id: &str) -> RoomKey {
        RoomKey::Canvas(RoomId::parse(id).expect("room id"))
    }

    fn game_key(id: &str) -> RoomKey {
        let ns = RoomId::parse("arena").expect("namespace");
        RoomKey::Game(RecordKey::new(ns, RoomId::parse(id).expect("room id")))
    }

    fn spawner<const K: u8>(barrier: &Arc<Barrier>) -> impl FnOnce(Registration) -> Fake<K> {
        let barrier = barrier.clone();
        move |registration| Fake {
            registration: Arc::new(Mutex::new(Some(registration))),
            barrier,
        }
    }

    /// One manager holds rooms of both kinds by key: a key loads once (the second load gets the
    /// first room), each kind comes back as its own handle type, and closing one key closes that
    /// room only.
    #[tokio::test]
    async fn rooms_of_both_kinds_load_once_by_key() {
        let manager = manager();
        let barrier = Arc::new(Barrier::new(1));
        let (c, g) = (canvas_key("c"), game_key("g"));
        let first: Canvas = manager.load(&c, spawner(&barrier)).await.expect("loads");
        let again: Canvas = manager
            .load(&c, |_| unreachable!("a live key does not spawn again"))
            .await
            .expect("loads");
        assert!(Arc::ptr_eq(&first.registration, &again.registration));
        let _: Game = manager.load(&g, spawner(&barrier)).await.expect("loads");
        let mut keys = manager.room_keys();
        keys.sort_by_key(|k| k.to_string());
        assert_eq!(keys, vec![g.clone(), c.clone()]);
        assert!(manager.existing::<Game>(&g).is_some());
        assert_eq!(manager.rooms_of::<Canvas>().len(), 1);
        assert_eq!(manager.rooms_of::<Game>()[0].0, g);

        manager
            .close(&c, CloseReason::room_closed())
            .await
            .expect("closes");
        assert_eq!(manager.room_keys(), vec![g.clone()]);
        assert!(manager.existing::<Canvas>(&c).is_none());
    }

    /// Shutdown closes the rooms of both kinds at once: each close here waits until the other
    /// has begun (a barrier of two), so closing them one after the other would never finish.
    /// Afterwards nothing loads.
    #[tokio::test]
    async fn close_all_closes_both_kinds_at_once_then_refuses_loads() {
        let manager = manager();
        let barrier = Arc::new(Barrier::new(2));
        let _: Canvas = manager
            .load(&canvas_key("c"), spawner(&barrier))
            .await
            .expect("loads");
        let _: Game = manager
            .load(&game_key("g"), spawner(&barrier))
            .await
            .expect("loads");
        let errors = tokio::time::timeout(Duration::from_secs(10), manager.close_all())
            .await
            .expect("both rooms closed together");
        assert!(errors.is_empty());
        assert!(manager.room_keys().is_empty());
        let refused = manager
            .load(&canvas_key("late"), spawner::<0>(&barrier))
            .await;
        assert!(matches!(refused, Err(ShuttingDown)));
    }
}
