//! The canvas-store WebSocket endpoint (`GET /?roomId=&clientId=&token=`) and its session loop.
//!
//! The loop is one `select!` over: the room's close signal, the outbound queue, inbound frames and
//! the heartbeat. Inbound frames are decoded here (on the connection's worker, in parallel with
//! other connections) and handed to the room in order. Until the session has joined its room the
//! socket is not read, so frames sent early (the client's `reconnect`) wait in order.

use std::time::Duration;

use std::net::IpAddr;

use actix_web::{web, HttpResponse};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::limits::{costs_a_token, ConnectionPermit};
use super::upgrade::UpgradeRequest;
use super::websocket::{Message, WebSocket, WsError};
use super::{AppState, LiveConnection, RateLimiter};
use crate::auth::{AuthRequest, Denied};
use crate::ids::{ClientId, RoomId, SessionId};
use crate::metrics::Metrics;
use crate::protocol::canvas::{self, ClientFrame};
use crate::rooms::{
    CloseReason, JoinError, LinkEvent, NewSession, Outbox, RoomHandle, SessionLink,
};

#[derive(Debug, Default, Deserialize)]
struct ConnectQuery {
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

/// An upgrade to the canvas endpoint, with its place under the connection caps (taken at
/// accept, see `accept`). Everything else is answered with a close frame and a reason.
pub(super) struct Accepted {
    permit: ConnectionPermit,
    query: ConnectQuery,
    peer: Option<IpAddr>,
}

pub(super) fn accept(request: &UpgradeRequest, permit: ConnectionPermit) -> Accepted {
    let query = web::Query::<ConnectQuery>::from_query(&request.query)
        .map(web::Query::into_inner)
        .unwrap_or_default();
    Accepted {
        permit,
        query,
        peer: request.peer,
    }
}

impl Accepted {
    /// The session on the upgraded socket: a future that runs until the connection ends.
    pub(super) fn run(
        self,
        state: web::Data<AppState>,
        socket: WebSocket,
    ) -> impl std::future::Future<Output = ()> + Send {
        let span = tracing::info_span!("conn", peer = ?self.peer, room = tracing::field::Empty, session = tracing::field::Empty);
        let live = LiveConnection::new(state.metrics.clone(), self.permit);
        // Boxed: joining needs more state than serving, and only for a moment.
        let opening = Box::pin(Connection::open(state, self.query, socket));
        async move {
            let _live = live;
            if let Some((mut conn, mut link)) = opening.await {
                let end = conn.serve(&mut link).await;
                Box::pin(conn.finish(end, link)).await;
            }
        }
        .instrument(span)
    }
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

/// A joined session. Its future lives as long as the connection, so only the serving loop is
/// awaited inline; the rarer, larger steps (joining, handling a frame, closing) are boxed, or
/// every idle connection would carry their state.
struct Connection {
    state: web::Data<AppState>,
    socket: WebSocket,
    room: RoomHandle,
    id: SessionId,
    client: ClientId,
    room_id: RoomId,
}

/// How a connection ends.
enum End {
    /// The peer vanished: nothing more to send.
    Gone,
    /// The peer closed: answer its close frame.
    Answer(CloseReason),
    /// We close, with this code and reason, after sending what is still queued.
    Close(CloseReason),
}

impl Connection {
    /// Authorizes and joins; a refused connection is closed with its reason.
    async fn open(
        state: web::Data<AppState>,
        query: ConnectQuery,
        socket: WebSocket,
    ) -> Option<(Connection, SessionLink)> {
        let (room_id, client) = match parse_query(&query) {
            Ok(ids) => ids,
            Err(reason) => {
                Metrics::inc(&state.metrics.connects_denied);
                info!(%reason, "connect refused");
                socket.close(&CloseReason::new(1008, reason)).await;
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
                socket
                    .close(&CloseReason::new(1008, format!("unauthorized: {reason}")))
                    .await;
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
        let (room, id) = match state.manager.join(&room_id, new).await {
            Ok(joined) => joined,
            Err(e) => {
                let reason = match e {
                    JoinError::ShuttingDown => CloseReason::shutting_down(),
                    JoinError::StorageUnavailable | JoinError::RoomClosed => {
                        CloseReason::storage_unavailable()
                    }
                    JoinError::OverLimit(_) => CloseReason::new(1009, e.to_string()),
                };
                socket.close(&reason).await;
                return None;
            }
        };
        tracing::Span::current().record("session", tracing::field::display(id));
        debug!(%client, "session joined");
        let conn = Connection {
            state,
            socket,
            room,
            id,
            client,
            room_id,
        };
        Some((conn, link))
    }

    /// Leaves the room and closes the socket as `end` says.
    async fn finish(mut self, end: End, mut link: SessionLink) {
        self.room.leave(self.id).await;
        match end {
            End::Gone => {}
            End::Answer(reason) => self.socket.close(&reason).await,
            End::Close(reason) => {
                // Deliver what the room queued before the session left (acks of applied writes;
                // a client closed for being too slow has nothing left queued).
                self.drain(&mut link).await;
                debug!(code = reason.code, reason = %reason.reason, "closing");
                self.socket.close(&reason).await;
            }
        }
    }

    async fn serve(&mut self, link: &mut SessionLink) -> End {
        let state = self.state.clone();
        let config = &state.config;
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        let mut rate =
            RateLimiter::new(config.messages_per_second, config.message_burst, last_heard);
        loop {
            tokio::select! {
                event = link.next() => match event {
                    LinkEvent::Frame(frame) => {
                        self.queue_batch(frame, link);
                        // A socket that stopped reading must not hold a closed session open.
                        tokio::select! {
                            flushed = self.socket.flush_within(config.heartbeat_timeout) => {
                                if !flushed {
                                    return End::Gone;
                                }
                            }
                            reason = link.closed() => return End::Close(reason),
                        }
                    }
                    LinkEvent::Closed(reason) => return End::Close(reason),
                },
                msg = self.socket.recv() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => return self.read_error(e),
                    };
                    if costs_a_token(&msg) && !rate.allow(last_heard) {
                        Metrics::inc(&self.state.metrics.rate_limited);
                        warn!("rate limit exceeded");
                        return End::Close(CloseReason::new(1008, "rate limit exceeded"));
                    }
                    let text = match msg {
                        // Answer the closing handshake, echoing the client's code.
                        Message::Close(code) => return End::Answer(CloseReason::new(code, "")),
                        Message::Ping(bytes) => {
                            self.socket.queue_pong(&bytes);
                            if !self.socket.flush_within(config.heartbeat_timeout).await {
                                return End::Gone;
                            }
                            continue;
                        }
                        Message::Pong => continue,
                        Message::Text(text) => text,
                        // The reference server reads binary frames as UTF-8 text; so do we.
                        Message::Binary(bytes) => match ByteString::try_from(bytes) {
                            Ok(text) => text,
                            Err(_) => {
                                Metrics::inc(&self.state.metrics.frames_ignored);
                                continue;
                            }
                        },
                    };
                    if let Some(end) = Box::pin(self.on_text(&text)).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > config.heartbeat_timeout {
                        Metrics::inc(&self.state.metrics.heartbeat_timeouts);
                        info!("heartbeat timeout");
                        return End::Close(CloseReason::new(1001, "heartbeat timeout"));
                    }
                    self.socket.queue_ping();
                    if !self.socket.flush_within(config.heartbeat_timeout).await {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// How a connection whose socket failed ends.
    fn read_error(&self, error: WsError) -> End {
        if matches!(error, WsError::TooBig(_)) {
            Metrics::inc(&self.state.metrics.frames_oversized);
        }
        match error.close_reason() {
            Some(reason) => End::Close(reason),
            None => End::Gone,
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(&mut self, text: &str) -> Option<End> {
        let metrics = &self.state.metrics;
        Metrics::inc(&metrics.frames_received);
        let frame = match canvas::decode(text, &self.state.config.limits) {
            Ok(frame) => frame,
            Err(e) if e.is_ignored() => {
                Metrics::inc(&metrics.frames_ignored);
                debug!(error = %e, "frame ignored");
                return None;
            }
            Err(e) => {
                Metrics::inc(&metrics.frames_invalid);
                info!(error = %e, "invalid frame");
                return Some(End::Close(CloseReason::new(1007, e.to_string())));
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
                match self.state.authorizer.authorize(request).await {
                    Ok(grant) => self.room.reauthorize(self.id, grant).await,
                    Err(Denied(reason)) => {
                        info!(%reason, "token refresh denied");
                        return Some(End::Close(CloseReason::new(
                            1008,
                            format!("auth refresh rejected: {reason}"),
                        )));
                    }
                }
            }
            frame => self.room.frame(self.id, frame).await,
        };
        None
    }

    /// Sends `frame` and whatever else is queued for this session by now (one write), giving
    /// up on a connection that does not drain within `limit`.
    async fn send(&mut self, frame: ByteString, link: &mut SessionLink, limit: Duration) -> bool {
        self.queue_batch(frame, link);
        self.socket.flush_within(limit).await
    }

    /// Queues `frame` and whatever else is queued for this session by now, for one write.
    fn queue_batch(&mut self, frame: ByteString, link: &mut SessionLink) {
        self.socket.queue_text(&frame);
        while self.socket.queued() < super::WRITE_BATCH_BYTES {
            match link.try_frame() {
                Some(frame) => self.socket.queue_text(&frame),
                None => break,
            }
        }
    }

    /// Sends the frames still queued for this session until the room has let it go (it drops
    /// the outbox), within one heartbeat timeout.
    async fn drain(&mut self, link: &mut SessionLink) {
        let limit = self.state.config.heartbeat_timeout;
        let deadline = Instant::now() + limit;
        while let Ok(LinkEvent::Frame(frame)) = tokio::time::timeout_at(deadline, link.next()).await
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.send(frame, link, left).await {
                return;
            }
        }
    }
}
