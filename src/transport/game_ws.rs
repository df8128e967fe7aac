//! The EdgeBase Rooms endpoint (`GET /api/room?namespace=NS&id=ID`) and its session loop.
//!
//! A connection authenticates in-band (`auth` within the auth timeout), joins, then sends actions.
//! The server never sends WebSocket Pings here (the Rust SDK's reader stops at the first non-text
//! frame): liveness is the app-level `ping`/`pong` and a stale-socket timeout above the SDKs' 30 s
//! ping interval. Protocol-level Pings from clients are answered.

use std::time::Duration;

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, Instrument};

use super::limits::ConnectionPermit;
use super::upgrade::UpgradeRequest;
use super::websocket::{Message, WebSocket, WsError};
use super::{AppState, HttpError, LimitError, LiveConnection, RateLimiter};
use crate::auth::Identity;
use crate::game::{JoinOutcome, RoomHandle, Sender};
use crate::ids::{RecordKey, RoomId};
use crate::metrics::Metrics;
use crate::protocol::game::{
    close as codes, error_frame, ClientFrame, DecodeError, ErrorCode, ServerFrame,
};
use crate::rooms::{CloseReason, LinkEvent, SessionLink};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RoomQuery {
    namespace: Option<String>,
    id: Option<String>,
}

/// The room a query names, or the HTTP error that answers it.
pub(super) fn room_key(state: &AppState, query: &RoomQuery) -> Result<RecordKey, HttpError> {
    let (Some(namespace), Some(id)) = (query.namespace.as_deref(), query.id.as_deref()) else {
        return Err(HttpError::coded(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "the namespace and id query parameters are required",
        ));
    };
    if state.games.namespaces().get(namespace).is_none() {
        return Err(HttpError::coded(
            StatusCode::NOT_FOUND,
            "NAMESPACE_NOT_FOUND",
            &format!("no room namespace {namespace:?} on this server"),
        ));
    }
    let invalid = |what: &str, e: crate::ids::IdError| {
        HttpError::coded(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("invalid {what}: {e}"),
        )
    };
    Ok(RecordKey::new(
        RoomId::parse(namespace).map_err(|e| invalid("namespace", e))?,
        RoomId::parse(id).map_err(|e| invalid("room id", e))?,
    ))
}

/// `GET /api/room` without an upgrade: how to connect instead.
pub(super) async fn not_upgraded() -> HttpResponse {
    HttpError::coded(
        StatusCode::UPGRADE_REQUIRED,
        "UPGRADE_REQUIRED",
        "this endpoint speaks the EdgeBase Rooms protocol over WebSocket: connect with ws://HOST/api/room?namespace=NS&id=ID",
    )
    .into()
}

/// An upgrade to a room that may be joined.
pub(super) struct Accepted {
    permit: ConnectionPermit,
    key: RecordKey,
    peer: Option<IpAddr>,
}

/// Checks an upgrade. Refused before the upgrade: unknown namespace (404), a full room
/// (403 `ROOM_FULL`), connection caps (503/429), shutdown (503).
pub(super) fn accept(state: &AppState, request: &UpgradeRequest) -> Result<Accepted, HttpError> {
    let query = web::Query::<RoomQuery>::from_query(&request.query)
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let key = room_key(state, &query)?;
    if state.shutting_down() {
        return Err(HttpError::coded(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "server is shutting down",
        ));
    }
    if state
        .games
        .status(&key)
        .is_some_and(|s| s.is_full_for_newcomers())
    {
        Metrics::inc(&state.metrics.connections_refused);
        return Err(HttpError::coded(
            StatusCode::FORBIDDEN,
            "ROOM_FULL",
            "Room at maxPlayers capacity",
        ));
    }
    let permit = state.limiter.acquire(request.peer).map_err(|e| {
        Metrics::inc(&state.metrics.connections_refused);
        let status = match e {
            LimitError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
            LimitError::PeerFull => StatusCode::TOO_MANY_REQUESTS,
        };
        HttpError::coded(status, "TOO_MANY_CONNECTIONS", &e.to_string())
    })?;
    Ok(Accepted {
        permit,
        key,
        peer: request.peer,
    })
}

impl Accepted {
    /// The session on the upgraded socket: a future that runs until the connection ends.
    pub(super) fn run(
        self,
        state: web::Data<AppState>,
        socket: WebSocket,
    ) -> impl std::future::Future<Output = ()> + Send {
        let connection_id = format!("conn_{}", uuid::Uuid::new_v4().simple());
        let span = tracing::info_span!("game_conn", peer = ?self.peer, room = %self.key, conn = %connection_id);
        let conn = GameConnection {
            _live: LiveConnection::new(state.metrics.clone(), self.permit),
            state,
            socket,
            key: self.key,
            connection_id,
            identity: None,
            joined: None,
        };
        conn.run().instrument(span)
    }
}

/// A connection. Its future lives as long as the connection, so only the serving loop is
/// awaited inline; the rarer, larger steps (authenticating, handling a frame, closing) are
/// boxed, or every idle connection would carry their state.
struct GameConnection {
    _live: LiveConnection,
    state: web::Data<AppState>,
    socket: WebSocket,
    key: RecordKey,
    connection_id: String,
    identity: Option<Identity>,
    joined: Option<(RoomHandle, SessionLink)>,
}

/// How a connection ends.
enum End {
    /// The peer vanished or closed: nothing more to say.
    Gone(Option<CloseReason>),
    /// We close: optionally an `error` frame first, then the close code.
    Close(Option<ByteString>, CloseReason),
}

impl End {
    fn error(code: ErrorCode, message: &str, close: u16) -> End {
        End::Close(
            Some(error_frame(code, message)),
            CloseReason::new(close, message),
        )
    }
}

impl GameConnection {
    async fn run(mut self) {
        let end = match Box::pin(self.authenticate()).await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
        Box::pin(self.finish(end)).await;
    }

    /// Tells the room how the connection ended and closes the socket as `end` says.
    async fn finish(mut self, end: End) {
        if let Some((room, _)) = &self.joined {
            let connection_id = self.connection_id.clone();
            match &end {
                // The room already let this connection go.
                End::Close(_, r) if r.code == codes::LEFT || r.code == codes::KICKED => {}
                // A client closing with 4005 ("client left") left, with or without `leave`.
                End::Gone(Some(r)) if r.code == codes::LEFT => room.leave(connection_id).await,
                _ => room.disconnected(connection_id).await,
            }
        }
        match end {
            End::Gone(None) => {}
            End::Gone(Some(reason)) => self.socket.close(&reason).await,
            End::Close(frame, reason) => {
                // What the room queued before it closed us (its final deltas, `kicked`).
                if let Some((_, link)) = &mut self.joined {
                    while let Some(frame) = link.try_frame() {
                        self.socket.queue_text(&frame);
                    }
                }
                if let Some(frame) = frame {
                    self.socket.queue_text(&frame);
                }
                if !self
                    .socket
                    .flush_within(self.state.config.game_stale_timeout)
                    .await
                {
                    return;
                }
                debug!(code = reason.code, reason = %reason.reason, "closing");
                self.socket.close(&reason).await;
            }
        }
    }

    /// Waits for the `auth` frame (within the auth timeout).
    async fn authenticate(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + self.state.config.game_auth_timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.socket.recv()).await {
                Err(_) => {
                    info!("no auth within the timeout");
                    return Err(End::error(
                        ErrorCode::AuthTimeout,
                        "Authentication timeout",
                        codes::AUTH_TIMEOUT,
                    ));
                }
                Ok(Err(e)) => return Err(self.read_error(e)),
                Ok(Ok(msg)) => msg,
            };
            let text = match self.transport_frame(msg).await {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(end) => return Err(end),
            };
            match ClientFrame::decode(&text) {
                Ok(ClientFrame::Auth { token }) => {
                    return match self.state.game_auth.verify(&token) {
                        Ok(identity) => {
                            let frame = ServerFrame::AuthSuccess {
                                user_id: &identity.user_id,
                                connection_id: &self.connection_id,
                            }
                            .encode();
                            self.identity = Some(identity);
                            match self.reply(frame).await {
                                None => Ok(()),
                                Some(end) => Err(end),
                            }
                        }
                        Err(e) => {
                            info!(reason = %e, "auth failed");
                            Err(End::error(ErrorCode::AuthFailed, &e.0, codes::AUTH_FAILED))
                        }
                    };
                }
                Ok(ClientFrame::Ping) => {
                    // A ping before auth is harmless; answer it.
                    if let Some(end) = self.reply(ServerFrame::Pong.encode()).await {
                        return Err(end);
                    }
                }
                Err(DecodeError::InvalidJson(e)) => {
                    return Err(End::error(
                        ErrorCode::InvalidJson,
                        &format!("Invalid JSON: {e}"),
                        codes::PROTOCOL,
                    ));
                }
                Ok(_) | Err(_) => {
                    return Err(End::error(
                        ErrorCode::NotAuthenticated,
                        "authenticate first: the first message must be {\"type\":\"auth\",\"token\":...}",
                        codes::PROTOCOL,
                    ));
                }
            }
        }
    }

    /// Handles WebSocket-level frames; `Ok(Some(text))` is a text frame for the protocol.
    async fn transport_frame(&mut self, msg: Message) -> Result<Option<ByteString>, End> {
        match msg {
            Message::Text(text) => Ok(Some(text)),
            Message::Ping(bytes) => {
                self.socket.queue_pong(&bytes);
                if !self
                    .socket
                    .flush_within(self.state.config.game_stale_timeout)
                    .await
                {
                    return Err(End::Gone(None));
                }
                Ok(None)
            }
            Message::Pong => Ok(None),
            Message::Close(code) => Err(End::Gone(Some(CloseReason::new(code, "")))),
            Message::Binary(_) => Err(End::error(
                ErrorCode::InvalidJson,
                "binary frames are not supported; send JSON text frames",
                codes::PROTOCOL,
            )),
        }
    }

    /// How a connection whose socket failed ends.
    fn read_error(&self, error: WsError) -> End {
        if matches!(error, WsError::TooBig(_)) {
            Metrics::inc(&self.state.metrics.frames_oversized);
        }
        match error.close_reason() {
            Some(reason) => End::Close(None, reason),
            None => End::Gone(None),
        }
    }

    async fn serve(&mut self) -> End {
        let state = self.state.clone();
        let config = &state.config;
        let actions_per_second = self
            .state
            .games
            .namespaces()
            .get(self.key.namespace.as_str())
            .map_or(10, |ns| ns.options.actions_per_second);
        let now = Instant::now();
        // The specified bucket: capacity = refill = actions per second, starting full.
        let mut actions = RateLimiter::new(f64::from(actions_per_second), actions_per_second, now);
        let mut frames = RateLimiter::new(config.messages_per_second, config.message_burst, now);
        let mut last_heard = now;
        let mut stale_check = tokio::time::interval(Duration::from_secs(1));
        // A joined connection is closed by its room at shutdown; one that has not joined, here.
        let mut closing = state.closing.subscribe();
        loop {
            tokio::select! {
                () = shutdown_begun(&mut closing), if self.joined.is_none() => {
                    return End::Close(None, CloseReason::shutting_down());
                }
                event = room_event(&mut self.joined) => match event {
                    LinkEvent::Frame(frame) => {
                        if let Some(end) = self.send(frame).await {
                            return end;
                        }
                    }
                    LinkEvent::Closed(reason) => return End::Close(None, reason),
                },
                msg = self.socket.recv() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => return self.read_error(e),
                    };
                    let text = match self.transport_frame(msg).await {
                        Ok(Some(text)) => text,
                        Ok(None) => continue,
                        Err(end) => return end,
                    };
                    Metrics::inc(&self.state.metrics.frames_received);
                    if !frames.allow(last_heard) {
                        Metrics::inc(&self.state.metrics.rate_limited);
                        if let Some(end) = self.reply(error_frame(ErrorCode::RateLimited, "Too many messages")).await {
                            return end;
                        }
                        continue;
                    }
                    if let Some(end) = Box::pin(self.on_text(&text, &mut actions, last_heard)).await {
                        return end;
                    }
                }
                _ = stale_check.tick() => {
                    if last_heard.elapsed() > config.game_stale_timeout {
                        Metrics::inc(&self.state.metrics.heartbeat_timeouts);
                        info!("stale connection");
                        return End::Close(None, CloseReason::new(codes::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                    }
                }
            }
        }
    }

    /// Handles one text frame after auth; `Some` ends the connection.
    async fn on_text(
        &mut self,
        text: &str,
        actions: &mut RateLimiter,
        now: Instant,
    ) -> Option<End> {
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(DecodeError::InvalidJson(e)) => {
                Metrics::inc(&self.state.metrics.frames_invalid);
                return Some(End::error(
                    ErrorCode::InvalidJson,
                    &format!("Invalid JSON: {e}"),
                    codes::PROTOCOL,
                ));
            }
            Err(e @ DecodeError::UnknownType(_)) => {
                Metrics::inc(&self.state.metrics.frames_ignored);
                return self
                    .reply(error_frame(ErrorCode::UnknownType, &e.to_string()))
                    .await;
            }
            Err(e @ DecodeError::Invalid { .. }) => {
                Metrics::inc(&self.state.metrics.frames_invalid);
                return self
                    .reply(error_frame(ErrorCode::InvalidMessage, &e.to_string()))
                    .await;
            }
        };
        match frame {
            ClientFrame::Ping => self.reply(ServerFrame::Pong.encode()).await,
            ClientFrame::Auth { token } => self.refresh(&token).await,
            ClientFrame::Join { options } => self.join(options).await,
            ClientFrame::Leave => match &self.joined {
                Some((room, _)) => {
                    room.leave(self.connection_id.clone()).await;
                    None
                }
                None => Some(End::Close(None, CloseReason::new(codes::LEFT, "left"))),
            },
            ClientFrame::Send {
                action_type,
                payload,
                request_id,
            } => {
                let action = action_type.as_deref().unwrap_or("");
                let refuse = |code: ErrorCode, message: &str| {
                    ServerFrame::ActionError {
                        request_id: &request_id,
                        action_type: action,
                        code: code.as_str(),
                        message,
                    }
                    .encode()
                };
                let Some((room, _)) = &self.joined else {
                    return self
                        .reply(refuse(
                            ErrorCode::NotJoined,
                            "join the room before sending actions",
                        ))
                        .await;
                };
                if action_type.is_none() {
                    return self
                        .reply(refuse(
                            ErrorCode::InvalidAction,
                            "send needs a non-empty actionType",
                        ))
                        .await;
                }
                if !actions.allow(now) {
                    Metrics::inc(&self.state.metrics.rate_limited);
                    return self
                        .reply(refuse(
                            ErrorCode::RateLimited,
                            "Too many actions: rate limit exceeded",
                        ))
                        .await;
                }
                room.action(
                    self.connection_id.clone(),
                    request_id,
                    action.to_owned(),
                    payload,
                )
                .await;
                None
            }
        }
    }

    async fn reply(&mut self, frame: ByteString) -> Option<End> {
        let limit = self.state.config.game_stale_timeout;
        match self.socket.send_text(&frame, limit).await {
            true => None,
            false => Some(End::Gone(None)),
        }
    }

    /// Sends a frame of the room and whatever else it queued for this connection by now (one
    /// write). Ends the connection when it does not take the bytes within the stale timeout, or
    /// when the room closes it meanwhile (a socket that stopped reading must not hold it open).
    async fn send(&mut self, frame: ByteString) -> Option<End> {
        let limit = self.state.config.game_stale_timeout;
        self.socket.queue_text(&frame);
        let Some((_, link)) = &mut self.joined else {
            return (!self.socket.flush_within(limit).await).then_some(End::Gone(None));
        };
        while self.socket.queued() < super::WRITE_BATCH_BYTES {
            match link.try_frame() {
                Some(frame) => self.socket.queue_text(&frame),
                None => break,
            }
        }
        tokio::select! {
            flushed = self.socket.flush_within(limit) => (!flushed).then_some(End::Gone(None)),
            reason = link.closed() => Some(End::Close(None, reason)),
        }
    }

    /// A second `auth`: a token refresh. The identity must stay the same user.
    async fn refresh(&mut self, token: &str) -> Option<End> {
        let current = self.identity.as_ref().map(|i| i.user_id.clone());
        match self.state.game_auth.verify(token) {
            Ok(identity) if Some(&identity.user_id) == current.as_ref() => {
                let frame = ServerFrame::AuthRefreshed {
                    user_id: &identity.user_id,
                    connection_id: &self.connection_id,
                }
                .encode();
                if let Some((room, _)) = &self.joined {
                    room.refreshed(self.sender(&identity)).await;
                }
                self.identity = Some(identity);
                self.reply(frame).await
            }
            Ok(_) => {
                self.reply(error_frame(
                    ErrorCode::AuthRefreshFailed,
                    "the new token is for another user; the connection keeps its identity",
                ))
                .await
            }
            Err(e) => {
                self.reply(error_frame(
                    ErrorCode::AuthRefreshFailed,
                    &format!("{}; the connection keeps its identity", e.0),
                ))
                .await
            }
        }
    }

    fn sender(&self, identity: &Identity) -> Sender {
        Sender {
            user_id: identity.user_id.clone(),
            connection_id: self.connection_id.clone(),
            role: identity.role.clone(),
            email: identity.email.clone(),
            is_anonymous: identity.is_anonymous,
            custom: identity.custom.clone(),
        }
    }

    async fn join(&mut self, options: Value) -> Option<End> {
        if self.joined.is_some() {
            return self
                .reply(error_frame(ErrorCode::InvalidMessage, "already joined"))
                .await;
        }
        let Some(identity) = self.identity.clone() else {
            return Some(End::error(
                ErrorCode::NotAuthenticated,
                "authenticate first",
                codes::PROTOCOL,
            ));
        };
        let sender = self.sender(&identity);
        let games = self.state.games.clone();
        let max_bytes = self.state.config.outbound_queue_bytes;
        match games.join(&self.key, sender, options, max_bytes).await {
            JoinOutcome::Joined(handle, link) => {
                self.joined = Some((handle, link));
                None
            }
            JoinOutcome::Denied(code, message) => {
                info!(code = code.as_str(), %message, "join refused");
                Some(End::error(code, &message, codes::JOIN_DENIED))
            }
            JoinOutcome::Unavailable(message) => {
                Some(End::error(ErrorCode::RoomUnavailable, &message, 1011))
            }
            JoinOutcome::ShuttingDown => Some(End::Close(None, CloseReason::shutting_down())),
        }
    }
}

/// Resolves once the server's shutdown has begun.
async fn shutdown_begun(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        // The server is gone without a shutdown: nothing to wait for.
        std::future::pending::<()>().await;
    }
}

/// The joined room's next frame for this connection, or its close (pending while not joined).
async fn room_event(joined: &mut Option<(RoomHandle, SessionLink)>) -> LinkEvent {
    match joined {
        Some((_, link)) => link.next().await,
        None => std::future::pending().await,
    }
}
