//! The one session loop of both WebSocket endpoints (canvas-store on `/`, EdgeBase Rooms on
//! `/api/room`).
//!
//! The loop is one `select!` over: the room's frames for this session (or its close), inbound
//! frames, the heartbeat, a deadline of the protocol's own (the game's auth) and, before a session
//! has joined a room, the server's shutdown. Everything a connection must have whatever its
//! protocol lives here: the message rate, WebSocket pings and pongs, the close handshake, the
//! stale-socket timeout, write deadlines, batching queued frames into one write, and delivering
//! what the room still queued (acks of applied writes) before the close frame. A [`Protocol`]
//! only decodes its text frames and acts on them.
//!
//! Memory per connection (see BENCHMARKS.md): the future of an idle connection is this loop and
//! its state, so the larger, rarer steps (a protocol's frame handling, closing) are boxed and
//! exist only while they run.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web;
use bytes::Bytes;
use bytestring::ByteString;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::limits::costs_a_token;
use super::websocket::{Message, WebSocket, WsError};
use super::{AppState, LiveConnection, RateLimiter, TransportConfig, WRITE_BATCH_BYTES};
use crate::metrics::Metrics;
use crate::rooms::{CloseReason, LinkEvent, SessionLink};

/// How a connection ends.
pub(super) enum End {
    /// The peer vanished (`None`: nothing more to send) or closed (answer its close frame with
    /// this reason).
    Gone(Option<CloseReason>),
    /// We close: what the room still queued, then optionally a last frame of the protocol's
    /// (an `error`), then the close frame.
    Close(Option<ByteString>, CloseReason),
}

/// What a frame over the connection's message rate gets.
pub(super) enum OverRate {
    /// The connection is closed.
    Close(CloseReason),
    /// The frame is dropped and this answer sent; the connection stays.
    Refuse(ByteString),
}

/// How an endpoint keeps its connections alive.
pub(super) struct Heartbeat {
    /// `Some`: the server sends WebSocket pings at this interval. `None`: the client pings (at
    /// the application level) and the server only checks for silence, once a second.
    pub server_pings: Option<Duration>,
    /// A connection silent for this long is closed with `timeout_code`.
    pub timeout: Duration,
    pub timeout_code: u16,
    /// The longest a write to the socket may take before the peer counts as gone.
    pub write_timeout: Duration,
}

/// One protocol's part of a session: its text frames.
pub(super) trait Protocol: Send {
    /// How this endpoint keeps its connections alive (derived from the settings when needed,
    /// rather than stored in every connection).
    fn heartbeat(config: &TransportConfig) -> Heartbeat;

    /// Handles one text frame; `Some` ends the connection.
    fn on_text(
        &mut self,
        io: &mut Io,
        text: ByteString,
    ) -> impl Future<Output = Option<End>> + Send;

    /// A binary frame: the text it stands for, `Ok(None)` to ignore it, or the end.
    fn on_binary(&mut self, io: &Io, bytes: Bytes) -> Result<Option<ByteString>, End>;

    /// What a frame over the message rate gets.
    fn over_rate(&self) -> OverRate;

    /// A deadline of the protocol's own (the game's auth timeout), and how the connection ends
    /// when it passes.
    fn deadline(&self) -> Option<(Instant, fn() -> End)> {
        None
    }

    /// Tells the room that the connection ends, before the socket is closed.
    fn leave(&mut self, end: &End) -> impl Future<Output = ()> + Send;
}

/// The socket and the room link of a session, as a [`Protocol`] uses them.
pub(super) struct Io {
    pub state: web::Data<AppState>,
    pub socket: WebSocket,
    /// The room's queue for this session, once it has joined one.
    pub link: Option<SessionLink>,
    write_timeout: Duration,
}

impl Io {
    /// Sends `frame` now (outside the room's queue); `Some` ends a connection that does not
    /// take it within the write deadline.
    pub async fn reply(&mut self, frame: ByteString) -> Option<End> {
        match self.socket.send_text(&frame, self.write_timeout).await {
            true => None,
            false => Some(End::Gone(None)),
        }
    }

    /// Sends a frame of the room and whatever else it queued for this session by now (one
    /// write). Ends the connection when the socket does not take the bytes within the write
    /// deadline, or when the room closes the session meanwhile (a socket that stopped reading
    /// must not hold a closed session open).
    async fn deliver(&mut self, frame: ByteString) -> Option<End> {
        self.socket.queue_text(&frame);
        let limit = self.write_timeout;
        let Some(link) = &mut self.link else {
            return (!self.socket.flush_within(limit).await).then_some(End::Gone(None));
        };
        while self.socket.queued() < WRITE_BATCH_BYTES {
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

    /// Sends the frames still queued for this session until the room has let it go (it drops
    /// or closes the queue), within one write deadline. Returns whether the socket took them.
    async fn drain(&mut self) -> bool {
        let Some(link) = &mut self.link else {
            return true;
        };
        let deadline = Instant::now() + self.write_timeout;
        while let Ok(LinkEvent::Frame(frame)) = tokio::time::timeout_at(deadline, link.next()).await
        {
            self.socket.queue_text(&frame);
            while self.socket.queued() < WRITE_BATCH_BYTES {
                match link.try_frame() {
                    Some(frame) => self.socket.queue_text(&frame),
                    None => break,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.socket.flush_within(left).await {
                return false;
            }
        }
        true
    }
}

/// A connection being served: its socket, its protocol, and its place under the caps.
pub(super) struct Session<P> {
    io: Io,
    protocol: P,
    _live: LiveConnection,
}

impl<P: Protocol> Session<P> {
    pub fn new(
        state: web::Data<AppState>,
        socket: WebSocket,
        link: Option<SessionLink>,
        protocol: P,
        live: LiveConnection,
    ) -> Session<P> {
        let write_timeout = P::heartbeat(&state.config).write_timeout;
        Session {
            io: Io {
                state,
                socket,
                link,
                write_timeout,
            },
            protocol,
            _live: live,
        }
    }

    /// Serves the connection until it ends, then lets the room know and closes the socket.
    pub async fn run(mut self) {
        let end = self.serve().await;
        Box::pin(self.finish(end)).await;
    }

    async fn serve(&mut self) -> End {
        let state = self.io.state.clone();
        let config = &state.config;
        let check_every = P::heartbeat(config)
            .server_pings
            .unwrap_or(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval(check_every);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        // One message rate for the connection's whole life, before and after joining.
        let mut rate =
            RateLimiter::new(config.messages_per_second, config.message_burst, last_heard);
        // Until the session has joined a room: the protocol's deadline and the server's
        // shutdown (a joined session is closed by its room). Boxed, and only while it matters,
        // so that a joined connection's future does not carry it.
        let mut unjoined: Option<Unjoined> = None;
        loop {
            let deadline = self.protocol.deadline();
            let watching = unjoined.as_ref().map(|u| u.deadline);
            if self.io.link.is_some() {
                unjoined = None;
            } else if watching != Some(deadline.map(|(at, _)| at)) {
                unjoined = Some(Unjoined::new(&state, deadline));
            }
            tokio::select! {
                event = room_event(&mut self.io.link, &mut unjoined) => match event {
                    Err(end) => return end,
                    Ok(LinkEvent::Frame(frame)) => {
                        if let Some(end) = self.io.deliver(frame).await {
                            return end;
                        }
                    }
                    Ok(LinkEvent::Closed(reason)) => return End::Close(None, reason),
                },
                msg = self.io.socket.recv() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => return read_error(&state.metrics, e),
                    };
                    if costs_a_token(&msg) && !rate.allow(last_heard) {
                        Metrics::inc(&state.metrics.rate_limited);
                        match self.protocol.over_rate() {
                            OverRate::Close(reason) => {
                                warn!("rate limit exceeded");
                                return End::Close(None, reason);
                            }
                            OverRate::Refuse(answer) => match Box::pin(self.io.reply(answer)).await {
                                None => continue,
                                Some(end) => return end,
                            },
                        }
                    }
                    let text = match msg {
                        Message::Text(text) => text,
                        Message::Binary(bytes) => match self.protocol.on_binary(&self.io, bytes) {
                            Ok(Some(text)) => text,
                            Ok(None) => continue,
                            Err(end) => return end,
                        },
                        Message::Ping(bytes) => {
                            self.io.socket.queue_pong(&bytes);
                            if !self.io.socket.flush_within(self.io.write_timeout).await {
                                return End::Gone(None);
                            }
                            continue;
                        }
                        Message::Pong => continue,
                        // Answer the closing handshake, echoing the client's code.
                        Message::Close(code) => return End::Gone(Some(CloseReason::new(code, ""))),
                    };
                    Metrics::inc(&state.metrics.frames_received);
                    if let Some(end) = Box::pin(self.protocol.on_text(&mut self.io, text)).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = P::heartbeat(config);
                    if last_heard.elapsed() > beat.timeout {
                        Metrics::inc(&state.metrics.heartbeat_timeouts);
                        info!("heartbeat timeout");
                        let reason = CloseReason::new(beat.timeout_code, "heartbeat timeout");
                        return End::Close(None, reason);
                    }
                    if beat.server_pings.is_some() {
                        self.io.socket.queue_ping();
                        if !self.io.socket.flush_within(self.io.write_timeout).await {
                            return End::Gone(None);
                        }
                    }
                }
            }
        }
    }

    /// Tells the room how the connection ended and closes the socket as `end` says.
    async fn finish(mut self, end: End) {
        self.protocol.leave(&end).await;
        match end {
            End::Gone(None) => {}
            End::Gone(Some(reason)) => close(self.io.socket, &reason, &self.io.state).await,
            End::Close(last, reason) => {
                // Deliver what the room queued before the session left (acks of applied writes,
                // final deltas, `kicked`); a client closed for being too slow has nothing left.
                if !self.io.drain().await {
                    return;
                }
                if let Some(frame) = last {
                    if self.io.reply(frame).await.is_some() {
                        return;
                    }
                }
                debug!(code = reason.code, reason = %reason.reason, "closing");
                close(self.io.socket, &reason, &self.io.state).await;
            }
        }
    }
}

/// Closes the socket with `reason`. Its wait for the peer's close (so that the peer reads the
/// close frame before the socket goes) ends when shutdown has closed every room and cancels the
/// server's tasks: the process is about to exit.
pub(super) async fn close(socket: WebSocket, reason: &CloseReason, state: &AppState) {
    tokio::select! {
        () = socket.close(reason) => {}
        () = state.tasks.cancelled() => {}
    }
}

/// How a connection whose socket failed ends.
fn read_error(metrics: &Metrics, error: WsError) -> End {
    if matches!(error, WsError::TooBig(_)) {
        Metrics::inc(&metrics.frames_oversized);
    }
    match error.close_reason() {
        Some(reason) => End::Close(None, reason),
        None => End::Gone(None),
    }
}

/// Resolves once the server's shutdown has begun.
async fn shutdown_begun(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        // The server is gone without a shutdown: nothing to wait for.
        std::future::pending::<()>().await;
    }
}

/// What ends a session that has not joined a room: the protocol's deadline, or the server's
/// shutdown.
struct Unjoined {
    /// The deadline `ends` waits for.
    deadline: Option<Instant>,
    ends: Pin<Box<dyn Future<Output = End> + Send>>,
}

impl Unjoined {
    fn new(state: &AppState, deadline: Option<(Instant, fn() -> End)>) -> Unjoined {
        let mut closing = state.closing.subscribe();
        let timed_out = async move {
            match deadline {
                Some((at, end)) => {
                    tokio::time::sleep_until(at).await;
                    end()
                }
                None => std::future::pending().await,
            }
        };
        let ends = async move {
            tokio::select! {
                () = shutdown_begun(&mut closing) => End::Close(None, CloseReason::shutting_down()),
                end = timed_out => end,
            }
        };
        Unjoined {
            deadline: deadline.map(|(at, _)| at),
            ends: Box::pin(ends),
        }
    }
}

/// The joined room's next frame for this session or its close; before the session has joined
/// one, what ends it unjoined (`Err`).
async fn room_event(
    link: &mut Option<SessionLink>,
    unjoined: &mut Option<Unjoined>,
) -> Result<LinkEvent, End> {
    match (link, unjoined) {
        (Some(link), _) => Ok(link.next().await),
        (None, Some(unjoined)) => Err(unjoined.ends.as_mut().await),
        (None, None) => std::future::pending().await,
    }
}
