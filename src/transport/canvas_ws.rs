//! The canvas-store WebSocket endpoint (`GET /?roomId=&clientId=&token=`): authorizes and joins
//! at the upgrade, then decodes the session's text frames and hands them to the room, in order,
//! under the shared session loop ([`super::session`]). Frames are decoded on the connection's
//! worker, in parallel with other connections. Until the session has joined its room the socket
//! is not read, so frames sent early (the client's `reconnect`) wait in order.

use std::future::Future;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info, Instrument};

use super::session::{close, End, Heartbeat, Io, OverRate, Protocol};
use super::upgrade::{UpgradeRequest, Upgraded};
use super::TransportConfig;
use crate::auth::{AuthRequest, Denied};
use crate::ids::{ClientId, RoomId, SessionId};
use crate::metrics::Metrics;
use crate::protocols::canvas::wire::{self as canvas, ClientFrame};
use crate::protocols::canvas::RoomHandle;
use crate::rooms::{CloseReason, JoinError, NewSession, Outbox, SessionLink};

/// What a canvas client asks for in its upgrade's query.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ConnectQuery {
    #[serde(rename = "roomId")]
    room_id: Option<String>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    token: Option<String>,
}

/// `GET /` without an upgrade: how to connect instead.
pub(super) async fn not_upgraded() -> HttpResponse {
    HttpResponse::UpgradeRequired().json(json!({
        "error": "this endpoint speaks the canvas-store protocol over WebSocket: connect with ws://HOST/?roomId=ROOM&clientId=CLIENT&token=TOKEN"
    }))
}

/// The query of an upgrade to the canvas endpoint. Every upgrade is accepted: what is wrong with
/// the query is answered with a close frame and a reason, once upgraded.
pub(super) fn accept(request: &UpgradeRequest) -> ConnectQuery {
    web::Query::<ConnectQuery>::from_query(&request.query)
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

/// The session on the upgraded socket: a future that runs until the connection ends.
pub(super) fn run(upgraded: Upgraded, query: ConnectQuery) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!("conn", peer = ?upgraded.peer, room = tracing::field::Empty, session = tracing::field::Empty);
    // Boxed: joining needs more state than serving, and only for a moment.
    let opening = Box::pin(open(upgraded, query));
    async move {
        let Some((canvas, upgraded, link)) = opening.await else {
            return;
        };
        upgraded.session(Some(link), canvas).run().await;
    }
    .instrument(span)
}

/// Validated connect parameters.
fn parse_query(query: &ConnectQuery) -> Result<(RoomId, ClientId), String> {
    let room = query
        .room_id
        .as_deref()
        .ok_or("missing roomId query parameter")?;
    let room = RoomId::parse(room).map_err(|e| format!("invalid roomId: {e}"))?;
    let client = query
        .client_id
        .as_deref()
        .ok_or("missing clientId query parameter")?;
    let client = ClientId::parse(client).map_err(|e| format!("invalid clientId: {e}"))?;
    Ok((room, client))
}

/// A joined canvas session: the protocol's part of its connection.
struct Canvas {
    room: RoomHandle,
    id: SessionId,
    client: ClientId,
    room_id: RoomId,
}

/// Authorizes and joins; a refused connection is closed with its reason.
async fn open(upgraded: Upgraded, query: ConnectQuery) -> Option<(Canvas, Upgraded, SessionLink)> {
    let state = &upgraded.state;
    let (room_id, client) = match parse_query(&query) {
        Ok(ids) => ids,
        Err(reason) => {
            Metrics::inc(&state.metrics.connects_denied);
            info!(%reason, "connect refused");
            close(upgraded.socket, &CloseReason::new(1008, reason), state).await;
            return None;
        }
    };
    tracing::Span::current().record("room", room_id.as_str());
    let request = AuthRequest {
        room: &room_id,
        client: &client,
        token: query.token.as_deref(),
    };
    let grant = match state.authorizer.authorize(request).await {
        Ok(grant) => grant,
        Err(Denied(reason)) => {
            Metrics::inc(&state.metrics.connects_denied);
            info!(%reason, "connect denied");
            let reason = CloseReason::new(1008, format!("unauthorized: {reason}"));
            close(upgraded.socket, &reason, state).await;
            return None;
        }
    };
    let (outbox, link) = Outbox::new(state.config.outbound_queue_bytes);
    let new = NewSession {
        client: client.clone(),
        permission: grant.permission,
        metadata: grant.metadata,
        outbox,
    };
    let (room, id) = match state.canvas.join(&room_id, new).await {
        Ok(joined) => joined,
        Err(e) => {
            let reason = match e {
                JoinError::ShuttingDown => CloseReason::shutting_down(),
                JoinError::StorageUnavailable | JoinError::RoomClosed => {
                    CloseReason::storage_unavailable()
                }
                JoinError::OverLimit(_) => CloseReason::new(1009, e.to_string()),
            };
            close(upgraded.socket, &reason, state).await;
            return None;
        }
    };
    tracing::Span::current().record("session", tracing::field::display(id));
    debug!(%client, "session joined");
    let canvas = Canvas {
        room,
        id,
        client,
        room_id,
    };
    Some((canvas, upgraded, link))
}

impl Protocol for Canvas {
    fn heartbeat(config: &TransportConfig) -> Heartbeat {
        Heartbeat {
            server_pings: Some(config.heartbeat_interval),
            timeout: config.heartbeat_timeout,
            timeout_code: 1001,
            write_timeout: config.heartbeat_timeout,
        }
    }

    async fn on_text(&mut self, io: &mut Io, text: ByteString) -> Option<End> {
        self.frame(io, &text).await
    }

    /// The reference server reads binary frames as UTF-8 text; so do we.
    fn on_binary(&mut self, io: &Io, bytes: Bytes) -> Result<Option<ByteString>, End> {
        match ByteString::try_from(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(_) => {
                Metrics::inc(&io.state.metrics.frames_ignored);
                Ok(None)
            }
        }
    }

    fn over_rate(&self) -> OverRate {
        OverRate::Close(CloseReason::new(1008, "rate limit exceeded"))
    }

    async fn leave(&mut self, _end: &End) {
        self.room.leave(self.id).await;
    }
}

impl Canvas {
    /// Handles one text frame; `Some` ends the connection.
    async fn frame(&mut self, io: &Io, text: &str) -> Option<End> {
        let metrics = &io.state.metrics;
        let frame = match canvas::decode(text, &io.state.config.limits) {
            Ok(frame) => frame,
            Err(e) if e.is_ignored() => {
                Metrics::inc(&metrics.frames_ignored);
                debug!(error = %e, "frame ignored");
                return None;
            }
            Err(e) => {
                Metrics::inc(&metrics.frames_invalid);
                info!(error = %e, "invalid frame");
                return Some(End::Close(None, CloseReason::new(1007, e.to_string())));
            }
        };
        // A room that is gone has sent this session its close reason; the loop picks it up, so
        // a failed hand-over needs no handling here.
        let _gone = match frame {
            // Authorized here, before later frames of this socket reach the room, so they are
            // handled with the new permission.
            ClientFrame::AuthRefresh { token } => {
                let request = AuthRequest {
                    room: &self.room_id,
                    client: &self.client,
                    token: Some(&token),
                };
                match io.state.authorizer.authorize(request).await {
                    Ok(grant) => self.room.reauthorize(self.id, grant).await,
                    Err(Denied(reason)) => {
                        info!(%reason, "token refresh denied");
                        return Some(End::Close(
                            None,
                            CloseReason::new(1008, format!("auth refresh rejected: {reason}")),
                        ));
                    }
                }
            }
            frame => self.room.frame(self.id, frame).await,
        };
        None
    }
}
