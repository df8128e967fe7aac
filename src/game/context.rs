//! [`RoomContext`]: what a handler can see and do in its room: shared, player and server state
//! (updater style), messages, kicks, saves, named timers, metadata, and the Colyseus-model
//! controls (simulation tick, patch rate, clock callbacks, lock, max players, auto-dispose).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::logic::Sender;
use super::manager::RoomStatus;
use super::options::NamespaceOptions;
use super::record::{unix_ms, RoomRecord, SavedPlayer, SavedSender, SavedTimer};
use crate::engine::tree::{self, Change};
use crate::ids::RecordKey;
use crate::protocol::game::{self as wire, ServerFrame};
use crate::rooms::{CloseReason, Outbox};
use crate::storage::{Storage, StorageError};

/// How deeply the shared state or a player's state may nest arrays and objects (counted as
/// [`wire::depth`]). Room records nest a state 3 levels deeper and the SDKs echo it 2 levels
/// deep in their `join` frames, both read with serde_json's limit of 127 levels; a handler that
/// keeps nesting payloads (at most [`wire::MAX_VALUE_DEPTH`] each) is stopped well before that.
pub const MAX_STATE_DEPTH: usize = 64;

/// Why a state mutation was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state too large: {size} bytes would exceed maxStateSize {max}")]
    TooLarge { size: usize, max: usize },
    #[error("state too deep: it would nest {depth} levels of arrays and objects, at most {max} are allowed")]
    TooDeep { depth: usize, max: usize },
    #[error("no player {0:?} in this room")]
    NoSuchPlayer(String),
}

/// A state document as the room tracks it: the value, what clients were last sent, its version.
#[derive(Debug, Clone, Default)]
pub(super) struct Tracked {
    pub value: Value,
    /// What the clients have (after the last flush).
    pub sent: Value,
    pub version: u64,
    /// Changed since the last flush.
    pub dirty: bool,
    /// `value` as compact JSON, in bytes.
    pub size: usize,
}

impl Tracked {
    pub fn new(value: Value, version: u64) -> Tracked {
        let mut value = value;
        tree::normalize_root(&mut value);
        Tracked {
            size: tree::json_size(&value),
            sent: value.clone(),
            value,
            version,
            dirty: false,
        }
    }
}

/// A player's seat: held while any of its connections is joined, and for the reconnect grace
/// period after the last one dropped.
#[derive(Debug, Clone)]
pub(super) struct Seat {
    pub sender: Sender,
    pub connections: usize,
    /// Set while no connection is joined: when the seat is given up.
    pub grace_until: Option<Instant>,
}

/// A joined connection.
pub(super) struct Connection {
    pub user_id: String,
    pub outbox: Outbox,
}

/// A connection whose join is being handled, and the messages sent to it meanwhile.
pub(super) struct Joining {
    pub user_id: String,
    pub connection_id: String,
    pub frames: Vec<ByteString>,
}

/// Something a handler asked for that the room does after the handler returns.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    Kick(String),
    DisconnectAll,
}

type ClockFn = Box<dyn FnMut(&mut RoomContext) + Send>;

struct ClockTask {
    due: Instant,
    every: Option<Duration>,
    callback: ClockFn,
}

/// Identifies a clock callback, to clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockId(u64);

/// The room as its handlers see it. Reads return the current state; writes take an updater that
/// edits the value in place (`|s| s["score"] = json!(1)`, or `*s = json!({...})` to replace it).
/// Changes reach clients as dot-path deltas when the handler returns (or at the patch rate for
/// ticks, timers and clock callbacks); a message sent by a handler first flushes the changes made
/// before it, so clients see them in order.
pub struct RoomContext {
    pub(super) key: RecordKey,
    pub(super) options: Arc<NamespaceOptions>,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) status: Arc<RoomStatus>,
    pub(super) shared: Tracked,
    pub(super) players: IndexMap<String, Tracked>,
    pub(super) server: Value,
    pub(super) metadata: Value,
    pub(super) timers: BTreeMap<String, SavedTimer>,
    pub(super) seats: IndexMap<String, Seat>,
    pub(super) connections: IndexMap<String, Connection>,
    pub(super) effects: Vec<Effect>,
    /// The connection being joined while `on_create`/`on_join` run: messages for it wait here
    /// and follow its `sync`.
    pub(super) joining: Option<Joining>,
    /// Connections whose outbox overflowed: the room closes them after the current event.
    pub(super) slow: Vec<String>,
    /// State, metadata or timers changed since the last save.
    pub(super) unsaved: bool,
    pub(super) created: bool,
    pub(super) auto_dispose: bool,
    pub(super) simulation: Option<Duration>,
    pub(super) patch_rate: Duration,
    clock: BTreeMap<ClockId, ClockTask>,
    next_clock_id: u64,
    started: Instant,
}

impl RoomContext {
    pub(super) fn new(
        key: RecordKey,
        options: Arc<NamespaceOptions>,
        storage: Arc<dyn Storage>,
        status: Arc<RoomStatus>,
    ) -> RoomContext {
        RoomContext {
            key,
            auto_dispose: options.auto_dispose,
            patch_rate: options.patch_rate,
            options,
            storage,
            status,
            shared: Tracked::new(Value::Object(Map::new()), 0),
            players: IndexMap::new(),
            server: Value::Object(Map::new()),
            metadata: Value::Object(Map::new()),
            timers: BTreeMap::new(),
            seats: IndexMap::new(),
            connections: IndexMap::new(),
            effects: Vec::new(),
            joining: None,
            slow: Vec::new(),
            unsaved: false,
            created: false,
            simulation: None,
            clock: BTreeMap::new(),
            next_clock_id: 0,
            started: Instant::now(),
        }
    }

    // --- identity -------------------------------------------------------------------------

    pub fn namespace(&self) -> &str {
        self.key.namespace.as_str()
    }

    pub fn room_id(&self) -> &str {
        self.key.id.as_str()
    }

    // --- shared state ---------------------------------------------------------------------

    /// The state every player sees.
    pub fn shared(&self) -> &Value {
        &self.shared.value
    }

    /// Changes the shared state; refused (and nothing changed) if the result would exceed
    /// `max_state_size` or nest deeper than [`MAX_STATE_DEPTH`].
    pub fn set_shared(&mut self, update: impl FnOnce(&mut Value)) -> Result<(), StateError> {
        let others = self.state_size() - self.shared.size;
        update_tracked(
            &mut self.shared,
            others,
            self.options.max_state_size,
            update,
        )?;
        self.unsaved = true;
        Ok(())
    }

    // --- player state ---------------------------------------------------------------------

    /// A player's private state (only that player is sent it).
    pub fn player(&self, user_id: &str) -> Option<&Value> {
        self.players.get(user_id).map(|p| &p.value)
    }

    /// Every player's state, in join order.
    pub fn players(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.players.iter().map(|(id, p)| (id.as_str(), &p.value))
    }

    /// Changes a player's state. The player must hold a seat in the room; refused like
    /// [`RoomContext::set_shared`].
    pub fn set_player(
        &mut self,
        user_id: &str,
        update: impl FnOnce(&mut Value),
    ) -> Result<(), StateError> {
        if !self.seats.contains_key(user_id) && !self.players.contains_key(user_id) {
            return Err(StateError::NoSuchPlayer(user_id.to_owned()));
        }
        let total = self.state_size();
        let max = self.options.max_state_size;
        let player = self
            .players
            .entry(user_id.to_owned())
            .or_insert_with(|| Tracked::new(Value::Object(Map::new()), 0));
        let others = total - player.size;
        update_tracked(player, others, max, update)?;
        self.unsaved = true;
        Ok(())
    }

    /// Ids of the players holding a seat (joined, or within their reconnect grace period).
    pub fn player_ids(&self) -> impl Iterator<Item = &str> {
        self.seats.keys().map(String::as_str)
    }

    pub fn player_count(&self) -> usize {
        self.seats.len()
    }

    /// Whether the player has a joined connection right now (not only a held seat).
    pub fn is_connected(&self, user_id: &str) -> bool {
        self.seats.get(user_id).is_some_and(|s| s.connections > 0)
    }

    /// Combined size of the shared state and every player state (what `max_state_size` limits).
    pub fn state_size(&self) -> usize {
        self.shared.size + self.players.values().map(|p| p.size).sum::<usize>()
    }

    // --- server state ---------------------------------------------------------------------

    /// State only the server sees; saved with the rest.
    pub fn server_state(&self) -> &Value {
        &self.server
    }

    pub fn set_server_state(&mut self, update: impl FnOnce(&mut Value)) {
        update(&mut self.server);
        if !self.server.is_object() {
            self.server = Value::Object(Map::new());
        }
        self.unsaved = true;
    }

    // --- metadata -------------------------------------------------------------------------

    /// Public metadata, readable over HTTP without joining (`GET /api/room/metadata`).
    pub fn metadata(&self) -> &Value {
        &self.metadata
    }

    pub fn set_metadata(&mut self, metadata: Value) {
        self.metadata = metadata;
        self.status.set_metadata(&self.metadata);
        self.unsaved = true;
    }

    // --- messages -------------------------------------------------------------------------

    /// Sends a `message` to every joined connection except those of the `exclude`d users.
    pub fn send_message(&mut self, message_type: &str, data: Value, exclude: &[&str]) {
        self.flush();
        let frame = message_frame(message_type, &data);
        let targets: Vec<String> = self
            .connections
            .iter()
            .filter(|(_, c)| !exclude.contains(&c.user_id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in targets {
            self.deliver(&id, &frame);
        }
        if let Some(joining) = &mut self.joining {
            if !exclude.contains(&joining.user_id.as_str()) {
                joining.frames.push(frame);
            }
        }
    }

    /// Sends a `message` to every connection of one user.
    pub fn send_message_to(&mut self, user_id: &str, message_type: &str, data: Value) {
        self.flush();
        let frame = message_frame(message_type, &data);
        self.deliver_to_user(user_id, &frame);
        if let Some(joining) = self.joining.as_mut().filter(|j| j.user_id == user_id) {
            joining.frames.push(frame);
        }
    }

    /// Sends a `message` to one connection (the Colyseus `send(client, ...)`).
    pub fn send_to_connection(&mut self, connection_id: &str, message_type: &str, data: Value) {
        self.flush();
        let frame = message_frame(message_type, &data);
        match self
            .joining
            .as_mut()
            .filter(|j| j.connection_id == connection_id)
        {
            Some(joining) => joining.frames.push(frame),
            None => self.deliver(connection_id, &frame),
        }
    }

    /// The Colyseus `broadcast`: a message to everyone.
    pub fn broadcast(&mut self, message_type: &str, data: Value) {
        self.send_message(message_type, data, &[]);
    }

    // --- control --------------------------------------------------------------------------

    /// Disconnects a player (`kicked`, then close 4004) and runs `on_leave(Kicked)`, after the
    /// current handler returns.
    pub fn kick(&mut self, user_id: &str) {
        self.effects.push(Effect::Kick(user_id.to_owned()));
    }

    /// Disconnects every client (as kicks), then disposes of the room (Colyseus `disconnect`).
    pub fn disconnect_all(&mut self) {
        self.effects.push(Effect::DisconnectAll);
    }

    /// Saves the room now; returns once storage holds it. A record that would not load again
    /// is refused (and the last saved one kept).
    pub async fn save_state(&mut self) -> Result<(), StorageError> {
        // Changes go out first, so the saved versions are the ones clients saw for this state.
        self.flush();
        let key = self.key.clone();
        let bytes = self
            .record()
            .encode()
            .map_err(|e| StorageError::Unloadable {
                room: key.to_string(),
                reason: e.to_string(),
            })?;
        let storage = self.storage.clone();
        let result = tokio::task::spawn_blocking(move || storage.save_record(&key, &bytes))
            .await
            .unwrap_or_else(|e| {
                Err(StorageError::Io {
                    room: self.key.to_string(),
                    source: std::io::Error::other(format!("save task failed: {e}")),
                })
            });
        if result.is_ok() {
            self.unsaved = false;
        }
        result
    }

    /// Schedules the named timer (replacing one of the same name): `on_timer(name, data)` runs
    /// after `delay`. Timers are saved with the state and fire after a restart.
    pub fn set_timer(&mut self, name: &str, delay: Duration, data: Value) {
        let due = unix_ms().saturating_add(delay.as_millis() as u64);
        self.timers
            .insert(name.to_owned(), SavedTimer { due_ms: due, data });
        self.unsaved = true;
    }

    /// Cancels a named timer; no-op if it is not set.
    pub fn clear_timer(&mut self, name: &str) {
        if self.timers.remove(name).is_some() {
            self.unsaved = true;
        }
    }

    /// Names of the pending timers.
    pub fn timers(&self) -> impl Iterator<Item = &str> {
        self.timers.keys().map(String::as_str)
    }

    // --- the Colyseus model ---------------------------------------------------------------

    /// Runs `on_tick(dt)` at this interval (`None` stops it). Deltas from ticks are flushed at
    /// the patch rate.
    pub fn set_simulation_interval(&mut self, interval: Option<Duration>) {
        self.simulation = interval.filter(|i| !i.is_zero());
    }

    /// How often deltas made outside actions are flushed (default: the namespace's).
    pub fn set_patch_rate(&mut self, rate: Duration) {
        self.patch_rate = rate.max(Duration::from_millis(1));
    }

    /// Removes the room from matchmaking and refuses new players (reconnects still work).
    pub fn lock(&mut self) {
        self.status.locked.store(true, Ordering::Relaxed);
    }

    pub fn unlock(&mut self) {
        self.status.locked.store(false, Ordering::Relaxed);
    }

    pub fn is_locked(&self) -> bool {
        self.status.locked.load(Ordering::Relaxed)
    }

    /// A private room is never handed out by matchmaking; joining it by id still works.
    pub fn set_private(&mut self, private: bool) {
        self.status.private.store(private, Ordering::Relaxed);
    }

    /// Lowers (or restores) the player limit of this room, within the namespace's.
    pub fn set_max_players(&mut self, max: usize) {
        let max = max.clamp(1, self.options.max_players);
        self.status.max_players.store(max, Ordering::Relaxed);
    }

    pub fn max_players(&self) -> usize {
        self.status.max_players.load(Ordering::Relaxed)
    }

    /// Whether the room is disposed of when its last player leaves.
    pub fn set_auto_dispose(&mut self, on: bool) {
        self.auto_dispose = on;
    }

    /// Time since the room was loaded (the Colyseus `clock.elapsedTime`).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs `callback` once after `delay`. Clock callbacks live in memory only (use
    /// [`RoomContext::set_timer`] for what must survive a restart).
    pub fn set_timeout(
        &mut self,
        delay: Duration,
        callback: impl FnMut(&mut RoomContext) + Send + 'static,
    ) -> ClockId {
        self.add_clock(delay, None, Box::new(callback))
    }

    /// Runs `callback` every `every` until cleared.
    pub fn set_interval(
        &mut self,
        every: Duration,
        callback: impl FnMut(&mut RoomContext) + Send + 'static,
    ) -> ClockId {
        let every = every.max(Duration::from_millis(1));
        self.add_clock(every, Some(every), Box::new(callback))
    }

    pub fn clear_clock(&mut self, id: ClockId) {
        self.clock.remove(&id);
    }

    fn add_clock(
        &mut self,
        delay: Duration,
        every: Option<Duration>,
        callback: ClockFn,
    ) -> ClockId {
        self.next_clock_id += 1;
        let id = ClockId(self.next_clock_id);
        let due = Instant::now() + delay;
        self.clock.insert(
            id,
            ClockTask {
                due,
                every,
                callback,
            },
        );
        id
    }

    // --- used by the room runtime ---------------------------------------------------------

    pub(super) fn next_clock_due(&self) -> Option<Instant> {
        self.clock.values().map(|t| t.due).min()
    }

    /// Runs every clock callback that is due.
    pub(super) fn run_due_clock(&mut self, now: Instant) {
        let due: Vec<ClockId> = self
            .clock
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(mut task) = self.clock.remove(&id) else {
                continue;
            };
            (task.callback)(self);
            if let Some(every) = task.every {
                task.due += every;
                if task.due < now {
                    task.due = now + every;
                }
                self.clock.insert(id, task);
            }
        }
    }

    /// Whether any change awaits a flush.
    pub(super) fn is_dirty(&self) -> bool {
        self.shared.dirty || self.players.values().any(|p| p.dirty)
    }

    /// Sends the deltas of everything changed since the last flush. A version steps once per
    /// flushed delta, never for a no-op.
    pub(super) fn flush(&mut self) {
        if self.shared.dirty {
            self.shared.dirty = false;
            match tree::diff(&self.shared.sent, &self.shared.value) {
                Change::None => {}
                Change::Delta(delta) => {
                    self.shared.version += 1;
                    let frame = ServerFrame::SharedDelta {
                        delta: &delta,
                        version: self.shared.version,
                    }
                    .encode();
                    let ids: Vec<String> = self.connections.keys().cloned().collect();
                    for id in ids {
                        self.deliver(&id, &frame);
                    }
                }
                Change::Whole => {
                    self.shared.version += 1;
                    // The syncs below are built from what clients have: make that the new state.
                    self.shared.sent = self.shared.value.clone();
                    let ids: Vec<String> = self.connections.keys().cloned().collect();
                    for id in ids {
                        let frame = self.sync_frame_for(&id);
                        self.deliver(&id, &frame);
                    }
                }
            }
            self.shared.sent = self.shared.value.clone();
        }
        let dirty: Vec<String> = self
            .players
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(id, _)| id.clone())
            .collect();
        for user in dirty {
            let Some(player) = self.players.get_mut(&user) else {
                continue;
            };
            player.dirty = false;
            let change = tree::diff(&player.sent, &player.value);
            player.sent = player.value.clone();
            let frame = match change {
                Change::None => continue,
                Change::Delta(delta) => {
                    player.version += 1;
                    ServerFrame::PlayerDelta {
                        delta: &delta,
                        version: player.version,
                    }
                    .encode()
                }
                Change::Whole => {
                    player.version += 1;
                    let (shared, version) = (&self.shared.sent, self.shared.version);
                    ServerFrame::Sync {
                        shared_state: shared,
                        shared_version: version,
                        player_state: &player.value,
                        player_version: player.version,
                    }
                    .encode()
                }
            };
            self.deliver_to_user(&user, &frame);
        }
    }

    /// A full `sync` for one connection (what the clients have after the last flush).
    pub(super) fn sync_frame_for(&self, connection_id: &str) -> ByteString {
        let empty = Value::Object(Map::new());
        let player = self
            .connections
            .get(connection_id)
            .and_then(|c| self.players.get(&c.user_id));
        ServerFrame::Sync {
            shared_state: &self.shared.sent,
            shared_version: self.shared.version,
            player_state: player.map_or(&empty, |p| &p.sent),
            player_version: player.map_or(0, |p| p.version),
        }
        .encode()
    }

    pub(super) fn deliver(&mut self, connection_id: &str, frame: &ByteString) {
        use crate::rooms::Delivery;
        let Some(connection) = self.connections.get_mut(connection_id) else {
            return;
        };
        if connection.outbox.send(frame, 0, 0) == Delivery::Full {
            connection.outbox.close(CloseReason::slow_client());
            self.slow.push(connection_id.to_owned());
        }
    }

    pub(super) fn deliver_to_user(&mut self, user_id: &str, frame: &ByteString) {
        let ids: Vec<String> = self
            .connections
            .iter()
            .filter(|(_, c)| c.user_id == user_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.deliver(&id, frame);
        }
    }

    /// The room as saved.
    pub(super) fn record(&self) -> RoomRecord {
        RoomRecord {
            format: RoomRecord::FORMAT,
            created: self.created,
            saved_at_ms: unix_ms(),
            shared: self.shared.value.clone(),
            shared_version: self.shared.version,
            players: self
                .players
                .iter()
                .map(|(id, p)| {
                    (
                        id.clone(),
                        SavedPlayer {
                            state: p.value.clone(),
                            version: p.version,
                            sender: self.seats.get(id).map(|s| SavedSender::from(&s.sender)),
                        },
                    )
                })
                .collect(),
            server: self.server.clone(),
            metadata: self.metadata.clone(),
            timers: self.timers.clone(),
            locked: self.is_locked(),
            private: self.status.private.load(Ordering::Relaxed),
        }
    }
}

/// A `message` frame; no data (`null`) is sent as `{}`, as the SDKs expect.
fn message_frame(message_type: &str, data: &Value) -> ByteString {
    let empty = Value::Object(Map::new());
    let data = if data.is_null() { &empty } else { data };
    ServerFrame::Message { message_type, data }.encode()
}

/// Applies an updater to a copy, normalizes it, checks the size and depth limits, and keeps it if
/// allowed.
fn update_tracked(
    tracked: &mut Tracked,
    others: usize,
    max: usize,
    update: impl FnOnce(&mut Value),
) -> Result<(), StateError> {
    let mut next = tracked.value.clone();
    update(&mut next);
    tree::normalize_root(&mut next);
    let size = tree::json_size(&next);
    if others + size > max {
        return Err(StateError::TooLarge {
            size: others + size,
            max,
        });
    }
    let depth = wire::depth(&next);
    if depth > MAX_STATE_DEPTH {
        return Err(StateError::TooDeep {
            depth,
            max: MAX_STATE_DEPTH,
        });
    }
    if next != tracked.value {
        tracked.value = next;
        tracked.size = size;
        tracked.dirty = true;
    }
    Ok(())
}
