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

use super::handle::RoomStatus;
use super::options::NamespaceOptions;
use super::record::{
    unix_ms, Entry, Op, Restored, RestoredPlayer, RoomRecord, SavedSender, SavedTimer,
};
use super::sender::Sender;
use crate::engine::state::{StateBatch, StateDoc, Writes};
use crate::engine::tree;
use crate::ids::RecordKey;
use crate::metrics::Metrics;
use crate::protocols::game::wire::{self as wire, ServerFrame};
use crate::rooms::{CloseReason, Delivery, Journal, Outbox, Schedule};
use crate::storage::StorageError;

/// How deeply any state (shared, a player's, server-only, metadata) or a timer's data may nest
/// arrays and objects (counted as [`wire::depth`]). Log entries nest a value 7 levels deeper,
/// records 3, and the SDKs echo a state 2 levels deep in their `join` frames, all read with
/// serde_json's limit of 127 levels; a handler that keeps nesting payloads (at most
/// [`wire::MAX_VALUE_DEPTH`] each) is stopped well before that.
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

/// A state clients are sent, as the room tracks it: the committed document (what clients have,
/// its clock their version) and the handlers' value not flushed yet.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub doc: StateDoc,
    /// Set by an updater since the last flush.
    pub pending: Option<Value>,
    /// The current value as compact JSON, in bytes.
    pub size: usize,
}

impl Tracked {
    pub fn new(doc: StateDoc) -> Tracked {
        let mut doc = doc;
        if !doc.value().is_object() {
            // A saved state's root is an object: an updater's result is normalized to one.
            doc = StateDoc::new(Value::Object(Map::new()), doc.clock());
        }
        Tracked {
            size: tree::json_size(doc.value()),
            doc,
            pending: None,
        }
    }

    pub fn empty() -> Tracked {
        Tracked::new(StateDoc::new(Value::Object(Map::new()), 0))
    }

    /// The current value: what handlers read.
    pub fn value(&self) -> &Value {
        self.pending.as_ref().unwrap_or(self.doc.value())
    }

    /// Commits the pending value; the batch (at the new version) if it changed anything.
    fn commit(&mut self) -> Option<StateBatch> {
        self.pending.take().and_then(|next| self.doc.apply(next))
    }
}

/// A state document of the room, to ask who may see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StateId<'a> {
    Shared,
    /// One player's state, by user id.
    Player(&'a str),
    // Nothing sends these two (the rule below refuses them); named so the rule covers every state.
    #[allow(dead_code)]
    Server,
    #[allow(dead_code)]
    Metadata,
}

/// Whether a connection of user `viewer` may be sent `state` (its deltas, or it in a `sync`):
/// the one place this is decided. Server state reaches no socket; a player's state only its
/// owner's connections; metadata is read over HTTP only.
pub(super) fn visible(state: StateId, viewer: &str) -> bool {
    match state {
        StateId::Shared => true,
        StateId::Player(owner) => owner == viewer,
        StateId::Server | StateId::Metadata => false,
    }
}

/// A player's seat: held while any of its connections is joined, and for the reconnect grace
/// period after the last one dropped.
#[derive(Debug, Clone)]
pub(super) struct Seat {
    pub sender: Sender,
    pub connections: usize,
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
    every: Option<Duration>,
    callback: ClockFn,
}

/// Identifies a clock callback, to clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockId(u64);

/// Something a room does at a given time: every deadline of a room is in its one
/// [`RoomContext::schedule`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// A named timer fires.
    Timer(String),
    /// The simulation ticks.
    Tick,
    /// A clock callback runs.
    Clock(ClockId),
    /// A disconnected player's seat is given up.
    Grace(String),
    /// Changes made outside a client request are flushed (on the patch-rate grid).
    Flush,
    /// The empty room is disposed of (or, if a reservation holds it, checked again then).
    Dispose,
}

impl Due {
    /// The order in which things due at one wake-up run: timers, the tick and clock callbacks
    /// change state; grace expiries run `on_leave`; the flush then sends all of it at once.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Due::Timer(_) => 0,
            Due::Tick => 1,
            Due::Clock(_) => 2,
            Due::Grace(_) => 3,
            Due::Flush => 4,
            Due::Dispose => 5,
        }
    }
}

/// The room as its handlers see it. Reads return the current state; writes take an updater that
/// edits the value in place (`|s| s["score"] = json!(1)`, or `*s = json!({...})` to replace it).
/// Changes reach clients as dot-path deltas when the handler returns (or at the patch rate for
/// ticks, timers and clock callbacks); a message sent by a handler first flushes the changes made
/// before it, so clients see them in order.
pub struct RoomContext {
    pub(super) key: RecordKey,
    pub(super) options: Arc<NamespaceOptions>,
    /// Where the room's writes go; frames wait there until the writes they show are durable.
    pub(super) journal: Journal,
    pub(super) status: Arc<RoomStatus>,
    pub(super) shared: Tracked,
    pub(super) players: IndexMap<String, Tracked>,
    pub(super) server: StateDoc,
    pub(super) metadata: StateDoc,
    pub(super) timers: BTreeMap<String, SavedTimer>,
    pub(super) seats: IndexMap<String, Seat>,
    pub(super) connections: IndexMap<String, Connection>,
    pub(super) effects: Vec<Effect>,
    /// The connection being joined while `on_create`/`on_join` run: messages for it wait here
    /// and follow its `sync`.
    pub(super) joining: Option<Joining>,
    /// Connections whose outbox overflowed: the room closes them after the current event.
    pub(super) slow: Vec<String>,
    /// What the current event wrote, appended as one log entry when it ends
    /// ([`RoomContext::write_log`]).
    pub(super) log: Vec<Op>,
    pub(super) created: bool,
    pub(super) auto_dispose: bool,
    pub(super) simulation: Option<Duration>,
    /// When the last tick ran (or the simulation started): the next `dt` counts from here.
    pub(super) last_tick: Instant,
    /// Every deadline of the room.
    pub(super) schedule: Schedule<Due, Instant>,
    pub(super) patch_rate: Duration,
    clock: BTreeMap<ClockId, ClockTask>,
    next_clock_id: u64,
    started: Instant,
}

impl RoomContext {
    pub(super) fn new(
        key: RecordKey,
        options: Arc<NamespaceOptions>,
        journal: Journal,
        status: Arc<RoomStatus>,
    ) -> RoomContext {
        RoomContext {
            key,
            auto_dispose: options.auto_dispose,
            patch_rate: options.patch_rate,
            options,
            journal,
            status,
            shared: Tracked::empty(),
            players: IndexMap::new(),
            server: StateDoc::new(Value::Object(Map::new()), 0),
            metadata: StateDoc::new(Value::Object(Map::new()), 0),
            timers: BTreeMap::new(),
            seats: IndexMap::new(),
            connections: IndexMap::new(),
            effects: Vec::new(),
            joining: None,
            slow: Vec::new(),
            log: Vec::new(),
            created: false,
            simulation: None,
            last_tick: Instant::now(),
            schedule: Schedule::default(),
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
        self.shared.value()
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
        Ok(())
    }

    // --- player state ---------------------------------------------------------------------

    /// A player's private state (only that player is sent it).
    pub fn player(&self, user_id: &str) -> Option<&Value> {
        self.players.get(user_id).map(Tracked::value)
    }

    /// Every player's state, in join order.
    pub fn players(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.players.iter().map(|(id, p)| (id.as_str(), p.value()))
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
        // No key is allocated for a player that has state (the common case, on the hot path).
        let index = match self.players.get_index_of(user_id) {
            Some(index) => index,
            None => {
                let (index, _) = self
                    .players
                    .insert_full(user_id.to_owned(), Tracked::empty());
                index
            }
        };
        let player = &mut self.players[index];
        let others = total - player.size;
        update_tracked(player, others, max, update)
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
        self.server.value()
    }

    /// Changes the server state (an object: anything else becomes `{}`; `null` members are
    /// removed, as in the shared state); refused (and nothing changed) if the result would nest
    /// deeper than [`MAX_STATE_DEPTH`].
    pub fn set_server_state(&mut self, update: impl FnOnce(&mut Value)) -> Result<(), StateError> {
        let mut next = self.server.value().clone();
        update(&mut next);
        tree::normalize_root(&mut next);
        check_depth(&next)?;
        if let Some(batch) = self.server.apply(next) {
            self.log.push(Op::Server { batch });
        }
        Ok(())
    }

    // --- metadata -------------------------------------------------------------------------

    /// Public metadata, readable over HTTP without joining (`GET /api/room/metadata`).
    pub fn metadata(&self) -> &Value {
        self.metadata.value()
    }

    /// Replaces the metadata (`null` members are removed, as in the states); refused if it
    /// nests deeper than [`MAX_STATE_DEPTH`].
    pub fn set_metadata(&mut self, metadata: Value) -> Result<(), StateError> {
        let mut metadata = metadata;
        tree::strip_nulls(&mut metadata);
        check_depth(&metadata)?;
        if let Some(batch) = self.metadata.apply(metadata) {
            self.log.push(Op::Metadata { batch });
        }
        self.status.set_metadata(self.metadata.value());
        Ok(())
    }

    // --- messages -------------------------------------------------------------------------

    /// Sends a `message` to every joined connection except those of the `exclude`d users.
    pub fn send_message(&mut self, message_type: &str, data: Value, exclude: &[&str]) {
        self.flush();
        let frame = message_frame(message_type, &data);
        self.deliver_where(&frame, |c| !exclude.contains(&c.user_id.as_str()));
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

    /// Returns once storage holds every change made so far (they are sent to clients first,
    /// so the versions stored are the ones clients saw). Every change is stored anyway before
    /// any frame that shows it leaves; this waits for it inside a handler.
    pub async fn save_state(&mut self) -> Result<(), StorageError> {
        self.flush();
        let written = self.write_log();
        let settled = self.journal.settle().await;
        self.release_held();
        written?;
        if settled {
            Ok(())
        } else {
            Err(StorageError::Io {
                room: self.key.to_string(),
                source: std::io::Error::other("the room's writes were not stored"),
            })
        }
    }

    /// Schedules the named timer (replacing one of the same name): `on_timer(name, data)` runs
    /// after `delay`. Timers are saved with the state and fire after a restart. Refused if
    /// `data` nests deeper than [`MAX_STATE_DEPTH`].
    pub fn set_timer(
        &mut self,
        name: &str,
        delay: Duration,
        data: Value,
    ) -> Result<(), StateError> {
        check_depth(&data)?;
        let due = unix_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let timer = SavedTimer { due_ms: due, data };
        self.timers.insert(name.to_owned(), timer.clone());
        self.schedule
            .set(Due::Timer(name.to_owned()), later(Instant::now(), delay));
        self.log.push(Op::Timer {
            name: name.to_owned(),
            timer,
        });
        Ok(())
    }

    /// Cancels a named timer; no-op if it is not set.
    pub fn clear_timer(&mut self, name: &str) {
        if self.timers.remove(name).is_some() {
            self.schedule.clear(&Due::Timer(name.to_owned()));
            self.log.push(Op::TimerDone {
                name: name.to_owned(),
            });
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
        let interval = interval.filter(|i| !i.is_zero());
        if self.simulation.is_none() {
            // The first tick measures from here.
            self.last_tick = Instant::now();
        }
        self.simulation = interval;
        match interval {
            Some(every) => self.schedule.set(Due::Tick, later(self.last_tick, every)),
            None => {
                self.schedule.clear(&Due::Tick);
            }
        }
    }

    /// How often deltas made outside actions are flushed (default: the namespace's).
    pub fn set_patch_rate(&mut self, rate: Duration) {
        self.patch_rate = rate.max(Duration::from_millis(1));
    }

    /// Removes the room from matchmaking and refuses new players (reconnects still work).
    pub fn lock(&mut self) {
        self.set_locked(true);
    }

    pub fn unlock(&mut self) {
        self.set_locked(false);
    }

    fn set_locked(&mut self, locked: bool) {
        if self.status.locked.swap(locked, Ordering::Relaxed) != locked {
            self.log.push(Op::Locked { locked });
        }
    }

    pub fn is_locked(&self) -> bool {
        self.status.locked.load(Ordering::Relaxed)
    }

    /// A private room is never handed out by matchmaking; joining it by id still works.
    pub fn set_private(&mut self, private: bool) {
        if self.status.private.swap(private, Ordering::Relaxed) != private {
            self.log.push(Op::Private { private });
        }
    }

    /// Lowers (or restores) the player limit of this room, within the namespace's.
    pub fn set_max_players(&mut self, max: usize) {
        let max = max.clamp(1, self.options.max_players);
        if self.status.max_players.swap(max, Ordering::Relaxed) != max {
            self.log.push(Op::MaxPlayers { max });
        }
    }

    pub fn max_players(&self) -> usize {
        self.status.max_players.load(Ordering::Relaxed)
    }

    /// Whether the room is disposed of when its last player leaves.
    pub fn set_auto_dispose(&mut self, on: bool) {
        self.auto_dispose = on;
    }

    /// Time the room has been loaded, over all its loads (the Colyseus `clock.elapsedTime`):
    /// a room restored from storage goes on from its saved clock.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Restores the room's clock to `elapsed` (at load).
    pub(super) fn resume_clock(&mut self, elapsed: Duration) {
        let now = Instant::now();
        self.started = now.checked_sub(elapsed).unwrap_or(now);
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
        self.schedule.clear(&Due::Clock(id));
    }

    fn add_clock(
        &mut self,
        delay: Duration,
        every: Option<Duration>,
        callback: ClockFn,
    ) -> ClockId {
        self.next_clock_id += 1;
        let id = ClockId(self.next_clock_id);
        self.clock.insert(id, ClockTask { every, callback });
        self.schedule
            .set(Due::Clock(id), later(Instant::now(), delay));
        id
    }

    // --- used by the room runtime ---------------------------------------------------------

    /// Runs the clock callback `id`, due at `due`; an interval is due again one period later
    /// (or one period from `now`, if it fell behind).
    pub(super) fn run_clock(&mut self, id: ClockId, due: Instant, now: Instant) {
        let Some(mut task) = self.clock.remove(&id) else {
            return;
        };
        (task.callback)(self);
        if let Some(every) = task.every {
            let next = later(due, every);
            let next = if next < now { later(now, every) } else { next };
            self.schedule.set(Due::Clock(id), next);
            self.clock.insert(id, task);
        }
    }

    /// Whether any change awaits a flush.
    pub(super) fn is_dirty(&self) -> bool {
        self.shared.pending.is_some() || self.players.values().any(|p| p.pending.is_some())
    }

    /// Sends the deltas of everything changed since the last flush. A version steps once per
    /// flushed delta, never for a no-op.
    pub(super) fn flush(&mut self) {
        if let Some(batch) = self.shared.commit() {
            let delta = match &batch.writes {
                Writes::Paths(delta) => Some(
                    ServerFrame::SharedDelta {
                        delta,
                        version: batch.clock,
                    }
                    .encode(),
                ),
                Writes::Whole(_) => None,
            };
            // Logged before the frames that show it are made: they wait until it is durable.
            self.log.push(Op::Shared { batch });
            match delta {
                Some(delta) => self.deliver_where(&delta, |c| visible(StateId::Shared, &c.user_id)),
                // A whole new value: each connection gets a `sync` with the states it may see.
                None => {
                    for id in self.recipients(StateId::Shared) {
                        let frame = self.sync_frame_for(&id);
                        self.deliver(&id, &frame);
                    }
                }
            }
        }
        let dirty: Vec<String> = self
            .players
            .iter()
            .filter(|(_, p)| p.pending.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for user in dirty {
            let Some(batch) = self.players.get_mut(&user).and_then(Tracked::commit) else {
                continue;
            };
            let frame = match &batch.writes {
                Writes::Paths(delta) => ServerFrame::PlayerDelta {
                    delta,
                    version: batch.clock,
                }
                .encode(),
                Writes::Whole(player_state) => ServerFrame::Sync {
                    shared_state: self.shared.doc.value(),
                    shared_version: self.shared.doc.clock(),
                    player_state,
                    player_version: batch.clock,
                }
                .encode(),
            };
            self.log.push(Op::Player {
                user: user.clone(),
                batch,
            });
            self.deliver_where(&frame, |c| visible(StateId::Player(&user), &c.user_id));
        }
    }

    /// The joined connections that may see `state` (see [`visible`]).
    fn recipients(&self, state: StateId) -> Vec<String> {
        self.connections
            .iter()
            .filter(|(_, c)| visible(state, &c.user_id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A full `sync` for one connection (what the clients have after the last flush), holding
    /// the states [`visible`] lets it see.
    pub(super) fn sync_frame_for(&self, connection_id: &str) -> ByteString {
        let empty = Value::Object(Map::new());
        let viewer = self
            .connections
            .get(connection_id)
            .map(|c| c.user_id.as_str());
        let shared = viewer
            .filter(|v| visible(StateId::Shared, v))
            .map(|_| &self.shared.doc);
        let player = viewer
            .filter(|v| visible(StateId::Player(v), v))
            .and_then(|v| self.players.get(v))
            .map(|p| &p.doc);
        ServerFrame::Sync {
            shared_state: shared.map_or(&empty, StateDoc::value),
            shared_version: shared.map_or(0, StateDoc::clock),
            player_state: player.map_or(&empty, StateDoc::value),
            player_version: player.map_or(0, StateDoc::clock),
        }
        .encode()
    }

    /// The log entry a frame made now shows: the one the current event will append if it wrote
    /// anything, else the last one.
    fn tag(&self) -> u64 {
        self.journal.last() + u64::from(!self.log.is_empty())
    }

    /// Queues a frame for a connection; it leaves once every write made before it is durable.
    pub(super) fn deliver(&mut self, connection_id: &str, frame: &ByteString) {
        let tag = self.tag();
        if let Some(connection) = self.connections.get_mut(connection_id) {
            queue_frame(
                &self.journal,
                &mut self.slow,
                connection_id,
                connection,
                frame,
                tag,
            );
        }
    }

    /// Queues one frame (encoded once, its text shared) for every joined connection `to` picks,
    /// in join order, without looking each one up again by id.
    fn deliver_where(&mut self, frame: &ByteString, to: impl Fn(&Connection) -> bool) {
        let tag = self.tag();
        for (id, connection) in self.connections.iter_mut() {
            if to(connection) {
                queue_frame(&self.journal, &mut self.slow, id, connection, frame, tag);
            }
        }
    }

    /// The ids of `user_id`'s joined connections.
    pub(super) fn connections_of(&self, user_id: &str) -> Vec<String> {
        self.connections
            .iter()
            .filter(|(_, c)| c.user_id == user_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn deliver_to_user(&mut self, user_id: &str, frame: &ByteString) {
        self.deliver_where(frame, |c| c.user_id == user_id);
    }

    /// Appends what the current event wrote as one log entry. An entry that would not load
    /// again is refused: the room must then close without storing more (its frames held for
    /// the entry never leave).
    pub(super) fn write_log(&mut self) -> Result<(), StorageError> {
        if self.log.is_empty() {
            return Ok(());
        }
        let entry = Entry {
            ops: std::mem::take(&mut self.log),
            at_ms: unix_ms(),
            elapsed_ms: u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let bytes = match entry.encode() {
            Ok(bytes) => bytes,
            Err(e) => {
                self.journal.fail();
                return Err(StorageError::Unloadable {
                    room: self.key.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let seq = self.journal.last() + 1;
        self.journal.append(seq, bytes);
        Ok(())
    }

    /// A connection joined.
    pub(super) fn add_connection(&mut self, id: String, connection: Connection) {
        Metrics::inc(&self.journal.metrics().sessions_active);
        self.connections.insert(id, connection);
    }

    /// A connection leaves the room (its outbox is the caller's to close or drop).
    pub(super) fn remove_connection(&mut self, id: &str) -> Option<Connection> {
        let connection = self.connections.shift_remove(id)?;
        Metrics::dec(&self.journal.metrics().sessions_active);
        Some(connection)
    }

    /// Sends the frames whose writes are durable now.
    pub(super) fn release_held(&mut self) {
        for connection in self.connections.values_mut() {
            self.journal.release(&mut connection.outbox);
        }
    }

    /// Records that a player took (or kept, with a refreshed token) its seat.
    pub(super) fn log_seat(&mut self, sender: &Sender) {
        self.log.push(Op::Seated {
            user: sender.user_id.clone(),
            sender: SavedSender::from(sender),
        });
    }

    /// The room as a record after the last log entry (the committed states, as clients have
    /// them). Every seat is saved, with its player's state or an empty one.
    pub(super) fn record(&self) -> RoomRecord {
        let empty = || StateDoc::new(Value::Object(Map::new()), 0);
        let mut players: IndexMap<String, RestoredPlayer> = self
            .seats
            .iter()
            .map(|(user, seat)| {
                let state = self.players.get(user).map_or_else(empty, |p| p.doc.clone());
                let sender = Some(SavedSender::from(&seat.sender));
                (user.clone(), RestoredPlayer { state, sender })
            })
            .collect();
        for (user, player) in &self.players {
            players
                .entry(user.clone())
                .or_insert_with(|| RestoredPlayer {
                    state: player.doc.clone(),
                    sender: None,
                });
        }
        let max_players = self.max_players();
        Restored {
            seq: self.journal.last(),
            created: self.created,
            saved_at_ms: unix_ms(),
            elapsed_ms: u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX),
            shared: self.shared.doc.clone(),
            players,
            server: self.server.clone(),
            metadata: self.metadata.clone(),
            timers: self.timers.clone(),
            locked: self.is_locked(),
            private: self.status.private.load(Ordering::Relaxed),
            max_players: (max_players != self.options.max_players).then_some(max_players),
        }
        .into_record()
    }
}

/// Queues `frame` (tagged with the log entry it shows) in a connection's outbox; a connection
/// whose outbox is full is closed as too slow and noted for the room to drop.
fn queue_frame(
    journal: &Journal,
    slow: &mut Vec<String>,
    connection_id: &str,
    connection: &mut Connection,
    frame: &ByteString,
    tag: u64,
) {
    if journal.send(&mut connection.outbox, frame, tag) == Delivery::Full {
        connection.outbox.close(CloseReason::slow_client());
        slow.push(connection_id.to_owned());
    }
}

/// A `message` frame; no data (`null`) is sent as `{}`, as the SDKs expect.
fn message_frame(message_type: &str, data: &Value) -> ByteString {
    let empty = Value::Object(Map::new());
    let data = if data.is_null() { &empty } else { data };
    ServerFrame::Message { message_type, data }.encode()
}

/// Refuses a value nested deeper than [`MAX_STATE_DEPTH`]: whatever a room stores (its log
/// entries and records nest a value a few levels deeper) must load again.
fn check_depth(value: &Value) -> Result<(), StateError> {
    match wire::depth(value) {
        depth if depth > MAX_STATE_DEPTH => Err(StateError::TooDeep {
            depth,
            max: MAX_STATE_DEPTH,
        }),
        _ => Ok(()),
    }
}

/// Applies an updater to a copy, normalizes it, checks the size and depth limits, and keeps it if
/// allowed.
fn update_tracked(
    tracked: &mut Tracked,
    others: usize,
    max: usize,
    update: impl FnOnce(&mut Value),
) -> Result<(), StateError> {
    let mut next = tracked.value().clone();
    update(&mut next);
    tree::normalize_root(&mut next);
    let size = tree::json_size(&next);
    if others + size > max {
        return Err(StateError::TooLarge {
            size: others + size,
            max,
        });
    }
    check_depth(&next)?;
    // An unchanged value schedules no flush (the flush times its patch rate from the first
    // change after the last one).
    if next != *tracked.value() {
        tracked.pending = Some(next);
        tracked.size = size;
    }
    Ok(())
}

/// `delay` after `at`. A handler's delay may be anything up to `Duration::MAX`, which no
/// `Instant` can hold: such a deadline is a century away instead of a panic of the room task.
pub(super) fn later(at: Instant, delay: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(delay).unwrap_or(at + CENTURY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared state is everyone's, a player's state its owner's only, and server state and
    /// metadata nobody's over a socket.
    #[test]
    fn visibility_follows_the_state() {
        for viewer in ["ann", "bob"] {
            assert!(visible(StateId::Shared, viewer));
            assert!(!visible(StateId::Server, viewer));
            assert!(!visible(StateId::Metadata, viewer));
        }
        assert!(visible(StateId::Player("ann"), "ann"));
        assert!(!visible(StateId::Player("ann"), "bob"));
    }

    /// A tracked state reads its pending value until the flush commits it; the commit is one
    /// version step, and a value set back to what clients have commits nothing.
    #[test]
    fn pending_values_commit_once_per_change() {
        let mut tracked = Tracked::empty();
        tracked.pending = Some(serde_json::json!({"a": 1}));
        assert_eq!(tracked.value(), &serde_json::json!({"a": 1}));
        assert_eq!(tracked.doc.value(), &serde_json::json!({}));
        let batch = tracked.commit().expect("a change");
        assert_eq!(batch.clock, 1);
        assert_eq!(tracked.doc.clock(), 1);
        tracked.pending = Some(serde_json::json!({"a": 1}));
        assert_eq!(tracked.commit(), None);
        assert_eq!(tracked.doc.clock(), 1);
        assert!(tracked.pending.is_none());
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;
    use crate::ids::RoomId;
    use crate::rooms::JournalConfig;
    use crate::storage::{MemoryStorage, WriteBudget};

    fn context() -> RoomContext {
        let key = RecordKey::new(
            RoomId::parse("arena").expect("namespace"),
            RoomId::parse("far").expect("id"),
        );
        let config = JournalConfig {
            storage: Arc::new(MemoryStorage::default()),
            budget: WriteBudget::new(1 << 20),
            metrics: Arc::new(Metrics::default()),
        };
        let journal = Journal::new(
            crate::ids::RoomKey::Game(key.clone()),
            config,
            Duration::from_secs(60),
        );
        let options = Arc::new(NamespaceOptions::default());
        let status = Arc::new(RoomStatus::new(options.max_players));
        RoomContext::new(key, options, journal, status)
    }

    /// The longest delays a handler can ask for (timers, clock callbacks, intervals, the
    /// simulation tick) are scheduled far away, never a panic; a timer's saved due time is the
    /// latest there is, so it stays pending across a reload too.
    #[tokio::test]
    async fn the_longest_delays_are_far_deadlines_not_panics() {
        let mut ctx = context();
        ctx.set_timer("far", Duration::MAX, Value::Null)
            .expect("timer set");
        assert_eq!(ctx.timers["far"].due_ms, u64::MAX);
        let id = ctx.set_interval(Duration::MAX, |_| {});
        ctx.set_timeout(Duration::MAX, |_| {});
        ctx.set_simulation_interval(Some(Duration::MAX));
        let now = Instant::now();
        let soonest = ctx.schedule.next().expect("deadlines");
        assert!(soonest > now + Duration::from_secs(3600 * 24 * 365));
        ctx.run_clock(id, soonest, soonest);
        assert!(
            ctx.schedule.get(&Due::Clock(id)).is_some(),
            "the interval is due again"
        );
    }
}
