//! One room: a task that owns the document, the ephemeral state and the sessions, and applies the
//! canvas-store protocol to them one command at a time.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

use super::manager::{Inner, JoinError, RoomConfig};
use super::session::{CloseReason, Delivery, NewSession, Outbox, SessionInfo};
use super::tasks::Tasks;
use crate::auth::{Grant, Permission};
use crate::engine::{Document, Ephemeral, LimitError};
use crate::ids::{ClientId, RoomId, RoomKey, SessionId};
use crate::metrics::Metrics;
use crate::protocol::canvas::{self, ClientFrame, Patches, ServerFrame};
use crate::storage::{self, BudgetPermit, Storage, StorageError};

/// Appends a room may have in flight before it stops taking commands (backpressure to clients).
const MAX_APPENDS_IN_FLIGHT: usize = 1024;

/// How long a closing room waits for its appends in flight, so that the acks they hold reach
/// their clients before the close (a storage that takes longer has failed them anyway).
const SETTLE_APPENDS_LIMIT: Duration = Duration::from_secs(5);

/// Commands a room task processes, in arrival order.
pub(crate) enum RoomCommand {
    Join {
        id: SessionId,
        session: NewSession,
        reply: oneshot::Sender<Result<(), (JoinError, NewSession)>>,
    },
    Frame {
        session: SessionId,
        frame: ClientFrame,
    },
    Reauthorize {
        session: SessionId,
        grant: Grant,
    },
    Leave {
        session: SessionId,
    },
    SetPermission {
        session: SessionId,
        permission: Permission,
        reply: oneshot::Sender<bool>,
    },
    SetMetadata {
        session: SessionId,
        metadata: Value,
        reply: oneshot::Sender<bool>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    Document {
        reply: oneshot::Sender<Document>,
    },
    Close {
        reason: CloseReason,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// Queues a command for a room task, waiting while its queue is full; false when the room is
/// gone. The wait is boxed: it is rare, and a connection's future (alive as long as the
/// connection) would otherwise carry the channel's send future in every state.
pub(crate) async fn send_command<T>(tx: &mpsc::Sender<T>, command: T) -> bool {
    match tx.try_send(command) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(command)) => Box::pin(tx.send(command)).await.is_ok(),
    }
}

/// A cloneable handle to a live room.
#[derive(Clone)]
pub struct RoomHandle {
    pub(crate) id: RoomId,
    pub(crate) generation: u64,
    pub(crate) tx: mpsc::Sender<RoomCommand>,
}

/// The room task has ended (closed or evicted); ask the manager for the room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("room is closed")]
pub struct RoomGone;

impl RoomHandle {
    pub fn id(&self) -> &RoomId {
        &self.id
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> RoomCommand,
    ) -> Result<T, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RoomGone)?;
        rx.await.map_err(|_| RoomGone)
    }

    /// Adds a session. A room that is closing hands the session back, so it can join the room's
    /// next incarnation.
    pub(crate) async fn join(
        &self,
        id: SessionId,
        session: NewSession,
    ) -> Result<(), (JoinError, Option<NewSession>)> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(cmd)) =
            self.tx.send(RoomCommand::Join { id, session, reply }).await
        {
            let session = match cmd {
                RoomCommand::Join { session, .. } => Some(session),
                _ => None,
            };
            return Err((JoinError::RoomClosed, session));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((error, session))) => Err((error, Some(session))),
            Err(_) => Err((JoinError::RoomClosed, None)),
        }
    }

    /// Hands a decoded frame to the room. Waits while the room's queue is full (backpressure).
    pub async fn frame(&self, session: SessionId, frame: ClientFrame) -> Result<(), RoomGone> {
        match send_command(&self.tx, RoomCommand::Frame { session, frame }).await {
            true => Ok(()),
            false => Err(RoomGone),
        }
    }

    /// Replaces a session's permission and metadata after a successful token refresh.
    pub async fn reauthorize(&self, session: SessionId, grant: Grant) -> Result<(), RoomGone> {
        match send_command(&self.tx, RoomCommand::Reauthorize { session, grant }).await {
            true => Ok(()),
            false => Err(RoomGone),
        }
    }

    /// Removes a session (its connection ended).
    pub async fn leave(&self, session: SessionId) {
        send_command(&self.tx, RoomCommand::Leave { session }).await;
    }

    /// Changes a session's permission at runtime; false if there is no such session.
    pub async fn set_permission(
        &self,
        session: SessionId,
        permission: Permission,
    ) -> Result<bool, RoomGone> {
        self.request(|reply| RoomCommand::SetPermission {
            session,
            permission,
            reply,
        })
        .await
    }

    /// Replaces a session's metadata; false if there is no such session.
    pub async fn set_metadata(
        &self,
        session: SessionId,
        metadata: Value,
    ) -> Result<bool, RoomGone> {
        self.request(|reply| RoomCommand::SetMetadata {
            session,
            metadata,
            reply,
        })
        .await
    }

    /// The sessions in the room.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, RoomGone> {
        self.request(|reply| RoomCommand::Sessions { reply }).await
    }

    /// A copy of the room's document.
    pub async fn document(&self) -> Result<Document, RoomGone> {
        self.request(|reply| RoomCommand::Document { reply }).await
    }

    /// Closes every session with `reason`, saves the document, and ends the room.
    pub async fn close(&self, reason: CloseReason) -> Result<(), StorageError> {
        self.request(|reply| RoomCommand::Close { reason, reply })
            .await
            .unwrap_or(Ok(()))
    }
}

struct Session {
    client: ClientId,
    permission: Permission,
    metadata: Value,
    outbox: Outbox,
    /// Document broadcasts go only to sessions whose `reconnect` was answered (or that sent a
    /// patch): before that, a broadcast would move the client's cursor past edits it never got.
    live: bool,
    /// The lowest `lastTimestamp` this session was sent a reconnect diff from. Being live since,
    /// it has every later write queued, so a reconnect from there or later is answered without
    /// a diff (a socket repeating `reconnect` must not queue the document again and again).
    diff_sent_from: Option<u64>,
}

/// Fold schedule: one fold per interval while the room changes, one in flight at a time,
/// retried after failures.
#[derive(Default)]
struct SaveState {
    /// The document changed since the last fold started.
    dirty: bool,
    /// When the next fold starts.
    at: Option<Instant>,
    in_flight: Option<JoinHandle<Result<(), StorageError>>>,
    /// Consecutive failures, for the retry backoff.
    failures: u32,
}

/// A batch waiting for room in the write budget before it is appended.
struct WaitingAppend {
    clock: u64,
    bytes: Vec<u8>,
    permit: std::pin::Pin<Box<dyn std::future::Future<Output = BudgetPermit> + Send>>,
}

pub(crate) struct Room {
    id: RoomId,
    key: RoomKey,
    generation: u64,
    config: RoomConfig,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    manager: Weak<Inner>,
    doc: Document,
    ephemeral: Ephemeral,
    sessions: HashMap<SessionId, Session>,
    /// Sessions whose queue overflowed during the current command; removed right after it.
    overflowed: Vec<SessionId>,
    /// Outboxes of sessions that left with frames still held (acks of applied writes), kept
    /// until those are durable and released: the connection sends them before its close.
    leaving: Vec<Outbox>,
    save: SaveState,
    idle_at: Option<Instant>,
    /// Loading failed: joins are refused with this rather than served an empty document.
    load_failure: Option<JoinError>,
    /// Clock up to which every write is durable; frames made later wait (see [`Outbox`]).
    durable: u64,
    /// Appends queued and not yet confirmed, and where confirmations arrive.
    appending: usize,
    /// The append waiting for room in the write budget: while there is one, the room reads no
    /// commands (so a flood of writes waits in the room's bounded queue, not in memory).
    waiting: Option<WaitingAppend>,
    durable_tx: mpsc::Sender<Result<u64, StorageError>>,
    /// An append failed: the in-memory state is ahead of storage and is dropped.
    write_failed: bool,
}

enum Flow {
    Continue,
    Close {
        reason: CloseReason,
        reply: Option<oneshot::Sender<Result<(), StorageError>>>,
    },
}

impl Room {
    pub(crate) fn spawn(
        id: RoomId,
        generation: u64,
        config: RoomConfig,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        manager: Weak<Inner>,
        tasks: &Tasks,
    ) -> RoomHandle {
        let (tx, rx) = mpsc::channel(config.command_queue.max(1));
        let (durable_tx, durable_rx) = mpsc::channel(MAX_APPENDS_IN_FLIGHT);
        let room = Room {
            key: RoomKey::Canvas(id.clone()),
            id: id.clone(),
            generation,
            config,
            storage,
            metrics,
            manager,
            doc: Document::default(),
            ephemeral: Ephemeral::default(),
            sessions: HashMap::new(),
            overflowed: Vec::new(),
            leaving: Vec::new(),
            save: SaveState::default(),
            idle_at: None,
            load_failure: None,
            durable: 0,
            appending: 0,
            waiting: None,
            durable_tx,
            write_failed: false,
        };
        // A root span: the room outlives the connection that happened to create it.
        let span = tracing::info_span!(parent: None, "room", room = %id);
        tasks.spawn(tracing::Instrument::instrument(
            room.run(rx, durable_rx),
            span,
        ));
        RoomHandle { id, generation, tx }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<RoomCommand>,
        mut durable_rx: mpsc::Receiver<Result<u64, StorageError>>,
    ) {
        Metrics::inc(&self.metrics.rooms_active);
        let (reason, reply) = match self.load().await {
            Ok(()) => {
                // Counted from the end of the load, however long it took: a room nobody joins
                // (its first connect failed) is evicted like an emptied one.
                self.idle_at = Some(Instant::now() + self.config.idle_timeout);
                self.serve(&mut rx, &mut durable_rx).await
            }
            Err(StorageError::OverLimit { source, .. }) => {
                error!(error = %source, "stored room is over the limits; refusing it until they are raised");
                self.load_failure = Some(JoinError::OverLimit(source));
                (CloseReason::storage_unavailable(), None)
            }
            Err(e) => {
                error!(error = %e, "cannot load room");
                Metrics::inc(&self.metrics.storage_errors);
                self.load_failure = Some(JoinError::StorageUnavailable);
                (CloseReason::storage_unavailable(), None)
            }
        };
        let result = self.shut(reason, &mut rx, &mut durable_rx).await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Metrics::dec(&self.metrics.rooms_active);
    }

    async fn load(&mut self) -> Result<(), StorageError> {
        let storage = self.storage.clone();
        let id = self.id.clone();
        let limits = self.config.limits;
        let loaded =
            tokio::task::spawn_blocking(move || storage::load_document(&*storage, &id, &limits))
                .await
                .unwrap_or_else(|e| Err(panicked(&self.id, e)))?;
        if let Some(doc) = loaded {
            info!(
                clock = doc.clock(),
                components = doc.live_components(),
                "room loaded"
            );
            self.durable = doc.clock();
            self.doc = doc;
        }
        Ok(())
    }

    /// Processes commands until the room is closed; returns why, and whom to tell.
    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<RoomCommand>,
        durable_rx: &mut mpsc::Receiver<Result<u64, StorageError>>,
    ) -> (
        CloseReason,
        Option<oneshot::Sender<Result<(), StorageError>>>,
    ) {
        loop {
            // No fold while an applied write waits to be appended: the fold must follow it.
            let save_at = self
                .save
                .at
                .filter(|_| self.save.in_flight.is_none() && self.waiting.is_none());
            // Biased: storage results and due saves first (they are rare and must not starve),
            // then commands, and idle eviction last, so a join already queued keeps the room.
            tokio::select! {
                biased;
                Some(result) = durable_rx.recv(), if self.appending > 0 => {
                    self.appending -= 1;
                    match result {
                        Ok(clock) => self.made_durable(clock),
                        Err(e) => {
                            error!(error = %e, "append failed; dropping unsaved state and closing the room");
                            Metrics::inc(&self.metrics.storage_errors);
                            self.write_failed = true;
                            return (CloseReason::new(1011, "storage write failed; reconnect to retry"), None);
                        }
                    }
                    self.disconnect_overflowed();
                }
                result = wait_save(&mut self.save.in_flight), if self.save.in_flight.is_some() => {
                    self.save.in_flight = None;
                    self.saved(result);
                }
                permit = wait_for_budget(&mut self.waiting), if self.waiting.is_some() => {
                    if let Some(waiting) = self.waiting.take() {
                        self.append(waiting.clock, waiting.bytes, permit);
                    }
                }
                _ = sleep_until(save_at.unwrap_or_else(Instant::now)), if save_at.is_some() => {
                    self.start_save();
                }
                cmd = rx.recv(), if self.appending < MAX_APPENDS_IN_FLIGHT && self.waiting.is_none() => {
                    let Some(cmd) = cmd else {
                        return (CloseReason::room_closed(), None);
                    };
                    let flow = self.handle(cmd);
                    self.disconnect_overflowed();
                    if let Flow::Close { reason, reply } = flow {
                        return (reason, reply);
                    }
                }
                _ = sleep_until(self.idle_at.unwrap_or_else(Instant::now)), if self.idle_at.is_some() => {
                    info!("room idle, evicting");
                    return (CloseReason::room_closed(), None);
                }
            }
        }
    }

    fn handle(&mut self, cmd: RoomCommand) -> Flow {
        match cmd {
            RoomCommand::Join { id, session, reply } => {
                self.join(id, session);
                let _ = reply.send(Ok(()));
            }
            RoomCommand::Frame { session, frame } => self.frame(session, frame),
            RoomCommand::Reauthorize { session, grant } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.permission = grant.permission;
                    if !grant.metadata.is_null() {
                        s.metadata = grant.metadata;
                    }
                }
            }
            RoomCommand::Leave { session } => self.remove(session, None),
            RoomCommand::SetPermission {
                session,
                permission,
                reply,
            } => {
                let found = self
                    .sessions
                    .get_mut(&session)
                    .map(|s| s.permission = permission);
                let _ = reply.send(found.is_some());
            }
            RoomCommand::SetMetadata {
                session,
                metadata,
                reply,
            } => {
                let found = self
                    .sessions
                    .get_mut(&session)
                    .map(|s| s.metadata = metadata);
                let _ = reply.send(found.is_some());
            }
            RoomCommand::Sessions { reply } => {
                let _ = reply.send(self.session_infos());
            }
            RoomCommand::Document { reply } => {
                let _ = reply.send(self.doc.clone());
            }
            RoomCommand::Close { reason, reply } => {
                return Flow::Close {
                    reason,
                    reply: Some(reply),
                }
            }
        }
        Flow::Continue
    }

    fn session_infos(&self) -> Vec<SessionInfo> {
        let mut infos: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: *id,
                client: s.client.clone(),
                permission: s.permission,
                metadata: s.metadata.clone(),
            })
            .collect();
        infos.sort_by_key(|s| s.id);
        infos
    }

    // --- Sessions -------------------------------------------------------------------------------

    fn join(&mut self, id: SessionId, new: NewSession) {
        debug!(session = %id, client = %new.client, permission = ?new.permission, "join");
        let others = self.ephemeral.merged_except(id.0);
        self.sessions.insert(
            id,
            Session {
                client: new.client,
                permission: new.permission,
                metadata: new.metadata,
                outbox: new.outbox,
                live: false,
                diff_sent_from: None,
            },
        );
        Metrics::inc(&self.metrics.sessions_active);
        self.idle_at = None;
        if has_entries(&others) {
            let raw = canvas::single_patch(&others);
            let frame = ServerFrame::Patch {
                document_patches: None,
                ephemeral_patches: Some(&raw),
                client_id: "",
                timestamp: None,
            };
            self.send(id, &frame.encode());
        }
        self.broadcast_client_count();
    }

    /// Removes a session; with a reason, the connection is told to close with it.
    fn remove(&mut self, id: SessionId, close: Option<CloseReason>) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        debug!(session = %id, reason = ?close, "leave");
        Metrics::dec(&self.metrics.sessions_active);
        match close {
            Some(reason) => session.outbox.close(reason),
            // The connection ends the session (and may close it itself, after the frames still
            // queued): the acks of writes it made still reach it once durable.
            None if session.outbox.has_held() => self.leaving.push(session.outbox),
            None => {}
        }
        if let Some(deletions) = self.ephemeral.remove(id.0) {
            let raw = canvas::single_patch(&deletions);
            let frame = ServerFrame::Patch {
                document_patches: None,
                ephemeral_patches: Some(&raw),
                client_id: session.client.as_str(),
                timestamp: None,
            };
            self.broadcast(None, &frame.encode(), false);
        }
        self.broadcast_client_count();
        if self.sessions.is_empty() {
            self.idle_at = Some(Instant::now() + self.config.idle_timeout);
        }
    }

    fn disconnect_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            if self.sessions.contains_key(&id) {
                warn!(session = %id, "disconnecting slow client");
                Metrics::inc(&self.metrics.slow_clients_disconnected);
                self.remove(id, Some(CloseReason::slow_client()));
            }
        }
    }

    fn send(&mut self, id: SessionId, frame: &ByteString) {
        let (tag, durable) = (self.doc.clock(), self.durable);
        if let Some(session) = self.sessions.get_mut(&id) {
            if session.outbox.send(frame, tag, durable) == Delivery::Full {
                self.overflowed.push(id);
            }
        }
    }

    /// Sends to every session but `except`; with `live_only`, only to sessions already synced.
    fn broadcast(&mut self, except: Option<SessionId>, frame: &ByteString, live_only: bool) {
        let (tag, durable) = (self.doc.clock(), self.durable);
        for (id, session) in &mut self.sessions {
            if Some(*id) == except || (live_only && !session.live) {
                continue;
            }
            if session.outbox.send(frame, tag, durable) == Delivery::Full {
                self.overflowed.push(*id);
            }
        }
    }

    /// Writes up to `clock` are durable: frames waiting for them leave.
    fn made_durable(&mut self, clock: u64) {
        self.durable = self.durable.max(clock);
        for session in self.sessions.values_mut() {
            if session.outbox.has_held() {
                session.outbox.release(self.durable);
            }
        }
        // A left session's outbox is dropped once it holds nothing: its connection then closes.
        let durable = self.durable;
        self.leaving
            .retain_mut(|outbox| outbox.release(durable) == Delivery::Queued && outbox.has_held());
    }

    fn broadcast_client_count(&mut self) {
        let frame = ServerFrame::ClientCount {
            count: self.sessions.len(),
        }
        .encode();
        self.broadcast(None, &frame, false);
    }

    // --- Protocol -------------------------------------------------------------------------------

    fn frame(&mut self, id: SessionId, frame: ClientFrame) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        match frame {
            ClientFrame::Patch {
                message_id,
                document,
                ephemeral,
            } => self.patch(id, &message_id, document, ephemeral),
            ClientFrame::Reconnect {
                last_timestamp,
                protocol_version,
                document,
                ephemeral,
            } => {
                if protocol_version != Some(canvas::PROTOCOL_VERSION as f64) {
                    let frame = ServerFrame::VersionMismatch {
                        server_protocol_version: canvas::PROTOCOL_VERSION,
                    };
                    self.send(id, &frame.encode());
                    return;
                }
                self.reconnect(id, last_timestamp, document, ephemeral);
            }
            // Token refreshes are authorized by the connection before they reach the room.
            ClientFrame::AuthRefresh { .. } => {}
        }
    }

    fn patch(
        &mut self,
        id: SessionId,
        message_id: &str,
        document: Option<Patches>,
        ephemeral: Option<Patches>,
    ) {
        let document = document.filter(|p| !p.is_empty());
        let ephemeral = ephemeral.filter(|p| !p.is_empty());
        if document.is_none() && ephemeral.is_none() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.live = true;
        if session.permission == Permission::Readwrite
            && self.apply_and_broadcast(id, document, ephemeral).is_err()
        {
            return;
        }
        let ack = ServerFrame::Ack {
            message_id,
            timestamp: self.doc.clock(),
        };
        self.send(id, &ack.encode());
    }

    fn reconnect(
        &mut self,
        id: SessionId,
        last_timestamp: u64,
        document: Option<Patches>,
        ephemeral: Option<Patches>,
    ) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let readwrite = session.permission == Permission::Readwrite;
        // The server lost writes this client saw (it restarted from an older snapshot): ask the
        // client to send back what it knows after our clock.
        let since = self.doc.clock();
        let needs_resync = readwrite && last_timestamp > since;
        if readwrite {
            let document = document.filter(|p| !p.is_empty());
            let ephemeral = ephemeral.filter(|p| !p.is_empty());
            if self.apply_and_broadcast(id, document, ephemeral).is_err() {
                return;
            }
        }
        if needs_resync {
            self.send(id, &ServerFrame::Resync { since }.encode());
        }
        let diff_sent = self
            .sessions
            .get(&id)
            .and_then(|s| s.diff_sent_from)
            .is_some_and(|from| from <= last_timestamp);
        if !diff_sent {
            // The diff is serialized straight from the document into the frame (no copy of it).
            let others = self.ephemeral.merged_except(id.0);
            if let Some(frame) = canvas::encode_reconnect_patch(&self.doc, last_timestamp, &others)
            {
                self.send(id, &frame);
            }
        }
        let synced = ServerFrame::Synced {
            timestamp: self.doc.clock(),
        };
        self.send(id, &synced.encode());
        if let Some(session) = self.sessions.get_mut(&id) {
            session.live = true;
            if !diff_sent {
                session.diff_sent_from = Some(last_timestamp);
            }
        }
    }

    /// Applies a request's patches and relays them, as received, to every other synced session.
    /// A request that would take the document or the session's presence past a limit is
    /// refused whole before anything is applied, stored or relayed, and the session is closed
    /// with 1009 and the limit's name (the error says which).
    fn apply_and_broadcast(
        &mut self,
        id: SessionId,
        document: Option<Patches>,
        ephemeral: Option<Patches>,
    ) -> Result<(), LimitError> {
        if document.is_none() && ephemeral.is_none() {
            return Ok(());
        }
        let Some(client) = self.sessions.get(&id).map(|s| s.client.clone()) else {
            return Ok(());
        };
        let limits = &self.config.limits;
        let checked = document
            .as_ref()
            .map_or(Ok(()), |d| self.doc.check(&d.parsed, limits))
            .and_then(|()| {
                ephemeral
                    .as_ref()
                    .map_or(Ok(()), |e| self.ephemeral.check(id.0, &e.parsed, limits))
            });
        if let Err(e) = checked {
            info!(session = %id, error = %e, "request refused: over a limit");
            Metrics::inc(&self.metrics.requests_over_limit);
            self.remove(id, Some(CloseReason::new(1009, e.to_string())));
            return Err(e);
        }
        let timestamp = document.as_ref().map(|d| {
            Metrics::inc(&self.metrics.patches_applied);
            let clock = self.doc.apply(&d.parsed, &self.config.limits);
            self.persist(clock, d);
            clock
        });
        if let Some(eph) = &ephemeral {
            self.ephemeral.apply(id.0, &eph.parsed, &self.config.limits);
        }
        let frame = ServerFrame::Patch {
            document_patches: document.as_ref().map(|d| d.raw.as_ref()),
            ephemeral_patches: ephemeral.as_ref().map(|e| e.raw.as_ref()),
            client_id: client.as_str(),
            timestamp,
        };
        self.broadcast(Some(id), &frame.encode(), true);
        if document.is_some() {
            self.mark_dirty();
        }
        Ok(())
    }

    // --- Persistence ----------------------------------------------------------------------------

    /// Makes the write that moved the clock to `clock` durable: appended to the room's log once
    /// the write budget has room for it; frames made from now on wait until it is durable.
    fn persist(&mut self, clock: u64, patches: &Patches) {
        let bytes = patches.raw.get().as_bytes().to_vec();
        // Only one command's batch can wait: the room reads no command while one does.
        match self.config.write_budget.try_acquire(bytes.len()) {
            Some(permit) => self.append(clock, bytes, permit),
            None => {
                Metrics::inc(&self.metrics.appends_waited);
                self.waiting = Some(WaitingAppend {
                    clock,
                    permit: Box::pin(self.config.write_budget.acquire(bytes.len())),
                    bytes,
                });
            }
        }
    }

    /// Queues the batch; its room in the budget is given back once it is written (or failed).
    fn append(&mut self, clock: u64, bytes: Vec<u8>, permit: BudgetPermit) {
        self.appending += 1;
        let durable_tx = self.durable_tx.clone();
        self.storage.append(
            &self.key,
            clock,
            bytes,
            Box::new(move |result| {
                drop(permit);
                // Capacity equals the in-flight limit, so this never finds the channel full.
                let _ = durable_tx.try_send(result.map(|()| clock));
            }),
        );
    }

    fn mark_dirty(&mut self) {
        self.save.dirty = true;
        if self.save.at.is_none() {
            self.save.at = Some(Instant::now() + self.config.fold_interval);
        }
    }

    /// Folds the document into a new snapshot, which trims the log.
    fn start_save(&mut self) {
        self.save.at = None;
        self.save.dirty = false;
        let (clock, bytes) = (self.doc.clock(), self.doc.encode_snapshot());
        let storage = self.storage.clone();
        let key = self.key.clone();
        self.save.in_flight = Some(tokio::task::spawn_blocking(move || {
            storage.fold(&key, clock, &bytes)
        }));
    }

    fn saved(&mut self, result: Result<(), StorageError>) {
        match result {
            Ok(()) => {
                Metrics::inc(&self.metrics.snapshots_saved);
                self.save.failures = 0;
                if self.save.dirty && self.save.at.is_none() {
                    self.save.at = Some(Instant::now() + self.config.fold_interval);
                }
            }
            Err(e) => {
                Metrics::inc(&self.metrics.storage_errors);
                self.save.failures += 1;
                let retry = retry_delay(self.save.failures);
                error!(error = %e, retry_in = ?retry, "folding room failed; its log keeps the writes; retrying");
                self.save.dirty = true;
                self.save.at = Some(Instant::now() + retry);
            }
        }
    }

    /// Ends the room: closes its sessions so nothing more is acked (after the acks of writes
    /// already applied, once durable), then saves what changed.
    async fn shut(
        &mut self,
        reason: CloseReason,
        rx: &mut mpsc::Receiver<RoomCommand>,
        durable_rx: &mut mpsc::Receiver<Result<u64, StorageError>>,
    ) -> Result<(), StorageError> {
        let manager = self.manager.upgrade();
        let closing = manager
            .as_ref()
            .map(|m| m.begin_close(&self.id, self.generation));
        if tokio::time::timeout(SETTLE_APPENDS_LIMIT, self.settle_appends(durable_rx))
            .await
            .is_err()
        {
            warn!("appends still in flight at close; their frames are dropped");
        }
        self.leaving.clear();
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(mut session) = self.sessions.remove(&id) {
                session.outbox.close(reason.clone());
                Metrics::dec(&self.metrics.sessions_active);
            }
        }
        let mut result = Ok(());
        if let Some(in_flight) = self.save.in_flight.take() {
            result = wait_save(&mut Some(in_flight)).await;
            if result.is_ok() {
                Metrics::inc(&self.metrics.snapshots_saved);
            }
        }
        if self.load_failure.is_none() && !self.write_failed && (self.save.dirty || result.is_err())
        {
            result = self.final_save().await;
        }
        // Whoever still holds the old handle learns the room is gone and asks the manager again.
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                RoomCommand::Join { session, reply, .. } => {
                    let error = self.load_failure.clone().unwrap_or(JoinError::RoomClosed);
                    let _ = reply.send(Err((error, session)));
                }
                RoomCommand::Close { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
        if let Some(manager) = manager {
            manager.finish_close(&self.id, self.generation);
        }
        drop(closing);
        info!(clock = self.doc.clock(), "room closed");
        result
    }

    /// Appends the batch waiting for budget, waits for the appends in flight and releases the
    /// frames they hold. After a failed append nothing more is released: a later batch's success
    /// does not make the failed one durable.
    async fn settle_appends(&mut self, durable_rx: &mut mpsc::Receiver<Result<u64, StorageError>>) {
        if let Some(mut waiting) = self.waiting.take() {
            let permit = waiting.permit.as_mut().await;
            self.append(waiting.clock, waiting.bytes, permit);
        }
        while self.appending > 0 && !self.write_failed {
            let Some(result) = durable_rx.recv().await else {
                return;
            };
            self.appending -= 1;
            match result {
                Ok(clock) => self.made_durable(clock),
                Err(e) => {
                    error!(error = %e, "append failed while closing");
                    Metrics::inc(&self.metrics.storage_errors);
                    self.write_failed = true;
                }
            }
        }
    }

    /// The last fold of a closing room, retried a few times (its log holds the writes anyway).
    async fn final_save(&mut self) -> Result<(), StorageError> {
        let bytes = Arc::new(self.doc.encode_snapshot());
        let clock = self.doc.clock();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (storage, key, bytes) = (self.storage.clone(), self.key.clone(), bytes.clone());
            let result = tokio::task::spawn_blocking(move || storage.fold(&key, clock, &bytes))
                .await
                .unwrap_or_else(|e| Err(panicked(&self.id, e)));
            match result {
                Ok(()) => {
                    Metrics::inc(&self.metrics.snapshots_saved);
                    self.save.dirty = false;
                    return Ok(());
                }
                Err(e) if attempt < 3 => {
                    Metrics::inc(&self.metrics.storage_errors);
                    warn!(error = %e, attempt, "final fold failed, retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.storage_errors);
                    error!(error = %e, "final fold failed; the room's log still holds its writes");
                    return Err(e);
                }
            }
        }
    }
}

/// The write budget's answer for the waiting batch (pending forever when none waits).
async fn wait_for_budget(waiting: &mut Option<WaitingAppend>) -> BudgetPermit {
    match waiting.as_mut() {
        Some(waiting) => waiting.permit.as_mut().await,
        None => std::future::pending().await,
    }
}

fn has_entries(patch: &Value) -> bool {
    patch.as_object().is_some_and(|m| !m.is_empty())
}

async fn wait_save(
    in_flight: &mut Option<JoinHandle<Result<(), StorageError>>>,
) -> Result<(), StorageError> {
    match in_flight.as_mut() {
        Some(handle) => handle.await.unwrap_or_else(|e| {
            Err(StorageError::Io {
                room: String::new(),
                source: std::io::Error::other(format!("save task failed: {e}")),
            })
        }),
        None => std::future::pending().await,
    }
}

fn panicked(room: &RoomId, e: tokio::task::JoinError) -> StorageError {
    StorageError::Io {
        room: room.to_string(),
        source: std::io::Error::other(format!("storage task failed: {e}")),
    }
}

/// Backoff after `failures` consecutive storage failures: 0.5 s doubling, at most 30 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)).min(30_000))
}
