//! The EdgeBase Rooms endpoint (`GET /api/room?namespace=NS&id=ID`): its frames under the shared
//! session loop ([`super::session`]).
//!
//! A connection authenticates in-band (`auth` within the auth timeout), joins, then sends actions.
//! The server never sends WebSocket Pings here (the Rust SDK's reader stops at the first non-text
//! frame): liveness is the app-level `ping`/`pong` and a stale-socket timeout above the SDKs' 30 s
//! ping interval. Protocol-level Pings from clients are answered.

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, Instrument};

use super::session::{End, Heartbeat, Io, OverRate, Protocol};
use super::upgrade::{UpgradeRequest, Upgraded};
use super::{AppState, HttpError, RateLimiter, TransportConfig};
use crate::auth::Identity;
use crate::ids::{RecordKey, RoomId};
use crate::metrics::Metrics;
use crate::protocols::game::wire::{
    close as codes, error_frame, ClientFrame, DecodeError, ErrorCode, ServerFrame,
};
use crate::protocols::game::{JoinOutcome, RoomHandle, Sender};
use crate::rooms::CloseReason;

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

/// Checks an upgrade: the room it names. Refused before the upgrade: unknown namespace (404), a
/// full room (403 `ROOM_FULL`), shutdown (503).
pub(super) fn accept(state: &AppState, request: &UpgradeRequest) -> Result<RecordKey, HttpError> {
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
    Ok(key)
}

/// The game connection on the upgraded socket, until it ends: `auth` within the deadline, then
/// `join`, then actions.
pub(super) fn run(upgraded: Upgraded, key: RecordKey) -> impl Future<Output = ()> + Send {
    let connection_id = format!("conn_{}", uuid::Uuid::new_v4().simple());
    let span =
        tracing::info_span!("game_conn", peer = ?upgraded.peer, room = %key, conn = %connection_id);
    let state = &upgraded.state;
    let actions_per_second = state
        .games
        .namespaces()
        .get(key.namespace.as_str())
        .map_or(10, |ns| ns.options.actions_per_second);
    let game = Game {
        key,
        connection_id,
        auth_deadline: Instant::now() + state.config.game_auth_timeout,
        identity: None,
        actions_per_second,
        actions: None,
        room: None,
    };
    upgraded.session(None, game).run().instrument(span)
}

/// A game connection: the protocol's part of it.
struct Game {
    key: RecordKey,
    connection_id: String,
    /// The `auth` frame must arrive by then.
    auth_deadline: Instant,
    identity: Option<Identity>,
    actions_per_second: u32,
    /// The action rate (after auth): capacity = refill = actions per second, starting full.
    actions: Option<RateLimiter>,
    /// The joined room (its frames come through the session's link).
    room: Option<RoomHandle>,
}

/// What a frame after auth asks for (see [`Game::react`]).
enum Reaction {
    /// Answer on the socket, outside the room's queue.
    Reply(ByteString),
    End(End),
    /// A second `auth`.
    Refresh(String),
    Join(Value),
    /// The client leaves the joined room.
    Leave,
    /// A `send` for the joined room to run.
    Action {
        request_id: String,
        action_type: String,
        payload: Value,
    },
}

fn error_end(code: ErrorCode, message: &str, close: u16) -> End {
    End::Close(
        Some(error_frame(code, message)),
        CloseReason::new(close, message),
    )
}

fn auth_timeout() -> End {
    info!("no auth within the timeout");
    error_end(
        ErrorCode::AuthTimeout,
        "Authentication timeout",
        codes::AUTH_TIMEOUT,
    )
}

impl Protocol for Game {
    /// The server never sends WebSocket Pings here (see the module docs).
    fn heartbeat(config: &TransportConfig) -> Heartbeat {
        Heartbeat {
            server_pings: None,
            timeout: config.game_stale_timeout,
            timeout_code: codes::HEARTBEAT_TIMEOUT,
            write_timeout: config.game_stale_timeout,
        }
    }

    async fn on_text(&mut self, io: &mut Io, text: ByteString) -> Option<End> {
        if self.identity.is_none() {
            Box::pin(self.authenticate(io, &text)).await
        } else {
            self.frame(io, &text).await
        }
    }

    fn on_binary(&mut self, _io: &Io, _bytes: Bytes) -> Result<Option<ByteString>, End> {
        Err(error_end(
            ErrorCode::InvalidJson,
            "binary frames are not supported; send JSON text frames",
            codes::PROTOCOL,
        ))
    }

    /// Over the rate the frame is dropped (a ping is not answered) and `error RATE_LIMITED` is
    /// sent, the socket kept, as the protocol says.
    fn over_rate(&self) -> OverRate {
        OverRate::Refuse(error_frame(ErrorCode::RateLimited, "Too many messages"))
    }

    fn deadline(&self) -> Option<(Instant, fn() -> End)> {
        self.identity
            .is_none()
            .then_some((self.auth_deadline, auth_timeout as fn() -> End))
    }

    async fn leave(&mut self, end: &End) {
        let Some(room) = &self.room else {
            return;
        };
        let connection_id = self.connection_id.clone();
        match end {
            // The room already let this connection go.
            End::Close(_, r) if r.code == codes::LEFT || r.code == codes::KICKED => {}
            // A client closing with 4005 ("client left") left, with or without `leave`.
            End::Gone(Some(r)) if r.code == codes::LEFT => room.leave(connection_id).await,
            _ => room.disconnected(connection_id).await,
        }
    }
}

impl Game {
    /// The first text frame must be `auth`.
    async fn authenticate(&mut self, io: &mut Io, text: &str) -> Option<End> {
        match ClientFrame::decode(text) {
            Ok(ClientFrame::Auth { token }) => match io.state.game_auth.verify(&token) {
                Ok(identity) => {
                    let frame = ServerFrame::AuthSuccess {
                        user_id: &identity.user_id,
                        connection_id: &self.connection_id,
                    }
                    .encode();
                    self.identity = Some(identity);
                    let rate = f64::from(self.actions_per_second);
                    self.actions = Some(RateLimiter::new(
                        rate,
                        self.actions_per_second,
                        Instant::now(),
                    ));
                    io.reply(frame).await
                }
                Err(e) => {
                    info!(reason = %e, "auth failed");
                    Some(error_end(ErrorCode::AuthFailed, &e.0, codes::AUTH_FAILED))
                }
            },
            // A ping before auth is harmless; answer it.
            Ok(ClientFrame::Ping) => io.reply(ServerFrame::Pong.encode()).await,
            Err(DecodeError::InvalidJson(e)) => Some(error_end(
                ErrorCode::InvalidJson,
                &format!("Invalid JSON: {e}"),
                codes::PROTOCOL,
            )),
            // An `auth` without a string token is a failed authentication, not a frame before
            // auth (the protocol's AUTH_FAILED, 4002).
            Err(e @ DecodeError::Invalid { kind: "auth", .. }) => {
                info!(reason = %e, "auth failed");
                Some(error_end(
                    ErrorCode::AuthFailed,
                    &e.to_string(),
                    codes::AUTH_FAILED,
                ))
            }
            Ok(_) | Err(_) => Some(error_end(
                ErrorCode::NotAuthenticated,
                "authenticate first: the first message must be {\"type\":\"auth\",\"token\":...}",
                codes::PROTOCOL,
            )),
        }
    }

    /// Handles one text frame after auth; `Some` ends the connection. What to do is decided
    /// without waiting ([`Game::react`]); only the step that follows awaits. The session boxes
    /// this future for every frame, so it stays small: the rare steps are boxed on their own (a
    /// box of a kilobyte or more per action costs glibc a consolidation of its free lists).
    async fn frame(&mut self, io: &mut Io, text: &str) -> Option<End> {
        match self.react(io, text) {
            Reaction::Reply(frame) => io.reply(frame).await,
            Reaction::End(end) => Some(end),
            Reaction::Refresh(token) => Box::pin(self.refresh(io, &token)).await,
            Reaction::Join(options) => Box::pin(self.join(io, options)).await,
            Reaction::Leave => {
                if let Some(room) = &self.room {
                    Box::pin(room.leave(self.connection_id.clone())).await;
                }
                None
            }
            Reaction::Action {
                request_id,
                action_type,
                payload,
            } => {
                if let Some(room) = &self.room {
                    let connection_id = self.connection_id.clone();
                    room.action(connection_id, request_id, action_type, payload)
                        .await;
                }
                None
            }
        }
    }

    /// Decodes one text frame after auth and decides what it asks for.
    fn react(&mut self, io: &Io, text: &str) -> Reaction {
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(DecodeError::InvalidJson(e)) => {
                Metrics::inc(&io.state.metrics.frames_invalid);
                return Reaction::End(error_end(
                    ErrorCode::InvalidJson,
                    &format!("Invalid JSON: {e}"),
                    codes::PROTOCOL,
                ));
            }
            Err(e @ DecodeError::UnknownType(_)) => {
                Metrics::inc(&io.state.metrics.frames_ignored);
                return Reaction::Reply(error_frame(ErrorCode::UnknownType, &e.to_string()));
            }
            Err(e @ DecodeError::Invalid { .. }) => {
                Metrics::inc(&io.state.metrics.frames_invalid);
                return Reaction::Reply(error_frame(ErrorCode::InvalidMessage, &e.to_string()));
            }
        };
        match frame {
            ClientFrame::Ping => Reaction::Reply(ServerFrame::Pong.encode()),
            ClientFrame::Auth { token } => Reaction::Refresh(token),
            ClientFrame::Join { options } => Reaction::Join(options),
            ClientFrame::Leave => match &self.room {
                Some(_) => Reaction::Leave,
                None => Reaction::End(End::Close(None, CloseReason::new(codes::LEFT, "left"))),
            },
            ClientFrame::Send {
                action_type,
                payload,
                request_id,
            } => {
                let refuse = |code: ErrorCode, message: &str| {
                    Reaction::Reply(
                        ServerFrame::ActionError {
                            request_id: &request_id,
                            action_type: action_type.as_deref().unwrap_or(""),
                            code: code.as_str(),
                            message,
                        }
                        .encode(),
                    )
                };
                if self.room.is_none() {
                    return refuse(ErrorCode::NotJoined, "join the room before sending actions");
                }
                if action_type.is_none() {
                    return refuse(
                        ErrorCode::InvalidAction,
                        "send needs a non-empty actionType",
                    );
                }
                let allowed = self
                    .actions
                    .as_mut()
                    .is_some_and(|actions| actions.allow(Instant::now()));
                if !allowed {
                    Metrics::inc(&io.state.metrics.rate_limited);
                    return refuse(
                        ErrorCode::RateLimited,
                        "Too many actions: rate limit exceeded",
                    );
                }
                Reaction::Action {
                    request_id,
                    action_type: action_type.unwrap_or_default(),
                    payload,
                }
            }
        }
    }

    /// A second `auth`: a token refresh. The identity must stay the same user.
    async fn refresh(&mut self, io: &mut Io, token: &str) -> Option<End> {
        let current = self.identity.as_ref().map(|i| i.user_id.clone());
        match io.state.game_auth.verify(token) {
            Ok(identity) if Some(&identity.user_id) == current.as_ref() => {
                let frame = ServerFrame::AuthRefreshed {
                    user_id: &identity.user_id,
                    connection_id: &self.connection_id,
                }
                .encode();
                if let Some(room) = &self.room {
                    room.refreshed(self.sender(&identity)).await;
                }
                self.identity = Some(identity);
                io.reply(frame).await
            }
            Ok(_) => {
                io.reply(error_frame(
                    ErrorCode::AuthRefreshFailed,
                    "the new token is for another user; the connection keeps its identity",
                ))
                .await
            }
            Err(e) => {
                io.reply(error_frame(
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

    async fn join(&mut self, io: &mut Io, options: Value) -> Option<End> {
        if self.room.is_some() {
            return io
                .reply(error_frame(ErrorCode::InvalidMessage, "already joined"))
                .await;
        }
        let Some(identity) = self.identity.clone() else {
            return Some(error_end(
                ErrorCode::NotAuthenticated,
                "authenticate first",
                codes::PROTOCOL,
            ));
        };
        let sender = self.sender(&identity);
        let games = io.state.games.clone();
        let max_bytes = io.state.config.outbound_queue_bytes;
        match games.join(&self.key, sender, options, max_bytes).await {
            JoinOutcome::Joined(handle, link) => {
                self.room = Some(handle);
                io.link = Some(link);
                None
            }
            JoinOutcome::Denied(code, message) => {
                info!(code = code.as_str(), %message, "join refused");
                Some(error_end(code, &message, codes::JOIN_DENIED))
            }
            JoinOutcome::Unavailable(message) => {
                Some(error_end(ErrorCode::RoomUnavailable, &message, 1011))
            }
            JoinOutcome::ShuttingDown => Some(End::Close(None, CloseReason::shutting_down())),
        }
    }
}
