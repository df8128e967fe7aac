//! [`GameRooms`]: the game protocol's door to the [`RoomManager`]: the registered namespaces,
//! loading game rooms (with their namespace's options and logic), metadata and matchmaking, the
//! deletion of expired saved rooms, and the wake-ups of saved rooms whose timers fall due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::handle::{Command, JoinRefused, RoomHandle, RoomStatus};
use super::logic::LogicFactory;
use super::options::NamespaceOptions;
use super::record::{self, unix_ms};
use super::room;
use super::sender::Sender;
use super::wakeups::Wakeups;
use crate::ids::{RecordKey, RoomId, RoomKey};
use crate::protocols::game::wire::ErrorCode;
use crate::rooms::{panicked, Outbox, RoomManager, SessionLink, JOIN_ATTEMPTS};
use crate::storage::{Storage, StorageError};

/// A registered namespace.
pub struct Namespace {
    pub name: RoomId,
    pub options: Arc<NamespaceOptions>,
    pub factory: LogicFactory,
}

/// The namespaces a server serves, registered on the server builder.
#[derive(Default, Clone)]
pub struct Namespaces {
    map: HashMap<String, Arc<Namespace>>,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces::default()
    }

    /// Registers a namespace; its name must be a valid room id and its options in range.
    pub fn register(
        &mut self,
        name: &str,
        options: NamespaceOptions,
        factory: LogicFactory,
    ) -> Result<&mut Self, String> {
        let id = RoomId::parse(name).map_err(|e| format!("namespace {name:?}: {e}"))?;
        options
            .validate()
            .map_err(|e| format!("namespace {name:?}: {e}"))?;
        if self.map.contains_key(name) {
            return Err(format!("namespace {name:?} is registered twice"));
        }
        self.map.insert(
            name.to_owned(),
            Arc::new(Namespace {
                name: id,
                options: Arc::new(options),
                factory,
            }),
        );
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.map.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

/// The result of [`GameRooms::join`].
pub enum JoinOutcome {
    /// Joined: the room's handle and this connection's ends of its outbox (the `sync` is first).
    Joined(RoomHandle, SessionLink),
    /// Refused: `error {code, message}` then close 4003.
    Denied(ErrorCode, String),
    /// The room cannot be loaded; the client may retry later.
    Unavailable(String),
    ShuttingDown,
}

/// The game rooms of a server's [`RoomManager`]. Cheap to clone.
#[derive(Clone)]
pub struct GameRooms {
    inner: Arc<Inner>,
}

struct Inner {
    manager: RoomManager,
    namespaces: Namespaces,
    /// Saved rooms to load when their earliest timer falls due.
    wakeups: Arc<Wakeups>,
}

/// Why a room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RoomUnavailable {
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    #[error("server is shutting down")]
    ShuttingDown,
}

/// A matchmaking answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Match {
    pub namespace: String,
    pub id: String,
    /// A new room was made for this request.
    pub created: bool,
}

impl GameRooms {
    /// The game rooms of `namespaces`, in `manager`.
    pub fn new(manager: RoomManager, namespaces: Namespaces) -> GameRooms {
        GameRooms {
            inner: Arc::new(Inner {
                manager,
                namespaces,
                wakeups: Arc::default(),
            }),
        }
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.manager.journal_config().storage
    }

    /// The live room's status, without loading it.
    pub fn status(&self, key: &RecordKey) -> Option<Arc<RoomStatus>> {
        let handle: RoomHandle = self.inner.manager.existing(&RoomKey::Game(key.clone()))?;
        Some(handle.status)
    }

    /// The room's handle, loading the room if it is not live. Waits for a closing room's final
    /// fold first, so a room is never live twice.
    pub async fn handle(&self, key: &RecordKey) -> Result<RoomHandle, RoomUnavailable> {
        let namespace = self
            .inner
            .namespaces
            .get(key.namespace.as_str())
            .ok_or_else(|| RoomUnavailable::UnknownNamespace(key.namespace.to_string()))?
            .clone();
        let manager = &self.inner.manager;
        let spawn = |registration| {
            let (options, logic) = (namespace.options.clone(), (namespace.factory)());
            let wakeups = self.inner.wakeups.clone();
            room::spawn(manager, registration, wakeups, key.clone(), options, logic)
        };
        manager
            .load(&RoomKey::Game(key.clone()), spawn)
            .await
            .map_err(|_| RoomUnavailable::ShuttingDown)
    }

    /// Joins a player's connection to the room (loading it if needed).
    pub async fn join(
        &self,
        key: &RecordKey,
        sender: Sender,
        options: Value,
        outbox_bytes: usize,
    ) -> JoinOutcome {
        // A room may be closing as the join arrives; it then asks us to retry on a fresh load.
        for _ in 0..JOIN_ATTEMPTS {
            let handle = match self.handle(key).await {
                Ok(handle) => handle,
                Err(RoomUnavailable::ShuttingDown) => return JoinOutcome::ShuttingDown,
                Err(e) => return JoinOutcome::Unavailable(e.to_string()),
            };
            let (outbox, link) = Outbox::new(outbox_bytes);
            let (reply, answer) = oneshot::channel();
            let command = Command::Join {
                sender: sender.clone(),
                options: options.clone(),
                outbox,
                reply,
            };
            if !handle.send(command).await {
                tokio::task::yield_now().await;
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return JoinOutcome::Joined(handle, link),
                Ok(Err(JoinRefused::Denied { code, message })) => {
                    return JoinOutcome::Denied(code, message)
                }
                Ok(Err(JoinRefused::Unavailable(message))) => {
                    return JoinOutcome::Unavailable(message)
                }
                Ok(Err(JoinRefused::Retry)) | Err(_) => tokio::task::yield_now().await,
            }
        }
        JoinOutcome::Unavailable("the room is restarting; retry".into())
    }

    /// Public metadata of a room: live, saved (within its TTL), or `{}`.
    pub async fn metadata(&self, key: &RecordKey) -> Result<Value, StorageError> {
        if let Some(status) = self.status(key) {
            return Ok(status.metadata());
        }
        let ttl = self
            .inner
            .namespaces
            .get(key.namespace.as_str())
            .map_or(u64::MAX, |n| n.options.state_ttl.as_millis() as u64);
        let restored = self.restore(key).await?;
        Ok(restored
            .filter(|r| !r.expired(ttl, unix_ms()))
            .map_or_else(|| Value::Object(Map::new()), |r| r.metadata.value().clone()))
    }

    /// A stored room read back (record + log), off the async workers.
    async fn restore(&self, key: &RecordKey) -> Result<Option<record::Restored>, StorageError> {
        let storage = self.storage().clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || record::load(&*storage, &k))
            .await
            .unwrap_or_else(|e| Err(panicked(&RoomKey::Game(key.clone()), e)))
    }

    /// Join-or-create: a live room of the namespace that is not locked, private or full (a seat
    /// is reserved for the caller), else a new room id, loaded and reserved.
    pub async fn matchmake(&self, namespace: &str) -> Result<Match, RoomUnavailable> {
        let ns = self
            .inner
            .namespaces
            .get(namespace)
            .ok_or_else(|| RoomUnavailable::UnknownNamespace(namespace.to_owned()))?;
        for (key, handle) in self.inner.manager.rooms_of::<RoomHandle>() {
            let Some(key) = key.game() else { continue };
            if key.namespace == ns.name && handle.status.try_reserve() {
                return Ok(Match {
                    namespace: namespace.to_owned(),
                    id: key.id.to_string(),
                    created: false,
                });
            }
        }
        let id = RoomId::parse(&uuid::Uuid::new_v4().to_string())
            .unwrap_or_else(|_| unreachable!("a UUID is a valid room id"));
        let key = RecordKey::new(ns.name.clone(), id.clone());
        let handle = self.handle(&key).await?;
        handle.status.try_reserve();
        Ok(Match {
            namespace: namespace.to_owned(),
            id: id.to_string(),
            created: true,
        })
    }

    /// At startup: deletes saved rooms past their TTL (then every 10 minutes) and wakes those
    /// with pending timers when they fall due. Both end when shutdown begins.
    pub fn start(&self) {
        let tasks = self.inner.manager.tasks().clone();
        let rooms = self.clone();
        tasks.spawn(async move {
            let tasks = rooms.inner.manager.tasks().clone();
            loop {
                rooms.sweep().await;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(600)) => {}
                    () = tasks.cancelled() => return,
                }
            }
        });
        let rooms = self.clone();
        tasks.spawn(async move {
            let (wakeups, tasks) = (rooms.inner.wakeups.clone(), rooms.inner.manager.tasks());
            wakeups.run(tasks, |key| rooms.wake(key)).await;
        });
    }

    async fn sweep(&self) {
        let storage = self.storage().clone();
        let keys = match tokio::task::spawn_blocking(move || storage.list()).await {
            Ok(Ok(keys)) => keys.into_iter().filter_map(|k| k.game().cloned()),
            Ok(Err(e)) => {
                error!(error = %e, "listing saved game rooms failed");
                return;
            }
            Err(_) => return,
        };
        for key in keys {
            let Some(ns) = self.inner.namespaces.get(key.namespace.as_str()).cloned() else {
                continue;
            };
            if self.status(&key).is_some() {
                continue;
            }
            let restored = match self.restore(&key).await {
                Ok(Some(restored)) => restored,
                Ok(None) => continue,
                Err(e) => {
                    warn!(room = %key, error = %e, "saved game room is unreadable; left as it is");
                    continue;
                }
            };
            if restored.expired(ns.options.state_ttl.as_millis() as u64, unix_ms()) {
                info!(room = %key, "saved game room expired; deleting it");
                let storage = self.storage().clone();
                let k = RoomKey::Game(key.clone());
                let _ = tokio::task::spawn_blocking(move || storage.delete(&k)).await;
            } else if let Some(due) = restored.timers.values().map(|t| t.due_ms).min() {
                self.wake_at(key, due);
            }
        }
    }

    /// Loads the room when its earliest timer falls due, so timers fire without a player.
    fn wake_at(&self, key: RecordKey, due_ms: u64) {
        self.inner.wakeups.add(key, due_ms);
    }

    /// Loads a saved room whose timer is due (unless it is loaded), in a task of its own.
    fn wake(&self, key: RecordKey) {
        if self.status(&key).is_some() {
            return;
        }
        let rooms = self.clone();
        self.inner.manager.tasks().spawn(async move {
            if let Ok(handle) = rooms.handle(&key).await {
                let _ = handle.send(Command::Wake).await;
            }
        });
    }

    /// Live game rooms (for health).
    pub fn live_rooms(&self) -> usize {
        let keys = self.inner.manager.room_keys().into_iter();
        keys.filter(|key| key.game().is_some()).count()
    }
}
