//! [`GameRooms`]: the registered namespaces and the live game rooms. Loads each room exactly once
//! (a room being closed finishes its final save before it is loaded again), answers metadata and
//! matchmaking, deletes expired saved state, and wakes saved rooms whose timers fall due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::logic::{LogicFactory, Sender};
use super::options::NamespaceOptions;
use super::record::{self, unix_ms};
use super::room::{self, Command, JoinRefused};
use super::wakeups::Wakeups;
use crate::ids::{RecordKey, RoomId, RoomKey};
use crate::protocol::game::ErrorCode;
use crate::rooms::{panicked, ClosingGuard, JournalConfig, Outbox, Registry, SessionLink, Tasks};
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
    fn try_reserve(&self) -> bool {
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
    pub(super) async fn send(&self, command: Command) -> bool {
        crate::rooms::send_command(&self.commands, command).await
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

/// The game rooms of one server. Cheap to clone.
#[derive(Clone)]
pub struct GameRooms {
    inner: Arc<Inner>,
}

struct Inner {
    /// Rooms run here (the server's main runtime), not on the HTTP worker that loaded them: they
    /// outlive that connection, and the workers stop before the rooms are saved at shutdown.
    tasks: Tasks,
    wakeups: Wakeups,
    namespaces: Namespaces,
    /// Storage, write budget and metrics, shared with the canvas rooms.
    journal: JournalConfig,
    rooms: Registry<RoomHandle>,
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
    /// Game rooms whose tasks (rooms, wake-ups, the expiry sweep) run as `tasks`.
    pub fn new(namespaces: Namespaces, journal: JournalConfig, tasks: Tasks) -> GameRooms {
        GameRooms {
            inner: Arc::new(Inner {
                tasks,
                wakeups: Wakeups::default(),
                namespaces,
                journal,
                rooms: Registry::default(),
            }),
        }
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.journal.storage
    }

    pub(super) fn journal_config(&self) -> &JournalConfig {
        &self.inner.journal
    }

    pub(super) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The live room's status, without loading it.
    pub fn status(&self, key: &RecordKey) -> Option<Arc<RoomStatus>> {
        let handle = self.inner.rooms.existing(&RoomKey::Game(key.clone()))?;
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
        let spawn =
            |generation| room::spawn(self.clone(), key.clone(), namespace.clone(), generation);
        self.inner
            .rooms
            .get_or_spawn(&RoomKey::Game(key.clone()), spawn)
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
        for _ in 0..5 {
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

    /// The room is about to fold for the last time: no new handle until the guard is dropped.
    pub(super) fn closing(&self, key: &RecordKey, generation: u64) -> ClosingGuard {
        self.inner
            .rooms
            .begin_close(&RoomKey::Game(key.clone()), generation)
    }

    /// The room's final fold is done (or failed and was logged); it may be loaded again once
    /// its guard is dropped.
    pub(super) fn closed(&self, key: &RecordKey, generation: u64) {
        self.inner
            .rooms
            .finish_close(&RoomKey::Game(key.clone()), generation);
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
        for (key, handle) in self.inner.rooms.open() {
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
        let tasks = self.inner.tasks.clone();
        let rooms = self.clone();
        tasks.spawn(async move {
            let tasks = rooms.inner.tasks.clone();
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
            let tasks = rooms.inner.tasks.clone();
            rooms.inner.wakeups.run(rooms.clone(), tasks).await;
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
    pub(super) fn wake_at(&self, key: RecordKey, due_ms: u64) {
        self.inner.wakeups.add(key, due_ms);
    }

    /// Shutdown: refuses new rooms, closes every session (1001) and saves every room. Returns
    /// the rooms that could not be saved.
    pub async fn close_all(&self) -> Vec<String> {
        let close = |key: RoomKey, handle: RoomHandle| async move {
            let (tx, rx) = oneshot::channel();
            if handle.send(Command::Shutdown { done: tx }).await {
                if let Ok(Err(e)) = rx.await {
                    error!(room = %key, error = %e, "game room could not be saved at shutdown");
                    return Err(key.to_string());
                }
            }
            Ok(())
        };
        self.inner.rooms.close_all(close).await
    }

    /// Live rooms (for metrics and health).
    pub fn live_rooms(&self) -> usize {
        self.inner.rooms.open().len()
    }
}
