//! The EdgeBase Rooms endpoint (`GET /api/room?namespace=NS&id=ID`) and its session loop.
//!
//! A connection authenticates in-band (`auth` within the auth timeout), joins, then sends actions.
//! The server never sends WebSocket Pings here (the Rust SDK's reader stops at the first non-text
//! frame): liveness is the app-level `ping`/`pong` and a stale-socket timeout above the SDKs' 30 s
//! ping interval. Protocol-level Pings from clients are answered.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError, Session};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, Instrument};

use super::{close, AppState, RateLimiter};
use crate::auth::Identity;
use crate::game::{JoinOutcome, RoomHandle, Sender};
use crate::ids::{RecordKey, RoomId};
use crate::metrics::Metrics;
use crate::protocol::game::{
    close as codes, error_frame, ClientFrame, DecodeError, ErrorCode, ServerFrame,
};
use crate::rooms::{CloseReason, SessionLink};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RoomQuery {
    namespace: Option<String>,
    id: Option<String>,
}

/// An HTTP error body in the shape the SDKs read (`code`, `message`).
pub(super) fn http_error(
    status: actix_web::http::StatusCode,
    code: &str,
    message: &str,
) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "code": code, "message": message }))
}

/// The room a query names, or the HTTP error that answers it.
/// (The error is boxed: an `HttpResponse` is large and this is the rare path.)
pub(super) fn room_key(
    state: &AppState,
    query: &RoomQuery,
) -> Result<RecordKey, Box<HttpResponse>> {
    use actix_web::http::StatusCode;
    let (Some(namespace), Some(id)) = (query.namespace.as_deref(), query.id.as_deref()) else {
        return Err(Box::new(http_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "the namespace and id query parameters are required",
        )));
    };
    if state.games.namespaces().get(namespace).is_none() {
        return Err(Box::new(http_error(
            StatusCode::NOT_FOUND,
            "NAMESPACE_NOT_FOUND",
            &format!("no room namespace {namespace:?} on this server"),
        )));
    }
    let invalid = |what: &str, e: crate::ids::IdError| {
        http_error(
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

/// Upgrades to a WebSocket. Refused before the upgrade: unknown namespace (404), a full room
/// (403 `ROOM_FULL`), connection caps (503/429), shutdown (503).
pub(super) async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::StatusCode;
    let query = web::Query::<RoomQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let key = match room_key(&state, &query) {
        Ok(key) => key,
        Err(response) => return Ok(*response),
    };
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(http_error(
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
        return Ok(http_error(
            StatusCode::FORBIDDEN,
            "ROOM_FULL",
            "Room at maxPlayers capacity",
        ));
    }
    let peer = req.peer_addr().map(|a| a.ip());
    let permit = match state.limiter.acquire(peer) {
        Ok(permit) => permit,
        Err(e) => {
            Metrics::inc(&state.metrics.connections_refused);
            let status = match e {
                super::LimitError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
                super::LimitError::PeerFull => StatusCode::TOO_MANY_REQUESTS,
            };
            return Ok(http_error(status, "TOO_MANY_CONNECTIONS", &e.to_string()));
        }
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = super::limit_frames(stream, state.config.max_frame_bytes);
    let connection_id = format!("conn_{}", uuid::Uuid::new_v4().simple());
    let span = tracing::info_span!("game_conn", peer = ?peer, room = %key, conn = %connection_id);
    actix_web::rt::spawn(
        async move {
            let _permit = permit;
            Metrics::inc(&state.metrics.connections_total);
            Metrics::inc(&state.metrics.connections_active);
            let conn = GameConnection {
                state: state.clone(),
                session,
                stream,
                key,
                connection_id,
                identity: None,
                joined: None,
            };
            conn.run().await;
            Metrics::dec(&state.metrics.connections_active);
        }
        .instrument(span),
    );
    Ok(response)
}

struct GameConnection {
    state: web::Data<AppState>,
    session: Session,
    stream: AggregatedMessageStream,
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
        let end = match self.authenticate().await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
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
            End::Gone(Some(reason)) => close(self.session, reason).await,
            End::Close(frame, reason) => {
                // What the room queued before it closed us (its final deltas, `kicked`).
                if let Some((_, link)) = &mut self.joined {
                    while let Ok(frame) = link.frames.try_recv() {
                        if self.session.text(frame).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(frame) = frame {
                    let _ = self.session.text(frame).await;
                }
                debug!(code = reason.code, reason = %reason.reason, "closing");
                close(self.session, reason).await;
            }
        }
    }

    /// Waits for the `auth` frame (within the auth timeout).
    async fn authenticate(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + self.state.config.game_auth_timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.recv()).await {
                Err(_) => {
                    info!("no auth within the timeout");
                    return Err(End::error(
                        ErrorCode::AuthTimeout,
                        "Authentication timeout",
                        codes::AUTH_TIMEOUT,
                    ));
                }
                Ok(None) => return Err(End::Gone(None)),
                Ok(Some(Err(e))) => return Err(self.protocol_error(e)),
                Ok(Some(Ok(msg))) => msg,
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
                            if self.session.text(frame).await.is_err() {
                                return Err(End::Gone(None));
                            }
                            Ok(())
                        }
                        Err(e) => {
                            info!(reason = %e, "auth failed");
                            Err(End::error(ErrorCode::AuthFailed, &e.0, codes::AUTH_FAILED))
                        }
                    };
                }
                Ok(ClientFrame::Ping) => {
                    // A ping before auth is harmless; answer it.
                    if self.session.text(ServerFrame::Pong.encode()).await.is_err() {
                        return Err(End::Gone(None));
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
    async fn transport_frame(&mut self, msg: AggregatedMessage) -> Result<Option<ByteString>, End> {
        match msg {
            AggregatedMessage::Text(text) => Ok(Some(text)),
            AggregatedMessage::Ping(bytes) => {
                if self.session.pong(&bytes).await.is_err() {
                    return Err(End::Gone(None));
                }
                Ok(None)
            }
            AggregatedMessage::Pong(_) => Ok(None),
            AggregatedMessage::Close(reason) => {
                let code = reason.map_or(1000, |r| u16::from(r.code));
                Err(End::Gone(Some(CloseReason::new(code, ""))))
            }
            AggregatedMessage::Binary(_) => Err(End::error(
                ErrorCode::InvalidJson,
                "binary frames are not supported; send JSON text frames",
                codes::PROTOCOL,
            )),
        }
    }

    fn protocol_error(&self, error: ProtocolError) -> End {
        let oversized = || {
            Metrics::inc(&self.state.metrics.frames_oversized);
            let limit = self.state.config.max_frame_bytes;
            End::Close(
                None,
                CloseReason::new(1009, format!("message too big: limit is {limit} bytes")),
            )
        };
        match error {
            ProtocolError::Overflow => oversized(),
            ProtocolError::Io(e) if e.to_string().contains("continuation size") => oversized(),
            ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => End::Close(
                None,
                CloseReason::new(1007, "text frame is not valid UTF-8"),
            ),
            e => End::Close(
                None,
                CloseReason::new(1002, format!("websocket protocol error: {e}")),
            ),
        }
    }

    async fn serve(&mut self) -> End {
        let config = self.state.config.clone();
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
        loop {
            tokio::select! {
                event = room_event(&mut self.joined) => match event {
                    RoomEvent::Frame(frame) => {
                        if !matches!(timeout(config.game_stale_timeout, self.session.text(frame)).await, Ok(Ok(()))) {
                            return End::Gone(None);
                        }
                    }
                    RoomEvent::Closed(reason) => return End::Close(None, reason),
                },
                msg = self.stream.recv() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        None => return End::Gone(None),
                        Some(Err(e)) => return self.protocol_error(e),
                        Some(Ok(msg)) => msg,
                    };
                    let text = match self.transport_frame(msg).await {
                        Ok(Some(text)) => text,
                        Ok(None) => continue,
                        Err(end) => return end,
                    };
                    Metrics::inc(&self.state.metrics.frames_received);
                    if !frames.allow(last_heard) {
                        Metrics::inc(&self.state.metrics.rate_limited);
                        if self.session.text(error_frame(ErrorCode::RateLimited, "Too many messages")).await.is_err() {
                            return End::Gone(None);
                        }
                        continue;
                    }
                    if let Some(end) = self.on_text(&text, &mut actions, last_heard).await {
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
        match self.session.text(frame).await {
            Ok(()) => None,
            Err(_) => Some(End::Gone(None)),
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
        let capacity = self.state.config.outbound_queue;
        match games.join(&self.key, sender, options, capacity).await {
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

enum RoomEvent {
    Frame(ByteString),
    Closed(CloseReason),
}

/// The joined room's next frame for this connection, or its close (pending while not joined).
/// Queued frames go first, so a `kicked` frame precedes the close.
async fn room_event(joined: &mut Option<(RoomHandle, SessionLink)>) -> RoomEvent {
    let Some((_, link)) = joined else {
        return std::future::pending().await;
    };
    let closed = |r: Result<CloseReason, _>| {
        RoomEvent::Closed(r.unwrap_or_else(|_| CloseReason::room_closed()))
    };
    tokio::select! {
        biased;
        frame = link.frames.recv() => match frame {
            Some(frame) => RoomEvent::Frame(frame),
            None => closed((&mut link.close).await),
        },
        reason = &mut link.close => closed(reason),
    }
}
