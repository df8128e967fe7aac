//! WebSocket upgrades: where a socket leaves actix-http for weft's own [`WebSocket`].
//!
//! actix-http hands every request carrying `Upgrade: websocket` to [`hand_off`] together with
//! its socket, instead of to the actix-web routes. The request's few facts are copied out, the
//! socket moves to the server's main runtime (where the rooms run, so a room's frames reach the
//! connection's task without crossing runtimes), and the HTTP/1 dispatcher with its buffers is
//! dropped. On the main runtime the endpoint checks the request (room, shutdown) and
//! answers with an HTTP error or `101 Switching Protocols`, then runs its session loop.

use std::io;
use std::net::IpAddr;

use actix_codec::Framed;
use actix_http::ws::{self, HandshakeError};
use actix_http::{h1, Request};
use actix_web::http::StatusCode;
use actix_web::web;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::accept::Admitted;
use super::limits::ConnectionPermit;
use super::session::{Protocol, Session};
use super::websocket::{FrameReader, WebSocket};
use super::{canvas_ws, game_ws, AppState, HttpError, LiveConnection};
use crate::ids::RecordKey;
use crate::rooms::SessionLink;

/// What an endpoint needs of an upgrade request.
pub(super) struct UpgradeRequest {
    pub path: String,
    pub query: String,
    pub peer: Option<IpAddr>,
    /// `Sec-WebSocket-Accept` for the response, or why the handshake is invalid.
    handshake: Result<[u8; 28], HandshakeError>,
}

impl UpgradeRequest {
    fn of(req: &Request) -> UpgradeRequest {
        let head = req.head();
        let handshake = ws::verify_handshake(head).map(|()| {
            let key = head
                .headers()
                .get(actix_web::http::header::SEC_WEBSOCKET_KEY)
                .map_or(&b""[..], |key| key.as_bytes());
            ws::hash_key(key)
        });
        UpgradeRequest {
            path: req.path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
            peer: head.peer_addr.map(|addr| addr.ip()),
            handshake,
        }
    }
}

/// The actix-http upgrade service: takes the socket (and its place under the connection caps)
/// off the worker and serves it on the main runtime.
pub(crate) async fn hand_off(
    state: web::Data<AppState>,
    req: Request,
    framed: Framed<Admitted, h1::Codec>,
) -> Result<(), actix_web::Error> {
    let request = UpgradeRequest::of(&req);
    let parts = framed.into_parts();
    let (io, permit) = parts.io.into_parts();
    let io = io.into_std()?;
    let tasks = state.tasks.clone();
    tasks.spawn(serve(
        state,
        request,
        Socket {
            io,
            permit,
            unsent: parts.write_buf,
            received: parts.read_buf,
        },
    ));
    Ok(())
}

/// An upgrading socket, off actix-http.
struct Socket {
    io: std::net::TcpStream,
    /// Its place under the connection caps, taken at accept.
    permit: ConnectionPermit,
    /// Responses the dispatcher had not written yet (pipelined requests).
    unsent: BytesMut,
    /// Bytes the client sent after its upgrade request.
    received: BytesMut,
}

/// An accepted upgrade: which endpoint's session runs on the WebSocket, and what it was asked.
enum Accepted {
    Canvas(canvas_ws::ConnectQuery),
    Game(RecordKey),
}

/// A WebSocket ready for an endpoint's session: counted as a live connection (holding its
/// place under the caps) from here until the session ends.
pub(super) struct Upgraded {
    pub state: web::Data<AppState>,
    pub socket: WebSocket,
    pub live: LiveConnection,
    pub peer: Option<IpAddr>,
}

impl Upgraded {
    /// The shared session loop, running `protocol` on this socket.
    pub(super) fn session<P: Protocol>(self, link: Option<SessionLink>, protocol: P) -> Session<P> {
        Session::new(self.state, self.socket, link, protocol, self.live)
    }
}

async fn serve(state: web::Data<AppState>, request: UpgradeRequest, socket: Socket) {
    let peer = request.peer;
    let Some((accepted, socket, permit)) = upgrade(&state, request, socket).await else {
        return;
    };
    let tasks = state.tasks.clone();
    let upgraded = Upgraded {
        live: LiveConnection::new(state.metrics.clone(), permit),
        state,
        socket,
        peer,
    };
    // The session gets a task of its own, sized for its endpoint's loop alone: a connection
    // lives for hours and must not carry the upgrade's state or the other endpoint's loop.
    match accepted {
        Accepted::Canvas(query) => tasks.spawn(canvas_ws::run(upgraded, query)),
        Accepted::Game(key) => tasks.spawn(game_ws::run(upgraded, key)),
    };
}

/// Checks the request and answers it: an HTTP error, or `101 Switching Protocols` and the
/// WebSocket.
async fn upgrade(
    state: &AppState,
    request: UpgradeRequest,
    socket: Socket,
) -> Option<(Accepted, WebSocket, ConnectionPermit)> {
    let Socket {
        io,
        permit,
        unsent,
        received,
    } = socket;
    let mut io = TcpStream::from_std(io).ok()?;
    // Small real-time frames: send each at once instead of coalescing them (Nagle).
    io.set_nodelay(true).ok()?;
    let accepted = match request.path.as_str() {
        "/" => Ok(Accepted::Canvas(canvas_ws::accept(&request))),
        "/api/room" => game_ws::accept(state, &request).map(Accepted::Game),
        _ => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("no WebSocket endpoint at {}", request.path) }),
        )),
    };
    let accepted = accepted.and_then(|accepted| {
        let key = request.handshake.as_ref().map_err(handshake_error)?;
        Ok((accepted, *key))
    });
    // Responses the dispatcher had not written yet (pipelined requests) go first.
    let mut response = unsent.to_vec();
    drop(unsent);
    let (accepted, key) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            response.extend_from_slice(&refusal.http1());
            let _ = write_and_close(&mut io, &response).await;
            return None;
        }
    };
    response.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ");
    response.extend_from_slice(&key);
    response.extend_from_slice(b"\r\n\r\n");
    if let Err(e) = io.write_all(&response).await {
        debug!(error = %e, "upgrade response not delivered");
        return None;
    }
    let reader = FrameReader::new(state.config.max_frame_bytes, state.assembly.clone());
    let timeout = state.config.message_assembly_timeout;
    Some((
        accepted,
        WebSocket::new(io, received, reader, timeout),
        permit,
    ))
}

async fn write_and_close(io: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.shutdown().await
}

fn handshake_error(error: &HandshakeError) -> HttpError {
    let status = match error {
        HandshakeError::GetMethodRequired => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::BAD_REQUEST,
    };
    HttpError::new(
        status,
        serde_json::json!({ "error": format!("invalid WebSocket handshake: {error}") }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an endpoint's `run` returns.
    fn future_size<A, F>(_: impl Fn(Upgraded, A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A session's future lives (in its task) as long as its connection: it must stay small, so
    /// large steps are boxed instead of awaited inline (see the endpoints' `run`). This guards
    /// the idle memory per connection against an inline await creeping back in.
    #[test]
    fn session_futures_stay_small() {
        let canvas = future_size(canvas_ws::run);
        let game = future_size(game_ws::run);
        assert!(canvas <= 1536, "canvas session future is {canvas} bytes");
        assert!(game <= 2048, "game session future is {game} bytes");
    }
}
