//! One room: a task that owns the document, the ephemeral state and the sessions, and applies the
//! canvas-store protocol to them one command at a time.

use std::collections::HashMap;
use std::sync::Arc;

use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::config::RoomConfig;
use super::wire::{self as canvas, ClientFrame, Patches, ServerFrame};
use crate::auth::{Grant, Permission};
use crate::engine::{Document, Ephemeral, LimitError};
use crate::ids::{ClientId, RoomId, RoomKey, SessionId};
use crate::metrics::Metrics;
use crate::rooms::{
    self, send_command, CloseReason, ClosingFold, Delivery, Ended, JoinError, Journal,
    JournalConfig, LiveRoom, NewSession, Outbox, Registration, RoomTask, SessionInfo, Step, Tasks,
};
use crate::storage::{self, StorageError};

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

/// A cloneable handle to a live room.
#[derive(Clone)]
pub struct RoomHandle {
    pub(crate) id: RoomId,
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

impl LiveRoom for RoomHandle {
    fn close(&self, reason: CloseReason) -> ClosingFold {
        let handle = self.clone();
        Box::pin(async move { RoomHandle::close(&handle, reason).await })
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

pub(crate) struct Room {
    id: RoomId,
    config: RoomConfig,
    metrics: Arc<Metrics>,
    /// Its entry in the manager, to report its closing.
    registration: Registration,
    doc: Document,
    ephemeral: Ephemeral,
    sessions: HashMap<SessionId, Session>,
    /// Sessions whose queue overflowed during the current command; removed right after it.
    overflowed: Vec<SessionId>,
    /// Each write is appended under the clock it moved the document to.
    journal: Journal,
    idle_at: Option<Instant>,
    /// Loading failed: joins are refused with this rather than served an empty document.
    load_failure: Option<JoinError>,
}

/// Why a room stops, and whom to tell when it is closed.
type Stop = (
    CloseReason,
    Option<oneshot::Sender<Result<(), StorageError>>>,
);

impl Room {
    pub(crate) fn spawn(
        id: RoomId,
        registration: Registration,
        config: RoomConfig,
        journal: JournalConfig,
        tasks: &Tasks,
    ) -> RoomHandle {
        let (tx, rx) = rooms::command_channel();
        let key = RoomKey::Canvas(id.clone());
        let room = Room {
            id: id.clone(),
            metrics: journal.metrics.clone(),
            journal: Journal::new(key, journal, config.fold_interval),
            config,
            registration,
            doc: Document::default(),
            ephemeral: Ephemeral::default(),
            sessions: HashMap::new(),
            overflowed: Vec::new(),
            idle_at: None,
            load_failure: None,
        };
        // A root span: the room outlives the connection that happened to create it.
        let span = tracing::info_span!(parent: None, "room", room = %id);
        tasks.spawn(tracing::Instrument::instrument(room.run(rx), span));
        RoomHandle { id, tx }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<RoomCommand>) {
        Metrics::inc(&self.metrics.rooms_active);
        let (reason, reply) = match self.load().await {
            Ok(()) => {
                // Counted from the end of the load, however long it took: a room nobody joins
                // (its first connect failed) is evicted like an emptied one.
                self.idle_at = Some(Instant::now() + self.config.idle_timeout);
                match rooms::serve(&mut self, &mut rx).await {
                    Ended::Stopped(stop) => stop,
                    Ended::Unreachable => (CloseReason::room_closed(), None),
                    Ended::WriteFailed => (
                        CloseReason::new(1011, "storage write failed; reconnect to retry"),
                        None,
                    ),
                }
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
        let result = self.shut(reason, &mut rx).await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Metrics::dec(&self.metrics.rooms_active);
    }

    async fn load(&mut self) -> Result<(), StorageError> {
        let storage = self.journal.storage().clone();
        let id = self.id.clone();
        let limits = self.config.limits;
        let loaded =
            tokio::task::spawn_blocking(move || storage::load_document(&*storage, &id, &limits))
                .await
                .unwrap_or_else(|e| Err(rooms::panicked(self.journal.key(), e)))?;
        if let Some(doc) = loaded {
            info!(
                clock = doc.clock(),
                components = doc.live_components(),
                "room loaded"
            );
            self.journal.resume(doc.clock());
            self.doc = doc;
        }
        Ok(())
    }

    fn handle(&mut self, cmd: RoomCommand) -> Step<Stop> {
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
            RoomCommand::Close { reason, reply } => return Step::Stop((reason, Some(reply))),
        }
        Step::Continue
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
            None => self.journal.let_go(session.outbox, None),
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
        let tag = self.doc.clock();
        if let Some(session) = self.sessions.get_mut(&id) {
            if self.journal.send(&mut session.outbox, frame, tag) == Delivery::Full {
                self.overflowed.push(id);
            }
        }
    }

    /// Sends to every session but `except`; with `live_only`, only to sessions already synced.
    fn broadcast(&mut self, except: Option<SessionId>, frame: &ByteString, live_only: bool) {
        let tag = self.doc.clock();
        for (id, session) in &mut self.sessions {
            if Some(*id) == except || (live_only && !session.live) {
                continue;
            }
            if self.journal.send(&mut session.outbox, frame, tag) == Delivery::Full {
                self.overflowed.push(*id);
            }
        }
    }

    /// More writes are durable: frames waiting for them leave.
    fn made_durable(&mut self) {
        for session in self.sessions.values_mut() {
            self.journal.release(&mut session.outbox);
        }
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
            self.journal.append(clock, d.raw.get().as_bytes().to_vec());
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
        Ok(())
    }

    // --- Closing --------------------------------------------------------------------------------

    /// Ends the room: closes its sessions so nothing more is acked (after the acks of writes
    /// already applied, once durable), then folds what changed.
    async fn shut(
        &mut self,
        reason: CloseReason,
        rx: &mut mpsc::Receiver<RoomCommand>,
    ) -> Result<(), StorageError> {
        let closing = self.registration.begin_close();
        if !self.journal.settle().await && !self.journal.failed() {
            warn!("appends still in flight at close; their frames are dropped");
        }
        self.made_durable();
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(mut session) = self.sessions.remove(&id) {
                session.outbox.close(reason.clone());
                Metrics::dec(&self.metrics.sessions_active);
            }
        }
        let doc = &self.doc;
        let loaded = self.load_failure.is_none();
        let result = self
            .journal
            .close(|| loaded.then(|| doc.encode_snapshot()))
            .await;
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
        drop(closing);
        info!(clock = self.doc.clock(), "room closed");
        result
    }
}

impl RoomTask for Room {
    type Command = RoomCommand;
    type Stop = Stop;

    fn journal(&mut self) -> &mut Journal {
        &mut self.journal
    }

    fn released(&mut self) {
        self.made_durable();
        self.disconnect_overflowed();
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        Some(self.doc.encode_snapshot())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.idle_at
    }

    async fn on_command(&mut self, command: RoomCommand) -> Step<Stop> {
        let step = self.handle(command);
        self.disconnect_overflowed();
        step
    }

    async fn on_deadline(&mut self) -> Step<Stop> {
        if self.idle_at.is_some_and(|at| at <= Instant::now()) {
            info!("room idle, evicting");
            return Step::Stop((CloseReason::room_closed(), None));
        }
        Step::Continue
    }

    async fn after_event(&mut self) -> Step<Stop> {
        Step::Continue
    }
}

fn has_entries(patch: &Value) -> bool {
    patch.as_object().is_some_and(|m| !m.is_empty())
}
