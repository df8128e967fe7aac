//! The canvas-store WebSocket endpoint (`GET /?roomId=&clientId=&token=`) and its session loop.
//!
//! The loop is one `select!` over: the room's close signal, the outbound queue, inbound frames and
//! the heartbeat. Inbound frames are decoded here (on the connection's worker, in parallel with
//! other connections) and handed to the room in order. Until the session has joined its room the
//! socket is not read, so frames sent early (the client's `reconnect`) wait in order.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError, Session};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn, Instrument};

use super::{close, AppState, RateLimiter};
use crate::auth::{AuthRequest, Denied};
use crate::ids::{ClientId, RoomId, SessionId};
use crate::metrics::Metrics;
use crate::protocol::canvas::{self, ClientFrame};
use crate::rooms::{CloseReason, JoinError, NewSession, Outbox, RoomHandle, SessionLink};

#[derive(Debug, Default, Deserialize)]
struct ConnectQuery {
    #[serde(rename = "roomId")]
    room_id: Option<String>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    token: Option<String>,
}

/// Upgrades to a WebSocket and starts the session loop. Connection caps are checked before the
/// upgrade (HTTP 503/429); everything else is answered with a close frame and a reason.
pub(super) async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let is_upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Ok(HttpResponse::UpgradeRequired().json(json!({
            "error": "this endpoint speaks the canvas-store protocol over WebSocket: connect with ws://HOST/?roomId=ROOM&clientId=CLIENT&token=TOKEN"
        })));
    }
    let peer = req.peer_addr().map(|a| a.ip());
    let permit = match state.limiter.acquire(peer) {
        Ok(permit) => permit,
        Err(e) => {
            Metrics::inc(&state.metrics.connections_refused);
            warn!(peer = ?peer, error = %e, "connection refused");
            let body = json!({ "error": e.to_string() });
            return Ok(match e {
                super::LimitError::ServerFull => HttpResponse::ServiceUnavailable().json(body),
                super::LimitError::PeerFull => HttpResponse::TooManyRequests().json(body),
            });
        }
    };
    let query = web::Query::<ConnectQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = super::limit_frames(stream, state.config.max_frame_bytes);
    let span = tracing::info_span!("conn", peer = ?peer, room = tracing::field::Empty, session = tracing::field::Empty);
    actix_web::rt::spawn(
        async move {
            let _permit = permit;
            Metrics::inc(&state.metrics.connections_total);
            Metrics::inc(&state.metrics.connections_active);
            Connection::open(state.clone(), query, session, stream).await;
            Metrics::dec(&state.metrics.connections_active);
        }
        .instrument(span),
    );
    Ok(response)
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

struct Connection {
    state: web::Data<AppState>,
    session: Session,
    stream: AggregatedMessageStream,
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
    async fn open(
        state: web::Data<AppState>,
        query: ConnectQuery,
        session: Session,
        stream: AggregatedMessageStream,
    ) {
        let (room_id, client) = match parse_query(&query) {
            Ok(ids) => ids,
            Err(reason) => {
                Metrics::inc(&state.metrics.connects_denied);
                info!(%reason, "connect refused");
                return close(session, CloseReason::new(1008, reason)).await;
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
                return close(
                    session,
                    CloseReason::new(1008, format!("unauthorized: {reason}")),
                )
                .await;
            }
        };
        let (outbox, mut link) = Outbox::new(state.config.outbound_queue);
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
                };
                return close(session, reason).await;
            }
        };
        tracing::Span::current().record("session", tracing::field::display(id));
        debug!(%client, "session joined");
        let mut conn = Connection {
            state,
            session,
            stream,
            room,
            id,
            client,
            room_id,
        };
        let end = conn.serve(&mut link).await;
        conn.room.leave(conn.id).await;
        match end {
            End::Gone => {}
            End::Answer(reason) => close(conn.session, reason).await,
            End::Close(reason) => {
                // Deliver what the room queued before the session left (acks of applied writes),
                // except to a client closed for being too slow to take them.
                if reason != CloseReason::slow_client() {
                    conn.drain(&mut link).await;
                }
                debug!(code = reason.code, reason = %reason.reason, "closing");
                close(conn.session, reason).await;
            }
        }
    }

    async fn serve(&mut self, link: &mut SessionLink) -> End {
        let config = self.state.config.clone();
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        let mut rate =
            RateLimiter::new(config.messages_per_second, config.message_burst, last_heard);
        loop {
            tokio::select! {
                reason = &mut link.close => {
                    return End::Close(reason.unwrap_or_else(|_| CloseReason::room_closed()));
                }
                frame = link.frames.recv() => match frame {
                    Some(frame) => {
                        if !self.send(frame, config.heartbeat_timeout).await {
                            return End::Gone;
                        }
                    }
                    // The room dropped this session; its close reason is on the way.
                    None => {
                        let reason = (&mut link.close).await;
                        return End::Close(reason.unwrap_or_else(|_| CloseReason::room_closed()));
                    }
                },
                msg = self.stream.recv() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        None => return End::Gone,
                        Some(Err(e)) => return End::Close(self.protocol_error(e)),
                        Some(Ok(msg)) => msg,
                    };
                    // Every frame the server must act on costs a token, pings included (each
                    // is answered); pongs and the closing handshake do not.
                    let costs = !matches!(msg, AggregatedMessage::Pong(_) | AggregatedMessage::Close(_));
                    if costs && !rate.allow(last_heard) {
                        Metrics::inc(&self.state.metrics.rate_limited);
                        warn!("rate limit exceeded");
                        return End::Close(CloseReason::new(1008, "rate limit exceeded"));
                    }
                    let text = match msg {
                        AggregatedMessage::Close(reason) => {
                            // Answer the closing handshake, echoing the client's code.
                            let code = reason.map_or(1000, |r| u16::from(r.code));
                            return End::Answer(CloseReason::new(code, ""));
                        }
                        AggregatedMessage::Ping(bytes) => {
                            let _ = self.session.pong(&bytes).await;
                            continue;
                        }
                        AggregatedMessage::Pong(_) => continue,
                        AggregatedMessage::Text(text) => text,
                        // The reference server reads binary frames as UTF-8 text; so do we.
                        AggregatedMessage::Binary(bytes) => match ByteString::try_from(bytes) {
                            Ok(text) => text,
                            Err(_) => {
                                Metrics::inc(&self.state.metrics.frames_ignored);
                                continue;
                            }
                        },
                    };
                    if let Some(end) = self.on_text(&text).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > config.heartbeat_timeout {
                        Metrics::inc(&self.state.metrics.heartbeat_timeouts);
                        info!("heartbeat timeout");
                        return End::Close(CloseReason::new(1001, "heartbeat timeout"));
                    }
                    if self.session.ping(b"").await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// The close that answers a broken WebSocket frame.
    fn protocol_error(&self, error: ProtocolError) -> CloseReason {
        let oversized = || {
            Metrics::inc(&self.state.metrics.frames_oversized);
            let limit = self.state.config.max_frame_bytes;
            CloseReason::new(1009, format!("message too big: limit is {limit} bytes"))
        };
        match error {
            ProtocolError::Overflow => oversized(),
            // actix-ws reports joined continuations over the limit as an IO error.
            ProtocolError::Io(e) if e.to_string().contains("continuation size") => oversized(),
            ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                CloseReason::new(1007, "text frame is not valid UTF-8")
            }
            e => CloseReason::new(1002, format!("websocket protocol error: {e}")),
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

    /// Sends one frame, giving up on a connection that does not drain within `limit`.
    async fn send(&mut self, frame: ByteString, limit: Duration) -> bool {
        matches!(timeout(limit, self.session.text(frame)).await, Ok(Ok(())))
    }

    /// Sends the frames still queued for this session until the room has let it go (it drops
    /// the outbox), within one heartbeat timeout.
    async fn drain(&mut self, link: &mut SessionLink) {
        let limit = self.state.config.heartbeat_timeout;
        let deadline = Instant::now() + limit;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, link.frames.recv()).await {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.send(frame, left).await {
                return;
            }
        }
    }
}
